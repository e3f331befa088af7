#!py
"""
Reactor: after a minion's rotation, clean its old computer out of the BigFix console.

Mapping ``iemkey/rotated`` to this file in the master's ``reactor:`` is the opt-in:

    reactor:
      - 'iemkey/rotated':
        - salt://iemkey/reactor/rotated.sls

The runner ``iemkey.react`` acts only on an event signed with the minion's own Salt
key (``iemkey.rotate`` signs it), records the clean-up on the master and deletes the
old computer only once BigFix confirms it is the superseded duplicate: the minion's
new computer exists under the same Computer Name and the old one has not reported
since the rotation. Anything else is listed for review (``salt-run iemkey.report``);
what cannot be decided yet waits for ``salt-run iemkey.cleanup`` (a master schedule).
"""


def run():
    event = {"id": data.get("id"), "data": data.get("data")}
    return {
        "iemkey-react-rotated": {
            "runner.iemkey.react": [{"args": [{"event_tag": tag}, {"event": event}]}],
        }
    }
