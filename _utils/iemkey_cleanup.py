"""
The console clean-up's decisions: what to do with each rotation's old computer.

Each rotation the master hears of (a signed ``iemkey/rotated``) is a *case*: one old computer,
its minion and the new computer. A case is open while iemkey still has something to do or to
show (``pending``, ``revoke``, ``left_console``, ``review``) and closed once settled (``deleted``,
``gone``, ``revoked``, ``dismissed``); closed cases stay, as the audit trail (``trail``).

- **Routine rotations** delete the old computer once BigFix confirms it is the superseded
  duplicate: the new computer exists, has reported its Computer Name, and the old computer is a
  native agent record of that same name that has not reported since the master received the
  rotation, ``report_margin`` seconds on (BigFix's own reporting delay).
- **Compromise rotations** (the master acted on a signed alert or webhook for that minion, or an
  operator declared an incident covering it) are never deleted (unless the master config or the
  incident says ``delete``): once confirmed the same way, the old computer is listed *to revoke*
  until BigFix no longer shows it (``left_console``: revoked, or deleted; BigFix's REST API cannot
  tell which), and recorded as revoked only once an operator confirms it. One that ended without
  a revocation (reviewed, dismissed, deleted) stays *unrevoked* until an operator records that
  decision (``accepted``). Which rotations are compromise
  rotations is decided from the master's own records (compromises, incidents) and the time the
  master received each event, never from anything the minion sends.
- What BigFix does not confirm is listed for review; what cannot be decided yet stays pending.
- Silence is judged from the earliest plausible moment of the rotation: the earlier of the master's
  receipt and the minion's own ``rotated_at`` (a late re-send is normal; a minion whose clock lies
  backward can only send its own case to review, one that lies forward changes nothing). A report
  within ``max_skew`` before that moment (a minion clock running ahead) is the old agent's last one
  only if nothing reported after it for ``report_margin`` seconds, which the verdict waits anyway.

Pure functions: the runner passes in the records, what BigFix answered and the clock.
"""

import datetime

UTC = datetime.timezone.utc
OPEN = ("pending", "revoke", "left_console", "review")
CLOSED_UNREVOKED = ("review", "dismissed", "deleted", "gone")  # a compromise case ending so was not revoked
MODES = ("revoke", "delete")
ALERTS = "alerts"  # the incident of compromises no declared incident covers
DEFAULTS = {
    "give_up_after": 86400,  # seconds a case may stay pending before it is listed for review
    "minion_timeout": 10,  # seconds to wait for a minion's new computer ID
    "report_margin": 900,  # seconds after the master received a rotation before "silent since" counts
    "max_deletes": 100,  # DELETEs one pass may send; the rest wait for the next pass
    "compromise_window": 86400,  # seconds after a compromise alert during which rotations are compromise ones
}
GROUP_PREFIX = "iemkey revoke: "


def parse(when):
    """An ISO 8601 time iemkey wrote (or Salt's ``_stamp``, naive before 3007) as aware UTC."""
    parsed = when if isinstance(when, datetime.datetime) else datetime.datetime.fromisoformat(str(when))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def key(minion, old_computer_id):
    return f"{minion}:{old_computer_id}"


def new_case(minion, old_computer_id, new_computer_id, rotated_at, received):
    """The case of one rotation, as the master first records it (pending; not a compromise rotation
    until ``covering`` finds one on the master's record)."""
    case = {
        "minion": minion,
        "old_computer_id": str(old_computer_id),
        "new_computer_id": str(new_computer_id) if new_computer_id else None,
        "rotated_at": rotated_at,  # what the minion says (shown, never decides anything)
        "received": parse(received).isoformat(),  # when the master received the signed event
        "compromise": None,
        "name": None,  # the old computer's Computer Name, once BigFix has said it
    }
    return settle(case, "pending", "recorded; not decided yet", received, "iemkey.react")


def settle(case, status, detail, now, by):
    """``case`` with its new status and detail; a change of status goes on the trail with when
    and what decided it (a case pending for the same reason twice is one line, not two)."""
    now = parse(now).isoformat()
    case = {**case, "detail": detail, "checked": now}
    trail = list(case.get("trail") or [])
    if not trail or trail[-1]["status"] != status:
        trail.append({"at": now, "status": status, "detail": detail, "by": by})
    case.update(status=status, trail=trail)
    return case


def covering(case, compromises, incidents):
    """The compromise on the master's record that makes this rotation a compromise rotation, or
    None. Judged by when the master received the rotation (``received``), which no minion sets.

    compromises
        {minion: {"since", "until", "at", "source", "reason"}}: alerts and webhooks acted on.
    incidents
        {name: {"since", "until" (None while open), "minions", "declared", "cleanup"}}.
    """
    received = parse(case["received"])
    minion = case["minion"]
    for name, incident in sorted(incidents.items(), key=lambda item: (parse(item[1]["since"]), item[0])):
        until = incident.get("until")
        if (
            not incident.get("withdrawn")
            and minion in (incident.get("minions") or ())
            and parse(incident["since"]) <= received
            and (until is None or received <= parse(until))
        ):
            return {
                "incident": name,
                "source": "incident",
                "at": incident["declared"],
                "cleanup": incident.get("cleanup"),
            }
    alert = compromises.get(minion)
    if alert and parse(alert["since"]) <= received <= parse(alert["until"]):
        return {
            "incident": ALERTS,
            "source": alert["source"],
            "at": alert["at"],
            "reason": alert.get("reason"),
            "cleanup": None,
        }
    return None


def mode(case, default):
    """``delete`` or ``revoke`` for a confirmed duplicate: routine rotations delete; compromise
    rotations follow their incident's choice, else the master's ``iemkey:cleanup:compromised``."""
    compromise = case.get("compromise")
    if not compromise:
        return "delete"
    return compromise.get("cleanup") or default


def successor(case, cases):
    """The newest computer this rotation's new computer led to. Rotations can follow each other
    before a clean-up decides (an ad-hoc rotation, then the highstate): a later rotation of the
    same minion whose old computer is this one's new computer superseded it in turn, and the
    later clean-up may already have deleted it. ``cases``: the minion's cases, any status."""
    by_old = {c["old_computer_id"]: c for c in cases if c["minion"] == case["minion"]}
    seen = {case["old_computer_id"]}
    current = case.get("new_computer_id")
    while current in by_old:
        following = by_old[current].get("new_computer_id")
        if not following or following in seen or following == current:
            break  # the end of the chain, or a loop back: never a computer that came before
        seen.add(current)
        current = following
    return current


def earliest(case):
    """The earliest moment the rotation can have happened: the master's receipt of its signed event,
    or the minion's own ``rotated_at``, whichever is earlier."""
    received = parse(case["received"])
    try:
        claimed = parse(case["rotated_at"])
    except (TypeError, ValueError):
        return received
    return min(received, claimed)


def verdict(case, old, new, now, master_operator, margin):
    """What BigFix says of a pending case: (outcome, detail), the outcome one of ``pending`` (not
    decidable yet), ``review`` (BigFix does not confirm it), ``gone`` (the old computer is not in
    the console) or ``superseded`` (the old computer is the duplicate this rotation left).

    old, new
        ``iemkey_bigfix.Computer`` records, None where BigFix answered 404.
    master_operator
        Whether the API user is a master operator: only then does a 404 mean "not there" rather
        than "outside my scope".
    margin
        Seconds after the master received the rotation before the old computer's silence counts.
        The old computer must be silent since the earliest plausible moment of the rotation
        (``earliest``).
    """
    old_id, new_id = case["old_computer_id"], case.get("new_computer_id")
    received = parse(case["received"])
    rotated = earliest(case)
    if not new_id:
        return "pending", "the minion has not reported its new computer ID yet"
    if new_id == old_id:
        return "review", f"the rotation names its old computer {old_id} as its new one"
    if new is None:
        return "pending", f"the new computer {new_id} is not registered with BigFix yet"
    if new.name is None or new.last_report is None:
        return "pending", f"the new computer {new_id} has registered but not reported its Computer Name yet"
    if old is None:
        if master_operator:
            return "gone", f"BigFix has no computer {old_id} (already removed)"
        return "review", (
            f"BigFix answers 404 for the old computer {old_id}, and the API user is not a master operator: "
            "a computer outside its scope answers 404 too, so iemkey cannot tell whether it is gone"
        )
    if old.agent_type not in (None, "Native"):
        return "review", f"the old computer {old_id} is a {old.agent_type!r} record, not a native agent's"
    if old.name is None:
        return "review", f"BigFix gives no Computer Name for the old computer {old_id}"
    if old.name != new.name:
        return "review", (
            f"BigFix names the old computer {old_id} {old.name!r} and the new computer "
            f"{new_id} {new.name!r}: not a duplicate of this rotation"
        )
    if old.last_report is None:
        return "review", f"BigFix gives no Last Report Time for the old computer {old_id}"
    if old.last_report > rotated:
        return "review", (
            f"the old computer {old_id} reported at {old.last_report.isoformat()}, after the rotation (made at "
            f"{case.get('rotated_at')} by the minion's clock, received at {received.isoformat()}; judged from "
            f"{rotated.isoformat()}): something still uses that identity"
        )
    decide_at = received + datetime.timedelta(seconds=margin)
    if parse(now) < decide_at:
        return "pending", (
            f"waiting until {decide_at.isoformat()} (iemkey:cleanup:report_margin, {margin:g} s) for BigFix to "
            f"show any report the old computer {old_id} made after the rotation"
        )
    return "superseded", (
        f"the old computer {old_id} {old.name!r} (last report {old.last_report.isoformat()}) is superseded by "
        f"{new_id}, which has the same Computer Name"
    )


def still_to_revoke(case, old, now, master_operator):
    """A to-revoke case after asking BigFix again: (status, detail). The computer must leave the
    console, and a 404 proves that only to a master operator; then it is ``left_console``: revoked,
    or deleted (BigFix answers 404 for both), which only an operator can tell (``confirm_revoked``)."""
    old_id = case["old_computer_id"]
    if old is not None:
        last = old.last_report.isoformat() if old.last_report else "none"
        name = case.get("name") or old.name
        return "revoke", f"computer {old_id} {name!r} is still in the console (last report {last})"
    if not master_operator:
        return "revoke", (
            f"BigFix answers 404 for computer {old_id}, but the API user is not a master operator, so that does "
            "not prove it left the console: check it in the console"
        )
    incident = (case.get("compromise") or {}).get("incident") or ALERTS
    return "left_console", (
        f"computer {old_id} left the BigFix console (seen gone at {parse(now).isoformat()}): revoked, or deleted "
        "(BigFix cannot tell them apart); an operator who revoked it confirms with `salt-run iemkey.incident "
        f"name={incident} revoked=True`"
    )


def confirm_revoked(case, now, by, who):
    """A ``left_console`` case an operator confirms revoked."""
    return settle(case, "revoked", f"revocation confirmed by {who} (it had left the console)", now, by)


def unrevoked(case, default_mode):
    """Whether a compromise case ended without its certificate being revoked, and no operator accepted
    that (``accepted``): a review, a dismissal, a delete the incident did not choose."""
    if not case.get("compromise") or case.get("accepted") or case["status"] not in CLOSED_UNREVOKED:
        return False
    if case["status"] in ("deleted", "gone") and mode(case, default_mode) == "delete":
        return False  # the incident (or iemkey:cleanup:compromised) chose deleting over revoking
    return True


def reopened_by(case, compromise, now, by):
    """A case a compromise now covers. Open ones become compromise cases (a pending one will be
    listed to revoke, not deleted). One iemkey already deleted goes back to review: BigFix hides
    deleted computers, so its certificate was never revoked. None when nothing changes."""
    if case.get("compromise") or case["status"] in ("revoke", "left_console", "revoked", "dismissed", "gone"):
        return None
    marked = {**case, "compromise": compromise}
    if case["status"] == "deleted":
        return settle(
            marked,
            "review",
            f"computer {case['old_computer_id']} was deleted as a routine duplicate before the compromise "
            f"({compromise['incident']}) was on record: its certificate is NOT revoked, and BigFix hides "
            "deleted computers from the console lists (it shows it again if it reports)",
            now,
            by,
        )
    return marked


def give_up(case, outcome, detail, now, give_up_after):
    """A case still pending ``give_up_after`` seconds after the master received it goes to review."""
    waited = (parse(now) - parse(case["received"])).total_seconds()
    if outcome == "pending" and waited > give_up_after:
        return "review", f"{detail}, after {waited:.0f} s (iemkey:cleanup:give_up_after)"
    return outcome, detail


def group_name(incident):
    return f"{GROUP_PREFIX}{incident}"


def console_steps(name):
    """What the operator does in the BigFix console to revoke every computer in the group."""
    return [
        f"In the BigFix console, open Computer Groups and select the group '{name}' "
        "(iemkey keeps it listing exactly the computers to revoke; check `iemkey.report`: group matches)",
        "In the group's computer list, select every computer (Ctrl+A)",
        "Right-click the selection and choose Revoke Certificate, then OK in the confirmation dialog",
        "Run `salt-run iemkey.cleanup`: each computer that has left the console is listed as left_console",
        f"Confirm the revocation (BigFix cannot tell a revoked computer from a deleted one): `salt-run "
        f"iemkey.incident name={name[len(GROUP_PREFIX) :]} revoked=True`",
    ]


def public(case):
    """A case as returns and the report show it (no trail; ``iemkey.history`` has that)."""
    shown = {k: case.get(k) for k in ("minion", "old_computer_id", "new_computer_id", "name", "status", "detail")}
    shown.update(
        rotated_at=case.get("rotated_at"),
        received=case.get("received"),
        checked=case.get("checked"),
        incident=(case.get("compromise") or {}).get("incident"),
    )
    if case.get("accepted"):
        shown["accepted"] = case["accepted"]
    return shown
