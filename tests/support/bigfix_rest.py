"""
A stand-in BigFix server's REST API, served by pytest-httpserver, answering from what the
stand-in agents registered (``StandInAgent.computers()``), the way the real one does:

- ``GET /api/computer/{id}``: BESAPI XML with ``Computer Name``, ``Last Report Time`` (RFC 2822)
  and ``ID``; 404 when no agent registered that ID, or it was deleted and has not reported since.
- ``GET /api/computers``: every visible computer, ``<LastReportTime>`` and ``<ID>``.
- ``DELETE /api/computer/{id}``: marks it deleted (200), 404 when unknown or already deleted.
  A deleted computer that reports again reappears, as BigFix does.
- HTTP Basic auth: anything else is 401. ``down = True`` answers 503 to everything.
"""

import base64
import email.utils
import re
import threading
import time
from xml.sax.saxutils import escape

from werkzeug import Response

ROUTE = re.compile(r"^/api/computers?(/[0-9]+)?$")


class StandInBigFix:
    def __init__(self, agents, user, password):
        self.agents = list(agents)
        self.authorization = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.deleted = {}  # computer id -> when it was deleted
        self.down = False
        self.calls = []  # (method, path, status) of every request, in order
        self.lock = threading.Lock()

    def serve(self, httpserver):
        httpserver.expect_request(ROUTE).respond_with_handler(self.handle)
        return self

    def deletes(self):
        """The computer IDs DELETE was called for (whatever the answer), in order."""
        return [path.rsplit("/", 1)[1] for method, path, _status in self.calls if method == "DELETE"]

    def computers(self):
        """Every computer the agents registered that BigFix still shows: {id: record}."""
        found = {}
        for agent in self.agents:
            for computer_id, record in agent.computers().items():
                deleted = self.deleted.get(computer_id)
                if deleted is None or record["last_report"] > deleted:
                    found[computer_id] = record
        return found

    def handle(self, request):
        with self.lock:
            response = self._answer(request)
            self.calls.append((request.method, request.path, response.status_code))
            return response

    def _answer(self, request):
        if self.down:
            return Response("BigFix server unavailable", status=503)
        if request.headers.get("Authorization") != self.authorization:
            return Response("Unauthorized", status=401)
        computers = self.computers()
        if request.path == "/api/computers" and request.method == "GET":
            rows = "".join(
                f'<Computer Resource="{request.host_url}api/computer/{cid}">'
                f"<LastReportTime>{_rfc2822(record['last_report'])}</LastReportTime><ID>{cid}</ID></Computer>"
                for cid, record in sorted(computers.items())
            )
            return _xml(rows)
        computer_id = request.path.rsplit("/", 1)[1]
        if not computer_id.isdigit() or computer_id not in computers:
            return Response("Computer not found", status=404)
        if request.method == "DELETE":
            self.deleted[computer_id] = time.time()
            return Response("ok", status=200)
        if request.method != "GET":
            return Response("Method not allowed", status=405)
        record = computers[computer_id]
        return _xml(
            f'<Computer Resource="{request.host_url}api/computer/{computer_id}">'
            f'<Property Name="Computer Name">{escape(record["name"])}</Property>'
            '<Property Name="OS">Linux Debian 12 (stand-in)</Property>'
            f'<Property Name="Last Report Time">{_rfc2822(record["last_report"])}</Property>'
            f'<Property Name="ID">{computer_id}</Property></Computer>'
        )


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
