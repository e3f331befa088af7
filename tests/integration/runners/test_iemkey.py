"""
The runner through a real master: `salt-run iemkey.report` and `iemkey.remove_computer`
against a stand-in BigFix REST server on loopback (pytest-httpserver) that checks the
method, the path and HTTP Basic auth, and the rotate -> event -> reactor -> DELETE chain.
"""

import base64
import datetime
import json
import pathlib
import time

import pytest
from helpers import API_PASSWORD
from saltevents import decisions, wait_for
from werkzeug import Response

BASIC = "Basic " + base64.b64encode(f"iemkey-operator:{API_PASSWORD}".encode()).decode()
YESTERDAY = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _deletes(httpserver):
    return [(req.method, req.path) for req, _resp in httpserver.log if req.method == "DELETE"]


def _computer(httpserver, computer_id, status=200):
    """DELETE /api/computer/<id> answers ``status`` (BigFix's ``ok`` with a 200); the API user is a
    master operator (GET /api/operator/<user>)."""
    _operator(httpserver)
    httpserver.expect_request(
        f"/api/computer/{computer_id}", method="DELETE", headers={"Authorization": BASIC}
    ).respond_with_data("ok" if status == 200 else "", status=status)


def _operator(httpserver, master=True):
    xml = f"<BESAPI><Operator><MasterOperator>{str(master).lower()}</MasterOperator></Operator></BESAPI>"
    httpserver.expect_request("/api/operator/iemkey-operator", method="GET").respond_with_data(xml)


# -- report -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stopped_minion(salt_master, salt_minion, tmp_path_factory):
    """An accepted minion that is not running: unreachable. Its key is deleted after this module: the
    session's master is shared, and later tests (the docs' wait-for-minions loop) need no minion down."""
    factory = salt_master.salt_minion_daemon("gamma-stopped")
    with factory.started(start_timeout=120):
        pass
    yield factory
    ret = salt_master.salt_key_cli().run("-d", factory.id, "-y")
    assert ret.returncode == 0, ret


def test_report_lists_the_bigfix_computers_no_minion_covers(salt_run_cli, salt_minion, salt_minion_2, bigfix):
    """Agents outside Salt: computers the stand-in server holds that no minion's agent is, all of them
    with --out=json, the first iemkey:coverage:list (20) in salt-run's text output."""
    now = time.time()
    for n in range(25):
        bigfix.others[str(5000 + n)] = {"name": f"dmz-{n:02d}", "registered": now - 86400, "last_report": now - 600}
    args = ("iemkey.report", "since=2026-01-01T00:00:00Z", f"tgt={salt_minion.id},{salt_minion_2.id}", "tgt_type=list")
    full = salt_run_cli.run(*args, "outside=True")
    outside = full.data["outside_salt"]
    assert [c["computer_id"] for c in outside["computers"]] == [str(5000 + n) for n in range(25)], full
    assert outside["count"] == 25 and outside["complete"] is True and outside["requests"] == 2
    assert "25 BigFix computers outside Salt" in full.data["summary"]
    text = salt_run_cli.run(*args, "outside=True", "--out=nested")
    assert "dmz-19" in text.stdout and "dmz-20" not in text.stdout, text
    assert "5 more: --out=json lists all of them" in text.stdout
    assert "outside_salt" not in salt_run_cli.run(*args).data  # part of the fleet: not compared unless asked


def test_report_classifies_compliant_noncompliant_and_unreachable(
    salt_run_cli, salt_cli, salt_minion, salt_minion_2, stopped_minion, agent, agent_2
):
    ret = salt_cli.run("iemkey.rotate", "wait=30", minion_tgt=salt_minion_2.id)  # only beta is new
    assert ret.returncode == 0, ret
    targets = ",".join([salt_minion.id, salt_minion_2.id, stopped_minion.id])
    report = salt_run_cli.run("iemkey.report", f"since={YESTERDAY}", f"tgt={targets}", "tgt_type=list", "timeout=10")
    assert report.returncode != 0, report
    data = report.data
    assert data["compliant"] == [salt_minion_2.id]
    assert data["noncompliant"] == [salt_minion.id]
    assert data["unreachable"] == [stopped_minion.id]
    assert data["minions"][stopped_minion.id] == {"error": "no answer within 10 s"}
    assert data["minions"][salt_minion.id]["computer_id"] == agent.computer_id
    assert data["minions"][salt_minion.id]["basis"] == "key_created"
    assert "1 compliant, 1 noncompliant, 1 unreachable" in data["summary"]
    compliant = salt_run_cli.run("iemkey.report", f"since={YESTERDAY}", f"tgt={salt_minion_2.id}")
    assert compliant.returncode == 0, compliant
    assert compliant.data["compliant"] == [salt_minion_2.id] and compliant.data["noncompliant"] == []


def test_report_on_a_target_that_matches_nobody_fails(salt_run_cli, salt_minion, agent):
    report = salt_run_cli.run("iemkey.report", f"since={YESTERDAY}", "tgt=nosuch*")
    assert report.returncode != 0, report
    assert report.data["error"] == "the target 'nosuch*' (glob) matches no accepted minion: nothing to report on"


def test_a_minion_without_an_agent_is_listed_apart_and_fails_nothing_unless_one_is_required(
    salt_run_cli, salt_cli, salt_minion, agent, set_pillar
):
    """Issue 28: a mixed fleet. A real minion whose BigFix agent is gone: rotate, the state and the
    report succeed with nothing to rotate; with iemkey:require_agent: true in pillar, each fails."""
    import shutil

    agent.kill()
    shutil.rmtree(agent.storage)
    report = salt_run_cli.run("iemkey.report", "since=2026-01-01T00:00:00Z", f"tgt={salt_minion.id}")
    assert report.returncode == 0, report
    assert report.data["no_agent"] == [salt_minion.id] and report.data["minions"][salt_minion.id]["no_agent"]
    rotate = salt_cli.run("iemkey.rotate", minion_tgt=salt_minion.id)
    assert rotate.returncode == 0 and rotate.data["no_agent"] is True, rotate
    assert rotate.data["comment"].startswith("no BigFix agent here: nothing to rotate (no storage path at ")
    state = salt_cli.run(
        "state.single", "iemkey.rotated", "name=k", "since=2026-01-01T00:00:00Z", minion_tgt=salt_minion.id
    )
    assert state.returncode == 0, state
    (result,) = state.data.values()
    assert result["result"] is True and result["comment"].startswith("No BigFix agent here: nothing to rotate")
    # grains are computed at start and at refresh_grains (docs: Formula): an operator refreshes them
    assert salt_cli.run("saltutil.refresh_grains", minion_tgt=salt_minion.id).returncode == 0
    grain = salt_cli.run("grains.get", "iemkey:installed", minion_tgt=salt_minion.id)
    assert grain.data is False, grain
    set_pillar("iemkey:\n  require_agent: true\n")
    required = salt_run_cli.run("iemkey.report", "since=2026-01-01T00:00:00Z", f"tgt={salt_minion.id}")
    assert required.returncode == 1 and "(1 required to have one)" in required.data["summary"], required
    assert salt_cli.run("iemkey.rotate", minion_tgt=salt_minion.id).returncode != 0


def test_report_lists_an_unsafe_keystorage_path_under_errors_with_its_reason(
    salt_run_cli, salt_minion, agent, set_pillar, tmp_path
):
    link = tmp_path / "storage-to-root"
    link.symlink_to("/")
    set_pillar(f"iemkey:\n  storage_path: {link}\n")
    report = salt_run_cli.run("iemkey.report", "since=2026-01-01T00:00:00Z", f"tgt={salt_minion.id}")
    assert report.returncode != 0
    assert report.data["errors"] == [salt_minion.id] and report.data["noncompliant"] == [], report
    assert (
        f"the storage path {link} resolves to /, the root of a file system"
        in (report.data["minions"][salt_minion.id]["error"])
    )
    assert agent.untouched()


@pytest.mark.parametrize("since", ["last-week", "20261120", "0"])
def test_report_with_a_malformed_since_is_one_error_before_anyone_is_asked(
    salt_run_cli, salt_master, salt_minion, agent, event_listener, since
):
    start = time.time()
    report = salt_run_cli.run("iemkey.report", f"since={since}", f"tgt={salt_minion.id}")
    assert report.returncode == 1 and report.data["error"].startswith("since "), report
    assert "is not a time" in report.data["error"] or "is a number, but not 10 digits" in report.data["error"]
    assert "minions" not in report.data
    jobs = event_listener.get_events([(salt_master.id, "salt/job/*/new")], after_time=start)
    assert not [j for j in jobs if j.data.get("fun") == "iemkey.check"]  # the fleet was never asked


def test_report_without_since_exits_non_zero(salt_run_cli, salt_minion, agent):
    report = salt_run_cli.run("iemkey.report", f"tgt={salt_minion.id}")
    assert report.returncode == 1 and report.data["error"] == "report needs since, e.g. since=2026-11-20T08:00:00Z"


# -- remove_computer -----------------------------------------------------------------------
def test_remove_computer_deletes_with_basic_auth(salt_run_cli, httpserver):
    _computer(httpserver, 1234567)
    ret = salt_run_cli.run("iemkey.remove_computer", "1234567")
    assert ret.returncode == 0, ret
    assert ret.data["computers"] == [
        {"computer_id": "1234567", "result": True, "status": "deleted", "detail": "deleted (BigFix answered ok)"}
    ]
    assert _deletes(httpserver) == [("DELETE", "/api/computer/1234567")]


def test_a_404_to_a_master_operator_is_not_found(salt_run_cli, httpserver):
    _computer(httpserver, 42, status=404)
    ret = salt_run_cli.run("iemkey.remove_computer", "42")
    assert ret.returncode == 0 and ret.data["computers"][0]["status"] == "not found", ret


def test_a_5xx_is_retried_then_succeeds(salt_run_cli, httpserver):
    httpserver.expect_oneshot_request("/api/computer/77", method="DELETE").respond_with_data("busy", status=503)
    _computer(httpserver, 77)
    ret = salt_run_cli.run("iemkey.remove_computer", "77")
    assert ret.returncode == 0, ret
    assert _deletes(httpserver) == [("DELETE", "/api/computer/77")] * 2


def test_persistent_500_fails_after_the_retries(salt_run_cli, httpserver):
    _computer(httpserver, 500500, status=500)
    ret = salt_run_cli.run("iemkey.remove_computer", "500500")
    assert ret.returncode != 0
    assert "HTTP 500" in ret.data["error"]
    assert _deletes(httpserver) == [("DELETE", "/api/computer/500500")] * 3


def test_a_timeout_fails_after_the_retries(salt_run_cli, httpserver):
    def slow(_request):
        time.sleep(3)  # the master's iemkey:api:timeout is 2 s
        return Response("", status=200)

    _operator(httpserver)
    httpserver.expect_request("/api/computer/9", method="DELETE").respond_with_handler(slow)
    ret = salt_run_cli.run("iemkey.remove_computer", "9")
    assert ret.returncode != 0
    assert "no answer within 2 s (iemkey:api:timeout)" in ret.data["error"], ret


def test_wrong_credentials_are_an_authentication_error(salt_run_cli, httpserver):
    httpserver.expect_request("/api/operator/iemkey-operator").respond_with_data("", status=401)
    ret = salt_run_cli.run("iemkey.remove_computer", "5")
    assert ret.returncode != 0
    assert "authentication failed" in ret.data["error"] and "iemkey-operator" in ret.data["error"]
    assert ret.data["error"].endswith("nothing was sent")  # not retried, and no DELETE was sent
    assert ("DELETE", "/api/computer/5") not in _deletes(httpserver)


def test_a_non_numeric_id_is_refused_before_any_request(salt_run_cli, httpserver):
    ret = salt_run_cli.run("iemkey.remove_computer", "1/../../api/computers")
    assert ret.returncode != 0
    assert "computer IDs are numbers" in ret.data["error"]
    assert not any("computers" in path for _method, path in _deletes(httpserver))


def test_rotation_chain_deletes_the_old_id_and_never_the_new_one(
    salt_master, salt_cli, salt_run_cli, salt_minion, agent, bigfix, event_listener
):
    old_id = agent.computer_id
    start = time.time()
    ret = salt_cli.run("iemkey.rotate", "wait=30", minion_tgt=salt_minion.id)
    assert ret.returncode == 0, ret
    new_id = ret.data["new_computer_id"]
    assert new_id not in (None, old_id)
    decided = decisions(event_listener, salt_master, start)
    assert decided and decided[0]["action"] == "recorded", decided
    assert wait_for(lambda: bigfix.deletes() == [old_id]), bigfix.calls  # never the new ID
    assert new_id in bigfix.computers() and old_id not in bigfix.computers()
    cleaned = salt_run_cli.run("iemkey.cleanup")
    assert cleaned.returncode == 0 and cleaned.data["pending"] == [] and cleaned.data["review"] == [], cleaned
    assert bigfix.deletes() == [old_id]


def test_the_api_password_never_reaches_the_master_log(salt_master, salt_run_cli, httpserver):
    _computer(httpserver, 31337)
    assert salt_run_cli.run("iemkey.remove_computer", "31337", "-l", "debug").returncode == 0
    httpserver.expect_request("/api/computer/31338", method="DELETE").respond_with_data("", status=403)
    failed = salt_run_cli.run("iemkey.remove_computer", "31338", "-l", "debug")
    assert failed.returncode != 0
    assert API_PASSWORD not in failed.stdout + failed.stderr
    assert API_PASSWORD not in pathlib.Path(salt_master.config["log_file"]).read_text()


# -- staged rollout ------------------------------------------------------------------------
def _orchestrate(salt_run_cli, minions, batch=1):
    pillar = {
        "iemkey": {
            "rotated_since": YESTERDAY,
            "orch": {"tgt": ",".join(minions), "tgt_type": "list", "batch": batch, "wait": 30},
        }
    }
    return salt_run_cli.run("state.orchestrate", "iemkey.orch.rotate", f"pillar={json.dumps(pillar)}")


def _orch_states(ret):
    (states,) = ret.data["data"].values()
    return {value["__id__"]: value["result"] for value in states.values()}


def test_orchestration_rotates_in_batches_and_reports(salt_run_cli, salt_minion, salt_minion_2, agent, agent_2):
    old = agent.computer_id, agent_2.computer_id
    ret = _orchestrate(salt_run_cli, [salt_minion.id, salt_minion_2.id])
    assert ret.returncode == 0, ret
    assert _orch_states(ret) == {
        "iemkey-rotate-batch-1": True,
        "iemkey-check-batch-1": True,
        "iemkey-rotate-batch-2": True,
        "iemkey-check-batch-2": True,
        "iemkey-report": True,
    }
    assert agent.wait_for_keys() and agent_2.wait_for_keys()
    assert (agent.computer_id, agent_2.computer_id) != old


def test_orchestration_goes_past_a_minion_without_an_agent(salt_run_cli, salt_minion, salt_minion_2, agent, agent_2):
    """Issue 28: in a mixed fleet the staged rollout does not stop at a host without BigFix."""
    import shutil

    agent.kill()
    shutil.rmtree(agent.storage)  # alpha (batch 1) has no BigFix agent at all
    old_2 = agent_2.computer_id
    ret = _orchestrate(salt_run_cli, [salt_minion.id, salt_minion_2.id])
    assert ret.returncode == 0, ret
    assert set(_orch_states(ret).values()) == {True}, _orch_states(ret)
    assert agent_2.wait_for_keys() and agent_2.computer_id != old_2


def test_orchestration_stops_at_the_first_failed_batch(salt_run_cli, salt_minion, salt_minion_2, agent, agent_2):
    agent.behave(fail_start=10)  # alpha (batch 1) cannot start its agent
    keys_2 = agent_2.key_files()
    ret = _orchestrate(salt_run_cli, [salt_minion.id, salt_minion_2.id])
    assert ret.returncode != 0
    states = _orch_states(ret)
    assert states["iemkey-rotate-batch-1"] is False
    assert states["iemkey-rotate-batch-2"] is False  # not run: its requisite failed
    assert states["iemkey-report"] is False  # the report ran, and says what is left
    assert agent_2.key_files() == keys_2


def test_a_minion_that_is_down_fails_its_batch(salt_run_cli, salt_minion, stopped_minion, agent):
    old_id = agent.computer_id
    ret = _orchestrate(salt_run_cli, [salt_minion.id, stopped_minion.id], batch=2)  # one batch, one of it down
    assert ret.returncode != 0
    states = _orch_states(ret)
    assert states == {"iemkey-rotate-batch-1": False, "iemkey-check-batch-1": False, "iemkey-report": False}, states
    assert agent.wait_for_keys() and agent.computer_id != old_id  # the minion that is up did rotate
