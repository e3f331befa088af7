"""
``salt-run iemkey.report`` and ``iemkey.targets`` on the master's side: how answers are classified,
what fails the run, and what an operator reads. The master's opts live in a temp dir and the target
is matched by Salt's own CkMinions against accepted keys there; LocalClient is the one fake (its
``cmd_iter_no_block`` yields what each minion's ``iemkey.check`` answered). The integration tests
ask real minions.
"""

import iemkey_cleanup
import iemkey_config
import iemkey_store
import pytest
import salt.client
import salt.config
from helpers import load_source
from runner_fakes import master_opts

iemkey = load_source("_runners", "iemkey_runner_report")
SINCE = "2026-11-20T08:00:00Z"
USED = "2026-11-20T08:00:00+00:00"  # the time the report used, as every summary shows it
ACCEPTED = ("web1", "web2", "web3", "db1", "db2", "mail1")


def _check(
    compliant,
    stale=False,
    installed=True,
    basis="key_created",
    key_time="2026-11-21T09:00:00+00:00",
    require_agent=False,
):
    """What a minion's iemkey.check returns (the keys the report reads, and some it leaves out)."""
    status = {
        "installed": installed,
        "computer_id": "1234",
        "last_rotated": "2026-11-21T09:00:00+00:00",
        "agent_running": True,
        "pending": False,
        "keystorage": "/var/opt/BESClient/KeyStorage",
        "key_files": 2,
        "problem": None if installed else "no storage path at /var/opt/BESClient",
    }
    return {
        "since": "2026-11-20T08:00:00+00:00",
        "status": status,
        "compliant": compliant,
        "stale": stale,
        "basis": basis if installed else None,
        "key_time": key_time if installed else None,
        "reason": "why" if installed else "no BigFix agent here: nothing to rotate (no storage path)",
        "no_agent": not installed,
        "require_agent": require_agent,
    }


class FakeLocalClient:
    """Yields ``replies`` (each a {minion: full return}); with ``silent`` minions it then keeps yielding
    nothing, as Salt's does while it waits for them (it stops once every targeted minion answered).
    Records the call."""

    def __init__(self, replies, silent=False):
        self.replies, self.silent, self.calls, self.polls = list(replies), silent, [], 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def cmd_iter_no_block(self, tgt, fun, arg=(), tgt_type="glob", timeout=None, full_return=False, **_kwargs):
        self.calls.append(
            {
                "tgt": tgt,
                "fun": fun,
                "arg": list(arg),
                "tgt_type": tgt_type,
                "timeout": timeout,
                "full_return": full_return,
            }
        )
        yield from self.replies
        while self.silent:  # Salt yields None while no answer comes; the runner's deadline must end this
            self.polls += 1
            yield None


@pytest.fixture
def opts(tmp_path):
    opts = master_opts(tmp_path, ACCEPTED)  # as a master reads its config file
    (tmp_path / "pki" / "minions_pre").mkdir()
    (tmp_path / "pki" / "minions_pre" / "web9").write_text("pending key: not a minion the report asks")
    return opts


@pytest.fixture
def configure_loader_modules(opts):
    return {iemkey: {"__opts__": opts, "__context__": {}}}


def _answering(monkeypatch, replies, silent=False):
    client = FakeLocalClient(replies, silent)
    monkeypatch.setattr(salt.client, "get_local_client", lambda *a, **k: client)
    return client


def test_targets_are_the_accepted_minions_salt_matches_sorted():
    assert iemkey.targets() == sorted(ACCEPTED)
    assert iemkey.targets("web*") == ["web1", "web2", "web3"]
    assert iemkey.targets("db1,mail1", tgt_type="list") == ["db1", "mail1"]
    assert iemkey.targets("web9") == []  # a pending key is not a minion yet


def test_every_answer_is_classified_and_any_failure_fails_the_run(monkeypatch):
    client = _answering(
        monkeypatch,
        [
            {"web1": {"ret": _check(True), "retcode": 0}},
            {"web2": {"ret": _check(False), "retcode": 0}, "web3": {"ret": _check(True, stale=True), "retcode": 0}},
            {},
            {"db1": {"ret": _check(True, installed=False), "retcode": 0}},
            {"db2": {"ret": "ERROR: 'iemkey.check' is not available.", "retcode": 1}},
        ],
        silent=True,
    )
    ret = iemkey.report(SINCE, timeout=0.3)
    assert client.calls == [
        {"tgt": "*", "fun": "iemkey.check", "arg": [USED], "tgt_type": "glob", "timeout": 0.3, "full_return": True}
    ]
    assert (ret["compliant"], ret["noncompliant"], ret["no_agent"], ret["errors"], ret["unreachable"]) == (
        ["web1"],
        ["web2", "web3"],
        ["db1"],
        ["db2"],
        ["mail1"],
    )
    assert ret["minions"]["web1"] == {
        "compliant": True,
        "basis": "key_created",
        "key_time": "2026-11-21T09:00:00+00:00",
        "stale": False,
        "reason": "why",
        "computer_id": "1234",
        "last_rotated": "2026-11-21T09:00:00+00:00",
        "agent_running": True,
        "pending": False,
        "no_agent": False,
    }
    assert ret["minions"]["db2"] == {"error": "ERROR: 'iemkey.check' is not available."}
    assert ret["minions"]["mail1"] == {"error": "no answer within 0.3 s"}
    assert ret["summary"] == (
        f"keys since {USED}: 1 compliant, 2 noncompliant, 1 unreachable, 1 without a BigFix agent, 1 errors; "
        "0 rotations owed; console clean-ups: 0 pending, 0 for review, 0 to revoke, 0 left the console unconfirmed"
    )
    assert ret["cleanup"] == {"pending": [], "review": [], "revoke": [], "left_console": []}
    assert ret["revocation"] == {} and ret["owed"] == [] and ret["since"] == USED
    assert ret["retcode"] == 1 and iemkey.__context__["retcode"] == 1
    assert client.polls > 0  # the silent minion was waited for, until the deadline


@pytest.mark.parametrize("failing", ["noncompliant", "unreachable", "no_agent", "errors"])
def test_each_kind_of_failure_alone_fails_the_run(monkeypatch, failing):
    answers = {
        "noncompliant": {"ret": _check(False), "retcode": 0},
        # a minion without an agent fails it only where iemkey:require_agent says it must have one
        "no_agent": {"ret": _check(False, installed=False, require_agent=True), "retcode": 0},
        "errors": {"ret": _check(True), "retcode": 1},
    }
    reply = {"web1": {"ret": _check(True), "retcode": 0}}
    if failing != "unreachable":
        reply["web2"] = answers[failing]
    _answering(monkeypatch, [reply], silent=failing == "unreachable")
    ret = iemkey.report(SINCE, tgt="web1,web2", tgt_type="list", timeout=0.2)
    assert ret[failing] == ["web2"] and ret["compliant"] == ["web1"]
    assert ret["retcode"] == 1 and iemkey.__context__["retcode"] == 1


def test_a_mixed_fleet_is_green_and_lists_the_minions_without_an_agent_apart(monkeypatch):
    _answering(
        monkeypatch,
        [{"web1": {"ret": _check(True), "retcode": 0}, "mail1": {"ret": _check(True, installed=False), "retcode": 0}}],
    )
    ret = iemkey.report(SINCE, tgt="web1,mail1", tgt_type="list", timeout=1)
    assert (ret["compliant"], ret["no_agent"], ret["retcode"]) == (["web1"], ["mail1"], 0)
    assert ret["minions"]["mail1"]["no_agent"] is True
    assert "1 without a BigFix agent," in ret["summary"] and "required" not in ret["summary"]


def test_a_compliant_fleet_passes(monkeypatch):
    _answering(monkeypatch, [{name: {"ret": _check(True), "retcode": 0} for name in ("web1", "web2", "web3")}])
    ret = iemkey.report(SINCE, tgt="web*", timeout=5)
    assert ret["compliant"] == ["web1", "web2", "web3"]
    assert ret["noncompliant"] == ret["unreachable"] == ret["no_agent"] == ret["errors"] == []
    assert ret["retcode"] == 0 and iemkey.__context__["retcode"] == 0
    assert ret["summary"].startswith(
        f"keys since {USED}: 3 compliant, 0 noncompliant, 0 unreachable, 0 without a BigFix agent, 0 errors"
    )


def test_an_owed_rotation_fails_the_report_and_says_how_its_delivery_stands(monkeypatch, opts):
    import datetime

    import iemkey_owed

    now = datetime.datetime.now(datetime.timezone.utc)
    store = iemkey_store.from_opts(opts)
    sig = iemkey_owed.signal("webhook", now, now, "hook:1", "SIEM rule", True)
    record = iemkey_owed.away(iemkey_owed.delivered(iemkey_owed.new("web2", sig, now, "t"), "2026", now, "t"), now, "t")
    store.put("owed", "web2", record)
    store.put("owed", "db1", iemkey_owed.new("db1", sig, now, "t"))
    _answering(monkeypatch, [{name: {"ret": _check(True), "retcode": 0} for name in ("web1", "web2", "web3")}])
    narrow = iemkey.report(SINCE, tgt="web*", timeout=5)
    (owed,) = narrow["owed"]  # only the target's
    assert (owed["minion"], owed["state"], owed["jid"], owed["away_since"]) == ("web2", "away", "2026", now.isoformat())
    assert owed["sources"] == ["webhook"] and owed["signals"] == 1
    assert narrow["retcode"] == 1 and "1 rotations owed" in narrow["summary"]
    assert "(owed: away: see owed)" in narrow["summary"]
    _answering(monkeypatch, [{name: {"ret": _check(True), "retcode": 0} for name in ACCEPTED}])
    whole = iemkey.report(SINCE, timeout=5)
    assert [o["minion"] for o in whole["owed"]] == ["db1", "web2"]


def test_the_master_timeout_is_the_default_wait(monkeypatch):
    client = _answering(monkeypatch, [], silent=True)
    ret = iemkey.report(SINCE, tgt="mail1")
    assert client.calls[0]["timeout"] == 0.5  # the master's own ``timeout``
    assert ret["unreachable"] == ["mail1"] and ret["minions"]["mail1"] == {"error": "no answer within 0.5 s"}


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({}, "report needs since, e.g. since=2026-11-20T08:00:00Z"),
        ({"since": None}, "report needs since, e.g. since=2026-11-20T08:00:00Z"),
        ({"since": ""}, "report needs since, e.g. since=2026-11-20T08:00:00Z"),
        (
            {"since": "20261120"},
            "since '20261120' is a number, but not 10 digits of epoch seconds: read as epoch seconds it would not be "
            "the time you meant (did you mean 2026-11-20?); write ISO 8601 (2026-11-20T08:00:00Z) or epoch seconds "
            "as @1763625600",
        ),
        (
            {"since": "2999-01-01T00:00:00Z"},
            "since 2999-01-01T00:00:00+00:00 is in the future: no key could ever satisfy it",
        ),
        ({"since": SINCE, "timeout": "soon"}, "timeout must be a number of seconds, not 'soon'"),
        (
            {"since": SINCE, "tgt": "nosuch*"},
            "the target 'nosuch*' (glob) matches no accepted minion: nothing to report on",
        ),
    ],
)
def test_what_cannot_be_reported_on_fails_once_without_asking_anyone(monkeypatch, kwargs, error):
    client = _answering(monkeypatch, [])
    ret = iemkey.report(**kwargs)
    assert ret["error"] == error and ret["result"] is False and ret["retcode"] == 1
    assert iemkey.__context__["retcode"] == 1 and client.calls == []


def test_the_clean_ups_waiting_are_listed_by_minion_then_computer(monkeypatch, opts):
    store = iemkey_store.from_opts(opts)
    for minion, old in (("web2", "30"), ("web1", "20"), ("web2", "10")):
        case = iemkey_cleanup.new_case(minion, old, None, "2026-11-21T09:00:00+00:00", "2026-11-21T09:00:01+00:00")
        store.put("cases", f"{minion}:{old}", case)
    review = iemkey_cleanup.new_case("db1", "40", "41", "2026-11-21T09:00:00+00:00", "2026-11-21T09:00:01+00:00")
    store.put("cases", "db1:40", iemkey_cleanup.settle(review, "review", "names differ", review["received"], "x"))
    closed = iemkey_cleanup.settle(review, "deleted", "deleted", review["received"], "x")
    store.put("cases", "db2:50", {**closed, "minion": "db2", "old_computer_id": "50"})
    _answering(monkeypatch, [{"web1": {"ret": _check(True), "retcode": 0}}])
    ret = iemkey.report(SINCE, tgt="web1", timeout=1)
    assert [(e["minion"], e["old_computer_id"]) for e in ret["cleanup"]["pending"]] == [
        ("web1", "20"),
        ("web2", "10"),
        ("web2", "30"),
    ]
    assert [(e["minion"], e["detail"]) for e in ret["cleanup"]["review"]] == [("db1", "names differ")]
    assert ret["summary"].endswith(
        "console clean-ups: 3 pending, 1 for review, 0 to revoke, 0 left the console unconfirmed"
    )
    assert ret["retcode"] == 0  # routine clean-ups are listed, they do not fail the compliance report


def test_on_a_master_of_masters_report_and_targets_say_where_to_run_them(opts, monkeypatch):
    def no_client(**_kwargs):
        raise AssertionError("a master of masters asks no minion")

    monkeypatch.setattr(salt.client, "get_local_client", no_client)
    opts["order_masters"] = True
    for ret in (iemkey.report(since=SINCE), iemkey.targets()):
        assert ret["retcode"] == 1 and ret["error"] == iemkey_config.MASTER_OF_MASTERS, ret
    assert iemkey_config.MASTER_OF_MASTERS.startswith("this master is a master of masters (order_masters)")
    assert iemkey.__context__["retcode"] == 1


def test_a_stopped_masters_backlog_is_imported_once_and_nothing_is_overwritten(opts, tmp_path):
    old = iemkey_store.LocalStore(tmp_path / "old-master" / "iemkey")
    old.put("cases", "web1:1001", {"status": "revoke", "minion": "web1"})
    old.put("incidents", "worm", {"since": SINCE})
    mine = iemkey_store.from_opts(opts)
    mine.put("incidents", "worm", {"since": SINCE, "closed": True})
    dry = iemkey.import_store(path=str(old.root), test=True)
    assert dry["retcode"] == 0 and dry["added"] == 1 and mine.get("cases", "web1:1001") is None
    ret = iemkey.import_store(path=str(old.root))
    assert ret["banks"]["cases"] == {"added": 1, "kept": 0} and ret["banks"]["incidents"] == {"added": 0, "kept": 1}
    assert mine.get("incidents", "worm")["closed"] is True and mine.get("cases", "web1:1001")["status"] == "revoke"
    assert iemkey.import_store(path=str(old.root))["added"] == 0
    assert iemkey.import_store(path=str(tmp_path / "nowhere"))["retcode"] == 1
    assert iemkey.import_store(path=mine.root)["error"].endswith("is this master's own store")
