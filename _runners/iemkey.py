"""
Master side of iemkey: fleet compliance, the reactors' decisions and the BigFix console clean-up.

:configuration: master config

    .. code-block:: yaml

        iemkey:
          api:
            url: https://bigfix.example:52311
            user: iemkey-operator
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
            give_up_after: 86400 # seconds a clean-up may wait for the new computer
            minion_timeout: 10   # seconds to wait for a minion's new computer ID

Sync it (and its utility module) to the master with ``salt-run saltutil.sync_all``.
"""

import contextlib
import datetime
import email.utils
import hashlib
import hmac
import json
import logging
import os
import re
import time
import xml.etree.ElementTree as ET

import salt.cache
import salt.client
import salt.utils.data
import salt.utils.minions
import salt.utils.sdb
import salt.utils.verify
from salt.exceptions import SaltInvocationError

try:
    import fcntl
except ImportError:  # a Salt master runs on POSIX; this keeps the import harmless elsewhere
    fcntl = None
try:  # _utils/, synced with saltutil.sync_all (formula install)
    import iemkey_auth
    import iemkey_record
except ImportError:
    try:  # pip install (Salt extension)
        from saltext.iemkey.utils import iemkey_auth, iemkey_record
    except ImportError:
        iemkey_auth = None

log = logging.getLogger(__name__)

__virtualname__ = "iemkey"

UTC = datetime.timezone.utc
API_DEFAULTS = {"verify": True, "timeout": 30, "retries": 3}
REACTOR_DEFAULTS = {"cooldown": 300, "max_age": 300, "max_skew": 60}
CLEANUP_DEFAULTS = {"give_up_after": 86400, "minion_timeout": 10}
COMPUTER_ID = re.compile(r"[0-9]{1,20}")
COMPROMISED_TAG = "iemkey/compromised"
ROTATED_TAG = "iemkey/rotated"
HOOK_TAG = "salt/netapi/hook/iemkey/compromised"
STATE_NAME = "bigfix-agent-key"


def __virtual__():
    if iemkey_auth is None:
        return (
            False,
            "iemkey runner: its utility modules (_utils/iemkey_*.py) are missing: run salt-run saltutil.sync_all",
        )
    return __virtualname__


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
        return float(value)
    except (TypeError, ValueError):
        raise SaltInvocationError(f"iemkey:{section}:{key} must be a number of seconds, not {value!r}") from None


def _now():
    return datetime.datetime.now(UTC)


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


# -- state kept on the master (survives restarts) ---------------------------------------------
def _state_dir():
    path = os.path.join(__opts__["cachedir"], "iemkey")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


@contextlib.contextmanager
def _flock(name, blocking=True):
    """An exclusive lock on ``<cachedir>/iemkey/<name>.lock``; yields False when not blocking and busy."""
    with open(os.path.join(_state_dir(), f"{name}.lock"), "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def _stored(name):
    """The JSON document ``<cachedir>/iemkey/<name>.json``, locked, written back atomically."""
    path = os.path.join(_state_dir(), f"{name}.json")
    with _flock(name):
        try:
            with open(path, encoding="utf-8") as handle:
                document = json.load(handle)
        except FileNotFoundError:
            document = {}
        except (OSError, ValueError) as exc:
            log.error("iemkey: %s is unreadable (%s); starting it afresh", path, exc)
            document = {}
        before = json.dumps(document, sort_keys=True)
        yield document
        if json.dumps(document, sort_keys=True) != before:
            iemkey_record.write(path, document, indent=1)


def _cleanups():
    with _stored("cleanup") as document:
        return {kind: dict(document.get(kind) or {}) for kind in ("pending", "review")}


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


def report(since, tgt="*", tgt_type="glob", timeout=None):
    """
    Fleet compliance: which agents have a key made at or after ``since``, which do
    not, and which minions did not answer; and the console clean-ups still pending
    or waiting for an operator's review. Exits non-zero when the target matches no
    minion, or any minion is noncompliant, unreachable, has no agent, or errs.

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
    cleanups = _cleanups()
    ret["cleanup"] = {
        kind: sorted(entries.values(), key=lambda e: (e["minion"], e["old_computer_id"]))
        for kind, entries in cleanups.items()
    }
    failing = ret["noncompliant"] + ret["unreachable"] + ret["not_installed"] + ret["errors"]
    ret["summary"] = (
        f"{len(ret['compliant'])} compliant, {len(ret['noncompliant'])} noncompliant, "
        f"{len(ret['unreachable'])} unreachable, {len(ret['not_installed'])} without the agent, "
        f"{len(ret['errors'])} errors (keys since {since}); console clean-ups: "
        f"{len(cleanups['pending'])} pending, {len(cleanups['review'])} for review"
    )
    ret["retcode"] = 1 if failing else 0
    __context__["retcode"] = ret["retcode"]
    return ret


# -- BigFix REST API ------------------------------------------------------------------------
class _ApiError(Exception):
    """The BigFix server could not be asked (down, refused our credentials, answered nonsense)."""


def _api():
    """The ``iemkey:api`` master config, with the password resolved (never logged)."""
    conf = __opts__.get("iemkey", {}).get("api") or {}
    missing = [key for key in ("url", "user", "password") if not conf.get(key)]
    if missing:
        raise SaltInvocationError(
            "the BigFix REST API is not configured: set iemkey:api:"
            + ", iemkey:api:".join(missing)
            + " in the master config"
        )
    api = {**API_DEFAULTS, **conf}
    password = api["password"]
    if isinstance(password, str) and password.startswith("sdb://"):
        password = salt.utils.sdb.sdb_get(password, __opts__)
        if not password or str(password).startswith("sdb://"):
            raise SaltInvocationError("iemkey:api:password: the sdb:// URI did not resolve")
    api["password"] = str(password)
    api["url"] = str(api["url"]).rstrip("/")
    return api


@contextlib.contextmanager
def _session(api):
    """A requests session with Basic auth, retrying connection errors and 5xx with backoff (urllib3)."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retries = max(1, int(api["retries"])) - 1
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        other=0,
        status_forcelist=(500, 502, 503, 504),
        allowed_methods=frozenset({"GET", "DELETE"}),
        backoff_factor=0.5,
        backoff_max=8,
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    with requests.Session() as session:
        session.auth = (api["user"], api["password"])
        session.verify = api["verify"]
        session.mount(api["url"] + "/", HTTPAdapter(max_retries=retry))
        yield session


def _call(api, session, method, path):
    """One REST call (retried by the session); the response, or _ApiError saying what failed."""
    import requests

    url = f"{api['url']}{path}"
    try:
        response = session.request(method, url, timeout=float(api["timeout"]))
    except requests.RequestException as exc:
        reason = getattr(exc.args[0], "reason", None) if exc.args else None
        kind = type(reason).__name__ if isinstance(reason, Exception) else type(exc).__name__
        raise _ApiError(f"{kind} talking to {api['url']} ({method} {path})") from None
    if response.status_code in (401, 403):
        raise _ApiError(
            f"authentication failed: the BigFix server refused user {api['user']!r} (HTTP {response.status_code})"
        )
    return response


def _computer(api, session, computer_id):
    """``GET /api/computer/{id}``: {"id", "name", "last_report"}; None when BigFix has no such computer."""
    response = _call(api, session, "GET", f"/api/computer/{computer_id}")
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise _ApiError(f"HTTP {response.status_code} from GET /api/computer/{computer_id}")
    try:
        root = ET.fromstring(response.content)  # noqa: S314 - our own authenticated BigFix server
    except ET.ParseError as exc:
        raise _ApiError(f"GET /api/computer/{computer_id} answered no BESAPI XML: {exc}") from None
    properties = {p.get("Name"): (p.text or "").strip() for p in root.iter("Property")}
    try:
        last_report = email.utils.parsedate_to_datetime(properties.get("Last Report Time", ""))
    except (TypeError, ValueError):
        last_report = None
    if last_report is not None and last_report.tzinfo is None:
        last_report = last_report.replace(tzinfo=UTC)
    return {"id": str(computer_id), "name": properties.get("Computer Name"), "last_report": last_report}


def _delete(api, session, computer_id):
    """``DELETE /api/computer/{id}``; {"computer_id", "result", "status", "detail"}."""
    outcome = {"computer_id": computer_id, "result": False, "status": None, "detail": ""}
    try:
        response = _call(api, session, "DELETE", f"/api/computer/{computer_id}")
    except _ApiError as exc:
        return {**outcome, "detail": str(exc)}
    outcome["status"] = response.status_code
    if response.status_code in (200, 202, 204):
        return {**outcome, "result": True, "detail": "deleted"}
    if response.status_code == 404:
        return {**outcome, "result": True, "detail": "already gone"}
    return {**outcome, "detail": f"HTTP {response.status_code} from DELETE /api/computer/{computer_id}"}


def remove_computers(computer_ids):
    """
    Delete computers from the BigFix server (``DELETE /api/computer/{id}``): an
    operator's explicit clean-up. Already gone (404) counts as done. Retries
    connection errors and 5xx with backoff; 401/403 is an authentication error.
    A removed computer leaves the clean-ups pending or for review. Exits non-zero
    if any deletion failed.

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
    try:
        api = _api()
    except SaltInvocationError as exc:
        return _fail({"result": False}, str(exc))
    with _session(api) as session:
        results = [_delete(api, session, computer_id) for computer_id in ids]
    removed = {r["computer_id"] for r in results if r["result"]}
    with _stored("cleanup") as document:
        for kind in ("pending", "review"):
            entries = document.get(kind) or {}
            for key in [k for k, e in entries.items() if e["old_computer_id"] in removed]:
                del entries[key]
    ret = {"result": all(r["result"] for r in results), "computers": results}
    if not ret["result"]:
        failed = [f"{r['computer_id']}: {r['detail']}" for r in results if not r["result"]]
        return _fail(ret, "the BigFix server did not remove: " + "; ".join(failed))
    ret["retcode"] = 0
    return ret


def remove_computer(computer_id):
    """
    Delete one computer from the BigFix server (``DELETE /api/computer/{id}``): an
    operator's explicit delete, e.g. of a clean-up listed for review. Already gone
    (404) is success. Exits non-zero on failure.

    CLI Example:

    .. code-block:: bash

        salt-run iemkey.remove_computer 1234567
    """
    return remove_computers([computer_id])


# -- console clean-up after rotations --------------------------------------------------------
def _new_computer_ids(entries):
    """Ask the minions whose new computer ID is unknown for their agent's current one."""
    minions = sorted({e["minion"] for e in entries if not e.get("new_computer_id")})
    if not minions:
        return {}
    timeout = _setting("cleanup", "minion_timeout", CLEANUP_DEFAULTS)
    found = {}
    with salt.client.get_local_client(mopts=__opts__) as client:
        replies = client.cmd(minions, "iemkey.status", tgt_type="list", timeout=timeout)
    for minion, status in (replies or {}).items():
        computer_id = str(status.get("computer_id") or "") if isinstance(status, dict) else ""
        if COMPUTER_ID.fullmatch(computer_id):
            found[minion] = computer_id
    return found


def _decide(api, session, entry):
    """What to do with one rotation's old computer: (outcome, detail); the outcome is one of
    deleted, gone (already), pending (not decidable yet) or review (BigFix does not confirm it)."""
    old_id, new_id = entry["old_computer_id"], entry.get("new_computer_id")
    if not new_id:
        return "pending", "the minion has not reported its new computer ID yet"
    new = _computer(api, session, new_id)
    if new is None:
        return "pending", f"the new computer {new_id} is not registered with BigFix yet"
    old = _computer(api, session, old_id)
    if old is None:
        return "gone", f"BigFix has no computer {old_id} (already removed)"
    if not old["name"] or old["name"] != new["name"]:
        return "review", (
            f"BigFix names the old computer {old_id} {old['name']!r} and the new computer "
            f"{new_id} {new['name']!r}: not a duplicate of this rotation"
        )
    rotated_at = datetime.datetime.fromisoformat(entry["rotated_at"])
    if old["last_report"] is None:
        return "review", f"BigFix gives no Last Report Time for the old computer {old_id}"
    if old["last_report"] > rotated_at:
        return "review", (
            f"the old computer {old_id} reported at {old['last_report'].isoformat()}, after the "
            f"rotation at {entry['rotated_at']}: it is still alive"
        )
    deleted = _delete(api, session, old_id)
    if not deleted["result"]:
        return "pending", deleted["detail"]
    return ("deleted" if deleted["detail"] == "deleted" else "gone"), (
        f"{deleted['detail']}: the old computer {old_id} {old['name']!r} (last report "
        f"{old['last_report'].isoformat()}), superseded by {new_id}"
    )


def _cleanup_pass(keys=None, wait=True):
    """Decide every pending clean-up (or those in ``keys``), one pass at a time on this master.

    {"deleted"|"gone"|"pending"|"review": [entries decided so], "error": why the REST API failed,
    "busy": True when another pass was running and ``wait`` is False (nothing decided)}.
    """
    ret = {"deleted": [], "gone": [], "pending": [], "review": [], "error": None, "busy": False}
    with _flock("cleanup-pass", blocking=wait) as mine:
        if not mine:
            return {**ret, "busy": True}
        pending = _cleanups()["pending"]
        entries = [e for key, e in sorted(pending.items()) if keys is None or key in keys]
        if not entries:
            return ret
        try:
            api = _api()
        except SaltInvocationError as exc:
            return {**ret, "pending": entries, "error": str(exc)}
        found = _new_computer_ids(entries)
        decided = {}
        with _session(api) as session:
            for entry in entries:
                fresh = found.get(entry["minion"])
                if not entry.get("new_computer_id") and fresh and fresh != entry["old_computer_id"]:
                    entry["new_computer_id"] = fresh
                if ret["error"]:  # the server is down or refuses us: don't hammer it for the rest
                    decided[_key(entry)] = ("pending", ret["error"])
                    continue
                try:
                    decided[_key(entry)] = _decide(api, session, entry)
                except _ApiError as exc:
                    ret["error"] = str(exc)
                    decided[_key(entry)] = ("pending", ret["error"])
        _store_outcomes(entries, decided, ret)
    return ret


def _store_outcomes(entries, decided, ret):
    """Move each decided entry where it belongs; a long-pending one goes to review."""
    give_up_after = _setting("cleanup", "give_up_after", CLEANUP_DEFAULTS)
    now = _now()
    with _stored("cleanup") as document:
        for entry in entries:
            key = _key(entry)
            if key not in (document.get("pending") or {}):
                continue  # an operator removed or dismissed it meanwhile
            outcome, detail = decided[key]
            waited = (now - datetime.datetime.fromisoformat(entry["received"])).total_seconds()
            if outcome == "pending" and waited > give_up_after and not ret["error"]:
                outcome, detail = "review", f"{detail}, after {waited:.0f} s (iemkey:cleanup:give_up_after)"
            stored = {**entry, "detail": detail, "checked": now.isoformat(), "attempts": entry.get("attempts", 0) + 1}
            del document["pending"][key]
            if outcome in ("pending", "review"):
                document.setdefault(outcome, {})[key] = stored
            ret[outcome].append(stored)
            _log_outcome(outcome, stored)


def _key(entry):
    return f"{entry['minion']}:{entry['old_computer_id']}"


def _log_outcome(outcome, entry):
    where = f"computer {entry['old_computer_id']} (rotation of minion {entry['minion']})"
    if outcome == "review":
        log.warning(
            "iemkey cleanup: not deleting %s: %s; listed for review (salt-run iemkey.report)", where, entry["detail"]
        )
    elif outcome in ("deleted", "gone"):
        log.warning("iemkey cleanup: removed %s from the BigFix console: %s", where, entry["detail"])
    else:
        log.info("iemkey cleanup: %s stays pending: %s", where, entry["detail"])


def cleanup(dismiss=None):
    """
    Perform the console clean-ups that rotations left pending: for each, delete the
    old computer only when BigFix confirms it is the superseded duplicate (the
    minion's new computer exists, differs from the old one and has the same
    Computer Name, and the old one has not reported since the rotation). What BigFix
    does not confirm is listed for review; what cannot be decided yet (new computer
    not registered, REST API unreachable) stays pending. The list lives under the
    master's cachedir and survives restarts; running this again is always safe,
    so a master schedule may run it. Exits non-zero when the REST API failed.

    dismiss
        A computer ID whose clean-up (pending or for review) is dropped without
        deleting anything, after an operator has dealt with it.

    CLI Example:

    .. code-block:: bash

        salt-run iemkey.cleanup
        salt-run iemkey.cleanup dismiss=1234567
    """
    if dismiss not in (None, ""):
        dismiss = str(dismiss).strip()
        dropped = []
        with _stored("cleanup") as document:
            for kind in ("pending", "review"):
                entries = document.get(kind) or {}
                for key in [k for k, e in entries.items() if e["old_computer_id"] == dismiss]:
                    dropped.append(entries.pop(key))
        if not dropped:
            return _fail({"dismissed": []}, f"no pending or review clean-up for computer {dismiss}")
        log.warning("iemkey cleanup: an operator dismissed the clean-up of computer %s", dismiss)
        return {"dismissed": dropped, "retcode": 0}
    outcomes = _cleanup_pass()
    review = _cleanups()["review"]
    ret = {kind: outcomes[kind] for kind in ("deleted", "gone", "pending")}
    ret.update(review=sorted(review.values(), key=_key), retcode=0)
    ret["summary"] = (
        f"{len(ret['deleted'])} deleted, {len(ret['gone'])} already gone, "
        f"{len(ret['pending'])} pending, {len(review)} for review"
    )
    if outcomes["busy"]:
        ret["summary"] = "another iemkey clean-up is running; nothing was decided by this one"
    if outcomes["error"]:
        ret.update(error=outcomes["error"], retcode=1)
        log.error("iemkey cleanup: %s", outcomes["error"])
    __context__["retcode"] = ret["retcode"]
    return ret


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


def _claim_nonce(minion_id, nonce, signed_at, max_age, max_skew):
    """Remember a verified event's nonce until it is stale anyway; False when it was seen before."""
    now = time.time()
    with _stored("seen") as seen:
        for key in [k for k, expires in seen.items() if expires < now]:
            del seen[key]
        key = f"{minion_id}:{nonce}"
        if key in seen:
            return False
        seen[key] = signed_at.timestamp() + max_age + max_skew
    return True


def _verified(tag, event):
    """(minion id, payload, signed time) of a minion's signed event; _Refused otherwise."""
    data = event.get("data")
    try:
        envelope_id = iemkey_auth.signer(data)
        max_age = _setting("reactor", "max_age", REACTOR_DEFAULTS)
        max_skew = _setting("reactor", "max_skew", REACTOR_DEFAULTS)
        minion_id, payload, signed_at, nonce = iemkey_auth.verify(
            tag, data, _accepted_key(envelope_id) if envelope_id else None, _now(), max_age, max_skew
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


def _hook_target(event):
    """(minion id, reason) from a salt-api webhook event whose body carries our HMAC; _Refused otherwise."""
    if event.get("from_minion"):
        raise _Refused("it was sent by a minion, not by salt-api")
    secret = _hook_secret()
    body = event.get("body")
    body = body.encode() if isinstance(body, str) else body
    signature = event.get("signature")
    if not isinstance(body, bytes) or not isinstance(signature, str):
        raise _Refused("its body is not signed with iemkey:reactor:hook_secret (X-Iemkey-Signature)")
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(signature.strip().encode(), expected.encode()):
        raise _Refused("its body is not signed with iemkey:reactor:hook_secret (X-Iemkey-Signature)")
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
    return minion_id, post.get("reason")


def _rotate_minion(tag, minion_id, reason, since):
    cooldown = _setting("reactor", "cooldown", REACTOR_DEFAULTS)
    since = (since - datetime.timedelta(seconds=cooldown)).isoformat()
    with salt.client.get_local_client(mopts=__opts__) as client:
        jid = client.cmd_async(
            [minion_id],
            "state.single",
            ["iemkey.rotated"],
            tgt_type="list",
            kwarg={"name": STATE_NAME, "since": since, "queue": True},
        )
    log.warning(
        "iemkey reactor: %s for %s (reason: %s): asking %s to ensure BigFix keys made after %s "
        "(job %s: salt-run jobs.lookup_jid %s)",
        tag,
        minion_id,
        str(reason)[:200] if reason else "none given",
        minion_id,
        since,
        jid,
        jid,
    )
    return {"result": bool(jid), "action": "rotate", "minion": minion_id, "since": since, "jid": jid}


def _record_rotation(minion_id, payload):
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
    entry = {
        "minion": minion_id,
        "old_computer_id": old,
        "new_computer_id": new or None,
        "rotated_at": rotated_at.astimezone(UTC).isoformat(),
        "received": _now().isoformat(),
        "attempts": 0,
    }
    with _stored("cleanup") as document:
        if any(_key(entry) in (document.get(kind) or {}) for kind in ("pending", "review")):
            return None
        document.setdefault("pending", {})[_key(entry)] = entry
    return _key(entry)


def react(event_tag=None, event=None, **kwargs):  # pylint: disable=unused-argument
    """
    The reactors' decision, made on the master: act on an iemkey event only when it
    proves where it came from. ``salt://iemkey/reactor/*.sls`` hand their event here.

    - ``iemkey/compromised`` (``iemkey.alert`` on a minion): signed with that minion's
      own Salt key, not stale, not a replay: that minion, and only it, is asked to
      rotate (``state.single iemkey.rotated`` with ``since`` = signed time - cooldown).
    - ``salt/netapi/hook/iemkey/compromised`` (salt-api): the body's HMAC-SHA256 with
      ``iemkey:reactor:hook_secret`` matches: the one accepted minion it names rotates.
    - ``iemkey/rotated`` (``iemkey.rotate`` on a minion), signed likewise: the old
      computer's console clean-up is recorded and tried (``iemkey.cleanup``).

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


def _react(event_tag, event):
    if event_tag == HOOK_TAG:
        minion_id, reason = _hook_target(event)
        return _rotate_minion(event_tag, minion_id, reason, _now())
    if event_tag == COMPROMISED_TAG:
        minion_id, payload, signed_at = _verified(event_tag, event)
        return _rotate_minion(event_tag, minion_id, payload.get("reason"), signed_at)
    if event_tag == ROTATED_TAG:
        minion_id, payload, _signed_at = _verified(event_tag, event)
        key = _record_rotation(minion_id, payload)
        if key is None:
            return {"result": True, "action": "none", "detail": "this clean-up is already recorded"}
        log.warning(
            "iemkey reactor: %s rotated its BigFix key; the clean-up of its old computer %s is recorded and tried now",
            minion_id,
            payload.get("old_computer_id"),
        )
        outcomes = _cleanup_pass(keys={key}, wait=False)
        decided = next((kind for kind in ("deleted", "gone", "review") if outcomes[kind]), "pending")
        return {
            "result": True,
            "action": "cleanup",
            "minion": minion_id,
            "outcome": decided,
            "error": outcomes["error"],
        }
    raise _Refused(f"its tag is not {COMPROMISED_TAG}, {ROTATED_TAG} or {HOOK_TAG}")
