"""The iemkey.rotated state through the real loader."""

import datetime

import pytest

NOW = datetime.datetime.now(datetime.timezone.utc)
YESTERDAY = (NOW - datetime.timedelta(days=1)).isoformat()


@pytest.fixture
def states(loaders, modules):
    return loaders.states


def test_an_old_key_is_rotated_once(states, agent):
    old_id = agent.computer_id
    first = states.iemkey.rotated(name="key", since=YESTERDAY, wait=20)
    assert first.result is True
    assert first.changes["key"]["old"]["computer_id"] == old_id
    assert first.changes["key"]["new"]["computer_id"] == agent.computer_id != old_id
    second = states.iemkey.rotated(name="key", since=YESTERDAY)
    assert second.result is True and second.changes == {}
    assert "key_created" in second.comment


def test_while_the_agent_is_still_keyless_the_rotation_counts(states, agent):
    agent.behave(regen_delay=3600)
    first = states.iemkey.rotated(name="key", since=YESTERDAY)
    assert first.result is True and first.changes
    again = states.iemkey.rotated(name="key", since=YESTERDAY)
    assert again.result is True and again.changes == {}
    assert "last_rotated" in again.comment


def test_test_mode_plans_and_changes_nothing(states, agent, loaders):
    before = agent.snapshot(exclude=())
    ret = states.iemkey.rotated(name="key", since=YESTERDAY, test=True)
    assert ret.result is None
    assert ret.changes["key"]["new"] == "a new key and computer ID"
    assert agent.snapshot(exclude=()) == before and agent.untouched()


@pytest.mark.parametrize("since", ["last week", "2026-02-30T00:00:00Z", "2999-01-01T00:00:00Z", ""])
def test_bad_since_fails_and_changes_nothing(states, agent, since):
    before = agent.snapshot(exclude=())
    ret = states.iemkey.rotated(name="key", since=since)
    assert ret.result is False and ret.changes == {}
    assert "since" in ret.comment
    assert agent.snapshot(exclude=()) == before


def test_a_key_newer_than_since_is_left_alone(states, agent):
    ret = states.iemkey.rotated(name="key", since="2020-01-01T00:00:00+02:00")
    assert ret.result is True and ret.changes == {}
    assert agent.key_files() and agent.untouched()


def test_restored_old_keys_do_not_count_as_rotated(states, modules, agent):
    first = states.iemkey.rotated(name="key", since=YESTERDAY, wait=20)
    assert first.result is True and first.changes["key"]["new"]["computer_id"] == agent.computer_id
    agent.age_keys(30 * 86400)  # a backup of the old key is restored over the new one
    ret = states.iemkey.rotated(name="key", since=YESTERDAY, wait=20)
    assert ret.result is True and ret.changes, ret.comment
    assert ret.changes["key"]["old"]["computer_id"] == first.changes["key"]["new"]["computer_id"]


def test_a_stale_agent_fails_the_state(states, modules, agent, minion_opts):
    import json
    import os

    agent.behave(regen_delay=3600)
    assert states.iemkey.rotated(name="key", since=YESTERDAY).result is True
    record = os.path.join(minion_opts["cachedir"], "iemkey", "rotation.json")
    data = json.load(open(record))
    data["rotated_at"] = (NOW - datetime.timedelta(hours=2)).isoformat()  # > stale_after (900 s) ago
    json.dump(data, open(record, "w"))
    ret = states.iemkey.rotated(name="key", since=(NOW - datetime.timedelta(days=1)).isoformat())
    assert ret.result is False and ret.changes == {}
    assert "down or cannot register" in ret.comment
