"""
What every iemkey store shares, whichever driver keeps it: the banks, what a key may be, the one
read-modify-write (``locked_update``), the one expiry sweep (``remove_expired``) and the copy from
one store into another (``copy_into``). ``iemkey_store`` (local files, and the choice of driver) and
``iemkey_redis`` (a Redis server several masters share) both build on it; neither imports the other
back.

Pure Python, no Salt loader dunders.
"""

import contextlib
import json
import re

try:  # _utils/, synced with saltutil.sync_all (formula install)
    import iemkey_errors
except ImportError:  # pip install (Salt extension)
    from saltext.iemkey.utils import iemkey_errors

BANKS = ("cases", "nonces", "compromises", "incidents", "groups", "owed", "settled")
# What a key may be: minion ids, computer ids, nonces, incident names, joined by ':'. Never a path.
KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,300}")
SWEEP_EVERY = 60  # seconds between two sweeps of expired records in a bank


class StoreError(iemkey_errors.IemkeyError):
    """The store cannot be used as configured (unknown driver, a key that is not a key)."""


def check_key(key, what="key"):
    """``key`` if it is a key of the store (never a path), else StoreError."""
    if not isinstance(key, str) or not KEY.fullmatch(key):
        raise StoreError(f"{key!r} is not a {what} of the iemkey store")
    return key


def check_bank(bank):
    if bank not in BANKS:
        raise StoreError(f"no bank {bank!r} in the iemkey store")
    return bank


@contextlib.contextmanager
def locked_update(store, bank, key):
    """Read-modify-write one record of ``store`` under the bank's lock (the lock of every master
    sharing the store): yields the record (a new empty dict when there is none) and writes it back if
    the caller changed it; an emptied record is removed."""
    with store.locked(check_bank(bank)):
        record = store.get(bank, key)
        before = dump(record)
        record = record if record is not None else {}
        yield record
        if dump(record or None) != before:
            if record:
                store.put(bank, key, record)
            else:
                store.delete(bank, key)


def remove_expired(store, bank, now):
    """Remove the records of ``bank`` whose ``expires`` (epoch seconds) is before ``now``: how many."""
    removed = 0
    for key, record in store.all(bank).items():
        expires = record.get("expires") if isinstance(record, dict) else None
        if isinstance(expires, (int, float)) and expires < now and store.delete(bank, key):
            removed += 1
    return removed


def dump(record):
    return json.dumps(record, sort_keys=True)


def copy_into(source, target, test=False):
    """Every record of ``source`` that ``target`` lacks, added to ``target`` (a record ``target``
    already has stays as it is): moving a master's backlog into the store its successor uses, or the
    local files into a shared store. {bank: {"added": n, "kept": n}}; ``test`` adds nothing."""
    counts = {}
    for bank in BANKS:
        added = kept = 0
        for key, record in source.all(bank).items():
            if test:
                new = target.get(bank, key) is None
            else:
                new = target.add(bank, key, record)
            added, kept = added + new, kept + (not new)
        counts[bank] = {"added": added, "kept": kept}
    return counts
