"""Nothing but KeyStorage is ever deleted: every unsafe layout is refused and nothing changes."""

import os

import pytest
from salt.exceptions import CommandExecutionError


def _set_storage_path(agent, value):
    padded = "StoragePath                    = "
    text = agent.config_file.read_text().replace(f"{padded}{agent.storage}", f"{padded}{value}")
    agent.config_file.write_text(text)


def _tree(root):
    return sorted((p, os.lstat(os.path.join(p, n)).st_mode) for p, _d, f in os.walk(root) for n in f)


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
    assert not agent.running()
    assert modules.iemkey.status()["problem"].endswith("refusing to follow it")


def test_a_keystorage_that_is_a_file_is_refused(modules, agent, tmp_path):
    os.rename(agent.keystorage, tmp_path / "old-keys")
    agent.keystorage.write_text("not a directory")
    with pytest.raises(CommandExecutionError, match="is not a directory"):
        modules.iemkey.rotate()
    assert agent.keystorage.read_text() == "not a directory" and not agent.running()


@pytest.mark.parametrize(
    ("storage", "why"),
    [("/", "root of a file system"), ("var/opt/BESClient", "not absolute"),
     ("{storage}/__BESData/../../../..", "contains")],
)
def test_unsafe_storage_paths_are_refused(modules, agent, storage, why):
    _set_storage_path(agent, storage.format(storage=agent.storage))
    before = _tree(agent.root)
    with pytest.raises(CommandExecutionError, match=why):
        modules.iemkey.rotate()
    assert _tree(agent.root) == before and not agent.running()


def test_links_inside_keystorage_are_removed_not_followed(modules, agent, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("survives")
    (agent.keystorage / "link").symlink_to(outside)
    (agent.keystorage / "sub").mkdir()
    (agent.keystorage / "sub" / "dirlink").symlink_to(tmp_path)
    ret = modules.iemkey.rotate(wait=20)
    assert sorted(ret["removed"]) == ["ClientCert.crt", "ClientKey.pvk", "link", "sub/dirlink"]
    assert outside.read_text() == "survives" and tmp_path.is_dir()


def test_a_missing_keystorage_restarts_the_agent_which_makes_a_key(modules, agent, tmp_path):
    os.rename(agent.keystorage, tmp_path / "gone")
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
    assert agent.key_files() and not agent.running()
