"""
Everything the iemkey runner keeps on the master, behind one small interface.

Records are JSON objects in named banks, one record per key, the way Salt's own cache
(``salt.cache``) is laid out:

========================  ==================================================================
bank                      key -> record
========================  ==================================================================
``cases``                 ``<minion>:<old computer id>`` -> one rotation's old computer: its
                          clean-up status and its audit trail (kept after it is closed)
``nonces``                ``<minion>:<nonce>`` -> a signed event already acted on, until it
                          would be stale anyway (``expires``)
``compromises``           ``<minion>`` -> the compromise alert or webhook the master acted on
``incidents``             ``<name>`` -> an incident an operator declared (``iemkey.incident``)
``groups``                ``<incident>`` -> the BigFix computer group listing its computers to
                          revoke
``owed``                  ``<minion>`` -> the rotation the master owes that minion after a
                          compromise signal, and how its delivery stands (``iemkey_owed``)
``settled``               ``<minion>:<when>`` -> an owed rotation once settled (the trail)
========================  ==================================================================

``LocalStore`` (the default, ``iemkey:store: {driver: local}``) keeps each record in its own
file, ``<path>/<bank>/<key>.json`` (``path`` defaults to ``<cachedir>/iemkey``): writing one
record never rewrites another, so one event costs the same with ten records or ten thousand.
Every write is atomic (temp file, fsync, rename); ``add`` creates a record only if its key is
new (a hard link, which the kernel refuses when the name exists), which is what claims a nonce
exactly once; ``update`` is a read-modify-write under an exclusive ``flock`` of the bank.

Pure Python, no Salt loader dunders: the runner builds the store from its master opts.
"""

import contextlib
import os
import threading
import time

try:
    import iemkey_banks
    import iemkey_record
except ImportError:
    from saltext.iemkey.utils import iemkey_banks, iemkey_record

try:
    import fcntl
except ImportError:  # a Salt master runs on POSIX; this keeps the import harmless elsewhere
    fcntl = None

# what every driver shares (iemkey_banks), under the names callers have always used
BANKS = iemkey_banks.BANKS
KEY = iemkey_banks.KEY
SWEEP_EVERY = iemkey_banks.SWEEP_EVERY
StoreError = iemkey_banks.StoreError
check_key = iemkey_banks.check_key
check_bank = iemkey_banks.check_bank
locked_update = iemkey_banks.locked_update
remove_expired = iemkey_banks.remove_expired
copy_into = iemkey_banks.copy_into
_dump = iemkey_banks.dump


def from_opts(opts, resolve=None):
    """The store ``iemkey:store`` in the master opts describes: local files by default, or a Redis
    server every master of a fleet shares (``driver: redis``). ``resolve`` reads an ``sdb://``
    password (Salt's ``sdb_get``)."""
    conf = (opts.get("iemkey") or {}).get("store") or {}
    if not isinstance(conf, dict):
        raise StoreError(f"iemkey:store must be a mapping such as {{driver: local}}, not {conf!r}")
    driver = conf.get("driver") or "local"
    if driver == "redis":
        try:
            import iemkey_redis
        except ImportError:
            from saltext.iemkey.utils import iemkey_redis
        return iemkey_redis.RedisStore.from_conf(conf, resolve=resolve)
    if driver != "local":
        raise StoreError(
            f"iemkey:store:driver {driver!r} is not known: local (the default, one master) or redis (several)"
        )
    return LocalStore(conf.get("path") or os.path.join(opts["cachedir"], "iemkey"))


class LocalStore:
    """Banks of JSON records in files under ``root`` (see the module's docstring)."""

    def __init__(self, root):
        self.root = str(root)
        self.made = set()  # the banks made already (once a master runs, nothing removes them)

    def __repr__(self):
        return f"LocalStore({self.root!r})"

    # -- paths ---------------------------------------------------------------------------
    def _bank(self, bank):
        path = os.path.join(self.root, check_bank(bank))
        if bank not in self.made:
            self._root()
            os.makedirs(path, mode=0o700, exist_ok=True)
            self.made.add(bank)
        return path

    def _root(self):
        """The store's folder, made for the master only (makedirs would give it 0777 & umask when
        it makes it as a bank's parent)."""
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        return self.root

    def _path(self, bank, key):
        return os.path.join(self._bank(bank), f"{check_key(key)}.json")

    # -- reading -------------------------------------------------------------------------
    def get(self, bank, key):
        """The record at ``bank``/``key``, or None."""
        return _read(self._path(bank, key))

    def all(self, bank, prefix=""):
        """Every record in ``bank`` (whose key starts with ``prefix``): {key: record}. Only the
        records asked for are read."""
        folder = self._bank(bank)
        found = {}
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:  # removed while the master runs: empty, made again on the next write
            self.made.discard(bank)
            return found
        for name in names:
            if name.endswith(".json") and not name.startswith(".") and name.startswith(prefix):
                record = _read(os.path.join(folder, name))
                if record is not None:
                    found[name[: -len(".json")]] = record
        return found

    # -- writing -------------------------------------------------------------------------
    def _temp(self, bank, key, record):
        """(the record's path, a temp file beside it holding ``record``, on disk). A bank folder
        someone removed while the master runs is made again."""
        path = self._path(bank, key)
        try:
            return path, _write_temp(path, record)
        except FileNotFoundError:
            self.made.discard(bank)
            path = self._path(bank, key)
            return path, _write_temp(path, record)

    def put(self, bank, key, record):
        """Replace (or create) the record at ``bank``/``key``, atomically."""
        path, tmp = self._temp(bank, key, record)
        os.replace(tmp, path)

    def add(self, bank, key, record):
        """Create the record only if ``key`` is new: True if this call created it. Atomic: of two
        callers racing for one key (two reactor workers, two runs), exactly one gets True."""
        path, tmp = self._temp(bank, key, record)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True

    def delete(self, bank, key):
        """Remove the record; True if there was one."""
        try:
            os.unlink(self._path(bank, key))
        except FileNotFoundError:
            return False
        return True

    @contextlib.contextmanager
    def locked(self, name, blocking=True):
        """An exclusive lock called ``name`` (a bank's name locks that bank's updates): yields True,
        or False at once when ``blocking`` is False and another holder has it. The kernel drops it
        if its holder dies."""
        with open(os.path.join(self._root(), f".{check_key(name, 'lock')}.lock"), "a+", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def update(self, bank, key):
        """Read-modify-write one record under the bank's lock (``locked_update``)."""
        return locked_update(self, bank, key)

    def sweep(self, bank, now=None):
        """Remove the records of ``bank`` whose ``expires`` (epoch seconds) has passed; at most
        once a minute per bank (the bank's ``.swept`` file remembers when). How many it removed."""
        now = time.time() if now is None else now
        self.made.discard(bank)  # once a minute: make sure the folder is there
        marker = os.path.join(self._bank(bank), ".swept")
        try:
            if now - os.stat(marker).st_mtime < SWEEP_EVERY:
                return 0
        except FileNotFoundError:
            pass
        with open(marker, "a", encoding="utf-8"):
            os.utime(marker, (now, now))
        return remove_expired(self, bank, now)


def _read(path):
    return iemkey_record.read(path, what="store record")


def _write_temp(path, record):
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(_dump(record))  # one line: json's C encoder (an indent would use the slow one)
        handle.flush()
        os.fsync(handle.fileno())
    return tmp
