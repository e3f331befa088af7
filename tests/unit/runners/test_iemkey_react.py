"""
The runner's decisions (``iemkey.react``, ``iemkey.cleanup``) with the master's opts in a temp dir,
real signatures and a stand-in BigFix REST API (pytest-httpserver) on loopback. LocalClient is
the one fake: integration tests publish for real.
"""

import datetime
import hashlib
import hmac
import json
import logging
import re
import types

import iemkey_auth
import pytest
import salt.client
from bigfix_rest import StandInBigFix
from helpers import load_source, rsa_key_pair

iemkey = load_source("_runners", "iemkey_runner_unit")
UTC = datetime.timezone.utc
SECRET = "unit-hook-secret"


KEYS = {"alpha": rsa_key_pair(), "beta": rsa_key_pair()}


class FakeLocalClient:
    """Records what the runner publishes; answers iemkey.status with ``statuses``."""

    def __init__(self):
        self.published, self.statuses = [], {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def cmd_async(self, tgt, fun, arg=(), tgt_type="glob", kwarg=None, **_kwargs):
        self.published.append({"tgt": tgt, "fun": fun, "arg": list(arg), "tgt_type": tgt_type, "kwarg": kwarg})
        return f"2026112712000000000{len(self.published)}"

    def cmd(self, tgt, fun, tgt_type="glob", **_kwargs):
        assert fun == "iemkey.status" and tgt_type == "list"
        return {m: self.statuses[m] for m in tgt if m in self.statuses}


@pytest.fixture
def local(monkeypatch):
    client = FakeLocalClient()
    monkeypatch.setattr(salt.client, "get_local_client", lambda *a, **k: client)
    return client


@pytest.fixture
def opts(tmp_path):
    pki = tmp_path / "pki"
    (pki / "minions").mkdir(parents=True)
    for name in ("alpha", "beta"):
        (pki / "minions" / name).write_bytes(KEYS[name][1])
    return {
        "cachedir": str(tmp_path / "cache"),
        "pki_dir": str(pki),
        "sock_dir": str(tmp_path / "sock"),
        "iemkey": {"reactor": {"cooldown": 300, "hook_secret": SECRET}},
    }


@pytest.fixture
def configure_loader_modules(opts):
    return {iemkey: {"__opts__": opts, "__context__": {}}}


def _signed(tag, minion, payload, signer=None, now=None):
    return iemkey_auth.sign(tag, minion, payload, KEYS[signer or minion][0], now=now)


def _react(tag, data, claimed="alpha"):
    return iemkey.react(event_tag=tag, event={"id": claimed, "data": data})


# -- iemkey/compromised ------------------------------------------------------------------------
def test_a_signed_alert_rotates_its_signer_only_with_since_from_the_signed_time(local):
    signed_at = datetime.datetime.now(UTC) - datetime.timedelta(seconds=5)
    ret = _react("iemkey/compromised", _signed("iemkey/compromised", "alpha", {"reason": "ids"}, now=signed_at))
    assert ret["action"] == "rotate" and ret["minion"] == "alpha" and ret["jid"]
    (job,) = local.published
    assert job["tgt"] == ["alpha"] and job["tgt_type"] == "list"
    assert job["fun"] == "state.single" and job["arg"] == ["iemkey.rotated"]
    assert job["kwarg"] == {
        "name": "bigfix-agent-key",
        "queue": True,
        "since": (signed_at - datetime.timedelta(seconds=300)).isoformat(),
    }


@pytest.mark.parametrize(
    ("data", "claimed", "match"),
    [
        ({"reason": "x"}, "alpha", "it is not signed .*salt-call iemkey.alert"),
        (None, "alpha", "it is not signed"),
        ("lying", "alpha", "does not verify with the accepted key of 'alpha'"),
        ("stale", "alpha", "signed 600 s ago"),
        ("beta-signed", "alpha", "signed by 'beta' but arrived as from 'alpha'"),
        ("unknown", "gamma", "'gamma' is not an accepted minion"),
    ],
)
def test_alerts_that_prove_nothing_rotate_nobody(local, caplog, data, claimed, match):
    now = datetime.datetime.now(UTC)
    made = {
        "lying": lambda: _signed("iemkey/compromised", "alpha", {}, signer="beta"),
        "stale": lambda: _signed("iemkey/compromised", "alpha", {}, now=now - datetime.timedelta(seconds=600)),
        "beta-signed": lambda: _signed("iemkey/compromised", "beta", {}),
        "unknown": lambda: iemkey_auth.sign("iemkey/compromised", "gamma", {}, KEYS["beta"][0]),
    }
    if isinstance(data, str):
        data = made[data]()
    with caplog.at_level(logging.WARNING):
        ret = _react("iemkey/compromised", data, claimed=claimed)
    assert ret["action"] == "refused" and local.published == []
    assert re.search(match, ret["refused"]), ret
    (record,) = [r for r in caplog.records if "iemkey reactor: refusing" in r.getMessage()]
    assert record.levelno == logging.WARNING and ret["refused"] in record.getMessage()


def test_a_replayed_alert_is_refused_and_the_first_one_acted_on(local):
    data = _signed("iemkey/compromised", "alpha", {"reason": "once"})
    assert _react("iemkey/compromised", data)["action"] == "rotate"
    again = _react("iemkey/compromised", json.loads(json.dumps(data)))
    assert again["action"] == "refused" and "replays an event 'alpha' signed at" in again["refused"]
    assert len(local.published) == 1


def test_remembered_nonces_are_forgotten_once_stale(local, opts):
    old = datetime.datetime.now(UTC) - datetime.timedelta(seconds=200)
    assert _react("iemkey/compromised", _signed("iemkey/compromised", "alpha", {}, now=old))["action"] == "rotate"
    seen_file = f"{opts['cachedir']}/iemkey/seen.json"
    seen = json.load(open(seen_file))
    assert len(seen) == 1 and next(iter(seen.values())) == pytest.approx(old.timestamp() + 360)
    json.dump({k: 0 for k in seen}, open(seen_file, "w"))  # expired
    assert _react("iemkey/compromised", _signed("iemkey/compromised", "alpha", {}))["action"] == "rotate"
    assert len(json.load(open(seen_file))) == 1


# -- the webhook ---------------------------------------------------------------------------------
def _hook(body, secret=SECRET, from_minion=False, signature=None):
    body = body if isinstance(body, str) else json.dumps(body)
    signature = signature or "sha256=" + hmac.new(secret.encode(), body.encode(), hashlib.sha256).hexdigest()
    return iemkey.react(
        event_tag="salt/netapi/hook/iemkey/compromised",
        event={"body": body, "signature": signature, "from_minion": from_minion},
    )


def test_a_signed_webhook_rotates_the_one_accepted_minion_it_names(local):
    ret = _hook({"minion_id": "beta", "reason": "SIEM rule 4711"})
    assert ret["action"] == "rotate" and [j["tgt"] for j in local.published] == [["beta"]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"body": {"minion_id": "alpha"}, "secret": "wrong"}, "not signed with iemkey:reactor:hook_secret"),
        ({"body": {"minion_id": "alpha"}, "signature": "sha256=00"}, "not signed"),
        ({"body": {"minion_id": "alpha"}, "from_minion": True}, "sent by a minion"),
        ({"body": "[1, 2]"}, "not a JSON object"),
        ({"body": {"minion_id": "*"}}, "not exactly one minion id"),
        ({"body": {"minion_id": ["alpha", "beta"]}}, "not exactly one minion id"),
        ({"body": {"minion_id": "gamma"}}, "'gamma' is not an accepted minion"),
    ],
)
def test_webhooks_that_prove_nothing_rotate_nobody(local, kwargs, match):
    ret = _hook(**kwargs)
    assert ret["action"] == "refused" and match in ret["refused"] and local.published == []


@pytest.mark.parametrize(
    "event",
    [
        {"body": '{"minion_id": "alpha"}', "from_minion": False},  # no signature header at all
        {"signature": "sha256=00", "from_minion": False},  # no body
        {"body": '{"minion_id": "alpha"}', "signature": ["sha256=00"], "from_minion": False},
    ],
)
def test_a_webhook_without_body_or_signature_is_refused_by_name(local, event):
    ret = iemkey.react(event_tag="salt/netapi/hook/iemkey/compromised", event=event)
    assert ret == {
        "tag": "salt/netapi/hook/iemkey/compromised",
        "result": False,
        "action": "refused",
        "refused": "its body is not signed with iemkey:reactor:hook_secret (X-Iemkey-Signature)",
    }
    assert local.published == []


def test_an_sdb_hook_secret_that_resolves_is_the_secret(local, opts, monkeypatch):
    uri = "sdb://vault/bigfix/hook_secret"
    opts["iemkey"]["reactor"]["hook_secret"] = uri
    monkeypatch.setattr(
        iemkey.salt.utils.sdb, "sdb_get", lambda value, _opts: "resolved-secret" if value == uri else value
    )
    assert _hook({"minion_id": "alpha"}, secret="resolved-secret")["action"] == "rotate"
    assert _hook({"minion_id": "alpha"}, secret=uri)["action"] == "refused"


@pytest.mark.parametrize("secret", [None, ""])
def test_without_a_hook_secret_every_webhook_is_refused(local, opts, secret):
    opts["iemkey"]["reactor"]["hook_secret"] = secret
    ret = _hook({"minion_id": "alpha"}, secret="")
    assert ret["action"] == "refused" and "hook_secret is not set" in ret["refused"] and local.published == []


def test_an_sdb_hook_secret_that_does_not_resolve_is_an_error_not_a_secret(local, opts, caplog, monkeypatch):
    uri = "sdb://vault/bigfix/hook_secret"
    opts["iemkey"]["reactor"]["hook_secret"] = uri  # what Salt leaves in the config when it cannot resolve it
    monkeypatch.setattr(iemkey.salt.utils.sdb, "sdb_get", lambda value, _opts: value)
    with caplog.at_level(logging.WARNING):
        ret = _hook({"minion_id": "alpha"}, secret=uri)  # signed with the literal URI
    assert ret["refused"] == f"iemkey:reactor:hook_secret {uri} did not resolve to a secret"
    (record,) = [r for r in caplog.records if "refusing" in r.getMessage()]
    assert record.levelno == logging.ERROR and local.published == []


# -- iemkey/rotated and the console clean-up ------------------------------------------------------
NAME = "web01.example.com"


@pytest.fixture
def bigfix(httpserver, opts):
    computers = {}
    agent = types.SimpleNamespace(computers=lambda: computers)
    opts["iemkey"]["api"] = {
        "url": httpserver.url_for("").rstrip("/"),
        "user": "op",
        "password": "pw",
        "timeout": 2,
        "retries": 2,
    }
    server = StandInBigFix([agent], "op", "pw").serve(httpserver)
    server.known = computers
    return server


def _computer(bigfix, computer_id, name=NAME, last_report=None):
    bigfix.known[computer_id] = {
        "name": name,
        "registered": 0,
        "last_report": last_report or datetime.datetime.now(UTC).timestamp(),
    }


def _rotated(old="1001", new="2002", rotated_at=None, **extra):
    rotated_at = rotated_at or datetime.datetime.now(UTC).isoformat()
    payload = {"old_computer_id": old, "rotated_at": rotated_at, "keystorage": "/var/opt/BESClient/KeyStorage"}
    if new:
        payload["new_computer_id"] = new
    return _react("iemkey/rotated", _signed("iemkey/rotated", "alpha", {**payload, **extra}))


def _an_hour_ago():
    return (datetime.datetime.now(UTC) - datetime.timedelta(hours=1)).timestamp()


def test_a_confirmed_duplicate_is_deleted_once(local, bigfix):
    _computer(bigfix, "1001", last_report=_an_hour_ago())
    _computer(bigfix, "2002")
    ret = _rotated()
    assert ret["action"] == "cleanup" and ret["outcome"] == "deleted", ret
    assert bigfix.deletes() == ["1001"]
    assert iemkey.cleanup()["deleted"] == [] and bigfix.deletes() == ["1001"]


@pytest.mark.parametrize(
    ("old", "new", "outcome", "detail"),
    [
        ({"name": "db01"}, {}, "review", "names the old computer 1001 'db01' and the new computer 2002"),
        ({"last_report": "after"}, {}, "review", "reported at .* after the rotation .*still alive"),
        ({}, None, "pending", "the new computer 2002 is not registered with BigFix yet"),
        (None, {}, "gone", "BigFix has no computer 1001"),
    ],
)
def test_what_bigfix_does_not_confirm_is_not_deleted(local, bigfix, old, new, outcome, detail):
    if old is not None:
        last = (
            (datetime.datetime.now(UTC) + datetime.timedelta(seconds=5)).timestamp()
            if old.get("last_report") == "after"
            else _an_hour_ago()
        )
        _computer(bigfix, "1001", name=old.get("name", NAME), last_report=last)
    if new is not None:
        _computer(bigfix, "2002")
    ret = _rotated()
    assert ret["outcome"] == outcome, ret
    assert bigfix.deletes() == []
    cleanups = iemkey._cleanups()
    if outcome in ("review", "pending"):
        (entry,) = cleanups[outcome].values()
        assert re.search(detail, entry["detail"]), entry
    else:
        assert cleanups == {"pending": {}, "review": {}}


def test_the_new_id_is_asked_of_the_minion_when_the_event_has_none(local, bigfix):
    _computer(bigfix, "1001", last_report=_an_hour_ago())
    local.statuses["alpha"] = {"computer_id": "1001"}  # the agent has not registered yet
    assert _rotated(new=None)["outcome"] == "pending"
    assert (
        iemkey._cleanups()["pending"]["alpha:1001"]["detail"] == "the minion has not reported its new computer ID yet"
    )
    local.statuses["alpha"] = {"computer_id": "2002"}
    _computer(bigfix, "2002")
    ret = iemkey.cleanup()
    assert [e["old_computer_id"] for e in ret["deleted"]] == ["1001"] and bigfix.deletes() == ["1001"]


def test_an_unreachable_api_keeps_it_pending_fails_the_run_and_a_later_run_finishes(local, bigfix):
    _computer(bigfix, "1001", last_report=_an_hour_ago())
    _computer(bigfix, "2002")
    bigfix.down = True
    assert _rotated()["outcome"] == "pending"
    down = iemkey.cleanup()
    assert down["retcode"] == 1 and "HTTP 503 from GET /api/computer/2002" in down["error"]
    assert [c[2] for c in bigfix.calls] == [503] * 4  # reactor's try and this run, each retried once
    bigfix.down = False
    up = iemkey.cleanup()
    assert up["retcode"] == 0 and [e["old_computer_id"] for e in up["deleted"]] == ["1001"]
    assert bigfix.deletes() == ["1001"]


def test_a_clean_up_pending_too_long_goes_to_review(local, bigfix, opts):
    opts["iemkey"]["cleanup"] = {"give_up_after": 0}
    _computer(bigfix, "1001", last_report=_an_hour_ago())
    assert _rotated()["outcome"] == "review"
    (entry,) = iemkey._cleanups()["review"].values()
    assert "not registered with BigFix yet" in entry["detail"] and "give_up_after" in entry["detail"]


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ({"old": "12ab"}, "no usable old computer ID"),
        ({"old": "", "new": "5"}, "no usable old computer ID"),
        ({"old": "1001", "new": "1001"}, "reports the new computer ID '1001' for the old 1001"),
        ({"rotated_at": "yesterday"}, "no usable rotated_at"),
    ],
)
def test_a_signed_rotation_with_unusable_ids_records_nothing(local, bigfix, payload, match):
    ret = _rotated(**payload)
    assert ret["action"] == "refused" and match in ret["refused"], ret
    assert iemkey._cleanups() == {"pending": {}, "review": {}} and bigfix.calls == []


def test_an_operator_dismisses_or_removes_a_review_item(local, bigfix):
    _computer(bigfix, "1001", name="db01", last_report=_an_hour_ago())
    _computer(bigfix, "2002")
    assert _rotated()["outcome"] == "review"
    assert iemkey.cleanup(dismiss="1001")["dismissed"][0]["old_computer_id"] == "1001"
    assert iemkey._cleanups()["review"] == {} and bigfix.deletes() == []
    assert iemkey.cleanup(dismiss="1001")["retcode"] == 1  # nothing left to dismiss
    assert (
        _react(
            "iemkey/rotated",
            _signed(
                "iemkey/rotated",
                "alpha",
                {
                    "old_computer_id": "1001",
                    "new_computer_id": "2002",
                    "rotated_at": datetime.datetime.now(UTC).isoformat(),
                },
            ),
        )["outcome"]
        == "review"
    )
    ret = iemkey.remove_computer("1001")
    assert ret["result"] is True and bigfix.deletes() == ["1001"] and iemkey._cleanups()["review"] == {}


# -- report -----------------------------------------------------------------------------------------
def test_a_target_that_matches_no_minion_fails_the_report(local, monkeypatch):
    monkeypatch.setattr(iemkey, "_targets", lambda tgt, tgt_type: [])
    ret = iemkey.report("2026-01-01T00:00:00Z", tgt="nosuch*")
    assert ret["retcode"] == 1 and "matches no accepted minion" in ret["error"]
    assert iemkey.__context__["retcode"] == 1
