"""
A stand-in BigFix server's REST API, answering from what the stand-in agents registered
(``StandInAgent.computers()``) the way real servers answer (docs/bigfix-facts.md names the
sources: developer.bigfix.com ``rest-api/api/*`` and ``rest-api/examples/get-computer``, and the
10.0.7 captures in lyft/cartography ``tests/data/bigfix/computers.py``), awkward parts included:

- ``GET /api/computer/{id}``: BESAPI XML, one ``<Property Name=...>`` per property as direct
  children of ``<Computer>``, with repeated names (``IP Address``, ``Subnet Address``, ~30
  ``Client Settings`` whose values include ``_BESServer_Database_Password={obf}...``, a secret
  that must never leave iemkey), ``User-defined error: ...`` values, dates with other offsets;
  ``?fields=Property<Name=A,B>`` limits the reply to those properties (``ignore_fields`` makes
  it answer everything, as a server that does not support it would). A computer in
  ``correlations`` is a correlated device: its other representation's properties follow in a
  ``<ManagementExtension Type=...>`` node. One in ``unreported`` has registered but not yet
  reported: no Computer Name, no Last Report Time.
- 404 for a computer no agent registered, one deleted (until it reports again, as BigFix
  shows it again), one revoked (for ever), and, for an operator who is not a master operator,
  one outside ``scope``: "does not exist" and "outside my scope" look alike.
- ``GET /api/computers``: every visible computer, ``<LastReportTime>`` and ``<ID>``.
- ``DELETE /api/computer/{id}``: marks it deleted ("ok"); 404 when not visible.
- ``GET /api/operator/{name}``: ``<MasterOperator>true|false</MasterOperator>``.
- ``POST /api/query`` (``relevance``, ``output=json|xml``): the session relevance iemkey sends
  (the reserved ID property's id; the (id, name, last report time, agent type) tuples of a set of
  computer IDs, over the computers this operator sees, ``<none>`` for what a computer has not
  reported; the number of computers that reported within some days, and the tuples of those whose
  ID is in one residue class, ``(id of it) mod n = k``); anything else, or everything while
  ``relevance_error`` is set, is a relevance error answered with HTTP 200 (``{"error": ...}`` /
  ``<Error>``). A JSON answer is one document (no paging), as real servers send it.
- ``others``: computers no agent of the test runs (an appliance, a DMZ host, another team's server),
  registered and reporting as the server's own records say.
- Server based computer groups in the master action site: ``GET|POST /api/computergroups/master``,
  ``PUT|DELETE /api/computergroup/master/{id}``, ``GET /api/computergroup/master/{id}/computers``
  (members evaluated from the group's rules over the properties the server holds, computers that
  no longer report included, as real servers do it: on the group's ``RefreshInterval``, default 15
  minutes, or at ``POST /api/computergroup/master/{id}/refresh``; a group just created or changed
  shows its old members until then; a group without rules is refused with 400).
- ``GET /api/properties``: each property's ``Name``, ``ID`` and ``IsReserved``; the reserved ``ID``
  property, and an analysis property an operator also named ``ID``.
- Every document it takes (a group) and every XML reply it gives is checked against the vendor's
  BESAPI.xsd (``besapi``): a document the schema does not allow is answered 400, as a real server
  does; a reply of its own that breaks it is a 500 naming why, so that a test sees it
  (``check_schema = False`` skips both, for the benchmark's large fleets).
- ``revoke(id)`` is the console operator's Revoke Certificate: the computer leaves the console.
- HTTP Basic auth: anything else is 401. ``down = True`` answers 503 to everything;
  ``latency`` seconds pass before each answer.
"""

import base64
import datetime
import email.utils
import json
import re
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

import besapi
from werkzeug import Request, Response

ROUTE = re.compile(r"^/api/.*$")
PDT = datetime.timezone(datetime.timedelta(hours=-7))  # client-reported dates keep the client's own offset
ID_PROPERTY = 27  # the id this server gives its reserved "ID" property
PROPERTY_NAMES = {ID_PROPERTY: "ID", 1: "Computer Name", 2: "OS"}
# GET /api/properties: (id, name, reserved); an analysis property named "ID" too, as operators make them
PROPERTIES = ((1, "Computer Name", True), (2, "OS", True), (ID_PROPERTY, "ID", True), (3101, "ID", False))
EVALUATION = "<Evaluation><Time>0.302ms</Time><Plurality>%s</Plurality></Evaluation>"
REFRESH_INTERVAL = 900  # seconds: a server based group's membership is evaluated this often (PT15M)
# the tuples of many computers iemkey asks for; the properties a computer has not reported are "<none>"
BATCH_RELEVANCE = re.compile(
    re.escape(
        '(id of it, (name of it | "<none>"), (last report time of it as string | "<none>"), '
        '(agent type of it | "<none>")) of bes computers whose (id of it is contained by set of ('
    )
    + r"([0-9;]+)\)\)"
)
# every computer that reported within some days, in residue classes of their IDs
REPORTED = r"\(exists last report time of it\) and \(last report time of it > now - ([0-9]+) \* day\)"
FLEET_COUNT_RELEVANCE = re.compile(r"number of bes computers whose \(" + REPORTED + r"\)")
FLEET_PART_RELEVANCE = re.compile(
    re.escape(
        '(id of it, (name of it | "<none>"), (last report time of it as string | "<none>"), '
        '(agent type of it | "<none>")) of bes computers whose (((id of it) mod '
    )
    + r"([0-9]+) = ([0-9]+)\) and "
    + REPORTED
    + r"\)"
)
# a client setting real replies carry (the vendor's own example holds an obfuscated DB password)
SETTING_SECRET = "{obf}c3RhbmQtaW4tZGItc2VjcmV0LTcxMw=="
CLIENT_SETTINGS = (
    "_BESClient_EMsg_File=/var/opt/BESClient/besclientdebug.log",
    "_BESClient_EMsg_Detail=0",
    "__RelayServer1=http://relay.example:52311/bfmirror/downloads",
    "__RelayServer2=",
    "__LockState=false",
    "_BESClient_Resource_StartupNormalSpeed=0",
    "_BESServer_Database_DSN=BFENT",
    "_BESServer_Database_User=db2inst1",
    f"_BESServer_Database_Password={SETTING_SECRET}",
    "_BESClient_DeploymentEncoding_IANAName=windows-1252",
    "_BESClient_DeploymentEncoding_IANAName=windows-1252",
)


class StandInBigFix:
    def __init__(self, agents, user, password, master_operator=True, latency=0.0):
        self.agents = list(agents)
        self.others = {}  # computer id -> {"name", "registered", "last_report"}: no agent of the test runs it
        self.user = user
        self.authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.master_operator = master_operator
        self.scope = None  # for a non-master operator: the computer IDs it may see (None: all)
        self.deleted = {}  # computer id -> when it was deleted
        self.revoked = {}  # computer id -> when its certificate was revoked
        self.correlations = {}  # computer id -> {"Type": ..., property name: value} of another representation
        self.unreported = set()  # computer ids registered but not reported yet
        self.agent_types = {}  # computer id -> Agent Type other than Native
        # group id -> {"name", "rules": [(property id, comparison, text)], "interval", "evaluated", "members"}
        self.groups = {}
        self.vanish_on_delete = set()  # computer ids another console user deletes just before iemkey's DELETE
        self.down = False
        self.ignore_fields = False
        self.properties = list(PROPERTIES)  # what GET /api/properties lists: (id, name, reserved)
        self.check_schema = True  # documents taken and XML replies given are checked against BESAPI.xsd
        self.relevance_error = None  # every query fails with this message
        self.relevance_errors = {}  # a query containing the key fails with its message
        self.latency = float(latency)
        self.calls = []  # (method, path, status) of every request, in order
        self.call_times = []  # when each of those was answered (epoch seconds)
        self.in_flight = self.max_in_flight = 0  # requests being answered now, and at most so far
        self.queries = []  # the session relevance of every POST /api/query, in order
        self.lock = threading.Lock()
        self._next_group = 100

    # -- test-facing ------------------------------------------------------------------------
    def serve(self, httpserver):
        httpserver.expect_request(ROUTE).respond_with_handler(self.handle)
        return self

    def wsgi(self, environ, start_response):
        """The same server as a WSGI application (for the demo's own HTTP server)."""
        return self.handle(Request(environ))(environ, start_response)

    def deletes(self):
        """The computer IDs DELETE was called for (whatever the answer), in order."""
        return [
            path.rsplit("/", 1)[1]
            for method, path, _status in self.calls
            if method == "DELETE" and path.startswith("/api/computer/")
        ]

    def requests(self, method=None, prefix=""):
        return [c for c in self.calls if (method is None or c[0] == method) and c[1].startswith(prefix)]

    def revoke(self, computer_id):
        """The console operator's Revoke Certificate: the computer leaves the console for good."""
        with self.lock:
            self.revoked[str(computer_id)] = time.time()

    def computers(self):
        """Every computer the agents (and ``others``) registered that BigFix still shows: {id: record}."""
        registered = {cid: rec for agent in self.agents for cid, rec in agent.computers().items()}
        registered.update(self.others)
        found = {}
        for computer_id, record in registered.items():
            deleted = self.deleted.get(computer_id)
            if computer_id in self.revoked:
                continue
            if deleted is None or record["last_report"] > deleted:
                found[computer_id] = record
        return found

    def visible(self):
        """What the API user sees: everything for a master operator, its scope otherwise."""
        found = self.computers()
        if not self.master_operator and self.scope is not None:
            found = {cid: record for cid, record in found.items() if cid in self.scope}
        return found

    def members(self, group_id):
        """The computer IDs BigFix counts in group ``group_id`` now: as evaluated last, again once its
        refresh interval has passed."""
        group = self.groups[str(group_id)]
        if time.time() - group["evaluated"] >= group["interval"]:
            self.evaluate(group_id)
        return set(group["members"])

    def evaluate(self, group_id):
        """Evaluate the group's rules over the properties the server holds (its refresh)."""
        group = self.groups[str(group_id)]
        found = set()
        for computer_id, record in self.computers().items():
            values = {"ID": computer_id, "Computer Name": record["name"]}
            for property_id, comparison, text in group["rules"]:
                name = PROPERTY_NAMES.get(property_id)
                if name in values and comparison == "Equals" and values[name] == text:
                    found.add(computer_id)
        group.update(members=found, evaluated=time.time())

    # -- serving ------------------------------------------------------------------------------
    def handle(self, request):
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency:
                time.sleep(self.latency)  # outside the lock: concurrent requests overlap, as on a real server
            with self.lock:
                response = self._checked(request)
                self.calls.append((request.method, request.path, response.status_code))
                self.call_times.append(time.time())
                return response
        finally:
            with self.lock:
                self.in_flight -= 1

    def _checked(self, request):
        """The answer, with what the vendor's schema says of the document taken and the reply given."""
        body = request.get_data()
        if self.check_schema and request.method in ("POST", "PUT") and body.lstrip().startswith(b"<"):
            problems = besapi.problems(body)
            if problems:
                return Response(f"The document is not valid against BESAPI.xsd: {problems[0]}", status=400)
        response = self._answer(request)
        if self.check_schema and response.content_type.startswith("application/xml"):
            problems = besapi.problems(response.get_data())
            if problems:
                return Response(f"the stand-in's reply breaks BESAPI.xsd: {'; '.join(problems[:3])}", status=500)
        return response

    def _answer(self, request):
        if self.down:
            return Response("BigFix server unavailable", status=503)
        if request.headers.get("Authorization") != self.authorization:
            return Response("Unauthorized", status=401)
        path, method = request.path, request.method
        if path == "/api/computers" and method == "GET":
            rows = "".join(
                f'<Computer Resource="{request.host_url}api/computer/{cid}">'
                f"<LastReportTime>{_rfc2822(record['last_report'])}</LastReportTime><ID>{cid}</ID></Computer>"
                for cid, record in sorted(self.visible().items())
            )
            return _xml(rows)
        if match := re.fullmatch(r"/api/computer/([0-9]+)", path):
            return self._computer(request, match.group(1))
        if match := re.fullmatch(r"/api/operator/([^/]+)", path):
            return self._operator(request, urllib.parse.unquote(match.group(1)))
        if path == "/api/query" and method == "POST":
            return self._query(request)
        if path == "/api/properties" and method == "GET":
            return _xml(
                "".join(
                    f'<Property Resource="{request.host_url}api/property/{pid}"><Name>{escape(name)}</Name>'
                    f"<ID>{pid}</ID><IsReserved>{str(reserved).lower()}</IsReserved></Property>"
                    for pid, name, reserved in self.properties
                )
            )
        if path == "/api/computergroups/master":
            return self._groups(request)
        if match := re.fullmatch(r"/api/computergroup/master/([0-9]+)(/computers|/refresh)?", path):
            return self._group(request, match.group(1), match.group(2))
        return Response("Not found", status=404)

    def _computer(self, request, computer_id):
        computers = self.visible()
        if computer_id not in computers:
            return Response("Computer not found", status=404)
        if request.method == "DELETE":
            if computer_id in self.vanish_on_delete:  # someone else deleted it between the look-up and now
                self.deleted[computer_id] = time.time()
                return Response("Computer not found", status=404)
            self.deleted[computer_id] = time.time()
            return Response("ok", status=200)
        if request.method != "GET":
            return Response("Method not allowed", status=405)
        wanted = None if self.ignore_fields else _fields(request.args.get("fields"))
        record = computers[computer_id]
        own = self._properties(computer_id, record)
        body = "".join(_property(name, val) for name, val in own if wanted is None or name in wanted)
        other = self.correlations.get(computer_id)
        if other:
            props = "".join(  # BESAPI.xsd: a representation's property names itself with Type, not Name
                f'<Property Type="{_attribute(name)}">{escape(str(val))}</Property>'
                for name, val in other.items()
                if name != "Type" and (not wanted or name in wanted)
            )
            body += f'<ManagementExtension Type="{escape(other["Type"])}">{props}</ManagementExtension>'
        return _xml(f'<Computer Resource="{request.host_url}api/computer/{computer_id}">{body}</Computer>')

    def _properties(self, computer_id, record):
        """A full property list, as real servers send it (repeats, settings, errors, offsets)."""
        reported = computer_id not in self.unreported
        props = [("Client Settings", setting) for setting in CLIENT_SETTINGS]
        if reported:
            props += [("Computer Name", record["name"]), ("OS", "Linux Debian 12 (6.1.0-18-amd64)")]
            props += [("CPU", "2300 MHz Xeon Gold 5218"), ("Last Report Time", _rfc2822(record["last_report"]))]
        props += [
            ("Locked", "No"),
            ("BES Relay Selection Method", "Manual"),
            ("Relay", "relay.example:52311"),
            ("Distance to BES Relay", "User-defined error: unknown"),
            ("IP Address", "192.168.144.119"),
            ("IP Address", "192.168.144.97"),
            ("Agent Type", self.agent_types.get(computer_id, "Native")),
            ("Agent Version", "10.0.7.52"),
            ("ID", computer_id),
            ("Subnet Address", "192.168.144.0"),
            ("Subnet Address", "192.168.144.0"),
            (
                "Enrollment Date",
                email.utils.format_datetime(datetime.datetime.fromtimestamp(record["registered"], PDT)),
            ),
            ("company", "User-defined error: not set"),
        ]
        return props

    def _operator(self, request, name):
        if request.method != "GET" or name != self.user:
            return Response("Operator not found", status=404)
        master = "true" if self.master_operator else "false"
        return _xml(
            f'<Operator Resource="{request.host_url}api/operator/{escape(name)}"><Name>{escape(name)}</Name>'
            f"<MasterOperator>{master}</MasterOperator><CustomContent>true</CustomContent>"
            "<CanSubmitQueries>true</CanSubmitQueries></Operator>"
        )

    def _query(self, request):
        relevance = request.form.get("relevance", "")
        output = request.form.get("output", "xml")
        self.queries.append(relevance)
        failing = self.relevance_error or next((m for k, m in self.relevance_errors.items() if k in relevance), None)
        batch = BATCH_RELEVANCE.fullmatch(relevance)
        if batch and not failing:
            return self._batch(relevance, batch.group(1).split(";"), output)
        count = FLEET_COUNT_RELEVANCE.fullmatch(relevance)
        if count and not failing:
            return _answers(relevance, [len(self._reported(int(count.group(1))))], output, "integer")
        part = FLEET_PART_RELEVANCE.fullmatch(relevance)
        if part and not failing:
            parts, index, days = (int(g) for g in part.groups())
            if parts < 1:
                return _answers(relevance, "Division by zero.", output, "error")
            ids = [cid for cid in self._reported(days) if int(cid) % parts == index]
            return self._batch(relevance, ids, output)
        return _answers(relevance, failing or 'The operator "whose" is not defined.', output, "error")

    def _reported(self, days):
        """The computers this operator sees that reported within ``days`` days."""
        since = time.time() - days * 86400
        return [
            cid
            for cid, record in self.visible().items()
            if cid not in self.unreported and record["last_report"] > since
        ]

    def _batch(self, relevance, ids, output):
        """Session relevance over the computers this operator sees: (id, name, last report, type)."""
        visible = self.visible()
        rows = []
        for computer_id in sorted(set(ids) & set(visible), key=int):
            record = visible[computer_id]
            reported = computer_id not in self.unreported
            rows.append(
                [
                    int(computer_id),
                    record["name"] if reported else "<none>",
                    _rfc2822(record["last_report"]) if reported else "<none>",
                    self.agent_types.get(computer_id, "Native"),
                ]
            )
        if output == "json":
            document = {"result": rows, "count": len(rows), "plural": True, "type": "( integer, string, time, string )"}
            return Response(json.dumps(document), status=200, content_type="application/json")
        kinds = ("integer", "string", "time", "string")
        tuples = "".join(
            "<Tuple>"
            + "".join(
                f'<Answer type="{kind}">{escape(str(item))}</Answer>' for kind, item in zip(kinds, row, strict=True)
            )
            + "</Tuple>"
            for row in rows
        )
        return _xml(
            f'<Query Resource="{_attribute(relevance)}"><Result>{tuples}</Result>{EVALUATION % "Plural"}</Query>'
        )

    def _groups(self, request):
        if request.method == "GET":
            rows = "".join(
                f'<ComputerGroup Resource="{request.host_url}api/computergroup/master/{gid}">'
                f"<Name>{escape(group['name'])}</Name><ID>{gid}</ID></ComputerGroup>"
                for gid, group in sorted(self.groups.items())
            )
            return _xml(rows)
        if request.method != "POST":
            return Response("Method not allowed", status=405)
        parsed = _group_definition(request.get_data())
        if isinstance(parsed, Response):
            return parsed
        gid = str(self._next_group)
        self._next_group += 1
        self.groups[gid] = {**parsed, "members": set(), "evaluated": time.time()}  # not evaluated yet
        return _created(request, gid, parsed["name"])

    def _group(self, request, gid, tail):
        if gid not in self.groups:
            return Response("Computer group not found", status=404)
        if tail == "/computers":
            rows = "".join(
                f'<Computer Resource="{request.host_url}api/computer/{cid}" />'
                for cid in sorted(self.members(gid), key=int)
            )
            return _xml(rows)
        if tail == "/refresh":
            if request.method != "POST":
                return Response("Method not allowed", status=405)
            self.evaluate(gid)
            return Response("ok", status=200)
        if request.method == "DELETE":
            del self.groups[gid]
            return Response("ok", status=200)
        if request.method == "PUT":
            parsed = _group_definition(request.get_data())
            if isinstance(parsed, Response):
                return parsed
            self.groups[gid].update(parsed)  # the old members stay until the group is evaluated again
            return _created(request, gid, parsed["name"])
        return Response("Method not allowed", status=405)


def _group_definition(body):
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        return Response("Invalid XML", status=400)
    group = root.find("ServerBasedGroup")
    if group is None or not (group.findtext("Name") or "").strip():
        return Response("A ServerBasedGroup with a Name is required", status=400)
    rules = []
    for rule in group.iter("MembershipRule"):
        try:
            rules.append((int(rule.findtext("PropertyID")), rule.get("Comparison"), rule.findtext("SearchText")))
        except (TypeError, ValueError):
            return Response("MembershipRule needs a numeric PropertyID", status=400)
    if not rules:
        return Response("A server based group needs at least one membership rule", status=400)
    interval = _duration(group.findtext("RefreshInterval"))
    return {"name": group.findtext("Name").strip(), "rules": rules, "interval": interval}


def _created(request, gid, name):
    return _xml(
        f'<ComputerGroup Resource="{request.host_url}api/computergroup/master/{gid}" '
        f'LastModified="{email.utils.formatdate(usegmt=True)}"><Name>{escape(name)}</Name><ID>{gid}</ID>'
        "</ComputerGroup>"
    )


def _duration(text):
    """A ``RefreshInterval`` (``PT5M``, ``PT1H``, ``P1D`` ...) in seconds; the default when absent."""
    match = re.fullmatch(r"P(?:([0-9]+)D)?(?:T(?:([0-9]+)H)?(?:([0-9]+)M)?)?", (text or "").strip())
    if not text or not match:
        return REFRESH_INTERVAL
    days, hours, minutes = (int(g or 0) for g in match.groups())
    return days * 86400 + hours * 3600 + minutes * 60 or REFRESH_INTERVAL


def _fields(text):
    """``Property<Name=A,B,C>`` -> {"A", "B", "C"}; None when the request asks for everything."""
    if not text:
        return None
    match = re.fullmatch(r"Property<Name=(.*)>", text)
    return set(match.group(1).split(",")) if match else None


def _property(name, text):
    return f'<Property Name="{escape(name)}">{escape(str(text))}</Property>'


def _rfc2822_in(epoch, zone):
    return email.utils.format_datetime(datetime.datetime.fromtimestamp(epoch, zone))


def _rfc2822(epoch):
    return email.utils.formatdate(epoch, usegmt=False).replace("-0000", "+0000")


def _xml(inner):
    return Response(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<BESAPI xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="BESAPI.xsd">'
        f"{inner}</BESAPI>",
        status=200,
        content_type="application/xml",
    )


def _answers(relevance, result, output, kind):
    """A singular query's answer (``result``: [it]; ``kind``: its type), or its error when ``kind`` is
    ``error`` (``result``: the message)."""
    if kind == "error":
        if output == "json":
            return Response(json.dumps({"error": result}), status=200, content_type="application/json")
        return _xml(f'<Query Resource="{_attribute(relevance)}"><Result /><Error>{escape(result)}</Error></Query>')
    if output == "json":  # a list even when singular (developer.bigfix.com rest-api/relevance_queries)
        document = {"result": result, "plural": False, "type": kind, "evaltime_ms": 0}
        return Response(json.dumps(document), status=200, content_type="application/json")
    answers = "".join(f'<Answer type="{kind}">{escape(str(item))}</Answer>' for item in result)
    return _xml(
        f'<Query Resource="{_attribute(relevance)}"><Result>{answers}</Result>{EVALUATION % "Singular"}</Query>'
    )


def _attribute(text):
    """``text`` as an XML attribute value (a relevance's quotes included)."""
    return escape(text, {'"': "&quot;"})


class Registered:
    """Computers registered with the stand-in server by agents none of which runs in the test:
    ``known`` is {computer id: {"name", "registered", "last_report"}}, as ``StandInAgent.computers()``."""

    def __init__(self):
        self.known = {}

    def computers(self):
        return self.known
