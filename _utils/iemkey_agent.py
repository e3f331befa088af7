"""
This minion's BigFix agent as the ``iemkey`` execution module sees it: where its keys and settings are
(``resolve``, per OS: ``iemkey_platforms``), how to stop, start and ask it the OS's way (``control``,
``service``), whether it is there (``installed``, ``require_installed``), what its key looks like
(``status``), the crash-safe rotation record and lock, and the manual key exchange (``register``:
the password from pillar or sdb, never in what it returns).

Salt glue stays in the module: an ``Agent`` is given the loader's ``__opts__``, ``__grains__``,
``__salt__`` and ``__context__`` and keeps no state of its own, so a test builds one over loader mocks.
"""

import logging
import ntpath
import os
import posixpath
import time

import salt.version
from salt.exceptions import CommandExecutionError, SaltInvocationError

try:  # _utils/, synced with saltutil.sync_all (formula install)
    import iemkey_auth
    import iemkey_platforms
    import iemkey_record
    import iemkey_storage
    import iemkey_time
except ImportError:  # pip install (Salt extension)
    from saltext.iemkey.utils import iemkey_auth, iemkey_platforms, iemkey_record, iemkey_storage, iemkey_time

log = logging.getLogger(__name__)

DEFAULTS = {
    "command_timeout": 120,
    "lock_wait": 300,
    "stale_after": 900,
    "send_timeout": 10,
    "alert_resend": 60,
    "alert_keep": 86400,
}
# what a number of seconds may be: below the low end or above the high end is a mistake, not a setting
BOUNDS = {
    "wait": (0, 3600),
    "lock_wait": (0, 86400),
    "command_timeout": (0.1, 3600),
    "stale_after": (1, 30 * 86400),
    "send_timeout": (0.5, 600),
    "alert_resend": (10, 3600),
    "alert_keep": (60, 30 * 86400),
}


def seconds(name, value):
    """A number of seconds within ``BOUNDS[name]``; SaltInvocationError for anything else."""
    low, high = BOUNDS[name]
    try:
        number = float(0 if value in (None, "") else value)
    except (TypeError, ValueError, OverflowError):
        raise SaltInvocationError(f"{name} must be a number of seconds, not {value!r}") from None
    if isinstance(value, bool) or not low <= number <= high:  # NaN fails both comparisons
        raise SaltInvocationError(f"{name} must be between {low:g} and {high:g} seconds, not {value!r}")
    return number


def key_created(files):
    """When the current key was made: the oldest key file (a restored backup keeps old times)."""
    return iemkey_time.iso(min(mtime for _path, mtime in files)) if files else None


def describe(result):
    detail = (result.get("stderr") or result.get("stdout") or "").strip()
    return f"`{result['command']}` exited {result['retcode']}" + (f": {detail}" if detail else "")


def describe_cmd(control, verb):
    command = control["commands"][verb]
    return command if isinstance(command, str) else " ".join(command)


class Agent:
    """This minion's agent, read through Salt: ``opts``, ``grains``, ``salt`` (the loader's
    functions) and ``context`` are the module's ``__opts__``, ``__grains__``, ``__salt__`` and
    ``__context__``."""

    def __init__(self, opts, grains, salt_functions, context):
        self.opts, self.grains, self.salt, self.context = opts, grains, salt_functions, context

    def platform_name(self):
        return iemkey_platforms.platform_name(self.grains)

    def platform(self):
        return iemkey_platforms.PLATFORMS[self.platform_name()]

    def pathmod(self):
        return ntpath if self.platform_name().startswith("windows") else posixpath

    def conf(self, key, default=None):
        value = self.salt["config.get"](f"iemkey:{key}", None)
        return default if value in (None, "") else value

    def number(self, key):
        """``iemkey:<key>`` from config (minion config, grains, pillar), checked like an argument."""
        try:
            return seconds(key, self.conf(key, DEFAULTS[key]))
        except SaltInvocationError as exc:
            raise SaltInvocationError(f"iemkey:{exc}") from None

    def cache_dir(self):
        path = os.path.join(self.opts["cachedir"], "iemkey")
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def config_file(self):
        return self.conf("config_file", iemkey_platforms.UNIX_CONFIG_FILE)

    def resolve(self):
        platform = self.platform()
        settings = iemkey_platforms.client_settings(
            platform, self.config_file(), lambda key, name: self.salt["reg.read_value"]("HKLM", key, name)
        )
        storage, storage_source = iemkey_platforms.resolve_storage(platform, settings, self.conf("storage_path"))
        keystorage = (
            self.pathmod().join(self.pathmod().normpath(storage), iemkey_storage.KEYSTORAGE) if storage else None
        )
        return {
            "storage_path": storage,
            "storage_path_source": storage_source,
            "keystorage": keystorage,
            "computer_id": settings.get("ComputerID", (None, None))[0],
            # what the agent's own settings say, when iemkey:storage_path overrides them
            "own_storage_path": settings.get("StoragePath", (None, None)),
            "control": iemkey_platforms.resolve_control(platform, self.conf("init_script")),
        }

    def misconfigured(self, resolved, record):
        """Why this KeyStorage cannot be the agent's, though the path itself is safe; None when it can be.

        - ``iemkey:storage_path`` names another folder than the agent's own StoragePath setting;
        - no KeyStorage is there, yet the agent's settings carry a ComputerID (a registered agent has
          keys), and no rotation by iemkey of this KeyStorage explains its absence."""
        own, where = resolved["own_storage_path"]
        storage = resolved["storage_path"]
        pathmod = self.pathmod()
        if (
            own
            and resolved["storage_path_source"].startswith("config")
            and pathmod.normpath(own) != pathmod.normpath(storage)
        ):
            return f"iemkey:storage_path {storage} is not the agent's own StoragePath {own} ({where})"
        keystorage = resolved["keystorage"]
        rotated_here = bool(
            record and record.get("keystorage") == keystorage and record.get("step") in ("deleted", "done")
        )
        if resolved["computer_id"] and not os.path.lexists(keystorage) and not rotated_here:
            return (
                f"there is no KeyStorage at {keystorage}, but the agent's settings carry ComputerID "
                f"{resolved['computer_id']}: a registered agent has keys, so they are elsewhere "
                f"(storage path from {resolved['storage_path_source']})"
            )
        return None

    def unsafe_reason(self, storage_path, live=True):
        """Why deleting ``<storage_path>/KeyStorage`` is unsafe on this minion's OS, or None."""
        return iemkey_storage.unsafe_reason(storage_path, self.pathmod(), live)

    def checked_keystorage(self, resolved, live=True):
        reason = self.unsafe_reason(resolved["storage_path"], live)
        if reason:
            raise CommandExecutionError(
                f"KeyStorage is unsafe to delete: {reason} (storage path from {resolved['storage_path_source']}); "
                "nothing was changed"
            )
        return resolved["keystorage"]

    def record_path(self):
        return os.path.join(self.cache_dir(), "rotation.json")

    def read_record(self):
        return iemkey_record.read(self.record_path())

    def write_record(self, record):
        iemkey_record.write(self.record_path(), record)

    def rotation_lock(self):
        """One rotation at a time on this minion (``iemkey:lock_wait`` seconds for another to end)."""
        return iemkey_record.lock(os.path.join(self.cache_dir(), "rotate.lock"), self.number("lock_wait"))

    def control(self, verb, control, ignore_retcode=False):
        """Run ``verb`` the OS's way; {"command", "retcode", "stdout", "stderr"}."""
        command = control["commands"][verb]
        if control["type"] == "service":
            try:
                ok = self.salt[f"service.{verb}"](control["service"])
            except CommandExecutionError as exc:
                return {"command": command, "retcode": 1, "stdout": "", "stderr": str(exc)}
            return {"command": command, "retcode": 0 if ok else 1, "stdout": "", "stderr": ""}
        script = control["script"]
        if not os.path.isfile(script):
            raise CommandExecutionError(f"the BigFix agent control script {script} does not exist (tried to {verb})")
        if not os.access(script, os.X_OK):
            raise CommandExecutionError(f"the BigFix agent control script {script} is not executable (tried to {verb})")
        timeout = self.number("command_timeout")
        started = time.monotonic()
        result = self.salt["cmd.run_all"](
            command, python_shell=False, timeout=timeout, ignore_retcode=ignore_retcode, output_loglevel="debug"
        )
        ret = {
            "command": describe_cmd(control, verb),
            "retcode": result.get("retcode"),
            "stdout": result.get("stdout", ""),
            "stderr": result.get("stderr", ""),
        }
        if time.monotonic() - started >= timeout and "Timed out after" in str(ret["stdout"]):
            ret["retcode"] = 1
            ret["stderr"] = f"timed out after {timeout:g} s (iemkey:command_timeout)"
        return ret

    def service(self, function, name):
        """Call Salt's ``service.<function>``. Those run systemctl (and the like) through ``cmd``, which
        sets the job's retcode: asking about the agent's service must not fail the job by itself."""
        saved = self.context.get("retcode")
        try:
            return self.salt[f"service.{function}"](name)
        finally:
            if saved is None:
                self.context.pop("retcode", None)
            else:
                self.context["retcode"] = saved

    def control_missing(self, control):
        """Why this OS's way to stop and start the agent is not there, or None."""
        if control["type"] == "script":
            if os.path.exists(control["script"]):
                return None
            return f"no control script at {control['script']} ({control['source']})"
        try:
            if self.service("available", control["service"]):
                return None
        except (CommandExecutionError, KeyError):  # no service manager Salt can ask
            pass
        if control.get("looked_for"):
            return f"no {control['looked_for']} and no {control['service']} service"
        return f"no {control['service']} service"

    def agent_running(self, control):
        """Whether the agent runs; None when there is no way to ask."""
        if self.control_missing(control):
            return None
        if control["type"] == "service":
            return bool(self.service("status", control["service"]))
        return self.control("status", control, ignore_retcode=True)["retcode"] == 0

    def installed(self, resolved):
        """Whether the agent's files are here (whatever controls it), and if not, where we looked."""
        return iemkey_platforms.installed(
            resolved["storage_path"], resolved["storage_path_source"], resolved["computer_id"], resolved["keystorage"]
        )

    def require_installed(self, resolved):
        """Refuse, before anything changes, to work on an agent that is absent or cannot be stopped and started."""
        installed, missing = self.installed(resolved)
        if not installed:
            raise CommandExecutionError(f"the BigFix agent is not installed here: {missing}; nothing was changed")
        missing = self.control_missing(resolved["control"])
        if missing:
            raise CommandExecutionError(f"cannot stop or start the BigFix agent here: {missing}; nothing was changed")

    def require_agent(self):
        return iemkey_time.boolean("iemkey:require_agent", self.conf("require_agent", False))

    def no_agent(self):
        """Where iemkey looked for an agent that is not here (nothing to rotate); None when there is one,
        or when one is required (``iemkey:require_agent``: then its absence is an error)."""
        installed, missing = self.installed(self.resolve())
        if installed or self.require_agent():
            return None
        return missing

    def status(self, probe_agent=True):
        stale_after = self.number("stale_after")  # checked whether or not it is needed now
        resolved = self.resolve()
        installed, missing = self.installed(resolved)
        keystorage = resolved["keystorage"]
        unsafe = self.unsafe_reason(resolved["storage_path"]) if installed else None
        files = [] if unsafe or not installed else iemkey_storage.key_files(keystorage)
        record = self.read_record()
        path_problem = unsafe or (self.misconfigured(resolved, record) if installed else None)
        problem = missing or path_problem or self.control_missing(resolved["control"])
        own = record if record and record.get("keystorage") == keystorage else None
        pending = bool(own and own.get("step") == "deleted" and not os.path.lexists(keystorage))
        keyless_for = None
        if own and own.get("rotated_at") and not files:
            keyless_for = time.time() - iemkey_time.parse_time(own["rotated_at"], "rotated_at").timestamp()
        return {
            "installed": installed,
            "keystorage": keystorage,
            "storage_path": resolved["storage_path"],
            "computer_id": resolved["computer_id"],
            "key_created": key_created(files),
            "key_files": len(files),
            "last_rotated": own.get("rotated_at") if own else None,
            "pending": pending,
            # keyless this long after a rotation: the agent is down or cannot register
            "stale": keyless_for is not None and keyless_for > stale_after,
            "agent_running": self.agent_running(resolved["control"]) if installed and probe_agent else None,
            "problem": problem,
            # a KeyStorage that is unsafe or cannot be the agent's: no answer about its key can be trusted
            "path_problem": path_problem,
        }

    def client_binary(self):
        return self.conf("client_binary", self.platform()["client_binary"])

    def pillar_secret(self, key):
        """A pillar value as it is, not masked: Salt 3008 masks the pillar values ``pillar.get`` hands out
        unless asked (``unmask``, an argument older Salt lines do not have)."""
        if salt.version.__saltstack_version__.info >= (3008,):
            return self.salt["pillar.get"](key, None, unmask=True)
        return self.salt["pillar.get"](key, None)

    def register_password(self):
        """The key-exchange password from pillar or an sdb:// URI; never from the command line."""
        raw = self.pillar_secret("iemkey:register_password")
        if raw in (None, ""):
            raw = self.conf("register_password")
            if raw is not None and not str(raw).startswith("sdb://"):
                raise CommandExecutionError(
                    "iemkey:register_password is set outside pillar (minion config or grains, which other "
                    "tools read): put it in pillar or behind an sdb:// URI"
                )
        if isinstance(raw, str) and raw.startswith("sdb://"):
            raw = self.salt["sdb.get"](raw)
            if raw in (None, "") or str(raw).startswith("sdb://"):
                raise CommandExecutionError("iemkey:register_password: the sdb:// URI did not resolve to a password")
        if raw in (None, ""):
            return None
        password = str(raw)
        if not password.isascii() or not password.isprintable():
            raise CommandExecutionError("iemkey:register_password must be printable ASCII (BigFix relay passwords are)")
        return password

    def register(self, relay, password):
        """Run the manual key exchange; the result without the password anywhere in it."""
        binary = self.client_binary()
        command = [binary, "-register", password, relay]
        if self.platform_name().startswith("windows"):
            command = ["cmd", "/c", *command]
        shown = " ".join(command).replace(password, "********")
        if not os.path.isfile(binary):
            raise CommandExecutionError(f"the BESClient program {binary} does not exist (tried: {shown})")
        result = self.salt["cmd.run_all"](
            command,
            python_shell=False,
            timeout=self.number("command_timeout"),
            output_loglevel="quiet",
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

    def agent_to_rotate(self, force=False):
        """This minion's agent, once every check the delete needs has passed; refuses before anything changes."""
        resolved = self.resolve()
        self.checked_keystorage(resolved, live=False)  # a refused path is refused before anything else
        self.require_installed(resolved)
        self.checked_keystorage(resolved)
        misconfigured = self.misconfigured(resolved, self.read_record())
        if misconfigured and not force:
            raise CommandExecutionError(
                f"{misconfigured}; nothing was changed (force=True rotates anyway: it restarts the agent, which "
                "makes a new key if KeyStorage really is absent)"
            )
        return resolved

    def interrupted_rotation(self, keystorage):
        """The record of a rotation of this KeyStorage that stopped after its delete, or None."""
        record = self.read_record()
        if (
            record
            and record.get("step") == "deleted"
            and record.get("keystorage") == keystorage
            and not os.path.lexists(keystorage)
        ):
            return record
        return None

    def owed_rotation_done(self, since_dt, keystorage):
        """The record of a rotation iemkey made of this KeyStorage at or after ``since_dt`` whose keys are
        no older than it (older keys were restored from a backup), or None."""
        record = self.read_record()
        if not record or record.get("step") != "done" or record.get("keystorage") != keystorage:
            return None
        try:
            rotated = iemkey_time.parse_time(record.get("rotated_at"), "rotated_at")
        except SaltInvocationError:
            return None
        if rotated < since_dt:
            return None
        files = iemkey_storage.key_files(keystorage)
        if files and min(mtime for _path, mtime in files) < rotated.timestamp() - 2:  # 2 s: coarse file times
            return None
        return record

    def alerts_dir(self):
        return os.path.join(self.cache_dir(), "alerts")

    def masterless(self):
        return self.opts.get("file_client") == "local" or self.opts.get("master_type") == "disable"

    def signed(self, tag, payload):
        """``payload`` signed with this minion's own Salt key, so the master can tell it came from here."""
        key_path = os.path.join(self.opts["pki_dir"], "minion.pem")
        try:
            with open(key_path, "rb") as handle:
                private_key = handle.read()
            return iemkey_auth.sign(tag, self.opts["id"], payload, private_key)
        except (OSError, ValueError, TypeError) as exc:
            raise CommandExecutionError(
                f"cannot sign the {tag} event with this minion's key {key_path}: {exc}"
            ) from None
