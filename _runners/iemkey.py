"""
Master side of iemkey: fleet compliance, the reactors' decisions and the BigFix console clean-up,
revocation included.

:configuration: master config

    .. code-block:: yaml

        iemkey:
          api:
            url: https://bigfix.example:52311
            user: iemkey-operator                       # a master operator (see README)
            password: sdb://vault/bigfix/api_password   # or a plain value in master config
            verify: /etc/pki/bigfix-ca.pem              # CA bundle path, or true/false
            timeout: 30                                 # seconds per request
            retries: 3                                  # attempts on connection errors and 5xx
          reactor:
            cooldown: 300        # alerts this close to a rotation are duplicates
            hook_secret: sdb://vault/bigfix/hook_secret  # required for the webhook
            max_age: 300         # seconds a signed minion event stays valid
            max_skew: 60         # seconds a minion's clock may run ahead
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
          store:
            driver: local        # where the master keeps its state (<cachedir>/iemkey)

Sync it (and its utility modules) to the master with ``salt-run saltutil.sync_all``. The logic
lives in ``_utils/``: ``iemkey_bigfix`` (REST client, replies), ``iemkey_cleanup`` (what to do
with each old computer), ``iemkey_store`` (everything the master keeps), ``iemkey_auth``
(signatures). This module is the Salt glue.
"""

import datetime
import hashlib
import hmac
import json
import logging
import os
import re
import time

import salt.cache
import salt.client
import salt.utils.data
import salt.utils.minions
import salt.utils.sdb
import salt.utils.verify
from salt.exceptions import SaltInvocationError

try:  # _utils/, synced with saltutil.sync_all (formula install)
    import iemkey_auth
    import iemkey_bigfix
    import iemkey_cleanup
    import iemkey_store
    import iemkey_time
except ImportError:
    try:  # pip install (Salt extension)
        from saltext.iemkey.utils import iemkey_auth, iemkey_bigfix, iemkey_cleanup, iemkey_store, iemkey_time
    except ImportError:
        iemkey_auth = None

log = logging.getLogger(__name__)

__virtualname__ = "iemkey"

UTC = datetime.timezone.utc
REACTOR_DEFAULTS = {"cooldown": 300, "max_age": 300, "max_skew": 60}
COMPUTER_ID = re.compile(r"[0-9]{1,20}")
INCIDENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
COMPROMISED_TAG = "iemkey/compromised"
ROTATED_TAG = "iemkey/rotated"
HOOK_TAG = "salt/netapi/hook/iemkey/compromised"
STATE_NAME = "bigfix-agent-key"


_WARNED = set()  # the unresolved hook secrets this process has already logged


def __virtual__():
    if iemkey_auth is None:
        return (
            False,
            "iemkey runner: its utility modules (_utils/iemkey_*.py) are missing: run salt-run saltutil.sync_all",
        )
    _warn_unresolved_hook_secret()
    return __virtualname__


def _warn_unresolved_hook_secret():
    """Salt resolves sdb:// URIs in the master config when it reads it; one still there did not
    resolve. Said once per process when the master (its reactor, its scheduler) loads this runner,
    not first when a SIEM's webhook is refused."""
    secret = salt.utils.data.traverse_dict_and_list(__opts__, "iemkey:reactor:hook_secret", None)
    if isinstance(secret, str) and secret.startswith("sdb://") and secret not in _WARNED:
        _WARNED.add(secret)
        log.error(
            "iemkey: iemkey:reactor:hook_secret %s did not resolve when the master read its config: every "
            "webhook is refused until it does (iemkey tries it again for each one); check the sdb profile %r",
            secret,
            secret[len("sdb://") :].split("/", 1)[0],
        )


def _fail(ret, message):
    ret.update(result=False, error=message, retcode=1)
    __context__["retcode"] = 1
    log.error("iemkey: %s", message)
    return ret


def _setting(section, key, defaults):
    """A number from the master config ``iemkey:<section>:<key>``."""
    value = salt.utils.data.traverse_dict_and_list(__opts__, f"iemkey:{section}:{key}", None)
    value = defaults[key] if value in (None, "") else value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SaltInvocationError(f"iemkey:{section}:{key} must be a number, not {value!r}") from None
    if number < 0:
        raise SaltInvocationError(f"iemkey:{section}:{key} must not be negative, not {value!r}")
    return number


def _cleanup_setting(key):
    return _setting("cleanup", key, iemkey_cleanup.DEFAULTS)


def _compromised_mode():
    """``iemkey:cleanup:compromised``: what becomes of a compromise rotation's old computer."""
    value = salt.utils.data.traverse_dict_and_list(__opts__, "iemkey:cleanup:compromised", None) or "revoke"
    if value not in iemkey_cleanup.MODES:
        raise SaltInvocationError(f"iemkey:cleanup:compromised must be revoke or delete, not {value!r}")
    return value


def _group_settings():
    conf = salt.utils.data.traverse_dict_and_list(__opts__, "iemkey:cleanup:revoke_group", None) or {}
    conf = conf if isinstance(conf, dict) else {"enabled": bool(conf)}
    return {"enabled": conf.get("enabled", True) is not False, "site": conf.get("site") or "master", **conf}


def _now():
    return datetime.datetime.now(UTC)


def _store():
    """The master's iemkey store (``iemkey:store``; local files under the cachedir by default)."""
    store = __context__.get("iemkey.store")
    if store is None:
        try:
            store = iemkey_store.from_opts(__opts__)
        except iemkey_store.StoreError as exc:
            raise SaltInvocationError(str(exc)) from None
        _import_legacy(store)
        __context__["iemkey.store"] = store
    return store


def _import_legacy(store):
    """Clean-ups an earlier iemkey kept in ``<cachedir>/iemkey/cleanup.json`` become cases (once)."""
    path = os.path.join(__opts__["cachedir"], "iemkey", "cleanup.json")
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:
        log.error("iemkey: %s is unreadable (%s); not importing it", path, exc)
        return
    imported = 0
    for status in ("pending", "review"):
        for entry in (document.get(status) or {}).values():
            try:
                case = iemkey_cleanup.new_case(
                    entry["minion"],
                    entry["old_computer_id"],
                    entry.get("new_computer_id"),
                    entry.get("rotated_at"),
                    entry.get("received") or _now().isoformat(),
                )
            except (KeyError, TypeError, ValueError):
                continue
            case = iemkey_cleanup.settle(case, status, entry.get("detail") or "imported", _now(), "import")
            imported += store.add("cases", iemkey_cleanup.key(case["minion"], case["old_computer_id"]), case)
    os.replace(path, path + ".imported")
    log.warning("iemkey: imported %d clean-ups from %s into the iemkey store", imported, path)


def _targets(tgt, tgt_type):
    return sorted(salt.utils.minions.CkMinions(__opts__).check_minions(tgt, tgt_type)["minions"])


def targets(tgt="*", tgt_type="glob"):
    """
    The accepted minions a target matches, sorted: what ``iemkey.orch.rotate`` splits
    into batches (a minion that is down fails its batch, which stops the rollout).

    CLI Example:

    .. code-block:: bash

        salt-run iemkey.targets tgt='web*'
    """
    return _targets(tgt, tgt_type)


# -- report -----------------------------------------------------------------------------
def _gather(tgt, tgt_type, since, timeout):
    """Every answer to ``iemkey.check`` that arrives within ``timeout`` seconds in all."""
    answers = {}
    deadline = time.monotonic() + timeout
    with salt.client.get_local_client(mopts=__opts__) as client:
        for reply in client.cmd_iter_no_block(
            tgt, "iemkey.check", [str(since)], tgt_type=tgt_type, timeout=timeout, full_return=True
        ):
            if reply:
                answers.update(reply)
            if time.monotonic() >= deadline:
                break
            if not reply:
                time.sleep(0.05)
    return answers


def _open_cases():
    """The open cases by status, each list sorted by minion then old computer ID."""
    found = {status: [] for status in iemkey_cleanup.OPEN}
    for case in _store().all("cases").values():
        if case.get("status") in found:
            found[case["status"]].append(case)
    return {
        status: sorted(cases, key=lambda c: (c["minion"], int(c["old_computer_id"]))) for status, cases in found.items()
    }


def _revocation(open_cases):
    """What the operator must still revoke, by incident: the computers, the group and the steps."""
    groups = _store().all("groups")
    by_incident = {}
    for case in open_cases["revoke"]:
        incident = (case.get("compromise") or {}).get("incident") or iemkey_cleanup.ALERTS
        by_incident.setdefault(incident, []).append(case["old_computer_id"])
    revocation = {}
    for incident, computers in sorted(by_incident.items()):
        group = groups.get(incident) or {}
        name = iemkey_cleanup.group_name(incident)
        revocation[incident] = {
            "computers": computers,
            "group": {
                "name": name,
                "id": group.get("id"),
                "matches": bool(group.get("matches")) and group.get("members") == sorted(computers, key=int),
            },
            "console_steps": iemkey_cleanup.console_steps(name),
        }
    return revocation


def report(since, tgt="*", tgt_type="glob", timeout=None):
    """
    Fleet compliance: which agents have a key made at or after ``since``, which do
    not, and which minions did not answer; and the console clean-ups still open:
    pending, waiting for an operator's review, or **to revoke** (the old computers of
    compromise rotations, with the console steps). Exits non-zero when the target
    matches no minion, or any minion is noncompliant, unreachable, has no agent, or
    errs, or any computer is still to revoke (an incident is not closed while a
    stolen key is still valid).

    since
        ISO 8601 (``2026-11-20T08:00:00Z``) or epoch seconds, as for ``iemkey.rotated``.

    tgt, tgt_type
        The minions to ask (default: all accepted minions).

    timeout
        Seconds to wait for the answers, in all (default: the master's ``timeout``).
        A minion that has not answered by then is unreachable.

    CLI Example:

    .. code-block:: bash

        salt-run iemkey.report since=2026-11-20T08:00:00Z
        salt-run iemkey.report since=2026-11-20T08:00:00Z tgt='web*' --out=json
    """
    if since in (None, ""):
        return _fail({}, "report needs since, e.g. since=2026-11-20T08:00:00Z")
    try:
        timeout = float(__opts__.get("timeout", 5) if timeout is None else timeout)
    except (TypeError, ValueError):
        return _fail({}, f"timeout must be a number of seconds, not {timeout!r}")
    expected = set(_targets(tgt, tgt_type))
    if not expected:
        return _fail(
            {"since": str(since), "tgt": tgt, "tgt_type": tgt_type},
            f"the target {tgt!r} ({tgt_type}) matches no accepted minion: nothing to report on",
        )
    answers = _gather(tgt, tgt_type, since, timeout)
    ret = {
        "since": str(since),
        "compliant": [],
        "noncompliant": [],
        "not_installed": [],
        "errors": [],
        "unreachable": sorted(expected - set(answers)),
        "minions": {},
    }
    for minion, reply in sorted(answers.items()):
        verdict = reply.get("ret")
        if not isinstance(verdict, dict) or reply.get("retcode", 0) != 0:
            ret["errors"].append(minion)
            ret["minions"][minion] = {"error": str(verdict).strip()}
            continue
        status = verdict["status"]
        ret["minions"][minion] = {
            key: verdict.get(key) for key in ("compliant", "basis", "key_time", "stale", "reason")
        } | {key: status.get(key) for key in ("computer_id", "last_rotated", "agent_running", "pending")}
        if not status.get("installed"):
            ret["not_installed"].append(minion)
        elif verdict["compliant"] and not verdict["stale"]:
            ret["compliant"].append(minion)
        else:
            ret["noncompliant"].append(minion)
    for minion in ret["unreachable"]:
        ret["minions"][minion] = {"error": f"no answer within {timeout:g} s"}
    cases = _open_cases()
    ret["cleanup"] = {status: [iemkey_cleanup.public(c) for c in listed] for status, listed in cases.items()}
    ret["revocation"] = _revocation(cases)
    waiting = sum("max_deletes" in (c.get("detail") or "") for c in cases["pending"])
    failing = ret["noncompliant"] + ret["unreachable"] + ret["not_installed"] + ret["errors"] + cases["revoke"]
    ret["summary"] = (
        f"{len(ret['compliant'])} compliant, {len(ret['noncompliant'])} noncompliant, "
        f"{len(ret['unreachable'])} unreachable, {len(ret['not_installed'])} without the agent, "
        f"{len(ret['errors'])} errors (keys since {since}); console clean-ups: "
        f"{len(cases['pending'])} pending, {len(cases['review'])} for review, {len(cases['revoke'])} to revoke"
    )
    if cases["revoke"]:
        ret["summary"] += " (the stolen keys stay valid until revoked: see revocation)"
    if waiting:
        ret["summary"] += f"; {waiting} confirmed duplicates wait for the next pass (iemkey:cleanup:max_deletes)"
    ret["retcode"] = 1 if failing else 0
    __context__["retcode"] = ret["retcode"]
    return ret


# -- BigFix REST API ------------------------------------------------------------------------
def _api():
    """The ``iemkey:api`` master config, checked, with the password resolved (never logged)."""
    try:
        return iemkey_bigfix.settings(
            __opts__.get("iemkey", {}).get("api"), lambda uri: salt.utils.sdb.sdb_get(uri, __opts__)
        )
    except iemkey_bigfix.ConfigError as exc:
        raise SaltInvocationError(str(exc)) from None


def remove_computers(computer_ids, force=False):
    """
    Delete computers from the BigFix server (``DELETE /api/computer/{id}``): an
    operator's explicit clean-up. Already gone (404) counts as done. Retries
    connection errors and 5xx with backoff; 401/403 is an authentication error.
    A removed computer's open clean-up is closed (``deleted``, by the operator).
    Exits non-zero if any deletion failed.

    A computer listed **to revoke** (a compromise rotation's old computer) is
    refused: deleting it hides the record the console needs to revoke its
    certificate, and the stolen key stays valid. ``force=True`` deletes it anyway.

    CLI Example:

    .. code-block:: bash

        salt-run iemkey.remove_computers '[1234567, 7654321]'
    """
    if not isinstance(computer_ids, (list, tuple)):
        computer_ids = [computer_ids]
    ids = [str(c).strip() for c in computer_ids]
    bad = [c for c in ids if not COMPUTER_ID.fullmatch(c)]
    if bad or not ids:
        return _fail({"result": False}, f"computer IDs are numbers, not {bad or computer_ids!r}; nothing was sent")
    store = _store()
    to_revoke = sorted({c["old_computer_id"] for c in _open_cases()["revoke"]} & set(ids), key=int)
    if to_revoke and not force:
        return _fail(
            {"result": False, "to_revoke": to_revoke},
            f"computers {', '.join(to_revoke)} are listed to revoke (compromise rotations): deleting them would hide "
            "them from the console while their keys stay valid; revoke them in the console (see iemkey.report), "
            "or pass force=True; nothing was sent",
        )
    try:
        api = _api()
    except SaltInvocationError as exc:
        return _fail({"result": False}, str(exc))
    results = []
    with iemkey_bigfix.session(api) as client:
        for computer_id in ids:
            outcome = {"computer_id": computer_id, "result": False, "status": None, "detail": ""}
            try:
                outcome["status"] = client.delete(computer_id)
            except iemkey_bigfix.ApiError as exc:
                outcome.update(status=exc.status, detail=str(exc))
            else:
                outcome.update(result=True, detail="already gone" if outcome["status"] == 404 else "deleted")
            results.append(outcome)
    removed = {r["computer_id"] for r in results if r["result"]}
    now = _now()
    for key, case in store.all("cases").items():
        if case["old_computer_id"] in removed and case["status"] in iemkey_cleanup.OPEN:
            with store.update("cases", key) as stored:
                stored.update(
                    iemkey_cleanup.settle(stored, "deleted", "deleted by an operator", now, "iemkey.remove_computers")
                )
    ret = {"result": all(r["result"] for r in results), "computers": results}
    if not ret["result"]:
        failed = [f"{r['computer_id']}: {r['detail']}" for r in results if not r["result"]]
        return _fail(ret, "the BigFix server did not remove: " + "; ".join(failed))
    ret["retcode"] = 0
    return ret


def remove_computer(computer_id, force=False):
    """
    Delete one computer from the BigFix server (``DELETE /api/computer/{id}``): an
    operator's explicit delete, e.g. of a clean-up listed for review. Already gone
    (404) is success. A computer listed to revoke is refused unless ``force=True``.
    Exits non-zero on failure.

    CLI Example:

    .. code-block:: bash

        salt-run iemkey.remove_computer 1234567
    """
    return remove_computers([computer_id], force=force)


# -- console clean-up after rotations --------------------------------------------------------
def _new_computer_ids(cases):
    """Ask the minions whose new computer ID is unknown for their agent's current one."""
    minions = sorted({c["minion"] for c in cases if not c.get("new_computer_id")})
    if not minions:
        return {}
    timeout = _cleanup_setting("minion_timeout")
    found = {}
    with salt.client.get_local_client(mopts=__opts__) as client:
        replies = client.cmd(minions, "iemkey.status", tgt_type="list", timeout=timeout)
    for minion, status in (replies or {}).items():
        computer_id = str(status.get("computer_id") or "") if isinstance(status, dict) else ""
        if COMPUTER_ID.fullmatch(computer_id):
            found[minion] = computer_id
    return found


class _Budget:
    """The DELETEs one pass may still send (``iemkey:cleanup:max_deletes``)."""

    def __init__(self, limit):
        self.limit, self.left, self.deferred = int(limit), int(limit), 0

    def take(self):
        if self.left <= 0:
            self.deferred += 1
            return False
        self.left -= 1
        return True


def _decide(client, case, master_operator, budget, now, test, latest=None):
    """One open case, asked of BigFix: (the case as it now stands, what was done). ``latest``: the
    newest computer the rotation's new computer led to (``iemkey_cleanup.successor``)."""
    old_id = case["old_computer_id"]
    if case["status"] == "revoke":
        status, detail = iemkey_cleanup.still_to_revoke(case, client.computer(old_id), now, master_operator)
        return iemkey_cleanup.settle(case, status, detail, now, "iemkey.cleanup"), status
    new_id = latest or case.get("new_computer_id")
    new = client.computer(new_id) if new_id else None
    old = client.computer(old_id) if new is not None and new.name and new.last_report else None
    outcome, detail = iemkey_cleanup.verdict(
        {**case, "new_computer_id": new_id}, old, new, now, master_operator, _cleanup_setting("report_margin")
    )
    if new_id != case.get("new_computer_id"):
        detail += f" (the rotation's new computer {case['new_computer_id']} was itself rotated since)"
    if old is not None:
        case = {**case, "name": old.name}
    if outcome == "superseded":
        if iemkey_cleanup.mode(case, _compromised_mode()) == "revoke":
            incident = case["compromise"]["incident"]
            detail = (
                f"{detail}; a compromise rotation ({incident}): revoke its certificate in the console "
                f"(group '{iemkey_cleanup.group_name(incident)}'); listed until it leaves the console"
            )
            return iemkey_cleanup.settle(case, "revoke", detail, now, "iemkey.cleanup"), "listed"
        if not budget.take():
            detail = f"confirmed, waiting for the next pass: iemkey:cleanup:max_deletes ({budget.limit}) reached"
            return iemkey_cleanup.settle(case, "pending", detail, now, "iemkey.cleanup"), "waiting"
        if test:
            return iemkey_cleanup.settle(case, "deleted", f"would delete: {detail}", now, "test"), "would_delete"
        gone = client.delete(old_id) == 404
        outcome = "gone" if gone else "deleted"
        detail = f"{'already gone' if gone else 'deleted'}: {detail}"
    if outcome == "pending":
        outcome, detail = iemkey_cleanup.give_up(case, outcome, detail, now, _cleanup_setting("give_up_after"))
    return iemkey_cleanup.settle(case, outcome, detail, now, "iemkey.cleanup"), outcome


def _write_case(store, key, before, after):
    """Store a decided case, unless an operator changed it meanwhile (dismissed, removed it)."""
    with store.update("cases", key) as stored:
        if stored.get("status") != before["status"] or stored.get("detail") != before["detail"]:
            return False
        stored.clear()
        stored.update(after)
    return True


def _sync_groups(client, store, ret, test):
    """Keep one server based computer group per incident listing exactly its computers to revoke,
    and read back what BigFix counts as members (confirmed, not assumed)."""
    conf = _group_settings()
    if not conf["enabled"]:
        return
    site = conf["site"]
    wanted = {}
    for case in store.all("cases").values():
        if case.get("status") == "revoke":
            incident = (case.get("compromise") or {}).get("incident") or iemkey_cleanup.ALERTS
            wanted.setdefault(incident, set()).add(case["old_computer_id"])
    groups = store.all("groups")
    for incident in sorted(set(wanted) | set(groups)):
        members = sorted(wanted.get(incident, ()), key=int)
        group = dict(groups.get(incident) or {})
        name = iemkey_cleanup.group_name(incident)
        try:
            if not members:
                if group.get("id") and not test:
                    client.delete_group(site, group["id"])  # a group, never a computer: nothing left to revoke
                    store.delete("groups", incident)
                continue
            if members != group.get("members") or not group.get("id"):
                if test:
                    ret["groups"][incident] = {"name": name, "would_list": members}
                    continue
                property_id = conf.get("property_id") or __context__.get("iemkey.id_property")
                if not property_id:
                    property_id = __context__["iemkey.id_property"] = client.id_property()
                group_id = group.get("id") or client.group_id(site, name)
                group_id = client.save_group(site, name, members, property_id, group_id)
                group.update(id=group_id, name=name, members=members, saved=_now().isoformat())
            seen = client.group_members(site, group["id"])
        except (iemkey_bigfix.ApiError, ValueError) as exc:
            ret["error"] = ret["error"] or f"the revocation group {name!r}: {exc}"
            log.error("iemkey cleanup: the revocation group %r: %s", name, exc)
            continue
        strangers = sorted(seen - set(members), key=int)
        group.update(seen=sorted(seen, key=int), matches=seen == set(members), checked=_now().isoformat())
        if strangers:
            log.warning(
                "iemkey cleanup: BigFix counts computers %s in the group %r that iemkey did not list: "
                "do not revoke from that group until it matches (iemkey:cleanup:revoke_group:property_id?)",
                ", ".join(strangers),
                name,
            )
        if not test:
            store.put("groups", incident, group)
        ret["groups"][incident] = {k: group.get(k) for k in ("name", "id", "members", "seen", "matches")}


def _mark_compromises(store, cases, now):
    """Cases the master's own records now cover become compromise cases (sticky)."""
    compromises, incidents = store.all("compromises"), store.all("incidents")
    for key, case in list(cases.items()):
        covered = iemkey_cleanup.covering(case, compromises, incidents)
        if covered and not case.get("compromise"):
            marked = iemkey_cleanup.reopened_by(case, covered, now, "iemkey.cleanup")
            if marked and _write_case(store, key, case, marked):
                cases[key] = marked


def _cleanup_pass(keys=None, wait=True, test=False):
    """Decide every open case (or those in ``keys``), one pass at a time on this master.

    {"deleted"|"gone"|"pending"|"review"|"revoke"|"revoked": [cases decided so], "groups": {...},
    "error": why the REST API failed, "busy": True when another pass was running and ``wait`` is
    False (nothing decided), "deferred": confirmed duplicates left for the next pass}.
    """
    ret = {kind: [] for kind in ("deleted", "gone", "pending", "review", "listed", "revoke", "revoked", "would_delete")}
    ret.update(groups={}, error=None, busy=False, deferred=0)
    store = _store()
    with store.locked("cleanup-pass", blocking=wait) as mine:
        if not mine:
            return {**ret, "busy": True}
        now = _now()
        cases = {
            k: c
            for k, c in store.all("cases").items()
            if c.get("status") in ("pending", "revoke") and (keys is None or k in keys)
        }
        if not test:
            _mark_compromises(store, cases, now)
        if not cases and keys is not None:
            return ret
        try:
            api = _api()
        except SaltInvocationError as exc:
            ret["pending"] = [iemkey_cleanup.public(c) for c in cases.values() if c["status"] == "pending"]
            ret["error"] = f"{exc}: {len(cases)} clean-ups wait for it" if cases else None
            if cases:
                log.error("iemkey cleanup: %s", ret["error"])
            return ret
        found = _new_computer_ids([c for c in cases.values() if c["status"] == "pending"])
        budget = _Budget(_cleanup_setting("max_deletes"))
        minions = {c["minion"] for c in cases.values()}
        chains = [c for m in minions for c in store.all("cases", prefix=f"{m}:").values()]
        with iemkey_bigfix.session(api) as client:
            try:
                master_operator = client.master_operator() if cases else True
                for key, case in sorted(cases.items()):
                    fresh = found.get(case["minion"])
                    asked = case
                    if not case.get("new_computer_id") and fresh and fresh != case["old_computer_id"]:
                        asked = {**case, "new_computer_id": fresh}
                    latest = iemkey_cleanup.successor(asked, chains)
                    decided, action = _decide(client, asked, master_operator, budget, now, test, latest)
                    if not test and not _write_case(store, key, cases[key], decided):
                        continue  # an operator dismissed or removed it meanwhile
                    ret.get(action, ret["pending"]).append(iemkey_cleanup.public(decided))
                    _log_outcome(action, decided)
                _sync_groups(client, store, ret, test)
            except iemkey_bigfix.ApiError as exc:
                ret["error"] = str(exc)
        ret["deferred"] = budget.deferred
        if budget.deferred:
            log.warning(
                "iemkey cleanup: %d confirmed duplicates wait for the next pass: iemkey:cleanup:max_deletes is %d",
                budget.deferred,
                budget.limit,
            )
    return ret


def _log_outcome(action, case):
    where = f"computer {case['old_computer_id']} (rotation of minion {case['minion']})"
    if action == "review":
        log.warning(
            "iemkey cleanup: not deleting %s: %s; listed for review (salt-run iemkey.report)", where, case["detail"]
        )
    elif action in ("deleted", "gone"):
        log.warning("iemkey cleanup: removed %s from the BigFix console: %s", where, case["detail"])
    elif action == "listed":
        log.warning("iemkey cleanup: %s is to revoke: %s", where, case["detail"])
    elif action == "revoked":
        log.warning("iemkey cleanup: %s: %s", where, case["detail"])
    else:
        log.info("iemkey cleanup: %s stays %s: %s", where, case["status"], case["detail"])


def cleanup(dismiss=None, test=False):
    """
    Perform the console clean-ups that rotations left. For each old computer:

    - a **routine** rotation's is deleted once BigFix confirms it is the superseded
      duplicate (the new computer has reported the same Computer Name; the old one
      is a native agent record that has not reported since the master received the
      rotation, ``iemkey:cleanup:report_margin`` seconds on);
    - a **compromise** rotation's (a signed alert or webhook, or an incident, covers
      it) is confirmed the same way and then listed **to revoke**, never deleted
      (unless ``iemkey:cleanup:compromised: delete``), in one BigFix computer group
      per incident; each later run checks whether it has left the console and then
      records it revoked;
    - what BigFix does not confirm is listed for review; what cannot be decided yet
      (new computer not registered, REST API unreachable) stays pending.

    At most ``iemkey:cleanup:max_deletes`` DELETEs per run; the rest wait. Running
    it again is always safe, so a master schedule may run it. Exits non-zero when
    the REST API failed.

    dismiss
        A computer ID whose open clean-up (pending, for review, or to revoke after
        the operator dealt with it some other way) is closed without deleting anything.

    test
        Say what would be deleted, listed to revoke or confirmed revoked; change
        nothing on BigFix or on the master.

    CLI Example:

    .. code-block:: bash

        salt-run iemkey.cleanup
        salt-run iemkey.cleanup test=True
        salt-run iemkey.cleanup dismiss=1234567
    """
    try:
        store = _store()
        if dismiss not in (None, ""):
            return _dismiss(store, str(dismiss).strip())
        outcomes = _cleanup_pass(test=bool(test))
    except SaltInvocationError as exc:
        return _fail({}, str(exc))
    cases = _open_cases()
    ret = {kind: outcomes[kind] for kind in ("deleted", "gone", "revoked")}
    ret.update(
        pending=[iemkey_cleanup.public(c) for c in cases["pending"]],
        review=[iemkey_cleanup.public(c) for c in cases["review"]],
        revoke=[iemkey_cleanup.public(c) for c in cases["revoke"]],
        groups=outcomes["groups"],
        retcode=0,
    )
    if cases["revoke"]:
        ret["revocation"] = _revocation(cases)
    if test:
        ret = {
            "test": True,
            "would_delete": outcomes["would_delete"],
            "would_list_to_revoke": outcomes["listed"],
            "would_confirm_revoked": outcomes["revoked"],
            "would_review": outcomes["review"],
            "pending": outcomes["pending"],
            "groups": outcomes["groups"],
            "retcode": 0,
        }
        ret["summary"] = (
            f"test: would delete {len(ret['would_delete'])}, list {len(ret['would_list_to_revoke'])} to revoke, "
            f"confirm {len(ret['would_confirm_revoked'])} revoked, list {len(ret['would_review'])} for review; "
            "nothing was changed"
        )
    else:
        ret["summary"] = (
            f"{len(ret['deleted'])} deleted, {len(ret['gone'])} already gone, {len(ret['revoked'])} revoked, "
            f"{len(ret['pending'])} pending, {len(ret['review'])} for review, {len(ret['revoke'])} to revoke"
        )
        if outcomes["deferred"]:
            ret["summary"] += f" ({outcomes['deferred']} wait for the next pass: iemkey:cleanup:max_deletes)"
    if outcomes["busy"]:
        ret["summary"] = "another iemkey clean-up is running; nothing was decided by this one"
    if outcomes["error"]:
        ret.update(error=outcomes["error"], retcode=1)
        log.error("iemkey cleanup: %s", outcomes["error"])
    __context__["retcode"] = ret["retcode"]
    return ret


def _dismiss(store, computer_id):
    dropped = []
    now = _now()
    for key, case in store.all("cases").items():
        if case["old_computer_id"] == computer_id and case["status"] in iemkey_cleanup.OPEN:
            after = iemkey_cleanup.settle(case, "dismissed", "dismissed by an operator", now, "iemkey.cleanup dismiss")
            if _write_case(store, key, case, after):
                dropped.append(iemkey_cleanup.public(after))
                if case["status"] == "revoke":
                    log.warning(
                        "iemkey cleanup: an operator dismissed computer %s, which was to revoke: iemkey no longer "
                        "tracks whether its certificate is revoked",
                        computer_id,
                    )
    if not dropped:
        return _fail({"dismissed": []}, f"no open clean-up for computer {computer_id}")
    log.warning("iemkey cleanup: an operator dismissed the clean-up of computer %s", computer_id)
    return {"dismissed": dropped, "retcode": 0}


# -- incidents and the audit trail -----------------------------------------------------------
def _cover(store, minions, by):
    """Apply the compromise records to the cases of ``minions``: the cases they now cover."""
    compromises, incidents = store.all("compromises"), store.all("incidents")
    now, changed = _now(), []
    cases = {}
    for minion in minions:  # only these minions' cases are read
        cases.update(store.all("cases", prefix=f"{minion}:"))
    for key, case in cases.items():
        if case["minion"] not in minions:
            continue
        covered = iemkey_cleanup.covering(case, compromises, incidents)
        marked = iemkey_cleanup.reopened_by(case, covered, now, by) if covered else None
        if marked and _write_case(store, key, case, marked):
            changed.append(iemkey_cleanup.public(marked))
    return changed


def incident(since=None, tgt="*", tgt_type="glob", name=None, cleanup=None, close=False):  # pylint: disable=redefined-outer-name
    """
    Declare an incident: the rotations of the targeted minions that the master
    receives at or after ``since`` are compromise rotations. Their old computers are
    listed to revoke (never deleted), in one BigFix computer group for the incident,
    until BigFix shows they have left the console. Open clean-ups it covers become
    compromise ones; old computers iemkey already deleted as routine duplicates go
    back to review (their certificates were never revoked). Without arguments:
    the incidents on record.

    since
        When the incident began (ISO 8601 or epoch seconds); rotations the master
        received from then on are covered.

    tgt, tgt_type
        The minions concerned (accepted minions, matched now; default all).

    name
        The incident's name (letters, digits, ``.``, ``_``, ``-``; default from ``since``).

    cleanup
        ``revoke`` (the default, ``iemkey:cleanup:compromised``) or ``delete`` for this
        incident's old computers.

    close
        With ``name``: rotations received from now on are no longer covered.

    CLI Example:

    .. code-block:: bash

        salt-run iemkey.incident since=2026-11-20T08:00:00Z tgt='web*' name=worm-2026-11
        salt-run iemkey.incident name=worm-2026-11 close=True
        salt-run iemkey.incident
    """
    try:
        store = _store()
        if since in (None, "") and not close:
            return {"incidents": store.all("incidents"), "retcode": 0}
        if name not in (None, "") and not INCIDENT_NAME.fullmatch(str(name)):
            raise SaltInvocationError(f"an incident name is letters, digits, '.', '_' and '-', not {name!r}")
        if cleanup not in (None, "") and cleanup not in iemkey_cleanup.MODES:
            raise SaltInvocationError(f"cleanup must be revoke or delete, not {cleanup!r}")
        if close:
            if name in (None, ""):
                raise SaltInvocationError("close=True needs the incident's name")
            with store.update("incidents", str(name)) as record:
                if not record:
                    raise SaltInvocationError(f"no incident {name!r} on record")
                record["until"] = _now().isoformat()
            log.warning("iemkey: incident %s closed by an operator", name)
            return {"incident": store.get("incidents", str(name)), "retcode": 0}
        began = iemkey_time.parse_time(since)
    except SaltInvocationError as exc:
        return _fail({}, str(exc))
    if began > _now():
        return _fail({}, f"since {began.isoformat()} is in the future")
    minions = _targets(tgt, tgt_type)
    if not minions:
        return _fail({}, f"the target {tgt!r} ({tgt_type}) matches no accepted minion")
    name = str(name) if name not in (None, "") else f"incident-{began:%Y%m%dT%H%M%SZ}"
    record = {
        "name": name,
        "since": began.isoformat(),
        "until": None,
        "tgt": tgt,
        "tgt_type": tgt_type,
        "minions": minions,
        "declared": _now().isoformat(),
        "cleanup": cleanup or None,
    }
    store.put("incidents", name, record)
    covered = _cover(store, set(minions), f"iemkey.incident {name}")
    log.warning(
        "iemkey: incident %s declared by an operator: rotations of %d minions received since %s are compromise "
        "rotations (%s); %d clean-ups re-decided",
        name,
        len(minions),
        record["since"],
        cleanup or _compromised_mode(),
        len(covered),
    )
    return {"incident": record, "covered": covered, "retcode": 0}


def history(minion=None, computer=None):
    """
    The audit trail of the console clean-up: per old computer, the minion, the old
    and new computer IDs, and each status it went through (pending, deleted, to
    revoke, revoked, review, dismissed, gone) with when and what decided it. Kept on
    the master across restarts; ``--out=json`` exports it.

    minion
        Only this minion's rotations.

    computer
        Only the rotation whose old or new computer ID this is.

    CLI Example:

    .. code-block:: bash

        salt-run iemkey.history minion=web01
        salt-run iemkey.history computer=1234567 --out=json
    """
    try:
        cases = _store().all("cases").values()
    except SaltInvocationError as exc:
        return _fail({}, str(exc))
    computer = None if computer in (None, "") else str(computer)
    found = [
        {**iemkey_cleanup.public(case), "compromise": case.get("compromise"), "trail": case.get("trail") or []}
        for case in sorted(cases, key=lambda c: (c["received"], c["minion"]))
        if (minion in (None, "") or case["minion"] == minion)
        and (computer is None or computer in (case["old_computer_id"], case.get("new_computer_id")))
    ]
    return {"computers": found, "count": len(found), "retcode": 0}


# -- the reactors' decisions ---------------------------------------------------------------------
class _Refused(Exception):
    """The event is not acted on; its message is the one line the master log gets, at ``level``."""

    def __init__(self, message, level=logging.WARNING):
        super().__init__(message)
        self.level = level


def _accepted_key(minion_id):
    """The public key the master accepted for ``minion_id`` (PEM bytes), or None."""
    if not iemkey_auth.MINION_ID.fullmatch(minion_id) or not salt.utils.verify.valid_id(__opts__, minion_id):
        return None
    driver = __opts__.get("keys.cache_driver")
    if driver:  # Salt 3008 keeps minion keys behind a cache driver (localfs_key by default)
        try:
            found = salt.cache.Cache(__opts__, driver=driver).fetch("keys", minion_id)
        except Exception as exc:  # pylint: disable=broad-except
            log.debug("iemkey: the keys cache could not answer for %s (%s); reading pki_dir", minion_id, exc)
        else:
            accepted = isinstance(found, dict) and found.get("state") == "accepted" and found.get("pub")
            return found["pub"].encode() if accepted else None
    pki_dir = __opts__.get("cluster_pki_dir") if __opts__.get("cluster_id") else __opts__["pki_dir"]
    path = os.path.join(pki_dir, "minions", minion_id)
    if os.path.islink(path) or not os.path.isfile(path):
        return None
    with open(path, "rb") as handle:
        return handle.read()


def _received(event):
    """When the master received the event: the bus's own ``_stamp`` (the master sets it when it
    fires the event, whatever the minion sent), else now."""
    try:
        stamp = iemkey_cleanup.parse(event.get("stamp"))
    except (TypeError, ValueError):
        return _now()
    return min(stamp, _now())


def _claim_nonce(minion_id, nonce, signed_at, max_age, max_skew):
    """Remember a verified event's nonce until it is stale anyway; False when it was seen before.
    One atomic create per event (the store's ``add``), whatever the number already remembered."""
    store = _store()
    store.sweep("nonces")
    return store.add("nonces", f"{minion_id}:{nonce}", {"expires": signed_at.timestamp() + max_age + max_skew})


def _verified(tag, event, received):
    """(minion id, payload, signed time) of a minion's signed event; _Refused otherwise. Its age
    is judged at ``received``, when the master got it, not when a worker gets to it."""
    data = event.get("data")
    try:
        envelope_id = iemkey_auth.signer(data)
        max_age = _setting("reactor", "max_age", REACTOR_DEFAULTS)
        max_skew = _setting("reactor", "max_skew", REACTOR_DEFAULTS)
        minion_id, payload, signed_at, nonce = iemkey_auth.verify(
            tag, data, _accepted_key(envelope_id) if envelope_id else None, received, max_age, max_skew
        )
    except iemkey_auth.Refused as exc:
        hint = " (a detector sends it with `salt-call iemkey.alert`)" if tag == COMPROMISED_TAG else ""
        raise _Refused(f"{exc}{hint}") from None
    claimed = event.get("id")
    if claimed is not None and claimed != minion_id:
        raise _Refused(f"it is signed by {minion_id!r} but arrived as from {claimed!r}")
    if not _claim_nonce(minion_id, nonce, signed_at, max_age, max_skew):
        raise _Refused(f"it replays an event {minion_id!r} signed at {signed_at.isoformat()}, already acted on")
    return minion_id, payload, signed_at


def _hook_secret():
    secret = salt.utils.data.traverse_dict_and_list(__opts__, "iemkey:reactor:hook_secret", None)
    if secret in (None, ""):
        raise _Refused(
            "iemkey:reactor:hook_secret is not set in the master config (an sdb:// URI that "
            "resolved to nothing when the master started counts as not set); the webhook is refused "
            "until it is"
        )
    if isinstance(secret, str) and secret.startswith("sdb://"):
        uri, secret = secret, salt.utils.sdb.sdb_get(secret, __opts__)
        if secret in (None, "") or secret == uri:
            raise _Refused(f"iemkey:reactor:hook_secret {uri} did not resolve to a secret", logging.ERROR)
    return str(secret).encode()


def _hook_signature(header):
    """(t, hex) from ``X-Iemkey-Signature: t=<unix>,sha256=<hex>``; _Refused for anything else."""
    fields = dict(part.strip().partition("=")[::2] for part in header.split(",")) if isinstance(header, str) else {}
    stamp, digest = fields.get("t", ""), fields.get("sha256", "")
    if not re.fullmatch(r"[0-9]{1,12}", stamp) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise _Refused(
            "its body is not signed with iemkey:reactor:hook_secret (X-Iemkey-Signature: t=<unix time>,"
            "sha256=<HMAC-SHA256 of '<t>.<body>'>)"
        )
    return stamp, digest


def _hook_target(event, received):
    """(minion id, reason, signed time) from a salt-api webhook event whose header carries our HMAC
    over a signed time and the body, neither stale nor a replay; _Refused otherwise."""
    if event.get("from_minion"):
        raise _Refused("it was sent by a minion, not by salt-api")
    secret = _hook_secret()
    body = event.get("body")
    body = body.encode() if isinstance(body, str) else body
    if not isinstance(body, bytes):
        raise _Refused("its body is not signed with iemkey:reactor:hook_secret (X-Iemkey-Signature)")
    stamp, digest = _hook_signature(event.get("signature"))
    expected = hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(digest.encode(), expected.encode()):
        raise _Refused("its body is not signed with iemkey:reactor:hook_secret (X-Iemkey-Signature)")
    signed_at = datetime.datetime.fromtimestamp(int(stamp), UTC)
    max_age = _setting("reactor", "max_age", REACTOR_DEFAULTS)
    max_skew = _setting("reactor", "max_skew", REACTOR_DEFAULTS)
    age = (received - signed_at).total_seconds()
    if age > max_age:
        raise _Refused(f"it was signed {age:.0f} s ago, more than {max_age:g} s (iemkey:reactor:max_age)")
    if age < -max_skew:
        raise _Refused(f"it was signed {-age:.0f} s in the future (clock skew beyond {max_skew:g} s)")
    try:
        post = json.loads(body)
    except ValueError:
        post = None
    if not isinstance(post, dict):
        raise _Refused("its body is not a JSON object")
    minion_id = post.get("minion_id")
    if not isinstance(minion_id, str) or not iemkey_auth.MINION_ID.fullmatch(minion_id):
        raise _Refused(f"minion id {minion_id!r} is not exactly one minion id")
    if _accepted_key(minion_id) is None:
        raise _Refused(f"{minion_id!r} is not an accepted minion")
    store = _store()
    store.sweep("nonces")
    if not store.add("nonces", f"hook:{digest}", {"expires": signed_at.timestamp() + max_age + max_skew}):
        raise _Refused(f"it replays a webhook signed at {signed_at.isoformat()}, already acted on")
    return minion_id, post.get("reason"), signed_at


def _record_compromise(minion_id, source, reason, received):
    """The master's own record that it acted on a compromise of ``minion_id``: rotations it
    receives from ``cooldown`` seconds before until ``compromise_window`` seconds after are
    compromise rotations. Open clean-ups it covers are re-decided. (the covered cases, the record
    as it was before this alert)."""
    store = _store()
    since = received - datetime.timedelta(seconds=_setting("reactor", "cooldown", REACTOR_DEFAULTS))
    until = received + datetime.timedelta(seconds=_cleanup_setting("compromise_window"))
    with store.update("compromises", minion_id) as record:
        before = dict(record)
        if record:
            since = min(since, iemkey_cleanup.parse(record["since"]))
            until = max(until, iemkey_cleanup.parse(record["until"]))
        record.update(
            minion=minion_id,
            since=since.isoformat(),
            until=until.isoformat(),
            at=received.isoformat(),
            first=record.get("first") or received.isoformat(),
            alerts=record.get("alerts", 0) + 1,
            source=source,
            reason=str(reason)[:200] if reason else None,
            jid=None,
        )
    return _cover(store, {minion_id}, f"iemkey.react ({source})"), before


def _duplicates(minion_id, previous, received, cooldown):
    """What an alert duplicates, from the master's records: the alert it acted on for this minion,
    or the rotation it received from it, within ``cooldown`` seconds; None when there is neither."""
    window = received - datetime.timedelta(seconds=cooldown)
    if previous.get("at") and iemkey_cleanup.parse(previous["at"]) >= window:
        job = f" (job {previous['jid']})" if previous.get("jid") else ""
        return f"the {previous.get('source') or 'alert'} acted on at {previous['at']}{job}"
    rotations = [c for c in _store().all("cases", prefix=f"{minion_id}:").values() if c.get("received")]
    latest = max(rotations, key=lambda c: c["received"], default=None)
    if latest and iemkey_cleanup.parse(latest["received"]) >= window:
        return f"the rotation the master received at {latest['received']} (old computer {latest['old_computer_id']})"
    return None


def _rotate_minion(tag, minion_id, reason, since, received, source):
    covered, previous = _record_compromise(minion_id, source, reason, received)
    cooldown = _setting("reactor", "cooldown", REACTOR_DEFAULTS)
    duplicate_of = _duplicates(minion_id, previous, received, cooldown)
    since = (since - datetime.timedelta(seconds=cooldown)).isoformat()
    with salt.client.get_local_client(mopts=__opts__) as client:
        jid = client.cmd_async(
            [minion_id],
            "state.single",
            ["iemkey.rotated"],
            tgt_type="list",
            kwarg={"name": STATE_NAME, "since": since, "queue": True},
        )
    with _store().update("compromises", minion_id) as record:
        record["jid"] = jid
    if duplicate_of:
        outcome = (
            f"a duplicate of {duplicate_of}, within iemkey:reactor:cooldown ({cooldown:g} s): its state changes "
            "nothing unless the key still predates that"
        )
    else:
        outcome = f"no alert or rotation of {minion_id} within iemkey:reactor:cooldown ({cooldown:g} s): it rotates"
    log.warning(
        "iemkey reactor: %s for %s (reason: %s): %s; asking %s to ensure BigFix keys made after %s "
        "(job %s: salt-run jobs.lookup_jid %s); its rotations are compromise rotations: their old computers "
        "are to revoke, not delete",
        tag,
        minion_id,
        str(reason)[:200] if reason else "none given",
        outcome,
        minion_id,
        since,
        jid,
        jid,
    )
    return {
        "result": bool(jid),
        "action": "rotate",
        "minion": minion_id,
        "since": since,
        "jid": jid,
        "duplicate_of": duplicate_of,
        "compromise_covers": [c["old_computer_id"] for c in covered],
    }


def _record_rotation(minion_id, payload, received):
    old = str(payload.get("old_computer_id") or "")
    new = str(payload.get("new_computer_id") or "")
    if not COMPUTER_ID.fullmatch(old):
        raise _Refused(
            f"{minion_id} rotated with no usable old computer ID ({payload.get('old_computer_id')!r}): "
            "nothing to clean up"
        )
    if new and (not COMPUTER_ID.fullmatch(new) or new == old):
        raise _Refused(f"{minion_id} reports the new computer ID {new!r} for the old {old}: not cleaning up")
    try:
        rotated_at = datetime.datetime.fromisoformat(str(payload.get("rotated_at")))
    except ValueError:
        raise _Refused(f"{minion_id} sent no usable rotated_at ({payload.get('rotated_at')!r})") from None
    store = _store()
    case = iemkey_cleanup.new_case(minion_id, old, new or None, iemkey_cleanup.parse(rotated_at).isoformat(), received)
    case["compromise"] = iemkey_cleanup.covering(case, store.all("compromises"), store.all("incidents"))
    key = iemkey_cleanup.key(minion_id, old)
    return (key, case) if store.add("cases", key, case) else (None, store.get("cases", key))


def react(event_tag=None, event=None, **kwargs):  # pylint: disable=unused-argument
    """
    The reactors' decision, made on the master: act on an iemkey event only when it
    proves where it came from. ``salt://iemkey/reactor/*.sls`` hand their event here.

    - ``iemkey/compromised`` (``iemkey.alert`` on a minion): signed with that minion's
      own Salt key, not stale, not a replay: that minion, and only it, is asked to
      rotate (``state.single iemkey.rotated`` with ``since`` = signed time - cooldown),
      and the master records the compromise: that minion's rotations are compromise
      rotations, whose old computers are revoked, not deleted.
    - ``salt/netapi/hook/iemkey/compromised`` (salt-api): ``X-Iemkey-Signature:
      t=<unix>,sha256=<hex>`` is the HMAC-SHA256 of ``<t>.<body>`` with
      ``iemkey:reactor:hook_secret``, ``t`` is recent and the signature new: the one
      accepted minion it names rotates, as for an alert.
    - ``iemkey/rotated`` (``iemkey.rotate`` on a minion), signed likewise: the old
      computer's clean-up is recorded and tried (``iemkey.cleanup``).

    Anything else acts on nothing and leaves one WARNING line in the master log.

    CLI Example:

    .. code-block:: bash

        salt-run iemkey.react event_tag=iemkey/compromised event='{"id": "web01", "data": {...}}'
    """
    event = event if isinstance(event, dict) else {}
    try:
        return {"tag": event_tag, **_react(event_tag, event)}
    except _Refused as exc:
        log.log(exc.level, "iemkey reactor: refusing %s event, acting on nothing: %s", event_tag, exc)
        return {"tag": event_tag, "result": False, "action": "refused", "refused": str(exc)}
    except SaltInvocationError as exc:
        log.error("iemkey reactor: %s event not acted on: %s", event_tag, exc)
        return {"tag": event_tag, "result": False, "action": "error", "error": str(exc)}


def _react(event_tag, event):
    received = _received(event)
    if event_tag == HOOK_TAG:
        minion_id, reason, signed_at = _hook_target(event, received)
        return _rotate_minion(event_tag, minion_id, reason, signed_at, received, "webhook")
    if event_tag == COMPROMISED_TAG:
        minion_id, payload, signed_at = _verified(event_tag, event, received)
        return _rotate_minion(event_tag, minion_id, payload.get("reason"), signed_at, received, "alert")
    if event_tag == ROTATED_TAG:
        minion_id, payload, _signed_at = _verified(event_tag, event, received)
        key, case = _record_rotation(minion_id, payload, received)
        if key is None:
            return {"result": True, "action": "none", "detail": "this clean-up is already recorded"}
        kind = f"a compromise rotation ({case['compromise']['incident']})" if case["compromise"] else "routine"
        log.warning(
            "iemkey reactor: %s rotated its BigFix key (%s); the clean-up of its old computer %s is recorded "
            "and tried now",
            minion_id,
            kind,
            case["old_computer_id"],
        )
        outcomes = _cleanup_pass(keys={key}, wait=False)
        decided = next(
            (kind for kind in ("deleted", "gone", "listed", "review") if outcomes[kind]),
            "busy" if outcomes["busy"] else "pending",
        )
        return {
            "result": True,
            "action": "cleanup",
            "minion": minion_id,
            "compromise": bool(case["compromise"]),
            "outcome": decided,
            "error": outcomes["error"],
        }
    raise _Refused(f"its tag is not {COMPROMISED_TAG}, {ROTATED_TAG} or {HOOK_TAG}")
