"""iemkey execution module through a real master: `salt <minion> iemkey.*`."""

import time

from helpers import REPO


def test_sys_doc_has_a_cli_example_for_every_public_function(salt_cli, salt_minion):
    ret = salt_cli.run("sys.doc", "iemkey", minion_tgt=salt_minion.id)
    assert ret.returncode == 0, ret
    docs = ret.data
    assert set(docs) >= {"iemkey.paths", "iemkey.status", "iemkey.rotate", "iemkey.restart", "iemkey.check"}
    for name, doc in docs.items():
        assert "CLI Example:" in doc and f"salt '*' {name}" in doc, name


def test_salt_rotate_regenerates_keys_and_the_event_reaches_the_master(
    salt_cli, salt_master, salt_minion, agent, event_listener
):
    old_id, old_keys = agent.computer_id, agent.key_files()
    before = agent.snapshot(exclude=("KeyStorage", "besclient.config"))
    start = time.time()
    ret = salt_cli.run("iemkey.rotate", "wait=30", minion_tgt=salt_minion.id)
    assert ret.returncode == 0, ret
    data = ret.data
    assert data["rotated"] is True
    assert data["old_computer_id"] == old_id
    assert data["new_computer_id"] == agent.computer_id != old_id
    assert sorted(data["removed"]) == sorted(old_keys)
    assert data["event_sent"] is True
    new_keys = agent.key_files()
    assert set(new_keys) == set(old_keys) and all(new_keys[n] != old_keys[n] for n in new_keys)
    assert agent.snapshot(exclude=("KeyStorage", "besclient.config")) == before
    matched = event_listener.wait_for_events([(salt_master.id, "iemkey/rotated")], after_time=start, timeout=30)
    assert matched.found_all_events, matched
    event = next(iter(matched))
    assert event.data["id"] == salt_minion.id
    assert event.data["data"]["old_computer_id"] == old_id
    assert event.data["data"]["new_computer_id"] == data["new_computer_id"]
    assert event.data["data"]["rotated_at"] == data["rotated_at"]


def test_salt_status_and_paths(salt_cli, salt_minion, agent):
    status = salt_cli.run("iemkey.status", minion_tgt=salt_minion.id)
    assert status.returncode == 0, status
    assert status.data["computer_id"] == agent.computer_id
    assert status.data["installed"] is True and status.data["agent_running"] is True
    paths = salt_cli.run("iemkey.paths", minion_tgt=salt_minion.id)
    assert paths.data["keystorage"] == str(agent.keystorage)
    assert paths.data["control"]["restart"] == f"{agent.init_script} restart"


def test_a_failed_start_makes_salt_exit_non_zero(salt_cli, salt_minion, agent):
    agent.behave(fail_start=5)
    ret = salt_cli.run("iemkey.rotate", minion_tgt=salt_minion.id)
    assert ret.returncode != 0, ret
    assert "The keys are gone and the agent is down" in ret.stdout
    assert "simulated failure" in ret.stdout
    assert "Traceback" not in ret.stdout
    agent.behave()
    ret = salt_cli.run("iemkey.rotate", minion_tgt=salt_minion.id)
    assert ret.returncode == 0, ret
    assert ret.data["resumed"] is True


def test_a_control_script_that_is_missing_fails_rotate_and_no_agent_at_all_is_nothing_to_rotate(
    salt_cli, salt_minion, agent
):
    import shutil

    agent.init_script.unlink()
    ret = salt_cli.run("iemkey.rotate", minion_tgt=salt_minion.id)
    assert ret.returncode != 0, ret
    assert f"cannot stop or start the BigFix agent here: no control script at {agent.init_script}" in ret.stdout
    assert agent.key_files()
    status = salt_cli.run("iemkey.status", minion_tgt=salt_minion.id)
    assert status.returncode == 0 and status.data["installed"] is True and status.data["key_files"] == 2, status
    agent.kill()
    shutil.rmtree(agent.storage)
    status = salt_cli.run("iemkey.status", minion_tgt=salt_minion.id)
    assert status.returncode == 0 and status.data["installed"] is False, status
    ret = salt_cli.run("iemkey.rotate", minion_tgt=salt_minion.id)  # no agent: nothing to rotate, success
    assert ret.returncode == 0 and ret.data["no_agent"] is True, ret


def test_a_changed_utility_module_is_used_after_sync_all_without_a_restart(salt_cli, salt_minion, state_root):
    """_utils/iemkey_*.py hold the logic: an operator who updates them runs saltutil.sync_all, and
    the running minion uses them from its next job on (no restart)."""
    original = (REPO / "_utils" / "iemkey_time.py").read_text()
    said, changed = "is not a time;", "is not a time iemkey reads (the synced change);"
    shadow = state_root / "_utils" / "iemkey_time.py"  # the master's first file root: it wins the sync

    def refusal():
        ret = salt_cli.run("iemkey.check", "since=yesterday", minion_tgt=salt_minion.id)
        assert ret.returncode != 0, ret
        return ret.stdout

    assert said in refusal()
    shadow.parent.mkdir(exist_ok=True)
    shadow.write_text(original.replace(said, changed))
    try:
        synced = salt_cli.run("saltutil.sync_all", minion_tgt=salt_minion.id)
        assert "utils.iemkey_time" in synced.data["utils"], synced
        assert changed in refusal()
    finally:
        shadow.unlink()
        synced = salt_cli.run("saltutil.sync_all", minion_tgt=salt_minion.id)
    assert "utils.iemkey_time" in synced.data["utils"], synced
    assert said in refusal()
