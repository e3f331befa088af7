"""
The first look at an iemkey event on the master: what cannot be genuine costs a check, and nothing
more.

Any minion can put any event on the master bus, in any number (batched ``_minion_event``). So before
anything is decided:

- a signed minion event (``iemkey/compromised``, ``iemkey/rotated``) is verified, once, with the key
  the master accepted for its signer (``iemkey_auth.verify_event``): no signature, a signer the
  master has not accepted, a signature that does not verify, an event older than ``max_age`` or
  further ahead than ``max_skew`` when the master received it (the bus's ``_stamp``), or one arriving
  as from another minion is refused;
- what one minion may make the master do is bounded: at most ``iemkey:reactor:rate`` verified events
  of each tag per signer per minute go on (its alerts never crowd out its rotations);
- a webhook event that a minion put on the bus (salt-api's carry no minion id) is refused; its HMAC is
  checked once, by the decision (``iemkey_react``), which knows the secret;
- refusals are logged as they come for the first few of each kind, then as counts per interval
  (``iemkey: refused N more ...``), never one line per event of a flood.

State lives in a ``Gate`` (the rate windows and refusal counts of one process: the engine's).
"""

import collections
import logging
import threading
import time

try:
    import iemkey_auth
    import iemkey_config
except ImportError:
    from saltext.iemkey.utils import iemkey_auth, iemkey_config

log = logging.getLogger(__name__)

COMPROMISED_TAG = "iemkey/compromised"
ROTATED_TAG = "iemkey/rotated"
HOOK_TAG = "salt/netapi/hook/iemkey/compromised"
SIGNED_TAGS = (COMPROMISED_TAG, ROTATED_TAG)
LOUD = 5  # refusals of one kind logged line by line per interval; the rest are counted
INTERVAL = 10  # seconds between two count lines

Refused = iemkey_auth.Refused


def hook_event(data):
    """The parts of salt-api's ``salt/netapi/hook/...`` event iemkey reads: the body, the signature
    header, and whether a minion put it on the bus (salt-api's own events carry no minion id)."""
    headers = data.get("headers") if isinstance(data.get("headers"), dict) else {}
    wanted = iemkey_auth.HOOK_SIGNATURE.lower()
    signature = next((v for k, v in headers.items() if str(k).lower() == wanted), None)
    return {"body": data.get("body"), "signature": signature, "from_minion": "id" in data or "cmd" in data}


class Gate:
    """The rate windows and refusal counts of one process."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.lock = threading.Lock()
        self.recent = collections.defaultdict(collections.deque)  # (signer, tag) -> monotonic times admitted
        self.counts = collections.Counter()  # (tag, source, reason) -> refusals this interval
        self.interval_start = clock()

    def admit(self, tag, event, opts, received):
        """The verified (minion id, payload, signed time, nonce) of a signed minion event, or None for
        a webhook from salt-api (checked by the decision); Refused with the reason otherwise.
        ``received``: when the master received it (aware datetime)."""
        if tag == HOOK_TAG:
            if event.get("from_minion"):
                raise Refused("it was sent by a minion, not by salt-api")
            return None
        if tag not in SIGNED_TAGS:
            raise Refused(f"its tag is not {COMPROMISED_TAG}, {ROTATED_TAG} or {HOOK_TAG}")
        verified = iemkey_auth.verify_event(
            tag,
            event,
            opts,
            received,
            iemkey_config.reactor(opts, "max_age"),
            iemkey_config.reactor(opts, "max_skew"),
        )
        self._within_rate(verified[0], iemkey_config.reactor(opts, "rate"), tag)
        return verified

    def _within_rate(self, signer, rate, tag="iemkey/compromised"):
        with self.lock:
            times, now = self.recent[(signer, tag)], self.clock()
            while times and now - times[0] > 60:
                times.popleft()
            if len(times) >= rate:
                raise Refused(
                    f"{signer!r} sent more than {rate:g} signed {tag} events in a minute (iemkey:reactor:rate)"
                )
            times.append(now)
            if len(self.recent) > 100_000:  # a flood of distinct signers: forget the idle windows
                for idle in [s for s, t in self.recent.items() if not t or now - t[-1] > 60]:
                    del self.recent[idle]

    def refused(self, tag, claimed, reason, level=logging.WARNING):
        """One line for each of the first ``LOUD`` refusals of a kind (tag, claimed sender, reason) per
        interval, then counts."""
        source = f"as from {claimed!r}" if isinstance(claimed, str) else "from salt-api"
        kind = (tag, source, reason)
        with self.lock:
            self.flush()
            self.counts[kind] += 1
            loud = self.counts[kind] <= LOUD
        if loud:
            log.log(level, "iemkey: refusing %s event (%s), acting on nothing: %s", tag, source, reason)

    def flush(self, force=False):
        """Log the counts of the refusals beyond ``LOUD`` once an interval has passed."""
        now = self.clock()
        if not force and now - self.interval_start < INTERVAL:
            return
        for (tag, source, reason), count in sorted(self.counts.items()):
            if count > LOUD:
                log.warning(
                    "iemkey: refused %d more %s events (%s) in the last %.0f s, acting on nothing: %s",
                    count - LOUD,
                    tag,
                    source,
                    now - self.interval_start,
                    reason,
                )
        self.counts.clear()
        self.interval_start = now
