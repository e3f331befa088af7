"""Fixtures shared by every test layer."""

import os
import shutil
import tempfile

import pytest
from besagent import StandInAgent
from helpers import REPO


@pytest.fixture(scope="session")
def salt_factories_default_root_dir():
    """A root of this session's own for salt-factories. Its default, $TMPDIR, keeps the generated
    CLI scripts in $TMPDIR/scripts and reuses them, each with its creator's site-packages baked in:
    another venv's Salt would run. Short, under /tmp: Salt's unix sockets live below it."""
    root = tempfile.mkdtemp(prefix="iemkey-sf-", dir="/tmp")
    yield root
    if not os.environ.get("IEMKEY_KEEP_DAEMON_FILES"):  # set it to read the daemons' logs after a run
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def module_roots(tmp_path_factory):
    """What README tells a master to serve: a folder of links to _modules, _states, _runners and _utils,
    and the formula's salt/ (serving the repo root would walk .venv and friends on every sync)."""
    served = tmp_path_factory.mktemp("iemkey-modules")
    for folder in ("_modules", "_states", "_runners", "_utils", "_engines", "_grains"):
        (served / folder).symlink_to(REPO / folder)
    return [str(served), str(REPO / "salt")]


@pytest.fixture
def make_agent():
    """Lay out stand-in agents (running, as installed agents are); afterwards stop every daemon and
    fail the test if any saw its KeyStorage vanish while it ran: whatever the test did, nothing may
    delete KeyStorage before the agent is stopped."""
    made = []

    def make(root, **install):
        agent = StandInAgent(root)
        agent.kill()
        if agent.root.exists():
            shutil.rmtree(agent.root)
        made.append(agent.install(**install))
        return made[-1]

    yield make
    for agent in made:
        agent.kill()
    violations = [line for agent in made for line in agent.violations()]
    assert violations == [], "KeyStorage was deleted while the agent ran (before its stop)"


def pytest_sessionfinish(session, exitstatus):
    # Salt's deferred log handler flushes at exit into pytest's capture stream, closed by then;
    # its records already reached the test reports, so don't print tracebacks about the stream.
    import logging

    logging.raiseExceptions = False


@pytest.fixture
def far_from_utc(monkeypatch):
    """This process's local time zone is 9 hours from UTC (machines here run in UTC, which would
    hide a time read as local instead of UTC)."""
    import time

    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()
