"""
The iemkey engine in-process: what it keeps from the bus, how decisions become batched rotation jobs,
how it answers minions that come back, job returns and probes, what its pass does, and the reactor
files' fallback. A real store in a temp dir and real signatures; the publisher and the bus are the
fakes (integration tests publish for real).
"""

import collections
import datetime
import logging

import iemkey_auth
import iemkey_engine
import iemkey_owed
import iemkey_store
import pytest
from helpers import hook_signature
from runner_fakes import KEYS, accepted_keys

UTC = datetime.timezone.utc
SECRET = "engine-hook-secret"


class Publisher:
    def __init__(self):
        self.rotations, self.probes, self.fail = [], [], None

    def rotation(self, minions, since):
        if self.fail:
            raise iemkey_engine.iemkey_delivery.PublishError(self.fail)
        self.rotations.append((sorted(minions), since))
        return f"J{len(self.rotations)}"

    def probe(self, minions, jid):
        self.probes.append((sorted(minions), jid))
        return f"P{len(self.probes)}"


class Clock:
    def __init__(self):
        self.now = datetime.datetime.now(UTC)

    def __call__(self):
        return self.now

    def tick(self, seconds):
        self.now += datetime.timedelta(seconds=seconds)


@pytest.fixture
def opts(tmp_path):
    return {
        "pki_dir": accepted_keys(tmp_path),
        "cachedir": str(tmp_path / "cache"),
        "sock_dir": str(tmp_path / "sock"),
        "iemkey": {"reactor": {"hook_secret": SECRET, "rate": 100}, "delivery": {"batch_size": 2}},
    }


@pytest.fixture
def engine(opts):
    announced = []
    engine = iemkey_engine.Engine(opts, iemkey_store.from_opts(opts), Publisher(), announced.append, clock=Clock())
    engine.announced = announced
    return engine


def _alert(minion="alpha", tag="iemkey/compromised", payload=None, when=None):
    data = iemkey_auth.sign(tag, minion, payload or {"reason": "ids"}, KEYS[minion][0], now=when)
    return {"id": minion, "data": data, "cmd": "_minion_event", "_stamp": datetime.datetime.now(UTC).isoformat()}


def _flush(engine):
    with engine.out:
        batch, engine.outbox = engine.outbox, {}
    return engine.publish(batch)


def _owed(engine, minion="alpha"):
    return engine.store.get("owed", minion)


def test_the_reader_keeps_only_what_the_engine_acts_on(engine):
    kept = [
        engine.offer(tag, {})
        for tag in (
            "iemkey/compromised",
            "iemkey/rotated",
            "salt/netapi/hook/iemkey/compromised",
            "salt/minion/web01/start",
            "salt/auth",
            "salt/job/1/ret/web01",
            "salt/job/1/new",
            "iemkey/reactor/decided",
            "salt/key",
            "anything/else",
        )
    ]
    assert kept == [True, True, True, True, True, True, False, False, False, False]
    assert len(engine.inbox) == 6


def test_a_full_inbox_drops_and_counts_instead_of_growing(engine, monkeypatch, caplog):
    monkeypatch.setattr(iemkey_engine, "INBOX_MAX", 3)
    with caplog.at_level(logging.ERROR):
        assert [engine.offer("iemkey/compromised", {}) for _ in range(5)] == [True, True, True, False, False]
    assert engine.dropped == 2 and len(caplog.records) == 1  # the first drop is logged; then counted
    assert "1 events dropped: 3 wait for the decider" in caplog.text


def test_decisions_wait_for_their_batch_and_one_job_carries_the_earliest_since(engine):
    early = datetime.datetime.now(UTC) - datetime.timedelta(seconds=20)
    engine.decide("iemkey/compromised", _alert("alpha"))
    engine.decide("iemkey/compromised", _alert("beta", when=early))
    assert engine.publisher.rotations == [] and engine.announced == []  # nothing until the batch is published
    published = _flush(engine)
    assert engine.publisher.rotations == [(["alpha", "beta"], early.isoformat())] and published == {
        "alpha": "J1",
        "beta": "J1",
    }
    assert [(d["action"], d["minion"], d["jid"]) for d in engine.announced] == [
        ("rotate", "alpha", "J1"),
        ("rotate", "beta", "J1"),
    ]
    assert (_owed(engine)["state"], _owed(engine)["jid"]) == ("delivered", "J1")


def test_a_batch_is_split_at_batch_size_and_an_exact_one_gets_its_own_job(engine):
    for minion in ("alpha", "beta"):
        engine.decide("iemkey/compromised", _alert(minion))
    now = datetime.datetime.now(UTC)
    for minion, since in (("gamma", now), ("delta", datetime.datetime(2026, 1, 1, tzinfo=UTC))):
        sig = iemkey_owed.signal("incident", since, now, "incident:x", None, True)
        engine.store.put("owed", minion, iemkey_owed.new(minion, sig, now, "t"))
    engine.queue("gamma", now.isoformat(), False, None)
    engine.queue("delta", "2026-01-01T00:00:00+00:00", True, None)
    engine.queue("epsilon", now.isoformat(), False, None)  # nothing owed any more (settled meanwhile)
    _flush(engine)
    assert [targets for targets, _since in engine.publisher.rotations] == [["delta"], ["alpha", "beta"], ["gamma"]]
    assert engine.publisher.rotations[0][1] == "2026-01-01T00:00:00+00:00"


def test_a_job_the_master_could_not_publish_is_a_failure_tried_again(engine, caplog):
    engine.decide("iemkey/compromised", _alert())
    engine.publisher.fail = "the master's publisher is down"
    with caplog.at_level(logging.ERROR):
        _flush(engine)
    owed = _owed(engine)
    assert owed["state"] == "failed" and owed["error"] == "the master's publisher is down" and owed["next_try"]
    (decided,) = engine.announced
    assert (decided["result"], decided["jid"], decided["error"]) == (False, None, "the master's publisher is down")


def test_a_duplicate_in_flight_is_announced_at_once_and_publishes_nothing(engine):
    engine.decide("iemkey/compromised", _alert())
    _flush(engine)
    engine.decide("iemkey/compromised", _alert())
    assert engine.outbox == {} and engine.announced[-1]["action"] == "duplicate"
    assert engine.announced[-1]["jid"] == "J1" and len(engine.publisher.rotations) == 1


def test_what_the_gate_refuses_costs_a_counted_line_and_no_announcement(engine, caplog):
    with caplog.at_level(logging.WARNING):
        for _ in range(20):
            engine.decide("iemkey/compromised", {"id": "alpha", "data": {"reason": "forged"}})
    assert engine.announced == [] and engine.outbox == {} and len(caplog.records) == 5
    assert engine.store.all("owed") == {}


def test_a_cluster_peers_copy_of_an_event_is_left_to_the_master_that_received_it(engine, caplog):
    with caplog.at_level(logging.DEBUG, logger="iemkey_engine"):
        engine.decide("iemkey/compromised", {**_alert(), "__peer_id": "master-2"})
    assert engine.outbox == {} and "from cluster peer master-2: its receiving master decides" in caplog.text


def test_a_webhook_is_decided_once_with_its_hmac_and_a_minions_copy_is_refused(engine):
    body = '{"minion_id": "beta"}'
    hook = {"body": body, "headers": {"X-Iemkey-Signature": hook_signature(SECRET, body)}}
    engine.decide("salt/netapi/hook/iemkey/compromised", {**hook, "id": "alpha"})  # a minion put it on the bus
    assert engine.outbox == {}
    engine.decide("salt/netapi/hook/iemkey/compromised", dict(hook))
    assert list(engine.outbox) == ["beta"]
    engine.decide("salt/netapi/hook/iemkey/compromised", dict(hook))  # the same signature again: a replay
    assert engine.announced[-1]["action"] == "refused" and "replays a webhook" in engine.announced[-1]["refused"]


def test_a_minion_that_comes_back_is_asked_again_at_once_and_a_flood_of_start_events_costs_a_read(engine):
    engine.decide("iemkey/compromised", _alert())
    _flush(engine)
    engine.transition_any("alpha", lambda r: iemkey_owed.away(r, engine.clock(), "t"))
    engine.decide("salt/minion/alpha/start", {"id": "alpha"})
    assert _owed(engine)["state"] == "pending" and list(engine.outbox) == ["alpha"]
    _flush(engine)
    for _ in range(50):  # forged start events (any minion can send any tag)
        engine.decide("salt/minion/alpha/start", {})
    engine.decide("salt/auth", {"act": "accept", "id": "alpha"})
    assert engine.outbox == {} and len(engine.publisher.rotations) == 2  # at most once per BACK_EVERY
    engine.decide("salt/minion/beta/start", {})  # nothing owed to beta: nothing
    engine.decide("salt/auth", {"act": "pend", "id": "beta"})
    assert engine.outbox == {}


def test_a_minion_coming_back_redelivers_only_an_away_rotation_a_job_in_flight_is_left_to_the_probe(engine):
    """Salt fires a minion's start event and authenticates it on every reconnection (Salt 3007's
    minions every second while they check a restarted master): neither proves a job in flight was
    lost, and publishing it again on them made a second rotation job. The probe tells."""
    engine.decide("iemkey/compromised", _alert())
    _flush(engine)
    assert _owed(engine)["state"] == "delivered"
    engine.decide("salt/auth", {"act": "accept", "id": "alpha"})
    engine.decide("salt/minion/alpha/start", {"id": "alpha"})
    assert engine.outbox == {} and _owed(engine)["state"] == "delivered"
    engine.probe_answered("alpha", "J1", False)  # the probe: it no longer runs J1, and J1 never returned
    assert _owed(engine)["state"] == "pending"
    engine.transition_any("alpha", lambda r: iemkey_owed.away(r, engine.clock(), "t"))
    engine.back.clear()
    engine.decide("salt/auth", {"act": "accept", "id": "alpha"})
    assert list(engine.outbox) == ["alpha"] and _owed(engine)["state"] == "pending"


def _returned(jid, minion, ret, fun="state.single", args=None):
    args = args if args is not None else ["iemkey.rotated", {"name": "bigfix-agent-key", "owed": True}]
    return {"id": minion, "jid": jid, "fun": fun, "fun_args": args, "return": ret}


def test_a_job_that_returned_without_a_rotation_is_failed_with_its_error_and_retried_later(engine):
    engine.decide("iemkey/compromised", _alert())
    _flush(engine)
    failed = {"iemkey_|-x_|-x_|-rotated": {"result": False, "comment": "starting the agent failed: exit 1"}}
    engine.decide("salt/job/J1/ret/alpha", _returned("J1", "alpha", failed))
    owed = _owed(engine)
    assert (owed["state"], owed["attempts"], owed["error"]) == ("failed", 1, "starting the agent failed: exit 1")
    refused = ["Passed invalid arguments: boom"]
    engine.decide("salt/job/J1/ret/alpha", _returned("J1", "alpha", refused))  # J1 again: counted once
    assert _owed(engine)["attempts"] == 1 and _owed(engine)["error"] == "starting the agent failed: exit 1"
    engine.clock.tick(61)  # retry_after
    engine.run_pass(engine.settings())
    _flush(engine)
    engine.decide("salt/job/J1/ret/alpha", _returned("J1", "alpha", refused))  # a late copy of J1: not J2's
    assert _owed(engine)["state"] == "delivered" and _owed(engine)["jid"] == "J2"
    engine.decide("salt/job/J2/ret/alpha", _returned("J2", "alpha", refused))
    assert _owed(engine)["error"] == "Passed invalid arguments: boom" and _owed(engine)["attempts"] == 2
    engine.decide("salt/job/J2/ret/alpha", _returned("J2", "alpha", "text", fun="test.ping"))  # not ours
    assert _owed(engine)["attempts"] == 2


def test_a_rotation_being_published_is_not_published_again_and_a_decision_meanwhile_rides_with_it(engine):
    engine.decide("iemkey/compromised", _alert())
    _flush(engine)
    failed = {"iemkey_|-x_|-x_|-rotated": {"result": False, "comment": "stopping the agent failed"}}
    engine.decide("salt/job/J1/ret/alpha", _returned("J1", "alpha", failed))
    engine.clock.tick(61)
    engine.run_pass(engine.settings())  # its retry is due: queued; the record still says failed
    with engine.out:  # the publisher took the batch: its job is being published, not yet recorded
        batch, engine.outbox = engine.outbox, {}
        engine.sending.update((minion, item[2]) for minion, item in batch.items())
    engine.run_pass(engine.settings())  # still due by the record
    engine.decide("iemkey/compromised", _alert(payload={"reason": "edr"}))  # failed: "redelivered"
    assert engine.outbox == {} and engine.announced[1:] == []
    engine.publish(batch)
    assert [r[0] for r in engine.publisher.rotations] == [["alpha"], ["alpha"]] and engine.sending == {}
    assert [(d["action"], d["jid"]) for d in engine.announced[1:]] == [("redelivered", "J2")]
    assert _owed(engine)["jid"] == "J2" and _owed(engine)["state"] == "delivered"


def test_a_re_sent_copy_of_an_alert_does_not_take_a_rotation_out_of_review_a_new_alert_does(engine):
    alert = _alert()
    engine.decide("iemkey/compromised", alert)
    _flush(engine)
    engine.transition_any("alpha", lambda r: {**r, "state": "review", "attempts": 5})
    engine.decide("iemkey/compromised", {**alert, "data": dict(alert["data"])})  # the minion's resend schedule
    assert engine.announced[-1]["action"] == "duplicate" and "waits for an operator" in engine.announced[-1]["detail"]
    assert engine.outbox == {} and _owed(engine)["state"] == "review"
    engine.decide("iemkey/compromised", _alert(payload={"reason": "a new one"}))
    assert list(engine.outbox) == ["alpha"] and _owed(engine)["state"] == "pending"
    assert _owed(engine)["attempts"] == 0


def test_a_successful_return_waits_for_the_signed_rotation_then_asks_again(engine):
    engine.decide("iemkey/compromised", _alert())
    _flush(engine)
    done = {"iemkey_|-x_|-x_|-rotated": {"result": True, "comment": "Rotated", "changes": {"key": {}}}}
    engine.decide("salt/job/J1/ret/alpha", _returned("J1", "alpha", done))
    assert _owed(engine)["returned"] and _owed(engine)["state"] == "delivered"
    engine.clock.tick(11)
    engine.run_pass(engine.settings())
    owed = _owed(engine)
    assert owed["state"] == "failed" and owed["error"] == iemkey_engine.UNSETTLED


def test_the_pass_probes_a_silent_delivery_and_marks_a_minion_that_does_not_answer_away(engine):
    engine.decide("iemkey/compromised", _alert())
    _flush(engine)
    engine.clock.tick(11)
    engine.run_pass(engine.settings())
    assert engine.publisher.probes == [(["alpha"], "J1")]
    engine.run_pass(engine.settings())  # probed, not answered yet: it waits
    assert len(engine.publisher.probes) == 1
    engine.clock.tick(11)
    engine.run_pass(engine.settings())
    owed = _owed(engine)
    assert owed["state"] == "away" and owed["detail"].startswith("not connected: no answer to job J1 since ")
    engine.clock.tick(31)  # redeliver_every
    engine.run_pass(engine.settings())
    assert list(engine.outbox) == ["alpha"]
    _flush(engine)
    assert _owed(engine)["state"] == "away" and engine.redelivered["alpha"] == (engine.clock(), "J2")  # not written
    failed = {"iemkey_|-x_|-x_|-rotated": {"result": False, "comment": "stopping the agent failed"}}
    engine.decide("salt/job/J0/ret/alpha", _returned("J0", "alpha", failed))  # no job of this rotation's
    assert _owed(engine)["state"] == "away"
    engine.decide("salt/job/J2/ret/alpha", _returned("J2", "alpha", failed))  # the one sent while away
    owed = _owed(engine)
    assert (owed["state"], owed["jid"], owed["attempts"]) == ("failed", "J2", 1) and owed["away_since"] is None


def test_a_lone_decision_is_published_after_one_step_and_a_storm_waits_for_its_batch(engine, monkeypatch):
    clock = {"now": 0.0}
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        clock["now"] += seconds
        if grow["on"]:  # the decider adds a minion to the batch during each step
            engine.outbox[f"m{len(slept)}"] = ("2026-12-01T00:00:00+00:00", False, [])

    grow = {"on": False}
    monkeypatch.setattr(iemkey_engine.time, "monotonic", lambda: clock["now"])
    monkeypatch.setattr(iemkey_engine.time, "sleep", sleep)
    engine.outbox["alpha"] = ("2026-12-01T00:00:00+00:00", False, [])
    engine.let_the_batch_fill(0.5)
    assert slept == [0.05]  # nothing joined: published at once
    slept.clear()
    grow["on"] = True
    engine.let_the_batch_fill(0.5)
    assert abs(sum(slept) - 0.5) < 1e-9 and max(slept) <= 0.05  # it kept growing: the whole window


def test_while_events_wait_to_be_decided_a_pass_runs_at_most_every_30_s(engine, monkeypatch):
    moments = iter([100.0, 100.0, 103.0, 129.0, 131.0, 131.0])
    monkeypatch.setattr(iemkey_engine.time, "monotonic", lambda: next(moments))
    passes = []
    monkeypatch.setattr(engine, "run_pass", passes.append)
    engine.maybe_pass()  # 100: the first pass
    engine.inbox.append(("iemkey/compromised", {}))
    engine.maybe_pass()  # 103: busy, 3 s since: deciding comes first
    engine.maybe_pass()  # 129: busy, 29 s since
    engine.maybe_pass()  # 131: busy, but 31 s since
    assert len(passes) == 2


def test_a_probe_answer_says_connected_and_a_job_it_never_ran_is_delivered_again(engine):
    engine.decide("iemkey/compromised", _alert())
    _flush(engine)
    running = _returned("P1", "alpha", {"jid": "J1", "fun": "state.single"}, fun="saltutil.find_job", args=["J1"])
    engine.decide("salt/job/P1/ret/alpha", running)
    assert _owed(engine)["seen"] and _owed(engine)["state"] == "delivered"
    never = _returned("P2", "alpha", {}, fun="saltutil.find_job", args=["J1"])
    engine.decide("salt/job/P2/ret/alpha", never)
    assert _owed(engine)["state"] == "pending"
    other = _returned("P3", "alpha", {}, fun="saltutil.find_job", args=["J0"])  # another job's probe: ignored
    engine.decide("salt/job/P3/ret/alpha", other)
    assert _owed(engine)["state"] == "pending"


def test_a_signed_rotation_settles_it_and_a_later_pass_has_nothing_to_do(engine):
    engine.decide("iemkey/compromised", _alert())
    _flush(engine)
    payload = {"old_computer_id": "1001", "rotated_at": datetime.datetime.now(UTC).isoformat()}
    engine.decide("iemkey/rotated", _alert(tag="iemkey/rotated", payload=payload))
    assert _owed(engine) is None and engine.announced[-1]["owed"]["settled"] is True
    engine.clock.tick(100)
    engine.run_pass(engine.settings())
    assert engine.outbox == {} and engine.publisher.probes == []


class Outage:
    """A store whose ``add`` calls numbered in ``failing`` fail, as an unreachable shared store's do."""

    def __init__(self, store, failing):
        self.store, self.failing, self.adds = store, failing, 0

    def __getattr__(self, name):
        return getattr(self.store, name)

    def add(self, bank, key, record):
        self.adds += 1
        if self.adds in self.failing:
            raise iemkey_store.StoreError("the iemkey store at redis://x did not answer within 1 s; nothing decided")
        return self.store.add(bank, key, record)


@pytest.mark.parametrize("failing", [{1}, {2}], ids=["claiming its nonce", "recording the owed rotation"])
def test_an_event_the_store_could_not_take_is_decided_again_once_it_answers(engine, monkeypatch, caplog, failing):
    """The second case: its nonce was claimed before the store went away; deciding it again is not a replay."""
    monkeypatch.setattr(engine, "store", Outage(engine.store, failing))
    monkeypatch.setattr(engine.reactions, "store", engine.store)
    monkeypatch.setattr(iemkey_engine.time, "sleep", lambda _s: None)
    engine.offer("iemkey/compromised", _alert())
    engine.running = True
    steps = []

    def step():  # one turn of the decider loop, then stop
        steps.append(1)
        engine.running = len(steps) < 2

    monkeypatch.setattr(engine, "maybe_pass", step)
    with caplog.at_level(logging.ERROR):
        engine.decide_loop()
    assert "events wait and will be decided once it answers" in caplog.text
    assert list(engine.outbox) == ["alpha"] and len(engine.inbox) == 0  # decided on the second turn, once


def test_a_malformed_delivery_setting_is_an_error_not_a_guess(engine, opts):
    opts["iemkey"]["delivery"] = {"batch_size": "lots"}
    with pytest.raises(iemkey_engine.iemkey_config.Misconfigured, match="iemkey:delivery:batch_size must be"):
        engine.settings()


@pytest.mark.parametrize(
    ("engines", "configured"),
    [
        ([{"iemkey": {}}], True),
        (["iemkey"], True),
        ({"iemkey": {}}, True),
        ([{"mine": {"engine_module": "iemkey"}}], True),
        ([{"pytest": {}}], False),
        (None, False),
    ],
)
def test_whether_the_master_runs_the_engine(engines, configured):
    assert iemkey_engine.configured({"engines": engines}) is configured


# -- the reactor files' fallback --------------------------------------------------------------------
@pytest.fixture
def reactor(opts, monkeypatch):
    published, fired = [], []

    class Client:
        def cmd_async(self, tgt, fun, arg, tgt_type, kwarg=None):
            published.append((tgt, fun, kwarg))
            return "R1"

    class Bus:
        def fire_event(self, data, tag):
            fired.append((tag, data))

    import salt.client
    import salt.utils.event

    monkeypatch.setattr(salt.client, "get_local_client", lambda *a, **k: Client())
    monkeypatch.setattr(salt.utils.event, "get_master_event", lambda *a, **k: Bus())
    monkeypatch.setattr(iemkey_engine, "_HERE", {"engine": None, "opts": None, "warned": False})
    return published, fired


def test_where_the_engine_runs_the_reactor_files_do_nothing(opts, reactor):
    opts["engines"] = [{"iemkey": {}}]
    assert iemkey_engine.reaction("iemkey/compromised", _alert(), opts) == {}
    assert reactor == ([], [])


def test_without_the_engine_the_reactor_decides_and_publishes_at_once_and_says_what_it_lacks(opts, reactor, caplog):
    published, fired = reactor
    with caplog.at_level(logging.WARNING):
        assert iemkey_engine.reaction("iemkey/compromised", _alert(), opts) == {}
        iemkey_engine.reaction("iemkey/compromised", _alert("beta"), opts)
    assert [tgt for tgt, _fun, _kw in published] == [["alpha"], ["beta"]]
    assert published[0][2]["owed"] is True
    assert [(t, d["action"], d["jid"]) for t, d in fired] == [
        ("iemkey/reactor/decided", "rotate", "R1"),
        ("iemkey/reactor/decided", "rotate", "R1"),
    ]
    lines = [r.getMessage() for r in caplog.records if "the iemkey engine is not configured" in r.getMessage()]
    assert len(lines) == 1  # said once per process


def test_without_the_engine_a_store_out_of_reach_is_announced_as_not_decided(opts, reactor, caplog):
    from pytestshellutils.utils import ports

    opts["iemkey"]["store"] = {"driver": "redis", "port": ports.get_unused_localhost_port(), "wait": 0.3}
    with caplog.at_level(logging.ERROR):
        iemkey_engine.reaction("iemkey/compromised", _alert(), opts)
    assert "iemkey/compromised event from alpha NOT decided, send it again" in caplog.text
    assert [d["action"] for _t, d in reactor[1]] == ["error"]
    opts["iemkey"]["store"] = {"driver": "etcd"}
    iemkey_engine._HERE.update(engine=None)
    with caplog.at_level(logging.ERROR):
        assert iemkey_engine.reaction("iemkey/compromised", _alert(), opts) == {}
    assert "iemkey:store:driver 'etcd' is not known" in caplog.text


def test_a_job_published_while_the_store_is_away_is_recorded_later_and_never_published_twice(engine, monkeypatch):
    engine.decide("iemkey/compromised", _alert())
    real = engine.store

    class Away:
        """Reads answer; the write that records the delivery does not (the store went away meanwhile)."""

        def __init__(self):
            self.away = True

        def __getattr__(self, name):
            return getattr(real, name)

        def update(self, bank, key):
            if self.away:
                raise iemkey_store.StoreError("the iemkey store at redis://x did not answer within 5 s")
            return real.update(bank, key)

    store = Away()
    monkeypatch.setattr(engine, "store", store)
    _flush(engine)
    assert len(engine.publisher.rotations) == 1 and len(engine.unrecorded) == 1 and engine.announced == []
    with pytest.raises(iemkey_store.StoreError):
        engine.record_published()
    store.away = False
    engine.record_published()
    assert engine.unrecorded == collections.deque() and len(engine.publisher.rotations) == 1
    assert (_owed(engine)["state"], _owed(engine)["jid"]) == ("delivered", "J1")
    assert [d["jid"] for d in engine.announced] == ["J1"]


def test_a_batch_the_store_cannot_check_waits_and_nothing_is_published(engine, monkeypatch):
    engine.decide("iemkey/compromised", _alert())

    def away(*_args):
        raise iemkey_store.StoreError("the iemkey store at redis://x did not answer within 5 s")

    monkeypatch.setattr(engine.store, "get", away)
    with pytest.raises(iemkey_store.StoreError):
        _flush(engine)
    assert engine.publisher.rotations == []


def test_one_minion_queued_twice_is_one_item_with_the_earliest_since_either_exact_and_both_decisions(engine):
    engine.queue("alpha", "2026-12-07T10:00:00+00:00", False, {"action": "rotate"})
    engine.queue("alpha", "2026-12-07T09:00:00+00:00", True, None)
    engine.queue("alpha", "2026-12-07T11:00:00+00:00", False, {"action": "redelivered"})
    assert engine.outbox == {
        "alpha": ("2026-12-07T09:00:00+00:00", True, [{"action": "rotate"}, {"action": "redelivered"}])
    }


@pytest.mark.parametrize("state", ["review", "held"])
def test_a_rotation_that_went_to_review_or_held_while_it_waited_is_not_published(engine, state):
    engine.decide("iemkey/compromised", _alert())
    engine.transition_any("alpha", lambda r: {**r, "state": state})
    assert _flush(engine) == {} and engine.publisher.rotations == []
    (decided,) = engine.announced
    assert decided["jid"] is None and decided["detail"].endswith(" (no longer owed)"), decided
    assert decided["detail"].startswith("a rotation made at or after ")


def test_a_successful_return_of_an_exact_rotation_asks_again_with_its_own_since(engine):
    engine.decide("iemkey/compromised", _alert())
    _flush(engine)
    engine.transition_any("alpha", lambda r: {**r, "exact": True})
    done = {"iemkey_|-x_|-x_|-rotated": {"result": True, "comment": "Rotated", "changes": {}}}
    engine.decide("salt/job/J1/ret/alpha", _returned("J1", "alpha", done))
    owed = _owed(engine)
    assert owed["state"] == "pending" and owed["detail"] == "asking again with its own since" and owed["returned"]
