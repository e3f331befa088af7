"""
The gate: what cannot be genuine costs a check (each signed event verified once, here), each minion is
held to ``iemkey:reactor:rate``, and a flood is logged as counts, not one line per event.
Real signatures and accepted keys in a temp pki_dir; the clock is the test's.
"""

import collections
import datetime
import logging

import iemkey_auth
import iemkey_config
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


def _admit(gate, tag, event, opts, now=None):
    """What the engine does with an event: the gate's verdict, or the refusal it logs (the reason)."""
    try:
        return gate.admit(tag, event, opts, now or _now())
    except iemkey_gate.Refused as exc:
        gate.refused(tag, event.get("id"), str(exc))
        return str(exc)


def test_a_genuine_signed_event_is_verified_once_and_goes_on_with_what_it_proves(gate, opts):
    minion, payload, signed_at, nonce = gate.admit("iemkey/compromised", _event(), opts, _now())
    assert (minion, payload, len(nonce)) == ("alpha", {"reason": "x"}, 32)
    assert (_now() - signed_at).total_seconds() < 5
    assert gate.admit("iemkey/rotated", _event(tag="iemkey/rotated"), opts, _now())[0] == "alpha"


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
        assert _admit(gate, "iemkey/compromised", event, opts) == reason
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == f"iemkey: refusing iemkey/compromised event (as from {event['id']!r}), acting on nothing: {reason}"


def test_another_tag_is_refused(gate, opts):
    assert _admit(gate, "iemkey/other", _event(), opts) == (
        "its tag is not iemkey/compromised, iemkey/rotated or salt/netapi/hook/iemkey/compromised"
    )


def test_age_is_judged_at_the_time_the_master_received_the_event(gate, opts):
    signed = _now() - datetime.timedelta(seconds=400)
    assert gate.admit("iemkey/compromised", _event(when=signed), opts, signed + datetime.timedelta(seconds=5))
    reason = _admit(gate, "iemkey/compromised", _event(when=signed), opts)
    assert reason.startswith("it was signed 400 s ago, more than 300 s")


def test_each_signer_is_held_to_its_rate_per_minute(gate, opts):
    for _ in range(3):
        assert _admit(gate, "iemkey/compromised", _event(), opts)[0] == "alpha"
    assert _admit(gate, "iemkey/compromised", _event(), opts) == (
        "'alpha' sent more than 3 signed iemkey/compromised events in a minute (iemkey:reactor:rate)"
    )
    # its rotations have a window of their own: a minion's alerts never crowd out its signed rotations
    assert _admit(gate, "iemkey/rotated", _event(tag="iemkey/rotated"), opts)[0] == "alpha"
    assert _admit(gate, "iemkey/compromised", _event("beta"), opts)[0] == "beta"  # another minion: its own rate
    gate.clock.now += 61
    assert _admit(gate, "iemkey/compromised", _event(), opts)[0] == "alpha"


def test_a_flood_is_logged_as_counts_per_interval_not_a_line_per_event(gate, opts, caplog):
    unsigned = {"id": "alpha", "data": {"reason": "flood"}}
    with caplog.at_level(logging.WARNING):
        for _ in range(12_000):
            _admit(gate, "iemkey/compromised", unsigned, opts)
        gate.clock.now += iemkey_gate.INTERVAL
        assert _admit(gate, "iemkey/compromised", _event("beta"), opts)[0] == "beta"  # genuine, after the flood
        _admit(gate, "iemkey/compromised", unsigned, opts)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5 + 2  # README: the first 5 of a kind in 10 s line by line, then counts
    assert lines[5] == (
        f"iemkey: refused {12_000 - 5} more iemkey/compromised events (as from 'alpha') in "
        "the last 10 s, acting on nothing: it is not signed" + HINT
    )
    assert lines[-1].startswith("iemkey: refusing iemkey/compromised event (as from 'alpha')")


def test_a_webhook_from_salt_api_goes_on_to_the_decision_and_one_a_minion_put_on_the_bus_does_not(gate, opts):
    body = '{"minion_id": "alpha"}'
    data = {"body": body, "headers": {"X-IEMKEY-SIGNATURE": hook_signature(SECRET, body)}}
    event = iemkey_gate.hook_event(data)
    assert event == {"body": body, "signature": data["headers"]["X-IEMKEY-SIGNATURE"], "from_minion": False}
    assert gate.admit(iemkey_gate.HOOK_TAG, event, opts, _now()) is None  # its HMAC: checked once, by the decision
    for marks in ({"id": "beta"}, {"cmd": "_minion_event"}):
        forged = iemkey_gate.hook_event({**data, **marks})
        assert _admit(gate, iemkey_gate.HOOK_TAG, forged, opts) == "it was sent by a minion, not by salt-api"
    assert iemkey_gate.hook_event({"body": body, "headers": "nonsense"})["signature"] is None


def test_a_webhook_refusal_says_it_came_from_salt_api(gate, caplog):
    with caplog.at_level(logging.WARNING):
        gate.refused(iemkey_gate.HOOK_TAG, None, "its body is not signed")
    assert caplog.messages == [
        f"iemkey: refusing {iemkey_gate.HOOK_TAG} event (from salt-api), acting on nothing: its body is not signed"
    ]


def test_only_a_refused_alert_names_the_command_that_sends_alerts(gate, opts):
    unsigned = {"id": "alpha", "data": {"old_computer_id": "1"}}
    assert _admit(gate, "iemkey/rotated", unsigned, opts) == "it is not signed"
    assert _admit(gate, "iemkey/compromised", unsigned, opts) == "it is not signed" + HINT


def test_the_rate_window_is_a_full_minute(gate, opts):
    for _ in range(3):
        assert gate.admit("iemkey/compromised", _event(), opts, _now())
    gate.clock.now += 60
    assert isinstance(_admit(gate, "iemkey/compromised", _event(), opts), str)  # 60 s on: still this minute
    gate.clock.now += 0.5
    assert _admit(gate, "iemkey/compromised", _event(), opts)[0] == "alpha"


@pytest.mark.parametrize(("value", "rate"), [("", 10), (None, 10), ("2", 2)])
def test_the_rate_is_the_masters_setting_or_10(gate, opts, value, rate):
    opts["iemkey"]["reactor"]["rate"] = value
    for _ in range(rate):
        assert gate.admit("iemkey/compromised", _event(), opts, _now())
    assert "(iemkey:reactor:rate)" in _admit(gate, "iemkey/compromised", _event(), opts)


def test_a_malformed_reactor_setting_is_an_error_naming_it_not_a_guess(gate, opts):
    opts["iemkey"]["reactor"]["rate"] = "lots"
    with pytest.raises(iemkey_config.Misconfigured, match=r"^iemkey:reactor:rate must be a number, not 'lots'$"):
        gate.admit("iemkey/compromised", _event(), opts, _now())


def test_on_a_master_of_masters_the_refusal_says_where_iemkey_runs(gate, opts):
    opts["order_masters"] = True
    assert _admit(gate, "iemkey/compromised", _stranger(), opts) == (
        "'gamma' is not an accepted minion: this is a master of masters (order_masters), whose key registry "
        "holds only its syndics; iemkey runs on the masters (syndics) that accepted the minions"
    )
    assert gate.admit("iemkey/compromised", _event(), opts, _now())[0] == "alpha"  # its own minions still count


def test_exactly_five_refusals_of_a_kind_leave_nothing_to_count_and_intervals_go_on(gate, opts, caplog):
    unsigned = {"id": "alpha", "data": {"reason": "x"}}
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            _admit(gate, "iemkey/compromised", unsigned, opts)
        for _ in range(3):  # three more intervals, each with 6 refusals
            gate.clock.now += iemkey_gate.INTERVAL
            for _ in range(6):
                _admit(gate, "iemkey/compromised", unsigned, opts)
        gate.clock.now += iemkey_gate.INTERVAL
        _admit(gate, "iemkey/compromised", unsigned, opts)
    counted = [m for m in caplog.messages if "more iemkey/compromised events" in m]
    assert [m.split(" more ")[0] for m in counted] == ["iemkey: refused 1"] * 3  # none for the first five
    assert len(caplog.messages) == 5 + 3 * 5 + 3 + 1


def test_a_flood_of_distinct_signers_does_not_keep_a_window_for_each(gate, opts, monkeypatch):
    idle = collections.defaultdict(
        collections.deque, {(f"m{n}", "iemkey/compromised"): collections.deque([0.0]) for n in range(100_001)}
    )
    monkeypatch.setattr(gate, "recent", idle)
    gate.clock.now += 61
    gate._within_rate("alpha", 10)
    assert list(gate.recent) == [("alpha", "iemkey/compromised")]
