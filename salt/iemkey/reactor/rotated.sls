#!py
"""
Reactor: after a minion's rotation, clean its old computer out of the BigFix console.

Mapping ``iemkey/rotated`` to this file in the master's ``reactor:`` is the opt-in:

    reactor:
      - 'iemkey/rotated':
        - salt://iemkey/reactor/rotated.sls

The runner ``iemkey.react`` acts only on an event signed with the minion's own Salt
key (``iemkey.rotate`` signs it), records the clean-up on the master and acts on the
old computer only once BigFix confirms it is the superseded duplicate: the minion's
new computer has reported the same Computer Name and the old one has not reported
since the master received the rotation. A routine rotation's old computer is then
deleted; a compromise rotation's (the master acted on an alert for that minion, or an
incident covers it) is listed to revoke, never deleted. Anything else is listed for
review (``salt-run iemkey.report``); what cannot be decided yet waits for
``salt-run iemkey.cleanup`` (a master schedule).
"""


def run():
    # the master bus stamps every event it fires (whatever a minion sent): when it arrived
    event = {"id": data.get("id"), "data": data.get("data"), "stamp": data.get("_stamp")}
    return {
        "iemkey-react-rotated": {
            "runner.iemkey.react": [{"args": [{"event_tag": tag}, {"event": event}]}],
        }
    }
