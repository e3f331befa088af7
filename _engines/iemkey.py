"""
The iemkey engine: decides iemkey events off Salt's event loop and delivers every owed rotation until
the minion's signed ``iemkey/rotated`` settles it.

:configuration: master config

    .. code-block:: yaml

        engines:
          - iemkey: {}
        iemkey:
          delivery:
            batch_window: 0.5      # seconds decisions wait to be published in one job
            batch_size: 1000       # minions one rotation job targets at most
            probe_after: 10        # seconds before asking (saltutil.find_job) whether a job arrived
            redeliver_every: 30    # seconds between two deliveries to a minion that is away
            retry_after: 60        # seconds before retrying a job that returned without a rotation
            retry_max: 3600        # the longest wait between two retries
            max_attempts: 5        # failed jobs before the owed rotation goes to review
            interval: 2            # seconds between two passes over the owed rotations

Sync it to the master (``salt-run saltutil.sync_all``) and restart the master. The logic lives in
``_utils/iemkey_engine.py``; this module is the Salt glue.
"""

import logging

import salt.utils.sdb

try:  # _utils/, synced with saltutil.sync_all (formula install)
    import iemkey_engine
except ImportError:
    try:  # pip install (Salt extension)
        from saltext.iemkey.utils import iemkey_engine
    except ImportError:
        iemkey_engine = None

log = logging.getLogger(__name__)

__virtualname__ = "iemkey"


def __virtual__():
    if iemkey_engine is None:
        return (
            False,
            "iemkey engine: its utility modules (_utils/iemkey_*.py) are missing: run salt-run saltutil.sync_all",
        )
    return __virtualname__


def start(**kwargs):
    """Run the iemkey engine until the master stops it."""
    if kwargs:
        log.error(
            "iemkey engine: it takes no settings of its own (%s); its settings are iemkey:delivery in the master "
            "config",
            ", ".join(sorted(kwargs)),
        )
    iemkey_engine.run(__opts__, resolve=lambda uri: salt.utils.sdb.sdb_get(uri, __opts__))
