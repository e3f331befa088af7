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

import concurrent.futures
import datetime
import json
import logging
import os
import re
import time

import salt.client
import salt.utils.data
import salt.utils.minions
import salt.utils.sdb
from salt.exceptions import SaltInvocationError

try:  # _utils/, synced with saltutil.sync_all (formula install)
    import iemkey_auth
    import iemkey_bigfix
    import iemkey_cleanup
    import iemkey_react
    import iemkey_store
    import iemkey_time
except ImportError:
    try:  # pip install (Salt extension)
        from saltext.iemkey.utils import (
            iemkey_auth,
            iemkey_bigfix,
            iemkey_cleanup,
            iemkey_react,
            iemkey_store,
            iemkey_time,
        )
    except ImportError:
        iemkey_auth = None

log = logging.getLogger(__name__)

__virtualname__ = "iemkey"
# what a runner function answers with a clear error (exit 1) rather than a traceback: bad input, and a
# store that cannot be used (misconfigured, or its shared server unreachable for longer than its wait)
_ERRORS = (SaltInvocationError, iemkey_store.StoreError) if iemkey_auth is not None else (SaltInvocationError,)

UTC = datetime.timezone.utc
COMPUTER_ID = re.compile(r"[0-9]{1,20}")
INCIDENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


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
    """A non-negative number from the master config ``iemkey:<section>:<key>``."""
    try:
        return iemkey_react.number(__opts__, section, key, defaults)
    except iemkey_react.Misconfigured as exc:
        raise SaltInvocationError(str(exc)) from None


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
            store = iemkey_store.from_opts(__opts__, resolve=lambda uri: salt.utils.sdb.sdb_get(uri, __opts__))
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


MASTER_OF_MASTERS = (
    "this master is a master of masters (order_masters): its key registry holds only its syndics, so it "
    "cannot tell which minions a target matches, nor decide their clean-ups; run iemkey's runner (and "
    "reactors) on the masters that accepted the minions, the syndics' masters (README: Several masters)"
)


def _targets(tgt, tgt_type):
    if __opts__.get("order_masters"):
        raise SaltInvocationError(MASTER_OF_MASTERS)
    return sorted(salt.utils.minions.CkMinions(__opts__).check_minions(tgt, tgt_type)["minions"])


def targets(tgt="*", tgt_type="glob"):
    """
    The accepted minions a target matches, sorted: what ``iemkey.orch.rotate`` splits
    into batches (a minion that is down fails its batch, which stops the rollout). On a
    master of masters, which cannot know, an error saying where to run it (exit 1).

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
    try:
        return _report(since, tgt, tgt_type, timeout)
    except _ERRORS as exc:
        return _fail({"since": str(since), "tgt": tgt, "tgt_type": tgt_type}, str(exc))


def _report(since, tgt, tgt_type, timeout):
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
    except _ERRORS as exc:
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


def _prefetch(client, api, computer_ids):
    """Every computer one pass needs, asked at once: {id: Computer}, without those BigFix does not
    show. ``iemkey:api:lookup: query`` (default): session relevance, one request per chunk of IDs;
    ``get``: ``GET /api/computer/{id}`` each, ``iemkey:api:concurrency`` at a time (for an operator
    who may not submit queries)."""
    if not computer_ids:
        return {}
    if api["lookup"] == "query":
        return client.computers(computer_ids)
    ids = sorted(computer_ids, key=int)
    with concurrent.futures.ThreadPoolExecutor(max_workers=api["concurrency"]) as pool:
        found = dict(zip(ids, pool.map(client.computer, ids), strict=True))
    return {computer_id: computer for computer_id, computer in found.items() if computer is not None}


def _decide(computers, case, master_operator, budget, now, test, latest=None):
    """One open case, judged from what BigFix showed (``computers``): (the case as it now stands,
    what to do or was done). ``delete`` means its DELETE is still to be sent. ``latest``: the newest
    computer the rotation's new computer led to (``iemkey_cleanup.successor``)."""
    old_id = case["old_computer_id"]
    if case["status"] == "revoke":
        status, detail = iemkey_cleanup.still_to_revoke(case, computers.get(old_id), now, master_operator)
        return iemkey_cleanup.settle(case, status, detail, now, "iemkey.cleanup"), status
    new_id = latest or case.get("new_computer_id")
    new = computers.get(new_id) if new_id else None
    old = computers.get(old_id)
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
        return {**case, "detail": detail}, "delete"
    if outcome == "pending":
        outcome, detail = iemkey_cleanup.give_up(case, outcome, detail, now, _cleanup_setting("give_up_after"))
    return iemkey_cleanup.settle(case, outcome, detail, now, "iemkey.cleanup"), outcome


def _delete_all(client, api, confirmed, now):
    """Send the DELETEs of the confirmed duplicates, ``iemkey:api:concurrency`` at a time (no bulk
    delete exists): each case settled (deleted, already gone, or pending with the error)."""

    def one(item):
        key, case = item
        try:
            gone = client.delete(case["old_computer_id"]) == 404
        except iemkey_bigfix.ApiError as exc:
            return key, iemkey_cleanup.settle(case, "pending", f"DELETE failed: {exc}", now, "iemkey.cleanup"), str(exc)
        outcome = "gone" if gone else "deleted"
        detail = f"{'already gone' if gone else 'deleted'}: {case['detail']}"
        return key, iemkey_cleanup.settle(case, outcome, detail, now, "iemkey.cleanup"), None

    with concurrent.futures.ThreadPoolExecutor(max_workers=api["concurrency"]) as pool:
        return list(pool.map(one, confirmed))


def _write_case(store, key, before, after):
    return iemkey_react.write_case(store, key, before, after)


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
    compromises = iemkey_react.compromises_of(store, {c["minion"] for c in cases.values()})
    incidents = store.all("incidents")
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
        # the reactor's try of one rotation reads that case only; a full pass reads them all
        found = store.all("cases") if keys is None else {k: store.get("cases", k) for k in keys}
        cases = {k: c for k, c in found.items() if c and c.get("status") in ("pending", "revoke")}
        if not test:
            _mark_compromises(store, cases, now)
        if not cases and keys is not None:
            return ret
        try:
            api = _api()
        except SaltInvocationError as exc:
            ret["pending"] = [iemkey_cleanup.public(c) for c in cases.values() if c["status"] == "pending"]
            ret["error"] = f"{exc}: {len(cases)} clean-ups wait for it" if cases else None
            return ret  # iemkey.cleanup logs it: one ERROR line per pass
        found = _new_computer_ids([c for c in cases.values() if c["status"] == "pending"])
        budget = _Budget(_cleanup_setting("max_deletes"))
        minions = {c["minion"] for c in cases.values()}
        chains = [c for m in minions for c in store.all("cases", prefix=f"{m}:").values()]
        asked = {}  # key -> (the case as this pass asks BigFix about it, the newest computer it led to)
        for key, case in cases.items():
            fresh = found.get(case["minion"])
            if not case.get("new_computer_id") and fresh and fresh != case["old_computer_id"]:
                asked[key] = {**case, "new_computer_id": fresh}
            else:
                asked[key] = case
            asked[key] = (asked[key], iemkey_cleanup.successor(asked[key], chains))
        wanted = {c["old_computer_id"] for c, _latest in asked.values()}
        wanted |= {latest for c, latest in asked.values() if latest and c["status"] == "pending"}
        with iemkey_bigfix.session(api) as client:
            try:
                master_operator = client.master_operator() if cases else True
                computers = _prefetch(client, api, wanted)
                decided, confirmed = [], []
                for key, (case, latest) in sorted(asked.items()):
                    after, action = _decide(computers, case, master_operator, budget, now, test, latest)
                    (confirmed if action == "delete" else decided).append((key, after, action))
                for key, after, error in _delete_all(client, api, [(k, c) for k, c, _a in confirmed], now):
                    decided.append((key, after, "pending" if error else after["status"]))
                    ret["error"] = ret["error"] or error
                for key, after, action in decided:
                    if not test and not _write_case(store, key, cases[key], after):
                        continue  # an operator dismissed or removed it meanwhile
                    ret.get(action, ret["pending"]).append(iemkey_cleanup.public(after))
                    if not test:  # test=True changes nothing and says so in its return only
                        _log_outcome(action, after)
                if keys is None:  # a full pass keeps the groups; the reactor's try of one case does not
                    _sync_groups(client, store, ret, test)
            except iemkey_bigfix.ApiError as exc:
                ret["error"] = str(exc)
            ret["requests"] = client.requests
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
    except _ERRORS as exc:
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
    except _ERRORS as exc:
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
    covered = _reactions().cover(set(minions), f"iemkey.incident {name}")
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
    except _ERRORS as exc:
        return _fail({}, str(exc))
    computer = None if computer in (None, "") else str(computer)
    found = [
        {**iemkey_cleanup.public(case), "compromise": case.get("compromise"), "trail": case.get("trail") or []}
        for case in sorted(cases, key=lambda c: (c["received"], c["minion"]))
        if (minion in (None, "") or case["minion"] == minion)
        and (computer is None or computer in (case["old_computer_id"], case.get("new_computer_id")))
    ]
    return {"computers": found, "count": len(found), "retcode": 0}


# -- moving a backlog ----------------------------------------------------------------------------
def import_store(path, test=False):
    """
    Add the records of another master's local store (its ``<cachedir>/iemkey``) to this
    master's store: the pending clean-ups, compromises, incidents, revocation groups and
    replay nonces of a master stopped for good, or the local files of one master moving
    to a shared ``iemkey:store: {driver: redis}``. A record this store already has stays
    as it is (nothing is overwritten, nothing done twice). ``test=True`` counts only.

    CLI Example:

    .. code-block:: bash

        salt-run iemkey.import_store path=/mnt/old-master/var/cache/salt/master/iemkey test=True
        salt-run iemkey.import_store path=/mnt/old-master/var/cache/salt/master/iemkey
    """
    ret = {"path": str(path), "test": bool(test)}
    if not path or not os.path.isdir(str(path)):
        return _fail(ret, f"{path!r} is not a folder of an iemkey store (a master's <cachedir>/iemkey)")
    try:
        source, target = iemkey_store.LocalStore(str(path)), _store()
        if repr(source) == repr(target):
            return _fail(ret, f"{path} is this master's own store")
        ret["banks"] = iemkey_store.copy_into(source, target, test=bool(test))
    except _ERRORS as exc:
        return _fail(ret, str(exc))
    added = sum(b["added"] for b in ret["banks"].values())
    log.warning("iemkey: %s %d records from %s into %r", "would add" if test else "added", added, path, target)
    ret.update(added=added, retcode=0)
    return ret


# -- the reactors' decisions ---------------------------------------------------------------------
_PUBLISHER = {}  # master opts id -> iemkey_react.Publisher, kept for this process


def _reactions():
    publish = _PUBLISHER.setdefault(id(__opts__), iemkey_react.Publisher(__opts__))
    return iemkey_react.Reactions(
        __opts__, _store(), publish, resolve=lambda uri: salt.utils.sdb.sdb_get(uri, __opts__), now=_now
    )


def react(event_tag=None, event=None, **kwargs):  # pylint: disable=unused-argument
    """
    The reactors' decision on an iemkey event, made on the master: act on it only when it
    proves where it came from. The reactor files (``salt://iemkey/reactor/*.sls``) make
    the same decision in the reactor process; this runs it from the command line.

    - ``iemkey/compromised`` (``iemkey.alert`` on a minion): signed with that minion's
      own Salt key, not stale, not a replay: that minion, and only it, is asked to
      rotate (``state.single iemkey.rotated`` with ``since`` = signed time - cooldown),
      and the master records the compromise: that minion's rotations are compromise
      rotations, whose old computers are revoked, not deleted. Another alert for it
      within the cooldown publishes nothing new.
    - ``salt/netapi/hook/iemkey/compromised`` (salt-api): ``X-Iemkey-Signature:
      t=<unix>,sha256=<hex>`` is the HMAC-SHA256 of ``<t>.<body>`` with
      ``iemkey:reactor:hook_secret``, ``t`` is recent and the signature new: the one
      accepted minion it names rotates, as for an alert.
    - ``iemkey/rotated`` (``iemkey.rotate`` on a minion), signed likewise: the old
      computer's clean-up is recorded, for ``iemkey.cleanup`` to decide.

    Anything else acts on nothing and leaves one WARNING line in the master log.

    CLI Example:

    .. code-block:: bash

        salt-run iemkey.react event_tag=iemkey/compromised event='{"id": "web01", "data": {...}}'
    """
    try:
        return _reactions().handle(event_tag, event)
    except _ERRORS as exc:  # the store is misconfigured
        return _fail({"tag": event_tag, "action": "error"}, str(exc))
