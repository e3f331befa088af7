"""
What iemkey assumes when nothing is configured (README's configuration table), what ``paths``
shows for each OS, how the key files are found (links and vanishing files), and what an
unreadable rotation record does.
"""

import logging
import os
import stat
from unittest.mock import MagicMock

import iemkey_storage
import pytest
from helpers import load_source
from salt.exceptions import SaltInvocationError

iemkey = load_source("_modules", "iemkey_module_defaults")
LINUX = {"kernel": "Linux", "os_family": "Debian", "cpuarch": "x86_64"}
WIN64 = {"kernel": "Windows", "os_family": "Windows", "cpuarch": "AMD64"}


@pytest.fixture
def config():
    return {}


@pytest.fixture
def configure_loader_modules(tmp_path, config):
    salt_mods = {
        "config.get": lambda key, default=None: config.get(key.split(":", 1)[1], default),
        "reg.read_value": MagicMock(return_value={"success": False}),
        "service.available": MagicMock(return_value=False),
    }
    return {
        iemkey: {
            "__grains__": dict(LINUX),
            "__salt__": salt_mods,
            "__context__": {},
            "__opts__": {"cachedir": str(tmp_path / "cache")},
        }
    }


@pytest.mark.parametrize(("key", "default"), [("command_timeout", 120), ("lock_wait", 300), ("stale_after", 900)])
def test_the_documented_defaults(config, key, default):
    assert iemkey._agent().number(key) == default
    config[key] = "7.5"
    assert iemkey._agent().number(key) == 7.5
    config[key] = "soon"
    with pytest.raises(SaltInvocationError) as err:
        iemkey._agent().number(key)
    assert str(err.value) == f"iemkey:{key} must be a number of seconds, not 'soon'"


def test_paths_on_linux_with_nothing_configured(monkeypatch):
    real_exists = os.path.exists  # the vendor's init script is there, as on a SysV-style install
    monkeypatch.setattr(os.path, "exists", lambda p: p == "/etc/init.d/besclient" or real_exists(p))
    assert iemkey.paths() == {
        "os": "linux",
        "storage_path": "/var/opt/BESClient",
        "storage_path_source": "default",
        "keystorage": "/var/opt/BESClient/KeyStorage",
        "keystorage_source": "default",
        "config_file": "/var/opt/BESClient/besclient.config",
        "control": {
            "type": "script",
            "source": "default",
            "stop": "/etc/init.d/besclient stop",
            "start": "/etc/init.d/besclient start",
            "restart": "/etc/init.d/besclient restart",
            "status": "/etc/init.d/besclient status",
        },
        "client_binary": "/opt/BESClient/bin/BESClient",
    }


def test_paths_on_windows_with_nothing_in_the_registry():
    iemkey.__grains__.clear()
    iemkey.__grains__.update(WIN64)
    root = "C:\\Program Files (x86)\\BigFix Enterprise\\BES Client"
    assert iemkey.paths() == {
        "os": "windows64",
        "storage_path": root,
        "storage_path_source": "default",
        "keystorage": root + "\\KeyStorage",
        "keystorage_source": "default",
        "config_file": None,
        "control": {
            "type": "service",
            "source": "default",
            "stop": "service.stop BESClient",
            "start": "service.start BESClient",
            "restart": "service.restart BESClient",
            "status": "service.status BESClient",
        },
        "client_binary": root + "\\BESClient.exe",
    }


def test_the_cache_directory_is_private(tmp_path):
    path = iemkey._agent().cache_dir()
    assert path == str(tmp_path / "cache" / "iemkey")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700


def test_key_files_are_the_regular_files_inside_keystorage_only(tmp_path):
    keystorage = tmp_path / "KeyStorage"
    (keystorage / "sub").mkdir(parents=True)
    (keystorage / "ClientKey.pvk").write_text("key")
    (keystorage / "sub" / "nested.crt").write_text("cert")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "old-backup.pvk").write_text("someone else's")
    (keystorage / "linked-dir").symlink_to(outside, target_is_directory=True)
    (keystorage / "linked-file").symlink_to(outside / "old-backup.pvk")
    found = sorted(os.path.relpath(path, keystorage) for path, _mtime in iemkey_storage.key_files(str(keystorage)))
    assert found == ["ClientKey.pvk", os.path.join("sub", "nested.crt")]


def test_a_key_file_that_vanishes_while_listed_is_skipped_not_the_rest(tmp_path, monkeypatch):
    keystorage = tmp_path / "KeyStorage"
    keystorage.mkdir()
    for name in ("a.pvk", "b.crt", "c.crt"):
        (keystorage / name).write_text(name)
    real_lstat, gone = os.lstat, []

    def lstat(path, *args, **kwargs):
        if os.path.dirname(path) == str(keystorage) and not gone:  # the first file listed vanishes
            gone.append(os.path.basename(path))
            raise FileNotFoundError(2, "No such file or directory", path)
        return real_lstat(path, *args, **kwargs)

    monkeypatch.setattr(os, "lstat", lstat)
    found = sorted(os.path.basename(path) for path, _mtime in iemkey_storage.key_files(str(keystorage)))
    assert len(gone) == 1 and found == sorted({"a.pvk", "b.crt", "c.crt"} - set(gone))


def test_no_keystorage_no_key_files(tmp_path):
    assert iemkey_storage.key_files(str(tmp_path / "absent")) == []
    (tmp_path / "file").write_text("not a directory")
    assert iemkey_storage.key_files(str(tmp_path / "file")) == []


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_an_unreadable_rotation_record_is_ignored_with_a_warning(caplog, content):
    path = iemkey._agent().record_path()
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(content)
    with caplog.at_level(logging.WARNING):
        assert iemkey._agent().read_record() is None
    if content.startswith("{"):
        (record,) = caplog.records
        assert record.getMessage().startswith(f"iemkey: ignoring unreadable rotation record {path}: ")


def test_the_record_is_written_whole(tmp_path):
    iemkey._agent().write_record({"step": "deleted", "keystorage": "/x/KeyStorage"})
    assert iemkey._agent().read_record() == {"step": "deleted", "keystorage": "/x/KeyStorage"}
    assert os.listdir(os.path.dirname(iemkey._agent().record_path())) == ["rotation.json"]  # no temp file left
