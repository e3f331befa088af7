"""
Every OS BigFix runs on resolves the right KeyStorage, agent control and computer ID.

Only Linux can run here, so each OS is its grains plus the Salt functions that read
its settings (``reg.read_value`` on Windows) or the plist reader (macOS), faked at
the function boundary; the module itself runs for real.
"""

import os
import plistlib
import textwrap
from unittest.mock import MagicMock, patch

import iemkey_platforms
import pytest
from helpers import load_source
from salt.exceptions import CommandExecutionError

iemkey = load_source("_modules", "iemkey_module_unit")

GRAINS = {
    "windows64": {"kernel": "Windows", "os_family": "Windows", "cpuarch": "AMD64"},
    "windows32": {"kernel": "Windows", "os_family": "Windows", "cpuarch": "x86"},
    "macos": {"kernel": "Darwin", "os_family": "MacOS", "cpuarch": "arm64"},
    "aix": {"kernel": "AIX", "os_family": "AIX", "cpuarch": "powerpc"},
    "hpux": {"kernel": "HP-UX", "os_family": "HP-UX", "cpuarch": "ia64"},
    "solaris": {"kernel": "SunOS", "os_family": "Solaris", "cpuarch": "sun4v"},
    "linux": {"kernel": "Linux", "os_family": "RedHat", "cpuarch": "x86_64"},
}


class Config(dict):
    """A stand-in for ``config.get`` over nested ``iemkey:<key>`` settings."""

    def get(self, key, default=None):
        return super().get(key.split(":", 1)[1], default)


@pytest.fixture
def config():
    return Config()


@pytest.fixture
def registry():
    """HKLM values as {(key, name): value}; reg.read_value answers from it."""
    return {}


@pytest.fixture
def salt_mods(config, registry):
    def read_value(hive, key, name):
        assert hive == "HKLM"
        if (key, name) in registry:
            return {"success": True, "vdata": registry[(key, name)]}
        return {"success": False, "vdata": None}

    return {
        "config.get": config.get,
        "reg.read_value": MagicMock(side_effect=read_value),
        "service.available": MagicMock(return_value=True),
        "service.restart": MagicMock(return_value=True),
        "service.status": MagicMock(return_value=True),
        "cmd.run_all": MagicMock(return_value={"retcode": 0, "stdout": "ok", "stderr": ""}),
    }


@pytest.fixture
def configure_loader_modules(salt_mods, tmp_path):
    return {
        iemkey: {
            "__grains__": {},
            "__salt__": salt_mods,
            "__opts__": {"cachedir": str(tmp_path / "cache")},
            "__context__": {},
        }
    }


@pytest.fixture
def on(tmp_path, config):
    """Switch the module to an OS; UNIX-likes read a besclient.config under tmp_path."""

    def switch(name):
        iemkey.__grains__.clear()
        iemkey.__grains__.update(GRAINS[name])
        config.setdefault("config_file", str(tmp_path / "besclient.config"))

    return switch


def write_besclient_config(tmp_path, storage=None, computer_id=None):
    lines = [
        "[Software\\BigFix\\EnterpriseClient]",
        "EnterpriseClientFolder         = /opt/BESClient",
        "",
        "[Software\\BigFix\\EnterpriseClient\\GlobalOptions]",
    ]
    if storage:
        lines.append(f"StoragePath                    = {storage}")
    if computer_id:
        lines.append(f"ComputerID                     = {computer_id}")
    lines += [
        "",
        "[Software\\BigFix\\EnterpriseClient\\Settings\\Client\\__RelayServer1]",
        "value                          = http://relay.example:52311/bfmirror/downloads",
        "effective date                 = Thu,%2001%20Jan%202015%2000:00:00%20+0000",
        "",
    ]
    (tmp_path / "besclient.config").write_text("\n".join(lines))


WOW = "SOFTWARE\\Wow6432Node\\BigFix\\EnterpriseClient"
NATIVE = "SOFTWARE\\BigFix\\EnterpriseClient"


# -- Windows ---------------------------------------------------------------------
def test_windows64_reads_wow6432node_first_and_falls_back_to_client_folder(on, registry, salt_mods):
    on("windows64")
    registry[(WOW, "EnterpriseClientFolder")] = "D:\\BigFix\\BES Client"
    registry[(WOW + "\\GlobalOptions", "ComputerID")] = "1234567"
    registry[(NATIVE + "\\GlobalOptions", "ComputerID")] = "7654321"  # the 32-bit view: not ours
    paths = iemkey.paths()
    assert paths["os"] == "windows64"
    assert paths["keystorage"] == "D:\\BigFix\\BES Client\\KeyStorage"
    assert paths["storage_path_source"] == f"setting HKLM\\{WOW}\\EnterpriseClientFolder"
    assert paths["control"] == {
        "type": "service",
        "source": "default",
        "stop": "service.stop BESClient",
        "start": "service.start BESClient",
        "restart": "service.restart BESClient",
        "status": "service.status BESClient",
    }
    assert paths["client_binary"].endswith("Program Files (x86)\\BigFix Enterprise\\BES Client\\BESClient.exe")
    assert iemkey._agent().resolve()["computer_id"] == "1234567"


def test_windows64_storage_path_setting_wins_over_client_folder(on, registry):
    on("windows64")
    registry[(WOW, "EnterpriseClientFolder")] = "C:\\Program Files (x86)\\BigFix Enterprise\\BES Client"
    registry[(WOW + "\\GlobalOptions", "StoragePath")] = "E:\\BESData"
    assert iemkey.paths()["keystorage"] == "E:\\BESData\\KeyStorage"


def test_windows64_without_registry_uses_the_technote_default(on, registry):
    on("windows64")
    paths = iemkey.paths()
    assert paths["keystorage"] == "C:\\Program Files (x86)\\BigFix Enterprise\\BES Client\\KeyStorage"
    assert paths["storage_path_source"] == "default"
    assert iemkey._agent().resolve()["computer_id"] is None


def test_windows32_reads_only_the_native_key(on, registry, salt_mods):
    on("windows32")
    registry[(NATIVE + "\\GlobalOptions", "ComputerID")] = "42"
    paths = iemkey.paths()
    assert paths["os"] == "windows32"
    assert paths["keystorage"] == "C:\\Program Files\\BigFix Enterprise\\BES Client\\KeyStorage"
    assert iemkey._agent().resolve()["computer_id"] == "42"
    queried = {call.args[1] for call in salt_mods["reg.read_value"].call_args_list}
    assert not any("Wow6432Node" in key for key in queried)


def test_windows_restart_uses_the_service_module(on, salt_mods, tmp_path, config):
    on("windows64")
    config["storage_path"] = str(tmp_path)  # the storage path must exist for "installed"
    ret = iemkey.restart()
    assert ret["command"] == "service.restart BESClient"
    salt_mods["service.restart"].assert_called_once_with("BESClient")
    salt_mods["service.restart"].return_value = False
    with pytest.raises(CommandExecutionError, match=r"service\.restart BESClient"):
        iemkey.restart()


# -- macOS ---------------------------------------------------------------------
@pytest.fixture
def plist_file(tmp_path, monkeypatch):
    """macOS's settings file, written for real with plistlib where the module reads it."""
    path = tmp_path / "com.bigfix.BESAgent.plist"
    monkeypatch.setitem(iemkey_platforms.PLATFORMS["macos"], "plist", str(path))
    return path


@pytest.mark.parametrize("fmt", [plistlib.FMT_XML, plistlib.FMT_BINARY], ids=["xml", "binary"])
def test_macos_reads_the_plist(on, plist_file, fmt):
    on("macos")
    storage = "/Library/Application Support/BigFix/BES Agent"
    plist_file.write_bytes(plistlib.dumps({"GlobalOptions": {"StoragePath": storage, "ComputerID": 99}}, fmt=fmt))
    paths = iemkey.paths()
    assert iemkey._agent().resolve()["computer_id"] == "99"
    assert paths["keystorage"] == f"{storage}/KeyStorage"
    assert paths["storage_path_source"] == f"setting {plist_file} GlobalOptions:StoragePath"
    script = "/Library/BESAgent/BESAgent.app/Contents/MacOS/BESAgentControlPanel.sh"
    assert paths["control"]["restart"] == f"{script} -restart"
    assert paths["control"]["stop"] == f"{script} -stop"
    assert paths["config_file"] is None


def test_macos_without_plist_uses_the_default(on, plist_file):
    on("macos")
    paths = iemkey.paths()
    assert iemkey._agent().resolve()["computer_id"] is None
    assert paths["keystorage"] == "/Library/Application Support/BigFix/BES Agent/KeyStorage"
    assert paths["storage_path_source"] == "default"


def test_a_corrupt_plist_is_a_clear_error(on, plist_file):
    on("macos")
    plist_file.write_bytes(b"bplist00 not really")
    with pytest.raises(CommandExecutionError, match=f"cannot read the BigFix agent settings {plist_file}"):
        iemkey.paths()


# -- UNIX ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "script"),
    [("aix", "/etc/rc.d/rc2.d/SBESClientd"), ("hpux", "/sbin/init.d/besclient"), ("solaris", "/etc/init.d/besclient")],
)
def test_unix_uses_the_vendor_script_and_besclient_config(on, tmp_path, name, script):
    on(name)
    write_besclient_config(tmp_path, storage="/data/BESClient", computer_id="5551212")
    paths = iemkey.paths()
    assert paths["os"] == name
    assert paths["keystorage"] == "/data/BESClient/KeyStorage"
    assert paths["storage_path_source"] == f"setting {tmp_path / 'besclient.config'} StoragePath"
    assert paths["control"]["restart"] == f"{script} restart"
    assert paths["control"]["type"] == "script"
    assert iemkey._agent().resolve()["computer_id"] == "5551212"


def test_linux_sysv_uses_the_init_script_when_present(on, tmp_path):
    on("linux")
    write_besclient_config(tmp_path, storage="/var/opt/BESClient", computer_id="1")
    real_exists = os.path.exists
    with patch.object(os.path, "exists", lambda p: p == "/etc/init.d/besclient" or real_exists(p)):
        paths = iemkey.paths()
    assert paths["control"]["type"] == "script"
    assert paths["control"]["restart"] == "/etc/init.d/besclient restart"
    assert paths["keystorage"] == "/var/opt/BESClient/KeyStorage"


def test_linux_systemd_only_uses_the_service_module(on, tmp_path, salt_mods, config):
    on("linux")
    write_besclient_config(tmp_path, storage=str(tmp_path), computer_id="1")
    real_exists = os.path.exists
    with patch.object(os.path, "exists", lambda p: p != "/etc/init.d/besclient" and real_exists(p)):
        paths = iemkey.paths()
        assert paths["control"]["type"] == "service"
        assert paths["control"]["restart"] == "service.restart besclient"
        iemkey.restart()
    salt_mods["service.restart"].assert_called_once_with("besclient")
    salt_mods["cmd.run_all"].assert_not_called()


def test_linux_without_script_or_unit_reports_the_keys_and_leaves_the_retcode_alone(on, tmp_path, salt_mods):
    on("linux")
    write_besclient_config(tmp_path, storage=str(tmp_path), computer_id="4711")
    (tmp_path / "KeyStorage").mkdir()
    (tmp_path / "KeyStorage" / "ClientKey.pvk").write_text("key")

    def available(name):
        iemkey.__context__["retcode"] = 1  # as systemctl run through cmd.run_all leaves it
        return False

    salt_mods["service.available"].side_effect = available
    real_exists = os.path.exists
    with patch.object(os.path, "exists", lambda p: p != "/etc/init.d/besclient" and real_exists(p)):
        status = iemkey.status()
        assert (status["installed"], status["key_files"], status["computer_id"]) == (True, 1, "4711")
        assert status["agent_running"] is None
        assert status["problem"] == "no /etc/init.d/besclient and no besclient service"
        assert "retcode" not in iemkey.__context__
        with pytest.raises(
            CommandExecutionError,
            match=r"cannot stop or start the BigFix agent here: no "
            r"/etc/init\.d/besclient and no besclient service",
        ):
            iemkey.restart()
    salt_mods["service.restart"].assert_not_called()


def test_init_script_setting_overrides_the_default(on, tmp_path, config):
    on("linux")
    config["init_script"] = "/usr/local/sbin/besclient-ctl"
    paths = iemkey.paths()
    assert paths["control"]["restart"] == "/usr/local/sbin/besclient-ctl restart"
    assert paths["control"]["source"] == "config iemkey:init_script"


def test_storage_path_setting_overrides_the_client(on, tmp_path, config):
    on("linux")
    write_besclient_config(tmp_path, storage="/var/opt/BESClient")
    config["storage_path"] = "/srv/bes"
    paths = iemkey.paths()
    assert paths["keystorage"] == "/srv/bes/KeyStorage"
    assert paths["storage_path_source"] == "config iemkey:storage_path"


def test_linux_without_config_uses_var_opt_by_default(on, tmp_path):
    on("linux")
    paths = iemkey.paths()  # no besclient.config at all: no client installed
    assert paths["keystorage"] == "/var/opt/BESClient/KeyStorage"
    assert paths["storage_path_source"] == "default"
    assert iemkey._agent().resolve()["computer_id"] is None


def test_linux_uses_the_technote_path_only_where_a_keystorage_is(on, tmp_path):
    on("linux")
    write_besclient_config(tmp_path, computer_id="1")  # no StoragePath recorded
    real_isdir = os.path.isdir
    with patch.object(os.path, "isdir", lambda p: p == "/etc/opt/BESClient/KeyStorage" or real_isdir(p)):
        paths = iemkey.paths()
    assert paths["keystorage"] == "/etc/opt/BESClient/KeyStorage"
    assert paths["storage_path_source"].startswith("default (technote 1670787")


def test_padded_keys_and_odd_sections_parse_without_a_regex(on, tmp_path):
    on("linux")
    (tmp_path / "besclient.config").write_text(
        textwrap.dedent("""\
        [Software\\BigFix\\EnterpriseClient\\GlobalOptions]
        StoragePath                    =   /var/opt/BESClient
        ComputerID                     = 31337

        [Software\\BigFix\\EnterpriseClient\\Settings\\Client\\_BESClient_Comm_CommandPollEnable]
        value                          = 1
        effective date                 = Thu,%2001%20Jan%202015%2000:00:00%20+0000
        """)
    )
    assert iemkey.paths()["keystorage"] == "/var/opt/BESClient/KeyStorage"
    assert iemkey._agent().resolve()["computer_id"] == "31337"


def test_malformed_besclient_config_is_a_clear_error(on, tmp_path):
    on("linux")
    (tmp_path / "besclient.config").write_text("StoragePath = /var/opt/BESClient\n")  # no section
    with pytest.raises(CommandExecutionError, match=r"besclient\.config are malformed"):
        iemkey.paths()


def test_unreadable_besclient_config_is_a_clear_error(on, tmp_path):
    on("linux")
    (tmp_path / "besclient.config").mkdir()  # reading a directory fails like an unreadable file
    with pytest.raises(CommandExecutionError, match="cannot read the BigFix client settings"):
        iemkey.paths()


def test_virtual_refuses_an_unknown_kernel():
    iemkey.__grains__.clear()
    iemkey.__grains__.update({"kernel": "Plan9"})
    assert iemkey.__virtual__() == (False, "iemkey: the BigFix agent has no known layout on kernel 'Plan9'")
    iemkey.__grains__.update(GRAINS["linux"])
    assert iemkey.__virtual__() == "iemkey"
