"""
The stolen key is revoked, not hidden: on a real master with two minions, the master's engine and
schedule, and the stand-in BigFix server (full replies, server based groups, revocation).

- A compromise alert's rotation: its old computer is listed to revoke, in a computer group listing
  exactly it, never DELETEd; once the operator revokes it in the console (the stand-in's revoke),
  the next clean-up sees it gone from the console, and the report turns green once the operator
  confirms the revocation (BigFix cannot tell a revoked computer from a deleted one). Deleted in
  the console instead, it keeps the incident red.
- A routine rotation is still deleted once BigFix confirms the duplicate.
- A rooted minion under a compromise cannot turn its rotation into a delete.
- An incident an operator declares covers the rotations the master receives after it, and owes
  each targeted minion a rotation the engine delivers; withdrawn, it covers nothing.
"""

import datetime
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
    left = lambda: _open(salt_run_cli, salt_minion, "left_console")[1] == [old_id]  # noqa: E731
    assert wait_for(left, timeout=3 * CLEANUP_EVERY + 30)
    report, _ = _open(salt_run_cli, salt_minion, "revoke")
    assert report.returncode == 1, report  # gone from the console: revoked, or deleted? BigFix cannot tell
    assert report.data["revocation"]["alerts"]["left_console"] == [old_id]
    confirmed = salt_run_cli.run("iemkey.incident", "name=alerts", "revoked=True")
    assert confirmed.returncode == 0 and confirmed.data["confirmed_revoked"] == [old_id], confirmed
    report, _ = _open(salt_run_cli, salt_minion, "revoke")
    assert report.returncode == 0 and report.data["compliant"] == [salt_minion.id], report
    history = salt_run_cli.run("iemkey.history", f"computer={old_id}", "--out=json")
    (computer,) = history.data["computers"]
    assert [step["status"] for step in computer["trail"]] == ["pending", "revoke", "left_console", "revoked"]
    assert computer["trail"][-1]["by"].startswith("iemkey.incident revoked=True (")
    assert computer["incident"] == "alerts" and bigfix.deletes() == []


def test_a_computer_to_revoke_deleted_in_the_console_instead_keeps_the_incident_red(
    salt_master, salt_run_cli, salt_minion, agent, bigfix, event_listener
):
    """Issue 28: the operator deletes the computer instead of revoking it. BigFix answers 404 for both,
    so iemkey records what it saw (it left the console) and keeps the report red: only someone who
    knows can confirm a revocation, or accept the key unrevoked, with a reason, on the trail."""
    old_id = agent.computer_id
    _alert(salt_minion, "IDS rule 4711")
    assert wait_for(lambda: _open(salt_run_cli, salt_minion, "revoke")[1] == [old_id], timeout=90)
    deleted = salt_run_cli.run("iemkey.remove_computer", old_id)  # refused: it is to revoke
    assert deleted.returncode == 1 and "are listed to revoke" in deleted.data["error"]
    with bigfix.lock:  # the operator's right-click Delete in the console (not Revoke Certificate)
        bigfix.deleted[old_id] = time.time() + 3600
    assert wait_for(lambda: _open(salt_run_cli, salt_minion, "left_console")[1] == [old_id], timeout=60)
    time.sleep(2 * CLEANUP_EVERY)
    report, _ = _open(salt_run_cli, salt_minion, "left_console")
    assert report.returncode == 1 and report.data["revocation"]["alerts"]["left_console"] == [old_id]
    closing = salt_run_cli.run("iemkey.incident", "name=alerts", "accept_unrevoked=True", "reason=deleted it, sorry")
    assert closing.returncode == 1  # nothing ended unrevoked yet: it may still be revoked (it left the console)
    history = salt_run_cli.run("iemkey.history", f"computer={old_id}").data["computers"][0]
    assert history["status"] == "left_console" and "revoked" not in [s["status"] for s in history["trail"]]


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
        "iemkey.incident",
        "since=2026-01-01T00:00:00Z",
        f"tgt={salt_minion.id}",
        "name=worm-2026-12",
        "deliver=False",  # the operator rotates by hand here; the rotation it owes is held, not delivered
    )
    assert declared.returncode == 0 and declared.data["incident"]["minions"] == [salt_minion.id], declared
    assert [(o["minion"], o["state"]) for o in declared.data["owed"]] == [(salt_minion.id, "held")]
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


def test_an_incident_for_a_target_rotates_it_and_its_report_is_red_until_each_rotation_is_settled(
    salt_run_cli, salt_minion, agent, bigfix
):
    old_id = agent.computer_id
    since = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)).isoformat()
    declared = salt_run_cli.run("iemkey.incident", f"since={since}", f"tgt={salt_minion.id}", "name=worm-2026-13")
    assert declared.returncode == 0, declared
    assert [o["minion"] for o in declared.data["owed"]] == [salt_minion.id]
    # nobody runs anything else: the engine delivers it
    assert wait_for(lambda: agent.computer_id != old_id and agent.key_files(), timeout=60)
    assert wait_for(lambda: salt_run_cli.run("iemkey.owed").returncode == 0, timeout=60)
    assert wait_for(lambda: _open(salt_run_cli, salt_minion, "revoke")[1] == [old_id], timeout=60)
    withdrawn = salt_run_cli.run("iemkey.incident", "name=worm-2026-13", "withdraw=True", "reason=a drill")
    assert withdrawn.returncode == 0 and [c["status"] for c in withdrawn.data["withdrawn"]["cases"]] == ["pending"]
    assert wait_for(lambda: bigfix.deletes() == [old_id], timeout=60)  # a routine duplicate after all
