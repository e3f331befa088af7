"""
A master cluster (Salt 3007 and later: ``cluster_id``, ``cluster_peers``, one shared
``cluster_pki_dir``), two masters on 127.0.0.1 and 127.0.0.2 running iemkey's reactors, one minion
connected to the first, and the iemkey store in a folder both masters share. A cluster re-publishes
every event on every peer with ``__peer_id`` added, so both reactors see the minion's alert:

- the master that received it from the minion decides (one rotation); the peer acts on nothing and
  says so in its log;
- with the peer stopped, the first master goes on deciding alone.
"""

import pytest
import salt.version
from helpers import ENGINE, agent_settings, preloaded, synced
from saltevents import log_lines, wait_for
from saltfactories.utils import random_string

pytestmark = pytest.mark.skipif(
    salt.version.__saltstack_version__.info < (3007,), reason="Salt 3006 has no master cluster (3007 added it)"
)
SINCE = "2026-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster")
    (root / "pki" / "peers").mkdir(parents=True)
    return root


def _config(shared, state_root, pillar_root, module_roots, interface, peer):
    return {
        "interface": interface,
        "cluster_id": "iemkey_cluster",
        "cluster_peers": [peer],
        "cluster_pki_dir": str(shared / "pki"),
        "open_mode": True,
        "file_roots": {"base": [str(state_root), *module_roots]},
        "pillar_roots": {"base": [str(pillar_root)]},
        "engines": ENGINE,
        "iemkey": {"store": {"path": str(shared / "iemkey")}, "delivery": {"probe_after": 3, "interval": 1}},
        "log_level_logfile": "debug",
    }


@pytest.fixture(scope="module")
def cluster(salt_factories, shared, state_root, pillar_root, module_roots):
    # a cluster knows its peers by id = address (cluster_peers, cluster_pki_dir/peers/<id>.pub)
    first = preloaded(
        salt_factories.salt_master_daemon(
            "127.0.0.1", overrides=_config(shared, state_root, pillar_root, module_roots, "127.0.0.1", "127.0.0.2")
        )
    )
    with first.started(start_timeout=120):
        second = preloaded(
            salt_factories.salt_master_daemon(
                "127.0.0.2",
                overrides={
                    **_config(shared, state_root, pillar_root, module_roots, "127.0.0.2", "127.0.0.1"),
                    "ret_port": first.config["ret_port"],
                    "publish_port": first.config["publish_port"],
                },
            )
        )
        with second.started(start_timeout=120):
            synced(first, second)
            yield first, second


@pytest.fixture(scope="module")
def minion(cluster, tmp_path_factory):
    first = cluster[0]
    root = tmp_path_factory.mktemp("cl-minion") / "agent"
    factory = first.salt_minion_daemon(
        random_string("cl-minion-"),
        overrides={
            "master": f"{first.config['interface']}:{first.config['ret_port']}",
            "iemkey": agent_settings(root),
        },
        max_start_attempts=1,
    )
    factory.agent_root = root
    with factory.started(start_timeout=90):
        ret = factory.salt_call_cli(timeout=120).run("saltutil.sync_all")
        assert ret.returncode == 0, ret
        yield factory


def _registrations(agent):
    return [e for e in agent.events()[len(agent.installed[1]) :] if e.startswith("registered with new computer id")]


def test_only_the_master_that_received_the_alert_decides(cluster, minion, make_agent, shared):
    second = cluster[1]
    agent = make_agent(minion.agent_root, key_age=30 * 86400)
    old_id = agent.computer_id
    ret = minion.salt_call_cli(timeout=60).run("iemkey.alert", "reason=IDS rule 4711")
    assert ret.returncode == 0, ret
    assert agent.wait_for_keys(timeout=90) and wait_for(lambda: agent.computer_id != old_id, timeout=60)
    assert wait_for(lambda: (shared / "iemkey" / "cases").is_dir() and any((shared / "iemkey" / "cases").iterdir()))
    assert [p.name for p in (shared / "iemkey" / "compromises").iterdir()] == [f"{minion.id}.json"]
    assert len(_registrations(agent)) == 1  # one rotation, not one per cluster master
    # the peer's copy is not decided at all: not even refused as a replay of what the first decided
    assert not log_lines(second, "refusing iemkey/", timeout=5)
    assert log_lines(second, "iemkey/compromised event from cluster peer 127.0.0.1: its receiving master decides")


def test_with_its_peer_stopped_a_master_goes_on_deciding(cluster, minion, make_agent, shared):
    first, second = cluster
    agent = make_agent(minion.agent_root, key_age=30 * 86400)
    old_id = agent.computer_id
    with second.stopped():
        ret = first.salt_cli(timeout=120).run("iemkey.rotate", "wait=30", minion_tgt=minion.id)
        assert ret.returncode == 0, ret
        case = shared / "iemkey" / "cases" / f"{minion.id}:{old_id}.json"
        assert wait_for(case.exists, timeout=60)
