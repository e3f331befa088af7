"""
Reactor-triggered rotation on a real master with two minions and a real salt-api.

Each test proves both halves: the right minion rotates (the reactor's rotation job is published to
exactly that minion, and its key changes), and every other minion's key and agent stay as they were.
"""

import json
import subprocess
import time

import pytest
import requests
from helpers import COOLDOWN, HOOK_SECRET, hook_signature
from saltevents import job_returns, log_lines, published_targets, runner_returns

HOOK = "salt/netapi/hook/iemkey/compromised"


def _hook(salt_api, payload, token=None, secret=HOOK_SECRET):
    """POST the webhook the way a SIEM does: JSON body, salt-api token, HMAC signature."""
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["X-Auth-Token"] = token
    if secret:
        headers["X-Iemkey-Signature"] = hook_signature(secret, body)
    return requests.post(f"{salt_api}/hook/iemkey/compromised", data=body, headers=headers, timeout=30)


def _changed(job_return):
    (state,) = job_return["return"].values()
    return bool(state["changes"])


def _send(minion, reason):
    """What a detector on the minion runs: a signed iemkey/compromised."""
    ret = minion.salt_call_cli(timeout=60).run("iemkey.alert", f"reason={reason}")
    assert ret.returncode == 0, ret
    assert ret.data["sent"] is True and ret.data["id"] == minion.id


def _rotation(event_listener, salt_master, tag, start, minion_id):
    """The reactor's one rotation decision since ``start``: published to ``minion_id`` only, and its
    job's return."""
    (decision,) = runner_returns(event_listener, salt_master, "iemkey.react", start, tag=tag)
    assert decision["action"] == "rotate" and decision["minion"] == minion_id, decision
    assert published_targets(event_listener, salt_master, decision["jid"], start) == [minion_id]
    (job,) = [
        j
        for j in job_returns(event_listener, salt_master, minion_id, "state.single", start)
        if j["jid"] == decision["jid"]
    ]
    return job


def test_a_minion_alert_rotates_only_the_sender_whatever_its_reason_says(
    salt_master, salt_minion, salt_minion_2, agent, agent_2, event_listener
):
    keys_1 = agent.key_files()
    old_id_2 = agent_2.computer_id
    start = time.time()
    _send(salt_minion_2, f"ids alert: {salt_minion.id} *")  # names the other minion and a glob
    job = _rotation(event_listener, salt_master, "iemkey/compromised", start, salt_minion_2.id)
    assert job["success"] and _changed(job)
    assert agent_2.wait_for_keys() and agent_2.computer_id != old_id_2
    assert agent.key_files() == keys_1 and agent.untouched()


def test_a_burst_of_alerts_rotates_once_and_a_later_alert_again(salt_master, salt_minion, agent, event_listener):
    start = time.time()
    detectors = [
        subprocess.Popen(
            salt_minion.salt_call_cli(timeout=60).cmdline("iemkey.alert", "reason=burst"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(3)
    ]
    assert [d.wait(timeout=120) for d in detectors] == [0, 0, 0]  # three alerts at once, well inside COOLDOWN
    decisions = runner_returns(event_listener, salt_master, "iemkey.react", start, count=3, tag="iemkey/compromised")
    assert [d["action"] for d in decisions] == ["rotate"] * 3
    assert sum(d["duplicate_of"] is None for d in decisions) == 1  # the master says which ones duplicate
    assert log_lines(salt_master, f"no alert or rotation of {salt_minion.id} within iemkey:reactor:cooldown")
    assert log_lines(salt_master, "a duplicate of the alert acted on at ")
    reactions = job_returns(event_listener, salt_master, salt_minion.id, "state.single", start, count=3)
    assert sorted(_changed(r) for r in reactions) == [False, False, True]
    assert all(r["success"] and r["retcode"] == 0 for r in reactions)
    assert agent.wait_for_keys()
    rotated = event_listener.get_events([(salt_master.id, "iemkey/rotated")], after_time=start)
    assert len(rotated) == 1
    keys = agent.key_files()
    time.sleep(COOLDOWN + 1)  # past the cooldown window a new alert is a new incident
    later = time.time()
    _send(salt_minion, "new incident")
    job = _rotation(event_listener, salt_master, "iemkey/compromised", later, salt_minion.id)
    assert _changed(job)
    assert agent.wait_for_keys() and agent.key_files() != keys


def test_the_webhook_rotates_the_named_minion_only(
    salt_master, salt_api, api_token, salt_minion, salt_minion_2, agent, agent_2, event_listener
):
    keys_1 = agent.key_files()
    start = time.time()
    response = _hook(salt_api, {"minion_id": salt_minion_2.id, "reason": "SIEM rule 4711"}, api_token)
    assert response.status_code == 200, response.text
    job = _rotation(event_listener, salt_master, HOOK, start, salt_minion_2.id)
    assert _changed(job)
    assert agent_2.wait_for_keys()
    assert agent.key_files() == keys_1 and agent.untouched()


def test_the_webhook_without_a_token_is_refused(salt_api, salt_minion, agent):
    keys = agent.key_files()
    response = _hook(salt_api, {"minion_id": salt_minion.id})
    assert response.status_code == 401  # salt-api itself refuses: no event reaches the master
    assert agent.key_files() == keys and agent.untouched()


@pytest.mark.parametrize(
    ("minion_id", "why"),
    [
        ("*", "is not exactly one minion id"),
        ("alpha*", "is not exactly one minion id"),
        ("[ab]*", "is not exactly one minion id"),
        ("G@os:Linux", "is not exactly one minion id"),
        ("L@{a},{b}", "is not exactly one minion id"),
        ("E@.*", "is not exactly one minion id"),
        ("{a},{b}", "is not exactly one minion id"),
        (["{a}", "{b}"], "is not exactly one minion id"),
        (" {a}", "is not exactly one minion id"),
        ("{a}\n", "is not exactly one minion id"),
        ("no-such-minion", "'no-such-minion' is not an accepted minion"),
        (42, "is not exactly one minion id"),
        (None, "is not exactly one minion id"),
        ({"tgt": "{a}"}, "is not exactly one minion id"),
        ("../minions/{a}", "is not exactly one minion id"),
    ],
)
def test_the_webhook_rotates_nobody_for_anything_but_one_exact_id(
    salt_master, salt_api, api_token, salt_minion, salt_minion_2, agent, agent_2, event_listener, minion_id, why
):
    def fill(value):
        if isinstance(value, str):
            return value.replace("{a}", salt_minion.id).replace("{b}", salt_minion_2.id)
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    keys = agent.key_files(), agent_2.key_files()
    start = time.time()
    response = _hook(salt_api, {"minion_id": fill(minion_id)}, api_token)
    assert response.status_code == 200
    (decision,) = runner_returns(event_listener, salt_master, "iemkey.react", start, tag=HOOK)
    assert decision["action"] == "refused" and why in decision["refused"], decision
    assert (agent.key_files(), agent_2.key_files()) == keys
    assert agent.untouched() and agent_2.untouched()


def test_an_unsigned_webhook_rotates_nobody(salt_master, salt_api, api_token, salt_minion, agent, event_listener):
    keys = agent.key_files()
    start = time.time()
    for secret in (None, "wrong-secret"):
        assert _hook(salt_api, {"minion_id": salt_minion.id}, api_token, secret=secret).status_code == 200
    decisions = runner_returns(event_listener, salt_master, "iemkey.react", start, count=2, tag=HOOK)
    assert len(decisions) == 2
    assert all(
        d["refused"].startswith("its body is not signed with iemkey:reactor:hook_secret (X-Iemkey-Signature")
        for d in decisions
    ), decisions
    assert agent.key_files() == keys and agent.untouched()


def test_a_minion_forging_the_webhook_tag_rotates_nobody(
    salt_master, salt_minion, salt_minion_2, agent, agent_2, event_listener
):
    keys = agent.key_files(), agent_2.key_files()
    start = time.time()
    forged = {"post": {"minion_id": salt_minion.id}, "headers": {"X-Auth-Token": "forged"}}
    ret = salt_minion_2.salt_call_cli(timeout=60).run("event.send", HOOK, json.dumps(forged))
    assert ret.returncode == 0, ret
    (decision,) = runner_returns(event_listener, salt_master, "iemkey.react", start, tag=HOOK)
    assert decision["refused"] == "it was sent by a minion, not by salt-api", decision
    assert (agent.key_files(), agent_2.key_files()) == keys
