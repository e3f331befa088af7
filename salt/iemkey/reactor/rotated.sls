#!py
"""
Reactor for ``iemkey/rotated``: a hand-off.

Where the master runs the iemkey engine (``engines: [{iemkey: {}}]``), this file does nothing: the
engine verifies each signed ``iemkey/rotated`` once, records the clean-up of the old computer for
``iemkey.cleanup`` (the master schedule) to decide with BigFix (a routine rotation's old computer is
deleted once BigFix confirms it is the superseded duplicate; a compromise rotation's is listed to
revoke), and settles the minion's owed rotation. Remove this file's entry from the master's
``reactor:`` once the engine runs (CHANGELOG, 0.3.0).

On a master without the engine, it records the clean-up here, in Salt's reactor, as iemkey 0.2 did.
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
