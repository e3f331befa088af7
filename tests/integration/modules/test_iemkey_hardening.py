"""Crash safety and the manual key exchange's secret, through a real master and minion."""

import json
import pathlib
import time

import pytest
from saltevents import job_returns

PASSWORD = "Kx-7f3c9b2e-relay-secret"  # the test's secret, grepped for everywhere
RELAY = "http://relay.example:52311"


# -- crash safety ------------------------------------------------------------------------
def test_a_caller_killed_after_the_delete_is_finished_by_the_next_run(salt_minion, salt_cli, agent):
    old_id = agent.computer_id
    agent.behave(kill_caller_on="start")  # salt-call dies between the delete and the start
    killed = salt_minion.salt_call_cli(timeout=120).run("iemkey.rotate")
    assert killed.returncode != 0
    assert not agent.keystorage.exists() and not agent.running()
    status = salt_cli.run("iemkey.status", minion_tgt=salt_minion.id)
    assert status.data["pending"] is True and status.data["last_rotated"] is None
    # the kernel dropped the dead caller's lock: the next run goes ahead at once
    finished = salt_cli.run("iemkey.rotate", "wait=30", minion_tgt=salt_minion.id)
    assert finished.returncode == 0, finished
    assert finished.data["resumed"] is True and finished.data["removed"] == ["ClientCert.crt", "ClientKey.pvk"]
    assert finished.data["old_computer_id"] == old_id
    assert finished.data["new_computer_id"] not in (None, old_id)
    assert salt_cli.run("iemkey.status", minion_tgt=salt_minion.id).data["pending"] is False


def test_an_agent_reinstalled_after_a_crash_gets_a_full_rotation(salt_minion, salt_cli, agent, make_agent):
    agent.behave(kill_caller_on="start")
    salt_minion.salt_call_cli(timeout=120).run("iemkey.rotate")
    assert not agent.keystorage.exists()
    # meanwhile the agent is reinstalled: new keys, a new computer ID; the record no longer matches
    record = pathlib.Path(salt_minion.config["cachedir"]) / "iemkey" / "rotation.json"
    kept = record.read_text()
    reinstalled = make_agent(salt_minion.agent_root, key_age=86400)
    reinstalled_id = reinstalled.computer_id
    record.write_text(kept)
    ret = salt_cli.run("iemkey.rotate", "wait=30", minion_tgt=salt_minion.id)
    assert ret.returncode == 0, ret
    assert ret.data["resumed"] is False
    # the console clean-up deletes this ID: it must be the one the agent had just before
    assert ret.data["old_computer_id"] == reinstalled_id != json.loads(kept)["old_computer_id"]
    assert ret.data["new_computer_id"] != ret.data["old_computer_id"]
    assert reinstalled.key_files()


# -- manual key exchange ------------------------------------------------------------------
@pytest.fixture
def relay_pillar(set_pillar, agent):
    set_pillar(f"iemkey:\n  relay: {RELAY}\n  register_password: '{PASSWORD}'\n")
    return agent


def _everything_salt_wrote(salt_master, salt_minion):
    """Text of the master's and minion's logs and job caches (pillar data caches excluded)."""
    found = {}
    for daemon in (salt_master, salt_minion):
        found[daemon.config["log_file"]] = pathlib.Path(daemon.config["log_file"]).read_bytes()
        for path in pathlib.Path(daemon.config["cachedir"]).rglob("*"):
            # the compiled pillar (master pillar cache, minion data cache) is where the secret lives
            if path.is_file() and "minions" not in path.parts and "pillar" not in path.parts:
                found[str(path)] = path.read_bytes()
    return found


def _job_returns(event_listener, salt_master, salt_minion, start, count):
    """The returns (with their jids) of the iemkey jobs the minion ran since ``start``."""
    rotations = job_returns(event_listener, salt_master, salt_minion.id, "iemkey.rotate", start, count=2)
    registrations = job_returns(
        event_listener, salt_master, salt_minion.id, "iemkey.register", start, count=count - len(rotations)
    )
    return rotations + registrations


def test_register_and_rotate_keep_the_password_secret(
    salt_master, salt_minion, salt_cli, salt_run_cli, relay_pillar, event_listener
):
    agent = relay_pillar
    agent.relay_accepts(PASSWORD)
    start = time.time()
    rotated = salt_cli.run("iemkey.rotate", "wait=30", minion_tgt=salt_minion.id)
    assert rotated.returncode == 0, rotated
    assert rotated.data["rotated"] is True and rotated.data["registered"] is True
    registered = salt_cli.run("iemkey.register", minion_tgt=salt_minion.id)
    assert registered.returncode == 0, registered
    assert registered.data["command"] == f"{agent.client_binary} -register ******** {RELAY}"
    assert (agent.state_dir / "register.log").read_text().count("3 arguments") == 2
    agent.relay_accepts("another-password")  # the relay now rejects ours, and the tool echoes it
    failed = salt_cli.run("iemkey.register", minion_tgt=salt_minion.id)
    assert failed.returncode != 0
    assert "password ******** rejected" in failed.stdout
    rotated_bad = salt_cli.run("iemkey.rotate", minion_tgt=salt_minion.id)
    assert rotated_bad.returncode != 0 and rotated_bad.data["registered"] is False
    # the same at trace level, from the minion itself: its console output and its log file
    traced = salt_minion.salt_call_cli(timeout=120).run("-l", "trace", "--log-file-level=trace", "iemkey.register")
    assert traced.returncode != 0 and "-register ******** " + RELAY in traced.stdout + traced.stderr
    outputs = [rotated, registered, failed, rotated_bad, traced]
    for ret in outputs:
        assert PASSWORD not in ret.stdout + ret.stderr

    # positive evidence first: the four jobs' returns reached the master, with their jids ...
    returns = _job_returns(event_listener, salt_master, salt_minion, start, 4)
    assert len(returns) >= 4, returns
    jids = sorted({r["jid"] for r in returns})
    for jid in jids:  # ... and the master's job cache holds each of them, with the redacted command
        lookup = salt_run_cli.run("jobs.lookup_jid", jid, "--out=json")
        assert salt_minion.id in lookup.stdout and ("********" in lookup.stdout or "rotated" in lookup.stdout), lookup
        assert PASSWORD not in lookup.stdout
    jobs = salt_run_cli.run("jobs.list_jobs", "search_function=iemkey.*", "--out=json")
    assert jobs.returncode == 0 and set(jids) <= set(jobs.data) and PASSWORD not in jobs.stdout
    events = event_listener.get_events([(salt_master.id, "*")], after_time=start)
    assert any(e.data.get("jid") in jids for e in events)  # the listener saw these jobs' events
    assert all(PASSWORD.encode() not in json.dumps(e.data, default=str).encode() for e in events)
    written = _everything_salt_wrote(salt_master, salt_minion)
    cache_files = [path for path, data in written.items() if any(jid.encode() in data for jid in jids)]
    assert cache_files, "no job cache file names these jobs: the search below would prove nothing"
    trace_log = written[salt_minion.config["log_file"]]
    assert b"[TRACE" in trace_log and b"iemkey.register" in trace_log  # trace lines were written
    leaks = [path for path, data in written.items() if PASSWORD.encode() in data]
    assert leaks == []


def test_the_password_is_never_taken_from_the_command_line(salt_cli, salt_minion, relay_pillar):
    ret = salt_cli.run("iemkey.register", "password=typed-on-the-cli", minion_tgt=salt_minion.id)
    assert ret.returncode != 0
    # refused; Salt itself echoes (and caches) what was typed, which is why the password lives in pillar
    assert "keyword arguments are not valid: password" in ret.stdout
    assert not (relay_pillar.state_dir / "register.log").exists()  # the vendor tool never ran


def test_register_without_settings_says_what_is_missing(salt_cli, salt_minion, agent, set_pillar):
    set_pillar(f"iemkey:\n  relay: {RELAY}\n")
    ret = salt_cli.run("iemkey.register", minion_tgt=salt_minion.id)
    assert ret.returncode != 0
    assert "needs iemkey:register_password" in ret.stdout


def test_a_failed_key_exchange_fails_the_state_but_keeps_the_rotation(salt_cli, salt_minion, set_pillar, agent):
    agent.relay_accepts("not-our-password")
    yesterday = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 86400))
    set_pillar(f"iemkey:\n  relay: {RELAY}\n  register_password: '{PASSWORD}'\n  rotated_since: '{yesterday}'\n")
    old_id = agent.computer_id
    ret = salt_cli.run("state.apply", "iemkey", minion_tgt=salt_minion.id)
    assert ret.returncode != 0
    (state,) = ret.data.values()
    assert state["result"] is False
    assert state["changes"]["key"]["old"]["computer_id"] == old_id
    assert "The manual key exchange failed" in state["comment"] and PASSWORD not in ret.stdout
