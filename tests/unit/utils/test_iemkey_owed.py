"""Owed rotations (_utils/iemkey_owed.py) as pure functions: what settles them, how a delivery
moves between its states, the backoff, and the settings."""

import datetime

import iemkey_owed
import pytest

UTC = datetime.timezone.utc
T = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SETTINGS = iemkey_owed.settings({})


def _at(seconds):
    return T + datetime.timedelta(seconds=seconds)


def _alert(since=T, ident="alert:1"):
    return iemkey_owed.signal("alert", since, since, ident, "IDS")


def _webhook(at=T, ident="hook:1"):
    return iemkey_owed.signal("webhook", at, at, ident, "SIEM", timed_by_master=True)


def test_a_new_owed_rotation_is_pending_with_its_signal_on_the_trail():
    record = iemkey_owed.new("web01", _alert(), T, "test")
    assert (record["state"], record["since"], record["count"], record["attempts"]) == ("pending", T.isoformat(), 1, 0)
    assert record["trail"] == [
        {
            "at": T.isoformat(),
            "state": "pending",
            "detail": f"owed since {T.isoformat()} (alert): a rotation made at or after it settles it",
            "by": "test",
        }
    ]
    assert iemkey_owed.due(record, T, SETTINGS)


def test_an_unknown_source_or_state_is_refused():
    with pytest.raises(ValueError, match="not 'rumour'"):
        iemkey_owed.signal("rumour", T, T, "x")
    with pytest.raises(ValueError, match="not 'lost'"):
        iemkey_owed.move({"trail": []}, "lost", "x", T, "t")


def test_signals_merge_once_each_and_the_earliest_is_what_a_rotation_must_follow():
    record = iemkey_owed.new("web01", _alert(_at(10), "alert:a"), T, "t")
    same, new = iemkey_owed.merge(record, _alert(_at(10), "alert:a"))  # the same alert, re-sent
    assert new is False and same is record
    merged, new = iemkey_owed.merge(record, _alert(_at(-5), "alert:b"))
    assert new is True and merged["count"] == 2 and merged["since"] == _at(-5).isoformat()
    for n in range(30):
        merged, _ = iemkey_owed.merge(merged, _alert(_at(n), f"alert:{n}"))
    assert len(merged["signals"]) == iemkey_owed.SIGNALS_KEPT and merged["count"] == 32


def test_a_rotation_settles_the_signals_it_came_after_and_leaves_the_later_ones_owed():
    record = iemkey_owed.new("web01", _alert(_at(0), "alert:a"), T, "t")
    record, _ = iemkey_owed.merge(record, _alert(_at(60), "alert:b"))
    done, left = iemkey_owed.settle(record, _at(30), _at(31))
    assert [s["id"] for s in done] == ["alert:a"] and [s["id"] for s in left] == ["alert:b"]
    still = iemkey_owed.remaining(record, left, _at(31), "t")
    assert (still["state"], still["since"], still["exact"]) == ("pending", _at(60).isoformat(), True)
    assert iemkey_owed.settle(record, _at(0), _at(1))[0][0]["id"] == "alert:a"  # at the very instant: after


def test_a_signal_timed_by_the_masters_clock_needs_the_rotation_received_after_it_too():
    hook = _webhook(T)
    assert iemkey_owed.settled_by(hook, _at(1), _at(2)) is True
    assert iemkey_owed.settled_by(hook, _at(1), _at(-1)) is False  # received before the webhook: no proof
    assert iemkey_owed.settled_by(hook, _at(-1), _at(2)) is False  # made before it, by the minion's clock
    assert iemkey_owed.settled_by(_alert(T), _at(1), _at(-1)) is True  # an alert's time is the minion's own


def test_a_delivery_moves_through_delivered_away_and_back():
    record = iemkey_owed.delivered(iemkey_owed.new("web01", _alert(), T, "t"), "J1", _at(1), "t")
    assert (record["state"], record["jid"], record["delivered_at"]) == ("delivered", "J1", _at(1).isoformat())
    assert iemkey_owed.probe(record, _at(5), SETTINGS) is None
    assert iemkey_owed.probe(record, _at(11), SETTINGS) == "probe"
    probed = {**record, "probed_at": _at(11).isoformat()}
    assert iemkey_owed.probe(probed, _at(20), SETTINGS) is None
    assert iemkey_owed.probe(probed, _at(21), SETTINGS) == "away"
    seen = {**probed, "seen": _at(15).isoformat()}  # it answered the probe: connected
    assert iemkey_owed.probe(seen, _at(24), SETTINGS) is None and iemkey_owed.probe(seen, _at(25), SETTINGS) == "probe"
    gone = iemkey_owed.away(probed, _at(21), "t")
    assert (gone["state"], gone["away_since"]) == ("away", _at(1).isoformat())
    assert not iemkey_owed.due(gone, _at(30), SETTINGS) and iemkey_owed.due(gone, _at(31), SETTINGS)
    assert iemkey_owed.delivered(gone, "J2", _at(31), "t")["state"] == "away"  # away until it answers
    back = iemkey_owed.answered(gone, _at(32), "t")
    assert (back["state"], back["away_since"], back["seen"]) == ("delivered", None, _at(32).isoformat())
    assert iemkey_owed.answered(back, _at(33), "t")["trail"] == back["trail"]  # answering again changes no state
    returned = {**record, "returned": _at(2).isoformat()}
    assert iemkey_owed.probe(returned, _at(12), SETTINGS) == "redeliver"


def test_a_minion_away_longer_is_asked_less_often_at_most_every_retry_max():
    gone = {**iemkey_owed.new("web01", _alert(), T, "t"), "state": "away", "away_since": T.isoformat()}

    def due(last, now):
        return iemkey_owed.due({**gone, "delivered_at": _at(last).isoformat()}, _at(now), SETTINGS)

    assert [due(0, 29), due(0, 30)] == [False, True]  # redeliver_every while away for a short time
    assert [due(200, 399), due(200, 400)] == [False, True]  # away 400 s: half of it, 200 s
    day = 86400
    assert [due(day - 3599, day), due(day - 3600, day)] == [False, True]  # away a day: retry_max (3600 s)
    assert iemkey_owed.redeliver_after({**gone, "away_since": None}, _at(9999), SETTINGS) == 30


def test_failed_jobs_are_retried_with_a_doubling_backoff_then_go_to_review():
    record = iemkey_owed.new("web01", _alert(), T, "t")
    waits = []
    for attempt in range(1, 5):
        record = iemkey_owed.failed(record, f"boom {attempt}", T, "t", SETTINGS)
        assert record["state"] == "failed" and record["attempts"] == attempt
        waits.append((iemkey_owed.parse(record["next_try"]) - T).total_seconds())
        assert not iemkey_owed.due(record, _at(waits[-1] - 1), SETTINGS) and iemkey_owed.due(
            record, _at(waits[-1]), SETTINGS
        )
    assert waits == [60, 120, 240, 480]
    record = iemkey_owed.failed(record, "boom 5", T, "t", SETTINGS)
    assert (record["state"], record["next_try"], record["error"]) == ("review", None, "boom 5")
    assert record["detail"] == "5 jobs returned without a rotation (iemkey:delivery:max_attempts): boom 5"
    assert not iemkey_owed.due(record, _at(10**6), SETTINGS)
    again = iemkey_owed.retry_now(record, _at(1), "t", "retried by alice")
    assert (again["state"], again["attempts"]) == ("pending", 0)
    capped = iemkey_owed.failed(
        {**record, "attempts": 20, "state": "failed"}, "x", T, "t", {**SETTINGS, "max_attempts": 99}
    )
    assert iemkey_owed.parse(capped["next_try"]) == _at(3600)  # retry_max


def test_retry_now_leaves_a_delivery_in_flight_alone():
    delivered = iemkey_owed.delivered(iemkey_owed.new("web01", _alert(), T, "t"), "J", T, "t")
    assert iemkey_owed.retry_now(delivered, _at(1), "t", "x")["state"] == "delivered"
    for state in ("away", "failed", "held", "review"):
        assert iemkey_owed.retry_now({**delivered, "state": state}, _at(1), "t", "x")["state"] == "pending"


def test_a_closed_record_keeps_its_trail_and_says_what_ended_it():
    record = iemkey_owed.delivered(iemkey_owed.new("web01", _alert(), T, "t"), "J", T, "t")
    closed = iemkey_owed.closed(record, "settled", "settled by X", _at(5), "iemkey/rotated", {"old_computer_id": "1"})
    assert (closed["state"], closed["closed"], closed["rotation"]) == (
        "settled",
        _at(5).isoformat(),
        {"old_computer_id": "1"},
    )
    assert [s["state"] for s in closed["trail"]] == ["pending", "delivered", "settled"]
    assert "next_try" not in closed and iemkey_owed.settled_key(closed, _at(5)) == "web01:20261201T120005000000Z"


def test_the_report_view_has_no_trail_and_next_try_only_when_failed():
    record = iemkey_owed.new("web01", _alert(), T, "t")
    shown = iemkey_owed.public(record)
    assert (
        "trail" not in shown and shown["next_try"] is None and shown["sources"] == ["alert"] and shown["signals"] == 1
    )
    failed = iemkey_owed.failed(record, "x", T, "t", SETTINGS)
    assert iemkey_owed.public(failed)["next_try"] == _at(60).isoformat()


@pytest.mark.parametrize(
    ("conf", "error"),
    [
        ({"batch_window": "soon"}, "iemkey:delivery:batch_window must be a number, not 'soon'"),
        ({"batch_size": 0}, "iemkey:delivery:batch_size must be between 1 and 100000, not 0"),
        ({"max_attempts": True}, "iemkey:delivery:max_attempts must be between 1 and 1000, not True"),
        ({"probe": 3}, "iemkey:delivery: probe is not a setting (known: batch_window, batch_size, probe_after, "),
    ],
)
def test_a_malformed_delivery_setting_names_itself(conf, error):
    with pytest.raises(ValueError) as raised:
        iemkey_owed.settings(conf)
    assert str(raised.value).startswith(error)


def test_settings_have_their_defaults_and_whole_numbers_where_they_count():
    found = iemkey_owed.settings({"batch_size": "250", "probe_after": ""})
    assert found["batch_size"] == 250 and isinstance(found["batch_size"], int) and found["probe_after"] == 10
    assert iemkey_owed.settings(None) == SETTINGS


# -- the record's fields, exactly (what the report, the store and the engine read) -----------------
def test_a_new_record_has_every_field_the_engine_reads_and_the_report_shows_them():
    record = iemkey_owed.new("web01", _alert(), T, "test")
    assert {k: v for k, v in record.items() if k not in ("signals", "trail", "detail")} == {
        "minion": "web01",
        "since": T.isoformat(),
        "at": T.isoformat(),
        "count": 1,
        "state": "pending",
        "attempts": 0,
        "jid": None,
        "delivered_at": None,
        "seen": None,
        "probed_at": None,
        "returned": None,
        "away_since": None,
        "error": None,
        "next_try": T.isoformat(),
        "exact": False,
    }
    record = iemkey_owed.delivered(record, "2026120112", _at(1), "engine")
    record = iemkey_owed.failed(record, "boom", _at(20), "engine", SETTINGS)
    assert iemkey_owed.public(record) == {
        "minion": "web01",
        "state": "failed",
        "since": T.isoformat(),
        "at": T.isoformat(),
        "jid": "2026120112",
        "delivered_at": _at(1).isoformat(),
        "away_since": None,
        "attempts": 1,
        "error": "boom",
        "next_try": _at(80).isoformat(),
        "signals": 1,
        "sources": ["alert"],
        "detail": f"attempt 1 returned without a rotation; retried at {_at(80).isoformat()}: boom",
    }
    assert iemkey_owed.public({"state": "pending", "signals": [_alert(), _webhook()]})["signals"] == 2
    assert iemkey_owed.public({"state": "pending"})["signals"] == 0


def test_a_delivery_clears_the_last_probe_and_return_and_says_which_job():
    record = {**iemkey_owed.new("web01", _alert(), T, "t"), "probed_at": _at(1).isoformat(), "returned": "x"}
    record = iemkey_owed.delivered(record, "42", _at(2), "engine")
    assert (record["probed_at"], record["returned"], record["jid"]) == (None, None, "42")
    assert record["trail"][-1]["detail"] == "rotation job 42 published"
    back = iemkey_owed.answered(iemkey_owed.away(record, _at(20), "engine"), _at(30), "engine")
    assert back["state"] == "delivered" and back["trail"][-1]["detail"] == "the minion answered job 42"


def test_away_counts_from_when_it_was_first_away():
    record = iemkey_owed.delivered(iemkey_owed.new("web01", _alert(), T, "t"), "42", _at(2), "engine")
    first = iemkey_owed.away(record, _at(20), "engine")
    assert first["away_since"] == _at(2).isoformat()
    again = iemkey_owed.away({**first, "delivered_at": _at(100).isoformat()}, _at(200), "engine")
    assert again["away_since"] == _at(2).isoformat()


def test_failed_counts_attempts_from_the_record_and_keeps_the_first_1000_characters_of_the_error():
    record = iemkey_owed.new("web01", _alert(), T, "t")
    del record["attempts"]
    once = iemkey_owed.failed(record, "e" * 1500, _at(5), "engine", SETTINGS)
    assert once["attempts"] == 1 and once["error"] == "e" * 1000
    assert once["returned"] == once["seen"] == _at(5).isoformat()


def test_merge_counts_from_one_when_an_old_record_has_no_count():
    record = iemkey_owed.new("web01", _alert(), T, "t")
    del record["count"]
    merged, new = iemkey_owed.merge(record, _webhook(ident="hook:2"))
    assert new and merged["count"] == 2


def test_the_trail_adds_a_line_when_the_state_or_the_detail_changes_never_twice_the_same():
    record = iemkey_owed.new("web01", _alert(), T, "t")
    same = iemkey_owed.move(record, "pending", record["detail"], _at(1), "t")
    assert len(same["trail"]) == 1
    other_detail = iemkey_owed.move(record, "pending", "something else", _at(1), "t")
    assert len(other_detail["trail"]) == 2
    other_state = iemkey_owed.move(record, "held", record["detail"], _at(1), "t")
    assert len(other_state["trail"]) == 2
    with pytest.raises(ValueError) as refused:
        iemkey_owed.move(record, "gone", "x", T, "t")
    assert str(refused.value) == "an owed rotation is pending, delivered, away, failed, review, held, not 'gone'"


def test_closed_keeps_the_record_without_its_schedule_and_ends_the_trail_with_who_closed_it():
    record = {**iemkey_owed.new("web01", _alert(), T, "t"), "probed_at": _at(1).isoformat()}
    done = iemkey_owed.closed(record, "settled", "rotated", _at(9), "engine")
    assert "next_try" not in done and "probed_at" not in done
    assert done["trail"][-1] == {"at": _at(9).isoformat(), "state": "settled", "detail": "rotated", "by": "engine"}


def test_what_remains_owed_after_a_partial_settlement_lists_only_the_later_signals():
    first, later = _alert(ident="alert:1"), _alert(since=_at(60), ident="alert:2")
    record = {**iemkey_owed.new("web01", first, T, "t"), "signals": [first, later], "attempts": 3}
    left = iemkey_owed.remaining(record, [later], _at(90), "engine")
    assert left["signals"] == [later] and left["since"] == _at(60).isoformat() and left["exact"] is True
    assert left["attempts"] == 0 and left["state"] == "pending"
    assert left["trail"][-1]["detail"] == "a signal arrived after the rotation that settled the others"


def test_retry_now_makes_it_due_at_once():
    record = iemkey_owed.failed(iemkey_owed.new("web01", _alert(), T, "t"), "x", _at(1), "e", SETTINGS)
    again = iemkey_owed.retry_now(record, _at(2), "ops", "retried by ops")
    assert again["next_try"] == _at(2).isoformat() and iemkey_owed.due(again, _at(2), SETTINGS)


def test_a_probe_answered_at_the_very_moment_it_was_sent_is_no_answer():
    record = iemkey_owed.delivered(iemkey_owed.new("web01", _alert(), T, "t"), "42", T, "engine")
    record = {**record, "probed_at": _at(20).isoformat(), "seen": _at(20).isoformat()}
    assert iemkey_owed.probe(record, _at(30), SETTINGS) == "away"
    record = {**record, "seen": _at(21).isoformat()}
    assert iemkey_owed.probe(record, _at(31), SETTINGS) == "probe"


def test_redelivery_to_a_minion_with_no_away_time_waits_redeliver_every():
    settings = {**SETTINGS, "redeliver_every": 1}
    assert iemkey_owed.redeliver_after({}, _at(10), settings) == 1
    assert iemkey_owed.redeliver_after({"away_since": T.isoformat()}, _at(10), settings) == 5


def test_a_time_without_a_zone_is_utc():
    assert iemkey_owed.parse("2026-12-01T12:00:00") == T
    assert iemkey_owed.parse("2026-12-01T13:00:00+01:00") == T


@pytest.mark.parametrize("key", sorted(iemkey_owed.BOUNDS))
def test_each_delivery_setting_takes_its_bounds_and_refuses_just_beyond(key):
    low, high = iemkey_owed.BOUNDS[key]
    assert iemkey_owed.settings({key: low})[key] == low
    assert iemkey_owed.settings({key: high})[key] == high
    for beyond in (low - 0.01, high + 0.01):
        with pytest.raises(ValueError) as refused:
            iemkey_owed.settings({key: beyond})
        assert str(refused.value) == f"iemkey:delivery:{key} must be between {low:g} and {high:g}, not {beyond!r}"


def test_the_delivery_defaults_are_the_documented_ones():
    assert SETTINGS == {
        "batch_window": 0.5,
        "batch_size": 1000,
        "probe_after": 10,
        "redeliver_every": 30,
        "retry_after": 60,
        "retry_max": 3600,
        "max_attempts": 5,
        "interval": 2,
    }
    with pytest.raises(ValueError) as refused:
        iemkey_owed.settings({"probe": 1, "batch": 2})
    assert str(refused.value).startswith("iemkey:delivery: batch, probe is not a setting (known: batch_window, ")


def test_the_delivery_bounds_are_the_documented_ones_and_counts_are_whole_numbers():
    assert iemkey_owed.BOUNDS == {
        "batch_window": (0.05, 60),
        "batch_size": (1, 100_000),
        "probe_after": (1, 3600),
        "redeliver_every": (1, 86400),
        "retry_after": (1, 86400),
        "retry_max": (1, 604800),
        "max_attempts": (1, 1000),
        "interval": (0.2, 600),
    }
    found = iemkey_owed.settings({"max_attempts": "7", "batch_size": 3.0, "retry_after": "1.5"})
    assert (found["max_attempts"], found["batch_size"], found["retry_after"]) == (7, 3, 1.5)
    assert isinstance(found["max_attempts"], int) and isinstance(found["batch_size"], int)


def test_a_signal_records_when_the_master_received_it_and_at_most_200_characters_of_reason():
    sig = iemkey_owed.signal("alert", T, _at(5), "alert:1", "r" * 300)
    assert sig["received"] == _at(5).isoformat() and sig["reason"] == "r" * 200
    with pytest.raises(ValueError) as refused:
        iemkey_owed.signal("email", T, T, "x")
    assert str(refused.value) == "a compromise signal comes from alert, webhook, incident, not 'email'"


def test_the_report_counts_every_signal_an_owed_rotation_had_not_only_those_it_lists():
    record = {**iemkey_owed.new("web01", _alert(), T, "t"), "count": 25}
    assert iemkey_owed.public(record)["signals"] == 25
