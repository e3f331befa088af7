"""
The console clean-up (``iemkey.react`` on ``iemkey/rotated``, ``iemkey.cleanup``, ``iemkey.incident``,
``iemkey.history``, ``iemkey.report``'s revocation section) with the master's opts in a temp dir,
real signatures and the stand-in BigFix server on loopback answering as real servers do (full
property lists, correlated devices, computers not yet reported, a non-master operator's scope,
server based groups). LocalClient is the one fake.

The tests named ``test_finding_*`` are the findings of the revocation issue; each fails on the
runner before it (the note on the issue says how each was broken and seen red).
"""

import datetime
import json
import logging
import pathlib

import iemkey_auth
import iemkey_bigfix
import iemkey_store
import pytest
from bigfix_rest import ID_PROPERTY, PROPERTIES, SETTING_SECRET, Registered, StandInBigFix
from helpers import load_source
from runner_fakes import KEYS

iemkey = load_source("_runners", "iemkey_runner_cleanup")
UTC = datetime.timezone.utc
NAME = "alpha.example.com"


@pytest.fixture
def opts(master_opts, httpserver):
    master_opts["iemkey"].update(
        api={"url": httpserver.url_for("").rstrip("/"), "user": "op", "password": "pw", "timeout": 2, "retries": 2},
        cleanup={"report_margin": 0},
    )
    return master_opts


@pytest.fixture
def configure_loader_modules(opts):
    return {iemkey: {"__opts__": opts, "__context__": {}}}


@pytest.fixture
def bigfix(httpserver):
    agents = Registered()
    server = StandInBigFix([agents], "op", "pw").serve(httpserver)
    server.known = agents.known
    return server


def _now(seconds=0):
    return datetime.datetime.now(UTC) + datetime.timedelta(seconds=seconds)


def _computer(bigfix, computer_id, name=NAME, last_report=-3600):
    """A computer the server knows, whose last report was ``last_report`` seconds from now."""
    bigfix.known[computer_id] = {"name": name, "registered": _now(-86400).timestamp(), "last_report": _now(last_report)}
    bigfix.known[computer_id]["last_report"] = bigfix.known[computer_id]["last_report"].timestamp()


def _duplicate(bigfix, old="1001", new="2002", name=NAME):
    _computer(bigfix, old, name, last_report=-3600)
    _computer(bigfix, new, name, last_report=-1)


def _signed(tag, minion, payload, signer=None):
    return iemkey_auth.sign(tag, minion, payload, KEYS[signer or minion][0])


OUTCOMES = {
    "deleted": "deleted",
    "gone": "gone",
    "revoke": "listed",
    "review": "review",
    "pending": "pending",
    "left_console": "left_console",
}


def _rotated(minion="alpha", old="1001", new="2002", rotated_at=None, signer=None, **extra):
    """A minion's signed iemkey/rotated, as the reactor decides it (recorded), then the master
    schedule's next iemkey.cleanup pass: the decision, with the case's outcome."""
    rotated_at = rotated_at or _now().isoformat()
    payload = {"old_computer_id": old, "rotated_at": rotated_at, "keystorage": "/var/opt/BESClient/KeyStorage"}
    if new:
        payload["new_computer_id"] = new
    data = _signed("iemkey/rotated", minion, {**payload, **extra}, signer)
    recorded = iemkey.react(event_tag="iemkey/rotated", event={"id": minion, "data": data})
    if recorded["action"] != "recorded":
        return recorded
    passed = iemkey.cleanup()
    case = _case(iemkey.__opts__, minion, old)
    return {**recorded, "outcome": OUTCOMES[case["status"]], "error": passed.get("error")}


def _alert(minion="alpha"):
    data = _signed("iemkey/compromised", minion, {"reason": "IDS rule 4711"})
    ret = iemkey.react(event_tag="iemkey/compromised", event={"id": minion, "data": data})
    assert ret["action"] == "rotate", ret
    return ret


def _case(opts, minion="alpha", old="1001"):
    path = pathlib.Path(opts["cachedir"], "iemkey", "cases", f"{minion}:{old}.json")
    return json.loads(path.read_text())


def _writes(bigfix):
    return [(m, p) for m, p, _s in bigfix.calls if m in ("DELETE", "POST", "PUT") and p != "/api/query"]


# -- routine rotations -------------------------------------------------------------------------------
def test_a_routine_rotations_confirmed_duplicate_is_deleted_exactly_once(local, bigfix, opts):
    _duplicate(bigfix)
    ret = _rotated()
    assert (ret["action"], ret["outcome"], ret["compromise"]) == ("recorded", "deleted", False), ret
    assert bigfix.deletes() == ["1001"]
    again = iemkey.cleanup()
    assert again["deleted"] == [] and again["retcode"] == 0 and bigfix.deletes() == ["1001"]
    (computer,) = iemkey.history(computer="1001")["computers"]
    assert [step["status"] for step in computer["trail"]] == ["pending", "deleted"]
    assert computer["trail"][-1]["by"] == "iemkey.cleanup" and computer["incident"] is None


def test_a_duplicate_is_deleted_only_after_the_report_margin(local, bigfix, opts):
    opts["iemkey"]["cleanup"]["report_margin"] = 3600
    _duplicate(bigfix)
    assert _rotated()["outcome"] == "pending"
    assert "iemkey:cleanup:report_margin, 3600 s" in _case(opts)["detail"]
    assert bigfix.deletes() == []


def test_rotations_in_a_row_are_each_cleaned_up_against_the_newest_computer(local, bigfix, opts):
    """An ad-hoc rotation, then the highstate's, before either clean-up decided: the first rotation's
    new computer is the second's old one, and the second clean-up deletes it."""
    opts["iemkey"]["cleanup"]["report_margin"] = 3600
    _computer(bigfix, "1001", last_report=-3600)
    _computer(bigfix, "2002", last_report=-1800)
    _computer(bigfix, "3003", last_report=-1)
    assert _rotated(old="1001", new="2002")["outcome"] == "pending"
    assert _rotated(old="2002", new="3003")["outcome"] == "pending"
    opts["iemkey"]["cleanup"]["report_margin"] = 0
    ret = iemkey.cleanup()
    assert sorted(c["old_computer_id"] for c in ret["deleted"]) == ["1001", "2002"] and ret["pending"] == []
    assert sorted(bigfix.deletes()) == ["1001", "2002"] and "3003" in bigfix.computers()
    first = _case(opts, "alpha", "1001")
    assert "superseded by 3003" in first["detail"]
    assert first["detail"].endswith("(the rotation's new computer 2002 was itself rotated since)")


def test_two_signed_rotations_naming_each_others_computers_delete_nothing_unconfirmed(local, bigfix, opts):
    """A rooted minion signs 1001 -> 2002, then 2002 -> 1001, hoping a loop makes a computer its own
    successor and skips the name check: each is judged against the other, names differ, review."""
    opts["iemkey"]["cleanup"]["report_margin"] = 3600
    _computer(bigfix, "1001", name="victim.example.com", last_report=-3600)
    _computer(bigfix, "2002", name=NAME, last_report=-1)
    _rotated(old="1001", new="2002")
    _rotated(old="2002", new="1001")
    opts["iemkey"]["cleanup"]["report_margin"] = 0
    ret = iemkey.cleanup()
    assert ret["deleted"] == [] and bigfix.deletes() == []
    assert sorted(c["old_computer_id"] for c in ret["review"]) == ["1001", "2002"]


def test_the_new_id_is_asked_of_the_minion_when_the_event_has_none(local, bigfix):
    _computer(bigfix, "1001")
    local.statuses["alpha"] = {"computer_id": "1001"}  # the agent has not registered yet
    assert _rotated(new=None)["outcome"] == "pending"
    local.statuses["alpha"] = {"computer_id": "2002"}
    _computer(bigfix, "2002", last_report=-1)
    ret = iemkey.cleanup()
    assert [c["old_computer_id"] for c in ret["deleted"]] == ["1001"] and bigfix.deletes() == ["1001"]


def test_an_unreachable_api_keeps_it_pending_fails_the_run_and_a_later_run_finishes(local, bigfix):
    _duplicate(bigfix)
    bigfix.down = True
    assert _rotated()["outcome"] == "pending"
    down = iemkey.cleanup()
    assert down["retcode"] == 1 and down["error"] == "HTTP 503 from GET /api/operator/op"
    assert [c["old_computer_id"] for c in down["pending"]] == ["1001"]
    bigfix.down = False
    up = iemkey.cleanup()
    assert up["retcode"] == 0 and [c["old_computer_id"] for c in up["deleted"]] == ["1001"]
    assert bigfix.deletes() == ["1001"]


def test_a_clean_up_pending_too_long_goes_to_review(local, bigfix, opts):
    opts["iemkey"]["cleanup"]["give_up_after"] = 0
    _computer(bigfix, "1001")
    assert _rotated()["outcome"] == "review"
    detail = _case(opts)["detail"]
    assert "not registered with BigFix yet" in detail and "give_up_after" in detail


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ({"old": "12ab"}, "no usable old computer ID"),
        ({"old": "", "new": "5"}, "no usable old computer ID"),
        ({"old": "1001", "new": "1001"}, "reports the new computer ID '1001' for the old 1001"),
        ({"rotated_at": "yesterday"}, "no usable rotated_at"),
    ],
)
def test_a_signed_rotation_with_unusable_ids_records_nothing(local, bigfix, payload, match):
    ret = _rotated(**payload)
    assert ret["action"] == "refused" and match in ret["refused"], ret
    assert iemkey.history()["computers"] == [] and bigfix.calls == []


def test_max_deletes_bounds_one_pass_and_the_rest_wait_with_a_warning(local, bigfix, opts, caplog, monkeypatch):
    opts["iemkey"]["cleanup"]["max_deletes"] = 2
    opts["iemkey"]["cleanup"]["report_margin"] = 3600  # the reactor's own tries decide nothing
    for n in range(3):
        _duplicate(bigfix, old=f"100{n}", new=f"200{n}", name=f"host{n}")
        assert _rotated(old=f"100{n}", new=f"200{n}")["outcome"] == "pending"
    opts["iemkey"]["cleanup"]["report_margin"] = 0
    with caplog.at_level(logging.WARNING):
        first = iemkey.cleanup()
    assert sorted(bigfix.deletes()) == ["1000", "1001"]  # sent concurrently: in any order
    assert [c["old_computer_id"] for c in first["pending"]] == ["1002"]
    assert first["pending"][0]["detail"] == (
        "confirmed, waiting for the next pass: iemkey:cleanup:max_deletes (2) reached"
    )
    assert first["summary"].endswith("(1 wait for the next pass: iemkey:cleanup:max_deletes)")
    assert "1 confirmed duplicates wait for the next pass: iemkey:cleanup:max_deletes is 2" in caplog.text
    monkeypatch.setattr(iemkey, "_targets", lambda tgt, tgt_type: ["alpha"])
    monkeypatch.setattr(iemkey, "_gather", lambda *a: {"alpha": {"ret": _compliant(), "retcode": 0}})
    summary = iemkey.report("2026-01-01T00:00:00Z")["summary"]
    assert summary.endswith("; 1 confirmed duplicates wait for the next pass (iemkey:cleanup:max_deletes)")
    second = iemkey.cleanup()
    assert [c["old_computer_id"] for c in second["deleted"]] == ["1002"]
    assert sorted(bigfix.deletes()) == ["1000", "1001", "1002"]  # each exactly once


# -- compromise rotations end in revocation -------------------------------------------------------------
def test_finding_a_compromise_rotation_is_listed_to_revoke_never_deleted(local, bigfix, opts):
    _duplicate(bigfix)
    _alert("alpha")
    ret = _rotated()
    assert (ret["outcome"], ret["compromise"]) == ("listed", True), ret
    assert bigfix.deletes() == []
    case = _case(opts)
    assert case["status"] == "revoke" and case["compromise"]["incident"] == "alerts"
    assert "revoke its certificate in the console (group 'iemkey revoke: alerts')" in case["detail"]
    # one console action: a server based group in the master action site listing exactly the old computer
    ((group_id, group),) = bigfix.groups.items()
    assert group["name"] == "iemkey revoke: alerts" and bigfix.members(group_id) == {"1001"}
    assert group["rules"] == [(ID_PROPERTY, "Equals", "1001")]


def test_a_computer_that_left_the_console_is_revoked_only_once_an_operator_confirms_it(local, bigfix, opts):
    _duplicate(bigfix)
    _alert("alpha")
    _rotated()
    still = iemkey.cleanup()
    assert [c["old_computer_id"] for c in still["revoke"]] == ["1001"] and still["left_console"] == []
    assert still["revocation"]["alerts"]["computers"] == ["1001"] and still["revocation"]["alerts"]["console_steps"]
    assert still["groups"]["alerts"]["matches"] is True and still["groups"]["alerts"]["seen"] == ["1001"]
    nothing = iemkey.incident(name="alerts", revoked=True)  # nothing has left the console yet
    assert nothing["retcode"] == 1 and nothing["error"] == (
        "no computer of incident 'alerts' has left the console for iemkey to confirm; still in the console, to "
        "revoke: 1001"
    )
    bigfix.revoke("1001")  # the operator's Revoke Certificate in the console (or a delete: BigFix cannot tell)
    gone = iemkey.cleanup()
    assert [c["old_computer_id"] for c in gone["left_console"]] == ["1001"] and gone["revoke"] == []
    assert "left the BigFix console (seen gone at " in gone["left_console"][0]["detail"]
    assert "revoked, or deleted (BigFix cannot tell them apart)" in gone["left_console"][0]["detail"]
    assert gone["revocation"]["alerts"]["left_console"] == ["1001"]
    assert bigfix.deletes() == [] and bigfix.groups == {}  # the emptied group is removed; no computer was
    confirmed = iemkey.incident(name="alerts", revoked=True, __pub_user="alice")
    assert confirmed["retcode"] == 0 and confirmed["confirmed_revoked"] == ["1001"]
    (computer,) = iemkey.history(minion="alpha")["computers"]
    assert [step["status"] for step in computer["trail"]] == ["pending", "revoke", "left_console", "revoked"]
    assert computer["trail"][-1]["by"] == "iemkey.incident revoked=True (alice)"
    assert computer["trail"][-1]["detail"] == "revocation confirmed by alice (it had left the console)"


def _compliant():
    status = {"installed": True, "computer_id": "2002", "last_rotated": None, "agent_running": True, "pending": False}
    return {"compliant": True, "stale": False, "basis": "key_created", "key_time": "x", "reason": "x", "status": status}


def test_a_rooted_minion_cannot_turn_its_compromise_rotation_into_a_delete(local, bigfix, opts):
    """beta (rooted) is under a compromise; it signs its own rotation with a rotation time long
    before the alert and payload keys of its own invention: the master decides from its records, and
    a lying clock only sends beta's own case to review (never a delete)."""
    _duplicate(bigfix, name="beta.example.com")
    _alert("beta")
    ret = _rotated(
        minion="beta",
        rotated_at="2020-01-01T00:00:00+00:00",
        compromise=False,
        incident=None,
        cleanup="delete",
    )
    assert ret["compromise"] is True and ret["outcome"] == "review", ret
    assert iemkey.cleanup()["deleted"] == [] and bigfix.deletes() == []
    assert "after the rotation (made at 2020-01-01T00:00:00+00:00" in _case(opts, "beta")["detail"]


def test_compromised_delete_deletes_compromise_rotations_too(local, bigfix, opts):
    opts["iemkey"]["cleanup"]["compromised"] = "delete"
    _duplicate(bigfix)
    _alert("alpha")
    assert _rotated()["outcome"] == "deleted" and bigfix.deletes() == ["1001"]
    assert _case(opts)["compromise"]["incident"] == "alerts"  # still on record as one


def test_an_unknown_compromised_mode_is_an_error_not_a_delete(local, bigfix, opts):
    opts["iemkey"]["cleanup"]["compromised"] = "wipe"
    _duplicate(bigfix)
    _alert("alpha")
    assert _rotated()["error"] == "iemkey:cleanup:compromised must be revoke or delete, not 'wipe'"
    ret = iemkey.cleanup()
    assert ret["retcode"] == 1 and ret["error"] == "iemkey:cleanup:compromised must be revoke or delete, not 'wipe'"
    assert bigfix.deletes() == []


# -- incidents -------------------------------------------------------------------------------------------
def test_an_incident_makes_later_and_open_clean_ups_revocations_and_reopens_a_deleted_one(
    local, bigfix, opts, monkeypatch
):
    monkeypatch.setattr(iemkey, "_targets", lambda tgt, tgt_type: ["alpha", "beta"])
    _duplicate(bigfix, "1001", "2002")
    assert _rotated()["outcome"] == "deleted"  # routine, before anyone knew
    opts["iemkey"]["cleanup"]["report_margin"] = 3600
    _duplicate(bigfix, "3003", "4004", name="beta.example.com")
    assert _rotated(minion="beta", old="3003", new="4004")["outcome"] == "pending"
    since = _now(-600).isoformat()
    declared = iemkey.incident(since=since, tgt="*", name="worm-2026-12")
    assert declared["retcode"] == 0 and declared["incident"]["minions"] == ["alpha", "beta"]
    assert {c["old_computer_id"]: c["status"] for c in declared["covered"]} == {"1001": "review", "3003": "pending"}
    reopened = _case(opts, "alpha", "1001")
    assert "its certificate is NOT revoked" in reopened["detail"]
    opts["iemkey"]["cleanup"]["report_margin"] = 0
    ret = iemkey.cleanup()
    assert [c["old_computer_id"] for c in ret["revoke"]] == ["3003"] and bigfix.deletes() == ["1001"]
    assert bigfix.members(next(iter(bigfix.groups))) == {"3003"}
    assert next(iter(bigfix.groups.values()))["name"] == "iemkey revoke: worm-2026-12"
    _duplicate(bigfix, "5005", "6006")
    assert _rotated(old="5005", new="6006")["outcome"] == "listed"  # received after since: covered
    refused = iemkey.incident(name="worm-2026-12", close=True)
    assert refused["retcode"] == 1 and [c["old_computer_id"] for c in refused["unrevoked"]] == ["1001", "3003", "5005"]
    assert refused["error"].startswith("incident worm-2026-12 is not closed: computers 1001 (review), 3003 (revoke)")
    assert iemkey.incident()["incidents"]["worm-2026-12"]["until"] is None  # nothing was changed
    bigfix.revoke("3003")
    bigfix.revoke("5005")
    iemkey.cleanup()
    assert iemkey.incident(name="worm-2026-12", revoked=True)["confirmed_revoked"] == ["3003", "5005"]
    assert iemkey.incident(name="worm-2026-12", accept_unrevoked=True)["error"].startswith(
        "accept_unrevoked=True needs reason="
    )
    accepted = iemkey.incident(name="worm-2026-12", accept_unrevoked=True, reason="lab host, rebuilt from scratch")
    assert accepted["accepted_unrevoked"] == ["1001"]
    assert _case(opts, "alpha", "1001")["status"] == "dismissed" and _case(opts, "alpha", "1001")["accepted"]
    assert iemkey.incident(name="worm-2026-12", close=True)["incident"]["until"]
    assert iemkey.incident()["incidents"]["worm-2026-12"]["accepted_unrevoked"][0]["computers"] == ["1001"]


def test_an_incident_may_choose_delete_for_its_old_computers(local, bigfix, monkeypatch):
    monkeypatch.setattr(iemkey, "_targets", lambda tgt, tgt_type: ["alpha"])
    assert iemkey.incident(since=_now(-60).isoformat(), name="lab", cleanup="delete")["retcode"] == 0
    _duplicate(bigfix)
    assert _rotated()["outcome"] == "deleted"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"since": "last week"}, "since 'last week' is not a time"),
        ({"since": "20261120"}, "(did you mean 2026-11-20?)"),
        ({"since": "2026-01-01T00:00:00Z", "close": "yes-please"}, "close must be True or False, not 'yes-please'"),
        ({"withdraw": True, "name": "nosuch", "reason": "typo"}, "no incident 'nosuch' on record"),
        ({"withdraw": True, "name": "nosuch"}, "withdraw=True needs reason="),
        ({"revoked": True, "close": True, "name": "x"}, "one of close, withdraw, revoked or accept_unrevoked"),
        ({"since": "2026-01-01T00:00:00Z", "name": "../x"}, "an incident name is letters, digits"),
        ({"since": "2026-01-01T00:00:00Z", "cleanup": "wipe"}, "cleanup must be revoke or delete, not 'wipe'"),
        ({"close": True}, "close=True needs the incident's name"),
        ({"close": True, "name": "nosuch"}, "no incident 'nosuch' on record"),
        ({"since": "2999-01-01T00:00:00Z"}, "is in the future"),
    ],
)
def test_an_incident_that_cannot_be_declared_changes_nothing(local, opts, kwargs, error):
    ret = iemkey.incident(**kwargs)
    assert ret["retcode"] == 1 and error in ret["error"]
    assert iemkey.incident()["incidents"] == {}


# -- what a real server answers -------------------------------------------------------------------------
def test_finding_a_correlated_reply_cannot_make_a_live_computer_look_superseded(local, bigfix, opts):
    """The old computer's own agent record reported after the rotation (it is alive); its cloud
    representation, nested in ManagementExtension, last reported long ago."""
    _computer(bigfix, "1001", last_report=60)
    _computer(bigfix, "2002", last_report=-1)
    bigfix.correlations["1001"] = {
        "Type": "Cloud - AWS",
        "Computer Name": NAME,
        "Last Report Time": "Mon, 02 Nov 2026 08:00:00 +0000",
        "Agent Type": "Native",
    }
    ret = _rotated()
    assert ret["outcome"] == "review", ret
    assert "reported at " in _case(opts)["detail"] and "something still uses that identity" in _case(opts)["detail"]
    assert bigfix.deletes() == []


def test_finding_a_new_computer_not_yet_named_keeps_the_clean_up_pending(local, bigfix, opts):
    _duplicate(bigfix)
    bigfix.unreported.add("2002")  # registered, has not reported its name or a report time yet
    ret = _rotated()
    assert ret["outcome"] == "pending", ret
    assert _case(opts)["detail"] == "the new computer 2002 has registered but not reported its Computer Name yet"
    bigfix.unreported.clear()
    assert [c["old_computer_id"] for c in iemkey.cleanup()["deleted"]] == ["1001"]


def test_finding_a_404_outside_a_non_master_operators_scope_is_review_not_gone(local, bigfix, opts):
    _duplicate(bigfix)
    bigfix.master_operator, bigfix.scope = False, {"2002"}  # 1001 is there, outside this operator's scope
    ret = _rotated()
    assert ret["outcome"] == "review", ret
    assert "the API user is not a master operator" in _case(opts)["detail"]
    assert "1001" in bigfix.computers() and bigfix.deletes() == []


@pytest.mark.parametrize(
    ("master_operator", "outcome", "detail"),
    [
        (True, "gone", "already gone (DELETE answered 404)"),
        (False, "review", "DELETE /api/computer/1001 answered 404, and the API user is not a master operator"),
    ],
)
def test_a_delete_answered_404_is_gone_only_for_a_master_operator(
    local, bigfix, opts, master_operator, outcome, detail
):
    """Issue 25: the old computer was confirmed, then its DELETE answered 404 (someone else removed it,
    or, to an operator without full scope, it may still be there): gone only for a master operator."""
    _duplicate(bigfix)
    bigfix.master_operator = master_operator
    bigfix.vanish_on_delete.add("1001")
    ret = _rotated()
    assert ret["outcome"] == outcome, ret
    assert _case(opts)["status"] == outcome and _case(opts)["detail"].startswith(detail), _case(opts)


def test_finding_a_minion_clock_running_ahead_cannot_make_a_live_computer_look_silent(local, bigfix, opts):
    _computer(bigfix, "1001", last_report=30)  # it reports after the master received the rotation
    _computer(bigfix, "2002", last_report=-1)
    ret = _rotated(rotated_at=_now(3600).isoformat())  # the minion's clock is an hour ahead
    assert ret["outcome"] == "review", ret
    assert bigfix.deletes() == []


def test_an_old_computer_of_another_agent_type_is_review(local, bigfix, opts):
    _duplicate(bigfix)
    bigfix.agent_types["1001"] = "Proxy - VMware"
    assert _rotated()["outcome"] == "review" and bigfix.deletes() == []


def test_secrets_in_full_replies_reach_no_return_log_or_store(local, bigfix, opts, caplog):
    bigfix.ignore_fields = True  # the server answers every property, client settings included
    _duplicate(bigfix)
    _alert("alpha")
    with caplog.at_level(logging.DEBUG):
        returns = [_rotated(), iemkey.cleanup(), iemkey.cleanup(test=True), iemkey.history()]
    assert any("1001" in json.dumps(r) for r in returns)  # the data searched is this test's
    for ret in returns:
        assert SETTING_SECRET not in json.dumps(ret)
    assert "1001" in caplog.text and SETTING_SECRET not in caplog.text
    stored = "".join(p.read_text() for p in pathlib.Path(opts["cachedir"]).rglob("*.json"))
    assert "1001" in stored and SETTING_SECRET not in stored
    assert "pw" not in json.dumps(returns).replace("pw-", "")


# -- the revocation group -------------------------------------------------------------------------------
def test_the_group_property_is_looked_up_once_and_a_server_without_it_is_an_error(local, bigfix, opts):
    bigfix.properties = [p for p in bigfix.properties if p[2] is False or p[1] != "ID"]  # no reserved ID
    _duplicate(bigfix)
    _alert("alpha")
    assert _rotated()["outcome"] == "listed"
    ret = iemkey.cleanup()
    assert ret["retcode"] == 1 and "the revocation group 'iemkey revoke: alerts'" in ret["error"]
    assert "GET /api/properties lists 0 reserved 'ID' properties" in ret["error"] and bigfix.groups == {}
    assert [c["old_computer_id"] for c in ret["revoke"]] == ["1001"]  # still listed, with its steps
    bigfix.properties = list(PROPERTIES)
    assert iemkey.cleanup()["retcode"] == 0 and len(bigfix.groups) == 1
    lookups = bigfix.requests("GET", "/api/properties")
    iemkey.cleanup()
    assert bigfix.requests("GET", "/api/properties") == lookups  # found once, then kept


def test_a_group_someone_removed_in_the_console_is_made_again(local, bigfix, opts, caplog):
    _duplicate(bigfix)
    _alert("alpha")
    _rotated()
    (first,) = iemkey.cleanup()["groups"].values()
    assert first["matches"] is True
    bigfix.groups.clear()  # an operator removed it on the BigFix side
    with caplog.at_level(logging.WARNING):
        (again,) = iemkey.cleanup()["groups"].values()
    assert again["matches"] is True and again["id"] != first["id"] and len(bigfix.groups) == 1
    assert "BigFix has no revocation group 'iemkey revoke: alerts'" in caplog.text


def test_a_saved_group_is_refreshed_before_its_members_are_read(local, bigfix, opts):
    """BigFix evaluates a server based group on its refresh interval: read at once, a new group has
    no members; iemkey refreshes it after saving it, and reads what BigFix then counts."""
    _duplicate(bigfix)
    _alert("alpha")
    _rotated()
    (group,) = iemkey.cleanup()["groups"].values()
    assert group["seen"] == ["1001"] and group["matches"] is True
    (gid,) = bigfix.groups
    assert bigfix.requests("POST", f"/api/computergroup/master/{gid}/refresh")
    refreshed = len(bigfix.requests("POST", "/api/computergroup/master/"))
    iemkey.cleanup()  # nothing changed, and it matched: no refresh
    assert len(bigfix.requests("POST", "/api/computergroup/master/")) == refreshed


def test_a_group_that_does_not_match_its_list_is_flagged(local, bigfix, opts, caplog):
    opts["iemkey"]["cleanup"]["revoke_group"] = {"property_id": 1}  # the Computer Name property, not ID
    _duplicate(bigfix)
    _computer(bigfix, "1001", name="1001")  # a computer whose name looks like the ID
    _computer(bigfix, "7777", name="1001")
    _computer(bigfix, "2002", name="1001", last_report=-1)
    _alert("alpha")
    with caplog.at_level(logging.WARNING):
        _rotated()
    (group,) = iemkey.cleanup()["groups"].values()
    assert group["matches"] is False and group["seen"] == ["1001", "2002", "7777"]
    assert "do not revoke from that group until it matches" in caplog.text


def test_groups_can_be_switched_off(local, bigfix, opts):
    opts["iemkey"]["cleanup"]["revoke_group"] = {"enabled": False}
    _duplicate(bigfix)
    _alert("alpha")
    assert _rotated()["outcome"] == "listed"
    assert bigfix.groups == {} and iemkey.cleanup()["retcode"] == 0


# -- dry run, operators' own actions -----------------------------------------------------------------
def test_test_mode_says_what_it_would_do_and_changes_nothing(local, bigfix, opts, caplog):
    opts["iemkey"]["cleanup"]["report_margin"] = 3600
    _duplicate(bigfix, "1001", "2002")
    _rotated()  # routine, confirmed once the margin passes
    _duplicate(bigfix, "3003", "4004", name="beta.example.com")
    _alert("beta")
    _rotated(minion="beta", old="3003", new="4004")  # compromise
    opts["iemkey"]["cleanup"]["report_margin"] = 0
    store = pathlib.Path(opts["cachedir"], "iemkey")
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file() and not p.name.endswith(".lock")}
    calls = len(bigfix.calls)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        ret = iemkey.cleanup(test=True)
    assert ret["test"] is True and ret["retcode"] == 0
    assert "iemkey cleanup:" not in caplog.text  # no 'removed' or 'is to revoke' line for what was not done
    assert [c["old_computer_id"] for c in ret["would_delete"]] == ["1001"]
    assert [c["old_computer_id"] for c in ret["would_list_to_revoke"]] == ["3003"]
    assert ret["summary"] == (
        "test: would delete 1, list 1 to revoke, find 0 gone from the console, list 0 for review; nothing was changed"
    )
    after = {p: p.read_bytes() for p in store.rglob("*") if p.is_file() and not p.name.endswith(".lock")}
    assert after == before
    assert len(bigfix.calls) > calls and _writes(bigfix) == []  # it asked BigFix; it changed nothing there


def test_an_operators_explicit_delete_refuses_a_computer_to_revoke_unless_forced(local, bigfix, opts):
    _duplicate(bigfix)
    _alert("alpha")
    _rotated()
    ret = iemkey.remove_computer("1001")
    assert ret["retcode"] == 1 and ret["to_revoke"] == ["1001"] and "are listed to revoke" in ret["error"]
    assert bigfix.deletes() == []
    forced = iemkey.remove_computer("1001", force=True)
    assert forced["result"] is True and bigfix.deletes() == ["1001"]
    assert _case(opts)["status"] == "deleted" and _case(opts)["trail"][-1]["by"] == "iemkey.remove_computers"


def test_an_operator_dismisses_or_removes_a_review_item(local, bigfix, opts):
    _computer(bigfix, "1001", name="db01")
    _computer(bigfix, "2002", last_report=-1)
    assert _rotated()["outcome"] == "review"
    assert iemkey.cleanup(dismiss="1001")["dismissed"][0]["old_computer_id"] == "1001"
    assert iemkey.cleanup()["review"] == [] and bigfix.deletes() == []
    assert iemkey.cleanup(dismiss="1001")["retcode"] == 1  # nothing open left to dismiss
    assert _case(opts)["status"] == "dismissed"


def test_dismissing_a_computer_to_revoke_keeps_the_report_red_until_an_operator_accepts_it(
    local, bigfix, opts, caplog, monkeypatch
):
    _duplicate(bigfix)
    _alert("alpha")
    _rotated()
    with caplog.at_level(logging.WARNING):
        assert iemkey.cleanup(dismiss="1001")["retcode"] == 0
    assert "it counts as NOT revoked (the report stays red) until an operator accepts that" in caplog.text
    monkeypatch.setattr(iemkey, "_targets", lambda tgt, tgt_type: ["alpha"])
    monkeypatch.setattr(iemkey, "_gather", lambda *a: {"alpha": {"ret": _compliant(), "retcode": 0}})
    red = iemkey.report("2026-01-01T00:00:00Z")
    assert red["retcode"] == 1 and red["revocation"]["alerts"]["unrevoked"] == ["1001"]
    assert red["revocation"]["alerts"]["accept"].startswith("salt-run iemkey.incident name=alerts accept_unrevoked")
    iemkey.incident(name="alerts", accept_unrevoked=True, reason="the host was wiped", __pub_user="bob")
    assert iemkey.report("2026-01-01T00:00:00Z")["retcode"] == 0
    assert _case(opts)["accepted"]["by"] == "bob" and _case(opts)["accepted"]["reason"] == "the host was wiped"


def test_a_forced_delete_of_a_computer_to_revoke_is_unrevoked_until_accepted(local, bigfix, opts, monkeypatch):
    _duplicate(bigfix)
    _alert("alpha")
    _rotated()
    assert iemkey.remove_computer("1001", force=True)["result"] is True
    monkeypatch.setattr(iemkey, "_targets", lambda tgt, tgt_type: ["alpha"])
    monkeypatch.setattr(iemkey, "_gather", lambda *a: {"alpha": {"ret": _compliant(), "retcode": 0}})
    assert iemkey.report("2026-01-01T00:00:00Z")["revocation"]["alerts"]["unrevoked"] == ["1001"]


@pytest.mark.parametrize("value", ["", " ", "abc", "12 34", None])
def test_dismiss_with_an_empty_or_malformed_value_is_refused_and_runs_no_pass(local, bigfix, opts, value):
    _duplicate(bigfix)
    opts["iemkey"]["cleanup"]["report_margin"] = 3600
    _rotated()  # pending: a full pass would delete it once the margin passes
    opts["iemkey"]["cleanup"]["report_margin"] = 0
    calls = len(bigfix.calls)
    ret = iemkey.cleanup(dismiss=value)
    assert (
        ret["retcode"] == 1 and ret["error"] == f"dismiss takes a computer ID (digits), not {value!r}; nothing was done"
    )
    assert len(bigfix.calls) == calls and bigfix.deletes() == [] and _case(opts)["status"] == "pending"


def test_withdrawing_an_incident_decides_its_clean_ups_again_and_its_rotations_are_no_longer_owed(
    local, bigfix, opts, monkeypatch
):
    monkeypatch.setattr(iemkey, "_targets", lambda tgt, tgt_type: ["alpha"])
    declared = iemkey.incident(since=_now(-600).isoformat(), name="typo", __pub_user="carol")
    assert declared["retcode"] == 0 and [o["minion"] for o in declared["owed"]] == ["alpha"]
    assert local.published[-1]["kwarg"]["owed"] is True  # no engine here: the runner published it
    _duplicate(bigfix)
    assert _rotated()["outcome"] == "listed"  # covered by the incident, and it settles the owed rotation
    store = iemkey_store.from_opts(opts)
    assert store.get("owed", "alpha") is None
    iemkey.incident(since=_now(-600).isoformat(), name="typo2")  # owes alpha another rotation... after 600 s ago
    withdrawn = iemkey.incident(name="typo", withdraw=True, reason="wrong target", __pub_user="carol")
    assert withdrawn["retcode"] == 0 and [c["status"] for c in withdrawn["withdrawn"]["cases"]] == ["revoke"]
    assert _case(opts)["compromise"]["incident"] == "typo2"  # still covered: by the other incident
    iemkey.incident(name="typo2", withdraw=True, reason="wrong target too")
    assert _case(opts)["compromise"] is None and _case(opts)["status"] == "pending"
    assert _case(opts)["trail"][-1]["by"].startswith("iemkey.incident withdraw (")
    assert iemkey.incident()["incidents"]["typo"]["withdrawn"]["by"] == "carol"
    assert iemkey.cleanup()["deleted"][0]["old_computer_id"] == "1001"  # a routine duplicate after all


def test_history_filters_by_minion_and_by_either_computer(local, bigfix):
    _duplicate(bigfix, "1001", "2002")
    _rotated()
    _duplicate(bigfix, "3003", "4004", name="beta.example.com")
    _rotated(minion="beta", old="3003", new="4004")
    assert [c["old_computer_id"] for c in iemkey.history()["computers"]] == ["1001", "3003"]
    assert [c["minion"] for c in iemkey.history(minion="beta")["computers"]] == ["beta"]
    assert [c["old_computer_id"] for c in iemkey.history(computer="4004")["computers"]] == ["3003"]
    assert iemkey.history(computer="9")["count"] == 0


def test_clean_ups_an_earlier_version_kept_are_imported_once(local, bigfix, opts):
    state = pathlib.Path(opts["cachedir"], "iemkey")
    state.mkdir(parents=True)
    entry = {
        "minion": "alpha",
        "old_computer_id": "1001",
        "new_computer_id": "2002",
        "rotated_at": _now(-60).isoformat(),
        "received": _now(-60).isoformat(),
        "detail": "the new computer 2002 is not registered with BigFix yet",
    }
    (state / "cleanup.json").write_text(json.dumps({"pending": {"alpha:1001": entry}, "review": {}}))
    _duplicate(bigfix)
    ret = iemkey.cleanup()
    assert [c["old_computer_id"] for c in ret["deleted"]] == ["1001"]
    assert not (state / "cleanup.json").exists() and (state / "cleanup.json.imported").exists()


def test_an_api_that_is_not_configured_is_one_error_per_pass_naming_the_keys(local, bigfix, opts, caplog):
    del opts["iemkey"]["api"]
    with caplog.at_level(logging.ERROR):
        ret = _rotated()
    assert ret["outcome"] == "pending"
    assert ret["error"] == (
        "the BigFix REST API is not configured: set iemkey:api:url, iemkey:api:user, iemkey:api:password in the "
        "master config: 1 clean-ups wait for it"
    )
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [f"iemkey cleanup: {ret['error']}"]


# -- many computers at once -----------------------------------------------------------------------------
@pytest.fixture
def threaded_bigfix(opts):
    """The stand-in on a server answering requests in parallel, as a real BigFix server does."""
    from pytest_httpserver import HTTPServer

    server = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    server.start()
    agents = Registered()
    bigfix = StandInBigFix([agents], "op", "pw", latency=0.1).serve(server)
    bigfix.known = agents.known
    opts["iemkey"]["api"]["url"] = server.url_for("").rstrip("/")
    yield bigfix
    server.clear()
    server.stop()


def test_one_pass_asks_for_its_computers_in_batches_and_deletes_concurrency_at_a_time(local, threaded_bigfix, opts):
    bigfix = threaded_bigfix
    opts["iemkey"]["cleanup"]["report_margin"] = 3600
    for n in range(12):
        _duplicate(bigfix, old=str(1000 + n), new=str(2000 + n), name=f"host{n}")
        assert _rotated(old=str(1000 + n), new=str(2000 + n))["outcome"] == "pending"
    opts["iemkey"]["cleanup"]["report_margin"] = 0
    calls, queries = len(bigfix.calls), len(bigfix.queries)
    ret = iemkey.cleanup()
    assert sorted(c["old_computer_id"] for c in ret["deleted"]) == [str(1000 + n) for n in range(12)]
    assert sorted(bigfix.deletes()) == [str(1000 + n) for n in range(12)]  # each exactly once
    assert len(bigfix.queries) - queries == 1  # one look-up for the 24 computers
    assert len(bigfix.calls) - calls == 1 + 1 + 12  # the operator, the look-up, the DELETEs
    assert bigfix.max_in_flight == 3  # iemkey:api:concurrency, the community's 3


def test_a_relevance_error_in_the_batch_is_an_error_never_no_such_computer(local, bigfix, opts):
    bigfix.relevance_errors["bes computers"] = "Singular expression refers to nonexistent object."
    _duplicate(bigfix)
    assert _rotated()["outcome"] == "pending"
    ret = iemkey.cleanup()
    assert ret["retcode"] == 1 and ret["error"].startswith("POST /api/query: the relevance failed: Singular")
    assert [c["old_computer_id"] for c in ret["pending"]] == ["1001"] and ret["gone"] == []
    assert bigfix.deletes() == []


def test_more_ids_than_a_chunk_take_more_than_one_query(local, bigfix, opts):
    with iemkey_bigfix.session(iemkey._api()) as client:
        ids = [str(5000 + n) for n in range(iemkey_bigfix.CHUNK + 5)]
        for computer_id in ids[:3]:
            _computer(bigfix, computer_id)
        found = client.computers(ids)
    assert sorted(found) == ids[:3] and found[ids[0]].name == NAME
    assert len(bigfix.queries) == 2 and all(q.count(";") < iemkey_bigfix.CHUNK for q in bigfix.queries)


def test_an_operator_who_may_not_query_uses_gets(local, bigfix, opts):
    opts["iemkey"]["api"]["lookup"] = "get"
    _duplicate(bigfix)
    assert _rotated()["outcome"] == "deleted" and bigfix.queries == []
    assert sorted(p for m, p, _s in bigfix.calls if m == "GET" and p.startswith("/api/computer/")) == [
        "/api/computer/1001",
        "/api/computer/2002",
    ]
