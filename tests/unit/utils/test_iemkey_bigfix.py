"""
Reading the BigFix server's replies the way real servers send them (docs/bigfix-facts.md), and the
REST client against the stand-in server on loopback: only the agent record's own properties
count, the fields asked for are the ones read, a relevance error inside HTTP 200 is an error,
no reply body ever reaches a message, reads are retried and creations are not.
"""

import datetime
import json
import logging

import besapi
import iemkey_bigfix
import pytest
from bigfix_rest import ID_PROPERTY, SETTING_SECRET, Registered, StandInBigFix
from werkzeug import Response

UTC = datetime.timezone.utc
HEAD = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<BESAPI xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
    'xsi:noNamespaceSchemaLocation="BESAPI.xsd">'
)


def _reply(*properties, extension=""):
    props = "".join(f'<Property Name="{name}">{value}</Property>' for name, value in properties)
    return (
        f'{HEAD}<Computer Resource="https://bf.example:52311/api/computer/4711">{props}{extension}</Computer></BESAPI>'
    )


# -- replies ---------------------------------------------------------------------------------------
def test_a_full_reply_gives_the_agent_records_own_first_properties():
    content = _reply(
        ("Client Settings", "__RelayServer1=http://relay:52311/bfmirror/downloads"),
        ("Client Settings", f"_BESServer_Database_Password={SETTING_SECRET}"),
        ("Computer Name", "web01.example.com"),
        ("Last Report Time", "Wed, 19 Apr 2023 15:55:23 +0000"),
        ("IP Address", "10.0.0.1"),
        ("IP Address", "10.0.0.2"),
        ("Agent Type", "Native"),
        ("Enrollment Date", "Wed, 06 Apr 2022 18:54:01 -0700"),
        ("ID", "4711"),
        ("Computer Name", "a repeated name never counts"),
        ("company", "User-defined error: not set"),
    )
    computer = iemkey_bigfix.parse_computer(content, "4711")
    assert computer == iemkey_bigfix.Computer(
        id="4711",
        name="web01.example.com",
        last_report=datetime.datetime(2023, 4, 19, 15, 55, 23, tzinfo=UTC),
        agent_type="Native",
        correlated=False,
    )


def test_a_correlated_reply_is_read_from_the_agent_record_not_its_management_extensions():
    content = _reply(
        ("Computer Name", "web01"),
        ("Last Report Time", "Tue, 01 Dec 2026 10:00:00 +0000"),
        ("Agent Type", "Native"),
        ("ID", "4711"),
        extension='<ManagementExtension Type="Cloud - AWS">'
        '<Property Name="Computer Name">i-0abc</Property>'
        '<Property Name="Last Report Time">Mon, 30 Nov 2026 08:00:00 +0000</Property>'
        '<Property Name="Agent Type">Cloud - AWS</Property></ManagementExtension>',
    )
    computer = iemkey_bigfix.parse_computer(content, "4711")
    assert computer.name == "web01" and computer.agent_type == "Native" and computer.correlated is True
    assert computer.last_report == datetime.datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("User-defined error: not set", None),
        ("user-defined error: unknown", None),
        ("", None),
        ("   ", None),
        (None, None),
        ("<none>", "<none>"),
        ("  web01 ", "web01"),
    ],
)
def test_values_bigfix_does_not_really_give_count_as_absent(value, expected):
    assert iemkey_bigfix.value(value) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Wed, 19 Apr 2023 15:55:23 +0000", datetime.datetime(2023, 4, 19, 15, 55, 23, tzinfo=UTC)),
        ("Wed, 06 Apr 2022 18:54:01 -0700", datetime.datetime(2022, 4, 7, 1, 54, 1, tzinfo=UTC)),
        ("Wed, 19 Apr 2023 15:55:23", datetime.datetime(2023, 4, 19, 15, 55, 23, tzinfo=UTC)),
        ("yesterday", None),
        ("User-defined error: unknown", None),
        (None, None),
    ],
)
def test_report_times_are_read_in_their_own_offsets_as_utc(text, expected, far_from_utc):
    assert iemkey_bigfix.report_time(text) == expected


def test_a_computer_not_yet_reported_has_no_name_and_no_report_time():
    computer = iemkey_bigfix.parse_computer(_reply(("Agent Type", "Native"), ("ID", "4711")), "4711")
    assert (computer.name, computer.last_report) == (None, None)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"<html>proxy error</html>", "GET /api/computer/4711 answered BESAPI XML without a Computer"),
        (b"not xml at all", "GET /api/computer/4711 answered no BESAPI XML"),
        (_reply(("ID", "999")).encode(), "GET /api/computer/4711 answered for computer 999"),
    ],
)
def test_a_reply_that_is_not_this_computers_record_is_an_error(content, match):
    with pytest.raises(iemkey_bigfix.ApiError) as raised:
        iemkey_bigfix.parse_computer(content, "4711")
    assert str(raised.value) == match  # a reply body never reaches a message


Q = f"{HEAD}<Query Resource='x'>"
E = "</Query></BESAPI>"


@pytest.mark.parametrize(
    ("content", "content_type", "error"),
    [
        ("{not json", "application/json", "POST /api/query answered no JSON"),
        ("[1, 2]", "application/json; charset=utf-8", "POST /api/query answered JSON that is not an object"),
        (json.dumps({"error": "x" * 300}), "json", "POST /api/query: the relevance failed: " + "x" * 200),
        ("<html>login</html>", "", "POST /api/query answered BESAPI XML without a Query"),
        ("no xml", None, "POST /api/query answered no BESAPI XML"),
        (f"{Q}<Result/><Error>  {'y' * 300}  </Error>{E}", "", "POST /api/query: the relevance failed: " + "y" * 200),
        (f"{Q}<Result/><Error/>{E}", "", "POST /api/query: the relevance failed: "),
        (f"{Q}{E}", "text/xml", "POST /api/query answered neither a Result nor an Error"),
    ],
)
def test_a_query_reply_that_is_not_answers_is_an_error_saying_exactly_which(content, content_type, error):
    with pytest.raises(iemkey_bigfix.ApiError) as raised:
        iemkey_bigfix.parse_query(content, content_type)
    assert str(raised.value) == error


def test_empty_answers_are_empty_strings_and_a_json_single_result_is_one_answer():
    xml = f"{Q}<Result><Answer/><Tuple><Answer/><Answer>b</Answer></Tuple><Other>x</Other></Result>{E}"
    assert iemkey_bigfix.parse_query(xml) == ["", ["", "b"]]
    assert iemkey_bigfix.parse_query(json.dumps({"result": 7}), "application/json") == [7]


@pytest.mark.parametrize(
    ("answers", "error"),
    [
        ([["1", "a", "b"]], "POST /api/query answered something else than (id, name, last report, agent type)"),
        (["1"], "POST /api/query answered something else than (id, name, last report, agent type)"),
        ([["9" * 30, "a", "b", "c"]], f"POST /api/query answered for computer {'9' * 20}, which was not asked for"),
    ],
)
def test_batch_answers_of_another_form_are_errors(answers, error):
    with pytest.raises(iemkey_bigfix.ApiError) as raised:
        iemkey_bigfix.parse_batch(answers, {"1"})
    assert str(raised.value) == error


def test_batch_answers_none_where_bigfix_has_no_value():
    (computer,) = iemkey_bigfix.parse_batch([(" 1 ", "<none>", "<none>", "<none>")], {"1"}).values()
    assert (computer.id, computer.name, computer.last_report, computer.agent_type) == ("1", None, None, None)
    (named,) = iemkey_bigfix.parse_batch([["1", "web01", "Tue, 01 Dec 2026 12:00:00 +0000", "Native"]], {"1"}).values()
    assert (named.name, named.last_report, named.agent_type) == (
        "web01",
        datetime.datetime(2026, 12, 1, 12, tzinfo=UTC),
        "Native",
    )
    assert named.correlated is False


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (f"{HEAD}<Operator><MasterOperator> True </MasterOperator></Operator></BESAPI>", True),
        (f"{HEAD}<Operator><MasterOperator>false</MasterOperator></Operator></BESAPI>", False),
        (f"{HEAD}<Operator><MasterOperator/></Operator></BESAPI>", False),
    ],
)
def test_the_operator_is_a_master_operator_only_when_bigfix_says_true(content, expected):
    assert iemkey_bigfix.parse_master_operator(content, "op") is expected


def test_an_operator_reply_without_the_flag_is_an_error():
    with pytest.raises(iemkey_bigfix.ApiError) as raised:
        iemkey_bigfix.parse_master_operator(f"{HEAD}<Operator/></BESAPI>", "op")
    assert str(raised.value) == "GET /api/operator/op answered no MasterOperator"


def test_lists_and_members_keep_only_well_formed_items():
    listed = (
        f"{HEAD}<ComputerGroup><Name> a </Name><ID> 12 </ID></ComputerGroup><ComputerGroup><Name>a</Name><ID>13</ID>"
        "</ComputerGroup><ComputerGroup><Name>b</Name><ID>x</ID></ComputerGroup><ComputerGroup><ID>14</ID>"
        "</ComputerGroup><ComputerGroup><Name>c</Name></ComputerGroup></BESAPI>"
    )
    assert iemkey_bigfix.parse_listed(listed, "GET x") == {"a": "12"}
    members = (
        f'{HEAD}<Computer Resource="https://bf:52311/api/computer/41/"/><Computer Resource="https://bf/api/computer/42"/>'
        '<Computer Resource="https://bf/api/computer/x"/><Computer/></BESAPI>'
    )
    assert iemkey_bigfix.parse_members(members, "GET y") == {"41", "42"}


def test_query_answers_in_xml_and_json_and_errors_inside_http_200():
    xml = (
        f'{HEAD}<Query Resource="ids of bes computers"><Result><Answer type="integer">1</Answer>'
        '<Tuple><Answer type="integer">2</Answer><Answer type="string">web02</Answer></Tuple></Result>'
        "<Evaluation><Time>0.3ms</Time></Evaluation></Query></BESAPI>"
    )
    assert iemkey_bigfix.parse_query(xml) == ["1", ["2", "web02"]]
    assert iemkey_bigfix.parse_query(json.dumps({"result": [1, 2], "count": 2}), "application/json") == [1, 2]
    with pytest.raises(iemkey_bigfix.ApiError, match='relevance failed: The operator "whose" is not defined'):
        iemkey_bigfix.parse_query(
            f'{HEAD}<Query Resource="x"><Result/><Error>The operator "whose" is not defined.</Error></Query></BESAPI>'
        )
    with pytest.raises(iemkey_bigfix.ApiError, match="relevance failed: Singular expression"):
        iemkey_bigfix.parse_query(json.dumps({"error": "Singular expression refers to nonexistent object."}), "json")
    with pytest.raises(iemkey_bigfix.ApiError, match="neither a Result nor an Error"):
        iemkey_bigfix.parse_query(f"{HEAD}<Query Resource='x'></Query></BESAPI>")


def test_a_revocation_group_lists_exactly_its_computers_and_is_never_empty():
    body = iemkey_bigfix.group_xml("iemkey revoke: worm & co", ["1002", "98", "1002"], 27).decode()
    assert "<Name>iemkey revoke: worm &amp; co</Name>" in body
    assert '<MembershipRules JoinByIntersection="false">' in body
    assert body.count("<MembershipRule ") == 2
    assert body.index("<SearchText>98</SearchText>") < body.index("<SearchText>1002</SearchText>")
    assert body.count("<PropertyID>27</PropertyID>") == 2
    for bad in ([], ["12a"], ["1", ""]):
        with pytest.raises(ValueError, match="a revocation group lists computer IDs"):
            iemkey_bigfix.group_xml("g", bad, 27)


OK = {"url": "https://bf", "user": "op", "password": "p"}


@pytest.mark.parametrize(
    ("conf", "error"),
    [
        (
            {},
            "the BigFix REST API is not configured: set iemkey:api:url, iemkey:api:user, iemkey:api:password "
            "in the master config",
        ),
        (
            {"url": "https://bf", "password": "p"},
            "the BigFix REST API is not configured: set iemkey:api:user in the master config",
        ),
        ({**OK, "password": "sdb://vault/pw"}, "iemkey:api:password: the sdb:// URI did not resolve"),
        ({**OK, "timeout": "soon"}, "iemkey:api:timeout must be a number, not 'soon'"),
        ({**OK, "timeout": -1}, "iemkey:api:timeout must be between 0.001 and 3600, not -1"),
        ({**OK, "timeout": 0.0009}, "iemkey:api:timeout must be between 0.001 and 3600, not 0.0009"),
        ({**OK, "timeout": 3600.5}, "iemkey:api:timeout must be between 0.001 and 3600, not 3600.5"),
        ({**OK, "retries": 0}, "iemkey:api:retries must be between 1 and 3600, not 0"),
        ({**OK, "retries": 3601}, "iemkey:api:retries must be between 1 and 3600, not 3601"),
        ({**OK, "concurrency": "many"}, "iemkey:api:concurrency must be a whole number, not 'many'"),
        ({**OK, "concurrency": None}, "iemkey:api:concurrency must be a whole number, not None"),
        ({**OK, "concurrency": 0}, "iemkey:api:concurrency must be between 1 and 32, not 0"),
        ({**OK, "concurrency": 33}, "iemkey:api:concurrency must be between 1 and 32, not 33"),
        ({**OK, "lookup": "guess"}, "iemkey:api:lookup must be query or get, not 'guess'"),
    ],
)
def test_settings_that_cannot_work_are_refused(conf, error):
    with pytest.raises(iemkey_bigfix.ConfigError) as raised:
        iemkey_bigfix.settings(conf, resolve=lambda uri: uri)
    assert str(raised.value) == error


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"timeout": 0.001, "retries": 1, "concurrency": 1}, (0.001, 1, 1)),
        ({"timeout": 3600, "retries": 3600, "concurrency": 32}, (3600, 3600, 32)),
        ({"timeout": "2.5", "retries": "2", "concurrency": "4"}, (2.5, 2, 4)),
    ],
)
def test_settings_at_their_bounds_are_taken(changes, expected):
    api = iemkey_bigfix.settings({**OK, **changes, "lookup": "get"})
    assert (api["timeout"], api["retries"], api["concurrency"]) == expected and api["lookup"] == "get"
    assert isinstance(api["retries"], int) and isinstance(api["concurrency"], int)


def test_settings_fill_defaults_and_resolve_an_sdb_password():
    api = iemkey_bigfix.settings(
        {"url": "https://bf.example:52311/", "user": "op", "password": "sdb://vault/pw"}, resolve=lambda uri: "s3cret"
    )
    assert api == {
        "url": "https://bf.example:52311",
        "user": "op",
        "password": "s3cret",
        "verify": True,
        "timeout": 30.0,
        "retries": 3,
        "concurrency": 3,
        "lookup": "query",
    }


# -- the client against the stand-in server -----------------------------------------------------


@pytest.fixture
def server(httpserver):
    agent = Registered()
    now = datetime.datetime.now(UTC).timestamp()
    agent.known["1001"] = {"name": "web01.example.com", "registered": now - 86400, "last_report": now - 3600}
    bigfix = StandInBigFix([agent], "op", "pw").serve(httpserver)
    bigfix.agent = agent
    return bigfix


@pytest.fixture
def api(httpserver):
    return {"url": httpserver.url_for("").rstrip("/"), "user": "op", "password": "pw", "verify": False}


def _client(api, **overrides):
    return iemkey_bigfix.session({**api, "timeout": 2, "retries": 3, **overrides})


def test_the_client_asks_only_for_the_fields_it_reads(api, server, httpserver):
    with _client(api) as client:
        computer = client.computer("1001")
    assert computer.name == "web01.example.com" and computer.agent_type == "Native"
    (request, response) = httpserver.log[0]
    assert request.args["fields"] == "Property<Name=Computer Name,Last Report Time,Agent Type,ID>"
    assert SETTING_SECRET not in response.get_data(as_text=True)  # the server honoured it


def test_a_full_reply_with_secrets_is_read_and_its_secrets_go_nowhere(api, server, caplog):
    server.ignore_fields = True  # a server that answers everything, client settings included
    with caplog.at_level(logging.DEBUG), _client(api) as client:
        computer = client.computer("1001")
    assert computer.name == "web01.example.com"
    assert SETTING_SECRET not in repr(computer) and SETTING_SECRET not in caplog.text


def test_gone_and_outside_scope_both_answer_none_and_the_operator_says_which_it_can_be(api, server):
    with _client(api) as client:
        assert client.computer("424242") is None
        assert client.master_operator() is True
    server.master_operator, server.scope = False, set()
    with _client(api) as client:
        assert client.computer("1001") is None  # it is there, outside this operator's scope
        assert client.master_operator() is False


def test_a_relevance_error_inside_http_200_is_an_error(api, server):
    server.relevance_error = "Singular expression refers to nonexistent object."
    with _client(api) as client, pytest.raises(iemkey_bigfix.ApiError, match="relevance failed: Singular"):
        client.computers(["1001"])
    server.relevance_error = None
    with _client(api) as client:
        assert set(client.computers(["1001"])) == {"1001"}


def test_the_reserved_id_property_comes_from_the_documented_property_list_not_a_look_alike(api, server):
    """GET /api/properties lists the reserved ID property and an analysis property an operator named
    "ID" too (3101): only the reserved one counts."""
    with _client(api) as client:
        assert client.id_property() == ID_PROPERTY
    assert [c[:2] for c in server.calls] == [("GET", "/api/properties")] and server.queries == []


def test_a_query_is_retried_like_a_get_and_a_group_creation_is_not(api, server, httpserver):
    server.down = True
    with _client(api) as client:
        client.sleep = lambda _seconds: None
        with pytest.raises(iemkey_bigfix.ApiError, match="HTTP 503 from POST /api/query"):
            client.query("ids of bes computers")
        with pytest.raises(iemkey_bigfix.ApiError, match="HTTP 503 from POST /api/computergroups/master"):
            client.save_group("master", "iemkey revoke: x", ["1001"], ID_PROPERTY)
    assert [c[1] for c in server.calls] == ["/api/query"] * 3 + ["/api/computergroups/master"]


def test_authentication_failures_name_the_user_and_are_not_retried(api, server):
    with _client(api, password="wrong") as client, pytest.raises(iemkey_bigfix.ApiError) as raised:
        client.computer("1001")
    assert str(raised.value) == (
        "authentication failed: the BigFix server refused user 'op' (HTTP 401 from GET /api/computer/1001)"
    )
    assert raised.value.status == 401 and len(server.calls) == 1


def test_groups_are_created_found_by_name_updated_refreshed_and_read_back(api, server):
    """A server based group is evaluated on its refresh interval (15 minutes by default): until it is
    refreshed, a new group has no members and a changed one its old members."""
    server.agent.known["1002"] = {**server.agent.known["1001"], "name": "web02"}
    with _client(api) as client:
        assert client.group_id("master", "iemkey revoke: alerts") is None
        gid = client.save_group("master", "iemkey revoke: alerts", ["1001"], ID_PROPERTY)
        assert client.group_id("master", "iemkey revoke: alerts") == gid
        assert client.group_members("master", gid) == set()  # not evaluated yet
        client.refresh_group("master", gid)
        assert client.group_members("master", gid) == {"1001"}
        assert client.save_group("master", "iemkey revoke: alerts", ["1001", "1002"], ID_PROPERTY, gid) == gid
        assert client.group_members("master", gid) == {"1001"}  # the old members, until refreshed
        client.refresh_group("master", gid)
        assert client.group_members("master", gid) == {"1001", "1002"}
        client.delete_group("master", gid)
        assert client.group_id("master", "iemkey revoke: alerts") is None


def test_nonsense_answers_are_errors_without_their_body(api, httpserver):
    httpserver.expect_request("/api/computer/7").respond_with_response(
        Response("<html><body>Gateway says: secret-ish proxy page</body></html>", status=200)
    )
    httpserver.expect_request("/api/computer/8").respond_with_response(Response("teapot", status=418))
    with _client(api) as client:
        with pytest.raises(iemkey_bigfix.ApiError) as raised:
            client.computer("7")
        assert "secret-ish" not in str(raised.value)
        with pytest.raises(iemkey_bigfix.ApiError, match="HTTP 418 from GET /api/computer/8"):
            client.computer("8")


def test_many_computers_are_asked_for_in_chunks_of_200_ids_in_order(api, server):
    now = datetime.datetime.now(UTC).timestamp()
    for number in range(2, 402):
        server.agent.known[str(1000 + number)] = {"name": f"h{number}", "registered": now, "last_report": now}
    asked = [str(1000 + n) for n in range(1, 402)] + ["999999"]  # 402 IDs, one BigFix does not have
    with _client(api) as client:
        found = client.computers(reversed(asked))
    assert sorted(found, key=int) == asked[:-1]
    chunks = [q.split("set of (", 1)[1].split(")", 1)[0].split(";") for q in server.queries]
    assert [len(c) for c in chunks] == [200, 200, 2]
    assert [i for c in chunks for i in c] == sorted(asked, key=int)


def test_a_query_backs_off_doubling_from_half_a_second_to_at_most_8(api, server):
    server.down = True
    slept = []
    with _client(api, retries=7) as client:
        client.sleep = slept.append
        with pytest.raises(iemkey_bigfix.ApiError):
            client.query("ids of bes computers")
    assert slept == [0.5, 1, 2, 4, 8, 8]  # 7 attempts, 6 waits
    assert len(server.calls) == 7


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_reads_are_retried_on_each_server_error_status(api, httpserver, status):
    answers = iter([status, status, 200])
    httpserver.expect_request("/api/computer/4711").respond_with_handler(
        lambda _request: Response(_reply(("ID", "4711")), status=next(answers))
    )
    with _client(api) as client:
        client.sleep = lambda _seconds: None
        assert client.computer("4711").id == "4711"
    assert len(httpserver.log) == 3


def test_a_server_that_does_not_answer_is_an_error_naming_the_call_not_the_reply():
    api = {"url": "http://127.0.0.1:9", "user": "op", "password": "pw", "verify": False}  # nothing listens
    with _client(api, retries=1) as client, pytest.raises(iemkey_bigfix.ApiError) as raised:
        client.computer("4711")
    assert str(raised.value) == "connection refused talking to http://127.0.0.1:9 (GET /api/computer/4711)"
    assert client.requests == 1


def test_a_server_answering_5xx_through_every_retry_says_so_not_the_reply(api, httpserver):
    httpserver.expect_request("/api/computer/4711").respond_with_data("<html>Server " + SETTING_SECRET, status=503)
    with _client(api, retries=2) as client, pytest.raises(iemkey_bigfix.ApiError) as raised:
        client.sleep = lambda _seconds: None
        client.computer("4711")
    assert "503" in str(raised.value) or "5xx" in str(raised.value), raised.value
    assert SETTING_SECRET not in str(raised.value) and "GET /api/computer/4711" in str(raised.value)


def test_a_server_that_accepts_and_never_answers_is_a_timeout_naming_the_setting():
    import socket

    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (the backlog), never answers
        api = {"url": f"http://127.0.0.1:{silent.getsockname()[1]}", "user": "op", "password": "pw", "verify": False}
        with _client(api, retries=1, timeout=0.5) as client, pytest.raises(iemkey_bigfix.ApiError) as raised:
            client.computer("4711")
    assert str(raised.value).startswith("no answer within 0.5 s (iemkey:api:timeout) talking to"), raised.value


def test_tls_to_a_server_that_speaks_plain_http_names_the_tls_failure_and_the_setting(httpserver):
    api = {"url": httpserver.url_for("").rstrip("/").replace("http:", "https:"), "user": "op", "password": "pw"}
    with _client({**api, "verify": True}, retries=1) as client, pytest.raises(iemkey_bigfix.ApiError) as raised:
        client.computer("4711")
    assert str(raised.value).startswith("TLS failed ("), raised.value
    assert "iemkey:api:verify" in str(raised.value)


def test_a_name_that_does_not_resolve_says_so():
    api = {"url": "https://bigfix.nosuch.invalid:52311", "user": "op", "password": "pw", "verify": False}
    with _client(api, retries=1) as client, pytest.raises(iemkey_bigfix.ApiError) as raised:
        client.computer("4711")
    assert str(raised.value).startswith("the server's name does not resolve talking to"), raised.value


def test_the_operator_is_asked_for_by_its_quoted_name_and_a_404_is_no_master_operator(api, httpserver):
    httpserver.expect_request("/api/operator/ops team").respond_with_data("", status=404)
    with _client({**api, "user": "ops team"}, retries=1) as client:
        assert client.master_operator() is False
        assert client.requests == 1
    assert [r.path for r, _response in httpserver.log] == ["/api/operator/ops team"]  # as werkzeug decodes it


def test_one_retry_setting_means_one_attempt_and_every_request_is_counted(api, server):
    server.down = True
    with _client(api, retries=1) as client:
        client.sleep = lambda _seconds: pytest.fail("one attempt never waits")
        with pytest.raises(iemkey_bigfix.ApiError):
            client.query("ids of bes computers")
        assert client.requests == 1
    server.down = False
    with _client(api) as client:
        client.computer("1001"), client.master_operator(), client.computers(["1001"])
        assert client.requests == 3


def test_a_query_endpoint_that_is_not_there_is_an_error_not_an_empty_answer(api, httpserver):
    httpserver.expect_request("/api/query", method="POST").respond_with_data("", status=404)
    with _client(api, retries=3) as client, pytest.raises(iemkey_bigfix.ApiError) as raised:
        client.query("ids of bes computers")
    assert str(raised.value) == "HTTP 404 from POST /api/query" and client.requests == 1  # not retried


@pytest.mark.parametrize(
    "listed",
    [
        "",
        '<Property Resource="r"><Name>ID</Name><ID>3101</ID><IsReserved>false</IsReserved></Property>',
        '<Property Resource="r"><Name>ID</Name><ID>27</ID><IsReserved>true</IsReserved></Property>'
        '<Property Resource="r"><Name>ID</Name><ID>28</ID><IsReserved>true</IsReserved></Property>',
        '<Property Resource="r"><Name>ID</Name><ID>x</ID><IsReserved>true</IsReserved></Property>',
    ],
)
def test_a_server_that_lists_no_single_reserved_id_property_is_an_error_saying_what_to_set(api, httpserver, listed):
    httpserver.expect_request("/api/properties").respond_with_data(f"{HEAD}{listed}</BESAPI>")
    with _client(api) as client, pytest.raises(iemkey_bigfix.ApiError) as raised:
        client.id_property()
    count = 2 if "28" in listed else 0
    assert str(raised.value) == (
        f"GET /api/properties lists {count} reserved 'ID' properties; set "
        "iemkey:cleanup:revoke_group:property_id in the master config"
    )


def test_a_query_is_retried_when_the_server_does_not_answer():
    api = {"url": "http://127.0.0.1:9", "user": "op", "password": "pw", "verify": False}  # nothing listens
    slept = []
    with _client(api, retries=3) as client, pytest.raises(iemkey_bigfix.ApiError) as raised:
        client.sleep = slept.append
        client.query("ids of bes computers")
    assert str(raised.value) == "connection refused talking to http://127.0.0.1:9 (POST /api/query)"
    assert client.requests == 3 and slept == [0.5, 1]


@pytest.mark.parametrize(
    ("call", "path", "status", "error"),
    [
        (lambda c: c.group_id("lab", "g"), "/api/computergroups/lab", 404, "HTTP 404 from GET /api/computergroups/lab"),
        (
            lambda c: c.save_group("lab", "g", ["1"], 27, "5"),
            "/api/computergroup/lab/5",
            404,
            "HTTP 404 from PUT /api/computergroup/lab/5",
        ),
        (
            lambda c: c.save_group("lab", "g", ["1"], 27),
            "/api/computergroups/lab",
            404,
            "HTTP 404 from POST /api/computergroups/lab",
        ),
        (
            lambda c: c.group_members("lab", "5"),
            "/api/computergroup/lab/5/computers",
            404,
            "HTTP 404 from GET /api/computergroup/lab/5/computers",
        ),
        (
            lambda c: c.refresh_group("lab", "5"),
            "/api/computergroup/lab/5/refresh",
            404,
            "HTTP 404 from POST /api/computergroup/lab/5/refresh",
        ),
        (lambda c: c.id_property(), "/api/properties", 404, "HTTP 404 from GET /api/properties"),
        (
            lambda c: c.delete_group("lab", "5"),
            "/api/computergroup/lab/5",
            500,
            "HTTP 500 from DELETE /api/computergroup/lab/5",
        ),
    ],
)
def test_a_group_call_the_server_refuses_is_an_error_naming_the_call(api, httpserver, call, path, status, error):
    method = error.split(" from ", 1)[1].split(" ", 1)[0]
    httpserver.expect_request(path, method=method).respond_with_data("<html>no</html>", status=status)
    with _client(api, retries=1) as client, pytest.raises(iemkey_bigfix.ApiError) as raised:
        call(client)
    assert str(raised.value) == error
    if status == 404 and path.startswith("/api/computergroup/lab/5"):  # the group is gone: made again
        assert raised.value.status == 404


@pytest.mark.parametrize("status", [200, 202, 204])
def test_a_group_deletion_is_done_on_any_success_status(api, httpserver, status):
    httpserver.expect_request("/api/computergroup/lab/5", method="DELETE").respond_with_data("", status=status)
    with _client(api, retries=1) as client:
        client.delete_group("lab", "5")


def test_a_created_group_the_server_does_not_answer_for_is_an_error(api, httpserver):
    other = f"{HEAD}<ComputerGroup><Name>another</Name><ID>9</ID></ComputerGroup></BESAPI>"
    httpserver.expect_request("/api/computergroups/lab", method="POST").respond_with_data(other)
    with _client(api, retries=1) as client, pytest.raises(iemkey_bigfix.ApiError) as raised:
        client.save_group("lab", "iemkey revoke: x", ["1"], 27)
    assert str(raised.value) == "POST /api/computergroups/lab did not answer the group it created"


def test_a_client_left_as_made_waits_for_real_between_query_attempts(api, server):
    server.down = True
    with _client(api, retries=2) as client, pytest.raises(iemkey_bigfix.ApiError) as raised:
        client.query("ids of bes computers")  # one wait of 0.5 s with time.sleep
    assert str(raised.value) == "HTTP 503 from POST /api/query" and client.requests == 2


def test_a_revocation_group_is_exactly_this_besapi_document():
    rule = '<MembershipRule Comparison="Equals"><PropertyID>27</PropertyID><SearchText>{}</SearchText></MembershipRule>'
    expected = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<BESAPI xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="BESAPI.xsd">'
        '<ServerBasedGroup><Name>g &lt;1&gt;</Name><MembershipRules JoinByIntersection="false">'
        f"{rule.format(3)}{rule.format(12)}</MembershipRules></ServerBasedGroup></BESAPI>"
    )
    assert iemkey_bigfix.group_xml("g <1>", ["12", "3"], "27") == expected.encode()
    with pytest.raises(ValueError) as raised:
        iemkey_bigfix.group_xml("g", ["x"], 27)
    assert str(raised.value) == "a revocation group lists computer IDs, not ['x']"


def test_members_are_the_last_path_segment_of_each_resource():
    members = f'{HEAD}<Computer Resource="https://bf/api/computer/7/"/><Computer Resource="8"/></BESAPI>'
    assert iemkey_bigfix.parse_members(members, "GET y") == {"7", "8"}


# -- the vendor's schema (BESAPI.xsd 11.0.4.60) --------------------------------------------------
@pytest.mark.parametrize("ids", [["1"], ["1001", "2002", "18446744073709551615"]])
def test_every_group_iemkey_sends_is_one_the_vendors_schema_allows(ids):
    assert besapi.problems(iemkey_bigfix.group_xml("iemkey revoke: worm <&> 'x'", ids, ID_PROPERTY)) == []


@pytest.mark.parametrize(
    ("document", "why"),
    [
        (
            "<BESAPI><ServerBasedGroup><Name>g</Name><RefreshInterval>PT7M</RefreshInterval><MembershipRules>"
            '<MembershipRule Comparison="Equals"><PropertyID>27</PropertyID><SearchText>1</SearchText>'
            "</MembershipRule></MembershipRules></ServerBasedGroup></BESAPI>",
            "RefreshInterval",
        ),
        (
            '<BESAPI><ServerBasedGroup><Name>g</Name><MembershipRules><MembershipRule Comparison="Is">'
            "<PropertyID>27</PropertyID><SearchText>1</SearchText></MembershipRule></MembershipRules>"
            "</ServerBasedGroup></BESAPI>",
            "Comparison",
        ),
        ("<BESAPI><ServerBasedGroup><Name>g</Name><MembershipRules /></ServerBasedGroup></BESAPI>", "MembershipRule"),
    ],
)
def test_a_document_the_schema_does_not_allow_is_answered_400_as_a_real_server_does(api, server, document, why):
    with _client(api) as client, pytest.raises(iemkey_bigfix.ApiError) as raised:
        client.call("POST", "/api/computergroups/master", data=document.encode())
    assert raised.value.status == 400 and server.groups == {}
    assert why in " ".join(besapi.problems(document))


def test_a_stand_in_reply_that_breaks_the_schema_fails_loudly(api, server, monkeypatch):
    """The check on the stand-in's own replies works: a reply the schema does not allow is a 500."""
    broken = Response(
        '<?xml version="1.0"?><BESAPI><Operator><Bogus/></Operator></BESAPI>', 200, content_type="application/xml"
    )
    monkeypatch.setattr(server, "_operator", lambda request, name: broken)
    with _client(api) as client, pytest.raises(iemkey_bigfix.ApiError, match="HTTP 500"):
        client.master_operator()
    assert server.calls[-1][2] == 500
