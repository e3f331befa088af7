"""
What ``salt-run iemkey.report`` (and ``iemkey.cleanup``, ``iemkey.history``) say, from what the master
knows: the minions' ``iemkey.check`` answers, the owed rotations, the open console clean-ups and what
the operator must still do about stolen keys (``revocation``); the summary line and the exit code.

Pure: the runner passes the store, the answers and the settings in, and sets Salt's retcode.
"""

import time

try:  # _utils/, synced with saltutil.sync_all (formula install)
    import iemkey_cleanup
    import iemkey_incidents
    import iemkey_owed
except ImportError:  # pip install (Salt extension)
    from saltext.iemkey.utils import iemkey_cleanup, iemkey_incidents, iemkey_owed

# what the report shows of each minion's iemkey.check answer, and of its status
CHECK_KEYS = ("compliant", "basis", "key_time", "stale", "reason", "no_agent")
STATUS_KEYS = ("computer_id", "last_rotated", "agent_running", "pending")


def gather(client, tgt, tgt_type, since, timeout):
    """Every answer to ``iemkey.check since`` that arrives within ``timeout`` seconds in all, from
    Salt's ``LocalClient`` (``client``): {minion: full return}."""
    answers = {}
    deadline = time.monotonic() + timeout
    for reply in client.cmd_iter_no_block(
        tgt, "iemkey.check", [since], tgt_type=tgt_type, timeout=timeout, full_return=True
    ):
        if reply:
            answers.update(reply)
        if time.monotonic() >= deadline:
            break
        if not reply:
            time.sleep(0.05)
    return answers


def tally(since, answers, expected, timeout):
    """The report's minions from their answers: (report, the minions without an agent that must have
    one). A minion that did not answer is unreachable; an answer that is no verdict is an error."""
    ret = {"since": since, "compliant": [], "noncompliant": [], "no_agent": [], "errors": []}
    ret.update(unreachable=sorted(set(expected) - set(answers)), minions={})
    required = []
    for minion, reply in sorted(answers.items()):
        verdict = reply.get("ret")
        if not isinstance(verdict, dict) or reply.get("retcode", 0) != 0:
            ret["errors"].append(minion)
            ret["minions"][minion] = {"error": str(verdict).strip()}
            continue
        status = verdict["status"]
        ret["minions"][minion] = {key: verdict.get(key) for key in CHECK_KEYS} | {
            key: status.get(key) for key in STATUS_KEYS
        }
        if not status.get("installed"):
            ret["no_agent"].append(minion)
            if verdict.get("require_agent"):
                required.append(minion)
        elif verdict["compliant"] and not verdict["stale"]:
            ret["compliant"].append(minion)
        else:
            ret["noncompliant"].append(minion)
    for minion in ret["unreachable"]:
        ret["minions"][minion] = {"error": f"no answer within {timeout:g} s"}
    return ret, required


def open_cases(store):
    """The open cases by status, each list sorted by minion then old computer ID."""
    found = {status: [] for status in iemkey_cleanup.OPEN}
    for case in store.all("cases").values():
        if case.get("status") in found:
            found[case["status"]].append(case)
    return {
        status: sorted(cases, key=lambda c: (c["minion"], int(c["old_computer_id"]))) for status, cases in found.items()
    }


def owed_of(store, minions=None):
    """The open owed rotations (of ``minions``), sorted by minion, as the report shows them."""
    return [
        iemkey_owed.public(record)
        for minion, record in sorted(store.all("owed").items())
        if record.get("state") in iemkey_owed.OPEN and (minions is None or minion in minions)
    ]


def revocation(store, mode):
    """What the operator must still do about stolen keys, by incident: the computers to revoke (and the
    group and console steps), those that left the console unconfirmed, and those that ended without a
    revocation nobody accepted. ``mode``: ``iemkey:cleanup:compromised``."""
    groups = store.all("groups")
    by_incident = {}
    for case in store.all("cases").values():
        incident = iemkey_incidents.incident_of(case)
        if incident and (
            case["status"] in ("revoke", "left_console", "review") or iemkey_cleanup.unrevoked(case, mode)
        ):
            by_incident.setdefault(incident, []).append(case)
    return {
        incident: _revocation_entry(incident, cases, groups.get(incident) or {}, mode)
        for incident, cases in sorted(by_incident.items())
    }


def _revocation_entry(incident, cases, group, mode):
    ids = {
        status: sorted((c["old_computer_id"] for c in cases if c["status"] == status), key=int)
        for status in ("revoke", "left_console")
    }
    unrevoked = [
        c["old_computer_id"]
        for c in iemkey_incidents.unrevoked(dict(enumerate(cases)), mode)
        if c["status"] not in ("revoke", "left_console")
    ]
    name = iemkey_cleanup.group_name(incident)
    entry = {"computers": ids["revoke"], "left_console": ids["left_console"], "unrevoked": unrevoked}
    if ids["revoke"]:
        entry["group"] = {
            "name": name,
            "id": group.get("id"),
            "matches": bool(group.get("matches")) and group.get("members") == ids["revoke"],
            "error": group.get("error"),
        }
        entry["console_steps"] = iemkey_cleanup.console_steps(name)
    if ids["left_console"]:
        entry["confirm"] = f"salt-run iemkey.incident name={incident} revoked=True (once you revoked them)"
    if unrevoked:
        entry["accept"] = f"salt-run iemkey.incident name={incident} accept_unrevoked=True reason='...'"
    return entry


def verdict(ret, cases, required, outside_failing=False):
    """The report's summary and exit code (``retcode``): red for any minion noncompliant, unreachable,
    erring or required to have an agent it lacks, any rotation owed, any stolen key not known revoked,
    and agents outside Salt where ``iemkey:coverage:outside_salt`` says they fail it
    (``outside_failing``)."""
    unsafe = {i: r for i, r in ret["revocation"].items() if r["computers"] or r["left_console"] or r["unrevoked"]}
    failing = ret["noncompliant"] + ret["unreachable"] + ret["errors"] + required + ret["owed"] + list(unsafe)
    failing += ["outside_salt"] if outside_failing else []
    ssh = ret.get("ssh")
    failing += [h for key in ("would_rotate", "failed", "unreachable") for h in ssh[key]] if ssh else []
    c = {k: len(v) for k, v in cases.items()}
    ret["summary"] = (
        f"keys since {ret['since']}: {len(ret['compliant'])} compliant, {len(ret['noncompliant'])} noncompliant, "
        f"{len(ret['unreachable'])} unreachable, {len(ret['no_agent'])} without a BigFix agent"
        f"{f' ({len(required)} required to have one)' if required else ''}, {len(ret['errors'])} errors; "
        f"{len(ret['owed'])} rotations owed; console clean-ups: {c['pending']} pending, {c['review']} for review, "
        f"{c['revoke']} to revoke, {c['left_console']} left the console unconfirmed"
    )
    if ret["owed"]:
        states = sorted({o["state"] for o in ret["owed"]})
        ret["summary"] += f" (owed: {', '.join(states)}: see owed)"
    if unsafe:
        ret["summary"] += f"; stolen keys not known revoked in {', '.join(unsafe)}: see revocation"
    if ssh:
        ret["summary"] += (
            f"; salt-ssh hosts: {len(ssh['compliant'])} compliant, {len(ssh['would_rotate'])} noncompliant, "
            f"{len(ssh['unreachable'])} unreachable, {len(ssh['no_agent'])} without a BigFix agent, "
            f"{len(ssh['failed'])} errors (see ssh)"
        )
    outside = ret.get("outside_salt")
    if outside and outside.get("error"):
        ret["summary"] += "; agents outside Salt: unknown (see outside_salt)"
    elif outside:
        scope = "" if outside["complete"] else " in the API user's scope"
        ret["summary"] += f"; {outside['count']} BigFix computers{scope} outside Salt (see outside_salt)"
    waiting = sum("max_deletes" in (c.get("detail") or "") for c in cases["pending"])
    if waiting:
        ret["summary"] += f"; {waiting} confirmed duplicates wait for the next pass (iemkey:cleanup:max_deletes)"
    ret["retcode"] = 1 if failing else 0
    return ret


def cleanup_outcome(outcomes, cases, test):
    """What ``iemkey.cleanup`` answers for one pass's ``outcomes`` (``iemkey_console.Pass.run``) and the
    open cases after it."""
    if test:
        ret = {
            "test": True,
            "would_delete": outcomes["would_delete"],
            "would_list_to_revoke": outcomes["listed"],
            "would_find_left_console": outcomes["left_console"],
            "would_review": outcomes["review"],
            "pending": outcomes["pending"],
            "groups": outcomes["groups"],
        }
        ret["summary"] = (
            f"test: would delete {len(ret['would_delete'])}, list {len(ret['would_list_to_revoke'])} to revoke, "
            f"find {len(ret['would_find_left_console'])} gone from the console, list {len(ret['would_review'])} "
            "for review; nothing was changed"
        )
    else:
        ret = {kind: outcomes[kind] for kind in ("deleted", "gone", "left_console")}
        for status in ("pending", "review", "revoke"):
            ret[status] = [iemkey_cleanup.public(c) for c in cases[status]]
        ret["groups"] = outcomes["groups"]
        ret["summary"] = (
            f"{len(ret['deleted'])} deleted, {len(ret['gone'])} already gone, {len(ret['left_console'])} left the "
            f"console (confirm their revocation), {len(ret['pending'])} pending, {len(ret['review'])} for review, "
            f"{len(ret['revoke'])} to revoke"
        )
        if outcomes["deferred"]:
            ret["summary"] += f" ({outcomes['deferred']} wait for the next pass: iemkey:cleanup:max_deletes)"
    if outcomes["busy"]:
        ret["summary"] = "another iemkey clean-up is running; nothing was decided by this one"
    return ret


def history(store, minion=None, computer=None):
    """The audit trail (``iemkey.history``): per old computer, its clean-up's trail; per minion, each
    owed rotation's delivery and what settled it. ``minion``, ``computer``: only those."""
    cases = store.all("cases").values()
    rotations = [*store.all("settled").values(), *store.all("owed").values()]
    computer = None if computer in (None, "") else str(computer)
    found = [
        {**iemkey_cleanup.public(case), "compromise": case.get("compromise"), "trail": case.get("trail") or []}
        for case in sorted(cases, key=lambda c: (c["received"], c["minion"]))
        if (minion in (None, "") or case["minion"] == minion)
        and (computer is None or computer in (case["old_computer_id"], case.get("new_computer_id")))
    ]
    owed_trail = [
        {k: r.get(k) for k in ("minion", "state", "since", "at", "closed", "detail", "rotation", "signals", "trail")}
        for r in sorted(rotations, key=lambda r: (r["minion"], r["at"]))
        if (minion in (None, "") or r["minion"] == minion)
        and (computer is None or computer == (r.get("rotation") or {}).get("old_computer_id"))
    ]
    return {"computers": found, "count": len(found), "rotations": owed_trail}
