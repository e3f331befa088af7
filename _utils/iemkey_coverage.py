"""
Agents outside Salt: the BigFix computers an incident must reach that no minion covers.

BigFix is asked for every computer that reported within ``iemkey:coverage:active_days`` (session
relevance, in parts of at most ``iemkey:coverage:chunk`` computers: ``iemkey_bigfix.Client.fleet``),
and each is joined with what iemkey knows, by **computer ID**:

- the computer ID each answering minion's agent reports (``iemkey.check``'s status) is that minion's;
- an old or new computer of a clean-up iemkey keeps (any status) is iemkey's;
- a minion that gave no computer ID (it did not answer, erred, or its agent has not registered yet)
  is matched by **name** instead: a computer whose Computer Name is the minion's id, or its first
  label (``web01`` for ``web01.example.com``), case-insensitively, counts as that minion's and is
  listed under ``matched_by_name``, so that the operator sees which were matched so loosely.

Every other computer is **outside Salt**: its key is rotated by salt-ssh or by hand (IBM technote
1670787), not by iemkey. An API user who is not a master operator sees only the computers in its
scope: the answer says so (``complete: False``). A relevance error (BigFix answers it with HTTP 200)
is an error, never "no computers".

``iemkey:coverage`` (master config):

================  ==========  =================================================================
key               default     meaning
================  ==========  =================================================================
``active_days``   ``30``      a computer that reported within this many days counts (1 to 3650)
``chunk``         ``5000``    computers per request (100 to 50000); a fleet of N computers is
                              read in ``ceil(N / chunk) + 1`` requests
``list``          ``20``      computers shown in ``salt-run``'s text output (``--out=json``:
                              all of them)
``outside_salt``  ``incident``  whether computers outside Salt make the report fail: ``incident``
                              (while an incident is open or a rotation owed), ``fail`` (always),
                              ``warn`` (never), ``off`` (BigFix is not asked)
================  ==========  =================================================================

Pure: the runner passes the REST client, the settings and what it knows in.
"""

DEFAULTS = {"active_days": 30, "chunk": 5000, "list": 20, "outside_salt": "incident"}
BOUNDS = {"active_days": (1, 3650), "chunk": (100, 50000), "list": (0, 100000)}
POLICIES = ("incident", "fail", "warn", "off")
HOW = (
    "rotate them over salt-ssh from the master (salt-run iemkey.ssh tgt='<hosts>' since=...: it records their "
    "clean-up; docs: Agents outside Salt) or by hand (IBM technote 1670787: delete KeyStorage, restart the agent, "
    "then revoke or remove the old computer)"
)


def settings(section):
    """``iemkey:coverage`` with its defaults, checked; ValueError naming the setting that is wrong."""
    section = section if isinstance(section, dict) else {}
    conf = {**DEFAULTS, **{k: v for k, v in section.items() if v not in (None, "")}}
    for key, (low, high) in BOUNDS.items():
        value = conf[key]
        if isinstance(value, bool) or not isinstance(value, (int, float, str)) or not str(value).strip().isdigit():
            raise ValueError(f"iemkey:coverage:{key} must be a whole number, not {value!r}")
        conf[key] = int(str(value).strip())
        if not low <= conf[key] <= high:
            raise ValueError(f"iemkey:coverage:{key} must be between {low} and {high}, not {value!r}")
    if conf["outside_salt"] not in POLICIES:
        raise ValueError(
            f"iemkey:coverage:outside_salt must be one of {', '.join(POLICIES)}, not {conf['outside_salt']!r}"
        )
    return conf


def wanted(policy, asked, whole_fleet, api):
    """Whether the report asks BigFix: never under policy ``off`` or when ``asked`` is False, always when
    it is True, by default for a report on the whole fleet where the REST API (``api``) is set up."""
    if asked is False or policy == "off":
        return False
    return asked is True or bool(whole_fleet and api)


def known_ids(minions, cases):
    """The computer IDs iemkey accounts for: the minions' agents' (``report["minions"]``) and every
    clean-up's old and new computer."""
    known = {str(v["computer_id"]) for v in minions.values() if v.get("computer_id")}
    for case in cases:
        known.update(str(case[k]) for k in ("old_computer_id", "new_computer_id") if case.get(k))
    return known


def unidentified(minions):
    """The minions that gave no computer ID (no answer, an error, an agent not registered yet), except
    those without a BigFix agent."""
    return sorted(m for m, v in minions.items() if not v.get("computer_id") and not v.get("no_agent"))


def _names(minions):
    """{lower-case name: minion}: each minion's id, and its first label where no other minion has it."""
    names = {}
    for minion in minions:
        names[minion.lower()] = minion
    for minion in minions:
        names.setdefault(minion.split(".", 1)[0].lower(), minion)
    return names


def outside(computers, known, unidentified_minions):
    """Join ``computers`` (``iemkey_bigfix.Computer``s, any iterable: read once) with what iemkey knows:
    (how many were read, the computers outside Salt sorted by ID, {minion: computer IDs matched by
    name}). Only the computers outside Salt are kept."""
    names = _names(unidentified_minions)
    found, matched, read = [], {}, 0
    for computer in computers:
        read += 1
        if computer.id in known:
            continue
        name = (computer.name or "").lower()
        minion = names.get(name) or names.get(name.split(".", 1)[0]) if name else None
        if minion:
            matched.setdefault(minion, []).append(computer.id)
            continue
        found.append(
            {
                "computer_id": computer.id,
                "name": computer.name,
                "last_report": computer.last_report.isoformat() if computer.last_report else None,
                "agent_type": computer.agent_type,
            }
        )
    found.sort(key=lambda c: int(c["computer_id"]))
    return read, found, {m: sorted(ids, key=int) for m, ids in sorted(matched.items())}


def open_incidents(incidents, owed):
    """What makes an incident open for ``outside_salt: incident``: the declared incidents neither
    closed nor withdrawn, and ``alerts`` while a rotation is owed."""
    names = sorted(n for n, r in incidents.items() if not r.get("until") and not r.get("withdrawn"))
    return names + (["alerts"] if owed and "alerts" not in names else [])


def survey(client, conf, minions, cases, master_operator):
    """Ask BigFix (``client``: ``iemkey_bigfix.Client``) and join with the report's ``minions`` and the
    clean-ups' ``cases``: the report's ``outside_salt``."""
    known, unidentified_minions = known_ids(minions, cases), unidentified(minions)
    counted, parts, computers = client.fleet(conf["active_days"], conf["chunk"])
    read, found, matched = outside(computers, known, unidentified_minions)
    ret = {
        "count": len(found),
        "computers": found,
        "active_days": conf["active_days"],
        "reported": read,
        "counted": counted,
        "requests": parts + 1,
        "matched_by_name": matched,
        "complete": bool(master_operator),
        "how": HOW,
    }
    if not master_operator:
        ret["scope"] = (
            "the API user is not a master operator: BigFix showed only the computers in its scope, and "
            "computers outside it are not listed (a master operator sees all)"
        )
    return ret


def failing(ret, policy, incidents):
    """Whether ``outside_salt`` (the report's) makes the report fail under ``policy``: computers outside
    Salt, or a BigFix that could not say, under ``fail``, or under ``incident`` while one is open."""
    if policy in ("off", "warn") or not ret:
        return False
    return bool(ret.get("error") or ret.get("count")) and (policy == "fail" or bool(incidents))


def shown(ret, limit):
    """``ret`` with only the first ``limit`` computers (salt-run's text output), saying how many more."""
    if ret.get("computers") is None or len(ret["computers"]) <= limit:
        return ret
    more = len(ret["computers"]) - limit
    return {**ret, "computers": ret["computers"][:limit], "more": f"{more} more: --out=json lists all of them"}
