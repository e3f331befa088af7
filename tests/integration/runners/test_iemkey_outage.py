"""
Issue 25: iemkey never blocks Salt's event loop. A real master whose iemkey store is a real Redis,
running the iemkey engine and one plain reactor of someone else's (it answers ``canary/ping`` with
``canary/pong``). Redis is killed for 60 s in the middle of a storm of signed alerts: the other reactor
goes on answering (within 2 s of the ping, master-stamped), and when Redis is back every alert is
decided once, nothing is lost and nothing is done twice, and every owed rotation settles once.
"""

import datetime
import json
import time

import iemkey_auth
import iemkey_store
import pytest
from helpers import ENGINE, agent_settings, preloaded, rsa_key_pair
from redisserver import RedisServer
from saltevents import wait_for
from saltfactories.utils import random_string

SIMS = 20  # simulated minions: accepted keys that sign their own events
CANARY = """#!py
import importlib


def run():
    # salt is the function dict in a #!py render: import Salt's event module by its name
    events = importlib.import_module("salt.utils.event")
    bus = events.get_master_event(__opts__, __opts__["sock_dir"], listen=False)
    bus.fire_event({"ping": data.get("_stamp")}, "canary/pong")
    return {}
"""


def _stamped(stamp):
    """A master event's ``_stamp`` as epoch seconds (Salt 3006 stamps naive UTC)."""
    when = datetime.datetime.fromisoformat(stamp)
    return (when if when.tzinfo else when.replace(tzinfo=datetime.timezone.utc)).timestamp()


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis-outage")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def master(salt_factories, redis, state_root, pillar_root, module_roots, tmp_path_factory):
    canary = tmp_path_factory.mktemp("canary") / "canary.sls"
    canary.write_text(CANARY)
    factory = preloaded(
        salt_factories.salt_master_daemon(
            random_string("outage-"),
            overrides={
                "file_roots": {"base": [str(state_root), *module_roots]},
                "pillar_roots": {"base": [str(pillar_root)]},
                "engines": ENGINE,
                "reactor": [{"canary/ping": [str(canary)]}],
                "iemkey": {
                    # an outage longer than a store operation waits: StoreError, then decided again
                    "store": redis.conf(prefix="outage", wait=5),
                    "delivery": {"probe_after": 3, "redeliver_every": 5, "interval": 1},
                },
                "log_level_logfile": "debug",
            },
        )
    )
    with factory.started(start_timeout=120):
        yield factory


@pytest.fixture(scope="module")
def relay(master, tmp_path_factory):
    root = tmp_path_factory.mktemp("relay") / "agent"
    factory = master.salt_minion_daemon(random_string("relay-"), overrides={"iemkey": agent_settings(root)})
    with factory.started(start_timeout=120):
        yield factory


@pytest.fixture(scope="module")
def sims(master):
    import pathlib

    minions = pathlib.Path(master.config["pki_dir"]) / "minions"
    found = {}
    for number in range(SIMS):
        minion_id, (private, public) = f"outage-{number:02d}", rsa_key_pair()
        (minions / minion_id).write_bytes(public)
        found[minion_id] = private
    return found


def _send(relay, events):
    ret = relay.salt_call_cli(timeout=120).run(
        "event.fire_master", "{}", "outage/relay", f"preload={json.dumps({'events': events})}"
    )
    assert ret.returncode == 0, ret


def _signed(tag, minion, key, payload):
    return {"tag": tag, "data": {"id": minion, "data": iemkey_auth.sign(tag, minion, payload, key)}}


def test_a_store_outage_mid_storm_blocks_no_other_reactor_and_loses_nothing(master, relay, sims, redis, event_listener):
    store = iemkey_store.from_opts({"iemkey": {"store": redis.conf(prefix="outage")}})
    names = sorted(sims)
    first, second = names[: SIMS // 2], names[SIMS // 2 :]
    start = time.time()
    _send(relay, [_signed("iemkey/compromised", m, sims[m], {"reason": "storm"}) for m in first])
    assert wait_for(lambda: len(store.all("owed")) == len(first), timeout=60)
    redis.kill()  # SIGKILL: no goodbye to anyone
    killed = time.time()
    _send(relay, [_signed("iemkey/compromised", m, sims[m], {"reason": "storm, during the outage"}) for m in second])
    latencies = []
    while time.time() - killed < 60:  # another reactor on the same master, all through the outage
        pinged = time.time()
        ret = master.salt_run_cli(timeout=30).run("event.send", "canary/ping", "data={}")
        assert ret.returncode == 0, ret
        matched = event_listener.wait_for_events([(master.id, "canary/pong")], after_time=pinged, timeout=10)
        assert matched.found_all_events, "the other reactor stopped answering while iemkey's store was down"
        # from the master firing the ping to the reactor firing its pong, both stamped by the master (the
        # salt-run CLI's own start-up, 0.5-1.2 s on a busy machine here, is not the reactor's latency)
        latencies.append(min(e.stamp.timestamp() - _stamped(e.data["ping"]) for e in matched))
        time.sleep(2)
    redis.start()
    # a reactor blocked behind iemkey's dead store would wait out its socket_timeout (5 s) each time
    assert len(latencies) >= 10 and max(latencies) < 2, latencies
    assert wait_for(lambda: len(store.all("owed")) == SIMS, timeout=120), sorted(store.all("owed"))

    def decided():
        return [
            e.data
            for e in event_listener.get_events([(master.id, "iemkey/reactor/decided")], after_time=start)
            if e.data.get("tag") == "iemkey/compromised"
        ]

    # the decisions are announced once their jobs are published: after the outage, for both halves
    assert wait_for(lambda: len(decided()) >= SIMS, timeout=60), decided()
    decided = decided()
    assert sorted(d["minion"] for d in decided if d["action"] == "rotate") == names  # each decided, once
    assert not [d for d in decided if d["action"] in ("refused", "error")], decided  # none taken for a replay
    # each minion's signed rotation settles its owed rotation once
    now = time.time()
    payload = {"old_computer_id": "1001", "rotated_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now + 1))}
    time.sleep(1.5)
    _send(
        relay,
        [
            _signed("iemkey/rotated", m, sims[m], {**payload, "old_computer_id": str(1000 + n)})
            for n, m in enumerate(names)
        ],
    )
    assert wait_for(lambda: not store.all("owed"), timeout=60), sorted(store.all("owed"))
    assert wait_for(lambda: len(store.all("settled")) >= SIMS, timeout=30), store.all("settled")
    settled = store.all("settled")
    assert sorted(r["minion"] for r in settled.values()) == names  # one settlement per minion
