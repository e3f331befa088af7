"""
Times iemkey reads and writes: ``since`` as an operator types it, key file times, record times.

Pure functions; the ``iemkey`` execution module passes the values in.
"""

import datetime
import re

from salt.exceptions import SaltInvocationError

UTC = datetime.timezone.utc


def parse_time(value, name="since"):
    """A timezone-aware UTC datetime from ISO 8601, epoch seconds or a datetime."""
    if isinstance(value, datetime.datetime):
        parsed = value
    elif isinstance(value, datetime.date):
        parsed = datetime.datetime(value.year, value.month, value.day)
    elif isinstance(value, bool) or value is None:
        raise SaltInvocationError(f"{name} must be an ISO 8601 time or epoch seconds, not {value!r}")
    elif isinstance(value, (int, float)) or (isinstance(value, str) and re.fullmatch(r"\s*\d+(\.\d+)?\s*", value)):
        try:
            parsed = datetime.datetime.fromtimestamp(float(value), UTC)
        except (OverflowError, OSError, ValueError):
            raise SaltInvocationError(f"{name} {value!r} is not a usable epoch time") from None
    elif isinstance(value, str):
        text = value.strip()
        if text[-1:] in ("Z", "z"):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.datetime.fromisoformat(text)
        except ValueError:
            raise SaltInvocationError(
                f"{name} {value!r} is not an ISO 8601 time (2026-11-20T08:00:00Z) or epoch seconds"
            ) from None
    else:
        raise SaltInvocationError(f"{name} must be an ISO 8601 time or epoch seconds, not {value!r}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def iso(epoch):
    """Epoch seconds as ISO 8601 in UTC; None stays None."""
    if epoch is None:
        return None
    return datetime.datetime.fromtimestamp(epoch, UTC).isoformat()


def now():
    """The current time, ISO 8601 in UTC."""
    return datetime.datetime.now(UTC).isoformat()
