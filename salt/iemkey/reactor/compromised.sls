#!py
"""
Reactor for ``iemkey/compromised`` and ``salt/netapi/hook/iemkey/compromised``: a hand-off.

Where the master runs the iemkey engine (``engines: [{iemkey: {}}]``), this file does nothing: the
engine reads both tags from the bus itself, verifies each event once and decides it off Salt's event
loop, and delivers the rotation it owes until the minion's signed rotation settles it. Remove this
file's entries from the master's ``reactor:`` once the engine runs (CHANGELOG, 0.3.0).

On a master without the engine, it decides each event here, in Salt's reactor, as iemkey 0.2 did: a
signed alert (``salt-call iemkey.alert``) or a signed webhook (``X-Iemkey-Signature:
t=<unix>,sha256=<HMAC-SHA256 of '<t>.<body>'>`` with ``iemkey:reactor:hook_secret``) for one accepted
minion records the compromise and publishes a rotation for that minion only; nobody delivers it again
if the minion was away (a WARNING says so once).
"""

import logging

log = logging.getLogger(__name__)


def run():
    try:
        from saltext.iemkey.utils import iemkey_engine  # pylint: disable=import-outside-toplevel
    except ImportError:
        import importlib  # pylint: disable=import-outside-toplevel
        import os  # pylint: disable=import-outside-toplevel
        import sys  # pylint: disable=import-outside-toplevel

        utils = os.path.join(__opts__["extension_modules"], "utils")
        if utils not in sys.path:
            sys.path.append(utils)
        try:
            iemkey_engine = importlib.import_module("iemkey_engine")
        except ImportError:
            log.error("iemkey reactor: _utils/iemkey_engine.py is not on the master: run salt-run saltutil.sync_all")
            return {}
    return iemkey_engine.reaction(tag, data, __opts__)
