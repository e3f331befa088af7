"""
Rotate the private key of the IBM BigFix (IEM/BES) agent.

This automates IBM technote 1670787: stop the agent, delete ``KeyStorage`` in the
agent's StoragePath (and nothing else), start the agent, which then makes a new
key pair and registers again under a new computer ID.

:configuration: read with ``config.get``, so minion config, grains or pillar work:

    .. code-block:: yaml

        iemkey:
          storage_path: /var/opt/BESClient    # default: the client's own StoragePath
          config_file: /var/opt/BESClient/besclient.config
          init_script: /etc/init.d/besclient  # default: per OS
          client_binary: /opt/BESClient/bin/BESClient
          command_timeout: 120                # seconds a stop/start may take
          lock_wait: 300                      # seconds to wait for another rotation
          stale_after: 900                    # seconds the agent may take to make keys
          relay: http://relay.example:52311
          register_password: sdb://vault/bigfix/register   # pillar or sdb only
"""

import configparser
import contextlib
import datetime
import json
import logging
import ntpath
import os
import plistlib
import posixpath
import re
import stat
import time

import salt.version
from salt.exceptions import CommandExecutionError, SaltInvocationError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:  # everything but Windows
    msvcrt = None
try:
    import iemkey_auth  # _utils/iemkey_auth.py, synced with saltutil.sync_all (formula install)
except ImportError:
    try:
        from saltext.iemkey.utils import iemkey_auth  # pip install (Salt extension)
    except ImportError:
        iemkey_auth = None

log = logging.getLogger(__name__)

__virtualname__ = "iemkey"

UTC = datetime.timezone.utc
KEYSTORAGE = "KeyStorage"
UNIX_CONFIG_FILE = "/var/opt/BESClient/besclient.config"
CONFIG_SECTIONS = {
    "client": "Software\\BigFix\\EnterpriseClient",
    "global": "Software\\BigFix\\EnterpriseClient\\GlobalOptions",
}
VERBS = ("stop", "start", "restart", "status")
DEFAULTS = {"command_timeout": 120, "lock_wait": 300, "stale_after": 900}

# What the agent looks like on each OS BigFix runs on (../shared/docs/bigfix-facts.md).
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


def __virtual__():
    if iemkey_auth is None:
        return (False, "iemkey: its utility module iemkey_auth is missing: run saltutil.sync_all")
    if _platform_name(__grains__) is None:
        return (False, f"iemkey: the BigFix agent has no known layout on kernel {__grains__.get('kernel')!r}")
    return __virtualname__


# -- platform and configuration ---------------------------------------------------
def _platform_name(grains):
    kernel = grains.get("kernel")
    if kernel == "Windows" or grains.get("os_family") == "Windows":
        return "windows64" if grains.get("cpuarch", "").lower() in ("amd64", "x86_64", "arm64") else "windows32"
    return KERNELS.get(kernel)


def _platform():
    return PLATFORMS[_platform_name(__grains__)]


def _pathmod():
    return ntpath if _platform_name(__grains__).startswith("windows") else posixpath


def _conf(key, default=None):
    value = __salt__["config.get"](f"iemkey:{key}", None)
    return default if value in (None, "") else value


def _number(key):
    value = _conf(key, DEFAULTS[key])
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SaltInvocationError(f"iemkey:{key} must be a number of seconds, not {value!r}") from None


def _cache_dir():
    path = os.path.join(__opts__["cachedir"], "iemkey")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


# -- the client's own settings -----------------------------------------------------
def _read_besclient_config(path):
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


def _read_registry(keys, name):
    """First value ``name`` found under HKLM ``keys`` (tried in order), with the key it came from."""
    for key in keys:
        found = __salt__["reg.read_value"]("HKLM", key, name)
        if found.get("success") and found.get("vdata") not in (None, ""):
            return found["vdata"], f"HKLM\\{key}\\{name}"
    return None, None


def _read_plist(path):
    try:
        with open(path, "rb") as handle:
            return plistlib.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, plistlib.InvalidFileException, ValueError) as exc:
        raise CommandExecutionError(f"cannot read the BigFix agent settings {path}: {exc}") from None


def _client_settings():
    """StoragePath, ComputerID and EnterpriseClientFolder as the client itself records them.

    Returns ``{name: (value, where)}``; names the client does not record are absent.
    """
    platform = _platform()
    found = {}
    if platform["settings"] == "registry":
        for name, subkey in (("StoragePath", "\\GlobalOptions"), ("ComputerID", "\\GlobalOptions"),
                             ("EnterpriseClientFolder", "")):
            value, where = _read_registry([key + subkey for key in platform["registry_keys"]], name)
            if value is not None:
                found[name] = (str(value), where)
    elif platform["settings"] == "plist":
        data = _read_plist(platform["plist"]) or {}
        options = data.get("GlobalOptions") if isinstance(data.get("GlobalOptions"), dict) else {}
        for name in ("StoragePath", "ComputerID"):
            if options.get(name) not in (None, ""):
                found[name] = (str(options[name]), f"{platform['plist']} GlobalOptions:{name}")
    else:
        config_file = _conf("config_file", UNIX_CONFIG_FILE)
        sections = _read_besclient_config(config_file) or {}
        for name, section in (("StoragePath", "global"), ("ComputerID", "global"),
                              ("EnterpriseClientFolder", "client")):
            value = sections.get(CONFIG_SECTIONS[section].lower(), {}).get(name)
            if value not in (None, ""):
                found[name] = (value, f"{config_file} {name}")
    return found


def _resolve_storage(settings):
    """(storage_path, where it came from)."""
    platform = _platform()
    configured = _conf("storage_path")
    if configured is not None:
        return str(configured), "config iemkey:storage_path"
    if "StoragePath" in settings:
        value, where = settings["StoragePath"]
        return value, f"setting {where}"
    if "EnterpriseClientFolder" in settings and platform["settings"] == "registry":
        value, where = settings["EnterpriseClientFolder"]
        return value, f"setting {where}"
    technote = platform.get("technote")
    if technote and not os.path.isdir(posixpath.join(platform["storage"], KEYSTORAGE)) and os.path.isdir(
        posixpath.join(technote, KEYSTORAGE)
    ):
        return technote, "default (technote 1670787, where a KeyStorage is found)"
    return platform["storage"], "default"


def _resolve_control():
    """How this OS stops, starts and restarts the agent."""
    platform = _platform()
    script = _conf("init_script")
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


def _resolve():
    settings = _client_settings()
    storage, storage_source = _resolve_storage(settings)
    computer_id = settings.get("ComputerID", (None, None))[0]
    return {
        "storage_path": storage,
        "storage_path_source": storage_source,
        "keystorage": _pathmod().join(_pathmod().normpath(storage), KEYSTORAGE) if storage else None,
        "computer_id": computer_id,
        "control": _resolve_control(),
    }


# -- safety ---------------------------------------------------------------------------
def _unsafe_reason(storage_path, live=True):
    """Why deleting ``<storage_path>/KeyStorage`` is unsafe, or None.

    ``live=False`` checks only the path itself, not what is on disk.
    """
    pathmod = _pathmod()
    if not storage_path or not str(storage_path).strip():
        return "the storage path is empty"
    if not pathmod.isabs(storage_path):
        return f"the storage path {storage_path!r} is not absolute"
    if ".." in re.split(r"[\\/]", storage_path):
        return f"the storage path {storage_path!r} contains '..'"
    norm = pathmod.normpath(storage_path)
    if pathmod.dirname(norm) == norm:
        return f"the storage path {storage_path!r} is the root of a file system"
    if not live:
        return None
    if not os.path.isdir(norm):
        return f"the storage path {norm} is not a directory"
    keystorage = pathmod.join(norm, KEYSTORAGE)
    try:
        mode = os.lstat(keystorage).st_mode
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(mode):
        return f"{keystorage} is a symbolic link (to {os.readlink(keystorage)}); refusing to follow it"
    if not stat.S_ISDIR(mode):
        return f"{keystorage} is not a directory"
    real = os.path.realpath(keystorage)
    if os.path.dirname(real) != os.path.realpath(norm) or os.path.basename(real) != KEYSTORAGE:
        return f"{keystorage} resolves to {real}, outside the storage path"
    return None


def _checked_keystorage(resolved, live=True):
    reason = _unsafe_reason(resolved["storage_path"], live)
    if reason:
        raise CommandExecutionError(
            f"KeyStorage is unsafe to delete: {reason} (storage path from {resolved['storage_path_source']}); "
            "nothing was changed"
        )
    return resolved["keystorage"]


def _delete_keystorage(keystorage):
    """Delete KeyStorage without following links; (removed, failed) as names inside it."""
    removed, failed = [], []

    def attempt(action, path):
        rel = os.path.relpath(path, keystorage)
        try:
            action(path)
        except OSError as exc:
            failed.append({"name": rel, "error": exc.strerror or str(exc)})
            return False
        if action is os.unlink:
            removed.append(rel)
        return True

    for dirpath, dirnames, filenames in os.walk(keystorage, topdown=False, followlinks=False):
        for name in filenames:
            attempt(os.unlink, os.path.join(dirpath, name))
        for name in dirnames:
            path = os.path.join(dirpath, name)
            attempt(os.unlink if os.path.islink(path) else os.rmdir, path)
    if not failed:
        attempt(os.rmdir, keystorage)
    return sorted(removed), failed


def _key_created(files):
    """When the current key was made: the oldest key file (a restored backup keeps old times)."""
    return _iso(min(mtime for _path, mtime in files)) if files else None


def _key_files(keystorage):
    """Regular files in KeyStorage (not following links), or [] when it holds none."""
    try:
        if not stat.S_ISDIR(os.lstat(keystorage).st_mode):
            return []
    except OSError:
        return []
    found = []
    for dirpath, _dirnames, filenames in os.walk(keystorage, followlinks=False):
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found.append((path, st.st_mtime))
    return found


# -- time --------------------------------------------------------------------------
def _parse_time(value, name="since"):
    """A timezone-aware UTC datetime from ISO 8601, epoch seconds or a datetime."""
    if isinstance(value, datetime.datetime):
        parsed = value
    elif isinstance(value, datetime.date):
        parsed = datetime.datetime(value.year, value.month, value.day)
    elif isinstance(value, bool) or value is None:
        raise SaltInvocationError(f"{name} must be an ISO 8601 time or epoch seconds, not {value!r}")
    elif isinstance(value, (int, float)) or (isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", value)):
        try:
            parsed = datetime.datetime.fromtimestamp(float(value), UTC)
        except (OverflowError, OSError, ValueError):
            raise SaltInvocationError(f"{name} {value!r} is not a usable epoch time") from None
    elif isinstance(value, str):
        text = value.strip()
        if text[-1:] in ("Z", "z"):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise SaltInvocationError(
                f"{name} {value!r} is not an ISO 8601 time (2026-11-20T08:00:00Z) or epoch seconds"
            ) from None
    else:
        raise SaltInvocationError(f"{name} must be an ISO 8601 time or epoch seconds, not {value!r}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def _iso(epoch):
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, UTC).isoformat()


# -- rotation record (crash safety) ---------------------------------------------------
def _record_path():
    return os.path.join(_cache_dir(), "rotation.json")


def _read_record():
    try:
        with open(_record_path(), encoding="utf-8") as handle:
            record = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("iemkey: ignoring unreadable rotation record %s: %s", _record_path(), exc)
        return None
    return record if isinstance(record, dict) else None


def _write_record(record):
    path = _record_path()
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(record, handle, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def _rotation_lock():
    """One rotation at a time on this minion: an OS lock the kernel drops if its holder dies."""
    wait = _number("lock_wait")
    path = os.path.join(_cache_dir(), "rotate.lock")
    with open(path, "a+", encoding="utf-8") as handle:
        deadline = time.monotonic() + wait
        while True:
            try:
                if fcntl:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                else:
                    msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    raise CommandExecutionError(
                        f"another iemkey rotation is in progress on this minion (lock {path} held for "
                        f"{wait:g} s, iemkey:lock_wait); nothing was changed"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            if fcntl:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            else:
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)


# -- agent control ----------------------------------------------------------------
def _control(verb, control, ignore_retcode=False):
    """Run ``verb`` the OS's way; {"command", "retcode", "stdout", "stderr"}."""
    command = control["commands"][verb]
    if control["type"] == "service":
        try:
            ok = __salt__[f"service.{verb}"](control["service"])
        except CommandExecutionError as exc:
            return {"command": command, "retcode": 1, "stdout": "", "stderr": str(exc)}
        return {"command": command, "retcode": 0 if ok else 1, "stdout": "", "stderr": ""}
    script = control["script"]
    if not os.path.isfile(script):
        raise CommandExecutionError(f"the BigFix agent control script {script} does not exist (tried to {verb})")
    if not os.access(script, os.X_OK):
        raise CommandExecutionError(f"the BigFix agent control script {script} is not executable (tried to {verb})")
    timeout = _number("command_timeout")
    started = time.monotonic()
    result = __salt__["cmd.run_all"](
        command, python_shell=False, timeout=timeout, ignore_retcode=ignore_retcode, output_loglevel="debug"
    )
    ret = {
        "command": _describe_cmd(control, verb),
        "retcode": result.get("retcode"),
        "stdout": result.get("stdout", ""),
        "stderr": result.get("stderr", ""),
    }
    if time.monotonic() - started >= timeout and "Timed out after" in str(ret["stdout"]):
        ret["retcode"] = 1
        ret["stderr"] = f"timed out after {timeout:g} s (iemkey:command_timeout)"
    return ret


def _describe(result):
    detail = (result.get("stderr") or result.get("stdout") or "").strip()
    return f"`{result['command']}` exited {result['retcode']}" + (f": {detail}" if detail else "")


def _service(function, name):
    """Call Salt's ``service.<function>``. Those run systemctl (and the like) through ``cmd``, which
    sets the job's retcode: asking about the agent's service must not fail the job by itself."""
    saved = __context__.get("retcode")
    try:
        return __salt__[f"service.{function}"](name)
    finally:
        if saved is None:
            __context__.pop("retcode", None)
        else:
            __context__["retcode"] = saved


def _control_missing(control):
    """Why this OS's way to stop and start the agent is not there, or None."""
    if control["type"] == "script":
        if os.path.exists(control["script"]):
            return None
        return f"no control script at {control['script']} ({control['source']})"
    try:
        if _service("available", control["service"]):
            return None
    except (CommandExecutionError, KeyError):  # no service manager Salt can ask
        pass
    if control.get("looked_for"):
        return f"no {control['looked_for']} and no {control['service']} service"
    return f"no {control['service']} service"


def _agent_running(control):
    """Whether the agent runs; None when there is no way to ask."""
    if _control_missing(control):
        return None
    if control["type"] == "service":
        return bool(_service("status", control["service"]))
    return _control("status", control, ignore_retcode=True)["retcode"] == 0


def _installed(resolved):
    """Whether the agent's files are here (whatever controls it), and if not, where we looked."""
    storage = resolved["storage_path"]
    if not storage or not os.path.isdir(storage):
        return False, f"no storage path at {storage} ({resolved['storage_path_source']})"
    if resolved["storage_path_source"].startswith(("setting", "config")) or resolved["computer_id"]:
        return True, None  # the client's own settings, or an operator, say where it lives
    if os.path.lexists(resolved["keystorage"]):
        return True, None
    return False, f"no BigFix client settings and no KeyStorage at {resolved['keystorage']}"


def _require_installed(resolved):
    """Refuse, before anything changes, to work on an agent that is absent or cannot be stopped and started."""
    installed, missing = _installed(resolved)
    if not installed:
        raise CommandExecutionError(f"the BigFix agent is not installed here: {missing}; nothing was changed")
    missing = _control_missing(resolved["control"])
    if missing:
        raise CommandExecutionError(f"cannot stop or start the BigFix agent here: {missing}; nothing was changed")


# -- events --------------------------------------------------------------------------
def _masterless():
    return __opts__.get("file_client") == "local" or __opts__.get("master_type") == "disable"


def _signed(tag, payload):
    """``payload`` signed with this minion's own Salt key, so the master can tell it came from here."""
    key_path = os.path.join(__opts__["pki_dir"], "minion.pem")
    try:
        with open(key_path, "rb") as handle:
            private_key = handle.read()
        return iemkey_auth.sign(tag, __opts__["id"], payload, private_key)
    except (OSError, ValueError, TypeError) as exc:
        raise CommandExecutionError(f"cannot sign the {tag} event with this minion's key {key_path}: {exc}") from None


def _fire(tag, payload):
    """Send ``tag`` signed to the master; False in masterless mode, where no master listens."""
    if _masterless():
        return False
    try:
        return bool(__salt__["event.send"](tag, _signed(tag, payload)))
    except Exception as exc:  # pylint: disable=broad-except
        # the rotation itself succeeded; losing the event must not turn it into a failure
        log.warning("iemkey: could not send %s to the master: %s", tag, exc)
        return False


# -- public functions -----------------------------------------------------------------
def paths():
    """
    Show where this minion's BigFix agent keeps its keys and how it is controlled.

    Reads only; works where no agent is installed.

    CLI Example:

    .. code-block:: bash

        salt '*' iemkey.paths
    """
    resolved = _resolve()
    control = resolved["control"]
    commands = {verb: _describe_cmd(control, verb) for verb in VERBS}
    return {
        "os": _platform_name(__grains__),
        "storage_path": resolved["storage_path"],
        "storage_path_source": resolved["storage_path_source"],
        "keystorage": resolved["keystorage"],
        "keystorage_source": resolved["storage_path_source"],
        "config_file": (
            _conf("config_file", UNIX_CONFIG_FILE) if _platform()["settings"] == "besclient.config" else None
        ),
        "control": {"type": control["type"], "source": control["source"], **commands},
        "client_binary": _client_binary(),
    }


def _status(probe_agent=True):
    resolved = _resolve()
    installed, missing = _installed(resolved)
    keystorage = resolved["keystorage"]
    unsafe = _unsafe_reason(resolved["storage_path"]) if installed else None
    files = [] if unsafe or not installed else _key_files(keystorage)
    problem = missing or unsafe or _control_missing(resolved["control"])
    record = _read_record()
    own = record if record and record.get("keystorage") == keystorage else None
    pending = bool(own and own.get("step") == "deleted" and not os.path.lexists(keystorage))
    keyless_for = None
    if own and own.get("rotated_at") and not files:
        keyless_for = time.time() - _parse_time(own["rotated_at"], "rotated_at").timestamp()
    return {
        "installed": installed,
        "keystorage": keystorage,
        "storage_path": resolved["storage_path"],
        "computer_id": resolved["computer_id"],
        "key_created": _key_created(files),
        "key_files": len(files),
        "last_rotated": own.get("rotated_at") if own else None,
        "pending": pending,
        # keyless this long after a rotation: the agent is down or cannot register
        "stale": keyless_for is not None and keyless_for > _number("stale_after"),
        "agent_running": _agent_running(resolved["control"]) if installed and probe_agent else None,
        "problem": problem,
    }


def status():
    """
    Report this minion's BigFix agent key: where it is, how old, the computer ID,
    when iemkey last rotated it and whether the agent runs. Changes nothing.

    ``key_created`` is the time of the oldest file in KeyStorage (a restored backup
    keeps its old times, so it counts as old). ``pending`` is True when a rotation
    deleted KeyStorage but did not finish (run ``iemkey.rotate`` to finish it).
    ``stale`` is True when the agent has written no key ``iemkey:stale_after``
    seconds after the last rotation: it is down or cannot register.

    CLI Example:

    .. code-block:: bash

        salt '*' iemkey.status
    """
    return _status()


def check(since, probe_agent=True):
    """
    Whether the agent's current key was made at or after ``since``. Changes nothing.

    since
        ISO 8601 (``2026-11-20T08:00:00Z``, any offset; no zone means UTC) or epoch
        seconds. A time in the future is an error.

    The time that counts (``basis``) is ``key_created`` while KeyStorage holds keys;
    while KeyStorage is absent after a rotation by iemkey (the agent makes keys
    asynchronously) it is ``last_rotated``. ``stale`` is True when that rotation is
    older than ``iemkey:stale_after`` seconds and the agent has still made no key.

    probe_agent
        Ask the agent whether it runs (``status.agent_running``); the state skips it.

    CLI Example:

    .. code-block:: bash

        salt '*' iemkey.check since=2026-11-20T08:00:00Z
    """
    since_dt = _parse_time(since)
    now = datetime.datetime.now(UTC)
    if since_dt > now:
        raise SaltInvocationError(
            f"since {since_dt.isoformat()} is in the future (now {now.isoformat(timespec='seconds')}): "
            "no key could ever satisfy it"
        )
    current = _status(probe_agent)
    ret = {"since": since_dt.isoformat(), "status": current, "basis": None, "key_time": None, "stale": False}
    if not current["installed"]:
        return {**ret, "compliant": False, "reason": f"the BigFix agent is not installed: {current['problem']}"}
    if current["key_created"]:
        ret.update(basis="key_created", key_time=current["key_created"])
    elif current["last_rotated"]:
        ret.update(basis="last_rotated", key_time=current["last_rotated"], stale=current["stale"])
    else:
        return {**ret, "compliant": False, "reason": "KeyStorage holds no key and iemkey recorded no rotation"}
    ret["compliant"] = _parse_time(ret["key_time"]) >= since_dt
    relation = "at or after" if ret["compliant"] else "before"
    ret["reason"] = f"{ret['basis']} {ret['key_time']} is {relation} since {ret['since']}"
    if ret["stale"]:
        ret["reason"] += (
            f"; but the agent has written no key since that rotation, more than iemkey:stale_after "
            f"({_number('stale_after'):g} s) ago: it is down or cannot register"
        )
    return ret


def restart():
    """
    Restart the BigFix agent the OS's way (control script or service).

    CLI Example:

    .. code-block:: bash

        salt '*' iemkey.restart
    """
    resolved = _resolve()
    _require_installed(resolved)
    result = _control("restart", resolved["control"])
    if result["retcode"] != 0:
        raise CommandExecutionError(f"restarting the BigFix agent failed: {_describe(result)}")
    return {**result, "result": True, "agent_running": _agent_running(resolved["control"])}


def _client_binary():
    return _conf("client_binary", _platform()["client_binary"])


def _pillar_secret(key):
    """A pillar value as it is, not masked: Salt 3008 masks the pillar values ``pillar.get`` hands out
    unless asked (``unmask``, an argument older Salt lines do not have)."""
    if salt.version.__saltstack_version__.info >= (3008,):
        return __salt__["pillar.get"](key, None, unmask=True)
    return __salt__["pillar.get"](key, None)


def _register_password():
    """The key-exchange password from pillar or an sdb:// URI; never from the command line."""
    raw = _pillar_secret("iemkey:register_password")
    if raw in (None, ""):
        raw = _conf("register_password")
        if raw is not None and not str(raw).startswith("sdb://"):
            raise CommandExecutionError(
                "iemkey:register_password is set outside pillar (minion config or grains, which other "
                "tools read): put it in pillar or behind an sdb:// URI"
            )
    if isinstance(raw, str) and raw.startswith("sdb://"):
        raw = __salt__["sdb.get"](raw)
        if raw in (None, "") or str(raw).startswith("sdb://"):
            raise CommandExecutionError("iemkey:register_password: the sdb:// URI did not resolve to a password")
    if raw in (None, ""):
        return None
    password = str(raw)
    if not password.isascii() or not password.isprintable():
        raise CommandExecutionError("iemkey:register_password must be printable ASCII (BigFix relay passwords are)")
    return password


def _register(relay, password):
    """Run the manual key exchange; the result without the password anywhere in it."""
    binary = _client_binary()
    command = [binary, "-register", password, relay]
    if _platform_name(__grains__).startswith("windows"):
        command = ["cmd", "/c", *command]
    shown = " ".join(command).replace(password, "********")
    if not os.path.isfile(binary):
        raise CommandExecutionError(f"the BESClient program {binary} does not exist (tried: {shown})")
    result = __salt__["cmd.run_all"](
        command, python_shell=False, timeout=_number("command_timeout"), output_loglevel="quiet",
        ignore_retcode=True,
    )
    ret = {
        "command": shown,
        "relay": relay,
        "retcode": result.get("retcode"),
        "stdout": str(result.get("stdout", "")).replace(password, "********"),
        "stderr": str(result.get("stderr", "")).replace(password, "********"),
    }
    ret["registered"] = ret["retcode"] == 0
    return ret


def register():
    """
    Run the manual key exchange with an authenticating relay
    (``BESClient -register <password> <relay>``; ``cmd /c`` on Windows).

    The relay is ``iemkey:relay``; the password is ``iemkey:register_password`` from
    pillar or an ``sdb://`` URI, never from the command line. The password appears in
    no return, log line or event; while the vendor program runs it is in that
    program's argument list, as the vendor documents it.

    ``iemkey.rotate`` runs this after starting the agent when both are configured.

    CLI Example:

    .. code-block:: bash

        salt '*' iemkey.register
    """
    relay = _conf("relay")
    password = _register_password()
    if not relay or not password:
        missing = " and ".join(name for name, value in (("iemkey:relay", relay),
                                                        ("iemkey:register_password", password)) if not value)
        raise CommandExecutionError(f"the manual key exchange needs {missing}")
    ret = _register(relay, password)
    if not ret["registered"]:
        raise CommandExecutionError(f"the manual key exchange with {relay} failed: {_describe(ret)}")
    return ret


def alert(reason=None):
    """
    Report that this minion is compromised: send ``iemkey/compromised`` to the
    master, signed with this minion's own Salt key. The master's reactor then
    rotates this minion's BigFix key, and only this minion's.

    This is the detector's entry point (an IDS hook, an EDR script). The master
    refuses a plain ``event.send iemkey/compromised``: any minion could send that
    with another minion's id, so only a signature proves who sent it.

    reason
        Free text for the master log (at most 1000 characters are sent).

    CLI Example:

    .. code-block:: bash

        salt-call iemkey.alert reason='IDS rule 4711: credential dump'
        salt '*' iemkey.alert reason='fleet-wide incident 2026-11'
    """
    if _masterless():
        raise CommandExecutionError("iemkey.alert sends an event to the master, and this minion runs masterless")
    reason = None if reason in (None, "") else str(reason)[:1000]
    data = _signed("iemkey/compromised", {"reason": reason})
    try:
        sent = bool(__salt__["event.send"]("iemkey/compromised", data))
    except Exception as exc:  # pylint: disable=broad-except
        raise CommandExecutionError(f"could not send iemkey/compromised to the master: {exc}") from None
    if not sent:
        raise CommandExecutionError("could not send iemkey/compromised to the master (event.send returned False)")
    envelope = data[iemkey_auth.SIGNATURE]
    return {"sent": True, "tag": "iemkey/compromised", "id": envelope["id"], "signed_at": envelope["time"],
            "reason": reason}


def _wait_for_new_key(keystorage, old_computer_id, wait):
    deadline = time.monotonic() + wait
    while True:
        files = _key_files(keystorage)
        computer_id = _resolve()["computer_id"]
        if files and computer_id and computer_id != old_computer_id:
            return {"new_computer_id": computer_id, "key_created": _key_created(files)}
        if time.monotonic() >= deadline:
            return {"new_computer_id": None, "key_created": None}
        time.sleep(0.2)


def rotate(wait=0, since=None, test=False, **kwargs):
    """
    Rotate the BigFix agent's private key (IBM technote 1670787): stop the agent,
    delete KeyStorage and nothing else, start the agent, record the rotation and
    send ``iemkey/rotated`` to the master.

    The agent then makes a new key and registers under a new computer ID; the old
    one (``old_computer_id``) is a duplicate in the console.

    wait
        Seconds to wait for the agent to write its new key; adds ``new_computer_id``.

    since
        Rotate only if the current key predates this time (see ``iemkey.check``);
        checked after taking the rotation lock, so queued triggers rotate once.

    test
        Say what would be done; change nothing.

    A rotation interrupted after the delete (crash, failed start) is finished by the
    next call without deleting anything new. One rotation runs at a time per
    minion; another caller waits up to ``iemkey:lock_wait`` seconds.

    CLI Example:

    .. code-block:: bash

        salt '*' iemkey.rotate
        salt '*' iemkey.rotate wait=60
        salt '*' iemkey.rotate test=True
    """
    test = bool(test or kwargs.get("__pub_test") or __opts__.get("test"))
    try:
        wait = float(wait or 0)
    except (TypeError, ValueError):
        raise SaltInvocationError(f"wait must be a number of seconds, not {wait!r}") from None
    with _rotation_lock():
        resolved = _resolve()
        _checked_keystorage(resolved, live=False)  # a refused path is refused before anything else
        _require_installed(resolved)
        keystorage = _checked_keystorage(resolved)
        if since is not None:
            verdict = check(since)
            if verdict["compliant"]:
                return {"rotated": False, "keystorage": keystorage, "comment": verdict["reason"]}
        record = _read_record()
        resume = bool(
            record
            and record.get("step") == "deleted"
            and record.get("keystorage") == keystorage
            and not os.path.lexists(keystorage)
        )
        control = resolved["control"]
        if test:
            planned = [] if resume else [_describe_cmd(control, "stop"), f"delete {keystorage}"]
            return {
                "rotated": None,
                "test": True,
                "keystorage": keystorage,
                "old_computer_id": record.get("old_computer_id") if resume else resolved["computer_id"],
                "would_remove": [] if resume else sorted(
                    os.path.relpath(path, keystorage) for path, _mtime in _key_files(keystorage)
                ),
                "would_run": [*planned, _describe_cmd(control, "start")],
                "comment": "finish the interrupted rotation" if resume else "rotate the key",
            }
        if resume:
            old_computer_id, removed, rotated_at = (record.get(k) for k in ("old_computer_id", "removed", "deleted_at"))
            log.info("iemkey: finishing the rotation interrupted after deleting %s", keystorage)
        else:
            old_computer_id = resolved["computer_id"]
            removed, rotated_at = _stop_and_delete(control, keystorage, old_computer_id)
        start = _control("start", control)
        if start["retcode"] != 0:
            raise CommandExecutionError(
                f"KeyStorage {keystorage} was deleted ({len(removed)} files) but starting the agent failed: "
                f"{_describe(start)}. The keys are gone and the agent is down; run iemkey.rotate again to finish."
            )
        if _agent_running(control) is False:
            raise CommandExecutionError(
                f"KeyStorage {keystorage} was deleted but the agent is not running after {_describe(start)}. "
                "The keys are gone and the agent is down; run iemkey.rotate again to finish."
            )
        ret = {
            "rotated": True,
            "keystorage": keystorage,
            "old_computer_id": old_computer_id,
            "rotated_at": rotated_at,
            "removed": removed,
            "resumed": resume,
        }
        _after_the_delete(ret, "recording the rotation", _write_record, {
            "step": "done", "keystorage": keystorage, "old_computer_id": old_computer_id,
            "rotated_at": rotated_at, "removed": removed})
    _after_the_delete(ret, "the manual key exchange", _key_exchange, ret)
    if wait > 0:
        _after_the_delete(ret, "waiting for the new key", lambda: ret.update(
            _wait_for_new_key(keystorage, old_computer_id, wait)))
    _after_the_delete(ret, "sending iemkey/rotated", _send_rotated, ret)
    return ret


def _after_the_delete(ret, step, action, *args):
    """Run a step that follows the delete. KeyStorage is gone by now: whatever goes wrong here fails
    the job, but never hides the rotation that happened (its facts stay in ``ret``)."""
    try:
        action(*args)
    except Exception as exc:  # pylint: disable=broad-except
        message = f"{step} failed after the rotation: {exc.__class__.__name__}: {exc}"
        ret.setdefault("errors", []).append(message)
        log.error("iemkey: KeyStorage %s was rotated, but %s", ret["keystorage"], message)
        __context__["retcode"] = 1


def _key_exchange(ret):
    """Behind an authenticating relay a wiped agent is a new agent: it must exchange keys again."""
    relay = _conf("relay")
    if not relay:
        return
    error = None
    try:
        password = _register_password()
        if password:
            exchange = _register(relay, password)
            ret["registered"] = exchange["registered"]
            error = None if exchange["registered"] else _describe(exchange)
    except CommandExecutionError as exc:
        ret["registered"], error = False, str(exc)
    if error:
        ret["register_error"] = error
        log.error("iemkey: the key exchange after the rotation failed: %s", error)
        __context__["retcode"] = 1  # the rotation stands, but the agent cannot register: fail the job


def _send_rotated(ret):
    event = {key: ret[key] for key in ("old_computer_id", "rotated_at", "keystorage")}
    if "new_computer_id" in ret:
        event["new_computer_id"] = ret["new_computer_id"]
    ret["event_sent"] = False  # until it is
    ret["event_sent"] = _fire("iemkey/rotated", event)


def _describe_cmd(control, verb):
    command = control["commands"][verb]
    return command if isinstance(command, str) else " ".join(command)


def _stop_and_delete(control, keystorage, old_computer_id):
    """Stop the agent and delete KeyStorage, recording each step; (names removed, when)."""
    record = {"keystorage": keystorage, "old_computer_id": old_computer_id}
    _write_record({**record, "step": "stopping"})
    stop = _control("stop", control)
    if stop["retcode"] != 0:
        raise CommandExecutionError(f"stopping the BigFix agent failed: {_describe(stop)}; KeyStorage was not touched")
    removed, failed = _delete_keystorage(keystorage) if os.path.lexists(keystorage) else ([], [])
    now = datetime.datetime.now(UTC).isoformat()
    if failed:
        _write_record({**record, "step": "failed", "removed": removed})
        start = _control("start", control)
        restarted = (
            "the agent was started again" if start["retcode"] == 0 else f"starting it again failed: {_describe(start)}"
        )
        raise CommandExecutionError(
            f"could not delete all of {keystorage}: removed {removed or 'nothing'}; not removed "
            + ", ".join(f"{item['name']} ({item['error']})" for item in failed)
            + f"; {restarted}"
        )
    _write_record({**record, "step": "deleted", "removed": removed, "deleted_at": now})
    return removed, now
