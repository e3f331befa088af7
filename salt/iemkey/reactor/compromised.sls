#!py
"""
Reactor: rotate the BigFix agent key of the one minion a compromise event proves is meant.

Mapped in the master config for two tags:

- ``iemkey/compromised``, sent by a detector on a minion with ``salt-call iemkey.alert
  reason='...'``, which signs it with that minion's own Salt key. Any minion can put
  any event, ``id`` included, on the master bus, so the runner ``iemkey.react``
  verifies the signature against the key the master accepted for the minion it
  names, refuses stale events and replays, and then rotates that minion only.
- ``salt/netapi/hook/iemkey/compromised``, sent by salt-api (rest_cherrypy) for
  ``POST /hook/iemkey/compromised`` with JSON ``{"minion_id": "<id>", "reason": "..."}``
  and ``X-Iemkey-Signature: sha256=<HMAC-SHA256 of the body with
  iemkey:reactor:hook_secret>``. Without that secret configured, every hook event is
  refused.

This file only hands the event over: every decision is made by the runner (synced
to the master), which logs one WARNING line for each event it refuses. For the
webhook it passes the body and the signature header, never salt-api's token; for
every event, the master bus's own stamp of when it arrived. The master records each
compromise it acts on: that minion's rotations are then compromise rotations, whose
old computers are revoked in the console, not deleted.
"""

HOOK_TAG = "salt/netapi/hook/iemkey/compromised"


def run():
    if tag == HOOK_TAG:
        headers = data.get("headers") if isinstance(data.get("headers"), dict) else {}
        signature = next((v for k, v in headers.items() if str(k).lower() == "x-iemkey-signature"), None)
        # salt-api's own events carry no minion id; one that does was put on the bus by a minion
        event = {"body": data.get("body"), "signature": signature, "from_minion": "id" in data or "cmd" in data}
    else:
        event = {"id": data.get("id"), "data": data.get("data")}
    # when the master received it: its bus stamps every event it fires, whatever a minion sent
    event["stamp"] = data.get("_stamp")
    return {
        "iemkey-react-compromised": {
            "runner.iemkey.react": [{"args": [{"event_tag": tag}, {"event": event}]}],
        }
    }
