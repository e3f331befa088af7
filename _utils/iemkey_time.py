"""
Times and switches iemkey reads and writes: ``since`` as an operator types it, key file times,
record times, and the booleans of its arguments.

What ``since`` may be (one parser for the module, the state, the runner and the formula):

- ISO 8601: ``2026-11-20T08:00:00Z``, any offset (``+01:00``), no zone meaning UTC, a date alone
  meaning its midnight UTC, and what YAML makes of an unquoted pillar time;
- epoch seconds written ``@1763625600`` (as GNU ``date -d @...`` reads them), or a bare number of
  10 digits (``1763625600``): the only numbers that cannot be a compact date.

Refused, with what was read and how to write it: compact dates (``20261120``, which a bare number
would make 1970-08-23), negative or other short numbers, anything before 2001 (no BigFix key that
old matters: it is a mistake), and what is not a time at all.

Pure functions; the callers pass the values in.
"""

import datetime
import re

from salt.exceptions import SaltInvocationError

UTC = datetime.timezone.utc
EARLIEST = datetime.datetime(2001, 1, 1, tzinfo=UTC)
HOW = "write ISO 8601 (2026-11-20T08:00:00Z) or epoch seconds as @1763625600"
EPOCH = re.compile(r"@?[0-9]{10}(\.[0-9]+)?")
NUMBER = re.compile(r"[-+]?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?")
TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _epoch(text, value, name):
    try:
        return datetime.datetime.fromtimestamp(float(text.lstrip("@")), UTC)
    except (OverflowError, OSError, ValueError):
        raise SaltInvocationError(f"{name} {value!r} is not a usable epoch time; {HOW}") from None


def _number(value, name):
    """A bare number: epoch seconds only when it has 10 digits (2001-09-09 to 2286-11-20)."""
    text = repr(value) if isinstance(value, float) else str(value)
    if EPOCH.fullmatch(text):
        return _epoch(text, value, name)
    digits = text.split(".")[0].lstrip("+")
    if re.fullmatch(r"[0-9]{8}", digits):
        hint = f" (did you mean {digits[:4]}-{digits[4:6]}-{digits[6:]}?)"
    else:
        hint = ""
    raise SaltInvocationError(
        f"{name} {value!r} is a number, but not 10 digits of epoch seconds: read as epoch seconds it would not "
        f"be the time you meant{hint}; {HOW}"
    )


def parse_time(value, name="since"):
    """A timezone-aware UTC datetime from what an operator wrote (see the module's docstring)."""
    if isinstance(value, datetime.datetime):
        parsed = value
    elif isinstance(value, datetime.date):
        parsed = datetime.datetime(value.year, value.month, value.day)
    elif isinstance(value, bool) or value is None:
        raise SaltInvocationError(f"{name} must be a time, not {value!r}; {HOW}")
    elif isinstance(value, (int, float)):
        parsed = _number(value, name)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("@") and EPOCH.fullmatch(text):
            parsed = _epoch(text, value, name)
        elif NUMBER.fullmatch(text):
            parsed = _number(text, name)
        else:
            if text[-1:] in ("Z", "z"):
                text = text[:-1] + "+00:00"
            try:
                parsed = datetime.datetime.fromisoformat(text)
            except ValueError:
                raise SaltInvocationError(f"{name} {value!r} is not a time; {HOW}") from None
    else:
        raise SaltInvocationError(f"{name} must be a time, not {value!r}; {HOW}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    parsed = parsed.astimezone(UTC)
    if parsed < EARLIEST:
        raise SaltInvocationError(
            f"{name} {value!r} was read as {parsed.isoformat()}, before 2001: not a time a BigFix key rotation "
            f"can mean; {HOW}"
        )
    return parsed


def boolean(name, value):
    """``value`` as a bool: True/False, 1/0, or true/false/yes/no/on/off in any case; anything else
    (``yes-please``, ``2``) is refused, naming the argument."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
        return value.strip().lower() in TRUE
    raise SaltInvocationError(f"{name} must be True or False, not {value!r}")


def iso(epoch):
    """Epoch seconds as ISO 8601 in UTC; None stays None."""
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, UTC).isoformat()


def now():
    """The current time, ISO 8601 in UTC."""
    return datetime.datetime.now(UTC).isoformat()
