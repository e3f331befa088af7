"""
Reactor-triggered rotation on a real master with two minions and a real salt-api.

Each test proves both halves: the right minion rotates, and every other minion's
key stays byte-for-byte as it was.
"""

import hashlib
import hmac
import json
import time

import pytest
import requests
from helpers import COOLDOWN, HOOK_SECRET


def _hook(salt_api, payload, token=None, secret=HOOK_SECRET):
    """POST the webhook the way a SIEM does: JSON body, salt-api token, HMAC signature."""
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["X-Auth-Token"] = token
    if secret:
        headers["X-Iemkey-Signature"] = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return requests.post(f"{salt_api}/hook/iemkey/compromised", data=body, headers=headers, timeout=30)


def _reactions(event_listener, salt_master, minion_id, after, count, timeout=90):
    """Wait for ``count`` state.single job returns from ``minion_id``; their return data."""
    deadline = time.monotonic() + timeout
    while True:
        found = [
            event.data for event in event_listener.get_events(
                [(salt_master.id, f"salt/job/*/ret/{minion_id}")], after_time=after)
            if event.data.get("fun") == "state.single"
        ]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _changed(job_return):
    (state,) = job_return["return"].values()
    return bool(state["changes"])


def _send(minion, reason):
    """What a detector on the minion runs: a signed iemkey/compromised."""
    ret = minion.salt_call_cli(timeout=60).run("iemkey.alert", f"reason={reason}")
    assert ret.returncode == 0, ret
    assert ret.data["sent"] is True and ret.data["id"] == minion.id


def _refusals(salt_master, after_line):
    lines = open(salt_master.config["log_file"], encoding="utf-8").read().splitlines()[after_line:]
    return [line for line in lines if "iemkey reactor: refusing" in line]


def _log_length(salt_master):
    with open(salt_master.config["log_file"], encoding="utf-8") as log:
        return sum(1 for _ in log)


def _wait_for_refusals(salt_master, after_line, count, timeout=60):
    deadline = time.monotonic() + timeout
    while len(_refusals(salt_master, after_line)) < count and time.monotonic() < deadline:
        time.sleep(0.5)
    return _refusals(salt_master, after_line)


def test_a_minion_event_rotates_only_the_sender_whatever_the_payload_says(
    salt_master, salt_minion, salt_minion_2, agent, agent_2, event_listener
):
    keys_1 = agent.key_files()
    old_id_2 = agent_2.computer_id
    start = time.time()
    # the reason names the other minion and a glob: neither may become the target
    _send(salt_minion_2, f"ids alert: {salt_minion.id} *")
    rotated = event_listener.wait_for_events([(salt_master.id, "iemkey/rotated")], after_time=start, timeout=60)
    assert rotated.found_all_events, "no iemkey/rotated event within 60 s"
    assert {event.data["id"] for event in rotated} == {salt_minion_2.id}
    reactions = _reactions(event_listener, salt_master, salt_minion_2.id, start, 1)
    assert reactions and _changed(reactions[0])
    assert agent_2.wait_for_keys() and agent_2.computer_id != old_id_2
    assert not _reactions(event_listener, salt_master, salt_minion.id, start, 1, timeout=3)
    assert agent.key_files() == keys_1


def test_a_burst_of_alerts_rotates_once_and_a_later_alert_again(
    salt_master, salt_minion, agent, event_listener
):
    start = time.time()
    for _ in range(3):
        _send(salt_minion, "burst")
    reactions = _reactions(event_listener, salt_master, salt_minion.id, start, 3)
    assert len(reactions) == 3
    assert sorted(_changed(r) for r in reactions) == [False, False, True]
    assert all(r["success"] and r["retcode"] == 0 for r in reactions)
    assert agent.wait_for_keys()
    rotated = event_listener.get_events([(salt_master.id, "iemkey/rotated")], after_time=start)
    assert len(rotated) == 1
    keys = agent.key_files()
    time.sleep(COOLDOWN + 1)  # past the cooldown window a new alert is a new incident
    later = time.time()
    _send(salt_minion, "new incident")
    reactions = _reactions(event_listener, salt_master, salt_minion.id, later, 1)
    assert reactions and _changed(reactions[0])
    assert agent.wait_for_keys() and agent.key_files() != keys


def test_the_webhook_rotates_the_named_minion_only(
    salt_master, salt_api, api_token, salt_minion, salt_minion_2, agent, agent_2, event_listener
):
    keys_1 = agent.key_files()
    start = time.time()
    response = _hook(salt_api, {"minion_id": salt_minion_2.id, "reason": "SIEM rule 4711"}, api_token)
    assert response.status_code == 200, response.text
    reactions = _reactions(event_listener, salt_master, salt_minion_2.id, start, 1)
    assert reactions and _changed(reactions[0])
    assert agent_2.wait_for_keys()
    assert not _reactions(event_listener, salt_master, salt_minion.id, start, 1, timeout=3)
    assert agent.key_files() == keys_1


def test_the_webhook_without_a_token_is_refused(salt_api, salt_minion, agent):
    keys = agent.key_files()
    response = _hook(salt_api, {"minion_id": salt_minion.id})
    assert response.status_code == 401
    time.sleep(3)
    assert agent.key_files() == keys and not agent.running()


@pytest.mark.parametrize(
    "minion_id",
    ["*", "alpha*", "[ab]*", "G@os:Linux", "L@{a},{b}", "E@.*", "{a},{b}", ["{a}", "{b}"], " {a}", "{a}\n",
     "no-such-minion", 42, None, {"tgt": "{a}"}, "../minions/{a}"],
)
def test_the_webhook_rotates_nobody_for_anything_but_one_exact_id(
    salt_master, salt_api, api_token, salt_minion, salt_minion_2, agent, agent_2, minion_id
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
    mark = _log_length(salt_master)
    response = _hook(salt_api, {"minion_id": fill(minion_id)}, api_token)
    assert response.status_code == 200
    refusals = _wait_for_refusals(salt_master, mark, 1)
    assert refusals, "the reactor logged no refusal"
    assert (agent.key_files(), agent_2.key_files()) == keys
    assert not agent.running() and not agent_2.running()


def test_an_unsigned_webhook_rotates_nobody(salt_master, salt_api, api_token, salt_minion, agent):
    keys = agent.key_files()
    mark = _log_length(salt_master)
    for secret in (None, "wrong-secret"):
        assert _hook(salt_api, {"minion_id": salt_minion.id}, api_token, secret=secret).status_code == 200
    refusals = _wait_for_refusals(salt_master, mark, 2)
    assert len(refusals) == 2 and all("not signed" in line for line in refusals), refusals
    assert agent.key_files() == keys and not agent.running()


def test_a_minion_forging_the_webhook_tag_rotates_nobody(salt_master, salt_minion, salt_minion_2, agent, agent_2):
    keys = agent.key_files(), agent_2.key_files()
    mark = _log_length(salt_master)
    forged = {"post": {"minion_id": salt_minion.id}, "headers": {"X-Auth-Token": "forged"}}
    ret = salt_minion_2.salt_call_cli(timeout=60).run(
        "event.send", "salt/netapi/hook/iemkey/compromised", json.dumps(forged))
    assert ret.returncode == 0, ret
    refusals = _wait_for_refusals(salt_master, mark, 1)
    assert any("sent by a minion" in line for line in refusals), refusals
    assert (agent.key_files(), agent_2.key_files()) == keys
