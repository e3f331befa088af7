"""
The rotation record and the rotation lock, kept in the minion's cache directory.

The record (``rotation.json``) says how far a rotation got (stopping, deleted,
failed, done), so a rotation interrupted after the delete is finished by the next
one without deleting anything new. It is written atomically (temp file, fsync,
rename). The lock is an OS lock on ``rotate.lock``, which the kernel drops when its
holder dies. Pure functions: the ``iemkey`` execution module passes the paths in; the
runner writes its clean-up file with ``write`` too.
"""

import contextlib
import json
import logging
import os
import time

from salt.exceptions import CommandExecutionError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:  # everything but Windows
    msvcrt = None

log = logging.getLogger(__name__)


def read(path, what="rotation record"):
    """The record at ``path`` as a dict; None when there is none or it cannot be read (logged as an
    unreadable ``what``)."""
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("iemkey: ignoring unreadable %s %s: %s", what, path, exc)
        return None
    return record if isinstance(record, dict) else None


def write(path, record, indent=None):
    """Replace the JSON document at ``path`` with ``record``, atomically (temp file, fsync, rename)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(record, handle, sort_keys=True, indent=indent)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@contextlib.contextmanager
def lock(path, wait):
    """One rotation at a time on this minion: an OS lock the kernel drops if its holder dies.

    Waits up to ``wait`` seconds for another holder, then refuses (nothing was changed).
    """
    with open(path, "a+", encoding="utf-8") as handle:
        deadline = time.monotonic() + wait
        while True:
            try:
                if fcntl:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                else:
                    msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
                break
            except OSError:
                if time.monotonic() >= deadline:
                    raise CommandExecutionError(
                        f"another iemkey rotation is in progress on this minion (lock {path} held for "
                        f"{wait:g} s, iemkey:lock_wait); nothing was changed"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            if fcntl:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            else:
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
