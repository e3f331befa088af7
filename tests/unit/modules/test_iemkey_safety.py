"""Every reason a KeyStorage is unsafe to delete, word for word (what the operator reads)."""

import os

import pytest
from helpers import load_source
from salt.exceptions import CommandExecutionError

iemkey = load_source("_modules", "iemkey_module_safety")


@pytest.fixture
def configure_loader_modules():
    return {iemkey: {"__grains__": {"kernel": "Linux"}, "__salt__": {}, "__opts__": {}, "__context__": {}}}


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("", "the storage path is empty"),
        ("   ", "the storage path is empty"),
        (None, "the storage path is empty"),
        ("var/opt/BESClient", "the storage path 'var/opt/BESClient' is not absolute"),
        ("/var/opt/../../etc", "the storage path '/var/opt/../../etc' contains '..'"),
        ("/", "the storage path '/' is the root of a file system"),
        ("//", "the storage path '//' is the root of a file system"),
    ],
)
def test_paths_that_are_refused_before_looking_at_the_disk(path, reason):
    assert iemkey._agent().unsafe_reason(path, live=False) == reason
    assert iemkey._agent().unsafe_reason(path) == reason


def test_a_path_that_is_fine_on_paper_is_checked_on_disk_only_when_live(tmp_path):
    missing = str(tmp_path / "nowhere")
    assert iemkey._agent().unsafe_reason(missing, live=False) is None
    assert iemkey._agent().unsafe_reason(missing) == f"the storage path {missing} is not a directory"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert iemkey._agent().unsafe_reason(str(a_file)) == f"the storage path {a_file} is not a directory"


def test_keystorage_on_disk(tmp_path):
    storage = tmp_path / "storage"
    storage.mkdir()
    assert iemkey._agent().unsafe_reason(str(storage)) is None  # no KeyStorage yet: nothing unsafe to delete
    (storage / "KeyStorage").mkdir()
    assert iemkey._agent().unsafe_reason(str(storage) + "/") is None
    os.rmdir(storage / "KeyStorage")
    (storage / "KeyStorage").write_text("x")
    assert iemkey._agent().unsafe_reason(str(storage)) == f"{storage}/KeyStorage is not a directory"
    os.unlink(storage / "KeyStorage")
    (tmp_path / "elsewhere").mkdir()
    (storage / "KeyStorage").symlink_to(tmp_path / "elsewhere")
    assert iemkey._agent().unsafe_reason(str(storage)) == (
        f"{storage}/KeyStorage is a symbolic link (to {tmp_path}/elsewhere); refusing to follow it"
    )


def test_the_refusal_names_the_reason_and_where_the_path_came_from(tmp_path):
    resolved = {"storage_path": "/", "storage_path_source": "config iemkey:storage_path", "keystorage": "/KeyStorage"}
    with pytest.raises(CommandExecutionError) as err:
        iemkey._agent().checked_keystorage(resolved, live=False)
    assert str(err.value) == (
        "KeyStorage is unsafe to delete: the storage path '/' is the root of a file system "
        "(storage path from config iemkey:storage_path); nothing was changed"
    )
    fine = {"storage_path": str(tmp_path), "storage_path_source": "default", "keystorage": f"{tmp_path}/KeyStorage"}
    assert iemkey._agent().checked_keystorage(fine) == f"{tmp_path}/KeyStorage"
    (tmp_path / "KeyStorage").write_text("a file")
    with pytest.raises(CommandExecutionError, match="is not a directory"):
        iemkey._agent().checked_keystorage(fine)  # live is the default: the disk is looked at
