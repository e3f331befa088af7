"""
`make demo`: a real salt-master and salt-minion on loopback, in a temp directory,
without root, serving this repo, with a stand-in BigFix agent. It shows

1. `salt '*' iemkey.paths`, `iemkey.status`, `iemkey.rotate`, `iemkey.status`;
2. a highstate with pillar `iemkey:rotated_since`, run twice (the second changes nothing);
3. a compromise alert from the minion (``salt-call iemkey.alert``, signed with the minion's
   own Salt key): the master's iemkey engine owes that minion a rotation and delivers it; the
   minion's signed rotation settles it; an unsigned alert is refused;
4. the console clean-up against a stand-in BigFix server: the routine rotations' old computers
   deleted once confirmed; the compromise rotation's old computer listed to revoke (never
   deleted), in a computer group; the operator revokes it; `iemkey.cleanup` sees it leave the
   console; the operator confirms the revocation (`iemkey.incident name=alerts revoked=True`);
5. the fleet compliance report, `salt-run iemkey.report`, red while a key is to revoke, then green;

printing Salt's own output, and stops everything it started.
"""

import datetime
import json
import logging
import pathlib
import shutil
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "support"))

from bigfix_rest import StandInBigFix
from pytest_httpserver import HTTPServer
from sandbox import Sandbox, make_top

MINION = "demo-minion"
COOLDOWN = 5  # iemkey:reactor:cooldown (default 300 s): rotations received this long before an alert are the alert's
MARGIN = 2  # iemkey:cleanup:report_margin: the stand-in agent reports every second (real fleets: 900 s)


def banner(text):
    print(f"\n\033[1m=== {text}\033[0m", flush=True)


def main():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the stand-in server's access log
    top = make_top("iemkey-demo-")
    rest = HTTPServer(host="127.0.0.1", port=0)
    rest.start()
    box = Sandbox(
        top,
        minions=[MINION],
        master_extra={
            "engines": [{"iemkey": {}}],  # decides alerts off Salt's event loop, delivers owed rotations
            "iemkey": {
                # a 5 s window (the default is 300 s), so the rotations of steps 1 and 2, seconds before the
                # alert, stay routine rotations; with the default they would count as the compromise's too
                "reactor": {"cooldown": COOLDOWN},
                "cleanup": {"report_margin": MARGIN},
                "api": {"url": rest.url_for("").rstrip("/"), "user": "iemkey-operator", "password": "demo-pw"},
            },
        },
    )
    bigfix = StandInBigFix([box.agent], "iemkey-operator", "demo-pw").serve(rest)
    try:
        banner(f"A salt-master and salt-minion on 127.0.0.1 under {top}, a stand-in agent with a 30-day-old key")
        box.agent.install(key_age=30 * 86400, name="demo-minion.example.com")
        box.write_config()
        box.start()
        box.sync()
        box.restart_master()  # the master starts its engine and schedule with the synced modules

        banner("1. Ad-hoc rotation: salt '*' iemkey.rotate")
        box.salt("*", "iemkey.paths")
        box.salt("*", "iemkey.status")
        box.salt("*", "iemkey.rotate", "wait=30")
        box.salt("*", "iemkey.status")

        banner("2. Highstate after an incident: pillar iemkey:rotated_since, run twice")
        print(
            "The key step 1 made is seconds old, newer than any incident: the demo ages its files by 30 days\n"
            "so that pillar 'rotated_since: <an hour ago>' finds it too old.",
            flush=True,
        )
        box.agent.age_keys(30 * 86400)
        since = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
        box.pillar(f"iemkey:\n  rotated_since: '{since:%Y-%m-%dT%H:%M:%SZ}'\n  wait: 30\n")
        box.salt("*", "state.highstate")
        box.salt("*", "state.highstate")

        banner("3. A detector on the minion reports a compromise; the master owes it a rotation and delivers it")
        print(
            f"A rotation the master received up to iemkey:reactor:cooldown before an alert may be the attacker's\n"
            f"own and counts as the compromise's: here {COOLDOWN} s (default 300 s). The demo waits it out, so the\n"
            "rotations of steps 1 and 2 stay routine.",
            flush=True,
        )
        before = box.salt(MINION, "iemkey.status", "--out=json", show=False)
        rotated_before = json.loads(before.stdout)[MINION]["last_rotated"]
        time.sleep(COOLDOWN + 1)
        box.salt_call(MINION, "iemkey.alert", "reason=demo: IDS alert")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            now = json.loads(box.salt(MINION, "iemkey.status", "--out=json", show=False).stdout or "{}")
            if now.get(MINION, {}).get("last_rotated") not in (None, rotated_before):
                break
            time.sleep(2)
        box.salt("*", "iemkey.status")
        box.run("salt-run", "iemkey.owed")  # the minion's signed rotation settled it: nothing is owed
        print(
            "\nA plain event.send of the same tag proves nothing about who sent it; the master refuses it:", flush=True
        )
        box.salt_call(MINION, "event.send", "iemkey/compromised", '{"reason": "unsigned"}')
        master_log = top / "root/var/log/salt/master"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "refusing" not in master_log.read_text():
            time.sleep(1)
        lines = [line for line in master_log.read_text().splitlines() if "iemkey" in line and "WARNING" in line]
        print("\nmaster log:\n" + "\n".join(lines))

        banner("4. The console clean-up against a stand-in BigFix server")
        print(
            "Each rotation sent a signed iemkey/rotated; the master recorded its old computer. The two routine\n"
            "rotations' old computers are deleted once BigFix confirms they are superseded duplicates. The\n"
            "alert's rotation is a compromise rotation: its old computer is listed to revoke, never deleted\n"
            "(a deleted computer's stolen key stays valid), in a computer group for the console.",
            flush=True,
        )
        time.sleep(MARGIN + 1)
        box.run("salt-run", "iemkey.cleanup")
        stamp = f"{since:%Y-%m-%dT%H:%M:%SZ}"
        box.run("salt-run", "iemkey.report", f"since={stamp}")
        print(
            "\nThe report fails while a stolen key is still valid. The operator selects the group's computers\n"
            "in the console and chooses Revoke Certificate; the stand-in server does that now.",
            flush=True,
        )
        for computer in json.loads(box.run("salt-run", "iemkey.cleanup", "--out=json", show=False).stdout)["revoke"]:
            bigfix.revoke(computer["old_computer_id"])
        box.run("salt-run", "iemkey.cleanup")
        print(
            "\nBigFix answers a revoked computer and a deleted one alike (404): iemkey saw it leave the console,\n"
            "and the operator who revoked it confirms:",
            flush=True,
        )
        box.run("salt-run", "iemkey.incident", "name=alerts", "revoked=True")

        banner("5. Fleet compliance report on the master: salt-run iemkey.report")
        box.run("salt-run", "iemkey.report", f"since={stamp}")
        box.run("salt-run", "iemkey.history", f"minion={MINION}")
        print(f"\nREST requests the stand-in BigFix server answered: {len(bigfix.calls)}, DELETEs: {bigfix.deletes()}")
    finally:
        banner("Stopping the master, the minion, the stand-in agent and BigFix server")
        box.stop()
        rest.stop()
        shutil.rmtree(top, ignore_errors=True)
        print("done")


if __name__ == "__main__":
    main()
