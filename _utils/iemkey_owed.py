"""
Owed rotations: what the master owes a minion once it has accepted a compromise signal for it, until
that minion's own signed ``iemkey/rotated`` shows a rotation made after the signal.

A Salt job is fire-and-forget: one published to a minion that is not connected is never delivered,
and nothing in Salt remembers it. So every compromise the master accepts (a signed alert, a signed
webhook, an incident an operator declares for a target) is recorded here, per minion, in the store
every master shares, and stays *owed* until it is settled:

==============  =====================================================================================
state           meaning
==============  =====================================================================================
``pending``     recorded; its rotation job is about to be published (the next batch)
``delivered``   a rotation job was published (``jid``, ``delivered_at``); the minion answered, or has
                not been asked yet whether the job reached it (the probe: a job it no longer runs,
                with no return, is delivered again)
``away``        the minion answered neither the job nor ``saltutil.find_job`` (``away_since``): it is
                asked again at once when it comes back (``salt/minion/<id>/start``, ``salt/auth``),
                and, in case that event is missed, after ``redeliver_every`` seconds, then ever less
                often: after half as long as it has been away (at most ``retry_max``)
``failed``      the job returned without a rotation (``error``); retried after ``retry_after`` seconds,
                doubled per attempt (at most ``retry_max``)
``review``      ``max_attempts`` jobs returned without a rotation: nothing more is sent until an operator
                retries it (``salt-run iemkey.owed minion=<id> retry=True``)
``held``        an incident declared with ``deliver=False``: the operator's own rollout rotates it
==============  =====================================================================================

Settled (``settle``) only by the minion's signed ``iemkey/rotated`` of a rotation made after the
signal: its ``rotated_at`` (the minion's clock) at or after the signal's ``since``, and, for a signal
timed by another clock (a webhook, an incident), received by the master after that time too. A signal
that arrives after the rotation that settles the others stays owed. Settled records move to the
``settled`` bank (the trail ``iemkey.history`` shows).

Pure functions over plain dicts: the engine, the runner and the decisions pass the clock and the
settings in.
"""

import datetime

UTC = datetime.timezone.utc
OPEN = ("pending", "delivered", "away", "failed", "review", "held")
IN_FLIGHT = ("pending", "delivered")
WAITING = ("review", "held")  # nothing is sent until an operator (or a new signal) asks again
SOURCES = ("alert", "webhook", "incident")
DEFAULTS = {
    "batch_window": 0.5,  # the longest decisions wait so that one job publishes them together
    "batch_size": 1000,  # minions one rotation job targets at most
    "probe_after": 10,  # seconds after a delivery before asking (saltutil.find_job) whether it arrived
    "redeliver_every": 30,  # seconds between two deliveries to a minion that is away
    "retry_after": 60,  # seconds before the first retry of a job that returned without a rotation
    "retry_max": 3600,  # the longest wait between two retries
    "max_attempts": 5,  # jobs that returned without a rotation before the owed rotation goes to review
    "interval": 2,  # seconds between two passes of the engine over the owed rotations
}
BOUNDS = {
    "batch_window": (0.05, 60),
    "batch_size": (1, 100_000),
    "probe_after": (1, 3600),
    "redeliver_every": (1, 86400),
    "retry_after": (1, 86400),
    "retry_max": (1, 7 * 86400),
    "max_attempts": (1, 1000),
    "interval": (0.2, 600),
}
SIGNALS_KEPT = 20  # the signals one owed rotation lists (the count says how many there were)
TRAIL_KEPT = 50


def parse(when):
    parsed = when if isinstance(when, datetime.datetime) else datetime.datetime.fromisoformat(str(when))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def iso(when):
    return None if when is None else parse(when).isoformat()


def signal(source, since, received, ident, reason=None, timed_by_master=False):
    """One compromise signal: ``since`` the time a rotation must follow (the minion's own clock for
    its alert; the master's for a webhook or an incident, then ``timed_by_master``), ``received``
    when the master accepted it, ``ident`` what makes a re-sent copy the same signal."""
    if source not in SOURCES:
        raise ValueError(f"a compromise signal comes from {', '.join(SOURCES)}, not {source!r}")
    return {
        "source": source,
        "since": iso(since),
        "received": iso(received),
        "id": str(ident),
        "reason": str(reason)[:200] if reason else None,
        # a time the master set: the rotation's signed event must also reach the master after it
        "received_after": iso(since) if timed_by_master else None,
    }


def new(minion, first, now, by, state="pending"):
    """The owed rotation of ``minion`` that ``first`` (a ``signal``) opens."""
    record = {
        "minion": minion,
        "since": first["since"],
        "at": iso(now),
        "signals": [first],
        "count": 1,
        "state": None,
        "attempts": 0,
        "jid": None,
        "delivered_at": None,
        "seen": None,
        "probed_at": None,
        "returned": None,
        "away_since": None,
        "error": None,
        "next_try": iso(now),
        "exact": False,
        "trail": [],
    }
    detail = f"owed since {first['since']} ({first['source']}): a rotation made at or after it settles it"
    return move(record, state, detail, now, by)


def move(record, state, detail, now, by):
    """``record`` in ``state``; a change of state goes on its trail (when, what, who)."""
    if state not in OPEN:
        raise ValueError(f"an owed rotation is {', '.join(OPEN)}, not {state!r}")
    record = {**record, "detail": detail}
    trail = list(record.get("trail") or [])
    if not trail or trail[-1]["state"] != state or trail[-1]["detail"] != detail:
        trail.append({"at": iso(now), "state": state, "detail": detail, "by": by})
    record.update(state=state, trail=trail[-TRAIL_KEPT:])
    return record


def merge(record, sig):
    """``record`` with one more signal (the same signal re-sent counts once): (record, new?)."""
    if any(s["id"] == sig["id"] for s in record["signals"]):
        return record, False
    signals = [*record["signals"], sig]
    record = {**record, "signals": signals[-SIGNALS_KEPT:], "count": record.get("count", 1) + 1}
    record["since"] = min((s["since"] for s in record["signals"]), key=parse)
    return record, True


def settled_by(sig, rotated_at, received):
    """Whether a rotation the minion made at ``rotated_at`` (its clock) and the master received at
    ``received`` came after the signal ``sig``."""
    if parse(rotated_at) < parse(sig["since"]):
        return False
    return sig.get("received_after") is None or parse(received) >= parse(sig["received_after"])


def settle(record, rotated_at, received):
    """(the signals this rotation settles, the signals it leaves owed)."""
    done = [s for s in record["signals"] if settled_by(s, rotated_at, received)]
    left = [s for s in record["signals"] if not settled_by(s, rotated_at, received)]
    return done, left


def remaining(record, left, now, by):
    """What stays owed when a rotation settled only some signals: a new delivery is due."""
    record = {**record, "signals": left, "since": min((s["since"] for s in left), key=parse), "exact": True}
    record.update(attempts=0, error=None, next_try=iso(now), jid=None, returned=None, probed_at=None)
    return move(record, "pending", "a signal arrived after the rotation that settled the others", now, by)


def closed(record, outcome, detail, now, by, rotation=None):
    """The settled record (the ``settled`` bank): how it ended and what ended it."""
    done = {k: v for k, v in record.items() if k not in ("next_try", "probed_at")}
    trail = [*record.get("trail", []), {"at": iso(now), "state": outcome, "detail": detail, "by": by}]
    done.update(state=outcome, detail=detail, closed=iso(now), rotation=rotation, trail=trail[-TRAIL_KEPT:])
    return done


def settled_key(record, now):
    return f"{record['minion']}:{parse(now):%Y%m%dT%H%M%S%fZ}"


# -- delivery ---------------------------------------------------------------------------------
def delivered(record, jid, now, by):
    """A rotation job was published to the minion."""
    record = {**record, "jid": str(jid), "delivered_at": iso(now), "probed_at": None, "returned": None}
    if record["state"] == "away":
        return record  # still away until the minion answers; the delivery is the next try
    return move(record, "delivered", f"rotation job {jid} published", now, by)


def answered(record, now, by):
    """The minion answered (its job's return, or ``saltutil.find_job``): it is connected."""
    record = {**record, "seen": iso(now), "away_since": None}
    if record["state"] == "away":
        return move(record, "delivered", f"the minion answered job {record['jid']}", now, by)
    return record


def away(record, now, by):
    """The minion answered neither the job nor ``saltutil.find_job``."""
    since = record.get("away_since") or record.get("delivered_at") or iso(now)
    record = {**record, "away_since": since}
    return move(record, "away", f"not connected: no answer to job {record['jid']} since {since}", now, by)


def failed(record, error, now, by, settings):
    """The job returned without a rotation: retried with backoff, then review."""
    attempts = record.get("attempts", 0) + 1
    record = {**record, "attempts": attempts, "error": str(error)[:1000], "returned": iso(now), "seen": iso(now)}
    if attempts >= settings["max_attempts"]:
        detail = f"{attempts} jobs returned without a rotation (iemkey:delivery:max_attempts): {record['error']}"
        return move({**record, "next_try": None}, "review", detail, now, by)
    wait = min(settings["retry_max"], settings["retry_after"] * 2 ** (attempts - 1))
    retry = parse(now) + datetime.timedelta(seconds=wait)
    detail = f"attempt {attempts} returned without a rotation; retried at {retry.isoformat()}: {record['error']}"
    return move({**record, "next_try": retry.isoformat()}, "failed", detail, now, by)


def retry_now(record, now, by, detail):
    """Deliver again at once (a new signal, an operator, the minion came back); a delivery in flight
    stays as it is."""
    record = {**record, "next_try": iso(now)}
    if record["state"] == "review":
        record["attempts"] = 0
    if record["state"] in ("review", "failed", "held", "away"):
        return move(record, "pending", detail, now, by)
    return record


def contact(record):
    """When the master last heard from or sent to the minion about this owed rotation."""
    times = [parse(t) for t in (record.get("delivered_at"), record.get("seen")) if t]
    return max(times) if times else None


def due(record, now, settings):
    """Whether a rotation job should be published for this owed rotation now."""
    state, now = record["state"], parse(now)
    if state == "pending":
        return True
    if state == "away":
        last = parse(record["delivered_at"]) if record.get("delivered_at") else None
        return last is None or (now - last).total_seconds() >= redeliver_after(record, now, settings)
    if state == "failed":
        return record.get("next_try") is not None and now >= parse(record["next_try"])
    return False


def redeliver_after(record, now, settings):
    """Seconds between two deliveries to a minion that is away: ``redeliver_every``, or half as long
    as it has been away when that is longer, at most ``retry_max``. A fleet of laptops asleep for the
    night is asked a handful of times, not every half minute; a minion coming back is asked at once
    anyway (its start or authentication event)."""
    since = record.get("away_since")
    away = (parse(now) - parse(since)).total_seconds() if since else 0
    return max(settings["redeliver_every"], min(settings["retry_max"], away / 2))


def probe(record, now, settings):
    """What the engine does next for a delivered rotation nothing settled yet: ``probe`` (ask the
    minion whether it runs the job), ``away`` (it did not answer the probe), ``redeliver`` (its job
    returned, yet no rotation came), or None (wait)."""
    if record["state"] != "delivered":
        return None
    now, window = parse(now), settings["probe_after"]
    last = contact(record)
    if record.get("returned") and (now - parse(record["returned"])).total_seconds() >= window:
        return "redeliver"
    if record.get("probed_at"):
        probed = parse(record["probed_at"])
        if last is not None and last > probed:
            return "probe" if (now - last).total_seconds() >= window else None
        return "away" if (now - probed).total_seconds() >= window else None
    if last is None or (now - last).total_seconds() >= window:
        return "probe"
    return None


def public(record):
    """An owed rotation as the report shows it (no trail: ``iemkey.history`` has that)."""
    shown = {
        key: record.get(key)
        for key in ("minion", "state", "since", "at", "jid", "delivered_at", "away_since", "attempts", "error")
    }
    shown["next_try"] = record.get("next_try") if record.get("state") == "failed" else None
    shown["signals"] = record.get("count", len(record.get("signals") or ()))
    shown["sources"] = sorted({s["source"] for s in record.get("signals") or ()})
    shown["detail"] = record.get("detail")
    return shown


def settings(conf):
    """``iemkey:delivery`` with its defaults, each a number within its bounds; ValueError naming the
    setting otherwise."""
    conf = conf if isinstance(conf, dict) else {}
    unknown = sorted(set(conf) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"iemkey:delivery: {', '.join(unknown)} is not a setting (known: {', '.join(DEFAULTS)})")
    found = {}
    for key, default in DEFAULTS.items():
        value = conf.get(key)
        value = default if value in (None, "") else value
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"iemkey:delivery:{key} must be a number, not {value!r}") from None
        low, high = BOUNDS[key]
        if isinstance(value, bool) or not low <= number <= high:
            raise ValueError(f"iemkey:delivery:{key} must be between {low:g} and {high:g}, not {value!r}")
        found[key] = int(number) if key in ("batch_size", "max_attempts") else number
    return found
