"""
Keep the BigFix (IEM/BES) agent's private key newer than a point in time.

After an incident, ``since`` is the time from which keys count as safe: an agent
whose key predates it is rotated once (``iemkey.rotate``); later runs find the new
key and change nothing. All the deciding is done by ``iemkey.check`` in the
execution module; this state only chooses whether to call ``iemkey.rotate``.

.. code-block:: yaml

    bigfix-agent-key:
      iemkey.rotated:
        - since: "2026-11-20T08:00:00Z"
"""

import logging

from salt.exceptions import CommandExecutionError, SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "iemkey"


def __virtual__():
    if "iemkey.check" in __salt__:
        return __virtualname__
    return (False, "iemkey state: the iemkey execution module is not loaded (run saltutil.sync_all)")


def rotated(name, since, wait=0, owed=False, **kwargs):
    """
    Ensure the agent's current key was made at or after ``since``, rotating it once if not.

    name
        An identifier for this state; not used.

    since
        ISO 8601 (``2026-11-20T08:00:00Z``, any offset; no zone means UTC) or epoch
        seconds written ``@1763625600``. A compact date (``20261120``), a time before
        2001 or in the future is an error.

    wait
        Seconds to wait after the rotation for the agent's new key and computer ID.

    owed
        The master owes this minion a rotation after ``since`` (the iemkey engine
        sets it): only a rotation iemkey made at or after ``since`` counts; when there
        is one, its ``iemkey/rotated`` is sent again so that the master can settle.

    The time that counts is when the current key files were made; while KeyStorage
    is absent right after a rotation by iemkey, the time of that rotation. An agent
    that still has no key ``iemkey:stale_after`` seconds after a rotation fails the
    state: it is down or cannot register. A minion without a BigFix agent succeeds
    with nothing to rotate, unless ``iemkey:require_agent`` is true.

    Its return also says ``computer_id``: the agent's computer ID when the state
    checked it (``salt-run iemkey.report ssh=True`` joins BigFix's records on it).
    """
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    try:
        owed = _boolean("owed", owed)
        verdict = __salt__["iemkey.check"](since, probe_agent=False, owed=owed)  # the decision needs no probe
    except (SaltInvocationError, CommandExecutionError) as exc:
        ret["comment"] = f"Cannot decide whether the key is rotated: {exc}"
        return ret
    current = verdict["status"]
    if current.get("computer_id"):  # the agent's, when checked: a report over salt-ssh joins BigFix's records on it
        ret["computer_id"] = current["computer_id"]
    if verdict.get("no_agent"):
        if verdict["compliant"] and owed and not __opts__["test"]:
            return _rotate(ret, since, wait, owed, verdict, current)  # says so, signed, to the master
        ret["result"] = verdict["compliant"]
        ret["comment"] = verdict["reason"][:1].upper() + verdict["reason"][1:]
        return ret
    if verdict["compliant"] and not owed:
        ret["result"] = not verdict["stale"]
        ret["comment"] = f"The BigFix agent key is rotated: {verdict['reason']}"
        return ret
    if __opts__["test"]:
        ret["result"] = None
        if verdict["compliant"]:
            ret["comment"] = f"The rotation's iemkey/rotated would be sent again: {verdict['reason']}"
            return ret
        old = {"key_created": current["key_created"], "computer_id": current["computer_id"]}
        ret["changes"] = {"key": {"old": old, "new": "a new key and computer ID"}}
        ret["comment"] = f"The BigFix agent key would be rotated: {verdict['reason']}"
        return ret
    return _rotate(ret, since, wait, owed, verdict, current)


def _boolean(name, value):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise SaltInvocationError(f"{name} must be True or False, not {value!r}")


def _rotate(ret, since, wait, owed, verdict, current):
    old = {"key_created": current["key_created"], "computer_id": current["computer_id"]}
    try:
        rotation = __salt__["iemkey.rotate"](wait=wait, since=since, owed=owed)
    except (SaltInvocationError, CommandExecutionError) as exc:
        ret["comment"] = f"Rotating the BigFix agent key failed: {exc}"
        return ret
    if not rotation["rotated"]:
        if "reason" in rotation:  # nothing was removed and no new key seen: not a rotation
            ret["comment"] = f"The BigFix agent key was not rotated: {rotation['reason']}"
            return ret
        # no agent here, the rotation's event sent again, or another rotation (reactor, operator)
        # finished while this one waited for the lock
        ret["result"] = True
        ret["comment"] = f"The BigFix agent key is rotated: {rotation['comment']}"
        if rotation.get("no_agent"):
            ret["comment"] = rotation["comment"][:1].upper() + rotation["comment"][1:]
        return ret
    ret["result"] = True
    ret["changes"] = {
        "key": {
            "old": {**old, "computer_id": rotation["old_computer_id"]},
            # the new key and computer ID are known only when the state waited for them (``wait``)
            "new": {
                key: value
                for key, value in (
                    ("rotated_at", rotation["rotated_at"]),
                    ("key_created", rotation.get("key_created")),
                    ("computer_id", rotation.get("new_computer_id")),
                )
                if value is not None
            },
        },
        "removed": rotation["removed"],
    }
    ret["comment"] = (
        f"Rotated the BigFix agent key ({verdict['reason']}); the old computer ID "
        f"{rotation['old_computer_id']} is now a duplicate in the BigFix console"
    )
    if rotation.get("registered") is False:
        # behind an authenticating relay the new agent cannot register until the exchange works
        ret["result"] = False
        ret["comment"] += f". The manual key exchange failed: {rotation['register_error']}"
    if rotation.get("errors"):
        # the rotation happened (changes stand), but a step after it did not
        ret["result"] = False
        ret["comment"] += ". " + "; ".join(rotation["errors"])
    return ret
