#!py
"""
Reactor: rotate the BigFix agent key of the one minion a compromise event is about.

Mapped in the master config for two tags:

- ``iemkey/compromised``, sent by a detector on a minion (``salt-call event.send
  iemkey/compromised '{"reason": "..."}'``). The target is the sending minion,
  ``data['id']``, which the master sets from the minion's authenticated
  connection; nothing in the payload or tag can choose another target.
- ``salt/netapi/hook/iemkey/compromised``, sent by salt-api (rest_cherrypy) for
  ``POST /hook/iemkey/compromised`` with JSON ``{"minion_id": "<id>", "reason": "..."}``.
  salt-api refuses the POST without authentication (``X-Auth-Token``). Because any
  minion can put events with any unreserved tag on the master bus, the reactor
  also refuses hook events that came from a minion (they carry ``id``) and, when
  ``iemkey:reactor:hook_secret`` is set, events whose body is not signed with it
  (``X-Iemkey-Signature: sha256=<hex HMAC-SHA256 of the body>``). ``minion_id``
  must be exactly one accepted minion id: globs, lists, compound or regular
  expressions, whitespace, non-strings and unknown ids rotate nobody.

The reaction is ``state.single iemkey.rotated`` on that minion with ``since`` =
event time - ``iemkey:reactor:cooldown`` seconds (master config, default 300): a
burst of alerts rotates once; an alert after the window rotates again.

Python (``#!py``) rather than Jinja, so each refusal is a clear line in the master
log and no template quirk can turn an id into a target expression.
"""

import datetime
import hashlib
import hmac
import logging
import os
import re

log = logging.getLogger("iemkey.reactor.compromised")

MINION_TAG = "iemkey/compromised"
HOOK_TAG = "salt/netapi/hook/iemkey/compromised"
DEFAULT_COOLDOWN = 300
# Exactly one minion id: no glob, list, compound, regex or path characters.
MINION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


def _refuse(why):
    log.warning("iemkey reactor: refusing %s event, no minion rotated: %s", tag, why)
    return {}


def _accepted(minion_id):
    return os.path.isfile(os.path.join(__opts__["pki_dir"], "minions", minion_id))


def _hook_refusal():
    """Why a hook event is not to be trusted as salt-api's, or None."""
    if "id" in data or "cmd" in data:
        return "it was sent by a minion, not by salt-api"
    secret = __salt__["config.get"]("iemkey:reactor:hook_secret")
    if not secret:
        return None
    headers = data.get("headers") if isinstance(data.get("headers"), dict) else {}
    signature = next((v for k, v in headers.items() if str(k).lower() == "x-iemkey-signature"), "")
    body = data.get("body") or b""
    body = body.encode() if isinstance(body, str) else body
    expected = "sha256=" + hmac.new(str(secret).encode(), body, hashlib.sha256).hexdigest()
    if not isinstance(signature, str) or not hmac.compare_digest(signature, expected):
        return "its body is not signed with iemkey:reactor:hook_secret (X-Iemkey-Signature)"
    return None


def _event_time():
    stamp = data.get("_stamp")
    try:
        when = datetime.datetime.fromisoformat(str(stamp))
    except ValueError:
        return datetime.datetime.now(datetime.timezone.utc)
    return when if when.tzinfo else when.replace(tzinfo=datetime.timezone.utc)


def _target():
    """(minion id, reason given, why it is refused or None)."""
    if tag == MINION_TAG:
        payload = data.get("data") if isinstance(data.get("data"), dict) else {}
        return data.get("id"), payload.get("reason"), None
    if tag == HOOK_TAG:
        refusal = _hook_refusal()
        if refusal:
            return None, None, refusal
        post = data.get("post") if isinstance(data.get("post"), dict) else {}
        return post.get("minion_id"), post.get("reason"), None
    return None, None, f"tag is not {MINION_TAG} or {HOOK_TAG}"


def run():
    minion_id, reason, refusal = _target()
    if refusal:
        return _refuse(refusal)
    if not isinstance(minion_id, str) or not MINION_ID.fullmatch(minion_id):
        return _refuse(f"minion id {minion_id!r} is not exactly one minion id")
    if not _accepted(minion_id):
        return _refuse(f"{minion_id!r} is not an accepted minion")
    cooldown = __salt__["config.get"]("iemkey:reactor:cooldown", DEFAULT_COOLDOWN)
    since = _event_time() - datetime.timedelta(seconds=float(cooldown))
    log.warning(
        "iemkey reactor: %s event: rotating the BigFix key of minion %s (reason: %s; keys older than %s)",
        tag, minion_id, str(reason)[:200] if reason else "none given", since.isoformat(),
    )
    return {
        f"iemkey-compromised-rotate-{minion_id}": {
            "local.state.single": [
                {"tgt": [minion_id]},
                {"tgt_type": "list"},
                {"args": [
                    {"fun": "iemkey.rotated"},
                    {"name": "bigfix-agent-key"},
                    {"since": since.isoformat()},
                    {"queue": True},
                ]},
            ]
        }
    }
