"""Nothing but KeyStorage is ever deleted: every unsafe layout is refused and nothing changes."""

import os

import pytest
from salt.exceptions import CommandExecutionError


def _set_storage_path(agent, value):
    padded = "StoragePath                    = "
    text = agent.config_file.read_text().replace(f"{padded}{agent.storage}", f"{padded}{value}")
    agent.config_file.write_text(text)


def test_a_symlinked_keystorage_is_refused_and_its_target_survives(modules, agent, tmp_path):
    elsewhere = tmp_path / "precious"
    elsewhere.mkdir()
    (elsewhere / "data.bin").write_bytes(b"keep me")
    os.rename(agent.keystorage, tmp_path / "old-keys")
    agent.keystorage.symlink_to(elsewhere)
    before = agent.snapshot(exclude=())
    with pytest.raises(CommandExecutionError, match="is a symbolic link"):
        modules.iemkey.rotate()
    assert (elsewhere / "data.bin").read_bytes() == b"keep me"
    assert agent.keystorage.is_symlink() and agent.snapshot(exclude=()) == before
    assert agent.untouched()
    assert modules.iemkey.status()["problem"].endswith("refusing to follow it")


def test_a_keystorage_that_is_a_file_is_refused(modules, agent, tmp_path):
    os.rename(agent.keystorage, tmp_path / "old-keys")
    agent.keystorage.write_text("not a directory")
    with pytest.raises(CommandExecutionError, match="is not a directory"):
        modules.iemkey.rotate()
    assert agent.keystorage.read_text() == "not a directory" and agent.untouched()


@pytest.mark.parametrize(
    ("storage", "why"),
    [
        ("/", "root of a file system"),
        ("var/opt/BESClient", "not absolute"),
        ("{storage}/__BESData/../../../..", "contains"),
    ],
)
def test_unsafe_storage_paths_are_refused(modules, agent, storage, why):
    _set_storage_path(agent, storage.format(storage=agent.storage))
    before = agent.tree()
    with pytest.raises(CommandExecutionError, match=why):
        modules.iemkey.rotate()
    assert agent.tree() == before and agent.untouched()


def test_links_inside_keystorage_are_removed_not_followed(modules, agent, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("survives")
    (agent.keystorage / "link").symlink_to(outside)
    (agent.keystorage / "sub").mkdir()
    (agent.keystorage / "sub" / "dirlink").symlink_to(tmp_path)
    ret = modules.iemkey.rotate(wait=20)
    assert sorted(ret["removed"]) == ["ClientCert.crt", "ClientKey.pvk", "link", "sub/dirlink"]
    assert outside.read_text() == "survives" and tmp_path.is_dir()


def test_a_missing_keystorage_of_an_unregistered_agent_restarts_it_and_it_makes_a_key(modules, agent, tmp_path):
    agent.kill()  # an administrator stopped it and moved KeyStorage away
    os.rename(agent.keystorage, tmp_path / "gone")
    agent.set_computer_id("")  # and it never registered (a registered one is refused without force=True)
    ret = modules.iemkey.rotate(wait=20)
    assert ret["rotated"] is True and ret["removed"] == []
    assert ret["new_computer_id"] and agent.key_files()


def test_a_concurrent_rotation_is_refused_after_lock_wait(modules, agent, minion_opts):
    import fcntl

    lock = os.path.join(minion_opts["cachedir"], "iemkey", "rotate.lock")
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    with open(lock, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # another rotation holds the lock
        with pytest.raises(CommandExecutionError, match="another iemkey rotation is in progress"):
            modules.iemkey.rotate()
    assert agent.key_files() and agent.untouched()


def test_an_unreadable_config_is_a_clear_error_and_changes_nothing(modules, agent, tmp_path):
    os.rename(agent.config_file, tmp_path / "config")
    agent.config_file.mkdir()  # reading it fails as an unreadable file does
    before = agent.tree()
    for function in (modules.iemkey.paths, modules.iemkey.status, modules.iemkey.rotate):
        with pytest.raises(CommandExecutionError, match="cannot read the BigFix client settings"):
            function()
    assert agent.tree() == before and agent.untouched()


def test_a_malformed_config_is_a_clear_error_and_changes_nothing(modules, agent):
    agent.config_file.write_text("StoragePath = /\n[unterminated\n")
    before = agent.tree()
    with pytest.raises(CommandExecutionError, match=r"besclient\.config are malformed"):
        modules.iemkey.rotate()
    assert agent.tree() == before and agent.untouched()


def test_a_control_script_that_is_not_executable_is_refused(modules, agent):
    agent.init_script.chmod(0o644)
    with pytest.raises(CommandExecutionError, match="is not executable"):
        modules.iemkey.rotate()
    assert agent.key_files()


def test_permission_denied_part_way_reports_both_halves_and_restarts_the_agent(modules, agent, monkeypatch):
    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):
        if str(path).endswith("ClientKey.pvk"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    with pytest.raises(CommandExecutionError) as err:
        modules.iemkey.rotate()
    message = str(err.value)
    assert "removed ['ClientCert.crt']" in message
    assert "not removed ClientKey.pvk (Permission denied)" in message
    assert "the agent was started again" in message
    assert agent.running()
    assert sorted(agent.key_files()) == ["ClientKey.pvk"]


def test_status_shows_a_stale_agent(modules, agent, minion_opts):
    agent.behave(regen_delay=3600)
    modules.iemkey.rotate()
    assert modules.iemkey.status()["stale"] is False
    record = os.path.join(minion_opts["cachedir"], "iemkey", "rotation.json")
    import json

    data = json.load(open(record))
    data["rotated_at"] = "2026-01-01T00:00:00+00:00"  # the rotation was long ago; still no key
    json.dump(data, open(record, "w"))
    assert modules.iemkey.status()["stale"] is True
    verdict = modules.iemkey.check(since="2025-12-01T00:00:00Z")
    assert verdict["compliant"] is True and verdict["stale"] is True
    assert "cannot register" in verdict["reason"]
