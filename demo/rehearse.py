"""
`make sandbox`: a place to rehearse an incident by hand (a game day), left running until Ctrl-C.

On 127.0.0.1, under one temp directory, without root: a real salt-master running the iemkey engine
and the clean-up schedule, salt-api (for the SIEM's webhook), the minions ``web-1``, ``web-2`` and
``db-1``, each with a stand-in BigFix agent whose key predates the README's incident, and a stand-in
BigFix REST server. It writes a ``bin/`` folder of commands (``salt``, ``salt-run``, ``salt-key`` for
this master; ``salt-call-<minion>``; ``bigfix-console`` for what an operator does in the BigFix
console; ``siem-webhook`` for a SIEM's signed webhook), prints what to try (the README's first
incident runs as written), and on Ctrl-C (SIGINT or SIGTERM) stops everything it started.

The sandbox is for rehearsal only: salt-api logs in any password for the user ``siem`` (eauth
``auto``), and the hook secret sits in a file under the temp directory.
"""

import datetime
import json
import logging
import pathlib
import secrets
import shlex
import shutil
import signal
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "support"))

from bigfix_rest import StandInBigFix
from pytest_httpserver import HTTPServer
from sandbox import BIN, Sandbox, free_port, make_top
from werkzeug import Response

MINIONS = ("web-1", "web-2", "db-1")
API_USER, API_PASSWORD = "iemkey-operator", "sandbox-pw"  # the BigFix REST user the master logs in as
SIEM = "siem"  # salt-api's user for the webhook (eauth auto: the sandbox only)
KEYS_MADE = datetime.datetime(2026, 11, 1, tzinfo=datetime.timezone.utc)  # before the README's incident
CLEANUP_EVERY = 10  # seconds between the master's scheduled clean-up passes (README's install: 300)
MARGIN = 2  # iemkey:cleanup:report_margin: the stand-in agents report every second (real fleets: 900)
READY = "iemkey sandbox ready"


def console(bigfix):
    """The stand-in server's console, for what an operator does by hand in the BigFix console:
    GET lists the computers and iemkey's groups; POST {"action": "revoke" | "delete", "computers":
    [...]} or {"action": "revoke", "group": "<name>"} does it. Not part of BigFix's REST API."""

    def handle(request):
        if request.method == "GET":
            groups = {g["name"]: sorted(bigfix.members(gid)) for gid, g in list(bigfix.groups.items())}
            computers = {
                cid: {"name": r["name"], "last_report": r["last_report"]} for cid, r in bigfix.computers().items()
            }
            return Response(json.dumps({"computers": computers, "groups": groups}), content_type="application/json")
        order = json.loads(request.get_data() or b"{}")
        action, ids = order.get("action"), [str(c) for c in order.get("computers") or []]
        if order.get("group"):
            found = [gid for gid, g in bigfix.groups.items() if g["name"] == order["group"]]
            if not found:
                return Response(json.dumps({"error": f"no computer group {order['group']!r}"}), status=404)
            ids = sorted(bigfix.members(found[0]))
        unknown = [cid for cid in ids if cid not in bigfix.computers()]
        if action not in ("revoke", "delete") or not ids or unknown:
            error = f"unknown computers {unknown}" if unknown else "say revoke or delete, and which computers"
            return Response(json.dumps({"error": error}), status=400, content_type="application/json")
        for cid in ids:
            if action == "revoke":
                bigfix.revoke(cid)  # the computer leaves the console for good
            else:
                with bigfix.lock:
                    bigfix.deleted[cid] = time.time()  # back in the console if its agent reports again
        return Response(json.dumps({action: ids}), content_type="application/json")

    return handle


def _script(path, text):
    path.write_text(text)
    path.chmod(0o755)


def write_tools(top, box, console_url, api_url, secret_file):
    """``<top>/bin``: this sandbox's Salt commands and its console and SIEM."""
    folder = top / "bin"
    folder.mkdir()
    for program in ("salt", "salt-run", "salt-key"):
        _script(folder / program, f'#!/bin/sh\nexec {shlex.quote(str(BIN / program))} -c {box.conf} "$@"\n')
    for minion in box.minions:
        salt_call = shlex.quote(str(BIN / "salt-call"))
        _script(folder / f"salt-call-{minion}", f'#!/bin/sh\nexec {salt_call} -c {box.minion_conf(minion)} "$@"\n')
    tools = f"{shlex.quote(sys.executable)} {shlex.quote(str(pathlib.Path(__file__).with_name('sandbox_tools.py')))}"
    _script(folder / "bigfix-console", f'#!/bin/sh\nexec {tools} console {console_url} "$@"\n')
    _script(folder / "siem-webhook", f'#!/bin/sh\nexec {tools} webhook {api_url} {SIEM} {secret_file} "$@"\n')
    return folder


def instructions(top, folder, box):
    return f"""
{READY}: a salt-master (iemkey engine, clean-up every {CLEANUP_EVERY} s), salt-api, the minions {", ".join(box.minions)}
(each with a stand-in BigFix agent, keys made {KEYS_MADE:%Y-%m-%d}) and a stand-in BigFix server, under {top}

In another shell:

  export PATH={folder}:$PATH

The README's first incident, as written:

  salt-run iemkey.incident since=2026-11-20T08:00:00Z tgt='web*' name=worm-2026-11
  salt-run iemkey.report since=2026-11-20T08:00:00Z tgt='web*'
  bigfix-console revoke-group 'iemkey revoke: worm-2026-11'    # the console's Revoke Certificate
  salt-run iemkey.cleanup
  salt-run iemkey.incident name=worm-2026-11 revoked=True
  salt-run iemkey.report since=2026-11-20T08:00:00Z tgt='web*'
  salt-run iemkey.incident name=worm-2026-11 close=True

More to try:

  salt '*' iemkey.status
  salt-call-db-1 iemkey.alert reason='IDS rule 4711'          # a minion's signed alert
  siem-webhook web-2 'SIEM rule 4711'                         # a SIEM's signed webhook, via salt-api
  salt-run iemkey.owed
  salt-run iemkey.history minion=db-1
  bigfix-console list                                         # computers and iemkey's groups
  bigfix-console delete <computer id>                         # what a revocation must not be

Logs: {top}/root/var/log/salt/master (the master), {top}/root-<minion>/var/log/salt/minion.
Ctrl-C stops everything this started.
""".rstrip()


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


def main():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the stand-in server's access log
    top = make_top("iemkey-sandbox-")
    signal.signal(signal.SIGTERM, _interrupt)  # stopped like Ctrl-C, whenever it comes
    rest = HTTPServer(host="127.0.0.1", port=0)
    rest.start()
    secret_file = top / "secrets.yaml"
    secret_file.write_text(f"hook_secret: {secrets.token_hex(16)}\n")
    secret_file.chmod(0o600)
    api_port = free_port()
    box = Sandbox(
        top,
        minions=MINIONS,
        master_extra={
            "engines": [{"iemkey": {}}],
            "schedule": {"iemkey-cleanup": {"function": "iemkey.cleanup", "seconds": CLEANUP_EVERY}},
            "iemkey_secrets": {"driver": "yaml", "files": [str(secret_file)]},
            "iemkey": {
                "reactor": {"hook_secret": "sdb://iemkey_secrets/hook_secret"},
                "cleanup": {"report_margin": MARGIN},
                "api": {"url": rest.url_for("").rstrip("/"), "user": API_USER, "password": API_PASSWORD},
            },
            "rest_cherrypy": {"host": "127.0.0.1", "port": api_port, "disable_ssl": True},
            "external_auth": {"auto": {SIEM: ["@runner"]}},  # any password: a sandbox on loopback only
        },
    )
    bigfix = StandInBigFix(list(box.agents.values()), API_USER, API_PASSWORD)
    rest.expect_request("/sandbox/console").respond_with_handler(console(bigfix))
    bigfix.serve(rest)
    try:
        age = (datetime.datetime.now(datetime.timezone.utc) - KEYS_MADE).total_seconds()
        for minion, agent in box.agents.items():
            agent.install(key_age=max(age, 86400), name=f"{minion}.example.com")
        box.write_config()
        box.start()
        box.sync()
        box.restart_master()  # the master starts its engine and schedule with the synced modules
        box._spawn("salt-api", box.conf)
        folder = write_tools(top, box, rest.url_for("/sandbox/console"), f"http://127.0.0.1:{api_port}", secret_file)
        print(instructions(top, folder, box), flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        print("\nStopping the master, salt-api, the minions, the stand-in agents and BigFix server", flush=True)
        box.stop()
        rest.stop()
        shutil.rmtree(top, ignore_errors=True)
        print("done", flush=True)


if __name__ == "__main__":
    main()
