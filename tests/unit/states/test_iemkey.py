"""
The state ``iemkey.rotated`` decides and reports; the execution module does the work. Each branch
runs with ``test`` off and on (saltext-vault's pattern), ``iemkey.check``/``iemkey.rotate`` faked.
"""

from unittest.mock import MagicMock

import pytest
from helpers import load_source
from salt.exceptions import CommandExecutionError, SaltInvocationError

state = load_source("_states", "iemkey_state_unit")
SINCE = "2026-11-20T08:00:00Z"
KEY = {"key_created": "2026-10-01T00:00:00+00:00", "computer_id": "1001"}


def _verdict(compliant=False, installed=True, stale=False, reason="key_created ... is before since ..."):
    status = {"installed": installed, **KEY}
    return {"compliant": compliant, "stale": stale, "reason": reason, "status": status, "no_agent": not installed}


ROTATION = {
    "rotated": True,
    "old_computer_id": "1001",
    "rotated_at": "2026-11-27T10:00:00+00:00",
    "removed": ["ClientCert.crt", "ClientKey.pvk"],
    "keystorage": "/var/opt/BESClient/KeyStorage",
}


@pytest.fixture(params=[False, True], ids=["apply", "test"])
def test_mode(request):
    return request.param


@pytest.fixture
def mods():
    return {"iemkey.check": MagicMock(return_value=_verdict()), "iemkey.rotate": MagicMock(return_value=ROTATION)}


@pytest.fixture
def configure_loader_modules(mods, test_mode):
    return {state: {"__salt__": mods, "__opts__": {"test": test_mode}}}


def _apply(**kwargs):
    return state.rotated("bigfix-agent-key", SINCE, **kwargs)


def test_a_compliant_key_changes_nothing(mods, test_mode):
    mods["iemkey.check"].return_value = _verdict(compliant=True, reason="key_created X is at or after since")
    ret = _apply()
    assert ret["result"] is True and ret["changes"] == {}
    assert ret["comment"] == "The BigFix agent key is rotated: key_created X is at or after since"
    mods["iemkey.rotate"].assert_not_called()
    mods["iemkey.check"].assert_called_once_with(SINCE, probe_agent=False, owed=False)


def test_a_stale_agent_fails_whatever_the_mode(mods, test_mode):
    mods["iemkey.check"].return_value = _verdict(compliant=True, stale=True, reason="... cannot register")
    ret = _apply()
    assert ret["result"] is False and ret["changes"] == {} and "cannot register" in ret["comment"]
    mods["iemkey.rotate"].assert_not_called()


def test_no_agent_is_nothing_to_rotate_and_succeeds_unless_one_is_required(mods, test_mode):
    mods["iemkey.check"].return_value = _verdict(
        compliant=True, installed=False, reason="no BigFix agent here: nothing to rotate (no storage path at /x)"
    )
    ret = _apply()
    assert ret["result"] is True and ret["changes"] == {}
    assert ret["comment"] == "No BigFix agent here: nothing to rotate (no storage path at /x)"
    mods["iemkey.rotate"].assert_not_called()
    mods["iemkey.check"].return_value = _verdict(
        installed=False, reason="the BigFix agent is not installed, and iemkey:require_agent is true: no storage path"
    )
    required = _apply()
    assert required["result"] is False and "iemkey:require_agent is true" in required["comment"]
    mods["iemkey.rotate"].assert_not_called()


def test_an_owed_rotation_on_a_minion_without_an_agent_says_so_to_the_master(mods, test_mode):
    mods["iemkey.check"].return_value = _verdict(compliant=True, installed=False, reason="no BigFix agent here: x")
    mods["iemkey.rotate"].return_value = {"rotated": False, "no_agent": True, "comment": "no BigFix agent here: x"}
    ret = _apply(owed=True)
    assert ret["result"] is True and ret["changes"] == {}
    if test_mode:
        mods["iemkey.rotate"].assert_not_called()
        return
    mods["iemkey.rotate"].assert_called_once_with(wait=0, since=SINCE, owed=True)  # it sends its signed word
    assert ret["comment"] == "No BigFix agent here: x"


def test_an_owed_rotation_already_made_is_reported_again_not_made_again(mods, test_mode):
    mods["iemkey.check"].return_value = _verdict(compliant=True, reason="iemkey rotated this key at X")
    mods["iemkey.rotate"].return_value = {"rotated": False, "resent": True, "comment": "its iemkey/rotated was sent"}
    ret = _apply(owed=True)
    mods["iemkey.check"].assert_called_once_with(SINCE, probe_agent=False, owed=True)
    assert ret["changes"] == {}
    if test_mode:
        assert ret["result"] is None and ret["comment"].startswith("The rotation's iemkey/rotated would be sent again")
        mods["iemkey.rotate"].assert_not_called()
        return
    assert ret["result"] is True and ret["comment"] == "The BigFix agent key is rotated: its iemkey/rotated was sent"
    mods["iemkey.rotate"].assert_called_once_with(wait=0, since=SINCE, owed=True)


def test_owed_must_be_a_boolean(mods, test_mode):
    ret = _apply(owed="perhaps")
    assert ret["result"] is False and ret["comment"] == (
        "Cannot decide whether the key is rotated: owed must be True or False, not 'perhaps'"
    )
    mods["iemkey.check"].assert_not_called()


@pytest.mark.parametrize(
    "error",
    [
        SaltInvocationError("since 'x' is not an ISO 8601 time"),
        CommandExecutionError("cannot read the BigFix client settings"),
    ],
)
def test_when_it_cannot_decide_it_fails_and_touches_nothing(mods, test_mode, error):
    mods["iemkey.check"].side_effect = error
    ret = _apply()
    assert ret["result"] is False and ret["changes"] == {}
    assert ret["comment"] == f"Cannot decide whether the key is rotated: {error}"
    mods["iemkey.rotate"].assert_not_called()


def test_an_old_key_is_rotated_or_planned(mods, test_mode):
    ret = _apply(wait=30)
    if test_mode:
        assert ret["result"] is None
        assert ret["changes"] == {"key": {"old": KEY, "new": "a new key and computer ID"}}
        assert ret["comment"].startswith("The BigFix agent key would be rotated")
        mods["iemkey.rotate"].assert_not_called()
        return
    mods["iemkey.rotate"].assert_called_once_with(wait=30, since=SINCE, owed=False)
    assert ret["result"] is True
    assert ret["changes"]["key"]["old"] == KEY
    assert ret["changes"]["removed"] == ROTATION["removed"]
    assert ret["changes"]["key"]["new"] == {"rotated_at": ROTATION["rotated_at"]}  # wait=0: no new ID yet
    assert "the old computer ID 1001 is now a duplicate" in ret["comment"]
    mods["iemkey.rotate"].return_value = {**ROTATION, "new_computer_id": "2002", "key_created": "2026-11-27T10:00:01"}
    assert _apply(wait=30)["changes"]["key"]["new"] == {
        "rotated_at": ROTATION["rotated_at"],
        "key_created": "2026-11-27T10:00:01",
        "computer_id": "2002",
    }


def test_rotated_elsewhere_while_waiting_for_the_lock_changes_nothing(mods, test_mode):
    mods["iemkey.rotate"].return_value = {"rotated": False, "comment": "key_created Y is at or after since"}
    ret = _apply()
    if test_mode:
        assert ret["result"] is None
        return
    assert ret["result"] is True and ret["changes"] == {}
    assert ret["comment"] == "The BigFix agent key is rotated: key_created Y is at or after since"


def test_a_failed_rotation_fails_with_its_reason(mods, test_mode):
    mods["iemkey.rotate"].side_effect = CommandExecutionError("stopping the BigFix agent failed: exit 1")
    ret = _apply()
    if test_mode:
        assert ret["result"] is None
        return
    assert ret["result"] is False and ret["changes"] == {}
    assert ret["comment"] == "Rotating the BigFix agent key failed: stopping the BigFix agent failed: exit 1"


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (
            {"registered": False, "register_error": "password rejected"},
            "The manual key exchange failed: password rejected",
        ),
        (
            {"errors": ["sending iemkey/rotated failed after the rotation: RuntimeError: boom"]},
            "sending iemkey/rotated failed after the rotation: RuntimeError: boom",
        ),
    ],
)
def test_a_step_that_fails_after_the_rotation_fails_the_state_and_keeps_the_change(mods, test_mode, extra, says):
    mods["iemkey.rotate"].return_value = {**ROTATION, **extra}
    ret = _apply()
    if test_mode:
        assert ret["result"] is None
        return
    assert ret["result"] is False
    assert ret["changes"]["removed"] == ROTATION["removed"] and ret["changes"]["key"]["old"]["computer_id"] == "1001"
    assert ret["comment"] == (
        "Rotated the BigFix agent key (key_created ... is before since ...); the old computer "
        f"ID 1001 is now a duplicate in the BigFix console. {says}"
    )


def test_without_wait_the_state_does_not_wait_for_the_new_key(mods, test_mode):
    ret = _apply()
    if test_mode:
        return
    mods["iemkey.rotate"].assert_called_once_with(wait=0, since=SINCE, owed=False)
    assert ret["result"] is True and ret["name"] == "bigfix-agent-key"
