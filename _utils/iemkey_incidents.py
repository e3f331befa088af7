"""
Incidents an operator declares, and the operator's word where BigFix cannot tell.

- **declare**: rotations of the targeted minions that the master receives from ``since`` on are
  compromise rotations (their old computers are revoked, not deleted), and each targeted minion is
  owed a rotation made after ``since`` (``iemkey_owed``), settled at once where the master already
  received one;
- **withdraw**: a declaration made by mistake stops covering anything (recorded, never erased): its
  open clean-ups are decided again as routine ones, its owed rotations no longer owed;
- **close**: rotations received from now on are no longer covered; refused while anything of the
  incident is unrevoked, unless an operator accepted that;
- **confirm revoked**: BigFix's REST API cannot tell a revoked computer from a deleted one, so a
  computer listed to revoke that left the console stays ``left_console`` (and the report red) until
  an operator who revoked it confirms, naming exactly the computers confirmed;
- **accept unrevoked**: a compromise clean-up that ended without a revocation (review, dismissal, a
  delete) keeps the report red until an operator records that decision, with the reason.

Every step is on the trail (``iemkey.history``) with when and who. Given the store, the decisions
(``iemkey_react.Reactions``), the clock and the operator's name; no Salt loader dunders.
"""

import logging

try:
    import iemkey_cleanup
    import iemkey_errors
    import iemkey_owed
    import iemkey_react
except ImportError:
    from saltext.iemkey.utils import iemkey_cleanup, iemkey_errors, iemkey_owed, iemkey_react

log = logging.getLogger(__name__)


class Refused(iemkey_errors.IemkeyError):
    """What the operator asked cannot be done; nothing was changed. The message says why."""


def incident_of(case):
    return (case.get("compromise") or {}).get("incident")


def cases_of(store, name):
    """{key: case} of the compromise clean-ups of incident ``name`` (``alerts``: those no declared
    incident covers)."""
    return {k: c for k, c in store.all("cases").items() if incident_of(c) == name}


def unrevoked(cases, mode):
    """The cases among ``cases`` whose stolen key is not known revoked and that no operator accepted:
    open (to revoke, left the console, for review) or closed without a revocation."""
    found = []
    for case in cases.values():
        if case.get("accepted"):
            continue
        if case["status"] in ("revoke", "left_console", "review") or iemkey_cleanup.unrevoked(case, mode):
            found.append(case)
    return sorted(found, key=lambda c: int(c["old_computer_id"]))


def rotated_since(cases, minion, began):
    """The rotation the master already received from ``minion`` that came after ``began``: its case."""
    for case in cases:
        if case["minion"] != minion:
            continue
        sig = {"since": began.isoformat(), "received_after": began.isoformat()}
        if iemkey_owed.settled_by(sig, case["rotated_at"], case["received"]):
            return case
    return None


def new(began, tgt, tgt_type, name, cleanup_mode, targets, now, who):
    """The record of an incident about to be declared; Refused for a cleanup mode other than
    ``revoke`` or ``delete``, a beginning in the future or a target that matches no minion (the
    minions are asked of ``targets(tgt, tgt_type)`` once the rest is checked)."""
    if cleanup_mode not in (None, "") and cleanup_mode not in iemkey_cleanup.MODES:
        raise Refused(f"cleanup must be revoke or delete, not {cleanup_mode!r}")
    if began > now:
        raise Refused(f"since {began.isoformat()} is in the future")
    minions = targets(tgt, tgt_type)
    if not minions:
        raise Refused(f"the target {tgt!r} ({tgt_type}) matches no accepted minion")
    return {
        "name": str(name) if name not in (None, "") else f"incident-{began:%Y%m%dT%H%M%SZ}",
        "since": began.isoformat(),
        "until": None,
        "tgt": tgt,
        "tgt_type": tgt_type,
        "minions": minions,
        "declared": now.isoformat(),
        "by": who,
        "cleanup": cleanup_mode or None,
    }


def declare(store, reactions, record, deliver, now, who, default_mode="revoke"):
    """Record the incident ``record`` (name, since, minions, ...): (covered cases, owed decisions).
    ``default_mode``: ``iemkey:cleanup:compromised``, for an incident that names no cleanup mode."""
    name = record["name"]
    existing = store.get("incidents", name)
    if existing and not existing.get("withdrawn"):
        raise Refused(f"incident {name!r} is already declared (since {existing['since']}); withdraw it first")
    store.put("incidents", name, record)
    minions = set(record["minions"])
    covered = reactions.cover(minions, f"iemkey.incident {name} ({who})")
    began = iemkey_owed.parse(record["since"])
    by = f"iemkey.incident {name} ({who})"
    cases = [c for c in store.all("cases").values() if c["minion"] in minions]
    decided = {"owed": [], "settled": [], "held": []}
    for minion in sorted(minions):
        sig = iemkey_owed.signal("incident", began, now, f"incident:{name}", f"incident {name}", True)
        done = rotated_since(cases, minion, began)
        if done:
            settle_now(store, minion, sig, done, now, by)
            decided["settled"].append(minion)
            continue
        outcome = reactions.owe(minion, sig, None, by)
        if not deliver:
            hold(store, minion, now, by)
            decided["held"].append(minion)
        elif outcome.get("deliver"):
            decided["owed"].append(minion)
    log.warning(
        "iemkey: incident %s declared by %s: rotations of %d minions received since %s are compromise rotations "
        "(%s); %d clean-ups re-decided; %d rotations owed, %d already rotated since, %d held",
        name,
        who,
        len(minions),
        record["since"],
        record["cleanup"] or default_mode,
        len(covered),
        len(decided["owed"]),
        len(decided["settled"]),
        len(decided["held"]),
    )
    return covered, decided


def settle_now(store, minion, sig, case, now, by):
    """An owed rotation the master's records already settle (a rotation received after ``since``)."""
    record = iemkey_owed.new(minion, sig, now, by)
    rotation = {k: case[k] for k in ("old_computer_id", "rotated_at", "received")}
    detail = (
        f"settled by the rotation at {case['rotated_at']} (old computer {case['old_computer_id']}), already received"
    )
    closed = iemkey_owed.closed(record, "settled", detail, now, by, rotation)
    store.put("settled", iemkey_owed.settled_key(closed, now), closed)


def hold(store, minion, now, by):
    detail = "declared with deliver=False: the operator's own rollout (highstate, iemkey.orch.rotate) rotates it"
    with store.update("owed", minion) as record:
        if record and record["state"] == "pending":
            record.update(iemkey_owed.move(record, "held", detail, now, by))


def withdraw(store, name, reason, now, who):
    """Withdraw incident ``name``: {"cases": re-decided, "owed": no longer owed}."""
    by = f"iemkey.incident withdraw ({who})"
    with store.update("incidents", name) as record:
        if not record:
            raise Refused(f"no incident {name!r} on record")
        if record.get("withdrawn"):
            raise Refused(f"incident {name!r} was withdrawn at {record['withdrawn']['at']} already")
        record["withdrawn"] = {"at": now.isoformat(), "by": who, "reason": reason}
    incidents = store.all("incidents")
    changed = []
    for key, case in cases_of(store, name).items():
        if case["status"] not in ("pending", "revoke", "left_console", "review"):
            continue  # closed cases stay as they ended, on the trail
        compromises = iemkey_react.compromises_of(store, {case["minion"]})
        covered = iemkey_cleanup.covering({**case, "compromise": None}, compromises, incidents)
        detail = f"incident {name} withdrawn by {who} ({reason}): decided again"
        status = case["status"] if covered else "pending"
        after = iemkey_cleanup.settle({**case, "compromise": covered}, status, detail, now, by)
        if iemkey_react.write_case(store, key, case, after):
            changed.append(iemkey_cleanup.public(after))
    released = []
    for minion in record["minions"]:
        closed = None
        with store.update("owed", minion) as owed:
            if not owed:
                continue
            left = [s for s in owed["signals"] if s["id"] != f"incident:{name}"]
            if len(left) == len(owed["signals"]):
                continue
            if left:
                owed.update(signals=left, since=min((s["since"] for s in left), key=iemkey_owed.parse))
                continue
            closed = iemkey_owed.closed(owed, "withdrawn", f"incident {name} withdrawn by {who}", now, by)
            store.put("settled", iemkey_owed.settled_key(closed, now), closed)  # the trail first
            owed.clear()
        if closed:
            released.append(minion)
    log.warning(
        "iemkey: incident %s withdrawn by %s (%s): %d clean-ups decided again, %d rotations no longer owed",
        name,
        who,
        reason,
        len(changed),
        len(released),
    )
    return {"cases": changed, "owed": released}


def confirm_revoked(store, name, now, who):
    """An operator's confirmation that the computers of ``name`` that left the console were revoked:
    the computers confirmed."""
    confirmed = []
    for key, case in cases_of(store, name).items():
        if case["status"] != "left_console":
            continue
        after = iemkey_cleanup.confirm_revoked(case, now, f"iemkey.incident revoked=True ({who})", who)
        if iemkey_react.write_case(store, key, case, after):
            confirmed.append(case["old_computer_id"])
    if not confirmed:
        left = sorted(c["old_computer_id"] for c in cases_of(store, name).values() if c["status"] == "revoke")
        still = f"; still in the console, to revoke: {', '.join(left)}" if left else ""
        raise Refused(f"no computer of incident {name!r} has left the console for iemkey to confirm{still}")
    confirmed.sort(key=int)
    log.warning("iemkey: %s confirmed the revocation of computers %s (incident %s)", who, ", ".join(confirmed), name)
    return confirmed


def accept_unrevoked(store, name, reason, mode, now, who):
    """An operator's recorded decision that the compromise clean-ups of ``name`` that ended (or end)
    without a revocation are accepted so: the computers it names. Ones still to revoke, or that left
    the console unconfirmed, are not covered by it (they can still be revoked)."""
    if not reason:
        raise Refused("accept_unrevoked=True needs reason='...': the decision names the risk it accepts")
    accepted = []
    decision = {"at": now.isoformat(), "by": who, "reason": str(reason)[:500]}
    for key, case in cases_of(store, name).items():
        if case.get("accepted") or not (case["status"] == "review" or iemkey_cleanup.unrevoked(case, mode)):
            continue
        status = "dismissed" if case["status"] == "review" else case["status"]
        detail = f"not revoked: accepted by {who} ({decision['reason']})"
        after = iemkey_cleanup.settle({**case, "accepted": decision}, status, detail, now, f"iemkey.incident ({who})")
        if iemkey_react.write_case(store, key, case, after):
            accepted.append(case["old_computer_id"])
    if not accepted:
        raise Refused(f"incident {name!r} has no compromise clean-up that ended without a revocation to accept")
    accepted.sort(key=int)
    with store.update("incidents", name) as record:
        if record:
            record.setdefault("accepted_unrevoked", []).append({**decision, "computers": accepted})
    log.warning(
        "iemkey: %s accepted computers %s of incident %s as not revoked: %s",
        who,
        ", ".join(accepted),
        name,
        decision["reason"],
    )
    return accepted


def close(store, name, mode, now, who):
    """Close incident ``name``: rotations received from now on are no longer covered. Refused (the
    computers not known revoked are returned, nothing changes) while any of its compromise clean-ups
    is unrevoked and not accepted so: (the record, the unrevoked cases)."""
    record = store.get("incidents", name)
    if not record:
        raise Refused(f"no incident {name!r} on record")
    unsafe = unrevoked(cases_of(store, name), mode)
    if unsafe:
        return record, unsafe
    with store.update("incidents", name) as stored:
        stored.update(until=now.isoformat(), closed_by=who)
    log.warning("iemkey: incident %s closed by %s", name, who)
    return store.get("incidents", name), []


def cancel_owed(store, minion, reason, now, who):
    """An operator closes the rotation owed to ``minion`` without a rotation (``iemkey.owed
    cancel=True``); its trail moves to bank ``settled`` first, so nothing is lost if this stops half-way."""
    with store.update("owed", minion) as record:
        if not record:
            raise Refused(f"no rotation is owed to {minion!r}")
        detail = f"cancelled by {who}: {reason}"
        closed = iemkey_owed.closed(record, "cancelled", detail, now, f"iemkey.owed ({who})")
        store.put("settled", iemkey_owed.settled_key(closed, now), closed)  # the trail first
        record.clear()
    log.warning("iemkey: %s cancelled the rotation owed to %s: %s", who, minion, reason)


def retry_owed(store, minion, now, who):
    """Deliver the rotation owed to ``minion`` again now (``iemkey.owed retry=True``); a ``review`` one
    starts counting attempts again."""
    with store.update("owed", minion) as record:
        if not record:
            raise Refused(f"no rotation is owed to {minion!r}")
        record.update(iemkey_owed.retry_now(record, now, f"iemkey.owed ({who})", f"retried by {who}"))


def open_incident(store, name):
    """Incident ``name``'s record, refused unless it is declared, not withdrawn and not closed."""
    record = store.get("incidents", name)
    if not record or record.get("withdrawn"):
        raise Refused(f"no incident {name!r} on record (declare it with salt-run iemkey.incident)")
    if record.get("until"):
        raise Refused(f"incident {name!r} was closed at {record['until']}: it covers no new rotation")
    return record


def add_hosts(store, name, hosts, now, who):
    """Add ``hosts`` (salt-ssh hosts, which no minion target matched when it was declared) to the
    minions of open incident ``name``: their rotations it covers are compromise rotations."""
    open_incident(store, name)
    with store.update("incidents", name) as record:
        added = sorted(set(hosts) - set(record.get("minions") or ()))
        if added:
            record["minions"] = sorted({*record.get("minions", ()), *added})
            trail = [*record.get("added", []), {"at": now.isoformat(), "by": who, "hosts": added}]
            record["added"] = trail[-100:]
    if added:
        log.warning("iemkey: %s added salt-ssh hosts %s to incident %s", who, ", ".join(added), name)
    return added
