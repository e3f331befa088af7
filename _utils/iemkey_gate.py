"""
The reactor's first look at an iemkey event, before it costs a runner reaction.

Salt's reactor renders each reaction in its one event loop and queues runner reactions for a pool
of worker threads (``reactor_worker_threads``, 10), dropping them once ``reactor_worker_hwm``
(10,000) wait: a rooted minion's flood of events, each costing a queued runner reaction, can get
other minions' genuine alerts dropped or delayed by minutes. So the ``#!py`` reactor files ask
this module first, in the reactor process:

- what cannot be genuine is refused right there, for the price of a check: no signature envelope,
  a signer the master has not accepted, a signature that does not verify, an event older than
  ``max_age`` or further ahead than ``max_skew`` when the master received it (the bus's
  ``_stamp``), a webhook without a valid timed HMAC;
- what one minion may make the master do is bounded: at most ``iemkey:reactor:rate`` verified
  events per signer per minute go on to the runner;
- refusals are logged as they come for the first few of each kind, then as counts per interval
  (``iemkey reactor: refused N more ...``), never one line per event of a flood.

What passes is decided right here, in the reactor process, by ``iemkey_react`` (what ``salt-run
iemkey.react`` runs): it checks everything again, claims the nonce (a replay is refused there) and
acts. No runner reaction is queued: Salt stores each runner job in its job cache, and storing one
matches its target against every accepted key, O(fleet) per reaction. State lives in this module,
which the reactor process imports once (``sys.modules``): the rate windows, the refusal counts,
the store and one kept LocalClient.
"""

import collections
import hashlib
import hmac
import logging
import os
import threading
import time

try:
    import iemkey_auth
except ImportError:
    from saltext.iemkey.utils import iemkey_auth

log = logging.getLogger(__name__)

COMPROMISED_TAG = "iemkey/compromised"
HOOK_TAG = "salt/netapi/hook/iemkey/compromised"
DEFAULTS = {"rate": 10, "max_age": 300, "max_skew": 60}
LOUD = 5  # refusals of one kind logged line by line per interval; the rest are counted
INTERVAL = 10  # seconds between two count lines


def setting(opts, key):
    value = ((opts.get("iemkey") or {}).get("reactor") or {}).get(key)
    try:
        number = float(DEFAULTS[key] if value in (None, "") else value)
    except (TypeError, ValueError):
        number = float(DEFAULTS[key])
        log.error("iemkey reactor: iemkey:reactor:%s must be a number, not %r; using %g", key, value, number)
    return number


def accepted_key(opts, minion_id):
    """The public key the master accepted for ``minion_id`` (PEM bytes), or None."""
    import salt.cache
    import salt.utils.verify

    if not iemkey_auth.MINION_ID.fullmatch(minion_id) or not salt.utils.verify.valid_id(opts, minion_id):
        return None
    driver = opts.get("keys.cache_driver")
    if driver:  # Salt 3008 keeps minion keys behind a cache driver (localfs_key by default)
        try:
            found = salt.cache.Cache(opts, driver=driver).fetch("keys", minion_id)
        except Exception as exc:  # pylint: disable=broad-except
            log.debug("iemkey: the keys cache could not answer for %s (%s); reading pki_dir", minion_id, exc)
        else:
            accepted = isinstance(found, dict) and found.get("state") == "accepted" and found.get("pub")
            return found["pub"].encode() if accepted else None
    pki_dir = opts.get("cluster_pki_dir") if opts.get("cluster_id") else opts["pki_dir"]
    path = os.path.join(pki_dir, "minions", minion_id)
    if os.path.islink(path) or not os.path.isfile(path):
        return None
    with open(path, "rb") as handle:
        return handle.read()


class Refused(Exception):
    """Not genuine, or over its rate: the message is the reason."""


def signed(tag, event, opts, now, max_age, max_skew):
    """(minion id, payload, signed time, nonce) of a minion's event signed with the key the master
    accepted for it, no older than ``max_age`` at ``now`` (when the master received it) and arriving
    as from its signer; Refused otherwise."""
    data = event.get("data")
    envelope_id = iemkey_auth.signer(data)
    key = accepted_key(opts, envelope_id) if envelope_id else None
    try:
        minion_id, payload, signed_at, nonce = iemkey_auth.verify(tag, data, key, now, max_age, max_skew)
    except iemkey_auth.Refused as exc:
        hint = " (a detector sends it with `salt-call iemkey.alert`)" if tag == COMPROMISED_TAG else ""
        if envelope_id and key is None and opts.get("order_masters"):
            hint = (
                ": this is a master of masters (order_masters), whose key registry holds only its syndics; "
                "iemkey's reactors and runner run on the masters (syndics) that accepted the minions"
            )
        raise Refused(f"{exc}{hint}") from None
    claimed = event.get("id")
    if claimed is not None and claimed != minion_id:
        raise Refused(f"it is signed by {minion_id!r} but arrived as from {claimed!r}")
    return minion_id, payload, signed_at, nonce


class Gate:
    """The rate windows and refusal counts of one reactor process."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.lock = threading.Lock()
        self.recent = collections.defaultdict(collections.deque)  # signer -> monotonic times admitted
        self.counts = collections.Counter()  # (tag, reason) -> refusals this interval
        self.interval_start = clock()

    def admit(self, tag, event, opts, now):
        """None when ``event`` may go on to the runner; else the reason it may not. ``now``: when the
        master received it (aware datetime)."""
        try:
            if tag == HOOK_TAG:
                self._webhook(event, opts, now)
                return None
            signer = self._signed(tag, event, opts, now)
            self._within_rate(signer, opts)
        except Refused as exc:
            self.refused(tag, event.get("id"), str(exc))
            return str(exc)
        return None

    def _signed(self, tag, event, opts, now):
        minion_id, _payload, _when, _nonce = signed(
            tag, event, opts, now, setting(opts, "max_age"), setting(opts, "max_skew")
        )
        return minion_id

    def _within_rate(self, signer, opts):
        rate = setting(opts, "rate")
        with self.lock:
            times, now = self.recent[signer], self.clock()
            while times and now - times[0] > 60:
                times.popleft()
            if len(times) >= rate:
                raise Refused(
                    f"{signer!r} sent more than {rate:g} signed iemkey events in a minute (iemkey:reactor:rate)"
                )
            times.append(now)

    def _webhook(self, event, opts, now):
        if event.get("from_minion"):
            raise Refused("it was sent by a minion, not by salt-api")
        secret = ((opts.get("iemkey") or {}).get("reactor") or {}).get("hook_secret")
        if secret in (None, "") or (isinstance(secret, str) and secret.startswith("sdb://")):
            return  # unset, or an sdb URI only the runner resolves: the runner says which, once per event
        body = event.get("body")
        body = body.encode() if isinstance(body, str) else body
        header = event.get("signature")
        fields = dict(p.strip().partition("=")[::2] for p in header.split(",")) if isinstance(header, str) else {}
        stamp = fields.get("t", "")
        if not isinstance(body, bytes) or not stamp.isdigit() or len(stamp) > 12:
            raise Refused("its body is not signed with iemkey:reactor:hook_secret (X-Iemkey-Signature)")
        expected = hmac.new(str(secret).encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(fields.get("sha256", "").encode(), expected.encode()):
            raise Refused("its body is not signed with iemkey:reactor:hook_secret (X-Iemkey-Signature)")
        age = now.timestamp() - int(stamp)
        if age > setting(opts, "max_age") or age < -setting(opts, "max_skew"):
            raise Refused(f"it was signed {age:.0f} s from when the master received it (iemkey:reactor:max_age)")

    def refused(self, tag, claimed, reason):
        """One line for each of the first ``LOUD`` refusals of a kind (tag, claimed sender, reason) per
        interval, then counts."""
        source = f"as from {claimed!r}" if isinstance(claimed, str) else "from salt-api"
        kind = (tag, source, reason)
        with self.lock:
            self._flush()
            self.counts[kind] += 1
            loud = self.counts[kind] <= LOUD
        if loud:
            log.warning("iemkey reactor: refusing %s event (%s), acting on nothing: %s", tag, source, reason)

    def _flush(self, force=False):
        now = self.clock()
        if not force and now - self.interval_start < INTERVAL:
            return
        for (tag, source, reason), count in sorted(self.counts.items()):
            if count > LOUD:
                log.warning(
                    "iemkey reactor: refused %d more %s events (%s) in the last %.0f s, acting on nothing: %s",
                    count - LOUD,
                    tag,
                    source,
                    now - self.interval_start,
                    reason,
                )
        self.counts.clear()
        self.interval_start = now


GATE = Gate()


def reaction(tag, data, opts):
    """What the reactor files return for an iemkey event: always nothing for Salt to run. What passes
    the gate is decided (and its rotation job published) here; what does not is refused here."""
    import datetime

    if data.get("__peer_id"):
        # a master cluster re-publishes each event on every peer, adding __peer_id: the master that
        # received it from the minion (or salt-api) decides; its peers act on nothing
        log.debug("iemkey reactor: %s event from cluster peer %s: its receiving master decides", tag, data["__peer_id"])
        return {}
    if tag == HOOK_TAG:
        headers = data.get("headers") if isinstance(data.get("headers"), dict) else {}
        signature = next((v for k, v in headers.items() if str(k).lower() == "x-iemkey-signature"), None)
        # salt-api's own events carry no minion id; one that does was put on the bus by a minion
        event = {"body": data.get("body"), "signature": signature, "from_minion": "id" in data or "cmd" in data}
    else:
        event = {"id": data.get("id"), "data": data.get("data")}
    # when the master received it: its bus stamps every event it fires, whatever a minion sent
    event["stamp"] = data.get("_stamp")
    try:
        received = datetime.datetime.fromisoformat(str(event["stamp"]))
        if received.tzinfo is None:  # Salt 3006 stamps naive UTC
            received = received.replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        received = datetime.datetime.now(datetime.timezone.utc)
    if GATE.admit(tag, event, opts, received) is None:
        decide(opts, tag, event)
    return {}  # decided here: no runner reaction for Salt to queue and store


_HERE = {"reactions": None, "opts": None}


def decide(opts, tag, event):
    """The decision (``iemkey_react``), made in this reactor process with one store and one kept
    LocalClient; what ``salt-run iemkey.react`` would decide."""
    import salt.utils.sdb

    try:
        import iemkey_react
        import iemkey_store
    except ImportError:
        from saltext.iemkey.utils import iemkey_react, iemkey_store

    if _HERE["reactions"] is None or _HERE["opts"] is not opts:
        try:
            store = iemkey_store.from_opts(opts, resolve=lambda uri: salt.utils.sdb.sdb_get(uri, opts))
        except iemkey_store.StoreError as exc:
            log.error("iemkey reactor: %s event not acted on: %s", tag, exc)
            return None
        publish = iemkey_react.Publisher(opts)
        reactions = iemkey_react.Reactions(opts, store, publish, resolve=lambda uri: salt.utils.sdb.sdb_get(uri, opts))
        _HERE.update(opts=opts, reactions=reactions, bus=None)
    try:
        decided = _HERE["reactions"].handle(tag, event)
    except iemkey_store.StoreError as exc:  # a shared store unreachable for longer than its wait
        decided = {"tag": tag, "id": event.get("id"), "action": "error", "error": str(exc)}
        log.error("iemkey reactor: %s event from %s NOT decided, send it again: %s", tag, event.get("id"), exc)
    announce(opts, decided)
    return decided


DECIDED_TAG = "iemkey/reactor/decided"


def announce(opts, decided):
    """Put the decision on the master bus (``iemkey/reactor/decided``), for whoever watches it
    (``salt-run state.event``, a SIEM, the tests): what a runner reaction's return used to tell.
    It holds no secret; it is information, and nothing acts on it."""
    import salt.utils.event

    try:
        if _HERE.get("bus") is None:
            _HERE["bus"] = salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=False)
        _HERE["bus"].fire_event(dict(decided), DECIDED_TAG)
    except Exception as exc:  # pylint: disable=broad-except
        _HERE["bus"] = None
        log.debug("iemkey reactor: could not announce the decision: %s", exc)
