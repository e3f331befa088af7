"""
The BigFix server's REST API as iemkey uses it, and how to read what it answers.

Real servers answer more than a test stand-in would think to (docs/bigfix-facts.md, "What real
REST replies look like"): ``GET /api/computer/{id}`` repeats properties (``IP Address``, ~30
``Client Settings``, some holding secrets such as an obfuscated database password), gives
``User-defined error: ...`` as a value, nests a correlated device's other representations in
``ManagementExtension`` nodes, and an operator who is not a master operator gets 404 for a
computer outside its scope. So:

- only the agent record's own properties count: the direct ``Property`` children of the reply's
  ``Computer``, first occurrence; ``User-defined error`` values count as absent;
- requests ask only for the fields iemkey reads (``?fields=``), and no reply body is ever
  logged, returned or put in an exception message;
- a relevance error answered with HTTP 200 is an error, never an empty answer.

``session(api)`` is a requests session with HTTP Basic auth that retries connection errors,
timeouts and 5xx with backoff (urllib3 ``Retry``) for GET, PUT and DELETE; ``POST /api/query``
(read-only) retries the same way; other POSTs (creating a group) are never retried (a lost reply
is found by name on the next pass). ``Client`` wraps the calls. Pure: no Salt loader dunders.
"""

import contextlib
import dataclasses
import datetime
import email.utils
import json
import re
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

try:  # _utils/, synced with saltutil.sync_all (formula install)
    import iemkey_errors
except ImportError:  # pip install (Salt extension)
    from saltext.iemkey.utils import iemkey_errors

UTC = datetime.timezone.utc
DEFAULTS = {"verify": True, "timeout": 30, "retries": 3, "concurrency": 3, "lookup": "query"}
LOOKUPS = ("query", "get")
REQUIRED = ("url", "user", "password")
COMPUTER_ID = re.compile(r"[0-9]{1,20}")
# What iemkey reads of a computer; everything else a reply may carry (client settings) is not asked for.
FIELDS = ("Computer Name", "Last Report Time", "Agent Type", "ID")
RETRY_STATUS = (500, 502, 503, 504)
BACKOFF = 0.5  # seconds before the first retry; doubled for each one after (at most BACKOFF_MAX)
BACKOFF_MAX = 8
# (id, name, last report time, agent type) of the computers a whose clause picks: the agent record's
# own properties, each guarded (a computer that never reported has none). Session relevance, forwarded
# to BigFix Explorer or Web Reports (its data can lag the server's by ~15 s).
TUPLES = (
    '(id of it, (name of it | "<none>"), (last report time of it as string | "<none>"), '
    '(agent type of it | "<none>")) of bes computers whose '
)
BATCH = TUPLES + "(id of it is contained by set of ({ids}))"  # many computers in one request, by ID
CHUNK = 200  # IDs per query
# Every computer that reported within some days, read in parts: first how many there are, then the
# residue classes of their IDs (``(id of it) mod n = k``), so that no answer holds more than about
# ``iemkey:coverage:chunk`` computers, whatever the fleet's size (session relevance has no paging).
REPORTED = "(exists last report time of it) and (last report time of it > now - {days} * day)"
FLEET_COUNT = "number of bes computers whose (" + REPORTED + ")"
FLEET_PART = TUPLES + "(((id of it) mod {parts} = {part}) and " + REPORTED + ")"


class ApiError(iemkey_errors.IemkeyError):
    """The BigFix server could not be asked, refused us, or answered nonsense; the message says
    which request and why, and never holds a reply body. ``status``: the HTTP status, if any."""

    def __init__(self, message, status=None):
        super().__init__(message)
        self.status = status


def reason(exc, timeout):
    """Why a request failed, in words, from a requests exception (and the urllib3 error inside it, after
    the retries): the certificate, the refused connection, the timeout, the name that does not resolve;
    never a reply body, never a password."""
    import requests  # pylint: disable=import-outside-toplevel

    inner = getattr(exc.args[0], "reason", None) if exc.args else None
    text = f"{exc} {inner or ''}"
    names = f"{type(exc).__name__} {type(inner).__name__ if inner is not None else ''}"
    if isinstance(exc, requests.exceptions.SSLError) or "SSLError" in names:
        found = re.search(r"(certificate verify failed[^)'\"]*|hostname [^)'\"]*|wrong version number)", text)
        return f"TLS failed ({found.group(1).strip() if found else 'SSLError'}; iemkey:api:verify)"
    if isinstance(exc, requests.exceptions.Timeout) or "Timeout" in names or "timed out" in text:
        return f"no answer within {timeout:g} s (iemkey:api:timeout)"
    if "Connection refused" in text or "ECONNREFUSED" in text:
        return "connection refused"
    if "Name or service not known" in text or "nodename nor servname" in text or "Temporary failure in name" in text:
        return "the server's name does not resolve"
    if "too many 5" in text.lower() or "ResponseError" in names:
        return "it kept answering 5xx through the retries (iemkey:api:retries)"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "the connection failed"
    return type(exc).__name__


class ConfigError(iemkey_errors.IemkeyError):
    """``iemkey:api`` is missing or malformed."""


@dataclasses.dataclass(frozen=True)
class Computer:
    """What BigFix's own agent record says of a computer (None where it says nothing usable)."""

    id: str
    name: str | None
    last_report: datetime.datetime | None
    agent_type: str | None
    correlated: bool = False


def settings(conf, resolve=None):
    """The ``iemkey:api`` settings, defaults filled in and checked; ``resolve`` turns an ``sdb://``
    password into the password (the runner passes Salt's sdb)."""
    conf = conf if isinstance(conf, dict) else {}
    missing = [key for key in REQUIRED if not conf.get(key)]
    if missing:
        raise ConfigError(
            "the BigFix REST API is not configured: set iemkey:api:"
            + ", iemkey:api:".join(missing)
            + " in the master config"
        )
    api = {**DEFAULTS, **conf}
    password = api["password"]
    if isinstance(password, str) and password.startswith("sdb://"):
        password = resolve(password) if resolve else None
        if not password or str(password).startswith("sdb://"):
            raise ConfigError("iemkey:api:password: the sdb:// URI did not resolve")
    api["password"] = str(password)
    api["url"] = str(api["url"]).rstrip("/")
    for key, low in (("timeout", 0.001), ("retries", 1)):
        try:
            api[key] = float(api[key])
        except (TypeError, ValueError):
            raise ConfigError(f"iemkey:api:{key} must be a number, not {api[key]!r}") from None
        if not low <= api[key] <= 3600:
            raise ConfigError(f"iemkey:api:{key} must be between {low:g} and 3600, not {api[key]:g}")
    api["retries"] = int(api["retries"])
    try:
        api["concurrency"] = int(api["concurrency"])
    except (TypeError, ValueError):
        raise ConfigError(f"iemkey:api:concurrency must be a whole number, not {api['concurrency']!r}") from None
    if not 1 <= api["concurrency"] <= 32:
        raise ConfigError(f"iemkey:api:concurrency must be between 1 and 32, not {api['concurrency']}")
    if api["lookup"] not in LOOKUPS:
        raise ConfigError(f"iemkey:api:lookup must be query or get, not {api['lookup']!r}")
    return api


# -- reading replies ----------------------------------------------------------------------
def _xml(content, what):
    try:
        return ET.fromstring(content)  # noqa: S314 - our own, authenticated BigFix server
    except ET.ParseError:
        raise ApiError(f"{what} answered no BESAPI XML") from None


def value(text):
    """A property's value, or None when BigFix gives none (empty, ``User-defined error: ...``)."""
    text = (text or "").strip()
    if not text or text.lower().startswith("user-defined error"):
        return None
    return text


def report_time(text):
    """A ``Last Report Time`` (RFC 2822, server GMT) as an aware UTC datetime, or None."""
    text = value(text)
    if text is None:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_computer(content, computer_id):
    """``GET /api/computer/{id}``: the agent record's own properties (direct children of
    ``Computer``, first occurrence of each name); ``ManagementExtension`` content never counts."""
    root = _xml(content, f"GET /api/computer/{computer_id}")
    computer = root.find("Computer")
    if computer is None:
        raise ApiError(f"GET /api/computer/{computer_id} answered BESAPI XML without a Computer")
    own = {}
    for prop in computer.findall("Property"):
        own.setdefault(prop.get("Name"), prop.text)
    reported_id = value(own.get("ID"))
    if reported_id is not None and reported_id != str(computer_id):
        raise ApiError(f"GET /api/computer/{computer_id} answered for computer {reported_id}")
    return Computer(
        id=str(computer_id),
        name=value(own.get("Computer Name")),
        last_report=report_time(own.get("Last Report Time")),
        agent_type=value(own.get("Agent Type")),
        correlated=computer.find("ManagementExtension") is not None,
    )


def parse_query(content, content_type=""):
    """``POST /api/query``: the answers, as a list (tuples as lists); ApiError for a relevance
    error, which BigFix answers with HTTP 200."""
    if "json" in (content_type or ""):
        try:
            document = json.loads(content)
        except ValueError:
            raise ApiError("POST /api/query answered no JSON") from None
        if not isinstance(document, dict):
            raise ApiError("POST /api/query answered JSON that is not an object")
        if document.get("error"):
            raise ApiError(f"POST /api/query: the relevance failed: {str(document['error'])[:200]}")
        result = document.get("result")
        return result if isinstance(result, list) else [result]
    root = _xml(content, "POST /api/query")
    query = root.find("Query")
    if query is None:
        raise ApiError("POST /api/query answered BESAPI XML without a Query")
    error = query.find("Error")
    if error is not None:
        raise ApiError(f"POST /api/query: the relevance failed: {(error.text or '').strip()[:200]}")
    result = query.find("Result")
    if result is None:
        raise ApiError("POST /api/query answered neither a Result nor an Error")
    answers = []
    for item in result:
        if item.tag == "Answer":
            answers.append(item.text or "")
        elif item.tag == "Tuple":
            answers.append([(answer.text or "") for answer in item.iter("Answer")])
    return answers


def parse_tuple(answer):
    """One (id, name, last report, agent type) answer of ``TUPLES`` as a ``Computer``, ``<none>`` for
    what a computer has not reported; ApiError for an answer not of that form."""
    if not isinstance(answer, (list, tuple)) or len(answer) != 4:
        raise ApiError("POST /api/query answered something else than (id, name, last report, agent type)")
    computer_id, name, last_report, agent_type = (str(item).strip() for item in answer)
    return Computer(
        id=computer_id,
        name=None if name == "<none>" else value(name),
        last_report=None if last_report == "<none>" else report_time(last_report),
        agent_type=None if agent_type == "<none>" else value(agent_type),
    )


def parse_batch(answers, asked):
    """The answers to ``BATCH`` as {computer id: Computer}; a computer BigFix does not show (gone, or
    outside the operator's scope) is absent. ApiError for answers that are not of that form."""
    found = {}
    for answer in answers:
        computer = parse_tuple(answer)
        if computer.id not in asked:
            raise ApiError(f"POST /api/query answered for computer {computer.id[:20]}, which was not asked for")
        found[computer.id] = computer
    return found


def parse_part(answer, parts, part):
    """One answer to ``FLEET_PART``: a ``Computer``; ApiError for an answer that is not of that form, or
    whose ID is not of the part asked for."""
    computer = parse_tuple(answer)
    if not COMPUTER_ID.fullmatch(computer.id) or int(computer.id) % parts != part:
        raise ApiError(f"POST /api/query answered computer {computer.id[:20]!r}, which is not of the part asked for")
    return computer


def parse_properties(content, what):
    """``GET /api/properties``: (name, id, reserved) of each property listed with a numeric ID."""
    found = []
    for item in _xml(content, what):
        if item.tag != "Property":
            continue
        name, pid = (item.findtext("Name") or "").strip(), (item.findtext("ID") or "").strip()
        if pid.isdigit():
            found.append((name, int(pid), (item.findtext("IsReserved") or "").strip().lower() in ("true", "1")))
    return found


def parse_master_operator(content, name):
    """``GET /api/operator/{name}``: whether that operator is a master operator."""
    root = _xml(content, f"GET /api/operator/{name}")
    flag = root.find("Operator/MasterOperator")
    if flag is None:
        raise ApiError(f"GET /api/operator/{name} answered no MasterOperator")
    return (flag.text or "").strip().lower() == "true"


def parse_listed(content, what):
    """A BESAPI list (``<X Resource=...><Name/><ID/></X>``...): {name: id} in order."""
    found = {}
    for item in _xml(content, what):
        name, item_id = item.findtext("Name"), item.findtext("ID")
        if name is not None and item_id and item_id.strip().isdigit():
            found.setdefault(name.strip(), item_id.strip())
    return found


def parse_members(content, what):
    """``GET .../computergroup/.../{id}/computers``: the member computer IDs."""
    members = set()
    for item in _xml(content, what):
        resource = item.get("Resource") or ""
        tail = resource.rstrip("/").rsplit("/", 1)[-1]
        if tail.isdigit():
            members.add(tail)
    return members


def group_xml(name, computer_ids, property_id):
    """A server based computer group (BigFix 10.0.4+: membership evaluated by the server from the
    properties it holds, so computers that no longer report are members too) whose members are
    exactly ``computer_ids``: one ``Equals`` rule on the ``ID`` property each, joined by union.
    Never empty: a group without rules is refused here, before it could match anything else."""
    ids = {str(c) for c in computer_ids}
    if not ids or not all(COMPUTER_ID.fullmatch(c) for c in ids):
        raise ValueError(f"a revocation group lists computer IDs, not {sorted(ids)!r}")
    ids = sorted(ids, key=int)
    rules = "".join(
        '<MembershipRule Comparison="Equals">'
        f"<PropertyID>{int(property_id)}</PropertyID><SearchText>{computer_id}</SearchText>"
        "</MembershipRule>"
        for computer_id in ids
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<BESAPI xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="BESAPI.xsd">'
        f"<ServerBasedGroup><Name>{escape(name)}</Name>"
        f'<MembershipRules JoinByIntersection="false">{rules}</MembershipRules>'
        "</ServerBasedGroup></BESAPI>"
    ).encode()


# -- talking to the server -----------------------------------------------------------------
@contextlib.contextmanager
def session(api):
    """A requests session with Basic auth, retrying connection errors and 5xx with backoff for
    GET, PUT and DELETE (urllib3 ``Retry``)."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    retries = max(1, int(api["retries"])) - 1
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        other=0,
        status_forcelist=RETRY_STATUS,
        allowed_methods=frozenset({"GET", "PUT", "DELETE"}),
        backoff_factor=BACKOFF,
        backoff_max=BACKOFF_MAX,
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    with requests.Session() as http:
        http.auth = (api["user"], api["password"])
        http.verify = api["verify"]
        size = max(10, int(api.get("concurrency", 1)))
        http.mount(api["url"] + "/", HTTPAdapter(max_retries=retry, pool_connections=1, pool_maxsize=size))
        yield Client(api, http)


class Client:
    """The calls iemkey makes, over a ``session``; each raises ApiError saying what failed."""

    def __init__(self, api, http):
        self.api, self.http = api, http
        self.sleep = time.sleep
        self.requests = 0  # requests sent (retries included where this client makes them)
        self._count = threading.Lock()

    def call(self, method, path, data=None, params=None, expect=(200,)):
        """One request (retried by the session for GET/PUT/DELETE); the response, whose status is
        in ``expect`` or is 404."""
        import requests

        url = f"{self.api['url']}{path}"
        with self._count:
            self.requests += 1
        try:
            response = self.http.request(method, url, data=data, params=params, timeout=self.api["timeout"])
        except requests.RequestException as exc:
            raise ApiError(
                f"{reason(exc, self.api['timeout'])} talking to {self.api['url']} ({method} {path})"
            ) from None
        if response.status_code in (401, 403):
            raise ApiError(
                f"authentication failed: the BigFix server refused user {self.api['user']!r} "
                f"(HTTP {response.status_code} from {method} {path})",
                response.status_code,
            )
        if response.status_code not in (*expect, 404):
            raise ApiError(f"HTTP {response.status_code} from {method} {path}", response.status_code)
        return response

    def computer(self, computer_id):
        """The computer's own record, or None when BigFix answers 404 (gone, or outside scope)."""
        fields = "Property<Name=" + ",".join(FIELDS) + ">"
        response = self.call("GET", f"/api/computer/{computer_id}", params={"fields": fields})
        if response.status_code == 404:
            return None
        return parse_computer(response.content, computer_id)

    def computers(self, computer_ids):
        """Many computers' own records in one request per ``CHUNK`` IDs (``POST /api/query``):
        {id: Computer}, without the ones BigFix does not show."""
        ids = sorted({str(c) for c in computer_ids}, key=int)
        found = {}
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            answers = self.query(BATCH.format(ids=";".join(chunk)))
            found.update(parse_batch(answers, set(chunk)))
        return found

    def fleet(self, days, chunk):
        """Every computer this operator sees that reported within ``days`` days, as ``Computer``s, read
        in ``ceil(count / chunk)`` queries (one more for the count): (the number BigFix counted, the
        number of parts, an iterator over the computers, one part's answer in memory at a time). A
        relevance error, an answer that is no such tuple, or a computer of another part: ApiError."""
        days, chunk = int(days), max(1, int(chunk))
        answers = self.query(FLEET_COUNT.format(days=days))
        if len(answers) != 1 or not str(answers[0]).strip().isdigit():
            raise ApiError("POST /api/query answered something else than a number of computers")
        count = int(str(answers[0]).strip())
        parts = max(1, -(-count // chunk))

        def computers():
            for part in range(parts):
                relevance = FLEET_PART.format(parts=parts, part=part, days=days)
                for answer in self.query(relevance):
                    yield parse_part(answer, parts, part)

        return count, parts, computers()

    def delete(self, computer_id):
        """``DELETE /api/computer/{id}``: ``deleted`` for BigFix's own success reply (HTTP 200 ``ok``),
        ``not found`` for 404; ApiError for any other answer (an HTTP 200 that is not ``ok`` included)."""
        path = f"/api/computer/{computer_id}"
        response = self.call("DELETE", path, expect=(200, 202, 204))
        if response.status_code == 404:
            return "not found"
        if response.status_code == 204 or response.content.strip().lower() == b"ok":
            return "deleted"
        raise ApiError(
            f"DELETE {path} answered HTTP {response.status_code} without BigFix's 'ok': nothing is known deleted"
        )

    def master_operator(self):
        """Whether the API user is a master operator (a 404 means it cannot even read itself)."""
        name = self.api["user"]
        response = self.call("GET", f"/api/operator/{urllib.parse.quote(name, safe='')}")
        if response.status_code == 404:
            return False
        return parse_master_operator(response.content, name)

    def query(self, relevance):
        """Evaluate session relevance (``POST /api/query``), retried like a GET; the answers."""
        attempts = max(1, int(self.api["retries"]))
        for attempt in range(attempts):
            try:
                response = self.call("POST", "/api/query", data={"relevance": relevance, "output": "json"})
                if response.status_code == 404:
                    raise ApiError("HTTP 404 from POST /api/query")
                return parse_query(response.content, response.headers.get("Content-Type", ""))
            except ApiError as exc:
                retryable = "authentication" not in str(exc) and (
                    "talking to" in str(exc) or any(f"HTTP {s}" in str(exc) for s in RETRY_STATUS)
                )
                if not retryable or attempt == attempts - 1:
                    raise
                self.sleep(min(BACKOFF_MAX, BACKOFF * 2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def id_property(self):
        """The id of the reserved ``ID`` property (for a group's membership rules), from ``GET
        /api/properties`` (each property's ``Name``, ``ID`` and ``IsReserved``): an analysis property
        an operator named "ID" too is not it."""
        path = "/api/properties"
        response = self.call("GET", path)
        if response.status_code == 404:
            raise ApiError(f"HTTP 404 from GET {path}", 404)
        ids = {
            pid
            for name, pid, reserved in parse_properties(response.content, f"GET {path}")
            if name == "ID" and reserved
        }
        if len(ids) != 1:
            raise ApiError(
                f"GET {path} lists {len(ids)} reserved 'ID' properties; set "
                "iemkey:cleanup:revoke_group:property_id in the master config"
            )
        return ids.pop()

    def group_id(self, site, name):
        """The id of the computer group ``name`` in ``site`` (e.g. ``master``), or None."""
        path = f"/api/computergroups/{site}"
        response = self.call("GET", path)
        if response.status_code == 404:
            raise ApiError(f"HTTP 404 from GET {path}")
        return parse_listed(response.content, f"GET {path}").get(name)

    def save_group(self, site, name, computer_ids, property_id, group_id=None):
        """Create the group, or replace its rules (``group_id``); its id."""
        body = group_xml(name, computer_ids, property_id)
        path = f"/api/computergroup/{site}/{group_id}" if group_id else f"/api/computergroups/{site}"
        if group_id:
            response = self.call("PUT", path, data=body)
            if response.status_code == 404:
                raise ApiError(f"HTTP 404 from PUT {path}", 404)
            return str(group_id)
        response = self.call("POST", path, data=body)
        if response.status_code == 404:
            raise ApiError(f"HTTP 404 from POST {path}")
        created = parse_listed(response.content, f"POST {path}")
        if name not in created:
            raise ApiError(f"POST {path} did not answer the group it created")
        return created[name]

    def delete_group(self, site, group_id):
        """Remove a computer group (not a computer): when no computer is left to revoke."""
        self.call("DELETE", f"/api/computergroup/{site}/{group_id}", expect=(200, 202, 204))

    def refresh_group(self, site, group_id):
        """Have BigFix evaluate a server based group's membership now (``POST
        .../computergroup/{site}/{id}/refresh``): it does so on the group's refresh interval otherwise,
        and a group just saved shows its old members until then."""
        path = f"/api/computergroup/{site}/{group_id}/refresh"
        response = self.call("POST", path, expect=(200, 202, 204))
        if response.status_code == 404:
            raise ApiError(f"HTTP 404 from POST {path}", 404)

    def group_members(self, site, group_id):
        """The computer IDs BigFix counts as members of the group now."""
        path = f"/api/computergroup/{site}/{group_id}/computers"
        response = self.call("GET", path)
        if response.status_code == 404:
            raise ApiError(f"HTTP 404 from GET {path}", 404)
        return parse_members(response.content, f"GET {path}")
