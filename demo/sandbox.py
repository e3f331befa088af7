"""
A sandbox of real Salt daemons on loopback under one temp directory, without root: a
salt-master serving this repo and N salt-minions, each with its own stand-in BigFix
agent. Used by `make demo` and `make bench`; it stops everything it started.
"""

import getpass
import pathlib
import shlex
import socket
import subprocess
import sys
import tempfile
import time

import yaml

REPO = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent
sys.path.insert(0, str(REPO / "tests" / "support"))
START_TIMEOUT = 300  # seconds for a master and its minions to answer (a busy 2-core CI machine: minutes)

from besagent import StandInAgent  # noqa: E402


def make_top(prefix):
    """The temp directory a sandbox runs under. Salt's daemons talk over unix sockets below it
    (``<root_dir>/var/run/salt/...``), whose paths may hold 107 bytes at most: under a long TMPDIR
    (pytest's, a CI job's) they could not, so /tmp then."""
    base = tempfile.gettempdir()
    return pathlib.Path(tempfile.mkdtemp(prefix=prefix, dir=base if len(base) <= 20 else "/tmp"))


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def agent_settings(agent):
    return {
        "config_file": str(agent.config_file),
        "init_script": str(agent.init_script),
        "client_binary": str(agent.client_binary),
    }


class Sandbox:
    """``minions`` minion ids; ``conf/master`` and ``conf-<id>/minion`` under ``top``."""

    def __init__(self, top, minions=("demo-minion",), master_extra=None):
        self.top = pathlib.Path(top)
        self.conf = self.top / "conf"
        self.minions = list(minions)
        self.agents = {mid: StandInAgent(self.top / "agents" / mid) for mid in self.minions}
        self.master_extra = master_extra or {}
        self.procs = []

    @property
    def own(self):
        """The target of the minions this sandbox runs (others may be accepted, e.g. the bench's)."""
        return ("-L", ",".join(self.minions))

    @property
    def agent(self):
        return self.agents[self.minions[0]]

    def minion_conf(self, minion_id):
        return self.top / f"conf-{minion_id}"

    def write_config(self):
        publish, ret = free_port(), free_port()
        user = getpass.getuser()
        for folder in ("conf", "states", "pillar"):
            (self.top / folder).mkdir(parents=True, exist_ok=True)
        master = {
            "root_dir": str(self.top / "root"),
            "user": user,
            "log_level_logfile": "info",
            "interface": "127.0.0.1",
            "publish_port": publish,
            "ret_port": ret,
            "auto_accept": True,
            "file_roots": {"base": [str(self.top / "states"), str(REPO), str(REPO / "salt")]},
            "pillar_roots": {"base": [str(self.top / "pillar")]},
            **self.master_extra,
        }
        (self.conf / "master").write_text(yaml.safe_dump(master))
        for minion_id, agent in self.agents.items():
            conf = self.minion_conf(minion_id)
            conf.mkdir(parents=True, exist_ok=True)
            (conf / "minion").write_text(
                yaml.safe_dump(
                    {
                        "root_dir": str(self.top / f"root-{minion_id}"),
                        "user": user,
                        "log_level_logfile": "info",
                        "id": minion_id,
                        "master": "127.0.0.1",
                        "master_port": ret,
                        "publish_port": publish,
                        "iemkey": agent_settings(agent),
                    }
                )
            )
        (self.top / "states/top.sls").write_text("base:\n  '*':\n    - iemkey\n")
        (self.top / "pillar/top.sls").write_text("base:\n  '*':\n    - iemkey\n")
        (self.top / "pillar/iemkey.sls").write_text("{}\n")

    def _spawn(self, program, conf):
        with open(self.top / f"{program}-{conf.name}.out", "a") as log:  # the daemon keeps its own copy
            self.procs.append(
                subprocess.Popen(
                    [str(BIN / program), "-c", str(conf), "-l", "warning"], stdout=log, stderr=subprocess.STDOUT
                )
            )

    def start(self):
        self._spawn("salt-master", self.conf)
        for minion_id in self.minions:
            self._spawn("salt-minion", self.minion_conf(minion_id))
        self._wait_for_minions(f"the sandbox minions did not answer within {START_TIMEOUT} s; see {self.top}")
        time.sleep(2)

    def restart_master(self):
        """Stop the master and start it again (its scheduler and reactor load the synced runner when
        it starts, as README says), then wait for the minions to answer."""
        master = self.procs.pop(0)
        master.terminate()
        master.wait(timeout=60)
        self._spawn("salt-master", self.conf)
        self.procs.insert(0, self.procs.pop())  # the master stays first
        self._wait_for_minions(f"the sandbox minions did not answer within {START_TIMEOUT} s of the master's restart")

    def _wait_for_minions(self, failure):
        """Until every minion of this sandbox answers test.ping (SystemExit ``failure`` after START_TIMEOUT)."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            ping = self.salt(*self.own, "test.ping", "--out=json", "--static", show=False)
            if ping.returncode == 0 and all(f'"{m}": true' in ping.stdout for m in self.minions):
                return
            time.sleep(2)
        raise SystemExit(failure)

    def sync(self):
        """Sync the modules and wait until every minion has loaded them; the runner (and the utility
        module it imports) on the master."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            self.salt(*self.own, "saltutil.sync_all", show=False)  # retried: the master may still be settling
            found = self.salt(*self.own, "sys.list_functions", "iemkey", "--out=json", "--static", show=False)
            if found.stdout.count("iemkey.rotate") >= len(self.minions):
                self.run("salt-run", "saltutil.sync_all", show=False)
                return
            time.sleep(1)
        raise SystemExit("the sandbox minions did not load the iemkey modules")

    def stop(self):
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for agent in self.agents.values():
            agent.kill()

    def run(self, program, *args, show=True, conf=None):
        command = [str(BIN / program), "-c", str(conf or self.conf), *args]
        if show:  # as an operator would type it (the sandbox adds -c <its config dir>)
            print(f"\n$ {shlex.join([program, *args])}", flush=True)
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
        if show:
            print(result.stdout.rstrip(), flush=True)
            if result.returncode:
                print(f"(exit code {result.returncode})", flush=True)
        return result

    def salt(self, *args, show=True):
        return self.run("salt", "--timeout=60", *args, show=show)

    def salt_call(self, minion_id, *args, show=True):
        return self.run("salt-call", *args, show=show, conf=self.minion_conf(minion_id))

    def pillar(self, text):
        (self.top / "pillar/iemkey.sls").write_text(text)
        self.salt(*self.own, "saltutil.refresh_pillar", "wait=True", show=False)
