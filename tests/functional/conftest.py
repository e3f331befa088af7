"""The real Salt loader (execution and state modules synced from this repo) against a stand-in agent."""

import pytest
from saltfactories.utils.functional import Loaders


@pytest.fixture(scope="package")
def agent_root(tmp_path_factory):
    return tmp_path_factory.mktemp("bes") / "agent"


@pytest.fixture(scope="package")
def minion_opts(salt_factories, agent_root, module_roots):
    factory = salt_factories.salt_minion_daemon(
        "iemkey-functional",
        overrides={
            "file_client": "local",
            "file_roots": {"base": module_roots},
            "iemkey": {
                "config_file": str(agent_root / "var/opt/BESClient/besclient.config"),
                "init_script": str(agent_root / "etc/init.d/besclient"),
                "client_binary": str(agent_root / "opt/BESClient/bin/BESClient"),
                "command_timeout": 5,
                "lock_wait": 2,
            },
        },
    )
    return factory.config.copy()


@pytest.fixture(scope="package")
def loaders(minion_opts):
    return Loaders(minion_opts)


@pytest.fixture
def modules(loaders):
    """The loaded execution modules, with a fresh cache (rotation record) for each test."""
    loaders.reset_state()
    return loaders.modules


@pytest.fixture
def agent(make_agent, agent_root):
    """An installed, stopped agent whose keys are 30 days old."""
    return make_agent(agent_root, key_age=30 * 86400)
