"""The formula: pillar iemkey:rotated_since enforced by state.apply and highstate through a real master."""

import datetime

NOW = datetime.datetime.now(datetime.timezone.utc)
YESTERDAY = (NOW - datetime.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
STATE_ID = "iemkey_|-iemkey-bigfix-agent-key-rotated_|-bigfix-agent-key_|-rotated"


def _only(ret):
    assert isinstance(ret.data, dict), ret
    (state,) = ret.data.values()
    return state


def test_state_apply_rotates_an_old_key_once(salt_cli, salt_minion, agent, set_pillar):
    set_pillar(f"iemkey:\n  rotated_since: {YESTERDAY}\n  wait: 30\n")  # unquoted: YAML makes it a datetime
    old_id = agent.computer_id
    first = salt_cli.run("state.apply", "iemkey", minion_tgt=salt_minion.id)
    assert first.returncode == 0, first
    state = first.data[STATE_ID]
    assert state["result"] is True
    assert state["changes"]["key"]["old"]["computer_id"] == old_id
    assert state["changes"]["key"]["new"]["computer_id"] == agent.computer_id != old_id
    keys = agent.key_files()
    second = salt_cli.run("state.apply", "iemkey", minion_tgt=salt_minion.id)
    assert second.returncode == 0, second
    assert second.data[STATE_ID]["changes"] == {}
    assert agent.key_files() == keys


def test_highstate_with_a_top_file_rotates_once(salt_cli, salt_minion, agent, set_pillar):
    set_pillar(f"iemkey:\n  rotated_since: '{YESTERDAY}'\n")
    first = salt_cli.run("state.highstate", minion_tgt=salt_minion.id)
    assert first.returncode == 0, first
    assert first.data[STATE_ID]["changes"]["removed"] == ["ClientCert.crt", "ClientKey.pvk"]
    assert agent.wait_for_keys()
    second = salt_cli.run("state.highstate", minion_tgt=salt_minion.id)
    assert second.returncode == 0 and second.data[STATE_ID]["changes"] == {}, second


def test_test_mode_touches_neither_files_nor_agent(salt_cli, salt_minion, agent, set_pillar):
    set_pillar(f"iemkey:\n  rotated_since: {int(NOW.timestamp()) - 3600}\n")  # epoch seconds
    before = agent.snapshot(exclude=())
    ret = salt_cli.run("state.apply", "iemkey", "test=True", minion_tgt=salt_minion.id)
    assert ret.returncode == 0, ret
    assert ret.data[STATE_ID]["result"] is None
    assert ret.data[STATE_ID]["changes"]["key"]["old"]["computer_id"] == agent.computer_id
    assert agent.snapshot(exclude=()) == before
    assert agent.untouched()


def test_since_older_than_the_key_changes_nothing(salt_cli, salt_minion, agent, set_pillar):
    set_pillar("iemkey:\n  rotated_since: '2026-01-01T00:00:00+01:00'\n")
    before = agent.snapshot(exclude=())
    ret = salt_cli.run("state.apply", "iemkey", minion_tgt=salt_minion.id)
    assert ret.returncode == 0, ret
    assert ret.data[STATE_ID]["result"] is True and ret.data[STATE_ID]["changes"] == {}
    assert agent.snapshot(exclude=()) == before


def test_late_regeneration_is_not_rotated_twice(salt_cli, salt_minion, agent, set_pillar):
    agent.behave(regen_hold=True)  # the agent writes its key only when the test releases it
    set_pillar(f"iemkey:\n  rotated_since: '{YESTERDAY}'\n")
    first = salt_cli.run("state.apply", "iemkey", minion_tgt=salt_minion.id)
    assert first.data[STATE_ID]["result"] is True and first.data[STATE_ID]["changes"], first
    assert not agent.keystorage.exists()
    keyless = salt_cli.run("state.apply", "iemkey", minion_tgt=salt_minion.id)
    assert keyless.data[STATE_ID]["result"] is True and keyless.data[STATE_ID]["changes"] == {}
    assert "last_rotated" in keyless.data[STATE_ID]["comment"]
    assert not agent.keystorage.exists()  # still keyless: the second run decided on the rotation record
    agent.release_regen()
    assert agent.wait_for_keys(timeout=60)
    keys = agent.key_files()
    late = salt_cli.run("state.apply", "iemkey", minion_tgt=salt_minion.id)
    assert late.data[STATE_ID]["changes"] == {} and "key_created" in late.data[STATE_ID]["comment"]
    assert agent.key_files() == keys


def test_malformed_or_future_since_fails_and_deletes_nothing(salt_cli, salt_minion, agent, set_pillar):
    for since in ("'not a time'", "'2999-01-01T00:00:00Z'", "'2026-11-31T00:00:00Z'"):
        set_pillar(f"iemkey:\n  rotated_since: {since}\n")
        before = agent.snapshot(exclude=())
        ret = salt_cli.run("state.apply", "iemkey", minion_tgt=salt_minion.id)
        assert ret.returncode != 0, ret
        assert ret.data[STATE_ID]["result"] is False
        assert "since" in ret.data[STATE_ID]["comment"]
        assert agent.snapshot(exclude=()) == before


def test_no_pillar_value_changes_nothing(salt_cli, salt_minion, agent, set_pillar):
    set_pillar("{}\n")
    before = agent.snapshot(exclude=())
    ret = salt_cli.run("state.apply", "iemkey", minion_tgt=salt_minion.id)
    assert ret.returncode == 0, ret
    state = _only(ret)
    assert state["result"] is True and state["changes"] == {}
    assert "iemkey:rotated_since is not set" in state["name"]
    assert agent.snapshot(exclude=()) == before
