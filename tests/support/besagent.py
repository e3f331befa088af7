#!/usr/bin/env python3
"""
A stand-in BigFix (BES) agent for iemkey's tests and demo.

It lays out, under a temp root, what a Linux BESClient install looks like (see
../shared/docs/bigfix-facts.md) and ships a control script taking
``start``/``stop``/``restart``/``status`` like ``/etc/init.d/besclient``:

    <root>/var/opt/BESClient/besclient.config     settings (StoragePath, ComputerID)
    <root>/var/opt/BESClient/KeyStorage/          the private key and certificate
    <root>/var/opt/BESClient/__BESData/...        everything else the agent keeps
    <root>/etc/opt/BESClient/actionsite.afxm      the masthead
    <root>/etc/init.d/besclient                   the control script
    <root>/standin/                               the stand-in's own pid file and knobs

It behaves like the real agent where iemkey cares: ``start`` launches a daemon
that, only when KeyStorage is missing, writes new keys and a new ComputerID into
besclient.config (after ``regen_delay`` seconds, or, with ``regen_hold``, only once
the test calls ``release_regen()``, so "regenerates late" can be tested without
racing the clock). It can be told to fail or hang on any verb (``behave``).
``install()`` leaves it running, as a real installed agent is. The running daemon
watches its KeyStorage: if KeyStorage vanishes while it runs (a rotation that
deleted before stopping it), it writes that to ``standin/violations.log``.

What the BigFix server knows of it is ``standin/computers.json``: every computer
ID it registered, with its Computer Name (``standin/name``) and last report time.
The daemon reports under the ID it registered, every ``report_interval`` seconds
while it runs; an ID written into besclient.config by anyone else reports nothing.
``tests/support/bigfix_rest.py`` serves these records as the BigFix REST API.

Used as a library (``StandInAgent``) by the tests and as a program by the
control script.
"""

import argparse
import json
import os
import random
import secrets
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

GLOBAL_OPTIONS = "[Software\\BigFix\\EnterpriseClient\\GlobalOptions]"
KEY_FILES = ("ClientKey.pvk", "ClientCert.crt")

CONFIG_TEMPLATE = """\
[Software\\BigFix\\EnterpriseClient]
EnterpriseClientFolder         = {client_folder}

[Software\\BigFix\\EnterpriseClient\\GlobalOptions]
StoragePath                    = {storage}
LibPath                        = {client_folder}/BESLib
ComputerID                     = {computer_id}

[Software\\BigFix\\EnterpriseClient\\Settings\\Client\\__RelayServer1]
value                          = http://relay.example:52311/bfmirror/downloads
effective date                 = Thu,%2001%20Jan%202015%2000:00:00%20+0000

[Software\\BigFix\\EnterpriseClient\\Settings\\Client\\_BESClient_Resource_StartupNormalSpeed]
value                          = 1
effective date                 = Thu,%2001%20Jan%202015%2000:00:00%20+0000
"""

# Files the real agent keeps beside KeyStorage; rotation must leave them alone.
OTHER_FILES = {
    "__BESData/__Global/Logs/20261120.log": "At 08:00:00 +0000 - Starting client version 11.0.6\n",
    "__BESData/actionsite/actionsite.afxm": "masthead copy\n",
    "__BESData/__Global/__Cache/Downloads/sha1.bin": "cached download\n",
    "__BESData/__Global/ComputerInfo.json": '{"os": "Linux"}\n',
}


def new_computer_id():
    return random.SystemRandom().randint(1_000_000, 2_000_000_000)


class StandInAgent:
    """The stand-in agent rooted at ``root`` (a temp directory)."""

    def __init__(self, root):
        self.root = Path(root).resolve()
        self.storage = self.root / "var/opt/BESClient"
        self.config_file = self.storage / "besclient.config"
        self.keystorage = self.storage / "KeyStorage"
        self.init_script = self.root / "etc/init.d/besclient"
        self.client_binary = self.root / "opt/BESClient/bin/BESClient"
        self.state_dir = self.root / "standin"
        self.pidfile = self.state_dir / "besclient.pid"
        self.behaviour_file = self.state_dir / "behaviour.json"
        self.log_file = self.state_dir / "agent.log"
        self.computers_file = self.state_dir / "computers.json"
        self.violations_file = self.state_dir / "violations.log"
        self.release_file = self.state_dir / "release-regen"
        self.name_file = self.state_dir / "name"

    # -- installation -------------------------------------------------------
    def install(self, computer_id=None, key_age=0, name=None, running=True):
        """Lay out an installed agent with keys ``key_age`` seconds old, registered as ``name``
        (default: the name of the folder above the root), running unless ``running=False``."""
        for folder in (
            self.storage,
            self.init_script.parent,
            self.state_dir,
            self.client_binary.parent,
            self.root / "etc/opt/BESClient",
        ):
            folder.mkdir(parents=True, exist_ok=True)
        computer_id = computer_id or new_computer_id()
        self.name_file.write_text(name or self.root.parent.name)
        self.computers_file.unlink(missing_ok=True)
        _register(self, computer_id)
        self.config_file.write_text(
            CONFIG_TEMPLATE.format(
                client_folder=self.root / "opt/BESClient",
                storage=self.storage,
                computer_id=computer_id,
            )
        )
        self.config_file.chmod(0o600)
        for relative, text in OTHER_FILES.items():
            path = self.storage / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        (self.root / "etc/opt/BESClient/actionsite.afxm").write_text("masthead\n")
        self.write_keys()
        if key_age:
            self.age_keys(key_age)
        python = shlex.quote(sys.executable)
        program = shlex.quote(str(Path(__file__).resolve()))
        self.init_script.write_text(
            "#!/bin/sh\n"
            "# BESClient control script (stand-in)\n"
            f'exec {python} {program} --root {shlex.quote(str(self.root))} "$@"\n'
        )
        self.init_script.chmod(0o755)
        state = shlex.quote(str(self.state_dir))
        self.client_binary.write_text(
            "#!/bin/sh\n"
            "# BESClient (stand-in): -register <password> <relay> against the relay's password file.\n"
            "# Like a careless vendor tool, it echoes the rejected password, so redaction is tested.\n"
            '[ "$1" = "-register" ] || { echo "usage: BESClient -register <password> <relay>" >&2; exit 2; }\n'
            f'echo "$# arguments" >> {state}/register.log\n'
            f'if [ "$2" = "$(cat {state}/relay_password 2>/dev/null)" ]; then\n'
            '  echo "Key exchange with $3 succeeded"; exit 0\n'
            "fi\n"
            'echo "Key exchange with $3 failed: password $2 rejected" >&2; exit 1\n'
        )
        self.client_binary.chmod(0o755)
        self.behave()
        self.violations_file.unlink(missing_ok=True)
        if running:  # through the control script, so the daemon is nobody's child once it returns
            subprocess.run([str(self.init_script), "start"], check=True, capture_output=True, timeout=60)
        self.installed = (self.pid(), self.events())
        return self

    def untouched(self):
        """Nobody stopped, started or restarted the agent since ``install()``."""
        return (self.pid(), self.events()) == self.installed

    def relay_accepts(self, password):
        """The authenticating relay's key-exchange password."""
        (self.state_dir / "relay_password").write_text(password)

    def write_keys(self):
        self.keystorage.mkdir(mode=0o700, exist_ok=True)
        for name in KEY_FILES:
            (self.keystorage / name).write_text(secrets.token_hex(64) + "\n")

    def age_keys(self, seconds):
        """Make the current key files look ``seconds`` old."""
        then = time.time() - seconds
        for path in self.keystorage.iterdir():
            os.utime(path, (then, then), follow_symlinks=False)

    def behave(self, **knobs):
        """Set how the next control calls behave.

        fail_start/fail_stop: how many calls fail (exit 1) before they work again.
        hang: a verb ("start", "stop", "status") that hangs instead of returning.
        kill_caller_on: a verb on which the control script kills its caller, once.
        regen_delay: seconds the daemon waits before writing new keys.
        regen_hold: the daemon writes new keys only once ``release_regen()`` is called.
        register_hold: the daemon writes new keys at once, but registers (gets its new computer ID)
            only once ``release_regen()`` is called, as behind a relay that has not yet answered.
        report_interval: seconds between the daemon's reports to the server (default 1).
        """
        self.behaviour_file.write_text(json.dumps(knobs))

    # -- reading ------------------------------------------------------------
    @property
    def computer_id(self):
        for line in self.config_file.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "ComputerID":
                return value.strip()
        return None

    @property
    def name(self):
        return self.name_file.read_text()

    def computers(self):
        """What the BigFix server knows of this agent: {computer id: {"name", "registered", "last_report"}}."""
        try:
            return json.loads(self.computers_file.read_text())
        except (OSError, ValueError):
            return {}

    def key_files(self):
        if not self.keystorage.is_dir():
            return {}
        return {p.name: p.read_bytes() for p in self.keystorage.iterdir()}

    def running(self):
        return _daemon_pid(self) is not None

    def pid(self):
        return _daemon_pid(self)

    def release_regen(self):
        """Let a daemon held by ``regen_hold`` write its new keys now."""
        self.release_file.write_text("go")

    def violations(self):
        """Every moment KeyStorage vanished while the daemon ran (a delete before the stop)."""
        try:
            return self.violations_file.read_text().splitlines()
        except FileNotFoundError:
            return []

    def events(self):
        """The daemon's own log: start, stop, registered ... (one line each)."""
        try:
            return [line.split(" ", 1)[1] for line in self.log_file.read_text().splitlines()]
        except FileNotFoundError:
            return []

    def snapshot(self, exclude=("KeyStorage",)):
        """Every file under the storage path (but ``exclude``) with its bytes and mode."""
        found = {}
        for dirpath, dirnames, filenames in os.walk(self.storage):
            rel_dir = Path(dirpath).relative_to(self.storage)
            if rel_dir.parts and rel_dir.parts[0] in exclude:
                continue
            dirnames[:] = [d for d in dirnames if str(rel_dir / d) not in exclude]
            for name in filenames:
                rel = rel_dir / name
                if str(rel) in exclude:
                    continue
                path = Path(dirpath) / name
                found[str(rel)] = (path.read_bytes(), os.lstat(path).st_mode)
        return found

    def set_computer_id(self, computer_id):
        """Edit besclient.config's ComputerID, as root on the host can (the server is not told)."""
        _set_computer_id(self, computer_id)

    def tree(self):
        """Everything under the root but the stand-in's own bookkeeping (standin/): each path with its
        kind, mode and bytes (or link target), links not followed."""
        found = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel_dir = Path(dirpath).relative_to(self.root)
            if rel_dir.parts[:1] == ("standin",):
                continue
            for name in dirnames + filenames:
                path = Path(dirpath) / name
                st = os.lstat(path)
                if path.is_symlink():
                    content = os.readlink(path)
                elif path.is_file():
                    content = path.read_bytes()
                else:
                    content = None
                found[str(rel_dir / name)] = (st.st_mode, content)
        return found

    def wait_for_keys(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.key_files()) == len(KEY_FILES):
                return True
            time.sleep(0.1)
        return False

    def kill(self):
        """Stop the daemon, whatever the knobs say (test teardown)."""
        pid = _daemon_pid(self)
        if pid:
            os.kill(pid, signal.SIGTERM)
            _wait_gone(pid)
        self.pidfile.unlink(missing_ok=True)


# -- the agent itself (run by the control script) ------------------------------
def _knobs(agent):
    try:
        return json.loads(agent.behaviour_file.read_text())
    except (OSError, ValueError):
        return {}


def _spend_knob(agent, name):
    """Count down a fail_* knob; True while it says fail."""
    knobs = _knobs(agent)
    left = int(knobs.get(name) or 0)
    if left <= 0:
        return False
    knobs[name] = left - 1
    agent.behaviour_file.write_text(json.dumps(knobs))
    return True


def _daemon_pid(agent):
    try:
        pid = int(agent.pidfile.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    try:
        # a zombie or a recycled pid is not our agent
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid
    return pid if b"daemon" in cmdline and str(agent.root).encode() in cmdline else None


def _wait_gone(pid, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
                return True  # exited; its parent has not reaped it yet
        except OSError:
            return True
        time.sleep(0.02)
    return False


def _log(agent, message):
    with open(agent.log_file, "a", encoding="utf-8") as log:
        log.write(f"{time.strftime('%H:%M:%S')} {message}\n")


def _write_json(path, document):
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(document, sort_keys=True))
    os.replace(tmp, path)  # the REST stand-in reads it at any moment


def _register(agent, computer_id):
    """The server learns a new computer: this agent's name, registered and reporting now."""
    computers = agent.computers()
    now = time.time()
    computers[str(computer_id)] = {"name": agent.name, "registered": now, "last_report": now}
    _write_json(agent.computers_file, computers)


def _report(agent, computer_id):
    """The agent reports under ``computer_id``, if it registered that ID itself."""
    computers = agent.computers()
    if str(computer_id) in computers:
        computers[str(computer_id)]["last_report"] = time.time()
        _write_json(agent.computers_file, computers)


def _set_computer_id(agent, computer_id):
    """Rewrite the ComputerID line in place, the way the agent owns its config."""
    lines = agent.config_file.read_text().splitlines(keepends=True)
    section = None
    for index, line in enumerate(lines):
        if line.startswith("["):
            section = line.strip()
        elif section == GLOBAL_OPTIONS and line.split("=")[0].strip() == "ComputerID":
            lines[index] = f"ComputerID                     = {computer_id}\n"
    agent.config_file.write_text("".join(lines))


def _violation(agent, when):
    with open(agent.violations_file, "a", encoding="utf-8") as log:
        log.write(f"{time.strftime('%H:%M:%S')} KeyStorage vanished while the agent ran (pid {os.getpid()}), {when}\n")


def run_daemon(agent):
    running = True
    had_keys = agent.keystorage.exists()

    def stop(_signum, _frame):
        nonlocal running
        running = False
        if had_keys and not agent.keystorage.exists():
            _violation(agent, "seen when it was told to stop")

    signal.signal(signal.SIGTERM, stop)
    agent.release_file.unlink(missing_ok=True)
    agent.pidfile.write_text(str(os.getpid()))
    if not had_keys:
        knobs = _knobs(agent)
        deadline = time.monotonic() + float(knobs.get("regen_delay") or 0)
        held = bool(knobs.get("regen_hold"))
        while running and (time.monotonic() < deadline or (held and not agent.release_file.exists())):
            time.sleep(0.05)
        if running:
            agent.write_keys()
            while running and knobs.get("register_hold") and not agent.release_file.exists():
                time.sleep(0.05)
        if running:
            computer_id = new_computer_id()
            _register(agent, computer_id)
            _set_computer_id(agent, computer_id)
            _log(agent, f"registered with new computer id {computer_id}")
            had_keys = True
    reporting_as = agent.computer_id  # what it registered with; later edits of the file don't change it
    interval = float(_knobs(agent).get("report_interval") or 1)
    next_report = 0
    while running:
        if had_keys and not agent.keystorage.exists():
            _violation(agent, "seen while running")
            had_keys = False
        if time.monotonic() >= next_report and reporting_as:
            _report(agent, reporting_as)
            next_report = time.monotonic() + interval
        time.sleep(0.05)
    _log(agent, "stopped")


def control(agent, verb):
    knobs = _knobs(agent)
    if knobs.get("hang") == verb:
        _log(agent, f"{verb}: hanging")
        while True:
            time.sleep(1)
    if knobs.get("kill_caller_on") == verb:
        # fault injection: the caller (salt-call, a minion job) dies here, as in a crash or power cut
        knobs["kill_caller_on"] = None
        agent.behaviour_file.write_text(json.dumps(knobs))
        os.kill(os.getppid(), signal.SIGKILL)
        return 1
    if verb in ("start", "stop") and _spend_knob(agent, f"fail_{verb}"):
        print(f"BESClient {verb} failed: simulated failure", file=sys.stderr)
        return 1
    pid = _daemon_pid(agent)
    if verb == "status":
        print("BESClient is running" if pid else "BESClient is stopped")
        return 0 if pid else 3
    if verb in ("stop", "restart") and pid:
        os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid):
            print("BESClient did not stop", file=sys.stderr)
            return 1
        agent.pidfile.unlink(missing_ok=True)
        _log(agent, "stop")
    if verb in ("start", "restart") and not _daemon_pid(agent):
        agent.pidfile.unlink(missing_ok=True)
        subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--root", str(agent.root), "daemon"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        deadline = time.monotonic() + 10
        while not _daemon_pid(agent):
            if time.monotonic() > deadline:
                print("BESClient did not start", file=sys.stderr)
                return 1
            time.sleep(0.02)
        _log(agent, "start")
    print(f"BESClient {verb}: ok")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--root", required=True)
    parser.add_argument("verb", choices=("start", "stop", "restart", "status", "daemon", "install"))
    args = parser.parse_args(argv)
    agent = StandInAgent(args.root)
    if args.verb == "install":
        agent.install()
        return 0
    if args.verb == "daemon":
        run_daemon(agent)
        return 0
    return control(agent, args.verb)


if __name__ == "__main__":
    sys.exit(main())
