"""
What the master makes of a salt-ssh host's answer (``iemkey_ssh``), and adding salt-ssh hosts to an
incident (``iemkey_incidents.add_hosts``). The answers are the shapes salt-ssh's ``cmd_iter`` gives
(the integration tests run the real thing against an sshd).
"""

import datetime

import iemkey_incidents
import iemkey_ssh
import iemkey_store
import pytest

STATE_KEY = "iemkey_|-bigfix-agent-key_|-bigfix-agent-key_|-rotated"
UTC = datetime.timezone.utc


def _answer(result, comment, changes=None, **extra):
    state = {"result": result, "comment": comment, "changes": changes or {}, "name": "bigfix-agent-key", **extra}
    return {"return": {STATE_KEY: state}, "retcode": 0 if result is not False else 2, "id": "h1"}


ROTATED = {
    "key": {
        "old": {"key_created": "2026-11-07T00:00:00+00:00", "computer_id": "1001"},
        "new": {"rotated_at": "2026-12-07T05:00:00+00:00", "computer_id": "2002"},
    },
    "removed": ["KeyStorage/key1"],
}


def test_the_call_is_the_state_with_since_wait_and_test_only_when_asked():
    assert iemkey_ssh.call("2026-12-01T00:00:00+00:00", "30", False) == (
        "state.single",
        ["iemkey.rotated"],
        {"name": "bigfix-agent-key", "since": "2026-12-01T00:00:00+00:00", "wait": 30},
    )
    assert iemkey_ssh.call("T", 0, True)[2]["test"] is True


def test_a_rotation_gives_its_computer_ids_and_time_for_the_clean_up():
    found = iemkey_ssh.outcome("h1", _answer(True, "Rotated the BigFix agent key", ROTATED, computer_id="1001"))
    assert found == {
        "host": "h1",
        "comment": "Rotated the BigFix agent key",
        "computer_id": "1001",
        "outcome": "rotated",
        "old_computer_id": "1001",
        "rotated_at": "2026-12-07T05:00:00+00:00",
        "new_computer_id": "2002",
        "result": True,
    }
    assert iemkey_ssh.payload(found) == {
        "old_computer_id": "1001",
        "rotated_at": "2026-12-07T05:00:00+00:00",
        "new_computer_id": "2002",
    }


def test_a_rotation_whose_key_exchange_failed_is_rotated_but_fails_the_run():
    changes = {**ROTATED, "key": {**ROTATED["key"], "new": {"rotated_at": "2026-12-07T05:00:00+00:00"}}}
    found = iemkey_ssh.outcome("h1", _answer(False, "Rotated ... The manual key exchange failed: x", changes))
    assert found["outcome"] == "rotated" and found["result"] is False and found["new_computer_id"] is None
    assert iemkey_ssh.payload(found) == {"old_computer_id": "1001", "rotated_at": "2026-12-07T05:00:00+00:00"}
    assert iemkey_ssh.retcode({"h1": found}) == 1


@pytest.mark.parametrize(
    "answer, outcome",
    [
        (_answer(None, "The BigFix agent key would be rotated: ...", computer_id="7"), "would_rotate"),
        (_answer(True, "The BigFix agent key is rotated: key_created ... is at or after since"), "compliant"),
        (_answer(True, "No BigFix agent here: nothing to rotate (no storage path at /var/opt/BESClient)"), "no_agent"),
        (_answer(False, "Rotating the BigFix agent key failed: stopping the agent failed"), "failed"),
        (_answer(False, "The BigFix agent key is stale"), "failed"),
    ],
)
def test_each_state_answer_has_its_outcome(answer, outcome):
    assert iemkey_ssh.outcome("h1", answer)["outcome"] == outcome


LONG = "x" * 100 + "y" * 500


@pytest.mark.parametrize(
    "answer, comment",
    [
        (
            {"retcode": 255, "stderr": "ssh: connect to host 10.0.0.9 port 22: Connection refused\n", "stdout": "o"},
            "salt-ssh could not run the state: ssh: connect to host 10.0.0.9 port 22: Connection refused",
        ),
        ({"retcode": 1, "stdout": "only stdout\n"}, "salt-ssh could not run the state: only stdout"),
        (
            {"return": {"retcode": 255, "stderr": "Permission denied (publickey)."}, "retcode": 255},
            "salt-ssh could not run the state: Permission denied (publickey).",
        ),
        ({"return": {"stdout": "deploy failed"}}, "salt-ssh could not run the state: deploy failed"),
        ({"stderr": LONG}, "salt-ssh could not run the state: " + "y" * 500),
        (
            {"return": "ERROR: Failure deploying thin"},
            "salt-ssh could not run the state: ERROR: Failure deploying thin",
        ),
        ({"return": LONG}, "salt-ssh could not run the state: " + "y" * 500),
        ({"return": ["a", "b"]}, "salt-ssh could not run the state: ['a', 'b']"),
        ({"return": {"a": 1, "b": 2}}, "salt-ssh returned no state: {'return': {'a': 1, 'b': 2}}"),
        (
            {"return": {STATE_KEY: "Passed invalid arguments"}},
            f"salt-ssh returned no state: {{'return': {{'{STATE_KEY}': 'Passed invalid arguments'}}}}",
        ),
        (
            {"return": {STATE_KEY: {"comment": "no result"}}},
            f"salt-ssh returned no state: {{'return': {{'{STATE_KEY}': {{'comment': 'no result'}}}}}}",
        ),
        ({"return": ""}, "salt-ssh returned no state: {'return': ''}"),
        ("x" * 600, "salt-ssh returned no state: " + "x" * 500),
    ],
)
def test_anything_else_is_unreachable_with_what_salt_ssh_said(answer, comment):
    assert iemkey_ssh.outcome("h1", answer) == {"host": "h1", "outcome": "unreachable", "comment": comment}


def test_a_state_answer_without_a_comment_or_computer_ids_gives_empty_ones():
    answer = {"return": {STATE_KEY: {"result": True, "changes": {"key": {"old": {}, "new": {}}}}}}
    found = iemkey_ssh.outcome("h1", answer)
    assert found["comment"] == "" and found["old_computer_id"] == "" and found["computer_id"] is None
    assert found["outcome"] == "rotated" and found["new_computer_id"] is None and found["rotated_at"] is None
    assert iemkey_ssh.outcome("h1", {"return": {STATE_KEY: {"result": True}}})["comment"] == ""


def test_the_tally_lists_hosts_by_outcome_and_fails_only_on_failed_or_unreachable():
    found = {
        "a": {"outcome": "rotated", "result": True},
        "b": {"outcome": "compliant"},
        "c": {"outcome": "no_agent"},
        "d": {"outcome": "would_rotate"},
    }
    tally = iemkey_ssh.tally(found)
    assert tally["rotated"] == ["a"] and tally["compliant"] == ["b"] and tally["failed"] == []
    assert tally["summary"] == "1 rotated, 1 would rotate, 1 compliant, 1 no agent"
    assert iemkey_ssh.retcode(found) == 0
    assert iemkey_ssh.retcode({**found, "e": {"outcome": "unreachable"}}) == 1
    assert iemkey_ssh.retcode({**found, "e": {"outcome": "failed"}}) == 1


def test_hosts_count_as_covered_by_their_current_computer():
    found = {
        "a": {"outcome": "rotated", "computer_id": "1001", "new_computer_id": "2002"},
        "b": {"outcome": "compliant", "computer_id": "3003"},
        "c": {"outcome": "unreachable", "computer_id": None},
        "d": {"outcome": "no_agent", "computer_id": None},
    }
    assert iemkey_ssh.as_minions(found) == {
        "a": {"computer_id": "2002", "no_agent": False},
        "b": {"computer_id": "3003", "no_agent": False},
        "c": {"computer_id": None, "no_agent": False},
        "d": {"computer_id": None, "no_agent": True},
    }


@pytest.fixture
def store(tmp_path):
    return iemkey_store.LocalStore(str(tmp_path / "store"))


def test_hosts_join_an_open_incident_once_and_a_closed_or_unknown_one_is_refused(store):
    now = datetime.datetime(2026, 12, 7, tzinfo=UTC)
    store.put(
        "incidents", "dmz", {"name": "dmz", "since": "2026-12-01T00:00:00+00:00", "until": None, "minions": ["m1"]}
    )
    assert iemkey_incidents.add_hosts(store, "dmz", ["h2", "h1", "m1"], now, "op") == ["h1", "h2"]
    assert iemkey_incidents.add_hosts(store, "dmz", ["h1"], now, "op") == []
    record = store.get("incidents", "dmz")
    assert record["minions"] == ["h1", "h2", "m1"] and record["added"] == [
        {"at": now.isoformat(), "by": "op", "hosts": ["h1", "h2"]}
    ]
    with pytest.raises(
        iemkey_incidents.Refused, match=r"^no incident 'nope' on record \(declare it with salt-run iemkey.incident\)$"
    ):
        iemkey_incidents.add_hosts(store, "nope", ["h1"], now, "op")
    store.put(
        "incidents", "old", {"name": "old", "since": "2026-11-01T00:00:00+00:00", "until": "2026-11-02T00:00:00+00:00"}
    )
    with pytest.raises(
        iemkey_incidents.Refused,
        match=r"^incident 'old' was closed at 2026-11-02T00:00:00\+00:00: it covers no new rotation$",
    ):
        iemkey_incidents.add_hosts(store, "old", ["h1"], now, "op")
    store.put("incidents", "gone", {"name": "gone", "since": "2026-11-01T00:00:00+00:00", "withdrawn": True})
    with pytest.raises(iemkey_incidents.Refused, match="no incident 'gone'"):
        iemkey_incidents.open_incident(store, "gone")


def test_salt_3006_is_refused_saying_why_and_later_lines_are_not():
    refused = iemkey_ssh.unsupported((3006, 29, 0, 0), "3006.29")
    assert refused.startswith("Salt 3006.29's salt-ssh does not ship the master's _utils") and "3007" in refused
    assert iemkey_ssh.unsupported((3007, 16), "3007.16") is None and iemkey_ssh.unsupported((3008, 4), "3008.4") is None
