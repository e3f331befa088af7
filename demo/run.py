"""
`make demo`: a real salt-master and salt-minion on loopback, in a temp directory,
without root, serving this repo, with a stand-in BigFix agent. It shows

1. `salt '*' iemkey.paths`, `iemkey.status`, `iemkey.rotate`, `iemkey.status`;
2. a highstate with pillar `iemkey:rotated_since`, run twice (the second changes nothing);
3. a compromise event from the minion, rotated by the master's reactor;
4. the fleet compliance report, `salt-run iemkey.report`;

printing Salt's own output, and stops everything it started.
"""

import datetime
import getpass
import json
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import yaml

REPO = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent
sys.path.insert(0, str(REPO / "tests" / "support"))

from besagent import StandInAgent  # noqa: E402

MINION = "demo-minion"
COOLDOWN = 5


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def banner(text):
    print(f"\n\033[1m=== {text}\033[0m", flush=True)


class Sandbox:
    def __init__(self, top):
        self.top = top
        self.conf = top / "conf"
        self.agent = StandInAgent(top / "agent")
        self.procs = []

    def write_config(self):
        publish, ret = free_port(), free_port()
        user = getpass.getuser()
        for folder in ("conf", "states", "pillar"):
            (self.top / folder).mkdir(parents=True)
        common = {"root_dir": str(self.top / "root"), "user": user, "log_level_logfile": "info"}
        master = {
            **common,
            "interface": "127.0.0.1",
            "publish_port": publish,
            "ret_port": ret,
            "auto_accept": True,
            "file_roots": {"base": [str(self.top / "states"), str(REPO), str(REPO / "salt")]},
            "pillar_roots": {"base": [str(self.top / "pillar")]},
            "reactor": [
                {"iemkey/compromised": ["salt://iemkey/reactor/compromised.sls"]},
            ],
            # a short window so the demo's alert, seconds after the highstate, is a new incident
            "iemkey": {"reactor": {"cooldown": COOLDOWN}},
        }
        minion = {
            **common,
            "id": MINION,
            "master": "127.0.0.1",
            "master_port": ret,
            "publish_port": publish,
            "iemkey": {
                "config_file": str(self.agent.config_file),
                "init_script": str(self.agent.init_script),
                "client_binary": str(self.agent.client_binary),
            },
        }
        (self.conf / "master").write_text(yaml.safe_dump(master))
        (self.conf / "minion").write_text(yaml.safe_dump(minion))
        (self.top / "states/top.sls").write_text("base:\n  '*':\n    - iemkey\n")
        (self.top / "pillar/top.sls").write_text("base:\n  '*':\n    - iemkey\n")
        (self.top / "pillar/iemkey.sls").write_text("{}\n")

    def start(self):
        for daemon in ("salt-master", "salt-minion"):
            with open(self.top / f"{daemon}.out", "w") as log:  # the daemon keeps its own copy
                self.procs.append(subprocess.Popen([str(BIN / daemon), "-c", str(self.conf), "-l", "warning"],
                                                   stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.salt(MINION, "test.ping", show=False).returncode == 0:
                time.sleep(2)
                return
            time.sleep(2)
        raise SystemExit("the demo minion did not answer within 120 s; see " + str(self.top))

    def sync(self):
        """Sync the modules and wait until the minion has loaded them."""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            self.salt(MINION, "saltutil.sync_all", show=False)  # retried: the master may still be settling
            found = self.salt(MINION, "sys.list_functions", "iemkey", "--out=json", show=False)
            if "iemkey.rotate" in found.stdout:
                return
            time.sleep(1)
        raise SystemExit("the demo minion did not load the iemkey modules")

    def stop(self):
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.agent.kill()

    def run(self, program, *args, show=True):
        command = [str(BIN / program), "-c", str(self.conf), *args]
        if show:
            print(f"\n$ {program} {' '.join(args)}", flush=True)
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        if show:
            print(result.stdout.rstrip(), flush=True)
            if result.returncode:
                print(f"(exit code {result.returncode})", flush=True)
        return result

    def salt(self, *args, show=True):
        return self.run("salt", "--timeout=60", *args, show=show)

    def pillar(self, text):
        (self.top / "pillar/iemkey.sls").write_text(text)
        self.salt(MINION, "saltutil.refresh_pillar", "wait=True", show=False)


def main():
    top = pathlib.Path(tempfile.mkdtemp(prefix="iemkey-demo-"))
    box = Sandbox(top)
    try:
        banner(f"A salt-master and salt-minion on 127.0.0.1 under {top}, a stand-in agent with a 30-day-old key")
        box.agent.install(key_age=30 * 86400)
        box.write_config()
        box.start()
        box.sync()

        banner("1. Ad-hoc rotation: salt '*' iemkey.rotate")
        box.salt("*", "iemkey.paths")
        box.salt("*", "iemkey.status")
        box.salt("*", "iemkey.rotate", "wait=30")
        box.salt("*", "iemkey.status")

        banner("2. Highstate after an incident: pillar iemkey:rotated_since, run twice")
        box.agent.age_keys(30 * 86400)  # pretend the incident happened after the last rotation
        since = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1))
        box.pillar(f"iemkey:\n  rotated_since: '{since:%Y-%m-%dT%H:%M:%SZ}'\n  wait: 30\n")
        box.salt("*", "state.highstate")
        box.salt("*", "state.highstate")

        banner("3. A detector on the minion reports a compromise; the master's reactor rotates that minion")
        before = box.salt(MINION, "iemkey.status", "--out=json", show=False)
        rotated_before = json.loads(before.stdout)[MINION]["last_rotated"]
        time.sleep(COOLDOWN + 1)  # alerts within the cooldown window of a rotation are duplicates
        box.run("salt-call", "event.send", "iemkey/compromised", '{"reason": "demo: IDS alert"}')
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            now = json.loads(box.salt(MINION, "iemkey.status", "--out=json", show=False).stdout or "{}")
            if now.get(MINION, {}).get("last_rotated") not in (None, rotated_before):
                break
            time.sleep(2)
        box.salt("*", "iemkey.status")
        reactor_lines = [line for line in (top / "root/var/log/salt/master").read_text().splitlines()
                         if "iemkey reactor" in line]
        print("\nmaster log:\n" + "\n".join(reactor_lines))

        banner("4. Fleet compliance report on the master: salt-run iemkey.report")
        box.run("salt-run", "saltutil.sync_runners", show=False)
        box.run("salt-run", "iemkey.report", f"since={since:%Y-%m-%dT%H:%M:%SZ}")
    finally:
        banner("Stopping the master, the minion and the stand-in agent")
        box.stop()
        shutil.rmtree(top, ignore_errors=True)
        print("done")


if __name__ == "__main__":
    main()
