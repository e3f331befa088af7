"""
Owed rotations on a real master running the iemkey engine, real minions and a real salt-api: a
compromise signal for a minion that is away is delivered when it comes back, without anyone sending
anything again; a rotation job that fails is retried and then shown with its error; the report
stays red until the minion's own signed rotation settles it.

The master's ``iemkey:delivery`` (conftest): probe after 3 s, redeliver every 5 s, retry after 3 s,
review after 3 failed jobs.
"""

import json
import pathlib
import shutil
import time

import pytest
import requests
import salt.version
from helpers import HOOK_SECRET, hook_signature
from saltevents import decisions, wait_for

SINCE = "2026-01-01T00:00:00Z"


def _report(salt_run_cli, minion):
    return salt_run_cli.run("iemkey.report", f"since={SINCE}", f"tgt={minion.id}", "timeout=10")


def _owed(salt_run_cli, minion):
    ret = salt_run_cli.run("iemkey.owed", f"minion={minion.id}")
    return ret.data["owed"][0] if ret.data and ret.data.get("owed") else None


def _webhook(salt_api, token, minion_id):
    body = json.dumps({"minion_id": minion_id, "reason": "SIEM rule 4711"}).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Auth-Token": token,
        "X-Iemkey-Signature": hook_signature(HOOK_SECRET, body),
    }
    response = requests.post(f"{salt_api}/hook/iemkey/compromised", data=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text


def test_a_webhook_for_a_minion_that_is_away_rotates_it_once_it_is_back(
    salt_master, salt_minion, salt_api, api_token, salt_run_cli, agent, event_listener
):
    old_id = agent.computer_id
    with salt_minion.stopped():
        start = time.time()
        _webhook(salt_api, api_token, salt_minion.id)
        (decided,) = decisions(event_listener, salt_master, start, tag="salt/netapi/hook/iemkey/compromised")
        assert decided["action"] == "rotate" and decided["jid"], decided
        # nobody answers the job nor the probe: the owed rotation is away, and the report says so and fails
        assert wait_for(lambda: (_owed(salt_run_cli, salt_minion) or {}).get("state") == "away", timeout=60)
        away = _report(salt_run_cli, salt_minion)
        assert away.returncode == 1, away
        (owed,) = away.data["owed"]
        assert owed["state"] == "away" and owed["away_since"] and owed["sources"] == ["webhook"]
        assert "1 rotations owed" in away.data["summary"]
        time.sleep(10)  # away for a while: a laptop asleep
        assert agent.computer_id == old_id
    back = time.time()
    # nothing is sent again: the minion's start event (or the next pass) delivers it
    assert agent.wait_for_keys(timeout=60) and wait_for(lambda: agent.computer_id != old_id, timeout=60)
    assert wait_for(lambda: _owed(salt_run_cli, salt_minion) is None, timeout=60)
    took = time.time() - back
    assert took < 60, took  # issue 25: rotated within 60 s of reconnecting
    history = salt_run_cli.run("iemkey.history", f"minion={salt_minion.id}").data["rotations"]
    (trail,) = [r for r in history if r["state"] == "settled" and r["signals"][0]["source"] == "webhook"]
    states = [step["state"] for step in trail["trail"]]
    assert states[0] == "pending" and "away" in states and states[-1] == "settled", states
    assert _report(salt_run_cli, salt_minion).data["owed"] == []


def test_an_alert_sent_while_the_minion_daemon_is_down_is_delivered_when_it_starts(
    salt_master, salt_minion, salt_run_cli, agent, event_listener
):
    old_id = agent.computer_id
    with salt_minion.stopped():
        start = time.time()
        ret = salt_minion.salt_call_cli(timeout=60).run("iemkey.alert", "reason=EDR while the daemon is down")
        assert ret.returncode == 0, ret
        assert ret.data["resend"] == "every 10 s (schedule iemkey-alert-resend)"  # written for its next start
        (decided,) = decisions(event_listener, salt_master, start, tag="iemkey/compromised")
        assert decided["action"] == "rotate", decided
        assert wait_for(lambda: (_owed(salt_run_cli, salt_minion) or {}).get("state") == "away", timeout=60)
    back = time.time()
    assert wait_for(lambda: agent.computer_id != old_id and agent.key_files(), timeout=60)
    assert wait_for(lambda: _owed(salt_run_cli, salt_minion) is None, timeout=60), _owed(salt_run_cli, salt_minion)
    assert time.time() - back < 60
    # once the minion's own record shows a rotation after it, its schedule forgets the alert
    resent = salt_minion.salt_call_cli(timeout=60).run("iemkey.resend_alerts")
    assert resent.returncode == 0 and resent.data["kept"] == 0 and resent.data["sent_again"] == {}
    listed = salt_minion.salt_call_cli(timeout=60).run("schedule.list", "return_yaml=False")
    assert "iemkey-alert-resend" not in (listed.data or {})


def test_a_rotation_job_that_fails_is_retried_then_shown_with_its_error_and_an_operator_retries_it(
    salt_master, salt_minion, salt_run_cli, agent, event_listener
):
    agent.behave(fail_stop=100)  # the agent cannot be stopped: every job returns without a rotation
    old_id = agent.computer_id
    start = time.time()
    ret = salt_minion.salt_call_cli(timeout=60).run("iemkey.alert", "reason=IDS")
    assert ret.returncode == 0, ret
    decisions(event_listener, salt_master, start, tag="iemkey/compromised")

    def state():
        return (_owed(salt_run_cli, salt_minion) or {}).get("state")

    assert wait_for(lambda: state() == "failed", timeout=60), _owed(salt_run_cli, salt_minion)
    failed = _owed(salt_run_cli, salt_minion)
    assert "stopping the BigFix agent failed" in failed["error"] and failed["next_try"], failed
    assert wait_for(lambda: state() == "review", timeout=90), _owed(salt_run_cli, salt_minion)
    review = _report(salt_run_cli, salt_minion)
    assert review.returncode == 1 and review.data["owed"][0]["attempts"] == 3
    assert "KeyStorage was not touched" in review.data["owed"][0]["error"]
    assert agent.computer_id == old_id and agent.untouched()
    agent.behave()  # fixed
    retried = salt_run_cli.run("iemkey.owed", f"minion={salt_minion.id}", "retry=True")
    assert retried.returncode == 1 and retried.data["owed"][0]["state"] in ("pending", "delivered")  # still owed
    assert wait_for(lambda: _owed(salt_run_cli, salt_minion) is None, timeout=60)
    assert agent.computer_id != old_id
    assert salt_run_cli.run("iemkey.owed").returncode == 0


def test_an_alert_after_a_confirmed_rotation_owes_a_new_one_and_a_copy_of_an_old_one_does_not(
    salt_master, salt_minion, salt_run_cli, agent, event_listener
):
    first = time.time()
    assert salt_minion.salt_call_cli(timeout=60).run("iemkey.alert", "reason=one").returncode == 0
    assert wait_for(lambda: agent.key_files() and _owed(salt_run_cli, salt_minion) is None, timeout=60)
    rotated_id = agent.computer_id
    decided = decisions(event_listener, salt_master, first, tag="iemkey/compromised")
    assert [d["action"] for d in decided] == ["rotate"]
    second = time.time()
    assert salt_minion.salt_call_cli(timeout=60).run("iemkey.alert", "reason=two").returncode == 0
    (again,) = decisions(event_listener, salt_master, second, tag="iemkey/compromised", action="rotate")
    assert again["since"] > decided[0]["since"]  # a new compromise after the new key: a new rotation
    # the minion's schedule may meanwhile send its kept alerts again (at-least-once: while the new
    # rotation runs, its record no longer shows the first one); the master counts those as duplicates
    # of the rotation in flight and publishes nothing
    others = decisions(event_listener, salt_master, second, tag="iemkey/compromised", count=99, timeout=0)
    assert {d["action"] for d in others} <= {"rotate", "duplicate"}, others
    assert wait_for(lambda: agent.computer_id != rotated_id and _owed(salt_run_cli, salt_minion) is None, timeout=60)


@pytest.mark.skipif(
    salt.version.__saltstack_version__.major == 3007,
    reason="Salt 3007.16's minion, once its master restarted after the earlier tests of this module stopped "
    "and started it, reconnects every second ('Connection to master lost', 'Re-initialising subsystems': "
    "156 times in 150 s), building its scheduler anew each time, so no 10 s schedule ever fires; alone it "
    "passes. 3006 and 3008 run it (see docs/topics/engine-and-threat-model.md)",
)
@pytest.mark.restarts_master
def test_an_alert_the_master_lost_in_a_restart_is_sent_again_by_the_minion_until_it_rotates(
    salt_master, salt_minion, salt_run_cli, agent
):
    """The master stops right after the alert reached it, before anything of it was kept (what a
    master that died between its bus and its store loses): the minion sends it again on its own."""
    old_id = agent.computer_id
    salt_master.terminate()
    ret = salt_minion.salt_call_cli(timeout=60).run("--local", "iemkey.alert", "reason=lost in a restart")
    assert ret.returncode == 1, ret  # no master took it: the call says so, and the alert is kept
    assert "the alert is kept and sent again: every 10 s (schedule iemkey-alert-resend)" in ret.stderr + ret.stdout
    store = pathlib.Path(salt_master.config["cachedir"]) / "iemkey"
    for bank in ("owed", "compromises"):
        shutil.rmtree(store / bank, ignore_errors=True)
    salt_master.start()
    assert wait_for(lambda: agent.computer_id != old_id and agent.key_files(), timeout=150)
    assert wait_for(lambda: _owed(salt_run_cli, salt_minion) is None, timeout=60)
    kept = salt_minion.salt_call_cli(timeout=60).run("iemkey.resend_alerts")
    assert kept.data["kept"] == 0
