"""
A real salt-master and two salt-minions (pytest-salt-factories) serving this repo,
each minion with its own stand-in agent. Started once per session (10-15 s each).
"""

import pathlib
import shutil

import pytest
from bigfix_rest import StandInBigFix
from helpers import (
    API_PASSWORD,
    API_USER,
    CLEANUP_EVERY,
    COOLDOWN,
    HOOK_SECRET,
    RATE,
    REPORT_MARGIN,
    agent_settings,
    api_settings,
)
from pytestshellutils.utils import ports
from saltapi import SaltApi, login
from saltfactories.utils import random_string


@pytest.fixture(scope="session")
def pillar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pillar")
    (root / "top.sls").write_text("base:\n  '*':\n    - iemkey\n")
    (root / "iemkey.sls").write_text("{}\n")
    return root


@pytest.fixture(scope="session")
def state_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("states")
    (root / "top.sls").write_text("base:\n  '*':\n    - iemkey\n")
    return root


@pytest.fixture(scope="session")
def bigfix_api_port():
    return ports.get_unused_localhost_port()


@pytest.fixture(scope="session")
def httpserver_listen_address(bigfix_api_port):
    """The stand-in BigFix REST server (pytest-httpserver) listens where the master's iemkey:api points."""
    return ("127.0.0.1", bigfix_api_port)


@pytest.fixture(scope="session")
def secrets_file(tmp_path_factory):
    """The master's sdb (yaml driver) behind iemkey:reactor:hook_secret."""
    path = tmp_path_factory.mktemp("sdb") / "secrets.yaml"
    path.write_text(f"hook_secret: {HOOK_SECRET}\n")
    return path


@pytest.fixture(scope="session")
def salt_master(salt_factories, pillar_root, state_root, bigfix_api_port, secrets_file, module_roots):
    factory = salt_factories.salt_master_daemon(
        random_string("iemkey-master-"),
        overrides={
            "file_roots": {"base": [str(state_root), *module_roots]},
            "pillar_roots": {"base": [str(pillar_root)]},
            # the iemkey engine decides iemkey's events and delivers owed rotations (README)
            "engines": [{"iemkey": {}}],
            "iemkey_secrets": {"driver": "yaml", "files": [str(secrets_file)]},
            # the console clean-up runs itself, as README tells operators to set it up
            "schedule": {"iemkey-cleanup": {"function": "iemkey.cleanup", "seconds": CLEANUP_EVERY}},
            "iemkey": {
                "reactor": {"cooldown": COOLDOWN, "rate": RATE, "hook_secret": "sdb://iemkey_secrets/hook_secret"},
                # a test minion is away for seconds, not hours: probe and redeliver quickly
                "delivery": {
                    "probe_after": 3,
                    "redeliver_every": 5,
                    "retry_after": 3,
                    "max_attempts": 3,
                    "interval": 1,
                },
                # the stand-in agents report every second; a real fleet's heartbeat needs the default 900 s
                "cleanup": {"report_margin": REPORT_MARGIN},
                "api": api_settings(bigfix_api_port),
            },
            "rest_cherrypy": {"host": "127.0.0.1", "port": ports.get_unused_localhost_port(), "disable_ssl": True},
            # "auto" accepts any password for the listed user: for tests only; use pam/ldap in production
            "external_auth": {"auto": {API_USER: ["@runner", "@wheel", ".*"]}},
            "log_level_logfile": "debug",
        },
    )
    with factory.started(start_timeout=120):
        ret = factory.salt_run_cli(timeout=120).run("saltutil.sync_all")
        assert ret.returncode == 0, ret
        with factory.stopped():
            pass  # as README says: restart the master so its schedule loads the synced runner
        yield factory


def _minion(salt_master, tmp_path_factory, name):
    root = tmp_path_factory.mktemp(name) / "agent"  # the stand-in registers as computer name <name>N
    factory = salt_master.salt_minion_daemon(
        random_string(f"{name}-"),
        overrides={
            "iemkey": agent_settings(root),
            "log_level_logfile": "debug",
        },
    )
    factory.agent_root = root
    return factory


@pytest.fixture(scope="session")
def salt_minion(salt_master, tmp_path_factory):
    factory = _minion(salt_master, tmp_path_factory, "alpha")
    with factory.started(start_timeout=120):
        ret = factory.salt_call_cli(timeout=120).run("saltutil.sync_all")
        assert ret.returncode == 0, ret
        yield factory


@pytest.fixture(scope="session")
def salt_minion_2(salt_master, salt_minion, tmp_path_factory):
    factory = _minion(salt_master, tmp_path_factory, "beta")
    with factory.started(start_timeout=120):
        ret = factory.salt_call_cli(timeout=120).run("saltutil.sync_all")
        assert ret.returncode == 0, ret
        yield factory


@pytest.fixture
def agent(make_agent, salt_minion):
    """A fresh installed, stopped agent with 30-day-old keys on the first minion."""
    agent = make_agent(salt_minion.agent_root, key_age=30 * 86400)
    _forget_rotations(salt_minion)
    return agent


@pytest.fixture
def agent_2(make_agent, salt_minion_2):
    agent = make_agent(salt_minion_2.agent_root, key_age=30 * 86400)
    _forget_rotations(salt_minion_2)
    return agent


def _forget_rotations(minion):
    """A fresh agent's minion: no rotation on record, and no alert kept from an earlier test (its
    schedule would send it again, and the master would owe this minion a rotation)."""
    cache = pathlib.Path(minion.config["cachedir"]) / "iemkey"
    (cache / "rotation.json").unlink(missing_ok=True)
    shutil.rmtree(cache / "alerts", ignore_errors=True)


@pytest.fixture(autouse=True)
def _fresh_cleanups(request):
    """Each test starts with no clean-ups, compromises, incidents, revocation groups or owed rotations on
    the master (the store the runner keeps under its cachedir; the replay nonces stay, as they would)."""
    if "salt_master" in request.fixturenames:
        master = request.getfixturevalue("salt_master")
        store = pathlib.Path(master.config["cachedir"]) / "iemkey"
        for bank in ("cases", "compromises", "incidents", "groups", "owed", "settled"):
            shutil.rmtree(store / bank, ignore_errors=True)


@pytest.fixture
def bigfix(httpserver, agent, agent_2):
    """The stand-in BigFix REST API at the master's iemkey:api:url, knowing both minions' agents."""
    return StandInBigFix([agent, agent_2], "iemkey-operator", API_PASSWORD).serve(httpserver)


@pytest.fixture(scope="session")
def salt_api(salt_master):
    factory = salt_master.salt_api_daemon()
    with factory.started(start_timeout=120):
        api = SaltApi(f"http://127.0.0.1:{salt_master.config['rest_cherrypy']['port']}")
        api.daemon = factory
        yield api


@pytest.fixture
def api_token(salt_api):
    return login(salt_api)


@pytest.fixture
def salt_cli(salt_master):
    return salt_master.salt_cli(timeout=120)


@pytest.fixture
def salt_run_cli(salt_master):
    return salt_master.salt_run_cli(timeout=120)


@pytest.fixture
def set_pillar(pillar_root, salt_cli, salt_minion):
    """Write the iemkey pillar file on the master and refresh the minion's pillar."""

    def write(text):
        (pillar_root / "iemkey.sls").write_text(text)
        ret = salt_cli.run("saltutil.refresh_pillar", "wait=True", minion_tgt=salt_minion.id)
        assert ret.returncode == 0, ret

    yield write
    write("{}\n")


def pytest_collection_modifyitems(items):
    """Tests that restart the master run last. After a reconnect a Salt 3007 minion re-adds its
    ``__master_alive`` schedule job with ``seconds: 0`` (master_alive_interval's default); its
    ``status.master`` then misses the loopback publish connection and the minion re-initialises
    mid-job, dropping that job's return. Setting an interval makes it worse (the job runs from
    the start), so the restarts go where no other test follows them."""
    items.sort(key=lambda item: item.get_closest_marker("restarts_master") is not None)
