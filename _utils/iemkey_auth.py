"""
Signed iemkey events: what a minion signs with its own Salt key, and how the master checks it.

Any minion can put any event, ``id`` included, on the master's bus (batched
``_minion_event``), so the master acts on a minion event only when it carries proof
that the named minion sent it. The minion signs a canonical encoding of (tag, minion
id, payload, time, nonce) with ``<pki_dir>/minion.pem``; the master verifies it with
the key it accepted for that id, refuses it when stale or from the future, and
remembers its nonce so a replay is refused too.

Also the webhook's timed HMAC (``check_webhook``): a SIEM signs ``<t>.<body>`` with the secret it
shares with the master. Pure functions: callers pass keys, clocks and limits in (``accepted_key``
reads the key the master accepted, with Salt's own cache). Used by the ``iemkey`` execution module
(signing) and the master's engine and runner (verifying), each event verified once.
"""

import base64
import binascii
import datetime
import hashlib
import hmac
import json
import logging
import os
import re
import secrets

try:  # _utils/, synced with saltutil.sync_all (formula install)
    import iemkey_errors
except ImportError:  # pip install (Salt extension)
    from saltext.iemkey.utils import iemkey_errors

SIGNATURE = "iemkey_sig"  # the envelope's key in the event data
VERSION = 1
ALGORITHM = "RSA-PKCS1v15-SHA256"
# One minion id: what Salt's key directory can hold and a target can never widen.
MINION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
UTC = datetime.timezone.utc
HOOK_SIGNATURE = "X-Iemkey-Signature"
HOOK_FORM = "X-Iemkey-Signature: t=<unix time>,sha256=<HMAC-SHA256 of '<t>.<body>'>"

log = logging.getLogger(__name__)


class Refused(iemkey_errors.IemkeyError):
    """The event proves nothing; the message says why (one line for the master log)."""


def canonical(tag, minion_id, payload, when, nonce):
    """The bytes that are signed: stable across Salt versions, transports and dict order."""
    document = {"v": VERSION, "tag": tag, "id": minion_id, "time": when, "nonce": nonce, "payload": payload}
    try:
        text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise Refused(f"its payload is not plain JSON data ({exc})") from None
    return text.encode("ascii")


def _crypto():
    # cryptography ships with every Salt since 3006 (onedir and pip)
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    return InvalidSignature, hashes, serialization, padding


_PARSED = {}  # PEM bytes -> parsed key, for this process (a minion's job, the master's reactor)


def _parsed(pem, load):
    key = _PARSED.get(pem)
    if key is None:
        if len(_PARSED) > 64:
            _PARSED.clear()
        key = _PARSED[pem] = load(pem)
    return key


def _load_private(pem):
    from cryptography.hazmat.primitives import serialization

    try:  # the minion's own key, made by Salt: re-checking its primes costs ~35 ms and proves nothing here
        return serialization.load_pem_private_key(pem, password=None, unsafe_skip_rsa_key_validation=True)
    except TypeError:  # cryptography < 39 has no such switch
        return serialization.load_pem_private_key(pem, password=None)


def sign(tag, minion_id, payload, private_key_pem, now=None):
    """``payload`` plus the signature envelope, ready for ``event.send``."""
    _invalid, hashes, _serialization, padding = _crypto()
    payload = json.loads(json.dumps(payload))  # exactly what will arrive: lists, not tuples
    when = (now or datetime.datetime.now(UTC)).astimezone(UTC).isoformat()
    nonce = secrets.token_hex(16)
    key = _parsed(private_key_pem, _load_private)
    signature = key.sign(canonical(tag, minion_id, payload, when, nonce), padding.PKCS1v15(), hashes.SHA256())
    envelope = {
        "v": VERSION,
        "alg": ALGORITHM,
        "id": minion_id,
        "time": when,
        "nonce": nonce,
        "sig": base64.b64encode(signature).decode("ascii"),
    }
    return {**payload, SIGNATURE: envelope}


def envelope_of(data):
    """(envelope, payload) of signed event data; Refused when it carries no signature."""
    if not isinstance(data, dict) or not isinstance(data.get(SIGNATURE), dict):
        raise Refused("it is not signed")
    payload = {key: value for key, value in data.items() if key != SIGNATURE}
    return data[SIGNATURE], payload


def signer(data):
    """The minion id an event says signed it (not yet verified), or None."""
    try:
        envelope, _payload = envelope_of(data)
    except Refused:
        return None
    minion_id = envelope.get("id")
    return minion_id if isinstance(minion_id, str) and MINION_ID.fullmatch(minion_id) else None


def verify(tag, data, public_key_pem, now, max_age, max_skew):
    """Check a signed event; its (minion id, payload, signed time, nonce), or Refused with the reason.

    public_key_pem
        The key the master accepted for the minion the envelope names (the caller
        looks it up with ``signer``); None when that minion is not accepted.
    now
        The master's clock (aware datetime). The signed time must lie within
        ``max_age`` seconds before it and ``max_skew`` seconds after it.
    """
    envelope, payload = envelope_of(data)
    if envelope.get("v") != VERSION or envelope.get("alg") != ALGORITHM:
        raise Refused(f"its signature is of an unknown kind (v={envelope.get('v')!r}, alg={envelope.get('alg')!r})")
    minion_id, when, nonce = envelope.get("id"), envelope.get("time"), envelope.get("nonce")
    if not isinstance(minion_id, str) or not MINION_ID.fullmatch(minion_id):
        raise Refused(f"it names no valid minion id ({minion_id!r})")
    if not isinstance(nonce, str) or not re.fullmatch(r"[0-9a-f]{32}", nonce):
        raise Refused("its nonce is malformed")
    if public_key_pem is None:
        raise Refused(f"{minion_id!r} is not an accepted minion")
    try:
        signed_at = datetime.datetime.fromisoformat(str(when))
        signature = base64.b64decode(str(envelope.get("sig")), validate=True)
    except (ValueError, binascii.Error):
        raise Refused("its time or signature is malformed") from None
    if signed_at.tzinfo is None:
        raise Refused("its time has no zone")
    invalid, hashes, serialization, padding = _crypto()
    try:
        key = _parsed(public_key_pem, serialization.load_pem_public_key)
        key.verify(signature, canonical(tag, minion_id, payload, when, nonce), padding.PKCS1v15(), hashes.SHA256())
    except (invalid, ValueError, TypeError):
        raise Refused(f"its signature does not verify with the accepted key of {minion_id!r}") from None
    check_age(signed_at, now, max_age, max_skew)
    return minion_id, payload, signed_at, nonce


def check_age(signed_at, now, max_age, max_skew):
    """Refused unless ``signed_at`` is at most ``max_age`` seconds before ``now`` and at most
    ``max_skew`` seconds after it, each refusal naming its setting."""
    age = (now - signed_at).total_seconds()
    if age > max_age:
        raise Refused(f"it was signed {age:.0f} s ago, more than {max_age:g} s (iemkey:reactor:max_age)")
    if age < -max_skew:
        raise Refused(
            f"it was signed {-age:.0f} s in the future, more than {max_skew:g} s ahead of the master's clock "
            "(iemkey:reactor:max_skew)"
        )


_KEY_CACHES = {}  # (id of the opts, driver) -> salt.cache.Cache: making one loads its driver (~1 ms)


def _key_cache(opts, driver, cache_class):
    """One Salt cache object per master opts and driver. It keeps no data: every fetch reads the
    key as it is now, so a key deleted or rejected is refused at once."""
    found = _KEY_CACHES.get((id(opts), driver))
    if found is None or found[0] is not opts:
        found = _KEY_CACHES[(id(opts), driver)] = (opts, cache_class(opts, driver=driver))
    return found[1]


def accepted_key(opts, minion_id):
    """The public key the master accepted for ``minion_id`` (PEM bytes), or None."""
    import salt.cache  # pylint: disable=import-outside-toplevel
    import salt.utils.verify  # pylint: disable=import-outside-toplevel

    if not isinstance(minion_id, str) or not MINION_ID.fullmatch(minion_id):
        return None
    if not salt.utils.verify.valid_id(opts, minion_id):
        return None
    driver = opts.get("keys.cache_driver")
    if driver:  # Salt 3008 keeps minion keys behind a cache driver (localfs_key by default)
        try:
            found = _key_cache(opts, driver, salt.cache.Cache).fetch("keys", minion_id)
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


def verify_event(tag, event, opts, now, max_age, max_skew):
    """(minion id, payload, signed time, nonce) of a minion's event (``{"id": ..., "data": ...}``)
    signed with the key the master accepted for its signer, judged at ``now`` (when the master
    received it) and arriving as from its signer; Refused otherwise, with the reason."""
    data = event.get("data")
    envelope_id = signer(data)
    key = accepted_key(opts, envelope_id) if envelope_id else None
    try:
        minion_id, payload, signed_at, nonce = verify(tag, data, key, now, max_age, max_skew)
    except Refused as exc:
        hint = " (a detector sends it with `salt-call iemkey.alert`)" if tag == "iemkey/compromised" else ""
        if envelope_id and key is None and opts.get("order_masters"):
            hint = (
                ": this is a master of masters (order_masters), whose key registry holds only its syndics; "
                "iemkey runs on the masters (syndics) that accepted the minions"
            )
        raise Refused(f"{exc}{hint}") from None
    claimed = event.get("id")
    if claimed is not None and claimed != minion_id:
        raise Refused(f"it is signed by {minion_id!r} but arrived as from {claimed!r}")
    return minion_id, payload, signed_at, nonce


def webhook_fields(header):
    """(t, hex digest) of ``X-Iemkey-Signature: t=<unix>,sha256=<hex>``; Refused for anything else."""
    parts = header.split(",") if isinstance(header, str) else []
    fields = dict(part.strip().partition("=")[::2] for part in parts)
    stamp, digest = fields.get("t", ""), fields.get("sha256", "")
    if not re.fullmatch(r"[0-9]{1,12}", stamp) or not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise Refused(f"its body is not signed with iemkey:reactor:hook_secret ({HOOK_FORM})")
    return stamp, digest


def check_webhook(secret, header, body, now, max_age, max_skew):
    """(hex digest, signed time) of a webhook whose ``X-Iemkey-Signature`` is the HMAC-SHA256 of
    ``<t>.<body>`` with ``secret`` (bytes), signed no more than ``max_age`` seconds before ``now``
    (when the master received it) nor more than ``max_skew`` after; Refused otherwise. The one check
    of a webhook's signature."""
    body = body.encode() if isinstance(body, str) else body
    if not isinstance(body, bytes):
        raise Refused("its body is not signed with iemkey:reactor:hook_secret (it has no body)")
    stamp, digest = webhook_fields(header)
    expected = hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(digest.encode(), expected.encode()):
        raise Refused(f"its body is not signed with iemkey:reactor:hook_secret ({HOOK_FORM})")
    signed_at = datetime.datetime.fromtimestamp(int(stamp), UTC)
    check_age(signed_at, now, max_age, max_skew)
    return digest, signed_at
