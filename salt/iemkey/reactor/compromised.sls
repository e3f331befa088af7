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

This file asks ``iemkey_gate`` (a utility module synced to the master) first, in the
reactor process: what cannot be genuine (unsigned, badly signed, not accepted, stale,
an untimed webhook HMAC) or goes beyond ``iemkey:reactor:rate`` per minion is refused
there, for the price of a check, with one log line per kind and then counts, never a
queued runner reaction. What passes goes to the runner ``iemkey.react``, which checks
again, refuses replays and decides. For the webhook it passes the body and the
signature header, never salt-api's token; for every event, the master bus's own stamp
of when it arrived. The master records each compromise it acts on: that minion's
rotations are then compromise rotations, whose old computers are revoked in the
console, not deleted.
"""

import logging

log = logging.getLogger(__name__)


def _gate():
    """``iemkey_gate`` from the master's synced utility modules (formula) or the installed package."""
    import importlib
    import os
    import sys

    try:
        from saltext.iemkey.utils import iemkey_gate  # pylint: disable=import-outside-toplevel

        return iemkey_gate
    except ImportError:
        pass
    utils = os.path.join(__opts__["extension_modules"], "utils")
    if utils not in sys.path:
        sys.path.append(utils)
    try:
        return importlib.import_module("iemkey_gate")
    except ImportError:
        return None


def run():
    gate = _gate()
    if gate is None:
        log.error("iemkey reactor: _utils/iemkey_gate.py is not on the master: run salt-run saltutil.sync_all")
        return {}
    return gate.reaction(tag, data, __opts__)
