"""
Compromise-triggered rotation on a real master (running the iemkey engine) with two minions and a
real salt-api.

Each test proves both halves: the right minion rotates (the reactor's rotation job is published to
exactly that minion, and its key changes), and every other minion's key and agent stay as they were.
"""

import json
import subprocess
import time

import pytest
import requests
from helpers import HOOK_SECRET, hook_signature
from saltevents import decisions, job_returns, log_lines, log_since, published_targets, wait_for

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
    (decision,) = decisions(event_listener, salt_master, start, tag=tag)
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


def test_a_burst_of_alerts_rotates_once_and_an_alert_after_that_rotation_again(
    salt_master, salt_minion, agent, event_listener, salt_run_cli
):
    start = time.time()
    detectors = [
        subprocess.Popen(
            salt_minion.salt_call_cli(timeout=60).cmdline("iemkey.alert", "reason=burst"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(3)
    ]
    assert [d.wait(timeout=120) for d in detectors] == [0, 0, 0]  # three alerts at once
    decided = decisions(event_listener, salt_master, start, count=3, tag="iemkey/compromised")
    # one rotation job; the two others find the rotation owed and in flight: they publish nothing
    assert sorted(d["action"] for d in decided) == ["duplicate", "duplicate", "rotate"], decided
    (rotating,) = [d for d in decided if d["action"] == "rotate"]
    assert all(d["duplicate_of"].startswith("the rotation owed since ") for d in decided if d is not rotating)
    assert log_lines(salt_master, "is owed: asking " + salt_minion.id + ", and only it")
    assert log_lines(salt_master, "its delivery is in flight")
    (reaction,) = job_returns(event_listener, salt_master, salt_minion.id, "state.single", start)
    assert reaction["jid"] == rotating["jid"] and _changed(reaction) and reaction["success"]
    assert agent.wait_for_keys()
    rotated = event_listener.get_events([(salt_master.id, "iemkey/rotated")], after_time=start)
    assert len(rotated) == 1
    assert wait_for(lambda: salt_run_cli.run("iemkey.owed").returncode == 0, timeout=60)  # settled
    keys = agent.key_files()
    later = time.time()  # no cooldown to wait out: the owed rotation was settled, this is a new compromise
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
    (decision,) = decisions(event_listener, salt_master, start, tag=HOOK)
    assert decision["action"] == "refused" and why in decision["refused"], decision
    assert (agent.key_files(), agent_2.key_files()) == keys
    assert agent.untouched() and agent_2.untouched()


def test_an_unsigned_webhook_rotates_nobody(salt_master, salt_api, api_token, salt_minion, agent, event_listener):
    keys = agent.key_files()
    start, since = time.time(), log_since(salt_master)
    for secret in (None, "wrong-secret"):
        assert _hook(salt_api, {"minion_id": salt_minion.id}, api_token, secret=secret).status_code == 200
    refused = "(from salt-api), acting on nothing: its body is not signed with iemkey:reactor:hook_secret"
    assert len(log_lines(salt_master, refused, since=since, count=2)) == 2
    decided = decisions(event_listener, salt_master, start, count=2, tag=HOOK)
    assert [d["action"] for d in decided] == ["refused", "refused"]
    assert agent.key_files() == keys and agent.untouched()


def test_a_minion_forging_the_webhook_tag_rotates_nobody(
    salt_master, salt_minion, salt_minion_2, agent, agent_2, event_listener
):
    keys = agent.key_files(), agent_2.key_files()
    since = log_since(salt_master)
    forged = {"post": {"minion_id": salt_minion.id}, "headers": {"X-Auth-Token": "forged"}}
    ret = salt_minion_2.salt_call_cli(timeout=60).run("event.send", HOOK, json.dumps(forged))
    assert ret.returncode == 0, ret
    assert log_lines(salt_master, "acting on nothing: it was sent by a minion, not by salt-api", since=since)
    assert (agent.key_files(), agent_2.key_files()) == keys
