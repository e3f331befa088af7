"""
Master side of iemkey: fleet compliance, owed rotations, incidents, the BigFix console clean-up and
revocation, and the audit trail.

:configuration: master config

    .. code-block:: yaml

        engines:
          - iemkey: {}                                  # decides alerts, delivers owed rotations
        iemkey:
          api:
            url: https://bigfix.example:52311
            user: iemkey-operator                       # a master operator (see README)
            password: sdb://vault/bigfix/api_password   # or a plain value in master config
            verify: /etc/pki/bigfix-ca.pem              # CA bundle path, or true/false
            timeout: 30                                 # seconds per request
            retries: 3                                  # attempts on connection errors and 5xx
          reactor:
            cooldown: 300        # rotations received this long before an alert are compromise ones
            hook_secret: sdb://vault/bigfix/hook_secret  # required for the webhook
            max_age: 300         # seconds a signed minion event stays valid
            max_skew: 60         # seconds a minion's clock may run ahead
            rate: 10             # signed events one minion may make the master decide per minute
          delivery: {}           # the engine's batches, probes and retries (see the engine)
          cleanup:
            compromised: revoke  # a compromise rotation's old computer: revoke (default) or delete
            compromise_window: 86400  # seconds after an alert during which rotations are compromise ones
            report_margin: 900   # seconds before an old computer's silence since the rotation counts
            max_deletes: 100     # DELETEs per pass; the rest wait for the next pass
            give_up_after: 86400 # seconds a clean-up may wait for the new computer
            minion_timeout: 10   # seconds to wait for a minion's new computer ID
            revoke_group:
              enabled: true      # keep a server based computer group of the computers to revoke
              site: master       # the master action site
              property_id: null  # the reserved ID property's id; looked up when unset
          coverage:
            active_days: 30      # agents outside Salt: computers that reported within this many days
            outside_salt: incident  # they fail the report: incident (while one is open), fail, warn, off
          store:
            driver: local        # where the master keeps its state (<cachedir>/iemkey)

Sync it (and its utility modules) to the master with ``salt-run saltutil.sync_all``. The logic
lives in ``_utils/``: ``iemkey_owed`` (owed rotations), ``iemkey_incidents``, ``iemkey_console``
(the clean-up pass and an operator's removals), ``iemkey_cleanup`` (what to do with each old computer),
``iemkey_report`` (what the report says), ``iemkey_bigfix`` (REST client), ``iemkey_store``. This
module is the Salt glue.
"""

import datetime
import getpass
import logging
import os
import re

import salt.client
import salt.utils.data
import salt.utils.minions
import salt.utils.sdb
from salt.exceptions import SaltInvocationError

try:  # _utils/, synced with saltutil.sync_all (formula install)
    import iemkey_bigfix
    import iemkey_cleanup
    import iemkey_config
    import iemkey_console
    import iemkey_coverage
    import iemkey_delivery
    import iemkey_engine
    import iemkey_errors
    import iemkey_incidents
    import iemkey_react
    import iemkey_report
    import iemkey_ssh
    import iemkey_store
    import iemkey_time
except ImportError:
    try:  # pip install (Salt extension)
        from saltext.iemkey.utils import (
            iemkey_bigfix,
            iemkey_cleanup,
            iemkey_config,
            iemkey_console,
            iemkey_coverage,
            iemkey_delivery,
            iemkey_engine,
            iemkey_errors,
            iemkey_incidents,
            iemkey_react,
            iemkey_report,
            iemkey_ssh,
            iemkey_store,
            iemkey_time,
        )
    except ImportError:
        iemkey_store = None

log = logging.getLogger(__name__)

__virtualname__ = "iemkey"
# what a runner function answers with a clear error (exit 1) rather than a traceback: bad input, and
# every error iemkey raises on purpose (a malformed setting, a store or BigFix that cannot be used, a
# refused act: iemkey_errors.IemkeyError)
_ERRORS = (SaltInvocationError, iemkey_errors.IemkeyError) if iemkey_store is not None else (SaltInvocationError,)

UTC = datetime.timezone.utc
COMPUTER_ID = re.compile(r"[0-9]{1,20}")
INCIDENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_UNSET = object()
_WARNED = set()  # the unresolved hook secrets this process has already logged


def __virtual__():
    if iemkey_store is None:
        return (
            False,
            "iemkey runner: its utility modules (_utils/iemkey_*.py) are missing: run salt-run saltutil.sync_all",
        )
    # said once per process when the master (its engine, its scheduler) loads this runner, not first
    # when a SIEM's webhook is refused
    iemkey_config.warn_unresolved_hook_secret(__opts__, _WARNED)
    return __virtualname__


def _fail(ret, message):
    ret.update(result=False, error=message, retcode=1)
    __context__["retcode"] = 1
    log.error("iemkey: %s", message)
    return ret


def _ok(ret):
    ret["retcode"] = __context__["retcode"] = 0
    return ret


def _now():
    return datetime.datetime.now(UTC)


def _who(kwargs):
    """Who runs this: the salt-api or eauth user Salt names, else the local user (sudo's caller)."""
    user = kwargs.get("__pub_user") or os.environ.get("SUDO_USER") or getpass.getuser()
    return str(user)[:100]


def _resolve(uri):
    return salt.utils.sdb.sdb_get(uri, __opts__)


def _store():
    """The master's iemkey store (``iemkey:store``; local files under the cachedir by default)."""
    store = __context__.get("iemkey.store")
    if store is None:
        store = iemkey_store.from_opts(__opts__, resolve=_resolve)
        iemkey_console.import_legacy(store, os.path.join(__opts__["cachedir"], "iemkey", "cleanup.json"), _now())
        __context__["iemkey.store"] = store
    return store


def _reactions():
    return iemkey_react.Reactions(__opts__, _store(), resolve=_resolve, now=_now)


def _targets(tgt, tgt_type):
    if __opts__.get("order_masters"):
        raise SaltInvocationError(iemkey_config.MASTER_OF_MASTERS)
    return sorted(salt.utils.minions.CkMinions(__opts__).check_minions(tgt, tgt_type)["minions"])


def targets(tgt="*", tgt_type="glob"):
    """
    The accepted minions a target matches, sorted: what ``iemkey.orch.rotate`` splits
    into batches. On a master of masters, which cannot know, an error saying where to
    run it (exit 1).

    CLI Example:

    .. code-block:: bash

        salt-run iemkey.targets tgt='web*'
    """
    try:
        return _targets(tgt, tgt_type)
    except SaltInvocationError as exc:  # a master of masters: not a list, an error (exit 1)
        return _fail({"tgt": tgt, "tgt_type": tgt_type}, str(exc))


# -- report -----------------------------------------------------------------------------
def _gather(tgt, tgt_type, since, timeout):
    with salt.client.get_local_client(mopts=__opts__) as client:
        return iemkey_report.gather(client, tgt, tgt_type, since, timeout)


def _revocation():
    return iemkey_report.revocation(_store(), iemkey_console.compromised_mode(__opts__))


def _owed_of(minions=None):
    return iemkey_report.owed_of(_store(), minions)


def report(since=None, tgt="*", tgt_type="glob", timeout=None, outside=None, ssh=False, ssh_tgt="*", **kwargs):
    """
    Fleet compliance, a gate for pipelines: which agents have a key made at or after
    ``since``, which do not, which minions have no agent or did not answer; the
    rotations still **owed** after a compromise (and how their delivery stands); and
    the console clean-ups still open or ended without a revocation. Exits non-zero
    when ``since`` is missing or malformed, the target matches no minion, or any
    minion is noncompliant, unreachable or errs, any rotation is owed, or any stolen
    key is not known revoked (to revoke, left the console unconfirmed, for review, or
    closed without revocation and not accepted). Minions without a BigFix agent are
    listed apart (``no_agent``) and fail it only where ``iemkey:require_agent`` is true.

    since
        ISO 8601 (``2026-11-20T08:00:00Z``) or epoch seconds as ``@1763625600``; read
        once, before the fleet is asked, and shown as the ISO 8601 time it used.

    tgt, tgt_type
        The minions to ask (default: all accepted minions).

    timeout
        Seconds to wait for the answers, in all (default: the master's ``timeout``).
        A minion that has not answered by then is unreachable.

    outside
        List the BigFix computers no minion covers (``outside_salt``: agents outside
        Salt, ``iemkey_coverage``). Default: when ``iemkey:api`` is configured and the
        target is the whole fleet; ``False`` never, ``True`` always. Whether they fail
        the report is ``iemkey:coverage:outside_salt`` (default: while an incident is
        open or a rotation owed); so does a BigFix that cannot be asked, then.

    ssh
        ``True``: also the hosts without a minion in the salt-ssh roster (``ssh_tgt``,
        default all), each asked over salt-ssh, with its pillar, whether its key was
        made at or after ``since`` (the ``iemkey.rotated`` state with ``test=True``:
        nothing changes). Listed under ``ssh``; a host not rotated, failing or not
        reached fails the report. Other keywords are salt-ssh options (``roster_file``,
        ``ignore_host_keys``, ...), as for ``iemkey.ssh``.

    CLI Example:

    .. code-block:: bash

        salt-run iemkey.report since=2026-11-20T08:00:00Z
        salt-run iemkey.report since=2026-11-20T08:00:00Z tgt='web*' --out=json
        salt-run iemkey.report since=2026-11-20T08:00:00Z ssh=True ssh_tgt='dmz-*'
    """
    try:
        outside = None if outside in (None, "") else iemkey_time.boolean("outside", outside)
        ssh = {"tgt": ssh_tgt, "options": kwargs} if iemkey_time.boolean("ssh", ssh) else None
        return _report(since, tgt, tgt_type, timeout, outside, ssh)
    except _ERRORS as exc:
        return _fail({"since": str(since), "tgt": tgt, "tgt_type": tgt_type}, str(exc))


def _report(since, tgt, tgt_type, timeout, outside, ssh=None):
    if since in (None, ""):
        raise SaltInvocationError("report needs since, e.g. since=2026-11-20T08:00:00Z")
    since = iemkey_time.parse_time(since).isoformat()  # once, before the fleet is asked
    if iemkey_time.parse_time(since) > _now():
        raise SaltInvocationError(f"since {since} is in the future: no key could ever satisfy it")
    try:
        timeout = float(__opts__.get("timeout", 5) if timeout is None else timeout)
    except (TypeError, ValueError):
        raise SaltInvocationError(f"timeout must be a number of seconds, not {timeout!r}") from None
    expected = set(_targets(tgt, tgt_type))
    if not expected and not ssh:
        raise SaltInvocationError(f"the target {tgt!r} ({tgt_type}) matches no accepted minion: nothing to report on")
    hosts = _over_ssh(ssh["tgt"], "glob", iemkey_ssh.call(since, 0, True), ssh["options"]) if ssh else None
    answers = _gather(tgt, tgt_type, since, timeout) if expected else {}
    ret, required = iemkey_report.tally(since, answers, expected, timeout)
    if hosts is not None:
        ret["ssh"] = {**iemkey_ssh.tally(hosts), "hosts": hosts}
    ret["owed"] = _owed_of(None if tgt == "*" and tgt_type == "glob" else expected)
    cases = iemkey_report.open_cases(_store())
    ret["cleanup"] = {status: [iemkey_cleanup.public(c) for c in listed] for status, listed in cases.items()}
    ret["revocation"] = _revocation()
    outside_failing = _outside_salt(ret, tgt == "*" and tgt_type == "glob", outside, hosts)
    ret = iemkey_report.verdict(ret, cases, required, outside_failing)
    __context__["retcode"] = ret["retcode"]
    return ret


def _outside_salt(ret, whole_fleet, asked, hosts=None):
    """The report's ``outside_salt`` (``iemkey_coverage``), when asked for; whether it fails the report."""
    try:
        conf = iemkey_coverage.settings(iemkey_config.section(__opts__, "coverage"))
    except ValueError as exc:
        raise iemkey_config.Misconfigured(str(exc)) from None
    if not iemkey_coverage.wanted(conf["outside_salt"], asked, whole_fleet, iemkey_config.section(__opts__, "api")):
        return False
    store = _store()
    try:
        with iemkey_bigfix.session(_api_settings()) as client:
            cases, operator = store.all("cases").values(), client.master_operator()
            covered = {**iemkey_ssh.as_minions(hosts or {}), **ret["minions"]}  # salt-ssh hosts cover theirs
            found = iemkey_coverage.survey(client, conf, covered, cases, operator)
    except (iemkey_bigfix.ApiError, iemkey_bigfix.ConfigError) as exc:
        found = {"error": f"BigFix could not be asked for the computers outside Salt: {exc}"}
    incidents = iemkey_coverage.open_incidents(store.all("incidents"), ret["owed"])
    # salt-run (whose parser sets selected_output_option) shows the first few in its text output;
    # --out=json and salt-api (whose opts have neither) all of them
    text = "selected_output_option" in __opts__ and __opts__.get("output") in (None, "nested", "txt")
    ret["outside_salt"] = iemkey_coverage.shown(found, conf["list"]) if text else found
    return iemkey_coverage.failing(found, conf["outside_salt"], incidents)


# -- hosts without a minion: salt-ssh --------------------------------------------------------
def ssh(tgt, since=None, wait=60, tgt_type="glob", incident=None, test=False, **kwargs):
    """
    Rotate the BigFix agent of hosts that have no minion, over salt-ssh, and record
    each rotation's console clean-up on the master, decided then like a minion's
    (``iemkey.cleanup``: routine, deleted once BigFix confirms the duplicate; under an
    incident, listed to revoke). It runs the ``iemkey.rotated`` state on each host
    (``state.single``): the host's pillar goes with it, as ``state.apply`` sends it,
    with the same lock, crash-safe record and KeyStorage-only delete as on a minion.
    Exits non-zero when any host failed, could not be reached or its clean-up could
    not be recorded.

    No ``iemkey/rotated`` event can come from such a host (it has no minion key and
    no master bus): the master records what the host's return, which came back on
    the SSH connection the master itself opened, says. What it says about its
    computer IDs counts no more than a minion's event: the clean-up acts only on what
    BigFix confirms.

    tgt, tgt_type
        The roster hosts (salt-ssh targeting: ``glob``, ``list``, ``pcre``, ...).

    since
        Rotate a key made before this time (ISO 8601 or ``@<epoch seconds>``); running
        it again with the same ``since`` rotates nothing twice. Default: the incident's
        ``since``, else now (every host rotates).

    wait
        Seconds each host waits for its agent's new key and computer ID (default 60):
        the clean-up then knows the new computer at once.

    incident
        An open incident (``iemkey.incident``) these hosts belong to: their rotations
        are compromise rotations, their old computers listed to revoke.

    test
        Say which hosts would rotate; change nothing anywhere.

    Any other keyword is a salt-ssh option (``roster``, ``roster_file``, ``ssh_priv``,
    ``ignore_host_keys``, ``ssh_max_procs``: how many hosts at once, default 25, ...).

    CLI Example:

    .. code-block:: bash

        salt-run iemkey.ssh tgt='dmz-*' test=True
        salt-run iemkey.ssh tgt='dmz-*' since=2026-11-20T08:00:00Z incident=worm-2026-11
    """
    ret = {"tgt": tgt, "tgt_type": tgt_type}
    try:
        test = iemkey_time.boolean("test", test)
        wait = _wait(wait)
        store, now = _store(), _now()
        if incident not in (None, ""):
            since = since if since not in (None, "") else iemkey_incidents.open_incident(store, str(incident))["since"]
        ret["since"] = (iemkey_time.parse_time(since) if since not in (None, "") else now).isoformat()
        if iemkey_time.parse_time(ret["since"]) > now:
            raise SaltInvocationError(f"since {ret['since']} is in the future: no key could ever satisfy it")
        found = _over_ssh(tgt, tgt_type, iemkey_ssh.call(ret["since"], wait, test), kwargs)
        if incident not in (None, "") and not test:
            iemkey_incidents.add_hosts(store, str(incident), found, now, f"iemkey.ssh ({_who(kwargs)})")
    except _ERRORS as exc:
        return _fail(ret, str(exc))
    ret.update(iemkey_ssh.tally(found))
    if not test:
        reactions = _reactions()
        for host, outcome in sorted(found.items()):
            if outcome["outcome"] == "rotated":
                outcome["cleanup"] = _record_ssh_rotation(reactions, host, outcome)
    ret["hosts"] = found
    ret["retcode"] = iemkey_ssh.retcode(found)
    __context__["retcode"] = ret["retcode"]
    return ret


def _wait(wait):
    try:
        wait = int(wait)
    except (TypeError, ValueError):
        raise SaltInvocationError(f"wait must be whole seconds, not {wait!r}") from None
    if not 0 <= wait <= 3600:
        raise SaltInvocationError(f"wait must be 0-3600 seconds, not {wait}")
    return wait


def _over_ssh(tgt, tgt_type, call, options):
    """{host: outcome} of ``call`` run over salt-ssh on the roster hosts ``tgt`` matches."""
    import salt.client.ssh.client  # pylint: disable=import-outside-toplevel
    import salt.version  # pylint: disable=import-outside-toplevel

    running = salt.version.__saltstack_version__
    refused = iemkey_ssh.unsupported(running.info, running.string)
    if refused:
        raise SaltInvocationError(refused)
    options = {k: v for k, v in options.items() if not k.startswith("__")}
    client = salt.client.ssh.client.SSHClient(mopts=dict(__opts__))
    fun, arg, kwarg = call
    found = {}
    for part in client.cmd_iter(tgt, fun, arg=arg, tgt_type=tgt_type, kwarg=kwarg, **options):
        for host, data in part.items():
            found[host] = iemkey_ssh.outcome(host, data)
    if not found:
        raise SaltInvocationError(f"the target {tgt!r} ({tgt_type}) matches no host in the salt-ssh roster")
    return found


def _record_ssh_rotation(reactions, host, outcome):
    try:
        decided = reactions.rotated(host, iemkey_ssh.payload(outcome), _now())
    except _ERRORS as exc:
        outcome["result"] = False
        return f"not recorded: {exc}"
    return "recorded" if decided["action"] == "recorded" else decided.get("detail", decided["action"])


# -- BigFix REST API ------------------------------------------------------------------------
def _api_settings():
    """The ``iemkey:api`` master config, checked, with the password resolved (never logged)."""
    return iemkey_bigfix.settings(iemkey_config.section(__opts__, "api"), _resolve)


def _api():
    try:
        return _api_settings()
    except iemkey_bigfix.ConfigError as exc:
        raise SaltInvocationError(str(exc)) from None


def remove_computers(computer_ids, force=False):
    """
    Delete computers from the BigFix server (``DELETE /api/computer/{id}``): an
    operator's explicit clean-up. ``deleted`` only on BigFix's own success reply
    (``ok``); ``not found`` for a 404 when the API user is a master operator (nothing
    was deleted: already removed, or a mistyped ID); for another operator a 404 is an
    error (a computer outside its scope answers 404 too). Any other answer is an error
    with its reason. A removed computer's open clean-up is closed. Exits non-zero if
    any deletion failed.

    A computer listed **to revoke** (a compromise rotation's old computer) is
    refused: deleting it hides the record the console needs to revoke its
    certificate, and the stolen key stays valid. ``force=True`` deletes it anyway;
    the report then stays red until an operator accepts it unrevoked.

    CLI Example:

    .. code-block:: bash

        salt-run iemkey.remove_computers '[1234567, 7654321]'
    """
    try:
        force = iemkey_time.boolean("force", force)
        return _remove(computer_ids, force)
    except _ERRORS as exc:
        return _fail({"result": False}, str(exc))


def _remove(computer_ids, force):
    try:
        ids = iemkey_console.computer_ids(computer_ids)
    except ValueError as exc:
        raise SaltInvocationError(str(exc)) from None
    store = _store()
    to_revoke = sorted({c["old_computer_id"] for c in iemkey_report.open_cases(_store())["revoke"]} & set(ids), key=int)
    if to_revoke and not force:
        return _fail(
            {"result": False, "to_revoke": to_revoke},
            f"computers {', '.join(to_revoke)} are listed to revoke (compromise rotations): deleting them would hide "
            "them from the console while their keys stay valid; revoke them in the console (see iemkey.report), "
            "or pass force=True; nothing was sent",
        )
    with iemkey_bigfix.session(_api()) as client:
        try:
            results = iemkey_console.remove(client, ids, store, _now())
        except iemkey_bigfix.ApiError as exc:
            return _fail({"result": False}, f"{exc}; nothing was sent")
    ret = {"result": all(r["result"] for r in results), "computers": results}
    if not ret["result"]:
        failed = [f"{r['computer_id']}: {r['detail']}" for r in results if not r["result"]]
        return _fail(ret, "the BigFix server did not remove: " + "; ".join(failed))
    return _ok(ret)


def remove_computer(computer_id, force=False):
    """
    Delete one computer from the BigFix server (``DELETE /api/computer/{id}``): an
    operator's explicit delete, e.g. of a clean-up listed for review. ``deleted`` on
    BigFix's ``ok``; ``not found`` for a master operator's 404 (success: nothing was
    there). A computer listed to revoke is refused unless ``force=True``. Exits
    non-zero on failure.

    CLI Example:

    .. code-block:: bash

        salt-run iemkey.remove_computer 1234567
    """
    return remove_computers([computer_id], force=force)


# -- console clean-up after rotations --------------------------------------------------------
def _statuses(minions, timeout):
    with salt.client.get_local_client(mopts=__opts__) as client:
        return client.cmd(minions, "iemkey.status", tgt_type="list", timeout=timeout)


def _cleanup_pass(test=False):
    cache = __context__.setdefault("iemkey.console", {})
    return iemkey_console.Pass(__opts__, _store(), _api_settings, _statuses, cache, _now).run(test=test)


def cleanup(dismiss=_UNSET, test=False):
    """
    Perform the console clean-ups that rotations left. For each old computer:

    - a **routine** rotation's is deleted once BigFix confirms it is the superseded
      duplicate (the new computer has reported the same Computer Name; the old one
      is a native agent record that has not reported since the rotation,
      ``iemkey:cleanup:report_margin`` seconds on);
    - a **compromise** rotation's (a signed alert or webhook, or an incident, covers
      it) is confirmed the same way and then listed **to revoke**, never deleted
      (unless ``iemkey:cleanup:compromised: delete``), in one BigFix computer group
      per incident; once it has left the console it is ``left_console`` until an
      operator confirms the revocation (``iemkey.incident revoked=True``);
    - what BigFix does not confirm is listed for review; what cannot be decided yet
      (new computer not registered, REST API unreachable) stays pending.

    At most ``iemkey:cleanup:max_deletes`` DELETEs per run; the rest wait. Running
    it again is always safe, so a master schedule may run it. Exits non-zero when
    the REST API failed.

    dismiss
        A computer ID whose open clean-up is closed without deleting anything (a
        compromise one then counts as not revoked until an operator accepts it).
        An empty or malformed value is refused.

    test
        Say what would be deleted, listed to revoke or found gone; change nothing on
        BigFix or on the master.

    CLI Example:

    .. code-block:: bash

        salt-run iemkey.cleanup
        salt-run iemkey.cleanup test=True
        salt-run iemkey.cleanup dismiss=1234567
    """
    try:
        test = iemkey_time.boolean("test", test)
        if dismiss is not _UNSET:
            computer_id = str(dismiss).strip() if dismiss is not None else ""
            if not COMPUTER_ID.fullmatch(computer_id):
                raise SaltInvocationError(f"dismiss takes a computer ID (digits), not {dismiss!r}; nothing was done")
            return _dismiss(_store(), computer_id)
        outcomes = _cleanup_pass(test=test)
        cases = iemkey_report.open_cases(_store())
    except _ERRORS as exc:
        return _fail({}, str(exc))
    ret = iemkey_report.cleanup_outcome(outcomes, cases, test)
    if not test and (cases["revoke"] or cases["left_console"]):
        ret["revocation"] = _revocation()
    if outcomes["error"]:
        log.error("iemkey cleanup: %s", outcomes["error"])
        ret.update(error=outcomes["error"], retcode=1)
        __context__["retcode"] = 1
        return ret
    return _ok(ret)


def _dismiss(store, computer_id):
    dropped = iemkey_console.dismiss(store, computer_id, _now(), iemkey_incidents.incident_of)
    if not dropped:
        return _fail({"dismissed": []}, f"no open clean-up for computer {computer_id}")
    return _ok({"dismissed": dropped})


# -- incidents, owed rotations and the audit trail --------------------------------------------
def incident(
    since=None,
    tgt="*",
    tgt_type="glob",
    name=None,
    cleanup=None,  # pylint: disable=redefined-outer-name
    close=False,
    deliver=True,
    withdraw=False,
    revoked=False,
    accept_unrevoked=False,
    reason=None,
    **kwargs,
):
    """
    Declare an incident: the rotations of the targeted minions that the master
    receives at or after ``since`` are compromise rotations (their old computers are
    listed to revoke, never deleted, in one BigFix computer group for the incident),
    and each targeted minion is **owed** a rotation made after ``since``: the iemkey
    engine delivers it (a minion that already rotated since is settled at once), and
    the report stays red until each is settled. Old computers iemkey already deleted
    as routine duplicates go back to review (their certificates were never revoked).
    Without arguments: the incidents on record.

    since
        When the incident began (ISO 8601, or ``@<epoch seconds>``).

    tgt, tgt_type
        The minions concerned (accepted minions, matched now; default all).

    name
        The incident's name (letters, digits, ``.``, ``_``, ``-``; default from ``since``).

    cleanup
        ``revoke`` (the default, ``iemkey:cleanup:compromised``) or ``delete`` for this
        incident's old computers.

    deliver
        ``False``: record the owed rotations, but let the operator's own rollout
        (highstate, ``iemkey.orch.rotate``) rotate them (``held``).

    With ``name`` and one of:

    close
        Rotations received from now on are no longer covered. Refused while anything of
        the incident is not known revoked, unless an operator accepted it unrevoked.

    withdraw
        The declaration was a mistake (``reason=`` says why): it covers nothing any more,
        its open clean-ups are decided again, its owed rotations are no longer owed.

    revoked
        Confirm that the computers of this incident that left the console were revoked
        (BigFix cannot tell a revoked computer from a deleted one): lists them.

    accept_unrevoked
        Record (with ``reason=``) that the compromise clean-ups of this incident that
        ended without a revocation are accepted so; the report stops failing on them.

    The incident ``alerts`` holds the compromises no declared incident covers.

    CLI Example:

    .. code-block:: bash

        salt-run iemkey.incident since=2026-11-20T08:00:00Z tgt='web*' name=worm-2026-11
        salt-run iemkey.incident name=worm-2026-11 revoked=True
        salt-run iemkey.incident name=worm-2026-11 accept_unrevoked=True reason='host decommissioned'
        salt-run iemkey.incident name=worm-2026-11 withdraw=True reason='wrong target'
        salt-run iemkey.incident name=worm-2026-11 close=True
        salt-run iemkey.incident
    """
    try:
        flags = {
            key: iemkey_time.boolean(key, value)
            for key, value in (
                ("close", close),
                ("deliver", deliver),
                ("withdraw", withdraw),
                ("revoked", revoked),
                ("accept_unrevoked", accept_unrevoked),
            )
        }
        acts = [key for key in ("close", "withdraw", "revoked", "accept_unrevoked") if flags[key]]
        if len(acts) > 1:
            raise SaltInvocationError(f"one of close, withdraw, revoked or accept_unrevoked at a time, not {acts}")
        if name not in (None, "") and not INCIDENT_NAME.fullmatch(str(name)):
            raise SaltInvocationError(f"an incident name is letters, digits, '.', '_' and '-', not {name!r}")
        if acts:
            if name in (None, ""):
                raise SaltInvocationError(f"{acts[0]}=True needs the incident's name")
            return _incident_act(acts[0], str(name), reason, _who(kwargs))
        if since in (None, ""):
            return _ok({"incidents": _store().all("incidents")})
        return _declare(since, tgt, tgt_type, name, cleanup, flags["deliver"], _who(kwargs))
    except _ERRORS as exc:
        return _fail({}, str(exc))


def _declare(since, tgt, tgt_type, name, cleanup_mode, deliver, who):
    began = iemkey_time.parse_time(since)
    record = iemkey_incidents.new(began, tgt, tgt_type, name, cleanup_mode, _targets, _now(), who)
    minions = record["minions"]
    store = _store()
    mode = iemkey_console.compromised_mode(__opts__)
    covered, decided = iemkey_incidents.declare(store, _reactions(), record, deliver, _now(), who, mode)
    if decided["owed"] and not iemkey_engine.configured(__opts__):
        _publish_owed(store, decided["owed"])  # no engine here to deliver them
    ret = {"incident": record, "covered": covered, "owed": _owed_of(set(minions)), "settled": decided["settled"]}
    return _ok(ret)


def _publish_owed(store, minions):
    """Publish the rotation jobs of owed rotations here (a master without the engine)."""
    engine = iemkey_engine.Engine(__opts__, store, iemkey_delivery.Publisher(__opts__), lambda d: None, _resolve)
    batch = {m: (store.get("owed", m)["since"], False, []) for m in minions if store.get("owed", m)}
    engine.publish(batch)


def _incident_act(act, name, reason, who):
    store, now = _store(), _now()
    mode = iemkey_console.compromised_mode(__opts__)
    if act == "revoked":
        return _ok({"incident": name, "confirmed_revoked": iemkey_incidents.confirm_revoked(store, name, now, who)})
    if act == "accept_unrevoked":
        accepted = iemkey_incidents.accept_unrevoked(store, name, reason, mode, now, who)
        return _ok({"incident": name, "accepted_unrevoked": accepted, "reason": reason})
    if act == "withdraw":
        if not reason:
            raise SaltInvocationError("withdraw=True needs reason='...': the trail says why")
        return _ok({"incident": name, "withdrawn": iemkey_incidents.withdraw(store, name, reason, now, who)})
    record, unsafe = iemkey_incidents.close(store, name, mode, now, who)
    if unsafe:
        listed = ", ".join(f"{c['old_computer_id']} ({c['status']})" for c in unsafe)
        return _fail(
            {"incident": record, "unrevoked": [iemkey_cleanup.public(c) for c in unsafe]},
            f"incident {name} is not closed: computers {listed} are not known revoked; revoke and confirm them "
            f"(revoked=True), or record accept_unrevoked=True reason='...'; nothing was changed",
        )
    return _ok({"incident": record})


def owed(minion=None, retry=False, cancel=False, reason=None, **kwargs):
    """
    The rotations the master owes minions after a compromise, until each minion's
    signed rotation settles it: ``pending`` (about to be published), ``delivered``
    (job id and when), ``away`` (not connected since when: asked again when it comes
    back), ``failed`` (the job's error; retried with backoff), ``review`` (after
    ``iemkey:delivery:max_attempts`` failed jobs), ``held`` (an incident declared with
    ``deliver=False``). Exits non-zero while any is owed.

    minion
        Only this minion's; with ``retry`` or ``cancel``, the one acted on.

    retry
        Deliver it again now (a ``review`` one starts counting attempts again).

    cancel
        An operator closes it without a rotation (``reason=`` says why: a minion
        decommissioned, its agent reinstalled by hand); recorded in ``iemkey.history``.

    CLI Example:

    .. code-block:: bash

        salt-run iemkey.owed
        salt-run iemkey.owed minion=web01 retry=True
        salt-run iemkey.owed minion=web01 cancel=True reason='decommissioned'
    """
    try:
        retry, cancel = iemkey_time.boolean("retry", retry), iemkey_time.boolean("cancel", cancel)
        if (retry or cancel) and minion in (None, ""):
            raise SaltInvocationError("retry=True or cancel=True needs minion=<id>")
        if retry and cancel:
            raise SaltInvocationError("retry=True or cancel=True, not both")
        store, now, who = _store(), _now(), _who(kwargs)
        if retry:
            iemkey_incidents.retry_owed(store, str(minion), now, who)
            if not iemkey_engine.configured(__opts__):
                _publish_owed(store, [str(minion)])
        elif cancel:
            if not reason:
                raise SaltInvocationError("cancel=True needs reason='...': the trail says why")
            iemkey_incidents.cancel_owed(store, str(minion), str(reason)[:500], now, who)
        found = _owed_of({str(minion)} if minion not in (None, "") else None)
    except _ERRORS as exc:
        return _fail({}, str(exc))
    ret = {"owed": found, "count": len(found)}
    ret["retcode"] = 1 if found else 0
    __context__["retcode"] = ret["retcode"]
    return ret


def history(minion=None, computer=None):
    """
    The audit trail: per old computer, the minion, the old and new computer IDs, and
    each status its clean-up went through (pending, deleted, to revoke, left the
    console, revoked, review, dismissed, gone) with when and what or who decided it;
    and per minion, each rotation owed after a compromise, how it was delivered and
    what settled it (``rotations``). Kept in the store across restarts, the same on
    every master sharing it; ``--out=json`` exports it.

    minion
        Only this minion's.

    computer
        Only the rotation whose old or new computer ID this is.

    CLI Example:

    .. code-block:: bash

        salt-run iemkey.history minion=web01
        salt-run iemkey.history computer=1234567 --out=json
    """
    try:
        return _ok(iemkey_report.history(_store(), minion, computer))
    except _ERRORS as exc:
        return _fail({}, str(exc))


# -- moving a backlog ----------------------------------------------------------------------------
def import_store(path, test=False):
    """
    Add the records of another master's local store (its ``<cachedir>/iemkey``) to this
    master's store: the pending clean-ups, owed rotations, compromises, incidents,
    revocation groups and replay nonces of a master stopped for good, or the local files
    of one master moving to a shared ``iemkey:store: {driver: redis}``. A record this
    store already has stays as it is (nothing is overwritten, nothing done twice).
    ``test=True`` counts only.

    CLI Example:

    .. code-block:: bash

        salt-run iemkey.import_store path=/mnt/old-master/var/cache/salt/master/iemkey test=True
        salt-run iemkey.import_store path=/mnt/old-master/var/cache/salt/master/iemkey
    """
    ret = {"path": str(path), "test": test}
    try:
        test = ret["test"] = iemkey_time.boolean("test", test)
        if not path or not os.path.isdir(str(path)):
            raise SaltInvocationError(f"{path!r} is not a folder of an iemkey store (a master's <cachedir>/iemkey)")
        source, target = iemkey_store.LocalStore(str(path)), _store()
        if repr(source) == repr(target):
            raise SaltInvocationError(f"{path} is this master's own store")
        ret["banks"] = iemkey_store.copy_into(source, target, test=test)
    except _ERRORS as exc:
        return _fail(ret, str(exc))
    added = sum(b["added"] for b in ret["banks"].values())
    log.warning("iemkey: %s %d records from %s into %r", "would add" if test else "added", added, path, target)
    ret["added"] = added
    return _ok(ret)


# -- the decisions, from the command line --------------------------------------------------------
def react(event_tag=None, event=None, **kwargs):  # pylint: disable=unused-argument
    """
    The master's decision on one iemkey event, as the iemkey engine makes it for each
    event on the bus: act on it only when it proves where it came from. A refused
    event exits non-zero.

    - ``iemkey/compromised`` (``iemkey.alert`` on a minion): signed with that minion's
      own Salt key, not stale, not a replay: the master records the compromise (that
      minion's rotations are then compromise rotations, revoked, not deleted) and
      owes that minion, and only it, a rotation, published now.
    - ``salt/netapi/hook/iemkey/compromised`` (salt-api): ``X-Iemkey-Signature:
      t=<unix>,sha256=<hex>`` is the HMAC-SHA256 of ``<t>.<body>`` with
      ``iemkey:reactor:hook_secret``, ``t`` is recent and the signature new: the one
      accepted minion it names is owed a rotation, as for an alert.
    - ``iemkey/rotated`` (``iemkey.rotate`` on a minion), signed likewise: the old
      computer's clean-up is recorded, for ``iemkey.cleanup`` to decide, and the
      minion's owed rotation is settled if the rotation came after its compromise.

    CLI Example:

    .. code-block:: bash

        salt-run iemkey.react event_tag=iemkey/compromised event='{"id": "web01", "data": {...}}'
    """
    try:
        store = _store()
        engine = iemkey_engine.Engine(__opts__, store, iemkey_delivery.Publisher(__opts__), lambda d: None, _resolve)
        event = event if isinstance(event, dict) else {}
        decided = engine.reactions.handle(event_tag, event, verified=None)
        if decided.get("deliver"):
            published = engine.publish({decided["minion"]: (decided["since"], False, [])})
            decided["jid"] = published.get(decided["minion"])
    except _ERRORS as exc:
        return _fail({"tag": event_tag, "action": "error"}, str(exc))
    if decided.get("action") in ("refused", "error"):
        return _fail(decided, decided.get("refused") or decided.get("error"))
    decided.pop("deliver", None)
    return _ok(decided)
