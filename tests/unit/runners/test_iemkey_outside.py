"""
``salt-run iemkey.report``'s agents outside Salt: the BigFix computers (the stand-in server on
loopback) that no minion's agent and no clean-up accounts for, when they are asked for, what they do
to the exit code under each ``iemkey:coverage:outside_salt``, and what the text output shows.
LocalClient is faked as in test_iemkey_report (each minion's ``iemkey.check`` answer); the master's
opts and store are real, in a temp dir.
"""

import datetime
import fnmatch

import iemkey_cleanup
import iemkey_store
import pytest
import salt.client
import salt.config
from bigfix_rest import Registered, StandInBigFix
from helpers import load_source
from runner_fakes import master_opts

iemkey = load_source("_runners", "iemkey_runner_outside")
SINCE = "2026-11-20T08:00:00Z"
MINIONS = {"web01": "1001", "web02": "1002", "db01": "1003"}
UTC = datetime.timezone.utc


class Answers:
    """LocalClient: each minion a glob matches answers iemkey.check with its agent's computer ID (None: it
    does not answer)."""

    def __init__(self, ids):
        self.ids = ids

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def cmd_iter_no_block(self, tgt, *_args, **_kwargs):
        for minion, computer_id in self.ids.items():
            if computer_id is None or not fnmatch.fnmatch(minion, tgt):
                continue
            status = {"installed": True, "computer_id": computer_id, "last_rotated": None, "agent_running": True}
            verdict = {"status": status, "compliant": True, "stale": False, "basis": "key_created", "no_agent": False}
            yield {minion: {"ret": {**verdict, "key_time": "2026-11-21T09:00:00+00:00", "reason": "new"}, "retcode": 0}}


@pytest.fixture
def bigfix(httpserver):
    now = datetime.datetime.now(UTC).timestamp()
    agents = Registered()
    for minion, cid in MINIONS.items():
        agents.known[cid] = {"name": minion, "registered": now - 86400, "last_report": now - 60}
    agents.known["999"] = {"name": "web01", "registered": now - 9 * 86400, "last_report": now - 86400}  # old
    server = StandInBigFix([agents], "op", "pw").serve(httpserver)
    for cid, name in (("2001", "dmz-proxy"), ("2002", "appliance7"), ("2003", "kiosk")):
        server.others[cid] = {"name": name, "registered": now - 99 * 86400, "last_report": now - 3600}
    return server


@pytest.fixture
def opts(tmp_path, httpserver):
    api = {"url": httpserver.url_for("").rstrip("/"), "user": "op", "password": "pw", "timeout": 2, "retries": 1}
    return master_opts(tmp_path, MINIONS, iemkey={"api": api})


@pytest.fixture
def configure_loader_modules(opts):
    return {iemkey: {"__opts__": opts, "__context__": {}}}


@pytest.fixture(autouse=True)
def answers(monkeypatch):
    client = Answers(dict(MINIONS))
    monkeypatch.setattr(salt.client, "get_local_client", lambda *a, **k: client)
    return client


@pytest.fixture
def cleaning_up(opts):
    """iemkey cleans up web01's old computer 999."""
    store = iemkey_store.from_opts(opts)
    case = iemkey_cleanup.new_case("web01", "999", "1001", "2026-11-21T09:00:00+00:00", "2026-11-21T09:00:01+00:00")
    store.put("cases", iemkey_cleanup.key("web01", "999"), case)
    return store


def _incident(opts, name="worm-2026-11"):
    store = iemkey_store.from_opts(opts)
    store.put("incidents", name, {"name": name, "since": "2026-11-20T08:00:00+00:00", "until": None})


def test_the_computers_no_minion_covers_are_listed_and_green_outside_an_incident(bigfix, cleaning_up):
    ret = iemkey.report(since=SINCE)
    outside = ret["outside_salt"]
    assert [(c["computer_id"], c["name"]) for c in outside["computers"]] == [
        ("2001", "dmz-proxy"),
        ("2002", "appliance7"),
        ("2003", "kiosk"),
    ]
    assert outside["count"] == 3 and outside["complete"] is True and outside["reported"] == 7
    assert ret["retcode"] == 0 and "3 BigFix computers outside Salt (see outside_salt)" in ret["summary"]
    assert iemkey.__context__["retcode"] == 0


def test_during_an_incident_they_fail_the_report(bigfix, cleaning_up, opts):
    _incident(opts)
    ret = iemkey.report(since=SINCE)
    assert ret["retcode"] == 1 and ret["outside_salt"]["count"] == 3


@pytest.mark.parametrize(("policy", "retcode"), [("fail", 1), ("warn", 0), ("incident", 0)])
def test_the_setting_says_whether_they_fail_it(bigfix, cleaning_up, opts, policy, retcode):
    opts["iemkey"]["coverage"] = {"outside_salt": policy}
    assert iemkey.report(since=SINCE)["retcode"] == retcode


def test_off_asks_bigfix_nothing(bigfix, cleaning_up, opts):
    opts["iemkey"]["coverage"] = {"outside_salt": "off"}
    ret = iemkey.report(since=SINCE)
    assert "outside_salt" not in ret and bigfix.queries == []


def test_an_old_computer_nobody_cleans_up_is_outside_salt(bigfix):
    ret = iemkey.report(since=SINCE, outside=True)
    assert [c["computer_id"] for c in ret["outside_salt"]["computers"]] == ["999", "2001", "2002", "2003"]


def test_a_minion_that_did_not_answer_is_matched_by_name_and_fails_as_unreachable(bigfix, cleaning_up, answers):
    answers.ids["web02"] = None
    ret = iemkey.report(since=SINCE)
    assert ret["outside_salt"]["matched_by_name"] == {"web02": ["1002"]}
    assert ret["outside_salt"]["count"] == 3 and ret["unreachable"] == ["web02"] and ret["retcode"] == 1


def test_part_of_the_fleet_is_not_compared_with_all_of_bigfix_unless_asked(bigfix, cleaning_up):
    ret = iemkey.report(since=SINCE, tgt="web*")
    assert "outside_salt" not in ret and bigfix.queries == []
    ret = iemkey.report(since=SINCE, tgt="web*", outside=True)
    assert ret["outside_salt"]["count"] == 4  # db01's agent is outside what this report asked


def test_a_relevance_error_fails_during_an_incident_and_never_reads_as_no_computers(bigfix, cleaning_up, opts):
    bigfix.relevance_errors = {" mod ": "Singular expression refers to nonexistent object."}
    ret = iemkey.report(since=SINCE)
    assert ret["outside_salt"] == {
        "error": "BigFix could not be asked for the computers outside Salt: POST /api/query: the relevance failed: "
        "Singular expression refers to nonexistent object."
    }
    assert ret["retcode"] == 0 and "agents outside Salt: unknown" in ret["summary"]
    _incident(opts)
    assert iemkey.report(since=SINCE)["retcode"] == 1


def test_without_the_rest_api_nothing_is_asked_unless_the_operator_asks(bigfix, cleaning_up, opts):
    del opts["iemkey"]["api"]
    assert "outside_salt" not in iemkey.report(since=SINCE)
    ret = iemkey.report(since=SINCE, outside=True)
    assert "the BigFix REST API is not configured" in ret["outside_salt"]["error"]


def test_an_operator_who_sees_part_of_bigfix_is_told(bigfix, cleaning_up):
    bigfix.master_operator, bigfix.scope = False, {"1001", "1002", "1003", "2001"}
    ret = iemkey.report(since=SINCE)
    assert [c["computer_id"] for c in ret["outside_salt"]["computers"]] == ["2001"]
    assert ret["outside_salt"]["complete"] is False
    assert "1 BigFix computers in the API user's scope outside Salt" in ret["summary"]


def test_salt_runs_text_output_shows_the_first_few_json_all(bigfix, cleaning_up, opts):
    opts["iemkey"]["coverage"] = {"list": 2}
    assert len(iemkey.report(since=SINCE)["outside_salt"]["computers"]) == 3  # salt-api: no CLI options
    opts["selected_output_option"] = "state_output"  # what salt-run's parser leaves there, whatever --out
    for output in (None, "nested", "txt"):  # salt-run without --out, or a text outputter
        opts["output"] = output
        shown = iemkey.report(since=SINCE)["outside_salt"]
        assert [c["computer_id"] for c in shown["computers"]] == ["2001", "2002"] and shown["count"] == 3
        assert shown["more"] == "1 more: --out=json lists all of them"
    for output in ("json", "yaml"):
        opts["output"] = output
        assert len(iemkey.report(since=SINCE)["outside_salt"]["computers"]) == 3


@pytest.mark.parametrize("bad", [{"active_days": 0}, {"outside_salt": "maybe"}])
def test_a_malformed_coverage_setting_fails_the_report_saying_which(bigfix, opts, bad):
    opts["iemkey"]["coverage"] = bad
    ret = iemkey.report(since=SINCE)
    assert ret["retcode"] == 1 and ret["error"].startswith("iemkey:coverage:")
