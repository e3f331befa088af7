"""
Master side of iemkey: fleet compliance and the BigFix console clean-up.

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

Sync it to the master with ``salt-run saltutil.sync_runners``.
"""

import logging
import re
import time

import salt.client
import salt.utils.minions
import salt.utils.sdb
from salt.exceptions import SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "iemkey"

API_DEFAULTS = {"verify": True, "timeout": 30, "retries": 3}
COMPUTER_ID = re.compile(r"[0-9]{1,20}")


def __virtual__():
    return __virtualname__


def _fail(ret, message):
    ret.update(result=False, error=message, retcode=1)
    __context__["retcode"] = 1
    log.error("iemkey: %s", message)
    return ret


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
def report(since, tgt="*", tgt_type="glob", timeout=None):
    """
    Fleet compliance: which agents have a key made at or after ``since``, which do
    not, and which minions did not answer. Exits non-zero when any minion is
    noncompliant, unreachable, has no agent, or errs.

    since
        ISO 8601 (``2026-11-20T08:00:00Z``) or epoch seconds, as for ``iemkey.rotated``.

    tgt, tgt_type
        The minions to ask (default: all). Unreachable means accepted and targeted,
        but no answer within ``timeout`` seconds (default: the master's ``timeout``).

    CLI Example:

    .. code-block:: bash

        salt-run iemkey.report since=2026-11-20T08:00:00Z
        salt-run iemkey.report since=2026-11-20T08:00:00Z tgt='web*' --out=json
    """
    if since in (None, ""):
        return _fail({}, "report needs since, e.g. since=2026-11-20T08:00:00Z")
    timeout = __opts__.get("timeout", 5) if timeout is None else float(timeout)
    expected = set(_targets(tgt, tgt_type))
    answers = {}
    with salt.client.get_local_client(__opts__["conf_file"]) as client:
        for reply in client.cmd_iter(tgt, "iemkey.check", [str(since)], tgt_type=tgt_type, timeout=timeout,
                                     full_return=True):
            answers.update(reply)
    ret = {"since": str(since), "compliant": [], "noncompliant": [], "not_installed": [], "errors": [],
           "unreachable": sorted(expected - set(answers)), "minions": {}}
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
    failing = ret["noncompliant"] + ret["unreachable"] + ret["not_installed"] + ret["errors"]
    ret["summary"] = (
        f"{len(ret['compliant'])} compliant, {len(ret['noncompliant'])} noncompliant, "
        f"{len(ret['unreachable'])} unreachable, {len(ret['not_installed'])} without the agent, "
        f"{len(ret['errors'])} errors (keys since {since})"
    )
    ret["retcode"] = 1 if failing else 0
    __context__["retcode"] = ret["retcode"]
    return ret


# -- BigFix REST API ------------------------------------------------------------------------
def _api():
    """The ``iemkey:api`` master config, with the password resolved (never logged)."""
    conf = __opts__.get("iemkey", {}).get("api") or {}
    missing = [key for key in ("url", "user", "password") if not conf.get(key)]
    if missing:
        raise SaltInvocationError(
            "the BigFix REST API is not configured: set iemkey:api:" + ", iemkey:api:".join(missing)
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


def _delete(api, session, computer_id):
    """DELETE one computer with retries; {"computer_id", "result", "status", "detail"}."""
    import requests

    url = f"{api['url']}/api/computer/{computer_id}"
    retries = max(1, int(api["retries"]))
    outcome = {"computer_id": computer_id, "result": False, "status": None, "detail": ""}
    for attempt in range(1, retries + 1):
        try:
            response = session.delete(url, timeout=float(api["timeout"]), verify=api["verify"])
        except requests.RequestException as exc:
            outcome["detail"] = f"{type(exc).__name__} talking to {api['url']}"
            retry = True
        else:
            outcome["status"] = response.status_code
            if response.status_code in (200, 202, 204):
                return {**outcome, "result": True, "detail": "deleted"}
            if response.status_code == 404:
                return {**outcome, "result": True, "detail": "already gone"}
            if response.status_code in (401, 403):
                outcome["detail"] = (f"authentication failed: the BigFix server refused user {api['user']!r} "
                                     f"(HTTP {response.status_code})")
                return outcome
            outcome["detail"] = f"HTTP {response.status_code} from DELETE {url}"
            retry = response.status_code >= 500
        if not retry or attempt == retries:
            break
        log.warning("iemkey: DELETE %s failed (%s), attempt %d of %d", url, outcome["detail"], attempt, retries)
        time.sleep(min(0.5 * 2 ** (attempt - 1), 8))
    return outcome


def remove_computers(computer_ids):
    """
    Delete computers from the BigFix server (``DELETE /api/computer/{id}``): the
    duplicates rotation leaves behind. Already gone (404) counts as done. Retries
    connection errors and 5xx with backoff; 401/403 is an authentication error.
    Exits non-zero if any deletion failed.

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
    import requests

    try:
        api = _api()
    except SaltInvocationError as exc:
        return _fail({"result": False}, str(exc))
    with requests.Session() as session:
        session.auth = (api["user"], api["password"])
        results = [_delete(api, session, computer_id) for computer_id in ids]
    ret = {"result": all(r["result"] for r in results), "computers": results}
    if not ret["result"]:
        failed = [f"{r['computer_id']}: {r['detail']}" for r in results if not r["result"]]
        return _fail(ret, "the BigFix server did not remove: " + "; ".join(failed))
    ret["retcode"] = 0
    return ret


def remove_computer(computer_id):
    """
    Delete one computer from the BigFix server (``DELETE /api/computer/{id}``), as
    the ``iemkey/rotated`` reactor does with a rotation's ``old_computer_id``.
    Already gone (404) is success. Exits non-zero on failure.

    CLI Example:

    .. code-block:: bash

        salt-run iemkey.remove_computer 1234567
    """
    return remove_computers([computer_id])
