"""Signed events (_utils/iemkey_auth.py): what verifies, and every way a forgery is refused."""

import datetime

import iemkey_auth
import pytest
from cryptography.hazmat.primitives import serialization
from helpers import hook_signature, rsa_key_pair

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
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    )
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


# -- the wire format: a master and its minions may run different iemkey versions ------------------
def test_the_signed_bytes_are_fixed():
    signed = iemkey_auth.canonical(TAG, "alpha", {"reason": "é", "n": [1, 2]}, "2026-11-27T12:00:00+00:00", "0" * 32)
    assert signed == (
        b'{"id":"alpha","nonce":"00000000000000000000000000000000","payload":{"n":[1,2],'
        b'"reason":"\\u00e9"},"tag":"iemkey/compromised","time":"2026-11-27T12:00:00+00:00","v":1}'
    )


def test_the_envelope_is_fixed():
    data = iemkey_auth.sign(TAG, "alpha", {"reason": "ids"}, ALPHA[0], now=NOW)
    assert set(data) == {"reason", "iemkey_sig"}
    envelope = data["iemkey_sig"]
    assert set(envelope) == {"v", "alg", "id", "time", "nonce", "sig"}
    assert (envelope["v"], envelope["alg"], envelope["id"], envelope["time"]) == (
        1,
        "RSA-PKCS1v15-SHA256",
        "alpha",
        "2026-11-27T12:00:00+00:00",
    )


def _tampered(**envelope):
    data = iemkey_auth.sign(TAG, "alpha", {"reason": "ids"}, ALPHA[0], now=NOW)
    data["iemkey_sig"].update(envelope)
    return data


@pytest.mark.parametrize(
    ("data", "public", "reason"),
    [
        (_tampered(v=2), ALPHA[1], "its signature is of an unknown kind (v=2, alg='RSA-PKCS1v15-SHA256')"),
        (_tampered(alg="HMAC"), ALPHA[1], "its signature is of an unknown kind (v=1, alg='HMAC')"),
        (_tampered(id="*"), ALPHA[1], "it names no valid minion id ('*')"),
        (_tampered(id=None), ALPHA[1], "it names no valid minion id (None)"),
        (_tampered(nonce="x"), ALPHA[1], "its nonce is malformed"),
        (_tampered(), None, "'alpha' is not an accepted minion"),
        (_tampered(time="yesterday"), ALPHA[1], "its time or signature is malformed"),
        (_tampered(sig="not base64!"), ALPHA[1], "its time or signature is malformed"),
        (_tampered(time="2026-11-27T12:00:00"), ALPHA[1], "its time has no zone"),
        (_tampered(), BETA[1], "its signature does not verify with the accepted key of 'alpha'"),
        ({"reason": "ids"}, ALPHA[1], "it is not signed"),
        ({"iemkey_sig": "text"}, ALPHA[1], "it is not signed"),
    ],
)
def test_each_refusal_says_exactly_why(data, public, reason):
    with pytest.raises(iemkey_auth.Refused) as err:
        _verify(data, public=public)
    assert str(err.value) == reason


def test_the_age_refusals_say_how_far_off_the_time_is():
    old = iemkey_auth.sign(TAG, "alpha", {}, ALPHA[0], now=NOW - datetime.timedelta(seconds=600))
    with pytest.raises(iemkey_auth.Refused) as err:
        _verify(old)
    assert str(err.value) == "it was signed 600 s ago, more than 300 s (iemkey:reactor:max_age)"
    ahead = iemkey_auth.sign(TAG, "alpha", {}, ALPHA[0], now=NOW + datetime.timedelta(seconds=120))
    with pytest.raises(iemkey_auth.Refused) as err:
        _verify(ahead)
    assert str(err.value) == (
        "it was signed 120 s in the future, more than 60 s ahead of the master's clock (iemkey:reactor:max_skew)"
    )


def test_a_payload_json_cannot_carry_is_refused_by_name():
    with pytest.raises(iemkey_auth.Refused) as err:
        iemkey_auth.canonical(TAG, "alpha", {"x": float("nan")}, "t", "n")
    assert str(err.value).startswith("its payload is not plain JSON data (Out of range float values")


@pytest.mark.parametrize("claimed", [None, 7, "*", "a b", ""])
def test_the_claimed_signer_must_be_one_minion_id(claimed):
    data = _tampered(id=claimed)
    assert iemkey_auth.signer(data) is None


# -- the webhook's timed HMAC: one check, at its edges --------------------------------------------
SECRET = b"hook-secret"
NOT_SIGNED = (
    "its body is not signed with iemkey:reactor:hook_secret "
    "(X-Iemkey-Signature: t=<unix time>,sha256=<HMAC-SHA256 of '<t>.<body>'>)"
)


def _hook_check(header, body=b'{"minion_id": "alpha"}', now=NOW):
    return iemkey_auth.check_webhook(SECRET, header, body, now, max_age=300, max_skew=60)


def test_a_webhook_signature_is_good_from_max_skew_ahead_to_max_age_old_and_no_further():
    t = int(NOW.timestamp())
    header = hook_signature(SECRET.decode(), '{"minion_id": "alpha"}', t)
    for offset, ok in ((300, True), (301, False), (-60, True), (-61, False), (0, True)):
        at = NOW + datetime.timedelta(seconds=offset)
        if ok:
            digest, signed_at = _hook_check(header, now=at)
            assert signed_at == NOW and header.endswith(digest)
        else:
            with pytest.raises(iemkey_auth.Refused):
                _hook_check(header, now=at)
    with pytest.raises(iemkey_auth.Refused) as err:
        _hook_check(header, now=NOW + datetime.timedelta(seconds=301))
    assert str(err.value) == "it was signed 301 s ago, more than 300 s (iemkey:reactor:max_age)"
    with pytest.raises(iemkey_auth.Refused) as err:  # issue 28: an hour ahead is max_skew, not max_age
        _hook_check(hook_signature(SECRET.decode(), '{"minion_id": "alpha"}', t + 3600))
    assert str(err.value) == (
        "it was signed 3600 s in the future, more than 60 s ahead of the master's clock (iemkey:reactor:max_skew)"
    )


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "sha256=" + "0" * 64,  # the untimed header earlier versions took
        "t=1795161600",
        "t=1000000000000,sha256=" + "0" * 64,  # 13 digits
        "t=17951616x0,sha256=" + "0" * 64,
        "t=1795161600,sha256=" + "0" * 63,
        "t=1795161600,sha256=" + "G" * 64,
    ],
)
def test_a_webhook_header_that_is_not_a_timed_hmac_is_unsigned(header):
    with pytest.raises(iemkey_auth.Refused) as err:
        _hook_check(header)
    assert str(err.value) == NOT_SIGNED


def test_a_webhook_signed_with_another_secret_or_over_another_body_is_unsigned():
    t = int(NOW.timestamp())
    for header, body in (
        (hook_signature("guessed", '{"minion_id": "alpha"}', t), b'{"minion_id": "alpha"}'),
        (hook_signature(SECRET.decode(), '{"minion_id": "alpha"}', t), b'{"minion_id": "beta"}'),
    ):
        with pytest.raises(iemkey_auth.Refused) as err:
            _hook_check(header, body=body)
        assert str(err.value) == NOT_SIGNED
    with pytest.raises(iemkey_auth.Refused) as err:
        _hook_check(hook_signature(SECRET.decode(), "x", t), body=None)
    assert str(err.value) == "its body is not signed with iemkey:reactor:hook_secret (it has no body)"
    assert _hook_check(hook_signature(SECRET.decode(), "x", t), body="x")[1] == NOW  # str bodies count as bytes


# -- the key the master accepted ------------------------------------------------------------------
@pytest.fixture
def master_opts(tmp_path):
    from runner_fakes import accepted_keys

    return {"pki_dir": accepted_keys(tmp_path)}


def test_on_salt_3008_the_accepted_key_comes_from_the_keys_cache_and_only_an_accepted_one(master_opts, monkeypatch):
    import pathlib

    import salt.cache
    from runner_fakes import KEYS

    records = {
        "alpha": {"state": "accepted", "pub": KEYS["alpha"][1].decode()},
        "beta": {"state": "pending", "pub": KEYS["beta"][1].decode()},
        "gamma": "not a record",
        "delta": {"state": "accepted", "pub": ""},
    }

    class Cache:
        def __init__(self, cache_opts, driver):
            assert driver == "localfs_key" and cache_opts is master_opts

        def fetch(self, bank, key):
            assert bank == "keys"
            if key == "broken":
                raise OSError("the cache is down")
            return records.get(key)

    monkeypatch.setattr(salt.cache, "Cache", Cache)
    master_opts["keys.cache_driver"] = "localfs_key"
    assert iemkey_auth.accepted_key(master_opts, "alpha") == KEYS["alpha"][1]
    assert [iemkey_auth.accepted_key(master_opts, m) for m in ("beta", "gamma", "delta", "nosuch")] == [None] * 4
    (pathlib.Path(master_opts["pki_dir"]) / "minions" / "broken").write_bytes(KEYS["beta"][1])
    assert iemkey_auth.accepted_key(master_opts, "broken") == KEYS["beta"][1]  # the cache failed: pki_dir says


def test_the_real_keys_cache_is_made_once_and_still_reads_each_key_as_it_is_now(tmp_path):
    """Salt 3008's localfs_key driver, as the master has it: a key replaced or rejected after the
    first look-up is seen at once (the cache object keeps no keys)."""
    import salt.config

    opts = salt.config.master_config(None)
    if not opts.get("keys.cache_driver"):
        pytest.skip("this Salt reads keys from pki_dir only")
    opts.update(pki_dir=str(tmp_path / "pki"), cachedir=str(tmp_path / "cache"), root_dir=str(tmp_path))
    (tmp_path / "pki" / "minions").mkdir(parents=True)
    accepted = tmp_path / "pki" / "minions" / "alpha"
    first, second = rsa_key_pair()[1], rsa_key_pair()[1]
    accepted.write_bytes(first)
    assert iemkey_auth.accepted_key(opts, "alpha") == first
    accepted.write_bytes(second)
    assert iemkey_auth.accepted_key(opts, "alpha") == second
    (tmp_path / "pki" / "minions_rejected").mkdir()
    accepted.rename(tmp_path / "pki" / "minions_rejected" / "alpha")  # salt-key -r: no longer accepted
    assert iemkey_auth.accepted_key(opts, "alpha") is None
    assert len([k for k in iemkey_auth._KEY_CACHES if k[0] == id(opts)]) == 1


def test_a_master_cluster_reads_the_clusters_pki_dir(master_opts, tmp_path):
    from runner_fakes import KEYS

    cluster = tmp_path / "cluster-pki"
    (cluster / "minions").mkdir(parents=True)
    (cluster / "minions" / "epsilon").write_bytes(KEYS["alpha"][1])
    assert iemkey_auth.accepted_key({**master_opts, "cluster_pki_dir": str(cluster)}, "epsilon") is None
    clustered = {**master_opts, "cluster_id": "c1", "cluster_pki_dir": str(cluster)}
    assert iemkey_auth.accepted_key(clustered, "epsilon") == KEYS["alpha"][1]
    assert iemkey_auth.accepted_key(clustered, "alpha") is None  # the master's own pki_dir is not the cluster's


def test_an_id_salt_would_take_but_iemkey_does_not_has_no_accepted_key(master_opts):
    import pathlib

    from runner_fakes import KEYS

    (pathlib.Path(master_opts["pki_dir"]) / "minions" / "web 01").write_bytes(KEYS["alpha"][1])  # Salt allows spaces
    assert iemkey_auth.accepted_key(master_opts, "web 01") is None
    assert iemkey_auth.accepted_key(master_opts, None) is None
    (pathlib.Path(master_opts["pki_dir"]) / "minions" / "linked").symlink_to(
        pathlib.Path(master_opts["pki_dir"]) / "minions" / "alpha"
    )
    assert iemkey_auth.accepted_key(master_opts, "linked") is None  # a link in the key directory is no key
