"""iemkey.rotate, status and restart through the real loader against the stand-in agent."""

import datetime
import os
import re
import time

import pytest
from helpers import module_globals
from salt.exceptions import CommandExecutionError, SaltInvocationError
from saltevents import wait_for


def test_status_of_an_installed_agent(modules, agent):
    status = modules.iemkey.status()
    assert status["installed"] is True
    assert status["keystorage"] == str(agent.keystorage)
    assert status["computer_id"] == agent.computer_id
    assert status["agent_running"] is True
    assert status["last_rotated"] is None
    assert status["key_files"] == 2
    age = datetime.datetime.now(datetime.timezone.utc) - datetime.datetime.fromisoformat(status["key_created"])
    assert datetime.timedelta(days=29) < age < datetime.timedelta(days=31)


def test_rotate_makes_a_new_key_and_computer_id_and_touches_nothing_else(modules, agent):
    old_id, old_keys = agent.computer_id, agent.key_files()
    before = agent.snapshot(exclude=("KeyStorage", "besclient.config"))
    config_before = agent.config_file.read_text().splitlines()
    ret = modules.iemkey.rotate(wait=20)
    assert ret["rotated"] is True
    assert ret["old_computer_id"] == old_id
    assert sorted(ret["removed"]) == sorted(old_keys)
    assert ret["new_computer_id"] == agent.computer_id != old_id
    assert agent.running()
    new_keys = agent.key_files()
    assert set(new_keys) == set(old_keys) and all(new_keys[k] != old_keys[k] for k in new_keys)
    assert agent.snapshot(exclude=("KeyStorage", "besclient.config")) == before
    # the agent itself rewrote only its ComputerID line
    changed = [(a, b) for a, b in zip(config_before, agent.config_file.read_text().splitlines(), strict=True) if a != b]
    assert [line.split("=")[0].strip() for line, _ in changed] == ["ComputerID"]
    status = modules.iemkey.status()
    assert status["last_rotated"] == ret["rotated_at"]
    assert status["key_created"] >= ret["rotated_at"]
    assert ret["event_sent"] is False  # masterless (this loader's minion): no master to tell
    assert f"the old computer {old_id} stays in the BigFix console until an operator removes it" in ret["cleanup"]
    # the agent was stopped (its old key still there), then started without KeyStorage: a new computer
    since_install = agent.events()[len(agent.installed[1]) :]
    registered = [i for i, event in enumerate(since_install) if event.startswith("registered")]
    assert since_install.index("stop") < registered[0] and "start" in since_install


def test_rotate_deletes_only_keystorage_byte_for_byte(modules, agent):
    agent.behave(regen_delay=3600)  # the agent stays keyless: nothing but iemkey changes the tree
    before = agent.snapshot()
    ret = modules.iemkey.rotate()
    assert ret["rotated"] is True and not agent.keystorage.exists()
    assert agent.snapshot() == before


def test_test_mode_changes_nothing(modules, agent):
    before = agent.snapshot(exclude=())
    ret = modules.iemkey.rotate(test=True)
    assert ret["rotated"] is None
    assert ret["would_remove"] == ["ClientCert.crt", "ClientKey.pvk"]
    assert ret["would_run"][1] == f"delete {agent.keystorage}"
    assert agent.snapshot(exclude=()) == before
    assert agent.untouched()


def test_a_failed_stop_touches_nothing(modules, agent):
    agent.behave(fail_stop=1)
    before = agent.snapshot(exclude=())
    with pytest.raises(CommandExecutionError, match=r"stopping the BigFix agent failed: .* simulated failure"):
        modules.iemkey.rotate()
    assert agent.snapshot(exclude=()) == before


def test_a_failed_stop_keeps_the_last_rotation_on_record(modules, agent):
    first = modules.iemkey.rotate(wait=20)
    assert modules.iemkey.status()["last_rotated"] == first["rotated_at"]
    agent.behave(fail_stop=1)
    with pytest.raises(CommandExecutionError, match="stopping the BigFix agent failed"):
        modules.iemkey.rotate()
    # nothing happened: the record still shows the rotation that did (kept alerts and owed checks read it)
    assert modules.iemkey.status()["last_rotated"] == first["rotated_at"]
    assert modules.iemkey.check(first["rotated_at"], owed=True)["compliant"] is True


def test_a_failed_start_says_the_keys_are_gone_and_the_next_run_finishes(modules, agent):
    old_id = agent.computer_id
    agent.behave(fail_start=1)
    with pytest.raises(CommandExecutionError) as err:
        modules.iemkey.rotate()
    assert "The keys are gone and the agent is down" in str(err.value)
    assert "simulated failure" in str(err.value)
    assert not agent.keystorage.exists() and not agent.running()
    assert modules.iemkey.status()["pending"] is True
    ret = modules.iemkey.rotate(wait=20)  # finishes: starts the agent, deletes nothing new
    assert ret["resumed"] is True
    assert ret["old_computer_id"] == old_id
    assert ret["new_computer_id"] not in (None, old_id)
    assert modules.iemkey.status()["pending"] is False


def test_a_hanging_stop_times_out_with_a_clear_error(modules, agent):
    agent.behave(hang="stop")
    with pytest.raises(CommandExecutionError, match=r"timed out after 5 s \(iemkey:command_timeout\)"):
        modules.iemkey.rotate()
    assert agent.key_files()  # it never got to the delete


def test_restart_runs_the_control_script(modules, agent):
    ret = modules.iemkey.restart()
    assert ret["command"] == f"{agent.init_script} restart"
    assert ret["retcode"] == 0 and ret["agent_running"] is True
    assert agent.key_files()  # a restart is not a rotation


def test_without_its_control_script_the_agent_is_reported_but_not_touched(modules, agent):
    agent.init_script.unlink()
    missing = f"no control script at {agent.init_script} (config iemkey:init_script)"
    status = modules.iemkey.status()
    assert status["installed"] is True and status["key_files"] == 2 and status["computer_id"] == agent.computer_id
    assert status["agent_running"] is None and status["problem"] == missing
    refused = f"cannot stop or start the BigFix agent here: {missing}"
    with pytest.raises(CommandExecutionError, match=re.escape(refused)):
        modules.iemkey.rotate()
    assert agent.key_files()


def test_linux_without_script_or_service_names_both_and_reports_the_keys(modules, agent, loaders, monkeypatch):
    monkeypatch.delitem(loaders.opts["iemkey"], "init_script")  # the default: /etc/init.d/besclient, absent here
    missing = "no /etc/init.d/besclient and no besclient service"
    status = modules.iemkey.status()
    assert (status["installed"], status["key_files"], status["problem"]) == (True, 2, missing)
    assert loaders.context.get("retcode", 0) == 0  # asking Salt's service module does not fail the job
    with pytest.raises(CommandExecutionError, match=f"cannot stop or start the BigFix agent here: {missing}"):
        modules.iemkey.rotate()
    assert agent.key_files()


def test_rotate_without_an_agent_has_nothing_to_rotate_unless_one_is_required(modules, agent, loaders):
    import shutil

    agent.kill()
    shutil.rmtree(agent.storage)  # uninstalled: no settings, no KeyStorage
    status = modules.iemkey.status()
    assert status["installed"] is False and status["key_files"] == 0 and status["agent_running"] is None
    assert status["problem"].startswith("no storage path at")
    ret = modules.iemkey.rotate()
    assert ret["no_agent"] is True and ret["rotated"] is False
    assert ret["comment"].startswith("no BigFix agent here: nothing to rotate (no storage path at ")
    loaders.opts["iemkey"]["require_agent"] = True  # config.get reads the minion's config
    try:
        with pytest.raises(CommandExecutionError, match="the BigFix agent is not installed here: no storage path at"):
            modules.iemkey.rotate()
    finally:
        del loaders.opts["iemkey"]["require_agent"]


def test_check_decides_on_the_key_time(modules, agent):
    old = modules.iemkey.check(since="2026-01-01T00:00:00Z")
    recent = modules.iemkey.check(
        since=(datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)).isoformat()
    )
    assert old["compliant"] is True and old["basis"] == "key_created"
    assert recent["compliant"] is False
    with pytest.raises(SaltInvocationError, match="in the future"):
        modules.iemkey.check(since="2999-01-01T00:00:00Z")


def test_rotate_since_skips_a_key_that_is_new_enough(modules, agent):
    ret = modules.iemkey.rotate(since="2020-01-01T00:00:00Z")
    assert ret["rotated"] is False and "at or after" in ret["comment"]
    assert os.path.isdir(agent.keystorage) and agent.untouched()


@pytest.mark.parametrize("step", ["key_exchange", "_send_rotated", "write_record_done"])
def test_an_unexpected_error_after_the_delete_fails_the_job_but_keeps_the_rotation(modules, agent, monkeypatch, step):
    module = module_globals(modules.iemkey.rotate)
    old_id = agent.computer_id

    def injected(*_args):
        raise RuntimeError("injected")

    if step == "write_record_done":
        minion_agent = module["iemkey_agent"].Agent
        real = minion_agent.write_record

        def write(self, record):
            if record.get("step") == "done":
                raise OSError(28, "No space left on device")
            return real(self, record)

        monkeypatch.setattr(minion_agent, "write_record", write)
    elif step == "key_exchange":  # a step of the rotation (iemkey_rotation)
        monkeypatch.setattr(module["iemkey_rotation"], "key_exchange", injected)
    else:  # the module's own
        monkeypatch.setitem(module, step, injected)
    ret = modules.iemkey.rotate(wait=20)
    assert ret["rotated"] is True and ret["old_computer_id"] == old_id and ret["removed"]
    assert ret["new_computer_id"] == agent.computer_id != old_id  # the steps after the failed one still ran
    (error,) = ret["errors"]
    assert "failed after the rotation" in error


def test_wait_shorter_than_the_agents_registration_returns_without_the_new_id(modules, agent):
    old_id = agent.computer_id
    agent.behave(regen_hold=True)  # registers only when the test says so
    ret = modules.iemkey.rotate(wait=1)
    assert ret["rotated"] is True and ret["new_computer_id"] is None and ret["key_created"] is None
    assert agent.computer_id == old_id and not agent.keystorage.exists()
    agent.release_regen()
    assert agent.wait_for_keys() and agent.computer_id != old_id
    assert modules.iemkey.status()["key_created"] >= ret["rotated_at"]


def test_wait_returns_the_new_computer_once_the_agent_registers(modules, agent):
    old_id = agent.computer_id
    agent.behave(regen_delay=2)  # the agent takes a moment to make its key and register
    ret = modules.iemkey.rotate(wait=60)
    assert ret["new_computer_id"] == agent.computer_id != old_id
    assert ret["key_created"] == modules.iemkey.status()["key_created"] >= ret["rotated_at"]


def test_new_keys_without_a_new_computer_id_yet_are_not_the_new_registration(modules, agent):
    old_id = agent.computer_id
    agent.behave(register_hold=True)  # keys at once; the new computer ID only when the test says so
    ret = modules.iemkey.rotate(wait=1)
    assert agent.key_files() and agent.computer_id == old_id  # the wait saw keys, and still the old ID
    assert ret["rotated"] is True and ret["new_computer_id"] is None and ret["key_created"] is None
    agent.release_regen()
    assert wait_for(lambda: agent.computer_id != old_id, timeout=30)


def test_a_start_that_hangs_after_the_delete_is_reported_and_finished_by_the_next_run(modules, agent):
    old_id = agent.computer_id
    agent.behave(hang="start")
    with pytest.raises(CommandExecutionError, match=r"starting the agent failed: .*timed out after 5 s") as err:
        modules.iemkey.rotate()
    assert "The keys are gone and the agent is down" in str(err.value)
    assert not agent.keystorage.exists() and modules.iemkey.status()["pending"] is True
    agent.behave()
    ret = modules.iemkey.rotate(wait=20)
    assert ret["resumed"] is True and ret["old_computer_id"] == old_id and ret["new_computer_id"] != old_id


def test_a_rotation_that_waited_for_the_lock_rechecks_since_and_rotates_nothing(modules, agent, minion_opts):
    """The lock is held by another rotation that makes a new key; the waiting one must then find it."""
    import fcntl
    import threading

    lock = os.path.join(minion_opts["cachedir"], "iemkey", "rotate.lock")
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    since = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)
    holding, result = threading.Event(), {}
    with open(lock, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)

        def rotate():
            holding.set()
            result["ret"] = modules.iemkey.rotate(since=since.isoformat())

        waiter = threading.Thread(target=rotate)
        waiter.start()
        assert holding.wait(10)
        time.sleep(0.5)  # the waiter is blocked on the lock (lock_wait is 2 s here)
        assert waiter.is_alive()
        agent.write_keys()  # the other rotation's new key, made after since
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        waiter.join(10)
    ret = result["ret"]
    assert ret["rotated"] is False and "is at or after since" in ret["comment"], ret
    assert agent.untouched()  # never stopped: the waiting rotation did nothing
