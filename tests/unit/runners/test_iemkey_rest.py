"""
``salt-run iemkey.remove_computer(s)`` against a BigFix REST API on loopback (pytest-httpserver):
Basic auth, what counts as removed (BigFix's own ``ok``; a 404 only for a master operator), retries
with backoff on 5xx (urllib3's Retry), no retry on 401/403, timeouts with their reason, ids refused
before any request, and the clean-ups a removal settles.
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


def _requests(httpserver, deletes_only=True):
    return [
        (request.method, request.path, request.headers.get("Authorization"))
        for request, _ in httpserver.log
        if not deletes_only or request.method == "DELETE"
    ]


@pytest.fixture(autouse=True)
def operator(httpserver):
    """GET /api/operator/op: a master operator, unless the test says otherwise (``operator(False)``)."""

    def answer(master=True):
        flag = str(master).lower()
        xml = f"<BESAPI><Operator><Name>op</Name><MasterOperator>{flag}</MasterOperator></Operator></BESAPI>"
        httpserver.expect_request("/api/operator/op", method="GET").respond_with_data(xml)

    answer()
    return answer


def _answers(httpserver, computer_id, *statuses):
    """DELETE /api/computer/<id> answers each status in turn (200 with BigFix's ``ok``; a (body, status)
    pair as it is), then the last one for ever."""
    left = list(statuses)

    def answer(_request):
        status = left.pop(0) if len(left) > 1 else left[0]
        text, code = ("ok", status) if status == 200 else status if isinstance(status, tuple) else ("", status)
        return Response(text, status=code)

    httpserver.expect_request(f"/api/computer/{computer_id}", method="DELETE").respond_with_handler(answer)


@pytest.mark.parametrize(
    ("answer", "status", "detail"),
    [
        (200, "deleted", "deleted (BigFix answered ok)"),
        (("OK\n", 200), "deleted", "deleted (BigFix answered ok)"),
        (204, "deleted", "deleted (BigFix answered ok)"),
        (
            404,
            "not found",
            "not found: BigFix has no computer 1234567; nothing was deleted (already removed, or a mistyped ID?)",
        ),
    ],
)
def test_what_bigfix_confirms_is_deleted_and_a_404_to_a_master_operator_is_not_found(
    httpserver, answer, status, detail
):
    _answers(httpserver, 1234567, answer)
    ret = iemkey.remove_computer("1234567")
    assert ret == {
        "result": True,
        "retcode": 0,
        "computers": [{"computer_id": "1234567", "result": True, "status": status, "detail": detail}],
    }
    assert _requests(httpserver) == [("DELETE", "/api/computer/1234567", BASIC)]


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (("<html>Service unavailable</html>", 200), "answered HTTP 200 without BigFix's 'ok'"),
        (202, "answered HTTP 202 without BigFix's 'ok'"),
    ],
)
def test_an_http_success_that_is_not_bigfixs_ok_is_an_error_not_a_delete(httpserver, answer, error):
    _answers(httpserver, 55, answer)
    ret = iemkey.remove_computer(55)
    assert ret["result"] is False and ret["retcode"] == 1 and error in ret["error"]
    assert "Service unavailable" not in ret["error"]  # a reply body never reaches a message
    assert ret["computers"][0]["status"] == "error"


def test_a_404_to_an_operator_who_is_not_a_master_operator_proves_nothing(httpserver, operator):
    httpserver.clear()
    operator(False)
    _answers(httpserver, 66, 404)
    ret = iemkey.remove_computer(66)
    assert ret["result"] is False and ret["retcode"] == 1
    assert ret["computers"][0]["status"] == "unknown"
    assert "the API user is not a master operator: a computer outside its scope answers 404 too" in ret["error"]


def test_a_5xx_is_retried_then_succeeds(httpserver):
    _answers(httpserver, 77, 503, 502, 200)
    ret = iemkey.remove_computers([77])
    assert ret["result"] is True and ret["computers"][0]["status"] == "deleted"
    assert [path for _m, path, _a in _requests(httpserver)] == ["/api/computer/77"] * 3


def test_a_persistent_500_fails_after_iemkey_api_retries_attempts(httpserver):
    _answers(httpserver, 500500, 500)
    ret = iemkey.remove_computer(500500)
    assert ret["result"] is False and ret["retcode"] == 1 and iemkey.__context__["retcode"] == 1
    assert ret["error"] == "the BigFix server did not remove: 500500: HTTP 500 from DELETE /api/computer/500500"
    assert len(_requests(httpserver)) == 3  # retries: 3 attempts in all


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_an_authentication_error_and_never_retried(httpserver, status):
    httpserver.clear()
    httpserver.expect_request("/api/operator/op").respond_with_data("", status=status)
    ret = iemkey.remove_computer(5)
    assert ret["error"] == (
        f"authentication failed: the BigFix server refused user 'op' (HTTP {status} from GET /api/operator/op); "
        "nothing was sent"
    )
    assert len(_requests(httpserver, deletes_only=False)) == 1 and _requests(httpserver) == []


def test_a_server_slower_than_iemkey_api_timeout_fails_after_the_retries_and_says_so(httpserver, opts):
    opts["iemkey"]["api"].update(timeout=0.3, retries=2)

    def slow(_request):
        time.sleep(0.6)
        return Response("ok", status=200)

    httpserver.expect_request("/api/computer/9", method="DELETE").respond_with_handler(slow)
    ret = iemkey.remove_computer(9)
    assert ret["result"] is False
    assert ret["error"] == (
        "the BigFix server did not remove: 9: no answer within 0.3 s (iemkey:api:timeout) talking to "
        f"{opts['iemkey']['api']['url'].rstrip('/')} (DELETE /api/computer/9)"
    )
    # the stand-in serves one request at a time: the retry is logged once the first has been answered
    assert wait_for(lambda: len(_requests(httpserver)) == 2, timeout=10), _requests(httpserver)


def test_a_refused_connection_says_so(opts):
    from pytestshellutils.utils import ports

    opts["iemkey"]["api"].update(url=f"http://127.0.0.1:{ports.get_unused_localhost_port()}", retries=1)
    ret = iemkey.remove_computer(9)
    assert ret["error"].startswith("connection refused talking to http://127.0.0.1:")
    assert ret["error"].endswith("(GET /api/operator/op); nothing was sent")


def test_each_computer_gets_its_own_outcome(httpserver):
    _answers(httpserver, 1, 200)
    _answers(httpserver, 2, 500)
    _answers(httpserver, 3, 404)
    ret = iemkey.remove_computers(["1", "2", "3"])
    assert [(c["computer_id"], c["result"], c["status"]) for c in ret["computers"]] == [
        ("1", True, "deleted"),
        ("2", False, "error"),
        ("3", True, "not found"),
    ]
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
        "web1:12": "gone",  # BigFix had no computer 12 (a master operator's 404): nothing was deleted
    }
    assert cases["web1:10"]["trail"][-1] == {
        "at": cases["web1:10"]["checked"],
        "status": "deleted",
        "detail": "deleted by an operator",
        "by": "iemkey.remove_computers",
    }
