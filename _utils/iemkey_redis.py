"""
The iemkey store on a Redis server that every master of a fleet shares (``iemkey:store: {driver:
redis}``): the same banks, records and guarantees as ``iemkey_store.LocalStore``, so that one
incident is decided once for the fleet, whichever master a minion's event reaches.

Why Redis itself and not Salt's cache (``salt.cache``, whose drivers include redis): that API has
``store``/``fetch``/``flush`` and no compare-and-swap, so two masters claiming one nonce would both
win. Redis gives the atomic operations a claim needs, on one server:

=====================  ================================================================================
store operation        on Redis
=====================  ================================================================================
a bank                 one hash, ``<prefix>:<bank>``; a record is a field holding its JSON
``get``/``all``        ``HGET``; ``HSCAN ... MATCH <prefix>*``
``put``/``delete``     ``HSET``/``HDEL``
``add``                ``HSETNX``: of any number of masters racing for one key exactly one creates it
``locked``             ``SET <prefix>:lock:<name> <token> NX PX <ttl>``, renewed while held (a master
                       that dies frees it after ``lock_ttl``), released only by its holder (a script
                       that compares the token)
``update``             the bank's lock, then read-modify-write
``sweep``              at most once a minute for all masters (``<prefix>:swept:<bank>``)
=====================  ================================================================================

A master that loses its connection (Redis restarting, a fail-over) retries each operation for up to
``wait`` seconds (default 30), then raises ``StoreError``: what it was deciding is not decided, and
nothing is done on a guess. A reply lost on the way back is not a second action: each write carries a
token of its writer, so a retried ``add`` or lock knows whether its first attempt landed. What Redis
acknowledged survives its restart only with an append-only file (``appendonly yes``, ``appendfsync
always``); the store warns once when the server says it keeps none.

Pure Python; needs the ``redis`` package on the master (``salt-pip install redis``).
"""

import contextlib
import json
import logging
import threading
import time
import uuid

try:
    import iemkey_banks
except ImportError:
    from saltext.iemkey.utils import iemkey_banks

log = logging.getLogger(__name__)

StoreError = iemkey_banks.StoreError

DEFAULTS = {
    "host": "127.0.0.1",
    "port": 6379,
    "db": 0,
    "prefix": "iemkey",
    "wait": 30,  # seconds a master keeps retrying an operation while the server is unreachable
    "socket_timeout": 5,
    "lock_ttl": 60,  # seconds a dead master's lock outlives it; a live holder renews it every third
    "ssl": False,
}
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_GLOB = str.maketrans({c: "\\" + c for c in "\\*?[]^"})


def _redis():
    try:
        import redis  # pylint: disable=import-outside-toplevel
        import redis.backoff  # pylint: disable=import-outside-toplevel
        import redis.retry  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise StoreError(
            "iemkey:store:driver redis needs the Python package redis on the master (salt-pip install redis)"
        ) from None
    return redis


class RedisStore:
    """The banks of ``iemkey_store`` on one Redis server (see the module's docstring)."""

    @classmethod
    def from_conf(cls, conf, resolve=None):
        settings = {**DEFAULTS, **{k: v for k, v in conf.items() if v is not None and k != "driver"}}
        password = settings.pop("password", None)
        if isinstance(password, str) and password.startswith("sdb://") and resolve is not None:
            password = resolve(password)
        unknown = sorted(set(settings) - set(DEFAULTS) - {"username"})
        if unknown:
            raise StoreError(f"iemkey:store: {', '.join(unknown)} is not a setting of the redis driver")
        try:
            port, db = int(settings["port"]), int(settings["db"])
            wait, timeout, ttl = (float(settings[k]) for k in ("wait", "socket_timeout", "lock_ttl"))
        except (TypeError, ValueError):
            raise StoreError("iemkey:store: port, db, wait, socket_timeout and lock_ttl must be numbers") from None
        if min(wait, timeout, ttl) <= 0 or not iemkey_banks.KEY.fullmatch(str(settings["prefix"])):
            raise StoreError("iemkey:store: wait, socket_timeout and lock_ttl must be positive, prefix a plain name")
        redis = _redis()
        client = redis.Redis(
            host=str(settings["host"]),
            port=port,
            db=db,
            username=settings.get("username"),
            password=password,
            ssl=bool(settings["ssl"]),
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),  # this class retries, knowing what landed
            decode_responses=True,
        )
        where = f"redis://{settings['host']}:{port}/{db}"  # never the password
        return cls(client, where, prefix=str(settings["prefix"]), wait=wait, lock_ttl=ttl)

    def __init__(self, client, where, prefix="iemkey", wait=30.0, lock_ttl=60.0):
        self.client, self.where, self.prefix = client, where, prefix
        self.wait, self.lock_ttl = float(wait), float(lock_ttl)
        self._errors = _redis().exceptions
        self._checked = False
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)

    def __repr__(self):
        return f"RedisStore({self.where!r}, prefix={self.prefix!r})"

    # -- talking to the server -----------------------------------------------------------
    def _call(self, what, attempt):
        """``attempt(retried)``, retried while the server is unreachable, for up to ``wait`` seconds.
        ``retried`` tells an attempt that an earlier one may have landed with its reply lost."""
        errors = self._errors
        deadline = time.monotonic() + self.wait
        delay, retried = 0.05, False
        if not self._checked:
            self._checked = True
            self._check_persistence()
        while True:
            try:
                return attempt(retried)
            except errors.AuthenticationError as exc:
                raise StoreError(f"the iemkey store at {self.where} refused the login ({what}): {exc}") from None
            except (errors.ConnectionError, errors.TimeoutError) as exc:
                if time.monotonic() + delay > deadline:
                    raise StoreError(
                        f"the iemkey store at {self.where} did not answer within {self.wait:g} s ({what}): "
                        f"{type(exc).__name__}; nothing was decided"
                    ) from None
                if not retried:
                    log.warning("iemkey store: %s unreachable (%s); retrying %s", self.where, type(exc).__name__, what)
                retried = True
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except errors.RedisError as exc:
                raise StoreError(f"the iemkey store at {self.where} refused {what}: {exc}") from None

    def _check_persistence(self):
        try:
            appendonly = self.client.config_get("appendonly").get("appendonly")
        except Exception:  # pylint: disable=broad-except
            return  # CONFIG may be renamed or refused (managed Redis): nothing to say
        if appendonly == "no":
            log.warning(
                "iemkey store: %s keeps no append-only file: a restart of Redis loses what iemkey recorded since "
                "its last snapshot (nonces, clean-ups); set appendonly yes and appendfsync always",
                self.where,
            )

    def _hash(self, bank):
        return f"{self.prefix}:{iemkey_banks.check_bank(bank)}"

    def _wrap(self, record, token=None):
        return json.dumps({"r": record, "w": token or uuid.uuid4().hex}, sort_keys=True)

    def _unwrap(self, bank, key, raw):
        try:
            value = json.loads(raw)
            return value["r"], value.get("w")
        except (TypeError, ValueError, KeyError) as exc:
            log.error("iemkey store: %s/%s in %s is not a record (%s); skipped", bank, key, self.where, exc)
            return None, None

    # -- reading -------------------------------------------------------------------------
    def get(self, bank, key):
        """The record at ``bank``/``key``, or None."""
        name, field = self._hash(bank), iemkey_banks.check_key(key)
        raw = self._call(f"reading {bank}", lambda _: self.client.hget(name, field))
        return None if raw is None else self._unwrap(bank, key, raw)[0]

    def all(self, bank, prefix=""):
        """Every record in ``bank`` whose key starts with ``prefix``: {key: record}, sorted by key."""
        name = self._hash(bank)
        match = str(prefix).translate(_GLOB) + "*"
        raw = self._call(f"reading {bank}", lambda _: dict(self.client.hscan_iter(name, match=match, count=1000)))
        found = {}
        for key in sorted(raw):
            record = self._unwrap(bank, key, raw[key])[0]
            if record is not None:
                found[key] = record
        return found

    # -- writing -------------------------------------------------------------------------
    def put(self, bank, key, record):
        """Replace (or create) the record at ``bank``/``key``."""
        name, field, value = self._hash(bank), iemkey_banks.check_key(key), self._wrap(record)
        self._call(f"writing {bank}", lambda _: self.client.hset(name, field, value))

    def add(self, bank, key, record):
        """Create the record only if ``key`` is new: True if this call created it. Of any number of
        masters racing for one key exactly one gets True, also when a reply is lost and retried."""
        token = uuid.uuid4().hex
        name, field, value = self._hash(bank), iemkey_banks.check_key(key), self._wrap(record, token)

        def attempt(retried):
            if self.client.hsetnx(name, field, value):
                return True
            if retried:  # an earlier attempt may have created it and lost the reply: is it ours?
                raw = self.client.hget(name, field)
                return raw is not None and self._unwrap(bank, key, raw)[1] == token
            return False

        return bool(self._call(f"claiming {bank}", attempt))

    def delete(self, bank, key):
        """Remove the record; True if there was one."""
        name, field = self._hash(bank), iemkey_banks.check_key(key)
        return bool(self._call(f"removing from {bank}", lambda _: self.client.hdel(name, field)))

    @contextlib.contextmanager
    def locked(self, name, blocking=True):
        """An exclusive lock called ``name`` for every master sharing this server: yields True, or
        False at once when ``blocking`` is False and another holder has it. Renewed while held; a
        holder that dies frees it after ``lock_ttl`` seconds."""
        lock = f"{self.prefix}:lock:{iemkey_banks.check_key(name, 'lock')}"
        token, ttl_ms = uuid.uuid4().hex, int(self.lock_ttl * 1000)

        def attempt(retried):
            if self.client.set(lock, token, nx=True, px=ttl_ms):
                return True
            return bool(retried) and self.client.get(lock) == token

        while not self._call(f"taking the lock {name}", attempt):
            if not blocking:
                yield False
                return
            time.sleep(0.05)
        stop = threading.Event()
        renewer = threading.Thread(target=self._keep, args=(lock, token, ttl_ms, stop), daemon=True)
        renewer.start()
        try:
            yield True
        finally:
            stop.set()
            renewer.join()
            self._call(f"releasing the lock {name}", lambda _: self._release(keys=[lock], args=[token]))

    def _keep(self, lock, token, ttl_ms, stop):
        while not stop.wait(self.lock_ttl / 3):
            try:
                if not self._renew(keys=[lock], args=[token, ttl_ms]):
                    log.error("iemkey store: the lock %s was lost (held past %g s?)", lock, self.lock_ttl)
                    return
            except self._errors.RedisError as exc:
                log.warning("iemkey store: could not renew the lock %s: %s", lock, type(exc).__name__)

    def update(self, bank, key):
        """Read-modify-write one record under the bank's lock, every master's (``locked_update``)."""
        return iemkey_banks.locked_update(self, bank, key)

    def sweep(self, bank, now=None):
        """Remove the records of ``bank`` whose ``expires`` (epoch seconds) has passed; at most once a
        minute per bank, whichever master asks. How many it removed."""
        now = time.time() if now is None else now
        marker = f"{self.prefix}:swept:{iemkey_banks.check_bank(bank)}"
        last = self._call(f"sweeping {bank}", lambda _: self.client.get(marker))
        try:
            if last is not None and now - float(last) < iemkey_banks.SWEEP_EVERY:
                return 0
        except ValueError:
            pass
        self._call(f"sweeping {bank}", lambda _: self.client.set(marker, repr(float(now))))
        return iemkey_banks.remove_expired(self, bank, now)
