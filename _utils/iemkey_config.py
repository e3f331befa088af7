"""
The master's iemkey settings, read in one place: every number from ``iemkey:<section>:<key>`` in the
master config, with its default and its bounds, and one error message naming the setting.

==========================  ==========================================================================
section                     keys (defaults)
==========================  ==========================================================================
``iemkey:reactor``          ``rate`` (10 signed events per minion per minute), ``max_age`` (300 s a
                            signed event stays valid), ``max_skew`` (60 s a clock may run ahead),
                            ``cooldown`` (300 s: rotations received this long before an alert are
                            compromise rotations), ``hook_secret`` (the webhook's HMAC key)
``iemkey:cleanup``          ``iemkey_cleanup.DEFAULTS``
``iemkey:delivery``         ``iemkey_owed.DEFAULTS`` (the engine's batches, probes and retries)
==========================  ==========================================================================

Pure: the callers pass the master opts in.
"""

import logging

try:
    import iemkey_cleanup
    import iemkey_errors
    import iemkey_owed
except ImportError:
    from saltext.iemkey.utils import iemkey_cleanup, iemkey_errors, iemkey_owed

log = logging.getLogger(__name__)

MASTER_OF_MASTERS = (
    "this master is a master of masters (order_masters): its key registry holds only its syndics, so it "
    "cannot tell which minions a target matches, nor decide their clean-ups; run iemkey's runner (and "
    "engine) on the masters that accepted the minions, the syndics' masters (README: Several masters)"
)
REACTOR = {"rate": 10, "max_age": 300, "max_skew": 60, "cooldown": 300}
SECTIONS = {"reactor": REACTOR, "cleanup": iemkey_cleanup.DEFAULTS}


class Misconfigured(iemkey_errors.IemkeyError):
    """A setting is malformed: the message names it and says what it must be."""


def section(opts, name):
    found = (opts.get("iemkey") or {}).get(name) if isinstance(opts.get("iemkey"), dict) else None
    return found if isinstance(found, dict) else {}


def number(opts, name, key):
    """A non-negative number from ``iemkey:<name>:<key>`` in the master opts, or its default."""
    defaults = SECTIONS[name]
    value = section(opts, name).get(key)
    value = defaults[key] if value in (None, "") else value
    try:
        found = float(value)
    except (TypeError, ValueError):
        raise Misconfigured(f"iemkey:{name}:{key} must be a number, not {value!r}") from None
    if isinstance(value, bool) or not found >= 0:  # NaN fails the comparison too
        raise Misconfigured(f"iemkey:{name}:{key} must be a number of 0 or more, not {value!r}")
    return found


def reactor(opts, key):
    return number(opts, "reactor", key)


def cleanup(opts, key):
    return number(opts, "cleanup", key)


def delivery(opts):
    """``iemkey:delivery`` with its defaults (``iemkey_owed.DEFAULTS``), checked."""
    try:
        return iemkey_owed.settings(section(opts, "delivery"))
    except ValueError as exc:
        raise Misconfigured(str(exc)) from None


def hook_secret(opts, resolve):
    """The webhook's HMAC key (bytes); Misconfigured saying why there is none. ``resolve`` reads an
    ``sdb://`` URI the master could not resolve when it read its config (Salt's ``sdb_get``)."""
    secret = section(opts, "reactor").get("hook_secret")
    if secret in (None, ""):
        raise Misconfigured(
            "iemkey:reactor:hook_secret is not set in the master config (an sdb:// URI that resolved to "
            "nothing when the master started counts as not set); the webhook is refused until it is"
        )
    if isinstance(secret, str) and secret.startswith("sdb://"):
        uri, secret = secret, resolve(secret)
        if secret in (None, "") or secret == uri:
            raise Misconfigured(f"iemkey:reactor:hook_secret {uri} did not resolve to a secret")
    return str(secret).encode()


def warn_unresolved_hook_secret(opts, warned):
    """Salt resolves sdb:// URIs in the master config when it reads it; one still there did not
    resolve: an ERROR line, once per URI in ``warned`` (a set the caller keeps per process)."""
    secret = section(opts, "reactor").get("hook_secret")
    if isinstance(secret, str) and secret.startswith("sdb://") and secret not in warned:
        warned.add(secret)
        log.error(
            "iemkey: iemkey:reactor:hook_secret %s did not resolve when the master read its config: every "
            "webhook is refused until it does (iemkey tries it again for each one); check the sdb profile %r",
            secret,
            secret[len("sdb://") :].split("/", 1)[0],
        )
