"""
The reactor's gate: what cannot be genuine is refused before it costs a runner reaction, each minion
is held to ``iemkey:reactor:rate``, and a flood is logged as counts, not one line per event.
Real signatures and accepted keys in a temp pki_dir; the clock is the test's.
"""

import datetime
import logging
import pathlib

import iemkey_auth
import iemkey_gate
import pytest
from helpers import hook_signature
from runner_fakes import KEYS, accepted_keys

UTC = datetime.timezone.utc
SECRET = "gate-hook-secret"


@pytest.fixture
def opts(tmp_path):
    return {"pki_dir": accepted_keys(tmp_path), "iemkey": {"reactor": {"rate": 3, "hook_secret": SECRET}}}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def gate():
    return iemkey_gate.Gate(clock=Clock())


def _event(minion="alpha", signer=None, claimed=None, when=None, tag="iemkey/compromised"):
    data = iemkey_auth.sign(tag, minion, {"reason": "x"}, KEYS[signer or minion][0], now=when)
    return {"id": claimed or minion, "data": data}


def _now():
    return datetime.datetime.now(UTC)


def test_a_genuine_signed_event_goes_on(gate, opts):
    assert gate.admit("iemkey/compromised", _event(), opts, _now()) is None
    assert gate.admit("iemkey/rotated", _event(tag="iemkey/rotated"), opts, _now()) is None


HINT = " (a detector sends it with `salt-call iemkey.alert`)"


def _stranger():
    return {"id": "gamma", "data": iemkey_auth.sign("iemkey/compromised", "gamma", {}, KEYS["beta"][0])}


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        ({"id": "alpha", "data": {"reason": "x"}}, "it is not signed" + HINT),
        ({"id": "alpha", "data": None}, "it is not signed" + HINT),
        ("lying", "its signature does not verify with the accepted key of 'alpha'" + HINT),
        ("moved", "it is signed by 'alpha' but arrived as from 'beta'"),
        ("unknown", "'gamma' is not an accepted minion" + HINT),
    ],
)
def test_what_cannot_be_genuine_is_refused_with_its_reason(gate, opts, caplog, event, reason):
    made = {"lying": lambda: _event(signer="beta"), "moved": lambda: _event(claimed="beta"), "unknown": _stranger}
    event = made[event]() if isinstance(event, str) else event
    with caplog.at_level(logging.WARNING):
        assert gate.admit("iemkey/compromised", event, opts, _now()) == reason
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == (
        f"iemkey reactor: refusing iemkey/compromised event (as from {event['id']!r}), acting on nothing: {reason}"
    )


def test_age_is_judged_at_the_time_the_master_received_the_event(gate, opts):
    signed = _now() - datetime.timedelta(seconds=400)
    assert gate.admit("iemkey/compromised", _event(when=signed), opts, signed + datetime.timedelta(seconds=5)) is None
    reason = gate.admit("iemkey/compromised", _event(when=signed), opts, _now())
    assert reason.startswith("it was signed 400 s ago, more than 300 s")


def test_each_signer_is_held_to_its_rate_per_minute(gate, opts):
    for _ in range(3):
        assert gate.admit("iemkey/compromised", _event(), opts, _now()) is None
    assert gate.admit("iemkey/compromised", _event(), opts, _now()) == (
        "'alpha' sent more than 3 signed iemkey events in a minute (iemkey:reactor:rate)"
    )
    assert gate.admit("iemkey/compromised", _event("beta"), opts, _now()) is None  # another minion: its own rate
    gate.clock.now += 61
    assert gate.admit("iemkey/compromised", _event(), opts, _now()) is None


def test_a_flood_is_logged_as_counts_per_interval_not_a_line_per_event(gate, opts, caplog):
    unsigned = {"id": "alpha", "data": {"reason": "flood"}}
    with caplog.at_level(logging.WARNING):
        for _ in range(12_000):
            gate.admit("iemkey/compromised", unsigned, opts, _now())
        gate.clock.now += iemkey_gate.INTERVAL
        assert gate.admit("iemkey/compromised", _event("beta"), opts, _now()) is None  # genuine, after the flood
        gate.admit("iemkey/compromised", unsigned, opts, _now())
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5 + 2  # README: the first 5 of a kind in 10 s line by line, then counts
    assert lines[5] == (
        f"iemkey reactor: refused {12_000 - 5} more iemkey/compromised events (as from 'alpha') in "
        "the last 10 s, acting on nothing: it is not signed" + HINT
    )
    assert lines[-1].startswith("iemkey reactor: refusing iemkey/compromised event (as from 'alpha')")


def _hook(body='{"minion_id": "alpha"}', secret=SECRET, signed_at=None, **extra):
    return {"body": body, "signature": hook_signature(secret, body, signed_at), "from_minion": False, **extra}


def test_a_webhook_needs_a_timed_hmac_from_salt_api(gate, opts):
    assert gate.admit(iemkey_gate.HOOK_TAG, _hook(), opts, _now()) is None
    refused = "its body is not signed with iemkey:reactor:hook_secret (X-Iemkey-Signature)"
    assert gate.admit(iemkey_gate.HOOK_TAG, _hook(secret="guessed"), opts, _now()) == refused
    assert gate.admit(iemkey_gate.HOOK_TAG, {"body": "{}", "signature": None}, opts, _now()) == refused
    assert gate.admit(iemkey_gate.HOOK_TAG, _hook(from_minion=True), opts, _now()) == (
        "it was sent by a minion, not by salt-api"
    )
    stale = gate.admit(iemkey_gate.HOOK_TAG, _hook(signed_at=_now().timestamp() - 400), opts, _now())
    assert stale.startswith("it was signed 40") and "(iemkey:reactor:max_age)" in stale


def test_a_webhook_secret_only_the_runner_can_resolve_is_left_to_it(gate, opts):
    opts["iemkey"]["reactor"]["hook_secret"] = "sdb://vault/hook"
    assert gate.admit(iemkey_gate.HOOK_TAG, _hook(secret="anything"), opts, _now()) is None


def test_the_reaction_decides_in_the_reactor_process_and_leaves_salt_nothing_to_queue(opts, tmp_path, monkeypatch):
    import salt.client
    from runner_fakes import FakeLocalClient

    client = FakeLocalClient()
    monkeypatch.setattr(salt.client, "get_local_client", lambda *a, **k: client)
    monkeypatch.setattr(iemkey_gate, "GATE", iemkey_gate.Gate())
    monkeypatch.setattr(iemkey_gate, "_HERE", {"reactions": None, "opts": None})
    opts["cachedir"] = str(tmp_path / "cache")
    stamp = _now().replace(tzinfo=None).isoformat()  # Salt 3006: naive UTC
    assert iemkey_gate.reaction("iemkey/compromised", {**_event(), "_stamp": stamp, "cmd": "_minion_event"}, opts) == {}
    assert [(job["tgt"], job["fun"], job["arg"]) for job in client.published] == [
        (["alpha"], "state.single", ["iemkey.rotated"])
    ]
    assert iemkey_gate.reaction("iemkey/compromised", {"id": "beta", "data": {}, "_stamp": stamp}, opts) == {}
    body = '{"minion_id": "beta"}'
    hook = {"body": body, "headers": {"X-IEMKEY-SIGNATURE": hook_signature(SECRET, body)}, "_stamp": stamp}
    assert iemkey_gate.reaction(iemkey_gate.HOOK_TAG, hook, opts) == {}
    assert [job["tgt"] for job in client.published] == [["alpha"], ["beta"]]  # the unsigned one: nobody
    rotated = _event(tag="iemkey/rotated")
    rotated["data"] = iemkey_auth.sign(
        "iemkey/rotated", "alpha", {"old_computer_id": "1001", "rotated_at": _now().isoformat()}, KEYS["alpha"][0]
    )
    assert iemkey_gate.reaction("iemkey/rotated", {**rotated, "_stamp": stamp}, opts) == {}
    assert (tmp_path / "cache" / "iemkey" / "cases" / "alpha:1001.json").is_file()  # recorded for iemkey.cleanup


def test_on_salt_3008_the_accepted_key_comes_from_the_keys_cache_and_only_an_accepted_one(opts, monkeypatch):
    import salt.cache

    records = {
        "alpha": {"state": "accepted", "pub": KEYS["alpha"][1].decode()},
        "beta": {"state": "pending", "pub": KEYS["beta"][1].decode()},
        "gamma": "not a record",
        "delta": {"state": "accepted", "pub": ""},
    }

    class Cache:
        def __init__(self, cache_opts, driver):
            assert driver == "localfs_key" and cache_opts is opts

        def fetch(self, bank, key):
            assert bank == "keys"
            if key == "broken":
                raise OSError("the cache is down")
            return records.get(key)

    monkeypatch.setattr(salt.cache, "Cache", Cache)
    opts["keys.cache_driver"] = "localfs_key"
    assert iemkey_gate.accepted_key(opts, "alpha") == KEYS["alpha"][1]
    assert [iemkey_gate.accepted_key(opts, m) for m in ("beta", "gamma", "delta", "nosuch")] == [None] * 4
    (pathlib.Path(opts["pki_dir"]) / "minions" / "broken").write_bytes(KEYS["beta"][1])
    assert iemkey_gate.accepted_key(opts, "broken") == KEYS["beta"][1]  # the cache failed: pki_dir says


def test_a_master_cluster_reads_the_clusters_pki_dir(opts, tmp_path):
    cluster = tmp_path / "cluster-pki"
    (cluster / "minions").mkdir(parents=True)
    (cluster / "minions" / "epsilon").write_bytes(KEYS["alpha"][1])
    assert iemkey_gate.accepted_key({**opts, "cluster_pki_dir": str(cluster)}, "epsilon") is None  # no cluster_id
    clustered = {**opts, "cluster_id": "c1", "cluster_pki_dir": str(cluster)}
    assert iemkey_gate.accepted_key(clustered, "epsilon") == KEYS["alpha"][1]
    assert iemkey_gate.accepted_key(clustered, "alpha") is None  # the master's own pki_dir is not the cluster's


def test_only_a_refused_alert_names_the_command_that_sends_alerts(gate, opts):
    unsigned = {"id": "alpha", "data": {"old_computer_id": "1"}}
    assert gate.admit("iemkey/rotated", unsigned, opts, _now()) == "it is not signed"
    assert gate.admit("iemkey/compromised", unsigned, opts, _now()) == "it is not signed" + HINT


def test_the_rate_window_is_a_full_minute(gate, opts):
    for _ in range(3):
        assert gate.admit("iemkey/compromised", _event(), opts, _now()) is None
    gate.clock.now += 60
    assert gate.admit("iemkey/compromised", _event(), opts, _now()) is not None  # 60 s on: still this minute
    gate.clock.now += 0.5
    assert gate.admit("iemkey/compromised", _event(), opts, _now()) is None


@pytest.mark.parametrize("secret", [None, ""])
def test_a_webhook_without_a_secret_is_left_to_the_runner_which_says_it_is_not_set(gate, opts, secret):
    opts["iemkey"]["reactor"]["hook_secret"] = secret
    assert gate.admit(iemkey_gate.HOOK_TAG, _hook(secret="x"), opts, _now()) is None


@pytest.mark.parametrize(("value", "rate"), [("", 10), (None, 10), ("2", 2)])
def test_the_rate_is_the_masters_setting_or_10(gate, opts, value, rate):
    opts["iemkey"]["reactor"]["rate"] = value
    assert iemkey_gate.setting(opts, "rate") == rate
    assert iemkey_gate.setting({}, "max_skew") == 60 and iemkey_gate.setting({}, "max_age") == 300


def test_a_malformed_reactor_setting_is_logged_and_its_default_used(opts, caplog):
    opts["iemkey"]["reactor"]["rate"] = "lots"
    with caplog.at_level(logging.ERROR):
        assert iemkey_gate.setting(opts, "rate") == 10.0
    assert caplog.messages == ["iemkey reactor: iemkey:reactor:rate must be a number, not 'lots'; using 10"]


def test_an_id_salt_would_take_but_iemkey_does_not_has_no_accepted_key(opts):
    (pathlib.Path(opts["pki_dir"]) / "minions" / "web 01").write_bytes(KEYS["alpha"][1])  # Salt allows spaces
    assert iemkey_gate.accepted_key(opts, "web 01") is None


# -- the reactor files' entry point, in the reactor process -----------------------------------------
class Bus:
    made = 0

    def __init__(self, fail=False):
        Bus.made += 1
        self.fired, self.fail = [], fail

    def fire_event(self, data, tag):
        if self.fail:
            raise OSError("the bus is gone")
        self.fired.append((tag, data))


@pytest.fixture
def reacting(opts, tmp_path, monkeypatch):
    """The reactor process's state, fresh: its gate, its decisions, a fake LocalClient and bus."""
    import salt.client
    import salt.utils.event
    from runner_fakes import FakeLocalClient

    client, buses = FakeLocalClient(), []

    def bus(bus_opts, sock_dir, listen):
        assert sock_dir == bus_opts["sock_dir"] and listen is False  # it only fires
        buses.append(Bus(fail=bus_opts.get("bus_fails", False)))
        return buses[-1]

    monkeypatch.setattr(salt.client, "get_local_client", lambda *a, **k: client)
    monkeypatch.setattr(salt.utils.event, "get_master_event", bus)
    monkeypatch.setattr(iemkey_gate, "GATE", iemkey_gate.Gate())
    monkeypatch.setattr(iemkey_gate, "_HERE", {"reactions": None, "opts": None})
    opts.update(cachedir=str(tmp_path / "cache"), sock_dir=str(tmp_path / "sock"))
    client.buses = buses
    return client


def _stamp(at=None):
    return (at or _now()).isoformat()


def test_each_decision_is_announced_on_one_kept_bus_connection(opts, reacting):
    iemkey_gate.reaction("iemkey/compromised", {**_event(), "_stamp": _stamp()}, opts)
    iemkey_gate.reaction("iemkey/compromised", {**_event("beta"), "_stamp": _stamp()}, opts)
    (bus,) = reacting.buses
    assert [(tag, d["action"], d["minion"]) for tag, d in bus.fired] == [
        ("iemkey/reactor/decided", "rotate", "alpha"),
        ("iemkey/reactor/decided", "rotate", "beta"),
    ]


def test_a_bus_that_fails_is_made_again_for_the_next_decision(opts, reacting, caplog):
    opts["bus_fails"] = True
    with caplog.at_level(logging.DEBUG, logger="iemkey_gate"):
        iemkey_gate.reaction("iemkey/compromised", {**_event(), "_stamp": _stamp()}, opts)
    assert "iemkey reactor: could not announce the decision: the bus is gone" in caplog.messages
    opts["bus_fails"] = False
    iemkey_gate.reaction("iemkey/compromised", {**_event("beta"), "_stamp": _stamp()}, opts)
    assert len(reacting.buses) == 2 and [d["minion"] for _t, d in reacting.buses[-1].fired] == ["beta"]
    assert [job["tgt"] for job in reacting.published] == [["alpha"], ["beta"]]  # announcing never blocks acting


def test_an_events_age_is_judged_at_the_masters_stamp_and_without_one_at_arrival(opts, reacting):
    signed = _now() - datetime.timedelta(seconds=400)
    late = {**_event(when=signed), "_stamp": _stamp(signed + datetime.timedelta(seconds=2))}
    iemkey_gate.reaction("iemkey/compromised", late, opts)  # queued 400 s in the master: still judged at receipt
    iemkey_gate.reaction("iemkey/compromised", _event("beta"), opts)  # no stamp: now
    iemkey_gate.reaction("iemkey/compromised", {**_event("alpha", when=signed), "_stamp": "garbage"}, opts)
    assert [job["tgt"] for job in reacting.published] == [["alpha"], ["beta"]]  # the last: 400 s old now


def test_an_event_arriving_as_from_another_minion_than_its_signer_is_refused(opts, reacting):
    iemkey_gate.reaction("iemkey/compromised", {**_event(claimed="beta"), "_stamp": _stamp()}, opts)
    assert reacting.published == []


@pytest.mark.parametrize(
    "minion_marks", [{"id": "beta"}, {"cmd": "_minion_event"}, {"id": "beta", "cmd": "_minion_event"}]
)
def test_a_webhook_event_a_minion_put_on_the_bus_is_refused(opts, reacting, minion_marks):
    body = '{"minion_id": "alpha"}'
    hook = {"body": body, "headers": {"X-Iemkey-Signature": hook_signature(SECRET, body)}, "_stamp": _stamp()}
    iemkey_gate.reaction(iemkey_gate.HOOK_TAG, {**hook, **minion_marks}, opts)
    assert reacting.published == []
    iemkey_gate.reaction(iemkey_gate.HOOK_TAG, hook, opts)  # from salt-api: acted on
    assert [job["tgt"] for job in reacting.published] == [["alpha"]]


def test_the_reactor_resolves_an_sdb_hook_secret_with_salts_sdb(opts, reacting, monkeypatch):
    import salt.utils.sdb

    monkeypatch.setattr(salt.utils.sdb, "sdb_get", lambda uri, sdb_opts: SECRET if uri == "sdb://vault/hook" else None)
    opts["iemkey"]["reactor"]["hook_secret"] = "sdb://vault/hook"
    body = '{"minion_id": "beta"}'
    hook = {"body": body, "headers": {"x-iemkey-signature": hook_signature(SECRET, body)}, "_stamp": _stamp()}
    iemkey_gate.reaction(iemkey_gate.HOOK_TAG, hook, opts)
    assert [job["tgt"] for job in reacting.published] == [["beta"]]


def test_each_masters_opts_get_their_own_decisions(opts, reacting, tmp_path):
    iemkey_gate.reaction("iemkey/compromised", {**_event(), "_stamp": _stamp()}, opts)
    other = {**opts, "cachedir": str(tmp_path / "other")}
    iemkey_gate.reaction("iemkey/compromised", {**_event("beta"), "_stamp": _stamp()}, other)
    assert sorted(p.name for p in (tmp_path / "cache" / "iemkey" / "compromises").iterdir()) == ["alpha.json"]
    assert sorted(p.name for p in (tmp_path / "other" / "iemkey" / "compromises").iterdir()) == ["beta.json"]
    again = {**_event("alpha"), "_stamp": _stamp()}
    iemkey_gate.reaction("iemkey/compromised", again, other)  # the other master has no alert of alpha yet
    assert len(reacting.published) == 3


def test_a_store_that_cannot_be_used_is_one_error_and_no_decision(opts, reacting, caplog):
    opts["iemkey"]["store"] = {"driver": "etcd"}
    with caplog.at_level(logging.ERROR):
        assert iemkey_gate.reaction("iemkey/compromised", {**_event(), "_stamp": _stamp()}, opts) == {}
    assert caplog.messages == [
        "iemkey reactor: iemkey/compromised event not acted on: iemkey:store:driver 'etcd' is not known: "
        "local (the default, one master) or redis (several)"
    ]
    assert reacting.published == []


def test_a_shared_store_out_of_reach_decides_nothing_and_says_send_it_again(opts, reacting, caplog, monkeypatch):
    from pytestshellutils.utils import ports

    announced = []
    monkeypatch.setattr(iemkey_gate, "announce", lambda _opts, decided: announced.append(decided))
    opts["iemkey"]["store"] = {"driver": "redis", "port": ports.get_unused_localhost_port(), "wait": 0.3}
    with caplog.at_level(logging.ERROR):
        assert iemkey_gate.reaction("iemkey/compromised", {**_event(), "_stamp": _stamp()}, opts) == {}
    (line,) = caplog.messages
    assert line.startswith("iemkey reactor: iemkey/compromised event from alpha NOT decided, send it again: ")
    assert "did not answer within 0.3 s" in line
    assert reacting.published == [] and [d["action"] for d in announced] == ["error"]


def test_a_cluster_peers_copy_of_an_event_is_left_to_the_master_that_received_it(opts, reacting, caplog):
    with caplog.at_level(logging.DEBUG, logger="iemkey_gate"):
        peer = {**_event(), "_stamp": _stamp(), "__peer_id": "master-2"}
        assert iemkey_gate.reaction("iemkey/compromised", peer, opts) == {}
    assert reacting.published == []
    assert "from cluster peer master-2: its receiving master decides" in caplog.text
    iemkey_gate.reaction("iemkey/compromised", {**_event(), "_stamp": _stamp()}, opts)  # the receiving master
    assert [job["tgt"] for job in reacting.published] == [["alpha"]]


def test_on_a_master_of_masters_the_refusal_says_where_iemkey_runs(gate, opts, caplog):
    opts["order_masters"] = True
    with caplog.at_level(logging.WARNING):
        reason = gate.admit("iemkey/compromised", _stranger(), opts, _now())
    assert reason == (
        "'gamma' is not an accepted minion: this is a master of masters (order_masters), whose key registry "
        "holds only its syndics; iemkey's reactors and runner run on the masters (syndics) that accepted the minions"
    )
    assert gate.admit("iemkey/compromised", _event(), opts, _now()) is None  # its own minions still count


# -- the webhook's timed HMAC at its edges ------------------------------------------------------
NOT_SIGNED = "its body is not signed with iemkey:reactor:hook_secret (X-Iemkey-Signature)"


def test_a_webhook_signature_is_good_from_max_skew_ahead_to_max_age_old_and_no_further(gate, opts):
    t = 1_800_000_000
    at = datetime.datetime.fromtimestamp(t, UTC)
    for offset, ok in ((300, True), (301, False), (-60, True), (-61, False), (0, True)):
        reason = gate.admit(iemkey_gate.HOOK_TAG, _hook(signed_at=t), opts, at + datetime.timedelta(seconds=offset))
        assert (reason is None) is ok, (offset, reason)
    assert gate.admit(iemkey_gate.HOOK_TAG, _hook(signed_at=t), opts, at + datetime.timedelta(seconds=301)) == (
        "it was signed 301 s from when the master received it (iemkey:reactor:max_age)"
    )


def test_a_webhook_timestamp_of_more_than_12_digits_or_without_a_body_is_unsigned(gate, opts):
    twelve = _hook(signed_at=999_999_999_999)  # a 12-digit time is read, and is far in the future
    assert gate.admit(iemkey_gate.HOOK_TAG, twelve, opts, _now()).endswith("(iemkey:reactor:max_age)")
    assert gate.admit(iemkey_gate.HOOK_TAG, _hook(signed_at=1_000_000_000_000), opts, _now()) == NOT_SIGNED
    bodiless = {**_hook(), "body": None}
    assert gate.admit(iemkey_gate.HOOK_TAG, bodiless, opts, _now()) == NOT_SIGNED
    digestless = {**_hook(), "signature": _hook()["signature"].split(",")[0]}  # t= only
    assert gate.admit(iemkey_gate.HOOK_TAG, digestless, opts, _now()) == NOT_SIGNED


def test_a_webhook_refusal_says_it_came_from_salt_api(gate, opts, caplog):
    with caplog.at_level(logging.WARNING):
        gate.admit(iemkey_gate.HOOK_TAG, _hook(secret="guessed"), opts, _now())
    assert caplog.messages == [
        f"iemkey reactor: refusing {iemkey_gate.HOOK_TAG} event (from salt-api), acting on nothing: {NOT_SIGNED}"
    ]


def test_exactly_five_refusals_of_a_kind_leave_nothing_to_count_and_intervals_go_on(gate, opts, caplog):
    unsigned = {"id": "alpha", "data": {"reason": "x"}}
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            gate.admit("iemkey/compromised", unsigned, opts, _now())
        for _ in range(3):  # three more intervals, each with 6 refusals
            gate.clock.now += iemkey_gate.INTERVAL
            for _ in range(6):
                gate.admit("iemkey/compromised", unsigned, opts, _now())
        gate.clock.now += iemkey_gate.INTERVAL
        gate.admit("iemkey/compromised", unsigned, opts, _now())
    counted = [m for m in caplog.messages if "more iemkey/compromised events" in m]
    assert [m.split(" more ")[0] for m in counted] == ["iemkey reactor: refused 1"] * 3  # none for the first five
    assert len(caplog.messages) == 5 + 3 * 5 + 3 + 1


def test_the_reactor_process_has_one_gate():
    assert isinstance(iemkey_gate.GATE, iemkey_gate.Gate)


def test_the_reactor_process_starts_with_no_decisions_made(caplog):
    assert iemkey_gate._HERE["reactions"] is None and iemkey_gate._HERE["opts"] is None
    with caplog.at_level(logging.ERROR):
        assert iemkey_gate.setting({"iemkey": {"reactor": {"rate": ""}}}, "rate") == 10
    assert caplog.messages == []  # an empty setting is the default, not a malformed one
