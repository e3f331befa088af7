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
``salt-run iemkey.cleanup`` (a master schedule). Like the compromise reactor, it asks
``iemkey_gate`` first: what cannot be genuine never costs a runner reaction.
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
