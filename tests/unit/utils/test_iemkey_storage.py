"""KeyStorage on disk (_utils/iemkey_storage.py), called directly with the path module of each OS."""

import ntpath
import os
import posixpath

import iemkey_storage
import pytest


@pytest.mark.parametrize(
    ("pathmod", "path", "why"),
    [
        (posixpath, "", "is empty"),
        (posixpath, "var/opt/BESClient", "is not absolute"),
        (posixpath, "/var/opt/../BESClient", "contains '..'"),
        (posixpath, "/", "root of a file system"),
        (posixpath, "//", "root of a file system"),
        (ntpath, "C:\\", "root of a file system"),
        (ntpath, "\\\\server\\share\\", "root of a file system"),
        (ntpath, "C:BESData", "is not absolute"),
        (ntpath, "C:\\BES\\..\\Windows", "contains '..'"),
    ],
)
def test_the_path_alone_is_refused_by_the_rules_of_its_os(pathmod, path, why):
    assert why in iemkey_storage.unsafe_reason(path, pathmod, live=False)


def test_the_same_text_is_a_path_on_one_os_and_not_on_the_other():
    assert iemkey_storage.unsafe_reason("C:\\BES Client", ntpath, live=False) is None
    assert "not absolute" in iemkey_storage.unsafe_reason("C:\\BES Client", posixpath, live=False)
    assert iemkey_storage.unsafe_reason("/var/opt/BESClient", posixpath, live=False) is None


def test_live_checks_look_at_the_disk(tmp_path):
    storage = tmp_path / "BESClient"
    assert iemkey_storage.unsafe_reason(str(storage), os.path) == f"the storage path {storage} is not a directory"
    storage.mkdir()
    assert iemkey_storage.unsafe_reason(str(storage), os.path) is None  # no KeyStorage yet: nothing to refuse
    (tmp_path / "elsewhere").mkdir()
    (storage / "KeyStorage").symlink_to(tmp_path / "elsewhere")
    assert "is a symbolic link" in iemkey_storage.unsafe_reason(str(storage), os.path)
    assert iemkey_storage.unsafe_reason(str(storage), os.path, live=False) is None


def test_delete_removes_keystorage_and_reports_every_name(tmp_path):
    keystorage = tmp_path / "KeyStorage"
    (keystorage / "sub").mkdir(parents=True)
    (keystorage / "ClientKey.pvk").write_bytes(b"k")
    (keystorage / "sub" / "x").write_bytes(b"x")
    outside = tmp_path / "outside"
    outside.write_text("stays")
    (keystorage / "link").symlink_to(outside)
    removed, failed = iemkey_storage.delete_keystorage(str(keystorage))
    assert (removed, failed) == (["ClientKey.pvk", "link", os.path.join("sub", "x")], [])
    assert not keystorage.exists() and outside.read_text() == "stays"


def test_key_files_lists_regular_files_with_their_times(tmp_path):
    keystorage = tmp_path / "KeyStorage"
    keystorage.mkdir()
    (keystorage / "ClientKey.pvk").write_bytes(b"k")
    os.utime(keystorage / "ClientKey.pvk", (1_000_000, 1_000_000))
    (keystorage / "dangling").symlink_to(tmp_path / "nothing")
    assert iemkey_storage.key_files(str(keystorage)) == [(str(keystorage / "ClientKey.pvk"), 1_000_000)]
