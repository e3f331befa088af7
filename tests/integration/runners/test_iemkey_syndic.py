"""
A master of masters (``order_masters``), a syndic (its own master) and a minion under the syndic, with
iemkey's reactors on both masters and the syndic forwarding every event up
(``syndic_forward_all_events``). The master of masters holds only the syndic's key:

- the minion's signed alert is decided by the syndic's master (it accepted the minion): one rotation;
- the copy a syndic forwards to the master of masters is refused, saying where iemkey runs. (Here the
  test fires that copy on the master of masters' bus itself: on this sandbox the syndic's forwarding to
  the master of masters fails on Salt 3008, "Payload decryption failed even after re-authenticating",
  and even ``test.ping`` through it returns nothing, which is Salt's, not iemkey's);
- ``iemkey.report`` and ``iemkey.targets`` on the master of masters refuse, saying where to run them;
  on the syndic's master they answer for the minion.
"""

import json
import pathlib

import iemkey_auth
import pytest
from helpers import ENGINE, agent_settings, preloaded, synced
from saltevents import log_lines, wait_for
from saltfactories.utils import random_string

SINCE = "2026-01-01T00:00:00Z"


def _iemkey_master(state_root, pillar_root, module_roots, **extra):
    return {
        "file_roots": {"base": [str(state_root), *module_roots]},
        "pillar_roots": {"base": [str(pillar_root)]},
        "engines": ENGINE,
        "log_level_logfile": "debug",
        **extra,
    }


@pytest.fixture(scope="module")
def master_of_masters(salt_factories, state_root, pillar_root, module_roots):
    factory = preloaded(
        salt_factories.salt_master_daemon(
            random_string("mom-"), overrides=_iemkey_master(state_root, pillar_root, module_roots, order_masters=True)
        )
    )
    with factory.started(start_timeout=120):
        synced(factory)
        yield factory


@pytest.fixture(scope="module")
def syndic(master_of_masters, state_root, pillar_root, module_roots):
    factory = master_of_masters.salt_syndic_daemon(
        random_string("syndic-"),
        overrides={"syndic_forward_all_events": True},
        master_overrides=_iemkey_master(state_root, pillar_root, module_roots),
    )
    preloaded(factory.master)
    with factory.started(start_timeout=180):
        synced(factory.master)
        yield factory


@pytest.fixture(scope="module")
def leaf(syndic, tmp_path_factory):
    root = tmp_path_factory.mktemp("leaf") / "agent"
    factory = syndic.master.salt_minion_daemon(
        random_string("leaf-"),
        overrides={
            "iemkey": agent_settings(root),
        },
    )
    factory.agent_root = root
    with factory.started(start_timeout=120):
        ret = factory.salt_call_cli(timeout=120).run("saltutil.sync_all")
        assert ret.returncode == 0, ret
        yield factory


def test_the_syndics_master_decides_and_the_master_of_masters_says_where_iemkey_runs(
    master_of_masters, syndic, leaf, make_agent
):
    agent = make_agent(leaf.agent_root, key_age=30 * 86400)
    old_id = agent.computer_id
    ret = leaf.salt_call_cli(timeout=60).run("iemkey.alert", "reason=IDS rule 4711")
    assert ret.returncode == 0, ret
    assert agent.wait_for_keys(timeout=90) and wait_for(lambda: agent.computer_id != old_id, timeout=60)
    # what the syndic forwards: the minion's own event, signed with the key only the syndic's master holds
    key = (pathlib.Path(leaf.config["pki_dir"]) / "minion.pem").read_bytes()
    forwarded = {"id": leaf.id, "data": iemkey_auth.sign("iemkey/compromised", leaf.id, {"reason": "IDS"}, key)}
    sent = master_of_masters.salt_run_cli(timeout=60).run(
        "event.send", "iemkey/compromised", f"data={json.dumps(forwarded)}"
    )
    assert sent.returncode == 0, sent
    assert log_lines(
        master_of_masters,
        f"'{leaf.id}' is not an accepted minion: this is a master of masters (order_masters), whose key registry "
        "holds only its syndics; iemkey runs on the masters (syndics) that accepted the minions",
        timeout=60,
    )
    report = syndic.master.salt_run_cli(timeout=120).run("iemkey.report", f"since={SINCE}", f"tgt={leaf.id}")
    assert report.returncode == 0 and report.data["compliant"] == [leaf.id], report


def test_on_the_master_of_masters_report_and_targets_refuse_saying_where_to_run_them(master_of_masters, leaf):
    for args in (("iemkey.report", f"since={SINCE}"), ("iemkey.targets",)):
        ret = master_of_masters.salt_run_cli(timeout=120).run(*args)
        assert ret.returncode != 0, ret
        assert ret.data["error"].startswith("this master is a master of masters (order_masters)"), ret
        assert "run iemkey's runner (and engine) on the masters that accepted the minions" in ret.data["error"]
