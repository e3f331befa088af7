"""
Issue 26: `make sandbox` (demo/rehearse.py) leaves a real master, salt-api, three minions and the
stand-ins running, and the README's first incident runs against it as written, command by command
(the commands are read from README.md, not copied here); SIGTERM stops everything it started.
"""

import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
from helpers import REPO

READY = "iemkey sandbox ready"
pytestmark = pytest.mark.dev_pin  # the sandbox is iemkey's tooling; Salt's lines are covered by the other tests


def _walkthrough():
    """The commands of README's first incident, in order (comments dropped)."""
    text = (REPO / "README.md").read_text()
    block = text.split("## A first incident", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """The running sandbox: (its process, the PATH its printed instructions export, what it printed)."""
    log = tmp_path_factory.mktemp("sandbox") / "out.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "demo" / "rehearse.py")],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the test can check nothing is left behind
        )
    deadline = time.monotonic() + 400
    while READY not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"the sandbox was not ready within 400 s:\n{log.read_text()}"
        time.sleep(1)
    time.sleep(1)  # the rest of the instructions
    printed = log.read_text()
    (folder,) = re.findall(r"export PATH=(\S+):\$PATH", printed)
    yield proc, f"{folder}:{os.environ['PATH']}", printed, log
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)


def _run(path, command):
    """``command`` as pasted into an operator's shell whose PATH the sandbox's instructions set."""
    env = {**os.environ, "PATH": path}
    return subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True, timeout=300, check=False)


def _json(path, command):
    done = _run(path, f"{command} --out=json")
    return done.returncode, json.loads(done.stdout or "{}")


def _until(check, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout} s"
        time.sleep(3)


def test_the_readme_first_incident_runs_as_written_in_the_sandbox(sandbox):
    _proc, path, printed, _log = sandbox
    steps = _walkthrough()
    assert [s.split()[:2] for s in steps] == [
        ["salt-run", "iemkey.incident"],
        ["salt-run", "iemkey.report"],
        ["salt-run", "iemkey.cleanup"],
        ["salt-run", "iemkey.incident"],
        ["salt-run", "iemkey.report"],
        ["salt-run", "iemkey.incident"],
    ], steps
    for step in steps:  # the sandbox prints the walk-through it offers, the same commands
        assert f"  {step}" in printed, step
    declare, report, cleanup, confirm, report_again, close = steps
    name = re.search(r"name=(\S+)", declare).group(1)

    declared = _run(path, declare)
    assert declared.returncode == 0, declared
    assert "web-1" in declared.stdout and "web-2" in declared.stdout and "db-1" not in declared.stdout

    # 2. watch: red until both web minions rotated and their old computers are listed to revoke
    def listed():
        code, data = _json(path, report)
        entry = (data.get("revocation") or {}).get(name) or {}
        return code == 1 and len(entry.get("computers") or []) == 2 and entry.get("group", {}).get("matches") and entry

    entry = _until(listed, 180, "both old computers listed to revoke, in their group")
    group = entry["group"]["name"]
    assert group == f"iemkey revoke: {name}"

    # 3. the console's Revoke Certificate on the group's computers, then the clean-up pass
    revoked = _run(path, f"bigfix-console revoke-group {shlex.quote(group)}")
    assert revoked.returncode == 0, revoked
    assert sorted(json.loads(revoked.stdout)["revoke"]) == sorted(entry["computers"])
    left = lambda: _run(path, cleanup).returncode == 0 and _json(path, report)[1]["revocation"][name]["left_console"]  # noqa: E731
    assert sorted(_until(left, 120, "the revoked computers seen leaving the console")) == sorted(entry["computers"])

    # 4. confirm; 5. green, then close
    confirmed = _run(path, f"{confirm} --out=json")
    assert confirmed.returncode == 0, confirmed
    assert sorted(json.loads(confirmed.stdout)["confirmed_revoked"]) == sorted(entry["computers"])
    green = _run(path, report_again)
    assert green.returncode == 0, green
    closed = _run(path, close)
    assert closed.returncode == 0, closed

    # a console order the stand-in cannot do is an error, not a silent no-op
    wrong = _run(path, "bigfix-console revoke-group 'no such group'")
    assert wrong.returncode != 0 and "no computer group" in wrong.stderr, wrong


def test_sigterm_stops_everything_the_sandbox_started(sandbox):
    proc, _path, printed, log = sandbox
    top = pathlib.Path(re.search(r"under (/\S+)", printed).group(1))
    assert top.is_dir()
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, log.read_text()
    assert log.read_text().rstrip().endswith("done")
    assert not top.exists()
    time.sleep(2)
    left = subprocess.run(["pgrep", "-f", str(top)], capture_output=True, text=True, check=False)
    assert left.stdout.strip() == "", f"left running: {left.stdout}"
