"""
``salt-run iemkey.remove_computer(s)`` against a BigFix REST API on loopback (pytest-httpserver):
Basic auth, what counts as removed, retries with backoff on 5xx (urllib3's Retry), no retry on
401/403, timeouts, ids refused before any request, and the clean-ups a removal settles.
"""

import base64
import time

import iemkey_cleanup
import iemkey_store
import pytest
from helpers import load_source
from saltevents import wait_for
from werkzeug import Response

iemkey = load_source("_runners", "iemkey_runner_rest")
BASIC = "Basic " + base64.b64encode(b"op:pw-for-the-api").decode()


@pytest.fixture
def opts(tmp_path, httpserver):
    return {
        "cachedir": str(tmp_path / "cache"),
        "iemkey": {
            "api": {
                "url": httpserver.url_for("/"),
                "user": "op",
                "password": "pw-for-the-api",
                "timeout": 1,
                "retries": 3,
            }
        },
    }


@pytest.fixture
def configure_loader_modules(opts):
    return {iemkey: {"__opts__": opts, "__context__": {}}}


def _requests(httpserver):
    return [(request.method, request.path, request.headers.get("Authorization")) for request, _ in httpserver.log]


def _answers(httpserver, computer_id, *statuses):
    """DELETE /api/computer/<id> answers each status in turn, then the last one for ever."""
    *first, last = statuses
    for status in first:
        httpserver.expect_ordered_request(f"/api/computer/{computer_id}", method="DELETE").respond_with_data(
            "", status=status
        )
    httpserver.expect_request(f"/api/computer/{computer_id}", method="DELETE").respond_with_data("", status=last)


@pytest.mark.parametrize(
    ("status", "detail"), [(200, "deleted"), (202, "deleted"), (204, "deleted"), (404, "already gone")]
)
def test_a_removed_or_already_gone_computer_is_success(httpserver, status, detail):
    _answers(httpserver, 1234567, status)
    ret = iemkey.remove_computer("1234567")
    assert ret == {
        "result": True,
        "retcode": 0,
        "computers": [{"computer_id": "1234567", "result": True, "status": status, "detail": detail}],
    }
    assert _requests(httpserver) == [("DELETE", "/api/computer/1234567", BASIC)]


def test_a_5xx_is_retried_then_succeeds(httpserver):
    _answers(httpserver, 77, 503, 502, 200)
    ret = iemkey.remove_computers([77])
    assert ret["result"] is True and ret["computers"][0]["status"] == 200
    assert [path for _m, path, _a in _requests(httpserver)] == ["/api/computer/77"] * 3


def test_a_persistent_500_fails_after_iemkey_api_retries_attempts(httpserver):
    _answers(httpserver, 500500, 500)
    ret = iemkey.remove_computer(500500)
    assert ret["result"] is False and ret["retcode"] == 1 and iemkey.__context__["retcode"] == 1
    assert ret["error"] == "the BigFix server did not remove: 500500: HTTP 500 from DELETE /api/computer/500500"
    assert len(_requests(httpserver)) == 3  # retries: 3 attempts in all


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_an_authentication_error_and_never_retried(httpserver, status):
    _answers(httpserver, 5, status)
    ret = iemkey.remove_computer(5)
    assert ret["error"] == (
        "the BigFix server did not remove: 5: authentication failed: the BigFix server "
        f"refused user 'op' (HTTP {status} from DELETE /api/computer/5)"
    )
    assert len(_requests(httpserver)) == 1


def test_a_server_slower_than_iemkey_api_timeout_fails_after_the_retries(httpserver, opts):
    opts["iemkey"]["api"].update(timeout=0.3, retries=2)

    def slow(_request):
        time.sleep(0.6)
        return Response("", status=200)

    httpserver.expect_request("/api/computer/9", method="DELETE").respond_with_handler(slow)
    ret = iemkey.remove_computer(9)
    assert ret["result"] is False
    assert ret["error"].startswith("the BigFix server did not remove: 9: ") and "Timeout" in ret["error"]
    # the stand-in serves one request at a time: the retry is logged once the first has been answered
    assert wait_for(lambda: len(_requests(httpserver)) == 2, timeout=10), _requests(httpserver)


def test_each_computer_gets_its_own_outcome(httpserver):
    _answers(httpserver, 1, 200)
    _answers(httpserver, 2, 500)
    _answers(httpserver, 3, 404)
    ret = iemkey.remove_computers(["1", "2", "3"])
    assert [(c["computer_id"], c["result"]) for c in ret["computers"]] == [("1", True), ("2", False), ("3", True)]
    assert ret["error"] == "the BigFix server did not remove: 2: HTTP 500 from DELETE /api/computer/2"


@pytest.mark.parametrize("ids", [["1/../../api/computers"], ["12", "x"], [], ["-1"], [" "], ["1" * 21]])
def test_anything_but_computer_ids_is_refused_before_any_request(httpserver, ids):
    ret = iemkey.remove_computers(ids)
    assert ret["result"] is False and ret["retcode"] == 1
    assert ret["error"].startswith("computer IDs are numbers, not ") and ret["error"].endswith("nothing was sent")
    assert _requests(httpserver) == []


@pytest.mark.parametrize(
    ("api", "error"),
    [
        (
            {},
            "the BigFix REST API is not configured: set iemkey:api:url, iemkey:api:user, iemkey:api:password "
            "in the master config",
        ),
        (
            {"url": "https://bigfix.example:52311", "user": "op"},
            "the BigFix REST API is not configured: set iemkey:api:password in the master config",
        ),
        (
            {"url": "https://bigfix.example:52311", "user": "op", "password": "sdb://nosuch/pw"},
            "iemkey:api:password: the sdb:// URI did not resolve",
        ),
    ],
)
def test_an_api_that_is_not_configured_is_an_error_before_any_request(httpserver, opts, monkeypatch, api, error):
    monkeypatch.setattr(iemkey.salt.utils.sdb, "sdb_get", lambda value, _opts: value)  # Salt's: unresolved stays
    opts["iemkey"]["api"] = api
    ret = iemkey.remove_computer(1)
    assert ret["error"] == error and ret["retcode"] == 1
    assert _requests(httpserver) == []


def test_an_sdb_password_is_resolved_and_sent(httpserver, opts, monkeypatch):
    monkeypatch.setattr(
        iemkey.salt.utils.sdb, "sdb_get", lambda value, _opts: "pw-for-the-api" if value == "sdb://vault/pw" else value
    )
    opts["iemkey"]["api"]["password"] = "sdb://vault/pw"
    _answers(httpserver, 8, 200)
    assert iemkey.remove_computer(8)["result"] is True
    assert _requests(httpserver) == [("DELETE", "/api/computer/8", BASIC)]


def test_a_removal_settles_the_clean_ups_of_that_computer_only(httpserver, opts):
    store = iemkey_store.from_opts(opts)
    for old, status in (("10", "pending"), ("11", "pending"), ("12", "review")):
        case = iemkey_cleanup.new_case("web1", old, None, "2026-11-21T09:00:00+00:00", "2026-11-21T09:00:01+00:00")
        store.put("cases", f"web1:{old}", iemkey_cleanup.settle(case, status, "waiting", case["received"], "x"))
    _answers(httpserver, 10, 200)
    _answers(httpserver, 12, 404)
    _answers(httpserver, 11, 500)
    ret = iemkey.remove_computers([10, 12, 11])
    assert ret["result"] is False  # 11 failed: it stays pending
    cases = store.all("cases")
    assert {key: case["status"] for key, case in cases.items()} == {
        "web1:10": "deleted",
        "web1:11": "pending",
        "web1:12": "deleted",
    }
    assert cases["web1:10"]["trail"][-1] == {
        "at": cases["web1:10"]["checked"],
        "status": "deleted",
        "detail": "deleted by an operator",
        "by": "iemkey.remove_computers",
    }
