"""Fixtures shared by every test layer."""

import importlib.util
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
SUPPORT = REPO / "tests" / "support"
sys.path.insert(0, str(SUPPORT))

from besagent import StandInAgent  # noqa: E402


def load_source(kind, alias):
    """Import ``<repo>/<kind>/iemkey.py`` under ``alias`` (the three share one file name)."""
    spec = importlib.util.spec_from_file_location(alias, REPO / kind / "iemkey.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def make_agent():
    """Lay out stand-in agents; every daemon they start is stopped afterwards."""
    made = []

    def make(root, **install):
        agent = StandInAgent(root)
        agent.kill()
        if agent.root.exists():
            import shutil

            shutil.rmtree(agent.root)
        made.append(agent.install(**install))
        return made[-1]

    yield make
    for agent in made:
        agent.kill()
