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

from salt.exceptions import CommandExecutionError, SaltInvocationError

try:  # _utils/, synced with saltutil.sync_all (formula install)
    import iemkey_agent
    import iemkey_alerts
    import iemkey_auth
    import iemkey_platforms
    import iemkey_rotation
    import iemkey_time
    import iemkey_transport
except ImportError:
    try:  # pip install (Salt extension)
        from saltext.iemkey.utils import (
            iemkey_agent,
            iemkey_alerts,
            iemkey_auth,
            iemkey_platforms,
            iemkey_rotation,
            iemkey_time,
            iemkey_transport,
        )
    except ImportError:
        iemkey_auth = None

log = logging.getLogger(__name__)

__virtualname__ = "iemkey"

UTC = datetime.timezone.utc
NO_AGENT = "no BigFix agent here: nothing to rotate"


def __virtual__():
    if iemkey_auth is None:
        return (False, "iemkey: its utility modules (_utils/iemkey_*.py) are missing: run saltutil.sync_all")
    if iemkey_platforms.platform_name(__grains__) is None:
        return (False, f"iemkey: the BigFix agent has no known layout on kernel {__grains__.get('kernel')!r}")
    return __virtualname__


def _agent():
    """This minion's BigFix agent, read through this module's loader context (``iemkey_agent``)."""
    return iemkey_agent.Agent(__opts__, __grains__, __salt__, __context__)


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
    wait = iemkey_agent.seconds("wait", wait)
    if owed and since is None:
        raise SaltInvocationError("owed=True needs since: the time the owed rotation must follow")
    since_dt = None if since is None else _since(since)
    agent = _agent()
    with agent.rotation_lock():
        agent.checked_keystorage(agent.resolve(), live=False)  # a path refused is refused, not taken for no agent
        absent = agent.no_agent()
        if absent:
            return _nothing_to_rotate(absent, owed and not test)
        resolved = agent.agent_to_rotate(force)
        keystorage, control = resolved["keystorage"], resolved["control"]
        if owed:
            done = agent.owed_rotation_done(since_dt, keystorage)
            if done:
                return _resend_rotation(agent, done, keystorage, test)
        elif since is not None:
            verdict = check(since)
            if verdict["compliant"]:
                return {"rotated": False, "keystorage": keystorage, "comment": verdict["reason"]}
        interrupted = agent.interrupted_rotation(keystorage)
        if test:
            return iemkey_rotation.plan(resolved, interrupted)
        previous = agent.read_record()
        if interrupted:
            deleted = iemkey_rotation.resume(interrupted)
        else:
            deleted = iemkey_rotation.stop_and_delete(agent, control, keystorage, resolved["computer_id"], previous)
        iemkey_rotation.start_and_confirm(agent, control, keystorage, deleted["removed"])
        ret = {"rotated": True, "keystorage": keystorage, **deleted, "resumed": bool(interrupted)}
        if not deleted["removed"] and not interrupted:
            nothing = iemkey_rotation.nothing_removed(agent, ret, wait, previous)
            if nothing:
                return nothing
        record = {"step": "done", **deleted, "keystorage": keystorage}
        iemkey_rotation.after_the_delete(agent, ret, "recording the rotation", agent.write_record, record)
    after = iemkey_rotation.after_the_delete
    after(agent, ret, "the manual key exchange", iemkey_rotation.key_exchange, agent, ret)
    if wait > 0 and "new_computer_id" not in ret:
        after(agent, ret, "waiting for the new key", iemkey_rotation.await_new_key, agent, ret, wait)
    after(agent, ret, "sending iemkey/rotated", _send_rotated, ret)
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
    agent = _agent()
    current = agent.status(probe_agent)
    if current["path_problem"]:
        raise CommandExecutionError(f"cannot tell whether the BigFix key is rotated: {current['path_problem']}")
    ret = {"since": since_dt.isoformat(), "status": current, "basis": None, "key_time": None, "stale": False}
    required = agent.require_agent()
    ret.update(no_agent=not current["installed"], require_agent=required)
    if not current["installed"]:
        if required:
            reason = f"the BigFix agent is not installed, and iemkey:require_agent is true: {current['problem']}"
            return {**ret, "compliant": False, "reason": reason}
        return {**ret, "compliant": True, "reason": f"{NO_AGENT} ({current['problem']})"}
    if owed:
        done = agent.owed_rotation_done(since_dt, current["keystorage"])
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
            f"({agent.number('stale_after'):g} s) ago: it is down or cannot register"
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


def _resend_rotation(agent, record, keystorage, test):
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
    current = agent.resolve()["computer_id"]
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
    return _agent().status()


def paths():
    """
    Show where this minion's BigFix agent keeps its keys and how it is controlled.

    Reads only; works where no agent is installed.

    CLI Example:

    .. code-block:: bash

        salt '*' iemkey.paths
    """
    agent = _agent()
    resolved = agent.resolve()
    control = resolved["control"]
    commands = {verb: iemkey_agent.describe_cmd(control, verb) for verb in iemkey_platforms.VERBS}
    return {
        "os": agent.platform_name(),
        "storage_path": resolved["storage_path"],
        "storage_path_source": resolved["storage_path_source"],
        "keystorage": resolved["keystorage"],
        "keystorage_source": resolved["storage_path_source"],
        "config_file": (agent.config_file() if agent.platform()["settings"] == "besclient.config" else None),
        "control": {"type": control["type"], "source": control["source"], **commands},
        "client_binary": agent.client_binary(),
    }


def restart():
    """
    Restart the BigFix agent the OS's way (control script or service).

    CLI Example:

    .. code-block:: bash

        salt '*' iemkey.restart
    """
    agent = _agent()
    resolved = agent.resolve()
    agent.require_installed(resolved)
    result = agent.control("restart", resolved["control"])
    if result["retcode"] != 0:
        raise CommandExecutionError(f"restarting the BigFix agent failed: {iemkey_agent.describe(result)}")
    return {**result, "result": True, "agent_running": agent.agent_running(resolved["control"])}


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
    agent = _agent()
    relay = agent.conf("relay")
    password = agent.register_password()
    if not relay or not password:
        missing = " and ".join(
            name for name, value in (("iemkey:relay", relay), ("iemkey:register_password", password)) if not value
        )
        raise CommandExecutionError(f"the manual key exchange needs {missing}")
    ret = agent.register(relay, password)
    if not ret["registered"]:
        raise CommandExecutionError(f"the manual key exchange with {relay} failed: {iemkey_agent.describe(ret)}")
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
    kept = iemkey_alerts.keep(_agent().alerts_dir(), reason, datetime.datetime.now(UTC))
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
    agent = _agent()
    folder, now, keep = agent.alerts_dir(), datetime.datetime.now(UTC), agent.number("alert_keep")
    again, done, expired = iemkey_alerts.sort(iemkey_alerts.kept(folder), agent.read_record(), now, keep)
    for alert in done + expired:
        iemkey_alerts.drop(folder, alert)
    for alert in expired:
        log.error(
            "iemkey: the compromise alert %s raised at %s was kept for more than iemkey:alert_keep (%g s) without "
            "a rotation following it; it is no longer sent (the master lists its owed rotation: iemkey.report)",
            alert["id"],
            alert["raised_at"],
            keep,
        )
    sent = {}
    if again and not agent.masterless():
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


def _send_alert(kept):
    """Sign and send one kept alert: (the signed data, {master: True or why not})."""
    payload = {"reason": kept.get("reason"), "alert_id": kept["id"], "raised_at": kept["raised_at"]}
    agent = _agent()
    data = agent.signed("iemkey/compromised", payload)
    masters = _send_to_masters("iemkey/compromised", data)
    iemkey_alerts.sent(agent.alerts_dir(), kept, any(t is True for t in masters.values()), datetime.datetime.now(UTC))
    return data, masters


def _schedule_resend():
    """Make sure the minion's schedule sends kept alerts again: what it says."""
    name, every = iemkey_alerts.SCHEDULE, int(_agent().number("alert_resend"))
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
    return iemkey_transport.send(__opts__, tag, data, lambda: _agent().number("send_timeout"), _event_send)


def _event_send(tag, data):
    return __salt__["event.send"](tag, data)


# -- the master bus: iemkey/rotated and iemkey/compromised, signed with this minion's key --------
def _send_rotated(ret):
    event = {key: ret[key] for key in ("old_computer_id", "rotated_at", "keystorage")}
    if "new_computer_id" in ret:
        event["new_computer_id"] = ret["new_computer_id"]
    ret["event_sent"] = False  # until it is
    ret["event_sent"] = _fire("iemkey/rotated", event)
    if not ret["event_sent"] and _agent().masterless():
        old = ret["old_computer_id"]
        ret["cleanup"] = (
            f"no master heard of this rotation (masterless, or salt-ssh: no minion key, no master bus): the old "
            f"computer {old} stays in the BigFix console until an operator removes it (salt-run "
            f"iemkey.remove_computer {old}) or, after a compromise, revokes it; salt-run iemkey.ssh rotates hosts "
            "without a minion and records their clean-up"
        )


def _fire(tag, payload):
    """Send ``tag`` signed to the master; False in masterless mode, where no master listens."""
    agent = _agent()
    if agent.masterless():
        return False
    try:
        masters = _send_to_masters(tag, agent.signed(tag, payload))
    except Exception as exc:  # pylint: disable=broad-except
        # the rotation itself succeeded; losing the event must not turn it into a failure
        log.warning("iemkey: could not send %s to the master: %s", tag, exc)
        return False
    if not any(took is True for took in masters.values()):
        log.warning("iemkey: no master took %s: %s", tag, masters)
        return False
    return True
