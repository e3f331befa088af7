"""
The reactors' decisions: what the master does with an iemkey event once it has passed the gate.

Made in the reactor process itself (the ``#!py`` reactor files call ``Reactions.handle``), not in
a queued runner reaction: Salt stores every runner job in its job cache, and storing one matches
the job's target against every accepted key, so each runner reaction would cost the master
O(number of minions) and a storm of N of them O(N²). ``salt-run iemkey.react`` runs the same code.

- ``iemkey/compromised`` (``salt-call iemkey.alert``): signed with that minion's own Salt key, not
  stale when the master received it, not a replay: the master records the compromise (that
  minion's rotations are then compromise rotations, revoked, not deleted) and asks that minion,
  and only it, to rotate (``state.single iemkey.rotated``, ``since`` = signed time - cooldown). A
  second alert for it within the cooldown publishes nothing new: the first one's job rotates it.
- ``salt/netapi/hook/iemkey/compromised`` (salt-api): ``X-Iemkey-Signature: t=<unix>,sha256=<hex>``
  is the HMAC-SHA256 of ``<t>.<body>`` with ``iemkey:reactor:hook_secret``, recent and new: the one
  accepted minion the body names rotates, as for an alert.
- ``iemkey/rotated`` (``iemkey.rotate``), signed likewise: the old computer's clean-up is recorded;
  ``iemkey.cleanup`` (the master schedule) decides it with BigFix.

Everything else is refused with one line saying why. Nothing here talks to BigFix.
"""

import datetime
import hashlib
import hmac
import json
import logging
import re
import threading

try:
    import iemkey_auth
    import iemkey_cleanup
    import iemkey_gate
except ImportError:
    from saltext.iemkey.utils import iemkey_auth, iemkey_cleanup, iemkey_gate

log = logging.getLogger(__name__)

UTC = datetime.timezone.utc
COMPROMISED_TAG = "iemkey/compromised"
ROTATED_TAG = "iemkey/rotated"
HOOK_TAG = "salt/netapi/hook/iemkey/compromised"
STATE_NAME = "bigfix-agent-key"
REACTOR_DEFAULTS = {"cooldown": 300, "max_age": 300, "max_skew": 60}
COMPUTER_ID = re.compile(r"[0-9]{1,20}")


class Refused(Exception):
    """The event is not acted on; its message is the one line the master log gets, at ``level``."""

    def __init__(self, message, level=logging.WARNING):
        super().__init__(message)
        self.level = level


class Misconfigured(Exception):
    """A setting the decision needs is malformed: the message names it."""


def number(opts, section, key, defaults):
    """A non-negative number from ``iemkey:<section>:<key>`` in the master opts."""
    value = ((opts.get("iemkey") or {}).get(section) or {}).get(key)
    value = defaults[key] if value in (None, "") else value
    try:
        found = float(value)
    except (TypeError, ValueError):
        raise Misconfigured(f"iemkey:{section}:{key} must be a number, not {value!r}") from None
    if found < 0:
        raise Misconfigured(f"iemkey:{section}:{key} must not be negative, not {value!r}")
    return found


def compromises_of(store, minions):
    """The compromise records of ``minions`` only (one read each, whatever the fleet's size)."""
    found = {minion: store.get("compromises", minion) for minion in minions}
    return {minion: record for minion, record in found.items() if record}


class Publisher:
    """Ask one minion, and only it, to ensure keys made after ``since`` (``state.single
    iemkey.rotated``): the job id. One LocalClient per process, kept (making one loads Salt's
    modules: 55-120 ms), used by one caller at a time; a fresh one after a failure."""

    def __init__(self, opts):
        self.opts, self.client, self.lock = opts, None, threading.Lock()

    def __call__(self, minion_id, since):
        import salt.client

        with self.lock:
            if self.client is None:
                self.client = salt.client.get_local_client(mopts=self.opts)
            try:
                return self.client.cmd_async(
                    [minion_id],
                    "state.single",
                    ["iemkey.rotated"],
                    tgt_type="list",
                    kwarg={"name": STATE_NAME, "since": since, "queue": True},
                )
            except Exception:
                self.client = None
                raise


class Reactions:
    """The decisions for one master: its opts, its store, a clock, how it publishes a rotation job
    (``publish(minion_id, since) -> jid``) and how it resolves an ``sdb://`` URI."""

    def __init__(self, opts, store, publish, resolve=None, now=None):
        self.opts, self.store, self.publish = opts, store, publish
        self.resolve = resolve or (lambda uri: uri)
        self.now = now or (lambda: datetime.datetime.now(UTC))

    def reactor(self, key):
        return number(self.opts, "reactor", key, REACTOR_DEFAULTS)

    def cleanup(self, key):
        return number(self.opts, "cleanup", key, iemkey_cleanup.DEFAULTS)

    # -- the entry point ----------------------------------------------------------------------
    def handle(self, tag, event):
        """The decision on ``event`` (``id``, ``data`` or the webhook's ``body``/``signature``, and
        the bus ``stamp``): a dict with ``action`` (rotate, duplicate, recorded, none, refused,
        error), logged."""
        event = event if isinstance(event, dict) else {}
        try:
            return {"tag": tag, **self._handle(tag, event)}
        except Refused as exc:
            log.log(exc.level, "iemkey reactor: refusing %s event, acting on nothing: %s", tag, exc)
            return {"tag": tag, "result": False, "action": "refused", "refused": str(exc)}
        except Misconfigured as exc:
            log.error("iemkey reactor: %s event not acted on: %s", tag, exc)
            return {"tag": tag, "result": False, "action": "error", "error": str(exc)}

    def _handle(self, tag, event):
        received = self.received(event)
        if tag == HOOK_TAG:
            minion_id, reason, signed_at = self.hook_target(event, received)
            return self.rotate_minion(tag, minion_id, reason, signed_at, received, "webhook")
        if tag == COMPROMISED_TAG:
            minion_id, payload, signed_at = self.verified(tag, event, received)
            return self.rotate_minion(tag, minion_id, payload.get("reason"), signed_at, received, "alert")
        if tag == ROTATED_TAG:
            minion_id, payload, _signed_at = self.verified(tag, event, received)
            key, case = self.record_rotation(minion_id, payload, received)
            if key is None:
                return {"result": True, "action": "none", "detail": "this clean-up is already recorded"}
            kind = f"a compromise rotation ({case['compromise']['incident']})" if case["compromise"] else "routine"
            log.warning(
                "iemkey reactor: %s rotated its BigFix key (%s); the clean-up of its old computer %s is recorded "
                "(iemkey.cleanup decides it with BigFix)",
                minion_id,
                kind,
                case["old_computer_id"],
            )
            return {
                "result": True,
                "action": "recorded",
                "minion": minion_id,
                "key": key,
                "compromise": bool(case["compromise"]),
            }
        raise Refused(f"its tag is not {COMPROMISED_TAG}, {ROTATED_TAG} or {HOOK_TAG}")

    # -- proof ------------------------------------------------------------------------------------
    def received(self, event):
        """When the master received the event: the bus's own ``_stamp`` (the master sets it when it
        fires the event, whatever the minion sent), never later than now."""
        try:
            stamp = iemkey_cleanup.parse(event.get("stamp"))
        except (TypeError, ValueError):
            return self.now()
        return min(stamp, self.now())

    def claim(self, key, expires):
        """Remember a verified event until it is stale anyway; False when it was seen before. One
        atomic create per event (the store's ``add``), whatever the number already remembered."""
        self.store.sweep("nonces")
        return self.store.add("nonces", key, {"expires": expires})

    def verified(self, tag, event, received):
        """(minion id, payload, signed time) of a minion's signed event; Refused otherwise. Its age is
        judged at ``received``, when the master got it, not when a worker gets to it."""
        max_age, max_skew = self.reactor("max_age"), self.reactor("max_skew")
        try:
            minion_id, payload, signed_at, nonce = iemkey_gate.signed(
                tag, event, self.opts, received, max_age, max_skew
            )
        except iemkey_gate.Refused as exc:
            raise Refused(str(exc)) from None
        if not self.claim(f"{minion_id}:{nonce}", signed_at.timestamp() + max_age + max_skew):
            raise Refused(f"it replays an event {minion_id!r} signed at {signed_at.isoformat()}, already acted on")
        return minion_id, payload, signed_at

    def hook_secret(self):
        secret = ((self.opts.get("iemkey") or {}).get("reactor") or {}).get("hook_secret")
        if secret in (None, ""):
            raise Refused(
                "iemkey:reactor:hook_secret is not set in the master config (an sdb:// URI that "
                "resolved to nothing when the master started counts as not set); the webhook is refused "
                "until it is"
            )
        if isinstance(secret, str) and secret.startswith("sdb://"):
            uri, secret = secret, self.resolve(secret)
            if secret in (None, "") or secret == uri:
                raise Refused(f"iemkey:reactor:hook_secret {uri} did not resolve to a secret", logging.ERROR)
        return str(secret).encode()

    @staticmethod
    def hook_signature(header):
        """(t, hex) from ``X-Iemkey-Signature: t=<unix>,sha256=<hex>``; Refused for anything else."""
        parts = header.split(",") if isinstance(header, str) else []
        fields = dict(part.strip().partition("=")[::2] for part in parts)
        stamp, digest = fields.get("t", ""), fields.get("sha256", "")
        if not re.fullmatch(r"[0-9]{1,12}", stamp) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise Refused(
                "its body is not signed with iemkey:reactor:hook_secret (X-Iemkey-Signature: t=<unix time>,"
                "sha256=<HMAC-SHA256 of '<t>.<body>'>)"
            )
        return stamp, digest

    def hook_target(self, event, received):
        """(minion id, reason, signed time) from a salt-api webhook event whose header carries our
        HMAC over a signed time and the body, neither stale nor a replay; Refused otherwise."""
        if event.get("from_minion"):
            raise Refused("it was sent by a minion, not by salt-api")
        secret = self.hook_secret()
        body = event.get("body")
        body = body.encode() if isinstance(body, str) else body
        if not isinstance(body, bytes):
            raise Refused("its body is not signed with iemkey:reactor:hook_secret (X-Iemkey-Signature)")
        stamp, digest = self.hook_signature(event.get("signature"))
        expected = hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(digest.encode(), expected.encode()):
            raise Refused("its body is not signed with iemkey:reactor:hook_secret (X-Iemkey-Signature)")
        signed_at = datetime.datetime.fromtimestamp(int(stamp), UTC)
        max_age, max_skew = self.reactor("max_age"), self.reactor("max_skew")
        age = (received - signed_at).total_seconds()
        if age > max_age:
            raise Refused(f"it was signed {age:.0f} s ago, more than {max_age:g} s (iemkey:reactor:max_age)")
        if age < -max_skew:
            raise Refused(f"it was signed {-age:.0f} s in the future (clock skew beyond {max_skew:g} s)")
        try:
            post = json.loads(body)
        except ValueError:
            post = None
        if not isinstance(post, dict):
            raise Refused("its body is not a JSON object")
        minion_id = post.get("minion_id")
        if not isinstance(minion_id, str) or not iemkey_auth.MINION_ID.fullmatch(minion_id):
            raise Refused(f"minion id {minion_id!r} is not exactly one minion id")
        if iemkey_gate.accepted_key(self.opts, minion_id) is None:
            raise Refused(f"{minion_id!r} is not an accepted minion")
        if not self.claim(f"hook:{digest}", signed_at.timestamp() + max_age + max_skew):
            raise Refused(f"it replays a webhook signed at {signed_at.isoformat()}, already acted on")
        return minion_id, post.get("reason"), signed_at

    # -- compromises ------------------------------------------------------------------------------
    def cover(self, minions, by):
        """Apply the compromise records to the cases of ``minions``: the cases they now cover."""
        compromises, incidents = compromises_of(self.store, minions), self.store.all("incidents")
        now, changed = self.now(), []
        cases = {}
        for minion in minions:  # only these minions' cases are read
            cases.update(self.store.all("cases", prefix=f"{minion}:"))
        for key, case in cases.items():
            if case["minion"] not in minions:
                continue
            covered = iemkey_cleanup.covering(case, compromises, incidents)
            marked = iemkey_cleanup.reopened_by(case, covered, now, by) if covered else None
            if marked and write_case(self.store, key, case, marked):
                changed.append(iemkey_cleanup.public(marked))
        return changed

    def record_compromise(self, minion_id, source, reason, received):
        """The master's own record that it acted on a compromise of ``minion_id``: rotations it
        receives from ``cooldown`` seconds before until ``compromise_window`` seconds after are
        compromise rotations. Open clean-ups it covers are re-decided. (the covered cases, the
        record as it was before this alert)."""
        since = received - datetime.timedelta(seconds=self.reactor("cooldown"))
        until = received + datetime.timedelta(seconds=self.cleanup("compromise_window"))
        with self.store.update("compromises", minion_id) as record:
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
        return self.cover({minion_id}, f"iemkey.react ({source})"), before

    def duplicates(self, minion_id, previous, received, cooldown):
        """What an alert duplicates, from the master's records, within ``cooldown`` seconds:
        ("alert", the alert or webhook it acted on for this minion), ("rotation", the rotation it
        received from it), or (None, None)."""
        window = received - datetime.timedelta(seconds=cooldown)
        if previous.get("at") and iemkey_cleanup.parse(previous["at"]) >= window:
            job = f" (job {previous['jid']})" if previous.get("jid") else ""
            return "alert", f"the {previous.get('source') or 'alert'} acted on at {previous['at']}{job}"
        rotations = [c for c in self.store.all("cases", prefix=f"{minion_id}:").values() if c.get("received")]
        latest = max(rotations, key=lambda c: c["received"], default=None)
        if latest and iemkey_cleanup.parse(latest["received"]) >= window:
            return "rotation", (
                f"the rotation the master received at {latest['received']} (old computer {latest['old_computer_id']})"
            )
        return None, None

    def rotate_minion(self, tag, minion_id, reason, since, received, source):
        covered, previous = self.record_compromise(minion_id, source, reason, received)
        cooldown = self.reactor("cooldown")
        kind, duplicate_of = self.duplicates(minion_id, previous, received, cooldown)
        since = (since - datetime.timedelta(seconds=cooldown)).isoformat()
        shown = str(reason)[:200] if reason else "none given"
        ret = {
            "result": True,
            "minion": minion_id,
            "since": since,
            "duplicate_of": duplicate_of,
            "compromise_covers": [c["old_computer_id"] for c in covered],
        }
        if kind == "alert":
            # that alert's job is the one that rotates: a second wave publishes nothing new
            log.warning(
                "iemkey reactor: %s for %s (reason: %s): a duplicate of %s, within iemkey:reactor:cooldown (%g s): "
                "nothing published (that job rotates it: salt-run jobs.lookup_jid)",
                tag,
                minion_id,
                shown,
                duplicate_of,
                cooldown,
            )
            return {**ret, "action": "duplicate", "jid": None}
        jid = self.publish(minion_id, since)
        with self.store.update("compromises", minion_id) as record:
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
            shown,
            outcome,
            minion_id,
            since,
            jid,
            jid,
        )
        return {**ret, "result": bool(jid), "action": "rotate", "jid": jid}

    # -- rotations -------------------------------------------------------------------------------
    def record_rotation(self, minion_id, payload, received):
        """(key, case) of the clean-up a signed rotation leaves; (None, the case) when recorded."""
        old = str(payload.get("old_computer_id") or "")
        new = str(payload.get("new_computer_id") or "")
        if not COMPUTER_ID.fullmatch(old):
            raise Refused(
                f"{minion_id} rotated with no usable old computer ID ({payload.get('old_computer_id')!r}): "
                "nothing to clean up"
            )
        if new and (not COMPUTER_ID.fullmatch(new) or new == old):
            raise Refused(f"{minion_id} reports the new computer ID {new!r} for the old {old}: not cleaning up")
        try:
            rotated_at = datetime.datetime.fromisoformat(str(payload.get("rotated_at")))
        except ValueError:
            raise Refused(f"{minion_id} sent no usable rotated_at ({payload.get('rotated_at')!r})") from None
        case = iemkey_cleanup.new_case(
            minion_id, old, new or None, iemkey_cleanup.parse(rotated_at).isoformat(), received
        )
        case["compromise"] = iemkey_cleanup.covering(
            case, compromises_of(self.store, {minion_id}), self.store.all("incidents")
        )
        key = iemkey_cleanup.key(minion_id, old)
        return (key, case) if self.store.add("cases", key, case) else (None, self.store.get("cases", key))


def write_case(store, key, before, after):
    """Store a decided case, unless something changed it meanwhile (an operator dismissed it)."""
    with store.update("cases", key) as stored:
        if stored.get("status") != before["status"] or stored.get("detail") != before["detail"]:
            return False
        stored.clear()
        stored.update(after)
    return True
