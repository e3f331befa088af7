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

import datetime
import logging
import ntpath
import os
import posixpath
import time

import salt.version
from salt.exceptions import CommandExecutionError, SaltInvocationError

try:  # _utils/, synced with saltutil.sync_all (formula install)
    import iemkey_alerts
    import iemkey_auth
    import iemkey_platforms
    import iemkey_record
    import iemkey_storage
    import iemkey_time
    import iemkey_transport
except ImportError:
    try:  # pip install (Salt extension)
        from saltext.iemkey.utils import (
            iemkey_alerts,
            iemkey_auth,
            iemkey_platforms,
            iemkey_record,
            iemkey_storage,
            iemkey_time,
            iemkey_transport,
        )
    except ImportError:
        iemkey_auth = None

log = logging.getLogger(__name__)

__virtualname__ = "iemkey"

UTC = datetime.timezone.utc
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
NO_AGENT = "no BigFix agent here: nothing to rotate"


def __virtual__():
    if iemkey_auth is None:
        return (False, "iemkey: its utility modules (_utils/iemkey_*.py) are missing: run saltutil.sync_all")
    if iemkey_platforms.platform_name(__grains__) is None:
        return (False, f"iemkey: the BigFix agent has no known layout on kernel {__grains__.get('kernel')!r}")
    return __virtualname__


# -- public functions -----------------------------------------------------------------
def rotate(wait=0, since=None, test=False, force=False, owed=False, **kwargs):
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

    force
        Rotate although KeyStorage is absent where the agent's settings say it is
        registered, or ``iemkey:storage_path`` disagrees with the agent's own
        StoragePath (both are refused otherwise: a wrong path would rotate nothing).

    owed
        The master owes this minion a rotation after ``since`` (a compromise): only a
        rotation iemkey made at or after ``since`` (and keys no older than it) counts,
        not the key files' time; when there is one, its ``iemkey/rotated`` is sent
        again instead of rotating, so that the master can settle the owed rotation.

    A minion without a BigFix agent has nothing to rotate: that is success
    (``no_agent: True``), unless ``iemkey:require_agent`` is true.

    A rotation that removed nothing (KeyStorage was absent) is ``rotated: False``
    unless the agent then made a new key within ``wait``; a ``wait`` that ends
    without the new key and computer ID fails the job (the rotation stands).

    A rotation interrupted after the delete (crash, failed start) is finished by the
    next call without deleting anything new. One rotation runs at a time per
    minion; another caller waits up to ``iemkey:lock_wait`` seconds.

    CLI Example:

    .. code-block:: bash

        salt '*' iemkey.rotate
        salt '*' iemkey.rotate wait=60
        salt '*' iemkey.rotate test=True
    """
    test = iemkey_time.boolean("test", test) or bool(kwargs.get("__pub_test") or __opts__.get("test"))
    force, owed = iemkey_time.boolean("force", force), iemkey_time.boolean("owed", owed)
    wait = _seconds("wait", wait)
    if owed and since is None:
        raise SaltInvocationError("owed=True needs since: the time the owed rotation must follow")
    since_dt = None if since is None else _since(since)
    with _rotation_lock():
        _checked_keystorage(_resolve(), live=False)  # a path refused is refused, not taken for no agent
        absent = _no_agent()
        if absent:
            return _nothing_to_rotate(absent, owed and not test)
        resolved = _agent_to_rotate(force)
        keystorage, control = resolved["keystorage"], resolved["control"]
        if owed:
            done = _owed_rotation_done(since_dt, keystorage)
            if done:
                return _resend_rotation(done, keystorage, test)
        elif since is not None:
            verdict = check(since)
            if verdict["compliant"]:
                return {"rotated": False, "keystorage": keystorage, "comment": verdict["reason"]}
        interrupted = _interrupted_rotation(keystorage)
        if test:
            return _plan(resolved, interrupted)
        previous = _read_record()
        if interrupted:
            deleted = _resume(interrupted)
        else:
            deleted = _stop_and_delete(control, keystorage, resolved["computer_id"])
        _start_and_confirm(control, keystorage, deleted["removed"])
        ret = {"rotated": True, "keystorage": keystorage, **deleted, "resumed": bool(interrupted)}
        if not deleted["removed"] and not interrupted:
            nothing = _nothing_removed(ret, wait, previous)
            if nothing:
                return nothing
        _after_the_delete(
            ret, "recording the rotation", _write_record, {"step": "done", **deleted, "keystorage": keystorage}
        )
    _after_the_delete(ret, "the manual key exchange", _key_exchange, ret)
    if wait > 0 and "new_computer_id" not in ret:
        _after_the_delete(ret, "waiting for the new key", _await_new_key, ret, wait)
    _after_the_delete(ret, "sending iemkey/rotated", _send_rotated, ret)
    return ret


def check(since, probe_agent=True, owed=False):
    """
    Whether the agent's current key was made at or after ``since``. Changes nothing.

    since
        ISO 8601 (``2026-11-20T08:00:00Z``, any offset; no zone means UTC; a date
        alone is its midnight UTC), or epoch seconds written ``@1763625600`` (a bare
        number of 10 digits is read as epoch seconds too). A compact date
        (``20261120``), a time before 2001 or in the future is refused with an error
        saying what was read.

    A KeyStorage that is unsafe to delete or cannot be the agent's (see ``status``'s
    ``path_problem``) is an error, not an answer: no key time found there would mean
    anything.

    The time that counts (``basis``) is ``key_created`` while KeyStorage holds keys;
    while KeyStorage is absent after a rotation by iemkey (the agent makes keys
    asynchronously) it is ``last_rotated``. ``stale`` is True when that rotation is
    older than ``iemkey:stale_after`` seconds and the agent has still made no key.

    A minion without a BigFix agent answers ``no_agent: True`` and is compliant
    (nothing to rotate) unless ``iemkey:require_agent`` is true.

    probe_agent
        Ask the agent whether it runs (``status.agent_running``); the state skips it.

    owed
        Count only a rotation iemkey made at or after ``since`` (``basis``:
        ``rotation``), as for a rotation the master owes after a compromise.

    CLI Example:

    .. code-block:: bash

        salt '*' iemkey.check since=2026-11-20T08:00:00Z
    """
    since_dt = _since(since)
    probe_agent, owed = iemkey_time.boolean("probe_agent", probe_agent), iemkey_time.boolean("owed", owed)
    current = _status(probe_agent)
    if current["path_problem"]:
        raise CommandExecutionError(f"cannot tell whether the BigFix key is rotated: {current['path_problem']}")
    ret = {"since": since_dt.isoformat(), "status": current, "basis": None, "key_time": None, "stale": False}
    required = _require_agent()
    ret.update(no_agent=not current["installed"], require_agent=required)
    if not current["installed"]:
        if required:
            reason = f"the BigFix agent is not installed, and iemkey:require_agent is true: {current['problem']}"
            return {**ret, "compliant": False, "reason": reason}
        return {**ret, "compliant": True, "reason": f"{NO_AGENT} ({current['problem']})"}
    if owed:
        done = _owed_rotation_done(since_dt, current["keystorage"])
        if done:
            ret.update(basis="rotation", key_time=done["rotated_at"], compliant=True)
            ret["reason"] = f"iemkey rotated this key at {done['rotated_at']}, at or after since {ret['since']}"
        else:
            ret["compliant"] = False
            ret["reason"] = f"iemkey recorded no rotation of this key at or after since {ret['since']}"
        return ret
    if current["key_created"]:
        ret.update(basis="key_created", key_time=current["key_created"])
    elif current["last_rotated"]:
        ret.update(basis="last_rotated", key_time=current["last_rotated"], stale=current["stale"])
    else:
        return {**ret, "compliant": False, "reason": "KeyStorage holds no key and iemkey recorded no rotation"}
    ret["compliant"] = iemkey_time.parse_time(ret["key_time"]) >= since_dt
    relation = "at or after" if ret["compliant"] else "before"
    ret["reason"] = f"{ret['basis']} {ret['key_time']} is {relation} since {ret['since']}"
    if ret["stale"]:
        ret["reason"] += (
            f"; but the agent has written no key since that rotation, more than iemkey:stale_after "
            f"({_number('stale_after'):g} s) ago: it is down or cannot register"
        )
    return ret


def _since(since):
    """``since`` as an aware UTC datetime, refused when malformed, implausible or in the future."""
    since_dt = iemkey_time.parse_time(since)
    now = datetime.datetime.now(UTC)
    if since_dt > now:
        raise SaltInvocationError(
            f"since {since_dt.isoformat()} is in the future (now {now.isoformat(timespec='seconds')}): "
            "no key could ever satisfy it"
        )
    return since_dt


def _require_agent():
    return iemkey_time.boolean("iemkey:require_agent", _conf("require_agent", False))


def _no_agent():
    """Where iemkey looked for an agent that is not here (nothing to rotate); None when there is one,
    or when one is required (``iemkey:require_agent``: then its absence is an error)."""
    installed, missing = _installed(_resolve())
    if installed or _require_agent():
        return None
    return missing


def _nothing_to_rotate(missing, confirm):
    """A minion without a BigFix agent: success. ``confirm``: the master owes it a rotation, so it
    says, signed, that there is nothing to rotate here (the master closes the owed rotation)."""
    ret = {
        "rotated": False,
        "no_agent": True,
        "keystorage": None,
        "removed": [],
        "comment": f"{NO_AGENT} ({missing}; iemkey:require_agent is false)",
    }
    if confirm:
        ret["event_sent"] = _fire("iemkey/rotated", {"no_agent": True})
    return ret


def _owed_rotation_done(since_dt, keystorage):
    """The record of a rotation iemkey made of this KeyStorage at or after ``since_dt`` whose keys are
    no older than it (older keys were restored from a backup), or None."""
    record = _read_record()
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


def _resend_rotation(record, keystorage, test):
    """Send the signed ``iemkey/rotated`` of a rotation already made again (the master owes this
    minion a rotation, and this one settles it)."""
    ret = {
        "rotated": False,
        "resent": None if test else True,
        "keystorage": keystorage,
        "old_computer_id": record.get("old_computer_id"),
        "rotated_at": record.get("rotated_at"),
        "removed": [],
    }
    current = _resolve()["computer_id"]
    if current and current != ret["old_computer_id"]:
        ret["new_computer_id"] = current
    if test:
        ret["comment"] = f"iemkey rotated this key at {ret['rotated_at']}: would send its iemkey/rotated again"
        return ret
    _send_rotated(ret)
    if not ret["event_sent"]:
        raise CommandExecutionError(
            f"iemkey rotated this key at {ret['rotated_at']}, but no master took its iemkey/rotated again"
        )
    ret["comment"] = (
        f"iemkey rotated this key at {ret['rotated_at']}, at or after since: its iemkey/rotated was sent again"
    )
    return ret


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
    commands = {verb: _describe_cmd(control, verb) for verb in iemkey_platforms.VERBS}
    return {
        "os": _platform_name(),
        "storage_path": resolved["storage_path"],
        "storage_path_source": resolved["storage_path_source"],
        "keystorage": resolved["keystorage"],
        "keystorage_source": resolved["storage_path_source"],
        "config_file": (_config_file() if _platform()["settings"] == "besclient.config" else None),
        "control": {"type": control["type"], "source": control["source"], **commands},
        "client_binary": _client_binary(),
    }


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
        missing = " and ".join(
            name for name, value in (("iemkey:relay", relay), ("iemkey:register_password", password)) if not value
        )
        raise CommandExecutionError(f"the manual key exchange needs {missing}")
    ret = _register(relay, password)
    if not ret["registered"]:
        raise CommandExecutionError(f"the manual key exchange with {relay} failed: {_describe(ret)}")
    return ret


def alert(reason=None):
    """
    Report that this minion is compromised: send ``iemkey/compromised`` to the
    master, signed with this minion's own Salt key. The master then owes this
    minion, and only it, a rotation of its BigFix key, and delivers it until the
    minion's signed rotation settles it (also when the minion is away meanwhile).

    This is the detector's entry point (an IDS hook, an EDR script). The alert is
    **at-least-once**: it is written to ``<cachedir>/iemkey/alerts`` before it is
    sent, and the minion's schedule (entry ``iemkey-alert-resend``, added here,
    removed once nothing is kept) sends it again every ``iemkey:alert_resend``
    seconds (default 60), with a new signature but the same alert id and time, until
    this minion's own record shows a rotation made after it (or ``iemkey:alert_keep``
    seconds pass, default 86400). An alert lost in a master restart or fail-over is
    so sent again; the master counts it once.

    With several masters, run it as ``salt-call --local iemkey.alert``: plain
    ``salt-call`` first connects to the masters one after another and waits on one
    that is down for minutes; ``--local`` sends the alert to every master of the
    minion's ``master`` setting at once, each given ``iemkey:send_timeout`` seconds
    (default 10), and returns which masters took it (``masters``). The master
    refuses a plain ``event.send iemkey/compromised``: any minion could send that
    with another minion's id, so only a signature proves who sent it.

    reason
        Free text for the master log (at most 1000 characters are sent).

    No master took it: the alert is kept and sent again, and the call fails (exit 1).

    CLI Example:

    .. code-block:: bash

        salt-call iemkey.alert reason='IDS rule 4711: credential dump'
        salt-call --local iemkey.alert reason='IDS rule 4711'   # several masters
        salt '*' iemkey.alert reason='fleet-wide incident 2026-11'
    """
    if __opts__.get("master_type") == "disable":
        raise CommandExecutionError("iemkey.alert sends an event to the master, and this minion runs masterless")
    reason = None if reason in (None, "") else str(reason)[:1000]
    kept = iemkey_alerts.keep(_alerts_dir(), reason, datetime.datetime.now(UTC))
    data, masters = _send_alert(kept)
    resend = _schedule_resend()
    envelope = data[iemkey_auth.SIGNATURE]
    if not any(took is True for took in masters.values()):
        raise CommandExecutionError(
            "could not send iemkey/compromised to any master ("
            + "; ".join(f"{master}: {took}" for master, took in masters.items())
            + f"); the alert is kept and sent again: {resend}"
        )
    return {
        "sent": True,
        "tag": "iemkey/compromised",
        "id": envelope["id"],
        "alert_id": kept["id"],
        "signed_at": envelope["time"],
        "reason": reason,
        "masters": masters,
        "resend": resend,
    }


def resend_alerts():
    """
    Send again the compromise alerts this minion keeps (``iemkey.alert``) that no
    rotation has followed yet; forget those a rotation followed, and those kept
    longer than ``iemkey:alert_keep`` seconds (an ERROR line each). The minion's
    schedule runs it while alerts are kept, and removes its entry once none are.

    CLI Example:

    .. code-block:: bash

        salt '*' iemkey.resend_alerts
        salt-call iemkey.resend_alerts
    """
    folder, now = _alerts_dir(), datetime.datetime.now(UTC)
    again, done, expired = iemkey_alerts.sort(iemkey_alerts.kept(folder), _read_record(), now, _number("alert_keep"))
    for alert in done + expired:
        iemkey_alerts.drop(folder, alert)
    for alert in expired:
        log.error(
            "iemkey: the compromise alert %s raised at %s was kept for more than iemkey:alert_keep (%g s) without "
            "a rotation following it; it is no longer sent (the master lists its owed rotation: iemkey.report)",
            alert["id"],
            alert["raised_at"],
            _number("alert_keep"),
        )
    sent = {}
    if again and not _masterless():
        for alert in again:
            _data, masters = _send_alert(alert)
            sent[alert["id"]] = masters
    if not again:
        _unschedule_resend()
    return {
        "sent_again": sent,
        "done": [a["id"] for a in done],
        "expired": [a["id"] for a in expired],
        "kept": len(again),
    }


def _alerts_dir():
    return os.path.join(_cache_dir(), "alerts")


def _send_alert(kept):
    """Sign and send one kept alert: (the signed data, {master: True or why not})."""
    payload = {"reason": kept.get("reason"), "alert_id": kept["id"], "raised_at": kept["raised_at"]}
    data = _signed("iemkey/compromised", payload)
    masters = _send_to_masters("iemkey/compromised", data)
    iemkey_alerts.sent(_alerts_dir(), kept, any(t is True for t in masters.values()), datetime.datetime.now(UTC))
    return data, masters


def _schedule_resend():
    """Make sure the minion's schedule sends kept alerts again: what it says."""
    name, every = iemkey_alerts.SCHEDULE, int(_number("alert_resend"))
    try:
        listed = __salt__["schedule.list"](return_yaml=False, offline=True) or {}
        if name in listed:
            return f"every {every} s (schedule {name})"
        job = {"function": "iemkey.resend_alerts", "seconds": every, "run_on_start": False, "maxrunning": 1}
        added = __salt__["schedule.add"](name, persist=True, **job)
        if not added.get("result"):  # the minion daemon is not running: it reads the entry when it starts
            added = __salt__["schedule.add"](name, offline=True, **job)
    except Exception as exc:  # pylint: disable=broad-except
        log.error("iemkey: could not add the schedule %s that sends kept alerts again: %s", name, exc)
        return f"NOT scheduled ({exc}): run iemkey.resend_alerts"
    if not added.get("result"):
        log.error("iemkey: could not add the schedule %s: %s", name, added.get("comment"))
        return f"NOT scheduled ({added.get('comment')}): run iemkey.resend_alerts"
    return f"every {every} s (schedule {name})"


def _unschedule_resend():
    name = iemkey_alerts.SCHEDULE
    try:
        if name not in (__salt__["schedule.list"](return_yaml=False, offline=True) or {}):
            return
        removed = __salt__["schedule.delete"](name, persist=True)
        if not removed.get("result"):
            __salt__["schedule.delete"](name, offline=True)
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("iemkey: could not remove the schedule %s: %s", name, exc)


def _send_to_masters(tag, data):
    """Send ``tag`` to the masters (``iemkey_transport``): {master: True, or why it did not take it}."""
    return iemkey_transport.send(__opts__, tag, data, lambda: _number("send_timeout"), _event_send)


def _event_send(tag, data):
    return __salt__["event.send"](tag, data)


# -- the rotation's steps, in the order rotate takes them --------------------------
def _seconds(name, value):
    """A number of seconds within ``BOUNDS[name]``; SaltInvocationError for anything else."""
    low, high = BOUNDS[name]
    try:
        number = float(0 if value in (None, "") else value)
    except (TypeError, ValueError, OverflowError):
        raise SaltInvocationError(f"{name} must be a number of seconds, not {value!r}") from None
    if isinstance(value, bool) or not low <= number <= high:  # NaN fails both comparisons
        raise SaltInvocationError(f"{name} must be between {low:g} and {high:g} seconds, not {value!r}")
    return number


def _rotation_lock():
    """One rotation at a time on this minion (``iemkey:lock_wait`` seconds for another to end)."""
    return iemkey_record.lock(os.path.join(_cache_dir(), "rotate.lock"), _number("lock_wait"))


def _agent_to_rotate(force=False):
    """This minion's agent, once every check the delete needs has passed; refuses before anything changes."""
    resolved = _resolve()
    _checked_keystorage(resolved, live=False)  # a refused path is refused before anything else
    _require_installed(resolved)
    _checked_keystorage(resolved)
    misconfigured = _misconfigured(resolved, _read_record())
    if misconfigured and not force:
        raise CommandExecutionError(
            f"{misconfigured}; nothing was changed (force=True rotates anyway: it restarts the agent, which "
            "makes a new key if KeyStorage really is absent)"
        )
    return resolved


def _interrupted_rotation(keystorage):
    """The record of a rotation of this KeyStorage that stopped after its delete, or None."""
    record = _read_record()
    if (
        record
        and record.get("step") == "deleted"
        and record.get("keystorage") == keystorage
        and not os.path.lexists(keystorage)
    ):
        return record
    return None


def _plan(resolved, interrupted):
    """What rotate would do (test=True): the commands it would run and the files it would remove."""
    keystorage, control = resolved["keystorage"], resolved["control"]
    planned = [] if interrupted else [_describe_cmd(control, "stop"), f"delete {keystorage}"]
    return {
        "rotated": None,
        "test": True,
        "keystorage": keystorage,
        "old_computer_id": interrupted.get("old_computer_id") if interrupted else resolved["computer_id"],
        "would_remove": []
        if interrupted
        else sorted(os.path.relpath(path, keystorage) for path, _mtime in iemkey_storage.key_files(keystorage)),
        "would_run": [*planned, _describe_cmd(control, "start")],
        "comment": "finish the interrupted rotation" if interrupted else "rotate the key",
    }


def _resume(record):
    """The facts of the interrupted rotation this one finishes (nothing is deleted again)."""
    log.info("iemkey: finishing the rotation interrupted after deleting %s", record.get("keystorage"))
    return {
        "old_computer_id": record.get("old_computer_id"),
        "rotated_at": record.get("deleted_at"),
        "removed": record.get("removed"),
    }


def _stop_and_delete(control, keystorage, old_computer_id):
    """Stop the agent and delete KeyStorage, recording each step; the rotation's facts so far."""
    record = {"keystorage": keystorage, "old_computer_id": old_computer_id}
    _write_record({**record, "step": "stopping"})
    stop = _control("stop", control)
    if stop["retcode"] != 0:
        raise CommandExecutionError(f"stopping the BigFix agent failed: {_describe(stop)}; KeyStorage was not touched")
    removed, failed = iemkey_storage.delete_keystorage(keystorage) if os.path.lexists(keystorage) else ([], [])
    now = iemkey_time.now()
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
    return {"old_computer_id": old_computer_id, "rotated_at": now, "removed": removed}


def _start_and_confirm(control, keystorage, removed):
    """Start the agent again and see it run; the keys are gone by now, so a failure says how to finish."""
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


def _await_new_key(ret, wait):
    """Wait for the new key and computer ID; a wait that ends without them fails the job."""
    ret.update(_wait_for_new_key(ret["keystorage"], ret["old_computer_id"], wait))
    if ret["new_computer_id"] is None:
        made = "made a new key but registered no new computer ID" if ret["key_created"] else "made no new key"
        raise CommandExecutionError(
            f"the agent {made} within wait={wait:g} s: it may be down, or unable to register (an authenticating "
            "relay without the key exchange?); see iemkey.status"
        )


def _nothing_removed(ret, wait, previous):
    """KeyStorage was absent: the restart alone rotated nothing unless the agent now makes a new key
    within ``wait``. Without one this is ``rotated: False`` (no record, no event, the job fails), and
    the record of the last real rotation stays as it was."""
    if wait > 0:
        ret.update(_wait_for_new_key(ret["keystorage"], ret["old_computer_id"], wait))
        if ret["new_computer_id"]:
            return None  # the agent made a new key and registered: that is a rotation
        why = f"and the agent made no new key within wait={wait:g} s"
    else:
        why = "and wait=0 does not see whether the agent makes a new key (pass wait=60)"
    if previous:
        _write_record(previous)
    else:
        os.unlink(_record_path())
    __context__["retcode"] = 1
    return {
        "rotated": False,
        "keystorage": ret["keystorage"],
        "removed": [],
        "old_computer_id": ret["old_computer_id"],
        "reason": f"KeyStorage {ret['keystorage']} was absent: nothing was removed; the agent was restarted {why}",
    }


def _wait_for_new_key(keystorage, old_computer_id, wait):
    deadline = time.monotonic() + wait
    while True:
        files = iemkey_storage.key_files(keystorage)
        computer_id = _resolve()["computer_id"]
        if files and computer_id and computer_id != old_computer_id:
            return {"new_computer_id": computer_id, "key_created": _key_created(files)}
        if time.monotonic() >= deadline:
            return {"new_computer_id": None, "key_created": None}
        time.sleep(0.2)


def _send_rotated(ret):
    event = {key: ret[key] for key in ("old_computer_id", "rotated_at", "keystorage")}
    if "new_computer_id" in ret:
        event["new_computer_id"] = ret["new_computer_id"]
    ret["event_sent"] = False  # until it is
    ret["event_sent"] = _fire("iemkey/rotated", event)


# -- platform, configuration and the client's own settings -------------------------
def _platform_name():
    return iemkey_platforms.platform_name(__grains__)


def _platform():
    return iemkey_platforms.PLATFORMS[_platform_name()]


def _pathmod():
    return ntpath if _platform_name().startswith("windows") else posixpath


def _conf(key, default=None):
    value = __salt__["config.get"](f"iemkey:{key}", None)
    return default if value in (None, "") else value


def _number(key):
    """``iemkey:<key>`` from config (minion config, grains, pillar), checked like an argument."""
    try:
        return _seconds(key, _conf(key, DEFAULTS[key]))
    except SaltInvocationError as exc:
        raise SaltInvocationError(f"iemkey:{exc}") from None


def _cache_dir():
    path = os.path.join(__opts__["cachedir"], "iemkey")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _config_file():
    return _conf("config_file", iemkey_platforms.UNIX_CONFIG_FILE)


def _resolve():
    platform = _platform()
    settings = iemkey_platforms.client_settings(
        platform, _config_file(), lambda key, name: __salt__["reg.read_value"]("HKLM", key, name)
    )
    storage, storage_source = iemkey_platforms.resolve_storage(platform, settings, _conf("storage_path"))
    keystorage = _pathmod().join(_pathmod().normpath(storage), iemkey_storage.KEYSTORAGE) if storage else None
    return {
        "storage_path": storage,
        "storage_path_source": storage_source,
        "keystorage": keystorage,
        "computer_id": settings.get("ComputerID", (None, None))[0],
        # what the agent's own settings say, when iemkey:storage_path overrides them
        "own_storage_path": settings.get("StoragePath", (None, None)),
        "control": iemkey_platforms.resolve_control(platform, _conf("init_script")),
    }


def _misconfigured(resolved, record):
    """Why this KeyStorage cannot be the agent's, though the path itself is safe; None when it can be.

    - ``iemkey:storage_path`` names another folder than the agent's own StoragePath setting;
    - no KeyStorage is there, yet the agent's settings carry a ComputerID (a registered agent has
      keys), and no rotation by iemkey of this KeyStorage explains its absence."""
    own, where = resolved["own_storage_path"]
    storage = resolved["storage_path"]
    pathmod = _pathmod()
    if (
        own
        and resolved["storage_path_source"].startswith("config")
        and pathmod.normpath(own) != pathmod.normpath(storage)
    ):
        return f"iemkey:storage_path {storage} is not the agent's own StoragePath {own} ({where})"
    keystorage = resolved["keystorage"]
    rotated_here = bool(record and record.get("keystorage") == keystorage and record.get("step") in ("deleted", "done"))
    if resolved["computer_id"] and not os.path.lexists(keystorage) and not rotated_here:
        return (
            f"there is no KeyStorage at {keystorage}, but the agent's settings carry ComputerID "
            f"{resolved['computer_id']}: a registered agent has keys, so they are elsewhere "
            f"(storage path from {resolved['storage_path_source']})"
        )
    return None


# -- safety ---------------------------------------------------------------------------
def _unsafe_reason(storage_path, live=True):
    """Why deleting ``<storage_path>/KeyStorage`` is unsafe on this minion's OS, or None."""
    return iemkey_storage.unsafe_reason(storage_path, _pathmod(), live)


def _checked_keystorage(resolved, live=True):
    reason = _unsafe_reason(resolved["storage_path"], live)
    if reason:
        raise CommandExecutionError(
            f"KeyStorage is unsafe to delete: {reason} (storage path from {resolved['storage_path_source']}); "
            "nothing was changed"
        )
    return resolved["keystorage"]


def _key_created(files):
    """When the current key was made: the oldest key file (a restored backup keeps old times)."""
    return iemkey_time.iso(min(mtime for _path, mtime in files)) if files else None


# -- rotation record (crash safety) ---------------------------------------------------
def _record_path():
    return os.path.join(_cache_dir(), "rotation.json")


def _read_record():
    return iemkey_record.read(_record_path())


def _write_record(record):
    iemkey_record.write(_record_path(), record)


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


def _describe_cmd(control, verb):
    command = control["commands"][verb]
    return command if isinstance(command, str) else " ".join(command)


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
    return iemkey_platforms.installed(
        resolved["storage_path"], resolved["storage_path_source"], resolved["computer_id"], resolved["keystorage"]
    )


def _require_installed(resolved):
    """Refuse, before anything changes, to work on an agent that is absent or cannot be stopped and started."""
    installed, missing = _installed(resolved)
    if not installed:
        raise CommandExecutionError(f"the BigFix agent is not installed here: {missing}; nothing was changed")
    missing = _control_missing(resolved["control"])
    if missing:
        raise CommandExecutionError(f"cannot stop or start the BigFix agent here: {missing}; nothing was changed")


# -- status ---------------------------------------------------------------------------
def _status(probe_agent=True):
    stale_after = _number("stale_after")  # checked whether or not it is needed now
    resolved = _resolve()
    installed, missing = _installed(resolved)
    keystorage = resolved["keystorage"]
    unsafe = _unsafe_reason(resolved["storage_path"]) if installed else None
    files = [] if unsafe or not installed else iemkey_storage.key_files(keystorage)
    record = _read_record()
    path_problem = unsafe or (_misconfigured(resolved, record) if installed else None)
    problem = missing or path_problem or _control_missing(resolved["control"])
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
        "key_created": _key_created(files),
        "key_files": len(files),
        "last_rotated": own.get("rotated_at") if own else None,
        "pending": pending,
        # keyless this long after a rotation: the agent is down or cannot register
        "stale": keyless_for is not None and keyless_for > stale_after,
        "agent_running": _agent_running(resolved["control"]) if installed and probe_agent else None,
        "problem": problem,
        # a KeyStorage that is unsafe or cannot be the agent's: no answer about its key can be trusted
        "path_problem": path_problem,
    }


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
        masters = _send_to_masters(tag, _signed(tag, payload))
    except Exception as exc:  # pylint: disable=broad-except
        # the rotation itself succeeded; losing the event must not turn it into a failure
        log.warning("iemkey: could not send %s to the master: %s", tag, exc)
        return False
    if not any(took is True for took in masters.values()):
        log.warning("iemkey: no master took %s: %s", tag, masters)
        return False
    return True


# -- the manual key exchange -------------------------------------------------------
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
    if _platform_name().startswith("windows"):
        command = ["cmd", "/c", *command]
    shown = " ".join(command).replace(password, "********")
    if not os.path.isfile(binary):
        raise CommandExecutionError(f"the BESClient program {binary} does not exist (tried: {shown})")
    result = __salt__["cmd.run_all"](
        command,
        python_shell=False,
        timeout=_number("command_timeout"),
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
