"""
`make examples`: run every command README shows, on a sandbox like `make demo`'s (a real master, a
minion `web01` with a stand-in agent, a stand-in BigFix REST API), and print each with Salt's own
output, so README's examples can be refreshed from real runs. The agent lives under a temp dir, so
paths differ from a real host's.
"""

import datetime
import logging
import pathlib
import shutil
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "support"))

from bigfix_rest import StandInBigFix
from pytest_httpserver import HTTPServer
from sandbox import Sandbox

MINION = "web01"
PASSWORD = "example-relay-password"  # the stand-in relay's; never printed


def main():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the stand-in REST API's access log
    top = pathlib.Path(tempfile.mkdtemp(prefix="ik-", dir="/tmp"))  # short: these paths appear in README
    rest = HTTPServer(host="127.0.0.1", port=0)
    rest.start()
    box = Sandbox(
        top,
        minions=[MINION],
        master_extra={
            "engines": [{"iemkey": {}}],
            "iemkey": {
                "reactor": {"cooldown": 5},
                "cleanup": {"report_margin": 2},
                "api": {
                    "url": rest.url_for("").rstrip("/"),
                    "user": "iemkey-operator",
                    "password": "pw",
                    "verify": False,
                },
            },
        },
    )
    bigfix = StandInBigFix([box.agent], "iemkey-operator", "pw")
    bigfix.serve(rest)
    try:
        box.agent.install(key_age=30 * 86400, name="web01.example.com")
        box.agent.relay_accepts(PASSWORD)
        box.write_config()
        box.start()
        box.sync()
        box.restart_master()  # the master starts its engine with the synced modules
        since = f"{datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1):%Y-%m-%dT%H:%M:%SZ}"
        box.salt("*", "iemkey.paths")
        box.salt("*", "iemkey.status")
        box.salt("*", "iemkey.check", f"since={since}")
        box.salt("*", "iemkey.rotate", "test=True")
        box.salt("*", "iemkey.rotate", "wait=30")
        box.pillar(f"iemkey:\n  relay: http://relay.example:52311\n  register_password: '{PASSWORD}'\n")
        box.salt("*", "iemkey.register")
        box.pillar("{}\n")
        box.salt("*", "iemkey.restart")
        box.agent.age_keys(30 * 86400)
        box.pillar(f"iemkey:\n  rotated_since: '{since}'\n")
        box.salt("*", "state.apply", "iemkey")
        box.salt("*", "state.apply", "iemkey")
        box.salt("*", "pillar.get", "iemkey:rotated_since")
        time.sleep(6)  # past the cooldown: the alert is a new incident
        box.salt_call(MINION, "iemkey.alert", "reason=IDS rule 4711")
        box.run("salt-run", "iemkey.owed")
        time.sleep(10)
        box.run("salt-run", "iemkey.owed")
        box.run("salt-run", "iemkey.cleanup", "test=True")
        box.run("salt-run", "iemkey.cleanup")
        box.run("salt-run", "iemkey.report", f"since={since}")
        for computer in bigfix.computers():
            if computer in [g for group in bigfix.groups for g in bigfix.members(group)]:
                bigfix.revoke(computer)  # the operator's Revoke Certificate on the group's computers
        box.run("salt-run", "iemkey.cleanup")
        box.run("salt-run", "iemkey.report", f"since={since}")
        box.run("salt-run", "iemkey.incident", "name=alerts", "revoked=True")
        box.run("salt-run", "iemkey.report", f"since={since}")
        box.run("salt-run", "iemkey.report", f"since={since}", "tgt=nosuch*")
        box.run("salt-run", "iemkey.report", "since=20261105")
        box.run("salt-run", "iemkey.incident", f"since={since}", "tgt=web*", "name=worm-2026-11")
        box.salt("*", "iemkey.rotate", "wait=30")
        time.sleep(3)
        box.run("salt-run", "iemkey.cleanup")
        box.run("salt-run", "iemkey.owed")
        box.run("salt-run", "iemkey.history", f"minion={MINION}")
        old = sorted(box.agent.computers(), key=lambda c: box.agent.computers()[c]["registered"])[0]
        box.run("salt-run", "iemkey.remove_computer", old)
        log = (top / "root/var/log/salt/master").read_text().splitlines()
        print("\nmaster log:\n" + "\n".join(line for line in log if "iemkey" in line and "WARNING" in line))
    finally:
        box.stop()
        rest.stop()
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
