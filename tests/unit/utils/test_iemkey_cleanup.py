"""
The clean-up's decisions as pure functions: each verdict and its exact reason, which records make a
rotation a compromise rotation (and that nothing a minion sends does), how revocation is confirmed,
what a late compromise does to cases already decided, and the audit trail.
"""

import datetime

import iemkey_cleanup
import pytest
from iemkey_bigfix import Computer

UTC = datetime.timezone.utc
RECEIVED = datetime.datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MARGIN = 900


def _at(seconds):
    return RECEIVED + datetime.timedelta(seconds=seconds)


def _case(**changes):
    case = iemkey_cleanup.new_case("web01", "1001", "2002", "2026-12-01T11:59:59+00:00", RECEIVED)
    return {**case, **changes}


OLD = Computer("1001", "web01.example.com", _at(-30), "Native")  # before the rotation (11:59:59)
NEW = Computer("2002", "web01.example.com", _at(5), "Native")


def _verdict(case=None, old=OLD, new=NEW, now=None, master=True):
    return iemkey_cleanup.verdict(case or _case(), old, new, now or _at(MARGIN), master, MARGIN)


def test_a_confirmed_duplicate_is_superseded_once_the_margin_has_passed():
    assert _verdict() == (
        "superseded",
        "the old computer 1001 'web01.example.com' (last report 2026-12-01T11:59:30+00:00) is superseded by 2002, "
        "which has the same Computer Name",
    )
    assert _verdict(now=_at(MARGIN - 1)) == (
        "pending",
        "waiting until 2026-12-01T12:15:00+00:00 (iemkey:cleanup:report_margin, 900 s) for BigFix to show any "
        "report the old computer 1001 made after the rotation",
    )


@pytest.mark.parametrize(
    ("kwargs", "outcome", "detail"),
    [
        ({"case": _case(new_computer_id=None)}, "pending", "the minion has not reported its new computer ID yet"),
        ({"case": _case(new_computer_id="1001")}, "review", "the rotation names its old computer 1001 as its new one"),
        ({"new": None}, "pending", "the new computer 2002 is not registered with BigFix yet"),
        (
            {"new": Computer("2002", None, None, "Native")},
            "pending",
            "the new computer 2002 has registered but not reported its Computer Name yet",
        ),
        (
            {"new": Computer("2002", "web01.example.com", None, "Native")},
            "pending",
            "the new computer 2002 has registered but not reported its Computer Name yet",
        ),
        ({"old": None}, "gone", "BigFix has no computer 1001 (already removed)"),
        (
            {"old": None, "master": False},
            "review",
            "BigFix answers 404 for the old computer 1001, and the API user is not a master operator: a computer "
            "outside its scope answers 404 too, so iemkey cannot tell whether it is gone",
        ),
        (
            {"old": Computer("1001", "web01.example.com", _at(-30), "Proxy - VMware")},
            "review",
            "the old computer 1001 is a 'Proxy - VMware' record, not a native agent's",
        ),
        (
            {"old": Computer("1001", None, _at(-30), "Native")},
            "review",
            "BigFix gives no Computer Name for the old computer 1001",
        ),
        (
            {"old": Computer("1001", "db01", _at(-30), "Native")},
            "review",
            "BigFix names the old computer 1001 'db01' and the new computer 2002 'web01.example.com': not a duplicate "
            "of this rotation",
        ),
        (
            {"old": Computer("1001", "web01.example.com", None, "Native")},
            "review",
            "BigFix gives no Last Report Time for the old computer 1001",
        ),
        (
            {"old": Computer("1001", "web01.example.com", _at(1), "Native")},
            "review",
            "the old computer 1001 reported at 2026-12-01T12:00:01+00:00, after the rotation (made at "
            "2026-12-01T11:59:59+00:00 by the minion's clock, received at 2026-12-01T12:00:00+00:00; judged from "
            "2026-12-01T11:59:59+00:00): something still uses that identity",
        ),
    ],
)
def test_what_bigfix_does_not_confirm_is_never_superseded(kwargs, outcome, detail):
    assert _verdict(**kwargs) == (outcome, detail)


def test_an_agent_type_bigfix_does_not_give_is_taken_as_the_native_record():
    assert _verdict(old=Computer("1001", "web01.example.com", _at(-30), None))[0] == "superseded"


def test_a_minions_clock_can_only_send_its_own_case_to_review():
    """Silence counts from the earliest plausible moment of the rotation: the master's receipt, or the
    minion's own rotated_at, whichever is earlier. A clock that runs ahead (or lies forward) changes
    nothing: the receipt bounds it. One behind (or lying backward) makes every later report of the old
    computer look alive: its own case goes to review, never to a delete."""
    ahead = _case(rotated_at="2027-01-01T00:00:00+00:00")
    alive = Computer("1001", "web01.example.com", _at(60), "Native")
    assert _verdict(case=ahead, old=alive, now=_at(MARGIN + 60))[0] == "review"
    assert _verdict(case=ahead)[0] == "superseded"
    behind = _case(rotated_at="2026-01-01T00:00:00+00:00")
    assert _verdict(case=behind)[0] == "review"
    unreadable = _case(rotated_at="soon")
    assert _verdict(case=unreadable)[0] == "superseded"  # only the receipt is left to judge from


def test_a_rotation_received_late_is_judged_from_when_the_minion_made_it():
    """Issue 25: the rotation was made at 11:55 and received at 12:00 (re-sends make late receipt normal);
    its old computer reported at 11:59, after the rotation: something else still uses that identity."""
    late = _case(rotated_at=_at(-300).isoformat())
    reported = Computer("1001", "web01.example.com", _at(-60), "Native")
    outcome, detail = _verdict(case=late, old=reported)
    assert outcome == "review"
    assert detail == (
        "the old computer 1001 reported at 2026-12-01T11:59:00+00:00, after the rotation (made at "
        "2026-12-01T11:55:00+00:00 by the minion's clock, received at 2026-12-01T12:00:00+00:00; judged from "
        "2026-12-01T11:55:00+00:00): something still uses that identity"
    )
    exact = iemkey_cleanup.verdict(
        late, Computer("1001", "web01.example.com", _at(-300), "Native"), NEW, _at(MARGIN), True, MARGIN
    )
    assert exact[0] == "superseded"  # reported exactly at the earliest plausible moment: before it
    assert iemkey_cleanup.earliest(late) == _at(-300) and iemkey_cleanup.earliest(_case()) == _at(-1)


# -- which rotations are compromise rotations --------------------------------------------------------
ALERT = {
    "since": _at(-300).isoformat(),
    "until": _at(86400).isoformat(),
    "at": RECEIVED.isoformat(),
    "source": "alert",
    "reason": "IDS rule 4711",
}
INCIDENT = {
    "since": _at(-3600).isoformat(),
    "until": None,
    "minions": ["web01", "web02"],
    "declared": _at(7200).isoformat(),
    "cleanup": None,
}


def test_an_alert_covers_the_minions_rotations_the_master_received_within_its_window():
    assert iemkey_cleanup.covering(_case(), {"web01": ALERT}, {}) == {
        "incident": "alerts",
        "source": "alert",
        "at": RECEIVED.isoformat(),
        "reason": "IDS rule 4711",
        "cleanup": None,
    }
    assert iemkey_cleanup.covering(_case(received=_at(-301).isoformat()), {"web01": ALERT}, {}) is None
    assert iemkey_cleanup.covering(_case(received=_at(86401).isoformat()), {"web01": ALERT}, {}) is None
    assert iemkey_cleanup.covering(_case(minion="web02"), {"web01": ALERT}, {}) is None


def test_what_the_minion_says_it_rotated_at_never_moves_a_rotation_out_of_a_compromise():
    assert iemkey_cleanup.covering(_case(rotated_at="2020-01-01T00:00:00+00:00"), {"web01": ALERT}, {})


def test_an_incident_covers_its_minions_from_since_until_it_is_closed_and_comes_first():
    covered = iemkey_cleanup.covering(_case(), {"web01": ALERT}, {"worm": INCIDENT})
    assert covered == {"incident": "worm", "source": "incident", "at": _at(7200).isoformat(), "cleanup": None}
    assert iemkey_cleanup.covering(_case(minion="db01"), {}, {"worm": INCIDENT}) is None
    assert iemkey_cleanup.covering(_case(received=_at(-3601).isoformat()), {}, {"worm": INCIDENT}) is None
    closed = {**INCIDENT, "until": _at(-1).isoformat()}
    assert iemkey_cleanup.covering(_case(), {}, {"worm": closed}) is None


def test_a_rotation_received_exactly_at_either_end_of_a_window_is_covered():
    # an alert's and an incident's windows include both ends: a compromise rotation is never
    # taken for a routine one (and deleted) for being received on the boundary second
    for received in (_at(-300), _at(86400)):
        assert iemkey_cleanup.covering(_case(received=received.isoformat()), {"web01": ALERT}, {})
    closed = {**INCIDENT, "until": _at(60).isoformat()}
    for received in (_at(-3600), _at(60)):
        assert iemkey_cleanup.covering(_case(received=received.isoformat()), {}, {"worm": closed})["incident"] == "worm"


def test_of_several_incidents_the_one_that_began_first_covers_a_rotation_then_by_name():
    later = {**INCIDENT, "since": _at(-60).isoformat(), "cleanup": "delete"}
    assert iemkey_cleanup.covering(_case(), {}, {"a-later": later, "z-earlier": INCIDENT})["incident"] == "z-earlier"
    same = {"b-worm": {**INCIDENT, "cleanup": "delete"}, "a-worm": INCIDENT}
    assert iemkey_cleanup.covering(_case(), {}, same)["incident"] == "a-worm"


def test_a_new_case_is_pending_and_no_compromise_until_the_masters_records_say_so():
    case = _case()
    assert case["status"] == "pending" and case["compromise"] is None and case["name"] is None
    assert case["detail"] == "recorded; not decided yet" and case["checked"] == RECEIVED.isoformat()
    assert case["trail"] == [
        {"at": RECEIVED.isoformat(), "status": "pending", "detail": "recorded; not decided yet", "by": "iemkey.react"}
    ]
    assert iemkey_cleanup.mode(case, "revoke") == "delete"  # routine until covering() finds a compromise


def test_the_cleanup_mode_follows_the_incident_then_the_master_config():
    assert iemkey_cleanup.mode(_case(), "revoke") == "delete"  # routine
    assert iemkey_cleanup.mode(_case(compromise={"incident": "alerts", "cleanup": None}), "revoke") == "revoke"
    assert iemkey_cleanup.mode(_case(compromise={"incident": "alerts", "cleanup": None}), "delete") == "delete"
    assert iemkey_cleanup.mode(_case(compromise={"incident": "x", "cleanup": "delete"}), "revoke") == "delete"


# -- revocation is confirmed, not assumed ----------------------------------------------------------
def test_a_computer_to_revoke_is_revoked_only_once_a_master_operator_sees_it_gone():
    case = _case(status="revoke", name="web01.example.com")
    assert iemkey_cleanup.still_to_revoke(case, OLD, _at(60), True) == (
        "revoke",
        "computer 1001 'web01.example.com' is still in the console (last report 2026-12-01T11:59:30+00:00)",
    )
    assert iemkey_cleanup.still_to_revoke(case, None, _at(60), False) == (
        "revoke",
        "BigFix answers 404 for computer 1001, but the API user is not a master operator, so that does not prove "
        "it left the console: check it in the console",
    )
    # the name BigFix gave when it was listed, else the one it gives now; a computer with no report time
    unnamed = Computer("1001", "renamed.example.com", None, "Native")
    assert iemkey_cleanup.still_to_revoke(case, unnamed, _at(60), True)[1] == (
        "computer 1001 'web01.example.com' is still in the console (last report none)"
    )
    assert iemkey_cleanup.still_to_revoke(_case(status="revoke"), unnamed, _at(60), True)[1] == (
        "computer 1001 'renamed.example.com' is still in the console (last report none)"
    )
    # gone from the console: revoked, or deleted; BigFix cannot tell, so an operator confirms
    assert iemkey_cleanup.still_to_revoke(case, None, _at(60), True) == (
        "left_console",
        "computer 1001 left the BigFix console (seen gone at 2026-12-01T12:01:00+00:00): revoked, or deleted "
        "(BigFix cannot tell them apart); an operator who revoked it confirms with `salt-run iemkey.incident "
        "name=alerts revoked=True`",
    )
    left = iemkey_cleanup.settle(case, "left_console", "gone", _at(60), "iemkey.cleanup")
    confirmed = iemkey_cleanup.confirm_revoked(left, _at(120), "iemkey.incident revoked=True (alice)", "alice")
    assert confirmed["status"] == "revoked" and confirmed["trail"][-1] == {
        "at": _at(120).isoformat(),
        "status": "revoked",
        "detail": "revocation confirmed by alice (it had left the console)",
        "by": "iemkey.incident revoked=True (alice)",
    }


@pytest.mark.parametrize(
    ("status", "compromise", "accepted", "mode", "unrevoked"),
    [
        ("revoked", {"incident": "alerts"}, None, "revoke", False),
        ("dismissed", {"incident": "alerts"}, None, "revoke", True),
        ("review", {"incident": "alerts"}, None, "revoke", True),
        ("deleted", {"incident": "alerts"}, None, "revoke", True),
        ("gone", {"incident": "alerts"}, None, "revoke", True),
        ("deleted", {"incident": "alerts"}, None, "delete", False),  # the master config chose delete
        ("deleted", {"incident": "lab", "cleanup": "delete"}, None, "revoke", False),  # the incident chose it
        ("dismissed", {"incident": "alerts"}, {"by": "bob"}, "revoke", False),
        ("dismissed", None, None, "revoke", False),  # routine: nothing was stolen
        ("revoke", {"incident": "alerts"}, None, "revoke", False),  # still open: listed as to revoke
    ],
)
def test_a_compromise_case_that_ended_without_a_revocation_is_unrevoked_until_accepted(
    status, compromise, accepted, mode, unrevoked
):
    case = _case(status=status, compromise=compromise, accepted=accepted)
    assert iemkey_cleanup.unrevoked(case, mode) is unrevoked


def test_a_late_compromise_turns_open_cases_and_reopens_one_already_deleted():
    compromise = {"incident": "worm", "source": "incident", "at": "x", "cleanup": None}
    pending = iemkey_cleanup.reopened_by(_case(), compromise, _at(10), "iemkey.incident worm")
    assert pending["compromise"] == compromise and pending["status"] == "pending"
    deleted = iemkey_cleanup.settle(_case(), "deleted", "deleted: superseded", _at(5), "iemkey.cleanup")
    reopened = iemkey_cleanup.reopened_by(deleted, compromise, _at(10), "iemkey.incident worm")
    assert reopened["status"] == "review" and reopened["detail"] == (
        "computer 1001 was deleted as a routine duplicate before the compromise (worm) was on record: its "
        "certificate is NOT revoked, and BigFix hides deleted computers from the console lists (it shows it "
        "again if it reports)"
    )
    assert reopened["compromise"] == compromise and reopened["trail"][-1]["by"] == "iemkey.incident worm"
    assert [step["status"] for step in reopened["trail"]] == ["pending", "deleted", "review"]
    for status in ("revoke", "revoked", "dismissed", "gone"):
        assert iemkey_cleanup.reopened_by(_case(status=status), compromise, _at(10), "x") is None
    assert iemkey_cleanup.reopened_by(pending, compromise, _at(11), "x") is None  # already one


def test_the_trail_records_each_change_of_status_once_with_who_decided():
    case = _case()
    case = iemkey_cleanup.settle(case, "pending", "waiting", _at(30), "iemkey.cleanup")
    case = iemkey_cleanup.settle(case, "pending", "waiting more", _at(60), "iemkey.cleanup")
    case = iemkey_cleanup.settle(case, "revoke", "confirmed", _at(90), "iemkey.cleanup")
    assert case["detail"] == "confirmed" and case["checked"] == _at(90).isoformat()
    assert [(step["status"], step["by"], step["at"]) for step in case["trail"]] == [
        ("pending", "iemkey.react", RECEIVED.isoformat()),
        ("revoke", "iemkey.cleanup", _at(90).isoformat()),
    ]


def test_a_case_pending_too_long_goes_to_review():
    assert iemkey_cleanup.give_up(_case(), "pending", "not registered", _at(86401), 86400) == (
        "review",
        "not registered, after 86401 s (iemkey:cleanup:give_up_after)",
    )
    assert iemkey_cleanup.give_up(_case(), "pending", "x", _at(86400), 86400) == ("pending", "x")
    assert iemkey_cleanup.give_up(_case(), "superseded", "x", _at(99999), 86400) == ("superseded", "x")


def test_salts_naive_bus_stamps_are_utc(far_from_utc):
    assert iemkey_cleanup.parse("2026-12-01T12:00:00") == RECEIVED
    assert iemkey_cleanup.parse("2026-12-01T13:00:00+01:00") == RECEIVED


def test_the_console_steps_name_the_group():
    assert iemkey_cleanup.console_steps("iemkey revoke: worm") == [  # README shows these very steps
        "In the BigFix console, open Computer Groups and select the group 'iemkey revoke: worm' (iemkey keeps it "
        "listing exactly the computers to revoke; check `iemkey.report`: group matches)",
        "In the group's computer list, select every computer (Ctrl+A)",
        "Right-click the selection and choose Revoke Certificate, then OK in the confirmation dialog",
        "Run `salt-run iemkey.cleanup`: each computer that has left the console is listed as left_console",
        "Confirm the revocation (BigFix cannot tell a revoked computer from a deleted one): `salt-run "
        "iemkey.incident name=worm revoked=True`",
    ]


def test_a_case_is_shown_without_its_trail_with_its_incident():
    case = iemkey_cleanup.settle(
        _case(name="web01.example.com", compromise={"incident": "worm", "cleanup": None}), "revoke", "d", _at(9), "x"
    )
    assert iemkey_cleanup.public(case) == {
        "minion": "web01",
        "old_computer_id": "1001",
        "new_computer_id": "2002",
        "name": "web01.example.com",
        "status": "revoke",
        "detail": "d",
        "rotated_at": "2026-12-01T11:59:59+00:00",
        "received": RECEIVED.isoformat(),
        "checked": _at(9).isoformat(),
        "incident": "worm",
    }
    assert iemkey_cleanup.public(_case())["incident"] is None


def test_an_old_computer_that_last_reported_the_instant_the_master_received_the_rotation_is_silent_since():
    # the minion stops its agent before it deletes KeyStorage and signs the rotation after: a report at
    # the very instant the master received it was made before; one a second later is alive
    at_receipt = Computer("1001", "web01.example.com", RECEIVED, "Native")
    assert _verdict(case=_case(rotated_at=_at(600).isoformat()), old=at_receipt)[0] == "superseded"
    after = Computer("1001", "web01.example.com", _at(1), "Native")
    assert _verdict(case=_case(rotated_at=_at(600).isoformat()), old=after) == (
        "review",
        "the old computer 1001 reported at 2026-12-01T12:00:01+00:00, after the rotation (made at "
        "2026-12-01T12:10:00+00:00 by the minion's clock, received at 2026-12-01T12:00:00+00:00; judged from "
        "2026-12-01T12:00:00+00:00): something still uses that identity",
    )


def test_the_successor_follows_a_minions_rotations_and_stops_at_loops_and_other_minions():
    first = _case(old_computer_id="1", new_computer_id="2")
    cases = [
        first,
        _case(old_computer_id="2", new_computer_id="3"),
        _case(old_computer_id="3", new_computer_id="4"),
        _case(minion="db01", old_computer_id="4", new_computer_id="5"),  # another minion's
    ]
    assert iemkey_cleanup.successor(first, cases) == "4"
    assert iemkey_cleanup.successor(_case(old_computer_id="9", new_computer_id="8"), cases) == "8"
    loop = [_case(old_computer_id="1", new_computer_id="2"), _case(old_computer_id="2", new_computer_id="1")]
    assert iemkey_cleanup.successor(loop[0], loop) == "2"  # never back to its own old computer
    assert iemkey_cleanup.successor(loop[1], loop) == "1"
    unknown = [first, _case(old_computer_id="2", new_computer_id=None)]
    assert iemkey_cleanup.successor(first, unknown) == "2"
