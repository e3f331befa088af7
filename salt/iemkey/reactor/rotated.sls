#!py
"""
Reactor: after a minion's rotation, delete its old computer from the BigFix console.

Mapping ``iemkey/rotated`` to this file in the master's ``reactor:`` is the opt-in:

    reactor:
      - 'iemkey/rotated':
        - salt://iemkey/reactor/rotated.sls

It removes the event's ``old_computer_id`` (``salt-run iemkey.remove_computer``), only
from an event a minion sent itself (the master sets ``data['id']``), only a numeric
ID, and never the agent's new ID.
"""

import logging
import re

log = logging.getLogger("iemkey.reactor.rotated")

COMPUTER_ID = re.compile(r"[0-9]{1,20}")


def run():
    payload = data.get("data") if isinstance(data.get("data"), dict) else None
    if tag != "iemkey/rotated" or not data.get("id") or payload is None:
        log.warning("iemkey reactor: ignoring %s: not an iemkey/rotated event sent by a minion", tag)
        return {}
    old = str(payload.get("old_computer_id") or "")
    if not COMPUTER_ID.fullmatch(old):
        log.warning("iemkey reactor: %s rotated with no usable old computer ID (%r): nothing to remove",
                    data["id"], payload.get("old_computer_id"))
        return {}
    if str(payload.get("new_computer_id") or "") == old:
        log.warning("iemkey reactor: %s reports the same old and new computer ID %s: not removing it",
                    data["id"], old)
        return {}
    log.warning("iemkey reactor: %s rotated its key; removing its old computer %s from the BigFix console",
                data["id"], old)
    reaction = {"runner.iemkey.remove_computer": [{"computer_id": old}]}
    return {f"iemkey-remove-old-computer-{data['id']}-{old}": reaction}
