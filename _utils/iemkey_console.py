"""
The console clean-up pass: every open clean-up decided with what BigFix shows, one pass at a time
per store (every master sharing a store takes the same lock).

For each open case (``iemkey_cleanup`` decides, this module asks BigFix and acts):

- a **routine** rotation's old computer is deleted once BigFix confirms it is the superseded
  duplicate (``iemkey_cleanup.verdict``), at most ``iemkey:cleanup:max_deletes`` per pass, and only
  on BigFix's own success reply; a 404 means "already gone" only to a master operator;
- a **compromise** rotation's is listed to revoke, in one server based computer group per incident
  (recreated when someone removed it on the BigFix side), until it leaves the console
  (``left_console``), where an operator confirms the revocation;
- what BigFix does not confirm is listed for review; what cannot be decided yet stays pending.

Given what it needs: the master opts, the store, the REST settings (``api()``), how to ask minions
for their current computer ID (``statuses(minions, timeout)``), a cache (the reserved ID property's
id) and the clock. No Salt loader dunders.
"""

import concurrent.futures
import datetime
import json
import logging
import os
import re

try:
    import iemkey_bigfix
    import iemkey_cleanup
    import iemkey_config
    import iemkey_react
except ImportError:
    from saltext.iemkey.utils import iemkey_bigfix, iemkey_cleanup, iemkey_config, iemkey_react

log = logging.getLogger(__name__)

UTC = datetime.timezone.utc
COMPUTER_ID = re.compile(r"[0-9]{1,20}")
KINDS = ("deleted", "gone", "pending", "review", "listed", "revoke", "left_console", "would_delete")


def compromised_mode(opts):
    """``iemkey:cleanup:compromised``: what becomes of a compromise rotation's old computer."""
    value = iemkey_config.section(opts, "cleanup").get("compromised") or "revoke"
    if value not in iemkey_cleanup.MODES:
        raise iemkey_config.Misconfigured(f"iemkey:cleanup:compromised must be revoke or delete, not {value!r}")
    return value


def group_settings(opts):
    conf = iemkey_config.section(opts, "cleanup").get("revoke_group")
    if conf is None:
        conf = {}
    conf = conf if isinstance(conf, dict) else {"enabled": bool(conf)}
    return {**conf, "enabled": conf.get("enabled", True) is not False, "site": conf.get("site") or "master"}


class Budget:
    """The DELETEs one pass may still send (``iemkey:cleanup:max_deletes``)."""

    def __init__(self, limit):
        self.limit, self.left, self.deferred = int(limit), int(limit), 0

    def take(self):
        if self.left <= 0:
            self.deferred += 1
            return False
        self.left -= 1
        return True


class Pass:
    """One clean-up pass (see the module's docstring)."""

    def __init__(self, opts, store, api, statuses, cache, now):
        self.opts, self.store, self.api, self.statuses, self.cache, self.now = opts, store, api, statuses, cache, now

    def setting(self, key):
        return iemkey_config.cleanup(self.opts, key)

    # -- asking -------------------------------------------------------------------------------
    def new_computer_ids(self, cases):
        """Ask the minions whose new computer ID is unknown for their agent's current one."""
        minions = sorted({c["minion"] for c in cases if not c.get("new_computer_id")})
        if not minions:
            return {}
        found = {}
        for minion, status in (self.statuses(minions, self.setting("minion_timeout")) or {}).items():
            computer_id = str(status.get("computer_id") or "") if isinstance(status, dict) else ""
            if COMPUTER_ID.fullmatch(computer_id):
                found[minion] = computer_id
        return found

    @staticmethod
    def prefetch(client, api, computer_ids):
        """Every computer one pass needs, asked at once: {id: Computer}, without those BigFix does not
        show. ``iemkey:api:lookup: query`` (default): session relevance, one request per chunk of IDs;
        ``get``: ``GET /api/computer/{id}`` each, ``iemkey:api:concurrency`` at a time."""
        if not computer_ids:
            return {}
        if api["lookup"] == "query":
            return client.computers(computer_ids)
        ids = sorted(computer_ids, key=int)
        with concurrent.futures.ThreadPoolExecutor(max_workers=api["concurrency"]) as pool:
            found = dict(zip(ids, pool.map(client.computer, ids), strict=True))
        return {computer_id: computer for computer_id, computer in found.items() if computer is not None}

    # -- deciding -----------------------------------------------------------------------------
    def decide(self, computers, case, master_operator, budget, now, test, latest=None):
        """One open case, judged from what BigFix showed: (the case as it now stands, what to do or
        was done). ``delete`` means its DELETE is still to be sent. ``latest``: the newest computer
        the rotation's new computer led to (``iemkey_cleanup.successor``)."""
        old_id = case["old_computer_id"]
        if case["status"] == "revoke":
            status, detail = iemkey_cleanup.still_to_revoke(case, computers.get(old_id), now, master_operator)
            return iemkey_cleanup.settle(case, status, detail, now, "iemkey.cleanup"), status
        new_id = latest or case.get("new_computer_id")
        new = computers.get(new_id) if new_id else None
        old = computers.get(old_id)
        outcome, detail = iemkey_cleanup.verdict(
            {**case, "new_computer_id": new_id},
            old,
            new,
            now,
            master_operator,
            self.setting("report_margin"),
        )
        if new_id != case.get("new_computer_id"):
            detail += f" (the rotation's new computer {case['new_computer_id']} was itself rotated since)"
        if old is not None:
            case = {**case, "name": old.name}
        if outcome == "superseded":
            if iemkey_cleanup.mode(case, compromised_mode(self.opts)) == "revoke":
                incident = case["compromise"]["incident"]
                detail = (
                    f"{detail}; a compromise rotation ({incident}): revoke its certificate in the console "
                    f"(group '{iemkey_cleanup.group_name(incident)}'); listed until it leaves the console"
                )
                return iemkey_cleanup.settle(case, "revoke", detail, now, "iemkey.cleanup"), "listed"
            if not budget.take():
                detail = f"confirmed, waiting for the next pass: iemkey:cleanup:max_deletes ({budget.limit}) reached"
                return iemkey_cleanup.settle(case, "pending", detail, now, "iemkey.cleanup"), "waiting"
            if test:
                return iemkey_cleanup.settle(case, "deleted", f"would delete: {detail}", now, "test"), "would_delete"
            return {**case, "detail": detail}, "delete"
        if outcome == "pending":
            outcome, detail = iemkey_cleanup.give_up(case, outcome, detail, now, self.setting("give_up_after"))
        return iemkey_cleanup.settle(case, outcome, detail, now, "iemkey.cleanup"), outcome

    @staticmethod
    def delete_all(client, api, confirmed, now, master_operator):
        """Send the DELETEs of the confirmed duplicates, ``iemkey:api:concurrency`` at a time (no bulk
        delete exists): each case settled (deleted; gone, for a master operator's 404; review, for
        another operator's 404; pending with the error)."""

        def one(item):
            key, case = item
            old_id = case["old_computer_id"]
            try:
                answer = client.delete(old_id)
            except iemkey_bigfix.ApiError as exc:
                return (
                    key,
                    iemkey_cleanup.settle(case, "pending", f"DELETE failed: {exc}", now, "iemkey.cleanup"),
                    str(exc),
                )
            if answer == "deleted":
                return (
                    key,
                    iemkey_cleanup.settle(case, "deleted", f"deleted: {case['detail']}", now, "iemkey.cleanup"),
                    None,
                )
            if master_operator:
                detail = f"already gone (DELETE answered 404): {case['detail']}"
                return key, iemkey_cleanup.settle(case, "gone", detail, now, "iemkey.cleanup"), None
            detail = (
                f"DELETE /api/computer/{old_id} answered 404, and the API user is not a master operator: a computer "
                "outside its scope answers 404 too, so iemkey cannot tell whether it is gone"
            )
            return key, iemkey_cleanup.settle(case, "review", detail, now, "iemkey.cleanup"), None

        with concurrent.futures.ThreadPoolExecutor(max_workers=api["concurrency"]) as pool:
            return list(pool.map(one, confirmed))

    # -- the revocation groups ----------------------------------------------------------------
    def sync_groups(self, client, ret, test):
        """Keep one server based computer group per incident listing exactly its computers to revoke,
        and read back what BigFix counts as members (confirmed, not assumed). A group someone removed
        on the BigFix side is made again; a group that could not be read does not match."""
        conf = group_settings(self.opts)
        if not conf["enabled"]:
            return
        site, store = conf["site"], self.store
        wanted = {}
        for case in store.all("cases").values():
            if case.get("status") == "revoke":
                incident = (case.get("compromise") or {}).get("incident") or iemkey_cleanup.ALERTS
                wanted.setdefault(incident, set()).add(case["old_computer_id"])
        groups = store.all("groups")
        for incident in sorted(set(wanted) | set(groups)):
            members = sorted(wanted.get(incident, ()), key=int)
            group = dict(groups.get(incident) or {})
            name = iemkey_cleanup.group_name(incident)
            try:
                if not members:
                    if group.get("id") and not test:
                        client.delete_group(site, group["id"])  # a group, never a computer: nothing left to revoke
                        store.delete("groups", incident)
                    continue
                if test and (members != group.get("members") or not group.get("id")):
                    ret["groups"][incident] = {"name": name, "would_list": members}
                    continue
                seen = self.saved_members(client, site, name, members, group)
            except (iemkey_bigfix.ApiError, ValueError) as exc:
                ret["error"] = ret["error"] or f"the revocation group {name!r}: {exc}"
                log.error("iemkey cleanup: the revocation group %r: %s", name, exc)
                if group and not test:  # what the report shows is the last read: it failed
                    group.update(matches=False, error=str(exc), checked=self.now().isoformat())
                    store.put("groups", incident, group)
                continue
            strangers = sorted(seen - set(members), key=int)
            group.update(seen=sorted(seen, key=int), matches=seen == set(members), checked=self.now().isoformat())
            group.pop("error", None)
            if strangers:
                log.warning(
                    "iemkey cleanup: BigFix counts computers %s in the group %r that iemkey did not list: "
                    "do not revoke from that group until it matches (iemkey:cleanup:revoke_group:property_id?)",
                    ", ".join(strangers),
                    name,
                )
            if not test:
                store.put("groups", incident, group)
            ret["groups"][incident] = {k: group.get(k) for k in ("name", "id", "members", "seen", "matches")}

    def saved_members(self, client, site, name, members, group):
        """Save the group when its members changed (or it has no id), have BigFix evaluate it (after a
        save, or while the last read did not match), then read its members back; a group BigFix no
        longer has (404) is made again, once."""
        for attempt in (1, 2):
            try:
                saved = False
                if members != group.get("members") or not group.get("id"):
                    property_id = group_settings(self.opts).get("property_id") or self.cache.get("id_property")
                    if not property_id:
                        property_id = self.cache["id_property"] = client.id_property()
                    group_id = group.get("id") or client.group_id(site, name)
                    group_id = client.save_group(site, name, members, property_id, group_id)
                    group.update(id=group_id, name=name, members=members, saved=self.now().isoformat())
                    saved = True
                if saved or not group.get("matches"):
                    client.refresh_group(site, group["id"])
                return client.group_members(site, group["id"])
            except iemkey_bigfix.ApiError as exc:
                if exc.status != 404 or attempt == 2:
                    raise
                log.warning(
                    "iemkey cleanup: BigFix has no revocation group %r (id %s) any more: making it again",
                    name,
                    group.get("id"),
                )
                group.pop("id", None)
                group.pop("members", None)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the pass -----------------------------------------------------------------------------
    def mark_compromises(self, cases, now):
        """Cases the master's own records now cover become compromise cases (sticky)."""
        compromises = iemkey_react.compromises_of(self.store, {c["minion"] for c in cases.values()})
        incidents = self.store.all("incidents")
        for key, case in list(cases.items()):
            covered = iemkey_cleanup.covering(case, compromises, incidents)
            if covered and not case.get("compromise"):
                marked = iemkey_cleanup.reopened_by(case, covered, now, "iemkey.cleanup")
                if marked and iemkey_react.write_case(self.store, key, case, marked):
                    cases[key] = marked

    def run(self, keys=None, wait=True, test=False):
        """Decide every open case (or those in ``keys``), one pass at a time on this store.

        {kind: [cases decided so] for kind in KINDS, "groups": {...}, "error": why the REST API failed,
        "busy": True when another pass was running and ``wait`` is False (nothing decided), "deferred":
        confirmed duplicates left for the next pass}."""
        ret = {kind: [] for kind in KINDS}
        ret.update(groups={}, error=None, busy=False, deferred=0)
        store = self.store
        with store.locked("cleanup-pass", blocking=wait) as mine:
            if not mine:
                return {**ret, "busy": True}
            now = self.now()
            found = store.all("cases") if keys is None else {k: store.get("cases", k) for k in keys}
            cases = {k: c for k, c in found.items() if c and c.get("status") in ("pending", "revoke")}
            if not test:
                self.mark_compromises(cases, now)
            if not cases and keys is not None:
                return ret
            try:
                api = self.api()
            except (iemkey_bigfix.ConfigError, iemkey_config.Misconfigured) as exc:
                ret["pending"] = [iemkey_cleanup.public(c) for c in cases.values() if c["status"] == "pending"]
                ret["error"] = f"{exc}: {len(cases)} clean-ups wait for it" if cases else None
                return ret
            budget = Budget(self.setting("max_deletes"))
            asked = self.asked(cases)
            with iemkey_bigfix.session(api) as client:
                try:
                    self.decide_all(client, api, cases, asked, budget, now, test, ret)
                    if keys is None:  # a full pass keeps the groups; the reactor's try of one case does not
                        self.sync_groups(client, ret, test)
                except iemkey_bigfix.ApiError as exc:
                    ret["error"] = str(exc)
                ret["requests"] = client.requests
            ret["deferred"] = budget.deferred
            if budget.deferred:
                log.warning(
                    "iemkey cleanup: %d confirmed duplicates wait for the next pass: iemkey:cleanup:max_deletes is %d",
                    budget.deferred,
                    budget.limit,
                )
        return ret

    def asked(self, cases):
        """{key: (the case as this pass asks BigFix about it, the newest computer it led to)}."""
        found = self.new_computer_ids([c for c in cases.values() if c["status"] == "pending"])
        minions = {c["minion"] for c in cases.values()}
        chains = [c for m in minions for c in self.store.all("cases", prefix=f"{m}:").values()]
        asked = {}
        for key, case in cases.items():
            fresh = found.get(case["minion"])
            if not case.get("new_computer_id") and fresh and fresh != case["old_computer_id"]:
                case = {**case, "new_computer_id": fresh}  # noqa: PLW2901 - the case as this pass asks about it
            asked[key] = (case, iemkey_cleanup.successor(case, chains))
        return asked

    def decide_all(self, client, api, cases, asked, budget, now, test, ret):
        wanted = {c["old_computer_id"] for c, _latest in asked.values()}
        wanted |= {latest for c, latest in asked.values() if latest and c["status"] == "pending"}
        master_operator = client.master_operator() if cases else True
        computers = self.prefetch(client, api, wanted)
        decided, confirmed = [], []
        for key, (case, latest) in sorted(asked.items()):
            after, action = self.decide(computers, case, master_operator, budget, now, test, latest)
            (confirmed if action == "delete" else decided).append((key, after, action))
        deletes = [(k, c) for k, c, _a in confirmed]
        for key, after, error in self.delete_all(client, api, deletes, now, master_operator):
            decided.append((key, after, "pending" if error else after["status"]))
            ret["error"] = ret["error"] or error
        for key, after, action in decided:
            if not test and not iemkey_react.write_case(self.store, key, cases[key], after):
                continue  # an operator dismissed or removed it meanwhile
            ret.get(action, ret["pending"]).append(iemkey_cleanup.public(after))
            if not test:  # test=True changes nothing and says so in its return only
                log_outcome(action, after)


def log_outcome(action, case):
    where = f"computer {case['old_computer_id']} (rotation of minion {case['minion']})"
    if action == "review":
        log.warning(
            "iemkey cleanup: not deleting %s: %s; listed for review (salt-run iemkey.report)", where, case["detail"]
        )
    elif action in ("deleted", "gone"):
        log.warning("iemkey cleanup: removed %s from the BigFix console: %s", where, case["detail"])
    elif action == "listed":
        log.warning("iemkey cleanup: %s is to revoke: %s", where, case["detail"])
    elif action == "left_console":
        log.warning("iemkey cleanup: %s: %s", where, case["detail"])
    else:
        log.info("iemkey cleanup: %s stays %s: %s", where, case["status"], case["detail"])


# -- an operator's explicit actions: remove computers, dismiss a clean-up ---------------------------
def computer_ids(given):
    """The computer IDs an operator named (one, or a list), as strings; ValueError when any is not one
    (then nothing may be sent)."""
    given = list(given) if isinstance(given, (list, tuple)) else [given]
    ids = [str(c).strip() for c in given]
    bad = [c for c in ids if not COMPUTER_ID.fullmatch(c)]
    if bad or not ids:
        raise ValueError(f"computer IDs are numbers, not {bad or given!r}; nothing was sent")
    return ids


def remove(client, computer_ids, store, now):
    """DELETE each computer (``iemkey.remove_computers``): one outcome per computer, ``result`` True
    only on BigFix's own success reply or a master operator's 404; the open clean-ups of the computers
    removed are closed. ``ApiError`` when BigFix cannot say whether the user is a master operator
    (then nothing was sent)."""
    master_operator = client.master_operator()
    results = []
    for computer_id in computer_ids:
        outcome = {"computer_id": computer_id, "result": False, "status": None, "detail": ""}
        try:
            answer = client.delete(computer_id)
        except iemkey_bigfix.ApiError as exc:
            outcome.update(status="error", detail=str(exc))
        else:
            outcome.update(delete_outcome(computer_id, answer, master_operator))
        results.append(outcome)
    close_removed(store, results, now)
    return results


def delete_outcome(computer_id, answer, master_operator):
    """What one DELETE's answer means: deleted on ``ok``; a 404 is ``not found`` (nothing was there)
    only for a master operator, for whom every computer is in scope."""
    if answer == "deleted":
        return {"result": True, "status": "deleted", "detail": "deleted (BigFix answered ok)"}
    if master_operator:
        detail = (
            f"not found: BigFix has no computer {computer_id}; nothing was deleted (already removed, or a mistyped ID?)"
        )
        return {"result": True, "status": "not found", "detail": detail}
    detail = (
        f"BigFix answered 404 for computer {computer_id}, and the API user is not a master operator: a computer "
        "outside its scope answers 404 too; nothing is known deleted"
    )
    return {"result": False, "status": "unknown", "detail": detail}


def close_removed(store, results, now):
    """Close the open clean-ups of the computers an operator removed (or found gone)."""
    closing = {r["computer_id"]: r["status"] for r in results if r["result"]}
    for key, case in store.all("cases").items():
        status = closing.get(case["old_computer_id"])
        if status and case["status"] in iemkey_cleanup.OPEN:
            outcome, detail = ("deleted", "deleted by an operator") if status == "deleted" else ("gone", "not found")
            after = iemkey_cleanup.settle(case, outcome, detail, now, "iemkey.remove_computers")
            iemkey_react.write_case(store, key, case, after)


def dismiss(store, computer_id, now, incident_of):
    """Close the open clean-ups of ``computer_id`` without deleting anything (``iemkey.cleanup
    dismiss=``): the cases closed. A compromise one counts as not revoked until an operator accepts
    it (``incident_of(case)`` names the incident the warning points to)."""
    dropped = []
    for key, case in store.all("cases").items():
        if case["old_computer_id"] == computer_id and case["status"] in iemkey_cleanup.OPEN:
            after = iemkey_cleanup.settle(case, "dismissed", "dismissed by an operator", now, "iemkey.cleanup dismiss")
            if iemkey_react.write_case(store, key, case, after):
                dropped.append(iemkey_cleanup.public(after))
                if case.get("compromise"):
                    log.warning(
                        "iemkey cleanup: an operator dismissed computer %s, a compromise rotation's: it counts as NOT "
                        "revoked (the report stays red) until an operator accepts that: salt-run iemkey.incident "
                        "name=%s accept_unrevoked=True reason='...'",
                        computer_id,
                        incident_of(case),
                    )
    if dropped:
        log.warning("iemkey cleanup: an operator dismissed the clean-up of computer %s", computer_id)
    return dropped


def import_legacy(store, path, now):
    """The clean-ups an earlier iemkey kept in ``<cachedir>/iemkey/cleanup.json`` become cases, once (the file
    is then renamed ``.imported``); an unreadable file is left as it is, and said so."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:
        log.error("iemkey: %s is unreadable (%s); not importing it", path, exc)
        return
    imported = 0
    for status in ("pending", "review"):
        for entry in (document.get(status) or {}).values():
            try:
                case = iemkey_cleanup.new_case(
                    entry["minion"],
                    entry["old_computer_id"],
                    entry.get("new_computer_id"),
                    entry.get("rotated_at"),
                    entry.get("received") or now.isoformat(),
                )
            except (KeyError, TypeError, ValueError):
                continue
            case = iemkey_cleanup.settle(case, status, entry.get("detail") or "imported", now, "import")
            imported += store.add("cases", iemkey_cleanup.key(case["minion"], case["old_computer_id"]), case)
    os.replace(path, path + ".imported")
    log.warning("iemkey: imported %d clean-ups from %s into the iemkey store", imported, path)
