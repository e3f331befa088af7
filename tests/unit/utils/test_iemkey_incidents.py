"""
The operator's word on an incident, as pure functions over a real LocalStore: what is unrevoked,
which rotation already settles an owed one, confirming revocations, accepting unrevoked keys, and
withdrawing a declaration (its clean-ups decided again, its owed rotations released, the trail kept).
"""

import datetime
import logging

import iemkey_cleanup
import iemkey_incidents
import iemkey_owed
import iemkey_react
import pytest
from iemkey_store import LocalStore

UTC = datetime.timezone.utc
BEGAN = datetime.datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
NOW = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NAME = "worm-2026-11"


def _at(hours):
    return BEGAN + datetime.timedelta(hours=hours)


def _case(minion="web01", old="1001", status="revoke", incident=NAME, rotated=1, received=1, **changes):
    case = iemkey_cleanup.new_case(minion, old, str(int(old) + 1000), _at(rotated).isoformat(), _at(received))
    compromise = {"incident": incident, "source": "incident", "at": BEGAN.isoformat(), "cleanup": None}
    case = iemkey_cleanup.settle({**case, "compromise": compromise if incident else None}, status, "x", NOW, "t")
    return {**case, **changes}


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


def _put(store, *cases):
    for case in cases:
        store.put("cases", f"{case['minion']}:{case['old_computer_id']}", case)


def _incident(store, minions=("web01", "web02")):
    record = {"name": NAME, "since": BEGAN.isoformat(), "until": None, "minions": list(minions)}
    store.put("incidents", NAME, {**record, "declared": BEGAN.isoformat(), "cleanup": None})


# -- unrevoked -----------------------------------------------------------------------------------
def test_unrevoked_lists_every_open_or_unrevoked_case_and_skips_only_accepted_ones():
    accepted = _case(old="1000", status="review", accepted={"at": NOW.isoformat(), "by": "ops", "reason": "r"})
    cases = {
        "a": accepted,  # first: an accepted case is skipped, the ones after it still counted
        "b": _case(old="1004", status="review"),
        "c": _case(old="1003", status="left_console"),
        "d": _case(old="1002", status="revoke"),
        "e": _case(old="1005", status="revoked"),
        "f": _case(old="1006", status="dismissed"),
        "g": _case(old="1007", status="deleted", incident=None),  # a routine delete: nothing stolen
    }
    found = iemkey_incidents.unrevoked(cases, "revoke")
    assert [c["old_computer_id"] for c in found] == ["1002", "1003", "1004", "1006"]


# -- which rotation settles an owed one at once ------------------------------------------------------
def test_rotated_since_takes_only_the_minions_own_rotation_received_after_the_incident_began():
    other = _case(minion="web02", old="2001", rotated=2, received=2)
    claimed_only = _case(old="1001", rotated=3, received=-1)  # says it rotated after; reached us before
    before = _case(old="1002", rotated=-2, received=-2)
    after = _case(old="1003", rotated=4, received=4)
    assert iemkey_incidents.rotated_since([other, claimed_only, before, after], "web01", BEGAN) == after
    assert iemkey_incidents.rotated_since([other, claimed_only, before], "web01", BEGAN) is None
    assert iemkey_incidents.rotated_since([other], "web02", BEGAN) == other


def test_a_rotation_received_the_very_second_the_signal_was_timed_settles_it():
    sig = iemkey_owed.signal("incident", BEGAN, NOW, "incident:x", None, True)
    assert iemkey_owed.settled_by(sig, BEGAN.isoformat(), BEGAN.isoformat())
    assert not iemkey_owed.settled_by(sig, BEGAN.isoformat(), (BEGAN - datetime.timedelta(seconds=1)).isoformat())


def test_settle_now_records_the_rotation_that_settled_it_on_the_trail(store):
    case = _case(old="1003", rotated=4, received=4)
    sig = iemkey_owed.signal("incident", BEGAN, NOW, f"incident:{NAME}", f"incident {NAME}", True)
    iemkey_incidents.settle_now(store, "web01", sig, case, NOW, "iemkey.incident x (ops)")
    ((key, record),) = store.all("settled").items()
    assert key == "web01:20261201T120000000000Z"
    assert record["state"] == "settled" and record["closed"] == NOW.isoformat()
    assert record["rotation"] == {
        "old_computer_id": "1003",
        "rotated_at": _at(4).isoformat(),
        "received": _at(4).isoformat(),
    }
    assert record["detail"] == (
        f"settled by the rotation at {_at(4).isoformat()} (old computer 1003), already received"
    )
    assert record["trail"][-1] == {
        "at": NOW.isoformat(),
        "state": "settled",
        "detail": record["detail"],
        "by": "iemkey.incident x (ops)",
    }


# -- confirming revocations --------------------------------------------------------------------------
def test_confirm_revoked_confirms_exactly_the_computers_that_left_the_console(store, caplog):
    _put(store, _case(old="1010", status="left_console"), _case(old="1002", status="left_console"))
    _put(store, _case(old="1003", status="revoke"), _case(old="1004", status="left_console", incident="other"))
    with caplog.at_level(logging.WARNING):
        assert iemkey_incidents.confirm_revoked(store, NAME, NOW, "ops") == ["1002", "1010"]
    assert "iemkey: ops confirmed the revocation of computers 1002, 1010 (incident worm-2026-11)" in caplog.messages
    cases = store.all("cases")
    assert cases["web01:1010"]["status"] == cases["web01:1002"]["status"] == "revoked"
    assert cases["web01:1003"]["status"] == "revoke" and cases["web01:1004"]["status"] == "left_console"
    assert cases["web01:1002"]["trail"][-1]["by"] == "iemkey.incident revoked=True (ops)"


def test_confirm_revoked_with_nothing_that_left_the_console_is_refused_and_says_what_is_still_there(store):
    _put(store, _case(old="1003", status="revoke"), _case(old="1001", status="revoke"))
    with pytest.raises(iemkey_incidents.Refused) as refused:
        iemkey_incidents.confirm_revoked(store, NAME, NOW, "ops")
    assert str(refused.value) == (
        "no computer of incident 'worm-2026-11' has left the console for iemkey to confirm; "
        "still in the console, to revoke: 1001, 1003"
    )
    with pytest.raises(iemkey_incidents.Refused) as refused:
        iemkey_incidents.confirm_revoked(LocalStore(store.root + "-empty"), NAME, NOW, "ops")
    assert str(refused.value) == "no computer of incident 'worm-2026-11' has left the console for iemkey to confirm"


# -- accepting unrevoked keys ------------------------------------------------------------------------
def test_accept_unrevoked_records_the_decision_on_each_case_it_names_and_on_the_incident(store, caplog):
    _incident(store)
    done = {"at": NOW.isoformat(), "by": "ops", "reason": "before"}
    _put(store, _case(old="1000", status="review", accepted=done))  # accepted before: left alone
    _put(store, _case(old="1002", status="review"), _case(old="1001", status="dismissed"))
    _put(store, _case(old="1003", status="revoke"), _case(old="1004", status="left_console"))
    reason = "the host is being scrapped; " + "x" * 600
    with caplog.at_level(logging.WARNING):
        assert iemkey_incidents.accept_unrevoked(store, NAME, reason, "revoke", NOW, "ops") == ["1001", "1002"]
    cases = store.all("cases")
    decision = {"at": NOW.isoformat(), "by": "ops", "reason": reason[:500]}
    assert cases["web01:1002"]["accepted"] == cases["web01:1001"]["accepted"] == decision
    assert cases["web01:1002"]["status"] == "dismissed" and cases["web01:1001"]["status"] == "dismissed"
    assert cases["web01:1002"]["detail"] == f"not revoked: accepted by ops ({reason[:500]})"
    assert cases["web01:1002"]["trail"][-1]["by"] == "iemkey.incident (ops)"
    assert cases["web01:1000"]["accepted"] == done
    assert cases["web01:1003"]["status"] == "revoke" and "accepted" not in cases["web01:1003"]
    assert "accepted" not in cases["web01:1004"]
    assert store.get("incidents", NAME)["accepted_unrevoked"] == [{**decision, "computers": ["1001", "1002"]}]
    assert (
        f"iemkey: ops accepted computers 1001, 1002 of incident worm-2026-11 as not revoked: {reason[:500]}"
        in caplog.messages
    )


def test_accept_unrevoked_with_nothing_to_accept_or_no_reason_is_refused(store):
    _put(store, _case(old="1003", status="revoke"))
    with pytest.raises(iemkey_incidents.Refused) as refused:
        iemkey_incidents.accept_unrevoked(store, NAME, "why", "revoke", NOW, "ops")
    assert str(refused.value) == (
        "incident 'worm-2026-11' has no compromise clean-up that ended without a revocation to accept"
    )
    with pytest.raises(iemkey_incidents.Refused, match=r"needs reason='\.\.\.'"):
        iemkey_incidents.accept_unrevoked(store, NAME, "", "revoke", NOW, "ops")


# -- withdrawing a declaration -----------------------------------------------------------------------
def _owed(store, minion, *idents):
    signals = [iemkey_owed.signal("incident", _at(i), NOW, ident, None, True) for i, ident in enumerate(idents)]
    record = iemkey_owed.new(minion, signals[0], NOW, "t")
    record = {**record, "signals": signals, "since": signals[0]["since"]}
    store.put("owed", minion, record)


def test_withdraw_decides_open_cases_again_releases_owed_rotations_and_keeps_the_trail(store, caplog):
    _incident(store, minions=("web01", "web02", "web03"))
    _put(store, _case(old="1001", status="revoke"), _case(old="1002", status="left_console"))
    _put(store, _case(old="1003", status="review"), _case(old="1004", status="pending"))
    _put(store, _case(old="1005", status="revoked"))  # closed: stays as it ended
    _owed(store, "web01", f"incident:{NAME}")  # owed for this incident only: released
    _owed(store, "web02", "incident:other", f"incident:{NAME}")  # still owed for the other
    _owed(store, "web03", "alert:n1")  # nothing of this incident
    with caplog.at_level(logging.WARNING):
        result = iemkey_incidents.withdraw(store, NAME, "declared by mistake", NOW, "ops")
    assert store.get("incidents", NAME)["withdrawn"] == {
        "at": NOW.isoformat(),
        "by": "ops",
        "reason": "declared by mistake",
    }
    assert sorted(c["old_computer_id"] for c in result["cases"]) == ["1001", "1002", "1003", "1004"]
    cases = store.all("cases")
    for old in ("1001", "1002", "1003", "1004"):
        case = cases[f"web01:{old}"]
        assert case["status"] == "pending" and case["compromise"] is None, case
        assert case["detail"] == "incident worm-2026-11 withdrawn by ops (declared by mistake): decided again"
    assert cases["web01:1005"]["status"] == "revoked"
    assert result["owed"] == ["web01"]
    assert store.get("owed", "web01") is None
    ((settled_key, settled),) = store.all("settled").items()
    assert settled_key.startswith("web01:")
    assert settled["state"] == "withdrawn" and settled["detail"] == "incident worm-2026-11 withdrawn by ops"
    web02 = store.get("owed", "web02")
    assert [s["id"] for s in web02["signals"]] == ["incident:other"] and web02["since"] == _at(0).isoformat()
    assert [s["id"] for s in store.get("owed", "web03")["signals"]] == ["alert:n1"]
    assert (
        "iemkey: incident worm-2026-11 withdrawn by ops (declared by mistake): 4 clean-ups decided again, "
        "1 rotations no longer owed" in caplog.messages
    )


def test_withdraw_keeps_a_case_another_record_still_covers_a_compromise_case(store):
    _incident(store)
    store.put(
        "compromises",
        "web01",
        {"since": _at(0).isoformat(), "until": _at(10).isoformat(), "at": _at(0).isoformat(), "source": "alert"},
    )
    _put(store, _case(old="1001", status="revoke", received=2))
    iemkey_incidents.withdraw(store, NAME, "mistake", NOW, "ops")
    case = store.get("cases", "web01:1001")
    assert case["status"] == "revoke" and case["compromise"]["incident"] == iemkey_cleanup.ALERTS


def test_withdraw_of_an_unknown_or_withdrawn_incident_is_refused(store):
    with pytest.raises(iemkey_incidents.Refused) as refused:
        iemkey_incidents.withdraw(store, NAME, "r", NOW, "ops")
    assert str(refused.value) == "no incident 'worm-2026-11' on record"
    _incident(store)
    iemkey_incidents.withdraw(store, NAME, "r", NOW, "ops")
    with pytest.raises(iemkey_incidents.Refused) as refused:
        iemkey_incidents.withdraw(store, NAME, "r", NOW, "ops")
    assert str(refused.value) == f"incident 'worm-2026-11' was withdrawn at {NOW.isoformat()} already"


# -- declaring -----------------------------------------------------------------------------------
def _declare(store, minions=("web01", "web02"), deliver=True):
    record = {"name": NAME, "since": BEGAN.isoformat(), "until": None, "minions": list(minions)}
    record = {**record, "declared": NOW.isoformat(), "cleanup": None}
    reactions = iemkey_react.Reactions({"iemkey": {}}, store, now=lambda: NOW)
    return iemkey_incidents.declare(store, reactions, record, deliver, NOW, "ops")


def test_declare_owes_each_targeted_minion_a_rotation_and_settles_at_once_what_the_master_already_has(store):
    _put(store, _case(minion="web02", old="2001", status="pending", incident=None, rotated=3, received=3))
    _put(store, _case(minion="web09", old="9001", status="pending", incident=None, rotated=3, received=3))
    _put(store, _case(minion="web01", old="1001", status="pending", incident=None, rotated=3, received=-1))
    covered, decided = _declare(store)
    assert decided == {"owed": ["web01"], "settled": ["web02"], "held": []}
    owed = store.get("owed", "web01")
    (sig,) = owed["signals"]
    assert sig["id"] == f"incident:{NAME}" and sig["reason"] == f"incident {NAME}"
    assert sig["received_after"] == BEGAN.isoformat()  # the master's clock: the rotation must reach it after
    assert owed["trail"][-1]["by"] == f"iemkey.incident {NAME} (ops)"
    assert store.get("owed", "web02") is None and store.get("owed", "web09") is None
    ((_, settled),) = store.all("settled").items()
    assert settled["minion"] == "web02" and settled["rotation"]["old_computer_id"] == "2001"
    assert sorted(c["old_computer_id"] for c in covered) == ["2001"]  # received after T: a compromise rotation
    assert store.get("cases", "web02:2001")["compromise"]["incident"] == NAME
    assert store.get("cases", "web09:9001")["compromise"] is None  # not targeted


def test_declare_with_deliver_false_holds_each_owed_rotation_for_the_operators_rollout(store):
    _put(store, _case(minion="web02", old="2001", status="pending", incident=None, rotated=3, received=3))
    _, decided = _declare(store, deliver=False)
    assert decided == {"owed": [], "settled": ["web02"], "held": ["web01"]}
    held = store.get("owed", "web01")
    assert held["state"] == "held"
    assert held["detail"] == (
        "declared with deliver=False: the operator's own rollout (highstate, iemkey.orch.rotate) rotates it"
    )
    assert held["trail"][-1]["by"] == f"iemkey.incident {NAME} (ops)"


def test_hold_leaves_a_rotation_already_in_flight_as_it_is(store):
    _owed(store, "web01", "alert:1")
    store.put("owed", "web01", {**store.get("owed", "web01"), "state": "delivered"})
    iemkey_incidents.hold(store, "web01", NOW, "ops")
    assert store.get("owed", "web01")["state"] == "delivered"
    iemkey_incidents.hold(store, "nobody", NOW, "ops")  # nothing owed: nothing made
    assert store.get("owed", "nobody") is None


def test_declaring_a_name_in_use_is_refused_unless_it_was_withdrawn(store):
    _declare(store)
    with pytest.raises(iemkey_incidents.Refused) as refused:
        _declare(store)
    assert str(refused.value) == (
        f"incident 'worm-2026-11' is already declared (since {BEGAN.isoformat()}); withdraw it first"
    )
    iemkey_incidents.withdraw(store, NAME, "mistake", NOW, "ops")
    _declare(store)  # a withdrawn name can be declared again
    assert not store.get("incidents", NAME).get("withdrawn")
