"""
What the BigFix agent looks like on each OS it runs on, and how to read its own settings.

One data table (``PLATFORMS``) holds the per-OS knowledge (docs/bigfix-facts.md): where
the client keeps StoragePath and ComputerID (besclient.config, a plist or the registry),
the default StoragePath, the control script and its verbs, the service name and the
BESClient program. Everything else in iemkey is the same on every OS.

Pure functions: the ``iemkey`` execution module passes grains, configured values and a
registry reader in.
"""

import configparser
import os
import plistlib
import posixpath

from salt.exceptions import CommandExecutionError

try:  # the sibling utility module, as the loader syncs it (formula) or pip installs it (extension)
    from iemkey_storage import KEYSTORAGE
except ImportError:
    from saltext.iemkey.utils.iemkey_storage import KEYSTORAGE
UNIX_CONFIG_FILE = "/var/opt/BESClient/besclient.config"
CONFIG_SECTIONS = {
    "client": "Software\\BigFix\\EnterpriseClient",
    "global": "Software\\BigFix\\EnterpriseClient\\GlobalOptions",
}
VERBS = ("stop", "start", "restart", "status")

# What the agent looks like on each OS BigFix runs on (docs/bigfix-facts.md).
#   settings:  where the client keeps StoragePath and ComputerID
#   storage:   the StoragePath when the settings do not name one
#   technote:  the technote's storage path, used only where a KeyStorage really is there
#   script:    control script and the word it takes for each verb
#   service:   service name for Salt's ``service`` module (Windows; systemd-only Linux)
_UNIX_VERBS = {verb: verb for verb in VERBS}
_WINDOWS_ROOT_64 = "C:\\Program Files (x86)\\BigFix Enterprise\\BES Client"
_WINDOWS_ROOT_32 = "C:\\Program Files\\BigFix Enterprise\\BES Client"
PLATFORMS = {
    "windows64": {
        "settings": "registry",
        "registry_keys": (
            "SOFTWARE\\Wow6432Node\\BigFix\\EnterpriseClient",
            "SOFTWARE\\BigFix\\EnterpriseClient",
        ),
        "storage": _WINDOWS_ROOT_64,
        "service": "BESClient",
        "client_binary": _WINDOWS_ROOT_64 + "\\BESClient.exe",
    },
    "windows32": {
        "settings": "registry",
        "registry_keys": ("SOFTWARE\\BigFix\\EnterpriseClient",),
        "storage": _WINDOWS_ROOT_32,
        "service": "BESClient",
        "client_binary": _WINDOWS_ROOT_32 + "\\BESClient.exe",
    },
    "macos": {
        "settings": "plist",
        "plist": "/Library/Preferences/com.bigfix.BESAgent.plist",
        "storage": "/Library/Application Support/BigFix/BES Agent",
        "script": "/Library/BESAgent/BESAgent.app/Contents/MacOS/BESAgentControlPanel.sh",
        "verbs": {verb: "-" + verb for verb in VERBS},
        "client_binary": "/Library/BESAgent/BESAgent.app/Contents/MacOS/BESAgent",
    },
    "aix": {
        "settings": "besclient.config",
        "storage": "/var/opt/BESClient",
        "technote": "/etc/opt/BESClient",
        "script": "/etc/rc.d/rc2.d/SBESClientd",
        "client_binary": "/opt/BESClient/bin/BESClient",
    },
    "hpux": {
        "settings": "besclient.config",
        "storage": "/var/opt/BESClient",
        "technote": "/etc/opt/BESClient",
        "script": "/sbin/init.d/besclient",
        "client_binary": "/opt/BESClient/bin/BESClient",
    },
    "solaris": {
        "settings": "besclient.config",
        "storage": "/var/opt/BESClient",
        "technote": "/etc/opt/BESClient",
        "script": "/etc/init.d/besclient",
        "client_binary": "/opt/BESClient/bin/BESClient",
    },
    "linux": {
        "settings": "besclient.config",
        "storage": "/var/opt/BESClient",
        "technote": "/etc/opt/BESClient",
        "script": "/etc/init.d/besclient",
        # modern packages ship only besclient.service: used when the script is absent
        "service": "besclient",
        "client_binary": "/opt/BESClient/bin/BESClient",
    },
}
KERNELS = {"Darwin": "macos", "AIX": "aix", "HP-UX": "hpux", "SunOS": "solaris", "Linux": "linux"}


def platform_name(grains):
    """The PLATFORMS entry for a minion with these grains; None where BigFix has no known layout."""
    kernel = grains.get("kernel")
    if kernel == "Windows" or grains.get("os_family") == "Windows":
        return "windows64" if grains.get("cpuarch", "").lower() in ("amd64", "x86_64", "arm64") else "windows32"
    return KERNELS.get(kernel)


def read_besclient_config(path):
    """The sections of besclient.config as dicts; None when the file is absent."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            text = handle.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CommandExecutionError(f"cannot read the BigFix client settings {path}: {exc.strerror}") from None
    parser = configparser.ConfigParser(interpolation=None, strict=False, delimiters=("=",))
    parser.optionxform = str  # keys are case-sensitive in the agent's settings
    try:
        parser.read_string(text, source=path)
    except configparser.Error as exc:
        first_line = str(exc).splitlines()[0]
        raise CommandExecutionError(f"the BigFix client settings {path} are malformed: {first_line}") from None
    return {name.lower(): dict(parser.items(name)) for name in parser.sections()}


def _first_registry_value(read_registry, keys, name):
    """First value ``name`` found under HKLM ``keys`` (tried in order), with the key it came from."""
    for key in keys:
        found = read_registry(key, name)
        if found.get("success") and found.get("vdata") not in (None, ""):
            return found["vdata"], f"HKLM\\{key}\\{name}"
    return None, None


def read_plist(path):
    """The agent's settings plist as a dict; None when the file is absent."""
    try:
        with open(path, "rb") as handle:
            return plistlib.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, plistlib.InvalidFileException, ValueError) as exc:
        raise CommandExecutionError(f"cannot read the BigFix agent settings {path}: {exc}") from None


def client_settings(platform, config_file, read_registry):
    """StoragePath, ComputerID and EnterpriseClientFolder as the client itself records them.

    ``config_file`` is besclient.config on UNIX; ``read_registry(key, name)`` reads one value
    under HKLM on Windows (Salt's ``reg.read_value`` result). Returns ``{name: (value,
    where)}``; names the client does not record are absent.
    """
    found = {}
    if platform["settings"] == "registry":
        for name, subkey in (
            ("StoragePath", "\\GlobalOptions"),
            ("ComputerID", "\\GlobalOptions"),
            ("EnterpriseClientFolder", ""),
        ):
            keys = [key + subkey for key in platform["registry_keys"]]
            value, where = _first_registry_value(read_registry, keys, name)
            if value is not None:
                found[name] = (str(value), where)
    elif platform["settings"] == "plist":
        data = read_plist(platform["plist"]) or {}
        options = data.get("GlobalOptions") if isinstance(data.get("GlobalOptions"), dict) else {}
        for name in ("StoragePath", "ComputerID"):
            if options.get(name) not in (None, ""):
                found[name] = (str(options[name]), f"{platform['plist']} GlobalOptions:{name}")
    else:
        sections = read_besclient_config(config_file) or {}
        for name, section in (
            ("StoragePath", "global"),
            ("ComputerID", "global"),
            ("EnterpriseClientFolder", "client"),
        ):
            value = sections.get(CONFIG_SECTIONS[section].lower(), {}).get(name)
            if value not in (None, ""):
                found[name] = (value, f"{config_file} {name}")
    return found


def resolve_storage(platform, settings, configured):
    """(storage_path, where it came from): ``configured`` (iemkey:storage_path), else the client's
    own settings, else the technote's path where a KeyStorage is really there, else the default."""
    if configured is not None:
        return str(configured), "config iemkey:storage_path"
    if "StoragePath" in settings:
        value, where = settings["StoragePath"]
        return value, f"setting {where}"
    if "EnterpriseClientFolder" in settings and platform["settings"] == "registry":
        value, where = settings["EnterpriseClientFolder"]
        return value, f"setting {where}"
    technote = platform.get("technote")
    if (
        technote
        and not os.path.isdir(posixpath.join(platform["storage"], KEYSTORAGE))
        and os.path.isdir(posixpath.join(technote, KEYSTORAGE))
    ):
        return technote, "default (technote 1670787, where a KeyStorage is found)"
    return platform["storage"], "default"


def resolve_control(platform, script):
    """How this OS stops, starts and restarts the agent: ``script`` (iemkey:init_script) when
    configured, else the OS's control script, else its service where the script is absent."""
    source = "config iemkey:init_script"
    if script is None:
        script, source = platform.get("script"), "default"
        if platform.get("service") and (script is None or not os.path.exists(script)):
            name = platform["service"]
            return {
                "type": "service",
                "service": name,
                "source": "default",
                "looked_for": script,  # the script this OS uses when it has one
                "commands": {verb: f"service.{verb} {name}" for verb in VERBS},
            }
    verbs = platform.get("verbs", _UNIX_VERBS)
    return {
        "type": "script",
        "script": script,
        "source": source,
        "commands": {verb: [script, verbs[verb]] for verb in VERBS},
    }


def installed(storage, storage_source, computer_id, keystorage):
    """(whether the agent's files are here, whatever controls it; if not, where iemkey looked)."""
    if not storage or not os.path.isdir(storage):
        return False, f"no storage path at {storage} ({storage_source})"
    if storage_source.startswith(("setting", "config")) or computer_id:
        return True, None  # the client's own settings, or an operator, say where it lives
    if keystorage and os.path.lexists(keystorage):
        return True, None
    return False, f"no BigFix client settings and no KeyStorage at {keystorage}"
