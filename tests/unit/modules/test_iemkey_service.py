"""
Rotation under service control (systemd-only Linux, Windows), the Windows key exchange and lock,
and the drive-root refusal: what cannot run here, with Salt's service, cmd and registry functions
loader-mocked. Each rotation asserts the order the technote needs: stop, then delete, then start.
"""

import os
import posixpath
from unittest.mock import MagicMock, patch

import iemkey_agent
import iemkey_record
import pytest
from helpers import load_source
from salt.exceptions import CommandExecutionError

iemkey = load_source("_modules", "iemkey_module_service")
WOW = "SOFTWARE\\Wow6432Node\\BigFix\\EnterpriseClient"


@pytest.fixture
def storage(tmp_path):
    path = tmp_path / "storage"
    (path / "KeyStorage").mkdir(parents=True)
    for name in ("ClientKey.pvk", "ClientCert.crt"):
        (path / "KeyStorage" / name).write_text("key material")
    (path / "__BESData").mkdir()
    (path / "__BESData" / "keep.txt").write_text("not a key")
    return path


@pytest.fixture
def calls():
    return []


@pytest.fixture
def service(storage, calls):
    """The agent's service: records each call and whether KeyStorage existed at that moment."""

    def verb(name):
        def call(service_name):
            calls.append((name, service_name, (storage / "KeyStorage").exists()))
            return True

        return call

    return {f"service.{name}": verb(name) for name in ("stop", "start", "restart")} | {
        "service.available": MagicMock(return_value=True),
        "service.status": MagicMock(return_value=True),
    }


@pytest.fixture
def config():
    return {}


@pytest.fixture
def configure_loader_modules(tmp_path, service, config):
    salt_mods = {
        **service,
        "config.get": lambda key, default=None: config.get(key.split(":", 1)[1], default),
        "reg.read_value": MagicMock(return_value={"success": False}),
        "cmd.run_all": MagicMock(return_value={"retcode": 0, "stdout": "ok", "stderr": ""}),
        "pillar.get": MagicMock(return_value=None),
    }
    return {
        iemkey: {
            "__grains__": {},
            "__salt__": salt_mods,
            "__context__": {},
            "__opts__": {"cachedir": str(tmp_path / "cache"), "file_client": "local"},
        }
    }


def _grains(**grains):
    iemkey.__grains__.clear()
    iemkey.__grains__.update(grains)


def _assert_rotated_in_order(ret, calls, service_name, storage):
    assert calls == [("stop", service_name, True), ("start", service_name, False)]
    assert ret["rotated"] is True and ret["removed"] == ["ClientCert.crt", "ClientKey.pvk"]
    assert (storage / "__BESData" / "keep.txt").read_text() == "not a key"
    assert ret["event_sent"] is False  # masterless: no master to tell


def test_systemd_only_linux_stops_the_unit_deletes_then_starts_it(storage, calls, config, tmp_path):
    _grains(kernel="Linux", os_family="RedHat", cpuarch="x86_64")
    config.update(storage_path=str(storage), config_file=str(tmp_path / "none.config"))
    real_exists = os.path.exists
    with patch.object(os.path, "exists", lambda p: p != "/etc/init.d/besclient" and real_exists(p)):
        assert iemkey.paths()["control"]["type"] == "service"
        ret = iemkey.rotate()
    _assert_rotated_in_order(ret, calls, "besclient", storage)


def test_windows_stops_the_bes_client_service_deletes_then_starts_it(storage, calls, config, monkeypatch):
    _grains(kernel="Windows", os_family="Windows", cpuarch="AMD64")
    config.update(storage_path=str(storage))
    # the file work runs on this Linux host: only the path syntax is Windows' on a real minion
    monkeypatch.setattr(iemkey_agent.Agent, "pathmod", lambda _self: posixpath)
    ret = iemkey.rotate()
    _assert_rotated_in_order(ret, calls, "BESClient", storage)


def test_a_service_that_will_not_stop_leaves_keystorage_alone(storage, calls, config, service, tmp_path):
    _grains(kernel="Windows", os_family="Windows", cpuarch="AMD64")
    config.update(storage_path=str(storage))
    iemkey.__salt__["service.stop"] = MagicMock(side_effect=CommandExecutionError("Failed to stop BESClient"))
    refused = "stopping the BigFix agent failed: .*Failed to stop BESClient"
    with (
        patch.object(iemkey_agent.Agent, "pathmod", lambda _self: posixpath),
        pytest.raises(CommandExecutionError, match=refused),
    ):
        iemkey.rotate()
    assert sorted(p.name for p in (storage / "KeyStorage").iterdir()) == ["ClientCert.crt", "ClientKey.pvk"]


def test_a_service_stop_that_returns_false_leaves_keystorage_alone(storage, calls, config):
    """Salt's service.stop says False (systemctl or sc.exe failed) rather than raising: that is a failure too."""
    _grains(kernel="Windows", os_family="Windows", cpuarch="AMD64")
    config.update(storage_path=str(storage))
    iemkey.__salt__["service.stop"] = MagicMock(return_value=False)
    with (
        patch.object(iemkey_agent.Agent, "pathmod", lambda _self: posixpath),
        pytest.raises(CommandExecutionError) as err,
    ):
        iemkey.rotate()
    assert str(err.value) == (
        "stopping the BigFix agent failed: `service.stop BESClient` exited 1; KeyStorage was not touched"
    )
    assert sorted(p.name for p in (storage / "KeyStorage").iterdir()) == ["ClientCert.crt", "ClientKey.pvk"]
    assert calls == []  # and no start either: the agent was never stopped


def test_a_service_start_that_returns_false_after_the_delete_says_the_keys_are_gone(storage, calls, config):
    _grains(kernel="Windows", os_family="Windows", cpuarch="AMD64")
    config.update(storage_path=str(storage))
    iemkey.__salt__["service.start"] = MagicMock(return_value=False)
    failed = r"was deleted \(2 files\) but starting the agent failed: `service.start BESClient` exited 1"
    with (
        patch.object(iemkey_agent.Agent, "pathmod", lambda _self: posixpath),
        pytest.raises(CommandExecutionError, match=failed),
    ):
        iemkey.rotate()
    assert calls == [("stop", "BESClient", True)] and not (storage / "KeyStorage").exists()


def test_windows_key_exchange_runs_through_cmd_c(config, tmp_path):
    _grains(kernel="Windows", os_family="Windows", cpuarch="AMD64")
    binary = tmp_path / "BESClient.exe"
    binary.write_text("")
    config.update(relay="http://relay.example:52311", client_binary=str(binary))
    iemkey.__salt__["pillar.get"].return_value = "S3cret-relay"
    ret = iemkey.register()
    (call,) = iemkey.__salt__["cmd.run_all"].call_args_list
    assert call.args[0] == ["cmd", "/c", str(binary), "-register", "S3cret-relay", "http://relay.example:52311"]
    assert call.kwargs["python_shell"] is False and call.kwargs["output_loglevel"] == "quiet"
    assert ret["command"] == f"cmd /c {binary} -register ******** http://relay.example:52311"


class FakeMsvcrt:
    LK_NBLCK, LK_UNLCK = 2, 0

    def __init__(self, busy=False):
        self.busy, self.calls = busy, []

    def locking(self, fd, mode, nbytes):
        self.calls.append((mode, nbytes))
        if self.busy and mode == self.LK_NBLCK:
            raise OSError(13, "Permission denied")


def test_windows_locks_with_msvcrt(monkeypatch, config):
    _grains(kernel="Windows", os_family="Windows", cpuarch="AMD64")
    fake = FakeMsvcrt()
    monkeypatch.setattr(iemkey_record, "fcntl", None)
    monkeypatch.setattr(iemkey_record, "msvcrt", fake)
    with iemkey._agent().rotation_lock():
        assert fake.calls == [(fake.LK_NBLCK, 1)]
    assert fake.calls == [(fake.LK_NBLCK, 1), (fake.LK_UNLCK, 1)]
    busy = FakeMsvcrt(busy=True)
    monkeypatch.setattr(iemkey_record, "msvcrt", busy)
    config["lock_wait"] = 0.3
    with pytest.raises(CommandExecutionError) as err, iemkey._agent().rotation_lock():
        pass
    lock = os.path.join(iemkey._agent().cache_dir(), "rotate.lock")
    assert str(err.value) == (
        f"another iemkey rotation is in progress on this minion (lock {lock} held for 0.3 s, "
        "iemkey:lock_wait); nothing was changed"
    )
    assert busy.calls and all(mode == busy.LK_NBLCK for mode, _n in busy.calls)


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("C:\\", "root of a file system"),
        ("D:\\", "root of a file system"),
        ("C:", "not absolute"),
        ("BESData", "not absolute"),
        ("C:\\BES\\..\\..", "contains '..'"),
    ],
)
def test_windows_refuses_drive_roots_and_relative_paths(path, why):
    _grains(kernel="Windows", os_family="Windows", cpuarch="AMD64")
    assert why in iemkey._agent().unsafe_reason(path, live=False)
    assert iemkey._agent().unsafe_reason("C:\\Program Files (x86)\\BigFix Enterprise\\BES Client", live=False) is None
