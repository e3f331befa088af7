"""Signed events (_utils/iemkey_auth.py): what verifies, and every way a forgery is refused."""

import datetime

import iemkey_auth
import pytest
from cryptography.hazmat.primitives import serialization
from helpers import rsa_key_pair

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
TAG = "iemkey/compromised"


ALPHA, BETA = rsa_key_pair(), rsa_key_pair()


def _verify(data, public=ALPHA[1], now=NOW, tag=TAG):
    return iemkey_auth.verify(tag, data, public, now, max_age=300, max_skew=60)


def test_a_signed_event_verifies_and_yields_its_signer_payload_and_time():
    data = iemkey_auth.sign(TAG, "alpha", {"reason": "ids", "ids": (1, 2)}, ALPHA[0], now=NOW)
    assert iemkey_auth.signer(data) == "alpha"
    minion_id, payload, signed_at, nonce = _verify(data)
    assert (minion_id, payload, signed_at) == ("alpha", {"reason": "ids", "ids": [1, 2]}, NOW)
    assert len(nonce) == 32


def test_the_pkcs1_public_key_format_older_salt_wrote_verifies_too():
    data = iemkey_auth.sign(TAG, "alpha", {}, ALPHA[0], now=NOW)
    pkcs1 = serialization.load_pem_public_key(ALPHA[1]).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
    assert _verify(data, public=pkcs1)[0] == "alpha"


def _refused(data, match, **kwargs):
    with pytest.raises(iemkey_auth.Refused, match=match):
        _verify(data, **kwargs)


def test_unsigned_data_is_refused():
    for data in ({"reason": "x"}, None, "text", {iemkey_auth.SIGNATURE: "not a dict"}):
        _refused(data, "it is not signed")


def test_another_minions_key_does_not_verify_a_claim_to_be_alpha():
    lying = iemkey_auth.sign(TAG, "alpha", {"reason": "x"}, BETA[0], now=NOW)
    _refused(lying, "does not verify with the accepted key of 'alpha'")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: d.update(reason="changed"), "does not verify"),
        (lambda d: d.update(extra=1), "does not verify"),
        (lambda d: d[iemkey_auth.SIGNATURE].update(id="beta"), "does not verify"),
        (lambda d: d[iemkey_auth.SIGNATURE].update(time="2026-11-27T12:00:01+00:00"), "does not verify"),
        (lambda d: d[iemkey_auth.SIGNATURE].update(nonce="0" * 32), "does not verify"),
        (lambda d: d[iemkey_auth.SIGNATURE].update(sig="AAAA"), "does not verify"),
        (lambda d: d[iemkey_auth.SIGNATURE].update(sig="not base64!"), "malformed"),
        (lambda d: d[iemkey_auth.SIGNATURE].update(alg="RSA-PKCS1v15-SHA1"), "unknown kind"),
        (lambda d: d[iemkey_auth.SIGNATURE].update(v=2), "unknown kind"),
        (lambda d: d[iemkey_auth.SIGNATURE].update(id="*"), "no valid minion id"),
        (lambda d: d[iemkey_auth.SIGNATURE].update(id="../minions/x"), "no valid minion id"),
        (lambda d: d[iemkey_auth.SIGNATURE].update(nonce="xyz"), "nonce is malformed"),
        (lambda d: d[iemkey_auth.SIGNATURE].update(time="yesterday"), "malformed"),
    ],
)
def test_any_change_to_a_signed_event_is_refused(change, match):
    data = iemkey_auth.sign(TAG, "alpha", {"reason": "ids"}, ALPHA[0], now=NOW)
    change(data)
    _refused(data, match)


def test_a_signature_for_one_tag_is_refused_for_another():
    data = iemkey_auth.sign("iemkey/compromised", "alpha", {"old_computer_id": "1"}, ALPHA[0], now=NOW)
    _refused(data, "does not verify", tag="iemkey/rotated")


def test_a_minion_the_master_has_not_accepted_is_refused():
    data = iemkey_auth.sign(TAG, "alpha", {}, ALPHA[0], now=NOW)
    _refused(data, "'alpha' is not an accepted minion", public=None)


def test_stale_and_future_events_are_refused_and_the_edges_accepted():
    data = iemkey_auth.sign(TAG, "alpha", {}, ALPHA[0], now=NOW)
    assert _verify(data, now=NOW + datetime.timedelta(seconds=300))
    _refused(data, "signed 301 s ago, more than 300 s", now=NOW + datetime.timedelta(seconds=301))
    assert _verify(data, now=NOW - datetime.timedelta(seconds=60))
    _refused(data, "61 s in the future", now=NOW - datetime.timedelta(seconds=61))


def test_a_payload_that_is_not_plain_json_is_refused():
    data = iemkey_auth.sign(TAG, "alpha", {}, ALPHA[0], now=NOW)
    data["blob"] = b"\x00"
    _refused(data, "not plain JSON")
