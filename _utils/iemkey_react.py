"""
The master's decisions on iemkey events, once the gate (``iemkey_gate``) has verified them.

Made by the iemkey engine (``_engines/iemkey.py``) off Salt's event loop; ``salt-run iemkey.react``
runs the same code for one event from the command line.

- ``iemkey/compromised`` (``salt-call iemkey.alert``), signed with that minion's own Salt key, and
  ``salt/netapi/hook/iemkey/compromised`` (salt-api; ``X-Iemkey-Signature: t=<unix>,sha256=<hex>``,
  the HMAC-SHA256 of ``<t>.<body>`` with ``iemkey:reactor:hook_secret``, naming one accepted minion):
  the master records the compromise (that minion's rotations are then compromise rotations, revoked,
  not deleted) and owes that minion, and only it, a rotation (``iemkey_owed``): ``rotate`` (a rotation
  job is published), ``duplicate`` (one is owed and its delivery is in flight: nothing published),
  ``redelivered`` (one is owed and the minion was away or its job failed: published again now; one
  in ``review`` or ``held`` only for a new signal, a re-sent copy waits for the operator), or
  ``settled`` (the minion's signed rotation already came after this alert was raised).
- ``iemkey/rotated`` (``iemkey.rotate``), signed likewise: the old computer's clean-up is recorded
  (``iemkey.cleanup`` decides it with BigFix), and the minion's owed rotation is settled when this
  rotation came after its compromise signals.

Replays are refused (each signed event's nonce, each webhook's signature, is claimed once in the
store). Nothing here publishes or talks to BigFix: a decision that needs a rotation job says so
(``deliver``), and the engine publishes it in its next batch.
"""

import datetime
import json
import logging
import re

try:
    import iemkey_auth
    import iemkey_cleanup
    import iemkey_config
    import iemkey_owed
except ImportError:
    from saltext.iemkey.utils import iemkey_auth, iemkey_cleanup, iemkey_config, iemkey_owed

log = logging.getLogger(__name__)

UTC = datetime.timezone.utc
COMPROMISED_TAG = "iemkey/compromised"
ROTATED_TAG = "iemkey/rotated"
HOOK_TAG = "salt/netapi/hook/iemkey/compromised"
DECIDED_TAG = "iemkey/reactor/decided"
COMPUTER_ID = re.compile(r"[0-9]{1,20}")
ALERT_ID = re.compile(r"[0-9a-f]{32}")
ALERT_KEPT = 7 * 86400  # how long before its signature an alert may say it was raised (its re-sends)

Refused = iemkey_auth.Refused
Misconfigured = iemkey_config.Misconfigured


def compromises_of(store, minions):
    """The compromise records of ``minions`` only (one read each, whatever the fleet's size)."""
    found = {minion: store.get("compromises", minion) for minion in minions}
    return {minion: record for minion, record in found.items() if record}


def received_at(stamp, now):
    """When the master received an event: the bus's own ``_stamp`` (the master sets it when it fires
    the event, whatever a minion sent; Salt 3006 stamps naive UTC), never later than ``now``."""
    try:
        parsed = iemkey_cleanup.parse(stamp)
    except (TypeError, ValueError):
        return now
    return min(parsed, now)


class Reactions:
    """The decisions for one master: its opts, its store, a clock, and how to resolve an ``sdb://``
    URI."""

    def __init__(self, opts, store, resolve=None, now=None):
        self.opts, self.store = opts, store
        self.resolve = resolve or (lambda uri: uri)
        self.now = now or (lambda: datetime.datetime.now(UTC))

    # -- the entry point ----------------------------------------------------------------------
    def handle(self, tag, event, verified=None, refusal=None, cover=True):
        """The decision on ``event`` (``id``, ``data`` or the webhook's ``body``/``signature``, the bus
        ``stamp``), whose signature ``verified`` (the gate's (minion id, payload, signed time,
        nonce)) proved, if it is a signed minion event: a dict with ``action`` (rotate, duplicate,
        redelivered, settled, recorded, none, refused, error) and, when a rotation job must be
        published, ``deliver`` (the minion's owed ``since``). ``refusal(tag, claimed, reason,
        level)`` logs a refusal (the gate's counts); a line each by default. ``cover``: see
        ``compromised``."""
        event = event if isinstance(event, dict) else {}
        try:
            return {"tag": tag, **self._handle(tag, event, verified, cover)}
        except Refused as exc:
            level = getattr(exc, "level", logging.WARNING)
            if refusal is not None:
                refusal(tag, event.get("id"), str(exc), level)
            else:
                log.log(level, "iemkey: refusing %s event, acting on nothing: %s", tag, exc)
            return {"tag": tag, "result": False, "action": "refused", "refused": str(exc)}
        except Misconfigured as exc:
            log.error("iemkey: %s event not acted on: %s", tag, exc)
            return {"tag": tag, "result": False, "action": "error", "error": str(exc)}

    def _handle(self, tag, event, verified, cover):
        received = received_at(event.get("stamp"), self.now())
        if tag == HOOK_TAG:
            minion_id, reason, digest = self.hook_target(event, received)
            sig = iemkey_owed.signal("webhook", received, received, f"hook:{digest[:32]}", reason, True)
            return self.compromised(minion_id, sig, received, cover)
        if tag not in (COMPROMISED_TAG, ROTATED_TAG):
            raise Refused(f"its tag is not {COMPROMISED_TAG}, {ROTATED_TAG} or {HOOK_TAG}")
        minion_id, payload, signed_at, nonce = verified or self.verify(tag, event, received)
        self.claim_once(event, f"{minion_id}:{nonce}", signed_at, f"an event {minion_id!r} signed at {signed_at}")
        if tag == COMPROMISED_TAG:
            raised, ident = self.raised(payload, signed_at, nonce)
            sig = iemkey_owed.signal("alert", raised, received, ident, payload.get("reason"))
            return self.compromised(minion_id, sig, received, cover)
        return self.rotated(minion_id, payload, received)

    # -- proof ------------------------------------------------------------------------------------
    def verify(self, tag, event, received):
        """What the gate does, for one event from the command line (``salt-run iemkey.react``)."""
        return iemkey_auth.verify_event(
            tag,
            event,
            self.opts,
            received,
            iemkey_config.reactor(self.opts, "max_age"),
            iemkey_config.reactor(self.opts, "max_skew"),
        )

    def claim_once(self, event, key, signed_at, what):
        """Remember a verified event until it is stale anyway (one atomic create); Refused when it was
        acted on before. An event the engine retries after a store outage keeps its claim."""
        if event.get("claimed") == key:
            return
        expires = signed_at.timestamp() + self.reactor("max_age") + self.reactor("max_skew")
        self.store.sweep("nonces")
        if not self.store.add("nonces", key, {"expires": expires}):
            raise Refused(f"it replays {what}, already acted on")
        event["claimed"] = key

    def reactor(self, key):
        return iemkey_config.reactor(self.opts, key)

    def hook_target(self, event, received):
        """(minion id, reason, digest) of a salt-api webhook whose header carries our HMAC over a
        signed time and the body, neither stale nor a replay; Refused otherwise."""
        if event.get("from_minion"):
            raise Refused("it was sent by a minion, not by salt-api")
        try:
            secret = iemkey_config.hook_secret(self.opts, self.resolve)
        except Misconfigured as exc:
            error = Refused(str(exc))
            error.level = logging.ERROR if "did not resolve" in str(exc) else logging.WARNING
            raise error from None
        digest, signed_at = iemkey_auth.check_webhook(
            secret,
            event.get("signature"),
            event.get("body"),
            received,
            self.reactor("max_age"),
            self.reactor("max_skew"),
        )
        body = event["body"]
        try:
            post = json.loads(body)
        except ValueError:
            post = None
        if not isinstance(post, dict):
            raise Refused("its body is not a JSON object")
        minion_id = post.get("minion_id")
        if not isinstance(minion_id, str) or not iemkey_auth.MINION_ID.fullmatch(minion_id):
            raise Refused(f"minion id {minion_id!r} is not exactly one minion id")
        if iemkey_auth.accepted_key(self.opts, minion_id) is None:
            raise Refused(f"{minion_id!r} is not an accepted minion")
        self.claim_once(event, f"hook:{digest}", signed_at, f"a webhook signed at {signed_at.isoformat()}")
        return minion_id, post.get("reason"), digest

    @staticmethod
    def raised(payload, signed_at, nonce):
        """(when the alert was raised, what identifies it): a re-sent alert carries the time and id of
        the first sending (``raised_at``, ``alert_id``); an older minion's, or a malformed one, counts
        as raised when signed."""
        ident, raised = payload.get("alert_id"), payload.get("raised_at")
        try:
            when = iemkey_cleanup.parse(raised)
        except (TypeError, ValueError):
            when = None
        if when is None or when > signed_at or (signed_at - when).total_seconds() > ALERT_KEPT:
            when = signed_at
        key = f"alert:{ident}" if isinstance(ident, str) and ALERT_ID.fullmatch(ident) else f"alert:{nonce}"
        return when, key

    # -- compromises ------------------------------------------------------------------------------
    def cover(self, minions, by):
        """Apply the compromise records to the cases of ``minions``: the cases they now cover."""
        compromises, incidents = compromises_of(self.store, minions), self.store.all("incidents")
        now, changed = self.now(), []
        cases = {}
        if len(minions) > 20:  # one read of every case costs less than a prefix scan per minion
            cases = {k: c for k, c in self.store.all("cases").items() if c["minion"] in minions}
        for minion in minions if len(minions) <= 20 else ():  # only these minions' cases are read
            cases.update(self.store.all("cases", prefix=f"{minion}:"))
        for key, case in cases.items():
            if case["minion"] not in minions:
                continue
            covered = iemkey_cleanup.covering(case, compromises, incidents)
            marked = iemkey_cleanup.reopened_by(case, covered, now, by) if covered else None
            if marked and write_case(self.store, key, case, marked):
                changed.append(iemkey_cleanup.public(marked))
        return changed

    def record_compromise(self, minion_id, sig, received):
        """The master's own record that it acted on a compromise of ``minion_id``: rotations it
        receives from ``cooldown`` seconds before until ``compromise_window`` seconds after are
        compromise rotations. The record as it was before this signal (its ``rotated``: the last
        rotation that settled an owed one)."""
        since = received - datetime.timedelta(seconds=self.reactor("cooldown"))
        until = received + datetime.timedelta(seconds=iemkey_config.cleanup(self.opts, "compromise_window"))
        with self.store.update("compromises", minion_id) as record:
            before = dict(record)
            if record.get("last") == sig["id"]:
                return before  # the same signal again (the engine retrying after a store outage)
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
                source=sig["source"],
                reason=sig["reason"],
                last=sig["id"],
            )
        return before

    def compromised(self, minion_id, sig, received, cover=True):
        """An alert's or a webhook's decision: the compromise recorded, and the rotation owed. With
        ``cover`` (one event), the minion's open clean-ups become compromise ones at once; the engine
        covers each batch's minions with one read instead."""
        before = self.record_compromise(minion_id, sig, received)
        covered = self.cover({minion_id}, f"iemkey.react ({sig['source']})") if cover else []
        decided = self.owe(minion_id, sig, before.get("rotated"), f"iemkey.react ({sig['source']})")
        shown = sig["reason"] or "none given"
        tag = COMPROMISED_TAG if sig["source"] == "alert" else HOOK_TAG
        log.warning(
            "iemkey: %s for %s (reason: %s): %s; its rotations are compromise rotations: their old computers "
            "are to revoke, not delete",
            tag,
            minion_id,
            shown,
            decided["detail"],
        )
        return {
            "result": True,
            "minion": minion_id,
            "since": decided["since"],
            "compromise_covers": [c["old_computer_id"] for c in covered],
            **decided,
        }

    def owe(self, minion_id, sig, rotated, by):
        """Record that ``minion_id`` is owed a rotation after ``sig``: the decision (``action``,
        ``detail``, ``since``, ``jid`` of a delivery in flight, and ``deliver`` when a job must be
        published now)."""
        now = self.now()
        if self.store.get("owed", minion_id) is None:
            if rotated and iemkey_owed.settled_by(sig, rotated["rotated_at"], rotated["received"]):
                detail = (
                    f"its rotation at {rotated['rotated_at']} (received {rotated['received']}) came after this "
                    f"{sig['source']}: nothing is owed, nothing published"
                )
                return {"action": "settled", "detail": detail, "since": sig["since"], "jid": None}
            record = iemkey_owed.new(minion_id, sig, now, by)
            if self.store.add("owed", minion_id, record):
                detail = f"a rotation made at or after {sig['since']} is owed: asking {minion_id}, and only it"
                return {"action": "rotate", "detail": detail, "since": record["since"], "jid": None, "deliver": True}
        with self.store.update("owed", minion_id) as record:
            if not record:  # settled between the two reads: a new owed rotation
                record.update(iemkey_owed.new(minion_id, sig, now, by))
                detail = f"a rotation made at or after {sig['since']} is owed: asking {minion_id}, and only it"
                return {"action": "rotate", "detail": detail, "since": record["since"], "jid": None, "deliver": True}
            merged, new = iemkey_owed.merge(record, sig)
            state = merged["state"]
            if state in iemkey_owed.IN_FLIGHT or (state in iemkey_owed.WAITING and not new):
                record.update(merged)
                job = f", job {merged['jid']}" if merged.get("jid") else ""
                detail = (
                    f"a duplicate: a rotation is owed since {merged['since']} and its delivery is in flight "
                    f"({state}{job}): nothing published"
                    if state in iemkey_owed.IN_FLIGHT
                    else f"a copy of a signal already recorded: the rotation owed since {merged['since']} is "
                    f"{state} and waits for an operator (salt-run iemkey.owed minion={minion_id} retry=True): "
                    "nothing published"
                )
                return {
                    "action": "duplicate",
                    "detail": detail,
                    "duplicate_of": f"the rotation owed since {merged['since']} ({state}{job})",
                    "since": merged["since"],
                    "jid": merged.get("jid"),
                }
            record.update(iemkey_owed.retry_now(merged, now, by, f"a new {sig['source']} while {state}"))
            detail = f"a rotation is owed since {merged['since']} and was {state}: asking {minion_id} again now"
            return {"action": "redelivered", "detail": detail, "since": record["since"], "jid": None, "deliver": True}

    # -- rotations -------------------------------------------------------------------------------
    def rotated(self, minion_id, payload, received):
        """A signed rotation: its clean-up recorded, and what it settles of the owed rotation."""
        if payload.get("no_agent") is True:
            return {"result": True, "action": "none", "minion": minion_id, "owed": self.no_agent(minion_id, received)}
        key, case = self.record_rotation(minion_id, payload, received)
        owed = self.settle_owed(minion_id, case, received)
        if key is None:
            return {
                "result": True,
                "action": "none",
                "minion": minion_id,
                "detail": "this clean-up is already recorded",
                "owed": owed,
            }
        kind = f"a compromise rotation ({case['compromise']['incident']})" if case["compromise"] else "routine"
        log.warning(
            "iemkey: %s rotated its BigFix key (%s); the clean-up of its old computer %s is recorded "
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
            "owed": owed,
        }

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
            rotated_at = iemkey_cleanup.parse(payload.get("rotated_at"))
        except (TypeError, ValueError):
            raise Refused(f"{minion_id} sent no usable rotated_at ({payload.get('rotated_at')!r})") from None
        case = iemkey_cleanup.new_case(minion_id, old, new or None, rotated_at.isoformat(), received)
        case["compromise"] = iemkey_cleanup.covering(
            case, compromises_of(self.store, {minion_id}), self.store.all("incidents")
        )
        key = iemkey_cleanup.key(minion_id, old)
        return (key, case) if self.store.add("cases", key, case) else (None, self.store.get("cases", key))

    def settle_owed(self, minion_id, case, received):
        """Settle ``minion_id``'s owed rotation with the rotation ``case`` records: what became of it
        (None when nothing was owed)."""
        rotated_at = case["rotated_at"]
        now, by = self.now(), "iemkey/rotated"
        if self.store.get("owed", minion_id) is None:
            return None
        with self.store.update("owed", minion_id) as record:
            if not record:
                return None
            done, left = iemkey_owed.settle(record, rotated_at, received)
            if not done:
                outcome = (
                    f"not settled: this rotation ({rotated_at}) was made before the compromise signal "
                    f"({record['since']}); a rotation is still owed"
                )
                record.update(exact=True)
                if record.get("returned") and record["state"] == "delivered":  # its job is over: ask again
                    again = {**record, "next_try": now.isoformat()}
                    record.update(iemkey_owed.move(again, "pending", outcome, now, by))
                return {"settled": False, "detail": outcome}
            rotation = {
                "old_computer_id": case["old_computer_id"],
                "rotated_at": rotated_at,
                "received": iemkey_cleanup.parse(received).isoformat(),
            }
            detail = f"settled by the rotation at {rotated_at} (old computer {case['old_computer_id']})"
            closed = iemkey_owed.closed({**record, "signals": done}, "settled", detail, now, by, rotation)
            # the trail first: a master dying between the two writes leaves it owed, never lost
            self.store.put("settled", iemkey_owed.settled_key(closed, now), closed)
            if left:
                record.update(iemkey_owed.remaining(record, left, now, by))
            else:
                record.clear()
        with self.store.update("compromises", minion_id) as compromise:
            if compromise:
                compromise["rotated"] = {"rotated_at": rotated_at, "received": closed["rotation"]["received"]}
        log.warning("iemkey: %s's owed rotation is settled: %s", minion_id, detail)
        return {"settled": True, "detail": detail, "still_owed": bool(left)}

    def no_agent(self, minion_id, received):
        """A minion's signed word that it has no BigFix agent, sent when asked for an owed rotation:
        nothing to rotate there, so the owed rotation is closed as such."""
        now = self.now()
        with self.store.update("owed", minion_id) as record:
            if not record:
                return None
            detail = "the minion has no BigFix agent: nothing to rotate"
            closed = iemkey_owed.closed(record, "no_agent", detail, now, "iemkey/rotated", None)
            self.store.put("settled", iemkey_owed.settled_key(closed, now), closed)
            record.clear()
        log.warning(
            "iemkey: %s's owed rotation is closed: it has no BigFix agent (signed, received %s)", minion_id, received
        )
        return {"settled": True, "detail": closed["detail"]}


def write_case(store, key, before, after):
    """Store a decided case, unless something changed it meanwhile (an operator dismissed it)."""
    with store.update("cases", key) as stored:
        if stored.get("status") != before["status"] or stored.get("detail") != before["detail"]:
            return False
        stored.clear()
        stored.update(after)
    return True
