"""
The stolen key is revoked, not hidden: on a real master with two minions, the master's reactors and
schedule, and the stand-in BigFix server (full replies, server based groups, revocation).

- A compromise alert's rotation: its old computer is listed to revoke, in a computer group listing
  exactly it, never DELETEd; once the operator revokes it in the console (the stand-in's revoke),
  the next clean-up records it revoked and the report turns green.
- A routine rotation is still deleted once BigFix confirms the duplicate.
- A rooted minion under a compromise cannot turn its rotation into a delete.
- An incident an operator declares covers the rotations the master receives after it.
"""

import pathlib
import time

import iemkey_auth
from helpers import CLEANUP_EVERY
from saltevents import decisions, forge, log_lines, wait_for

SINCE = "2026-01-01T00:00:00Z"


def _alert(minion, reason):
    ret = minion.salt_call_cli(timeout=60).run("iemkey.alert", f"reason={reason}")
    assert ret.returncode == 0, ret


def _open(salt_run_cli, minion, status):
    report = salt_run_cli.run("iemkey.report", f"since={SINCE}", f"tgt={minion.id}")
    return report, [c["old_computer_id"] for c in report.data["cleanup"][status]]


def test_a_compromise_rotation_is_revoked_not_deleted_and_confirmed(
    salt_master, salt_run_cli, salt_minion, agent, bigfix, event_listener
):
    old_id = agent.computer_id
    start = time.time()
    _alert(salt_minion, "IDS rule 4711")
    assert agent.wait_for_keys(timeout=90) and wait_for(lambda: agent.computer_id != old_id, timeout=60)
    (decision,) = decisions(event_listener, salt_master, start, tag="iemkey/rotated")
    assert decision["action"] == "recorded" and decision["compromise"] is True, decision
    # the master's schedule confirms the duplicate and lists the old computer to revoke, in a group
    assert wait_for(lambda: _open(salt_run_cli, salt_minion, "revoke")[1] == [old_id], timeout=60)
    report, _ = _open(salt_run_cli, salt_minion, "revoke")
    assert report.returncode != 0, report  # a stolen key is still valid: the incident is not closed
    revocation = report.data["revocation"]["alerts"]
    assert revocation["computers"] == [old_id]
    assert wait_for(
        lambda: _open(salt_run_cli, salt_minion, "revoke")[0].data["revocation"]["alerts"]["group"]["matches"]
    )
    ((group_id, group),) = bigfix.groups.items()
    assert group["name"] == "iemkey revoke: alerts" and bigfix.members(group_id) == {old_id}
    assert bigfix.deletes() == [] and old_id in bigfix.computers()
    assert log_lines(salt_master, f"computer {old_id} (rotation of minion {salt_minion.id}) is to revoke")
    # the operator selects the group's computers and chooses Revoke Certificate
    bigfix.revoke(old_id)
    assert wait_for(lambda: _open(salt_run_cli, salt_minion, "revoke")[1] == [], timeout=3 * CLEANUP_EVERY + 30)
    report, _ = _open(salt_run_cli, salt_minion, "revoke")
    assert report.returncode == 0 and report.data["compliant"] == [salt_minion.id], report
    history = salt_run_cli.run("iemkey.history", f"computer={old_id}", "--out=json")
    (computer,) = history.data["computers"]
    assert [step["status"] for step in computer["trail"]] == ["pending", "revoke", "revoked"]
    assert computer["incident"] == "alerts" and bigfix.deletes() == []


def test_a_routine_rotation_is_deleted_once_confirmed(salt_cli, salt_run_cli, salt_minion, agent, bigfix):
    old_id = agent.computer_id
    ret = salt_cli.run("iemkey.rotate", "wait=30", minion_tgt=salt_minion.id)
    assert ret.returncode == 0, ret
    assert wait_for(lambda: bigfix.deletes() == [old_id], timeout=60), bigfix.calls
    history = salt_run_cli.run("iemkey.history", f"computer={old_id}")
    (computer,) = history.data["computers"]
    assert computer["status"] == "deleted" and computer["incident"] is None
    assert bigfix.groups == {}


def test_a_rooted_minion_cannot_turn_its_compromise_rotation_into_a_delete(
    salt_master, salt_run_cli, salt_minion_2, agent_2, bigfix, event_listener
):
    """Root on beta: after its alert it signs, with its own key, a rotation dated before the alert
    and carrying fields of its own invention. The master decides from its own records."""
    old_id = agent_2.computer_id
    start = time.time()
    _alert(salt_minion_2, "EDR: credential dump")
    assert agent_2.wait_for_keys(timeout=90) and wait_for(lambda: agent_2.computer_id != old_id, timeout=60)
    key = (pathlib.Path(salt_minion_2.config["pki_dir"]) / "minion.pem").read_bytes()
    payload = {"old_computer_id": old_id, "rotated_at": "2020-01-01T00:00:00+00:00", "compromise": False}
    forged = iemkey_auth.sign("iemkey/rotated", salt_minion_2.id, {**payload, "cleanup": "delete"}, key)
    forge(salt_minion_2, "iemkey/rotated", {"id": salt_minion_2.id, "data": forged})
    found = decisions(event_listener, salt_master, start, count=2, tag="iemkey/rotated")
    assert len(found) == 2, found
    (genuine,) = [d for d in found if d["action"] == "recorded"]  # the two may come in either order
    (forged_one,) = [d for d in found if d["action"] == "none"]
    assert genuine["compromise"] is True  # the genuine rotation's clean-up: a compromise one
    assert forged_one["detail"] == "this clean-up is already recorded"
    assert wait_for(lambda: _open(salt_run_cli, salt_minion_2, "revoke")[1] == [old_id], timeout=60)
    time.sleep(2 * CLEANUP_EVERY)  # two more passes of the master's schedule
    assert bigfix.deletes() == [] and old_id in bigfix.computers()


def test_an_incident_covers_the_rotations_the_master_receives_after_it(
    salt_run_cli, salt_cli, salt_minion, salt_minion_2, agent, agent_2, bigfix
):
    declared = salt_run_cli.run(
        "iemkey.incident", "since=2026-01-01T00:00:00Z", f"tgt={salt_minion.id}", "name=worm-2026-12"
    )
    assert declared.returncode == 0 and declared.data["incident"]["minions"] == [salt_minion.id], declared
    old_1, old_2 = agent.computer_id, agent_2.computer_id
    for minion in (salt_minion, salt_minion_2):
        ret = salt_cli.run("iemkey.rotate", "wait=30", minion_tgt=minion.id)
        assert ret.returncode == 0, ret
    assert wait_for(lambda: bigfix.deletes() == [old_2], timeout=60), bigfix.calls  # beta: routine
    assert wait_for(lambda: _open(salt_run_cli, salt_minion, "revoke")[1] == [old_1], timeout=60)
    report, _ = _open(salt_run_cli, salt_minion, "revoke")
    assert report.data["revocation"]["worm-2026-12"]["group"]["name"] == "iemkey revoke: worm-2026-12"
    assert old_1 in bigfix.computers() and bigfix.deletes() == [old_2]
    dry = salt_run_cli.run("iemkey.cleanup", "test=True")
    assert dry.returncode == 0 and dry.data["test"] is True and dry.data["would_delete"] == [], dry
