"""Fixtures shared by every test layer."""

import pathlib
import shutil
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "support"))

from besagent import StandInAgent


@pytest.fixture
def make_agent():
    """Lay out stand-in agents; every daemon they start is stopped afterwards."""
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


def pytest_sessionfinish(session, exitstatus):
    # Salt's deferred log handler flushes at exit into pytest's capture stream, closed by then;
    # its records already reached the test reports, so don't print tracebacks about the stream.
    import logging

    logging.raiseExceptions = False
