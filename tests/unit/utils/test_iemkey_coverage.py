"""
Agents outside Salt (``iemkey_coverage``): every computer BigFix holds that reported lately, read in
parts from the stand-in server on loopback, joined with what iemkey knows by computer ID (by name only
for a minion that gave no ID); the settings, what fails the report, and what the text output shows.
"""

import datetime

import iemkey_bigfix
import iemkey_coverage
import pytest
from bigfix_rest import Registered, StandInBigFix

UTC = datetime.timezone.utc
DAY = 86400


@pytest.fixture
def fleet(httpserver):
    """Minions' agents 1001-1003, an old computer iemkey cleans up (1004), computers no minion covers
    (2001, 2002), one that has not reported for 40 days (2003), one registered but never reported (2004)."""
    now = datetime.datetime.now(UTC).timestamp()
    agents = Registered()
    for cid, name in (("1001", "web01"), ("1002", "web02"), ("1003", "db01"), ("1004", "web01")):
        agents.known[cid] = {"name": name, "registered": now - 9 * DAY, "last_report": now - 600}
    server = StandInBigFix([agents], "op", "pw").serve(httpserver)
    server.others = {
        "2001": {"name": "dmz-proxy", "registered": now - 99 * DAY, "last_report": now - 3600},
        "2002": {"name": "appliance7", "registered": now - 99 * DAY, "last_report": now - 2 * DAY},
        "2003": {"name": "retired", "registered": now - 99 * DAY, "last_report": now - 40 * DAY},
        "2004": {"name": "fresh", "registered": now - 60, "last_report": now - 60},
    }
    server.unreported.add("2004")
    return server


@pytest.fixture
def api(httpserver):
    return {"url": httpserver.url_for("").rstrip("/"), "user": "op", "password": "pw", "verify": False}


def _survey(api, conf=None, known=("1001", "1002", "1003", "1004"), unidentified=(), **overrides):
    """``known``: the computer IDs the minions' agents report; ``unidentified``: minions that gave none."""
    conf = iemkey_coverage.settings(conf or {})
    minions = {f"minion-{cid}": {"computer_id": cid} for cid in known}
    minions.update({minion: {"error": "no answer"} for minion in unidentified})
    with iemkey_bigfix.session({**api, "timeout": 2, "retries": 1, **overrides}) as client:
        return iemkey_coverage.survey(client, conf, minions, [], client.master_operator())


def test_only_the_computers_no_minion_and_no_clean_up_accounts_for_are_outside_salt(api, fleet):
    found = _survey(api)
    assert [(c["computer_id"], c["name"]) for c in found["computers"]] == [
        ("2001", "dmz-proxy"),
        ("2002", "appliance7"),
    ]
    assert found["count"] == 2 and found["complete"] is True and found["matched_by_name"] == {}
    assert found["reported"] == found["counted"] == 6  # 2003 is not active, 2004 never reported
    assert found["computers"][0]["last_report"].endswith("+00:00") and found["computers"][0]["agent_type"] == "Native"
    assert "salt-ssh" in found["how"] and "technote 1670787" in found["how"]


@pytest.mark.parametrize("output", ["json", "xml"])
def test_a_fleet_is_read_in_parts_of_at_most_chunk_computers_each_asked_once(api, fleet, output, monkeypatch):
    for n in range(3000, 3250):  # 250 more computers outside Salt
        fleet.others[str(n)] = {"name": f"h{n}", "registered": 0, "last_report": fleet.others["2001"]["last_report"]}
    if output == "xml":  # a server (or a proxy) that answers XML whatever was asked
        real = fleet._query
        monkeypatch.setattr(fleet, "_query", lambda request: real(_FormXml(request)))
    found = _survey(api, {"chunk": 100, "active_days": 30})
    assert found["counted"] == found["reported"] == 256 and found["count"] == 252
    assert found["requests"] == 4  # the count, then ceil(256 / 100) = 3 parts
    parts = [q for q in fleet.queries if " mod " in q]
    assert [q.split(" mod ")[1].split(")")[0] for q in parts] == ["3 = 0", "3 = 1", "3 = 2"]
    assert len({c["computer_id"] for c in found["computers"]}) == 252  # each once


class _FormXml:
    """A request whose ``output`` is xml whatever the client asked."""

    def __init__(self, request):
        self._request = request
        self.form = {**request.form, "output": "xml"}

    def __getattr__(self, name):
        return getattr(self._request, name)


def test_a_minion_that_gave_no_computer_id_is_matched_by_name_and_said_so(api, fleet):
    found = _survey(api, known=("1001", "1003", "1004"), unidentified=["web02.example.com", "mail01"])
    assert found["matched_by_name"] == {"web02.example.com": ["1002"]}
    assert [c["computer_id"] for c in found["computers"]] == ["2001", "2002"]


@pytest.mark.parametrize(
    "error",
    ["Singular expression refers to nonexistent object.", 'The operator "mod" is not defined.'],
)
def test_a_relevance_error_is_an_error_never_no_computers(api, fleet, error):
    fleet.relevance_errors = {" mod ": error}
    with pytest.raises(iemkey_bigfix.ApiError, match="the relevance failed"):
        _survey(api)
    fleet.relevance_errors, fleet.relevance_error = {}, error
    with pytest.raises(iemkey_bigfix.ApiError, match="the relevance failed"):
        _survey(api)


def test_an_answer_of_another_part_or_form_is_nonsense(api, fleet, monkeypatch):
    for n in range(3000, 3200):  # two parts of 100
        fleet.others[str(n)] = {"name": f"h{n}", "registered": 0, "last_report": fleet.others["2001"]["last_report"]}
    real = fleet._batch
    monkeypatch.setattr(fleet, "_batch", lambda relevance, ids, output: real(relevance, ["2001", "2002"], output))
    with pytest.raises(iemkey_bigfix.ApiError, match="not of the part asked for"):
        _survey(api, {"chunk": 100})
    with pytest.raises(iemkey_bigfix.ApiError, match=r"something else than \(id"):
        iemkey_bigfix.parse_part(["2001", "x"], 1, 0)


def test_an_operator_who_sees_only_its_scope_gets_a_report_that_says_so(api, fleet):
    fleet.master_operator, fleet.scope = False, {"1001", "2001"}
    found = _survey(api)
    assert [c["computer_id"] for c in found["computers"]] == ["2001"]
    assert found["complete"] is False and "not a master operator" in found["scope"]


def test_a_server_that_is_down_is_an_error(api, fleet):
    fleet.down = True
    with pytest.raises(iemkey_bigfix.ApiError, match="HTTP 503"):
        _survey(api)


# -- the pure parts ---------------------------------------------------------------------------------
def test_known_ids_are_the_minions_agents_and_every_clean_ups_computers():
    minions = {"web01": {"computer_id": "1001"}, "web02": {"error": "no answer"}, "x": {"computer_id": None}}
    cases = [{"old_computer_id": "7", "new_computer_id": "8"}, {"old_computer_id": "9", "new_computer_id": None}]
    assert iemkey_coverage.known_ids(minions, cases) == {"1001", "7", "8", "9"}
    assert iemkey_coverage.unidentified({**minions, "bare": {"no_agent": True}}) == ["web02", "x"]


def test_a_first_label_is_matched_only_where_no_minion_has_it_as_its_id():
    computers = [
        iemkey_bigfix.Computer("5", "web01", None, "Native"),
        iemkey_bigfix.Computer("6", "WEB01.example.com", None, "Native"),
        iemkey_bigfix.Computer("7", None, None, None),
    ]
    read, found, matched = iemkey_coverage.outside(iter(computers), set(), ["web01.example.com", "web01"])
    assert read == 3 and matched == {"web01": ["5"], "web01.example.com": ["6"]}
    assert [c["computer_id"] for c in found] == ["7"] and found[0]["last_report"] is None


@pytest.mark.parametrize(
    "section, error",
    [
        ({"active_days": 0}, "iemkey:coverage:active_days must be between 1 and 3650, not 0"),
        ({"active_days": "30d"}, "iemkey:coverage:active_days must be a whole number, not '30d'"),
        ({"chunk": True}, "iemkey:coverage:chunk must be a whole number, not True"),
        ({"chunk": 99}, "iemkey:coverage:chunk must be between 100 and 50000, not 99"),
        ({"list": -1}, "iemkey:coverage:list must be a whole number, not -1"),
        ({"outside_salt": "yes"}, "iemkey:coverage:outside_salt must be one of incident, fail, warn, off, not 'yes'"),
    ],
)
def test_a_malformed_setting_is_refused_naming_it(section, error):
    with pytest.raises(ValueError) as err:
        iemkey_coverage.settings(section)
    assert str(err.value) == error


def test_the_defaults_are_documented_ones():
    assert iemkey_coverage.settings(None) == {"active_days": 30, "chunk": 5000, "list": 20, "outside_salt": "incident"}
    assert iemkey_coverage.settings({"active_days": "7", "list": 0})["active_days"] == 7


@pytest.mark.parametrize(
    "found, policy, incidents, fails",
    [
        ({"count": 2}, "incident", ["worm"], True),
        ({"count": 2}, "incident", [], False),
        ({"count": 0}, "incident", ["worm"], False),
        ({"count": 2}, "fail", [], True),
        ({"count": 0}, "fail", [], False),
        ({"count": 2}, "warn", ["worm"], False),
        ({"count": 2}, "off", ["worm"], False),
        ({"error": "down"}, "incident", ["worm"], True),
        ({"error": "down"}, "incident", [], False),
        ({"error": "down"}, "fail", [], True),
        ({"error": "down"}, "warn", ["worm"], False),
        (None, "fail", ["worm"], False),
    ],
)
def test_what_fails_the_report(found, policy, incidents, fails):
    assert iemkey_coverage.failing(found, policy, incidents) is fails


def test_an_incident_is_open_until_closed_or_withdrawn_and_alerts_while_a_rotation_is_owed():
    incidents = {"a": {"until": None}, "b": {"until": "2026-12-01T00:00:00+00:00"}, "c": {"withdrawn": {"at": "x"}}}
    assert iemkey_coverage.open_incidents(incidents, []) == ["a"]
    assert iemkey_coverage.open_incidents(incidents, [{"minion": "web01"}]) == ["a", "alerts"]
    assert iemkey_coverage.open_incidents({}, []) == []


def test_the_text_output_shows_the_first_few_and_says_how_many_more():
    found = {"count": 5, "computers": [{"computer_id": str(n)} for n in range(5)]}
    shown = iemkey_coverage.shown(found, 2)
    assert [c["computer_id"] for c in shown["computers"]] == ["0", "1"]
    assert shown["more"] == "3 more: --out=json lists all of them" and shown["count"] == 5
    assert iemkey_coverage.shown(found, 5) is found and iemkey_coverage.shown({"error": "x"}, 0) == {"error": "x"}
