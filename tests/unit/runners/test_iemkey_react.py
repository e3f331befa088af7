"""
The master's decisions through ``salt-run iemkey.react`` (the same code the iemkey engine runs for each
event on the bus) with the master's opts in a temp dir and real signatures. LocalClient is the one fake:
integration tests publish for real.
"""

import datetime
import hashlib
import hmac
import json
import logging
import pathlib
import re
import time

import iemkey_auth
import iemkey_store
import pytest
from helpers import hook_signature, load_source
from runner_fakes import KEYS

iemkey = load_source("_runners", "iemkey_runner_unit")
UTC = datetime.timezone.utc
SECRET = "unit-hook-secret"  # the master_opts' iemkey:reactor:hook_secret


@pytest.fixture
def opts(master_opts):
    return master_opts


@pytest.fixture
def configure_loader_modules(opts):
    return {iemkey: {"__opts__": opts, "__context__": {}}}


def _signed(tag, minion, payload, signer=None, now=None):
    return iemkey_auth.sign(tag, minion, payload, KEYS[signer or minion][0], now=now)


def _react(tag, data, claimed="alpha"):
    return iemkey.react(event_tag=tag, event={"id": claimed, "data": data})


# -- iemkey/compromised ------------------------------------------------------------------------
def test_a_signed_alert_owes_its_signer_a_rotation_after_it_was_raised_and_publishes_it(local, opts):
    signed_at = datetime.datetime.now(UTC) - datetime.timedelta(seconds=5)
    ret = _react("iemkey/compromised", _signed("iemkey/compromised", "alpha", {"reason": "ids"}, now=signed_at))
    assert ret["action"] == "rotate" and ret["minion"] == "alpha" and ret["jid"] and ret["retcode"] == 0
    assert ret["since"] == signed_at.isoformat()  # an alert without raised_at was raised when signed
    (job,) = local.published
    assert job["tgt"] == ["alpha"] and job["tgt_type"] == "list"
    assert job["fun"] == "state.single" and job["arg"] == ["iemkey.rotated"]
    assert job["kwarg"] == {"name": "bigfix-agent-key", "queue": True, "owed": True, "since": signed_at.isoformat()}
    owed = iemkey_store.from_opts(opts).get("owed", "alpha")
    assert (owed["state"], owed["jid"], owed["since"]) == ("delivered", ret["jid"], signed_at.isoformat())
    assert [step["state"] for step in owed["trail"]] == ["pending", "delivered"]


def test_a_resent_alert_owes_a_rotation_after_it_was_first_raised_and_counts_once(local, opts):
    raised = datetime.datetime.now(UTC) - datetime.timedelta(hours=2)
    payload = {"reason": "kept", "alert_id": "a" * 32, "raised_at": raised.isoformat()}
    first = _react("iemkey/compromised", _signed("iemkey/compromised", "alpha", payload))
    again = _react("iemkey/compromised", _signed("iemkey/compromised", "alpha", payload))  # the minion re-sent it
    assert first["since"] == raised.isoformat() and local.published[0]["kwarg"]["since"] == raised.isoformat()
    assert again["action"] == "duplicate" and len(local.published) == 1
    assert iemkey_store.from_opts(opts).get("owed", "alpha")["count"] == 1  # the same alert, once


@pytest.mark.parametrize(
    "raised",
    [
        "not a time",
        (datetime.datetime.now(UTC) + datetime.timedelta(hours=1)).isoformat(),  # after its signature
        (datetime.datetime.now(UTC) - datetime.timedelta(days=8)).isoformat(),  # kept longer than anything keeps it
    ],
)
def test_an_alert_raised_at_an_implausible_time_counts_as_raised_when_signed(local, raised):
    signed_at = datetime.datetime.now(UTC) - datetime.timedelta(seconds=1)
    payload = {"alert_id": "not-an-id", "raised_at": raised}
    ret = _react("iemkey/compromised", _signed("iemkey/compromised", "alpha", payload, now=signed_at))
    assert ret["action"] == "rotate" and ret["since"] == signed_at.isoformat()


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
    (record,) = [r for r in caplog.records if "iemkey: refusing" in r.getMessage()]
    assert record.levelno == logging.WARNING and ret["refused"] in record.getMessage()


def test_while_a_rotation_is_owed_and_in_flight_further_alerts_publish_nothing(local, opts, caplog):
    with caplog.at_level(logging.WARNING):
        first = _react("iemkey/compromised", _signed("iemkey/compromised", "alpha", {"reason": "one"}))
        second = _react("iemkey/compromised", _signed("iemkey/compromised", "alpha", {"reason": "two"}))
    assert (first["action"], second["action"], second["jid"]) == ("rotate", "duplicate", first["jid"])
    assert len(local.published) == 1
    assert second["duplicate_of"] == f"the rotation owed since {first['since']} (delivered, job {first['jid']})"
    lines = [r.getMessage() for r in caplog.records if "iemkey: iemkey/compromised for alpha" in r.getMessage()]
    assert "a rotation made at or after" in lines[0] and "is owed: asking alpha, and only it" in lines[0]
    assert "a duplicate: a rotation is owed since" in lines[1] and "nothing published" in lines[1]
    owed = iemkey_store.from_opts(opts).get("owed", "alpha")
    assert owed["count"] == 2 and owed["since"] == first["since"]  # the earliest signal counts


@pytest.mark.parametrize("state", ["away", "failed", "review", "held"])
def test_an_alert_for_a_minion_whose_rotation_is_owed_but_not_in_flight_publishes_again(local, opts, state):
    first = _react("iemkey/compromised", _signed("iemkey/compromised", "alpha", {"reason": "one"}))
    store = iemkey_store.from_opts(opts)
    with store.update("owed", "alpha") as record:
        record["state"] = state
    again = _react("iemkey/compromised", _signed("iemkey/compromised", "alpha", {"reason": "two"}))
    assert again["action"] == "redelivered" and again["jid"] != first["jid"] and len(local.published) == 2
    assert store.get("owed", "alpha")["state"] == "delivered"


def _rotation(minion, rotated_at, old="1001", new="2002"):
    payload = {"old_computer_id": old, "new_computer_id": new, "rotated_at": rotated_at.isoformat()}
    return _react("iemkey/rotated", _signed("iemkey/rotated", minion, payload), claimed=minion)


def test_a_signed_rotation_after_the_alert_settles_the_owed_rotation_and_one_before_does_not(local, opts, caplog):
    raised = datetime.datetime.now(UTC) - datetime.timedelta(seconds=30)
    _react("iemkey/compromised", _signed("iemkey/compromised", "alpha", {}, now=raised))
    before = _rotation("alpha", raised - datetime.timedelta(seconds=1), old="1000", new="1001")
    assert before["owed"]["settled"] is False and "was made before the compromise signal" in before["owed"]["detail"]
    store = iemkey_store.from_opts(opts)
    assert store.get("owed", "alpha")["exact"] is True  # a re-sent older rotation: asked again with its own since
    with caplog.at_level(logging.WARNING):
        after = _rotation("alpha", raised + datetime.timedelta(seconds=1))
    assert after["owed"] == {
        "settled": True,
        "detail": f"settled by the rotation at {(raised + datetime.timedelta(seconds=1)).isoformat()} "
        "(old computer 1001)",
        "still_owed": False,
    }
    assert store.get("owed", "alpha") is None
    (settled,) = store.all("settled").values()
    assert settled["state"] == "settled" and settled["rotation"]["old_computer_id"] == "1001"
    assert [step["state"] for step in settled["trail"]] == ["pending", "delivered", "settled"]
    assert "iemkey: alpha's owed rotation is settled: settled by the rotation at" in caplog.text
    # an alert raised before that confirmed rotation owes nothing; one raised after it owes a new rotation
    late_copy = _react("iemkey/compromised", _signed("iemkey/compromised", "alpha", {}, now=raised))
    assert late_copy["action"] == "settled" and len(local.published) == 1
    assert "came after this alert: nothing is owed, nothing published" in late_copy["detail"]
    new_alert = _react("iemkey/compromised", _signed("iemkey/compromised", "alpha", {}))
    assert new_alert["action"] == "rotate" and len(local.published) == 2


def test_a_rotation_settles_the_signals_before_it_and_the_ones_after_it_stay_owed(local, opts):
    now = datetime.datetime.now(UTC)
    first = {"alert_id": "1" * 32, "raised_at": (now - datetime.timedelta(seconds=60)).isoformat()}
    second = {"alert_id": "2" * 32, "raised_at": (now - datetime.timedelta(seconds=10)).isoformat()}
    _react("iemkey/compromised", _signed("iemkey/compromised", "alpha", first))
    _react("iemkey/compromised", _signed("iemkey/compromised", "alpha", second))
    ret = _rotation("alpha", now - datetime.timedelta(seconds=30))
    assert ret["owed"]["settled"] is True and ret["owed"]["still_owed"] is True
    left = iemkey_store.from_opts(opts).get("owed", "alpha")
    assert left["state"] == "pending" and left["since"] == second["raised_at"] and left["exact"] is True


def test_a_webhook_owes_a_rotation_the_master_received_after_it(local, opts):
    ret = _hook({"minion_id": "beta"})
    since = datetime.datetime.fromisoformat(ret["since"])
    # made after it by the minion's clock, but the master got it before the webhook: not proof
    owed = iemkey_store.from_opts(opts).get("owed", "beta")
    (signal,) = owed["signals"]
    assert signal["received_after"] == ret["since"] and signal["source"] == "webhook"
    settles = _rotation("beta", since + datetime.timedelta(seconds=1))
    assert settles["owed"]["settled"] is True


def test_a_minion_without_an_agent_closes_its_owed_rotation_with_its_signed_word(local, opts):
    _react("iemkey/compromised", _signed("iemkey/compromised", "alpha", {}))
    ret = _react("iemkey/rotated", _signed("iemkey/rotated", "alpha", {"no_agent": True}))
    assert ret["action"] == "none" and ret["owed"]["settled"] is True
    store = iemkey_store.from_opts(opts)
    assert store.get("owed", "alpha") is None
    assert [r["state"] for r in store.all("settled").values()] == ["no_agent"]
    assert store.all("cases") == {}  # no computer to clean up


def test_an_unresolved_sdb_hook_secret_is_logged_once_when_the_runner_loads(opts, caplog):
    opts["iemkey"]["reactor"]["hook_secret"] = "sdb://vault/bigfix/hook_secret"
    iemkey._WARNED.clear()
    with caplog.at_level(logging.ERROR):
        assert iemkey.__virtual__() == "iemkey" and iemkey.__virtual__() == "iemkey"
    (line,) = [r.getMessage() for r in caplog.records if "did not resolve" in r.getMessage()]
    assert line.startswith("iemkey: iemkey:reactor:hook_secret sdb://vault/bigfix/hook_secret did not resolve")
    assert line.endswith("check the sdb profile 'vault'")
    opts["iemkey"]["reactor"]["hook_secret"] = "a-resolved-secret"
    caplog.clear()
    assert iemkey.__virtual__() == "iemkey" and "did not resolve" not in caplog.text


def test_a_replayed_alert_is_refused_and_exits_non_zero_and_the_first_one_acted_on(local):
    data = _signed("iemkey/compromised", "alpha", {"reason": "once"})
    assert _react("iemkey/compromised", data)["action"] == "rotate"
    again = _react("iemkey/compromised", json.loads(json.dumps(data)))
    assert again["action"] == "refused" and "replays an event 'alpha' signed at" in again["refused"]
    assert again["retcode"] == 1 and iemkey.__context__["retcode"] == 1 and again["error"] == again["refused"]
    assert len(local.published) == 1


def test_remembered_nonces_are_forgotten_once_stale(local, opts):
    old = datetime.datetime.now(UTC) - datetime.timedelta(seconds=200)
    assert _react("iemkey/compromised", _signed("iemkey/compromised", "alpha", {}, now=old))["action"] == "rotate"
    nonces = pathlib.Path(opts["cachedir"], "iemkey", "nonces")
    (remembered,) = nonces.glob("alpha:*.json")
    assert json.loads(remembered.read_text())["expires"] == pytest.approx(old.timestamp() + 360)
    remembered.write_text(json.dumps({"expires": 0}))  # expired
    (nonces / ".swept").unlink(missing_ok=True)  # the next sweep is due
    # acted on (not a replay), as a duplicate of the rotation owed since the first alert
    assert _react("iemkey/compromised", _signed("iemkey/compromised", "alpha", {}))["action"] == "duplicate"
    assert len(list(nonces.glob("alpha:*.json"))) == 1


def test_an_events_age_is_judged_by_when_the_master_received_it(local):
    """An alert that waited in the reactor's queue is as old as it was when the bus stamped it."""
    signed_at = datetime.datetime.now(UTC) - datetime.timedelta(seconds=400)  # beyond max_age by now
    data = _signed("iemkey/compromised", "alpha", {"reason": "queued"}, now=signed_at)
    stamp = (signed_at + datetime.timedelta(seconds=2)).replace(tzinfo=None).isoformat()  # Salt 3006: naive UTC
    ret = iemkey.react(event_tag="iemkey/compromised", event={"id": "alpha", "data": data, "stamp": stamp})
    assert ret["action"] == "rotate", ret
    again = iemkey.react(event_tag="iemkey/compromised", event={"id": "alpha", "data": data, "stamp": stamp})
    assert again["action"] == "refused" and "replays an event" in again["refused"]  # a replay is still one
    late = _signed("iemkey/compromised", "alpha", {}, now=signed_at)
    unstamped = iemkey.react(event_tag="iemkey/compromised", event={"id": "alpha", "data": late})
    assert unstamped["action"] == "refused" and "signed 400 s ago" in unstamped["refused"]
    assert len(local.published) == 1


def test_a_bus_stamp_from_the_future_counts_as_now(local):
    signed_at = datetime.datetime.now(UTC) - datetime.timedelta(seconds=400)
    data = _signed("iemkey/compromised", "alpha", {}, now=signed_at)
    ahead = (datetime.datetime.now(UTC) + datetime.timedelta(days=1)).isoformat()
    ret = iemkey.react(event_tag="iemkey/compromised", event={"id": "alpha", "data": data, "stamp": ahead})
    assert ret["action"] == "refused" and "signed 400 s ago" in ret["refused"]


# -- the webhook ---------------------------------------------------------------------------------
def _hook(body, secret=SECRET, from_minion=False, signature=None, age=0):
    body = body if isinstance(body, str) else json.dumps(body)
    signature = signature or hook_signature(secret, body, time.time() - age)
    return iemkey.react(
        event_tag="salt/netapi/hook/iemkey/compromised",
        event={"body": body, "signature": signature, "from_minion": from_minion},
    )


UNSIGNED = (
    "its body is not signed with iemkey:reactor:hook_secret (X-Iemkey-Signature: t=<unix time>,"
    "sha256=<HMAC-SHA256 of '<t>.<body>'>)"
)


def test_a_signed_webhook_rotates_the_one_accepted_minion_it_names(local):
    ret = _hook({"minion_id": "beta", "reason": "SIEM rule 4711"})
    assert ret["action"] == "rotate" and [j["tgt"] for j in local.published] == [["beta"]]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"body": {"minion_id": "alpha"}, "secret": "wrong"}, "not signed with iemkey:reactor:hook_secret"),
        ({"body": {"minion_id": "alpha"}, "signature": "sha256=00"}, "not signed"),
        ({"body": {"minion_id": "alpha"}, "age": 400}, "more than 300 s (iemkey:reactor:max_age)"),
        ({"body": {"minion_id": "alpha"}, "age": -120}, "s in the future, more than 60 s ahead of the master's clock"),
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


BODY = '{"minion_id": "alpha"}'
# the earlier header, a bare body HMAC: replayable by whoever saw it once, so refused
BARE = "sha256=" + hmac.new(SECRET.encode(), BODY.encode(), hashlib.sha256).hexdigest()


@pytest.mark.parametrize(
    ("event", "refused"),
    [
        ({"body": BODY, "from_minion": False}, UNSIGNED),  # no signature header at all
        (
            {"signature": hook_signature(SECRET, BODY), "from_minion": False},
            "its body is not signed with iemkey:reactor:hook_secret (it has no body)",
        ),
        ({"body": BODY, "signature": [hook_signature(SECRET, BODY)], "from_minion": False}, UNSIGNED),
        # the earlier header, a bare body HMAC: replayable by whoever saw it once, so refused
        (
            {
                "body": BODY,
                "signature": "sha256=" + hmac.new(SECRET.encode(), BODY.encode(), hashlib.sha256).hexdigest(),
            },
            UNSIGNED,
        ),
        ({"body": BODY, "signature": "t=soon,sha256=" + "0" * 64}, UNSIGNED),
    ],
)
def test_a_webhook_without_body_or_a_timed_signature_is_refused_by_name(local, event, refused):
    ret = iemkey.react(event_tag="salt/netapi/hook/iemkey/compromised", event=event)
    assert ret == {
        "tag": "salt/netapi/hook/iemkey/compromised",
        "result": False,
        "action": "refused",
        "refused": refused,
        "error": refused,
        "retcode": 1,
    }
    assert local.published == []


def test_a_replayed_webhook_is_refused_and_the_first_acted_on(local):
    signature = hook_signature(SECRET, BODY)
    event = {"body": BODY, "signature": signature, "from_minion": False}
    assert iemkey.react(event_tag="salt/netapi/hook/iemkey/compromised", event=dict(event))["action"] == "rotate"
    again = iemkey.react(event_tag="salt/netapi/hook/iemkey/compromised", event=dict(event))
    assert again["action"] == "refused" and again["refused"].startswith("it replays a webhook signed at ")
    assert len(local.published) == 1


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


# -- report -----------------------------------------------------------------------------------------
def test_a_target_that_matches_no_minion_fails_the_report(local, monkeypatch):
    monkeypatch.setattr(iemkey, "_targets", lambda tgt, tgt_type: [])
    ret = iemkey.report("2026-01-01T00:00:00Z", tgt="nosuch*")
    assert ret["retcode"] == 1 and "matches no accepted minion" in ret["error"]
    assert iemkey.__context__["retcode"] == 1


def test_the_cooldown_only_says_which_rotations_before_an_alert_are_compromise_rotations(local, opts):
    opts["iemkey"]["reactor"]["cooldown"] = 0
    first = _react("iemkey/compromised", _signed("iemkey/compromised", "alpha", {"reason": "one"}))
    second = _react("iemkey/compromised", _signed("iemkey/compromised", "alpha", {"reason": "two"}))
    assert [first["action"], second["action"]] == ["rotate", "duplicate"]  # the owed rotation dedupes, not time
    assert first["tag"] == second["tag"] == "iemkey/compromised"
    record = iemkey_store.from_opts(opts).get("compromises", "alpha")
    assert record["since"] == record["first"]  # cooldown 0: no rotation received before the alert is covered


@pytest.mark.parametrize(
    ("section", "key", "value", "error"),
    [
        ("reactor", "cooldown", "soon", "iemkey:reactor:cooldown must be a number, not 'soon'"),
        ("reactor", "max_age", -1, "iemkey:reactor:max_age must be a number of 0 or more, not -1"),
        ("cleanup", "compromise_window", [1], "iemkey:cleanup:compromise_window must be a number, not [1]"),
    ],
)
def test_a_malformed_setting_is_an_error_decision_naming_it(local, opts, caplog, section, key, value, error):
    opts["iemkey"].setdefault(section, {})[key] = value
    with caplog.at_level(logging.ERROR):
        ret = _react("iemkey/compromised", _signed("iemkey/compromised", "alpha", {"reason": "x"}))
    assert ret == {"tag": "iemkey/compromised", "result": False, "action": "error", "error": error, "retcode": 1}
    assert local.published == []
    assert f"iemkey: iemkey/compromised event not acted on: {error}" in caplog.text


def test_a_refusal_is_one_line_naming_the_tag(local, caplog):
    with caplog.at_level(logging.WARNING):
        ret = _react("iemkey/rotated", {"old_computer_id": "1"})
    assert ret["tag"] == "iemkey/rotated" and ret["action"] == "refused"
    assert ret["refused"] == "it is not signed"  # the hint names iemkey.alert, which sends alerts only
    assert f"iemkey: refusing iemkey/rotated event, acting on nothing: {ret['refused']}" in caplog.text


def test_a_signed_rotation_is_recorded_once_and_its_line_says_routine_or_compromise(local, caplog):
    def rotated(minion, old):
        payload = {
            "old_computer_id": old,
            "new_computer_id": "2002",
            "rotated_at": datetime.datetime.now(UTC).isoformat(),
        }
        return _react("iemkey/rotated", _signed("iemkey/rotated", minion, payload), claimed=minion)

    with caplog.at_level(logging.WARNING):
        first = rotated("alpha", "1001")
        again = rotated("alpha", "1001")  # another signed event for the same old computer
        assert (
            _react("iemkey/compromised", _signed("iemkey/compromised", "beta", {}), claimed="beta")["action"]
            == "rotate"
        )
        compromise = rotated("beta", "3003")
    assert first == {
        "tag": "iemkey/rotated",
        "result": True,
        "action": "recorded",
        "minion": "alpha",
        "key": "alpha:1001",
        "compromise": False,
        "owed": None,
        "retcode": 0,
    }
    assert again == {
        "tag": "iemkey/rotated",
        "result": True,
        "action": "none",
        "minion": "alpha",
        "detail": "this clean-up is already recorded",
        "owed": None,
        "retcode": 0,
    }
    assert compromise["compromise"] is True and compromise["key"] == "beta:3003"
    lines = [r.getMessage() for r in caplog.records if "rotated its BigFix key" in r.getMessage()]
    assert lines == [
        "iemkey: alpha rotated its BigFix key (routine); the clean-up of its old computer 1001 is recorded "
        "(iemkey.cleanup decides it with BigFix)",
        "iemkey: beta rotated its BigFix key (a compromise rotation (alerts)); the clean-up of its old "
        "computer 3003 is recorded (iemkey.cleanup decides it with BigFix)",
    ]
