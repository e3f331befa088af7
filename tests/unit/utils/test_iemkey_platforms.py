"""The per-OS table and the settings readers (_utils/iemkey_platforms.py), given their inputs directly."""

import iemkey_platforms
import pytest

WIN64 = iemkey_platforms.PLATFORMS["windows64"]
LINUX = iemkey_platforms.PLATFORMS["linux"]


@pytest.mark.parametrize(
    ("grains", "name"),
    [
        ({"kernel": "Windows", "cpuarch": "AMD64"}, "windows64"),
        ({"kernel": "Windows", "cpuarch": "x86"}, "windows32"),
        ({"os_family": "Windows", "cpuarch": "ARM64"}, "windows64"),
        ({"kernel": "Darwin"}, "macos"),
        ({"kernel": "AIX"}, "aix"),
        ({"kernel": "HP-UX"}, "hpux"),
        ({"kernel": "SunOS"}, "solaris"),
        ({"kernel": "Linux"}, "linux"),
        ({"kernel": "FreeBSD"}, None),
        ({}, None),
    ],
)
def test_grains_choose_the_table_entry(grains, name):
    assert iemkey_platforms.platform_name(grains) == name


def test_every_entry_says_where_its_settings_are_and_how_it_is_controlled():
    for name, platform in iemkey_platforms.PLATFORMS.items():
        assert platform["settings"] in ("registry", "plist", "besclient.config"), name
        assert platform["storage"] and platform["client_binary"], name
        assert platform.get("script") or platform.get("service"), name


def test_the_registry_is_read_through_the_reader_given_first_key_first():
    asked = []

    def read(key, name):
        asked.append((key, name))
        if key == "SOFTWARE\\BigFix\\EnterpriseClient\\GlobalOptions" and name == "StoragePath":
            return {"success": True, "vdata": "D:\\BES"}
        return {"success": False, "vdata": None}

    found = iemkey_platforms.client_settings(WIN64, None, read)
    assert found == {"StoragePath": ("D:\\BES", "HKLM\\SOFTWARE\\BigFix\\EnterpriseClient\\GlobalOptions\\StoragePath")}
    assert asked[:2] == [
        ("SOFTWARE\\Wow6432Node\\BigFix\\EnterpriseClient\\GlobalOptions", "StoragePath"),
        ("SOFTWARE\\BigFix\\EnterpriseClient\\GlobalOptions", "StoragePath"),
    ]


def test_besclient_config_is_read_from_the_path_given(tmp_path):
    config = tmp_path / "besclient.config"
    config.write_text(
        "[Software\\BigFix\\EnterpriseClient\\GlobalOptions]\nStoragePath = /data/BES\nComputerID = 12345\n"
    )
    found = iemkey_platforms.client_settings(LINUX, str(config), None)
    assert found == {
        "StoragePath": ("/data/BES", f"{config} StoragePath"),
        "ComputerID": ("12345", f"{config} ComputerID"),
    }
    assert iemkey_platforms.client_settings(LINUX, str(tmp_path / "absent"), None) == {}


def test_storage_precedence_configured_then_settings_then_default():
    settings = {"StoragePath": ("/data/BES", "f StoragePath")}
    assert iemkey_platforms.resolve_storage(LINUX, settings, "/srv/BES") == ("/srv/BES", "config iemkey:storage_path")
    assert iemkey_platforms.resolve_storage(LINUX, settings, None) == ("/data/BES", "setting f StoragePath")
    folder = {"EnterpriseClientFolder": ("E:\\BES", "HKLM\\...")}
    assert iemkey_platforms.resolve_storage(WIN64, folder, None) == ("E:\\BES", "setting HKLM\\...")
    assert iemkey_platforms.resolve_storage(LINUX, folder, None)[0] == "/var/opt/BESClient"  # a Windows-only fallback


def test_control_is_the_configured_script_else_the_os_way(tmp_path):
    script = str(tmp_path / "besclient")
    configured = iemkey_platforms.resolve_control(LINUX, script)
    assert configured["type"] == "script" and configured["source"] == "config iemkey:init_script"
    assert configured["commands"]["stop"] == [script, "stop"]
    windows = iemkey_platforms.resolve_control(WIN64, None)
    assert windows["type"] == "service" and windows["commands"]["restart"] == "service.restart BESClient"
    macos = iemkey_platforms.resolve_control(iemkey_platforms.PLATFORMS["macos"], None)
    assert macos["commands"]["start"][1] == "-start"
