"""
A minion's compromise alerts, kept until they are done: ``iemkey.alert`` is at-least-once.

An alert the master never decided (lost in a master restart, a fail-over, a bus subscriber Salt
dropped) would otherwise be lost: Salt's event bus keeps nothing. So ``iemkey.alert`` first writes
the alert to ``<cachedir>/iemkey/alerts/<id>.json`` (its id and when it was raised), then sends it;
``iemkey.resend_alerts`` (the minion's schedule runs it every ``iemkey:alert_resend`` seconds while
alerts are kept) sends each again, with a new signature but the same id and time (the master counts
it once), until this minion's own rotation record shows a rotation made after it. One kept longer
than ``iemkey:alert_keep`` seconds is dropped with an ERROR line (the master lists its owed rotation
until it is done, whatever happens here).

Pure functions over a folder and the rotation record; the execution module passes them in.
"""

import datetime
import os
import secrets

try:
    import iemkey_record
except ImportError:
    from saltext.iemkey.utils import iemkey_record

UTC = datetime.timezone.utc
SCHEDULE = "iemkey-alert-resend"  # the minion schedule entry that sends kept alerts again


def _parse(when):
    parsed = datetime.datetime.fromisoformat(str(when))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def keep(folder, reason, now):
    """Write a new alert to ``folder`` before it is sent: the alert."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    alert = {"id": secrets.token_hex(16), "raised_at": now.astimezone(UTC).isoformat(), "reason": reason, "sent": 0}
    iemkey_record.write(os.path.join(folder, f"{alert['id']}.json"), alert)
    return alert


def kept(folder):
    """The alerts kept in ``folder``, oldest first."""
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        if name.endswith(".json"):
            alert = iemkey_record.read(os.path.join(folder, name), what="kept alert")
            if alert and isinstance(alert.get("id"), str) and alert.get("raised_at"):
                found.append(alert)
    return sorted(found, key=lambda a: a["raised_at"])


def sent(folder, alert, took, now):
    """Record one sending of ``alert`` (``took``: whether a master took it)."""
    alert = {**alert, "sent": alert.get("sent", 0) + 1, "last_sent": now.astimezone(UTC).isoformat(), "took": took}
    iemkey_record.write(os.path.join(folder, f"{alert['id']}.json"), alert)
    return alert


def drop(folder, alert):
    try:
        os.unlink(os.path.join(folder, f"{alert['id']}.json"))
    except FileNotFoundError:
        pass


def rotated_after(alert, record):
    """Whether this minion's rotation record shows a rotation made after ``alert`` was raised: the
    one it records, or, while a new one runs, the last completed one (``previous_rotated_at``)."""
    if not record:
        return False
    step = record.get("step")
    when = {"deleted": record.get("deleted_at"), "done": record.get("rotated_at")}.get(
        step, record.get("previous_rotated_at")
    )
    try:
        return _parse(when) >= _parse(alert["raised_at"])
    except (TypeError, ValueError):
        return False


def sort(alerts, record, now, keep_for):
    """(to send again, done: a rotation came after them, expired: kept longer than ``keep_for`` s)."""
    again, done, expired = [], [], []
    for alert in alerts:
        if rotated_after(alert, record):
            done.append(alert)
        elif (now - _parse(alert["raised_at"])).total_seconds() > keep_for:
            expired.append(alert)
        else:
            again.append(alert)
    return again, done, expired
