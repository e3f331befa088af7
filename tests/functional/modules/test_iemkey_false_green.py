"""
No false green: a rotation that changed nothing is never reported as done. Through the real loader
against the stand-in agent; every "nothing changed" is checked byte for byte across the agent's
tree (``agent.tree()``: every path's kind, mode and bytes, links not followed), and the agent was
never stopped or started (``agent.untouched()``).
"""

import json
import os

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError


def _record(minion_opts):
    path = os.path.join(minion_opts["cachedir"], "iemkey", "rotation.json")
    return json.load(open(path)) if os.path.exists(path) else None


def _set_storage_path(agent, value):
    padded = "StoragePath                    = "
    text = agent.config_file.read_text().replace(f"{padded}{agent.storage}", f"{padded}{value}")
    agent.config_file.write_text(text)


def test_a_storage_path_linking_to_the_root_is_refused_and_check_does_not_say_compliant(
    modules, loaders, agent, tmp_path, monkeypatch
):
    link = tmp_path / "storage-link"
    link.symlink_to("/")
    monkeypatch.setitem(loaders.opts["iemkey"], "storage_path", str(link))
    before = agent.tree()
    with pytest.raises(CommandExecutionError, match=rf"the storage path {link} resolves to /, the root of a file"):
        modules.iemkey.rotate(wait=10)
    assert agent.tree() == before and agent.untouched()
    with pytest.raises(CommandExecutionError, match="cannot tell whether the BigFix key is rotated: the storage path"):
        modules.iemkey.check(since="2026-01-01T00:00:00Z")
    assert modules.iemkey.status()["path_problem"].endswith("the root of a file system")


def test_an_override_that_is_not_the_agents_storage_path_is_refused(modules, loaders, agent, tmp_path, monkeypatch):
    elsewhere = tmp_path / "old-layout"
    elsewhere.mkdir()
    monkeypatch.setitem(loaders.opts["iemkey"], "storage_path", str(elsewhere))
    before = agent.tree()
    with pytest.raises(CommandExecutionError) as refused:
        modules.iemkey.rotate(wait=10)
    assert str(refused.value) == (
        f"iemkey:storage_path {elsewhere} is not the agent's own StoragePath {agent.storage} ({agent.config_file} "
        "StoragePath); "
        "nothing was changed (force=True rotates anyway: it restarts the agent, which makes a new key if "
        "KeyStorage really is absent)"
    )
    assert agent.tree() == before and agent.untouched()


def test_a_registered_agent_without_keystorage_where_looked_is_refused_and_its_record_kept(
    modules, agent, minion_opts, tmp_path
):
    ret = modules.iemkey.rotate(wait=20)  # a real rotation: its record must survive what follows
    assert ret["rotated"] is True
    real = _record(minion_opts)
    empty = tmp_path / "typo"
    empty.mkdir()
    _set_storage_path(agent, empty)  # the agent's own setting now names a folder with no KeyStorage
    agent.installed = (agent.pid(), agent.events())
    before = agent.tree()
    with pytest.raises(CommandExecutionError, match=rf"there is no KeyStorage at {empty}/KeyStorage, but the agent"):
        modules.iemkey.rotate(wait=10)
    assert agent.tree() == before and agent.untouched() and _record(minion_opts) == real


def test_force_rotates_a_registered_agent_without_keystorage_once_it_makes_a_new_key(modules, agent, tmp_path):
    agent.kill()
    os.rename(agent.keystorage, tmp_path / "moved-away")  # an administrator moved KeyStorage away
    with pytest.raises(CommandExecutionError, match="there is no KeyStorage at"):
        modules.iemkey.rotate(wait=20)
    old_id = agent.computer_id
    ret = modules.iemkey.rotate(wait=20, force=True)
    assert ret["rotated"] is True and ret["removed"] == [] and ret["new_computer_id"] not in (None, old_id)


def test_a_restart_that_removed_nothing_and_saw_no_new_key_is_not_a_rotation(modules, agent, minion_opts):
    agent.kill()
    os.rename(agent.keystorage, agent.storage / "KeyStorage.moved")
    agent.set_computer_id("")  # an agent that never registered: no ComputerID, no KeyStorage
    agent.behave(regen_hold=True)  # and it makes no key while iemkey watches
    ret = modules.iemkey.rotate(wait=2)
    assert ret == {
        "rotated": False,
        "keystorage": str(agent.keystorage),
        "removed": [],
        "old_computer_id": None,
        "reason": f"KeyStorage {agent.keystorage} was absent: nothing was removed; the agent was restarted and "
        "the agent made no new key within wait=2 s",
    }
    assert _record(minion_opts) is None  # no rotation recorded, no event
    verdict = modules.iemkey.check(since="2026-01-01T00:00:00Z")
    assert verdict["compliant"] is False and verdict["status"]["last_rotated"] is None


def test_wait_that_ends_without_the_new_key_fails_the_job_and_keeps_the_rotation(modules, agent):
    agent.behave(regen_hold=True)
    ret = modules.iemkey.rotate(wait=2)
    assert ret["rotated"] is True and ret["removed"] and ret["new_computer_id"] is None
    assert ret["errors"] == [
        "waiting for the new key failed after the rotation: CommandExecutionError: the agent made no new key "
        "within wait=2 s: it may be down, or unable to register (an authenticating relay without the key "
        "exchange?); see iemkey.status"
    ]
    assert modules.iemkey.status()["last_rotated"] == ret["rotated_at"]  # the rotation did happen


@pytest.mark.parametrize("wait", [-5, "-5", "soon", float("nan"), float("inf"), 3601, True])
def test_a_malformed_wait_is_refused_before_anything_changes(modules, agent, wait):
    before = agent.tree()
    with pytest.raises(SaltInvocationError, match="wait must be"):
        modules.iemkey.rotate(wait=wait)
    assert agent.tree() == before and agent.untouched()


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        ("lock_wait", -1, "iemkey:lock_wait must be between 0 and 86400 seconds, not -1"),
        ("command_timeout", 0, "iemkey:command_timeout must be between 0.1 and 3600 seconds, not 0"),
        ("stale_after", "often", "iemkey:stale_after must be a number of seconds, not 'often'"),
    ],
)
def test_a_malformed_setting_is_refused_from_config_too(modules, loaders, agent, monkeypatch, key, value, error):
    monkeypatch.setitem(loaders.opts["iemkey"], key, value)
    before = agent.tree()
    with pytest.raises(SaltInvocationError) as refused:
        function = modules.iemkey.status if key == "stale_after" else modules.iemkey.rotate
        function()
    assert str(refused.value) == error
    assert agent.tree() == before and agent.untouched()
