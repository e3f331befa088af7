"""
The iemkey engine: the master's decisions on iemkey events, made off Salt's event loop, and the
delivery of every rotation the master owes until it is done.

Configured as a Salt engine on the master (``engines: [{iemkey: {}}]``, ``_engines/iemkey.py``), it
runs in a process of its own, in three threads:

- **the reader** drains the master bus as fast as events come and keeps only iemkey's (a bus
  subscriber that falls behind is dropped by Salt 3008's publisher; this one only reads);
- **the decider** verifies each signed event once (``iemkey_gate``), decides it (``iemkey_react``),
  answers ``salt/minion/<id>/start``, ``salt/auth`` and job returns for the owed rotations, and every
  ``iemkey:delivery:interval`` seconds passes over the owed rotations (``iemkey_owed``): deliveries
  due, probes (``saltutil.find_job``) of deliveries nobody answered, minions that went away;
- **the publisher** publishes the rotations decided within ``batch_window`` seconds as one job
  (``iemkey_delivery``) and announces each decision (``iemkey/reactor/decided``) with its job id.

A store that cannot be reached (a shared Redis restarting) makes the decider wait and try the same
event again; nothing read from the bus is dropped meanwhile, and no other part of the master waits.
The reactor files (``salt://iemkey/reactor/*.sls``) do nothing where this engine runs; on a master
without it they still decide each event in the reactor, as before, without redelivery (``reaction``).
"""

import collections
import datetime
import fnmatch
import logging
import threading
import time

try:
    import iemkey_config
    import iemkey_delivery
    import iemkey_gate
    import iemkey_owed
    import iemkey_react
    import iemkey_store
except ImportError:
    from saltext.iemkey.utils import (
        iemkey_config,
        iemkey_delivery,
        iemkey_gate,
        iemkey_owed,
        iemkey_react,
        iemkey_store,
    )

log = logging.getLogger(__name__)

UTC = datetime.timezone.utc
TAGS = ("iemkey/compromised", "iemkey/rotated", "salt/netapi/hook/iemkey/compromised")
BACK = ("salt/minion/*/start", "salt/auth")
BUSY_PASS_EVERY = 30  # seconds between two passes while events wait to be decided
INBOX_MAX = 500_000  # events waiting for the decider; beyond that they are dropped, counted and logged
BACK_EVERY = 10  # seconds: a minion's start or auth events redeliver at most this often
BY = "iemkey engine"
UNSETTLED = "its job returned, but no signed iemkey/rotated settled the owed rotation"


def configured(opts):
    """Whether the master config runs the iemkey engine (``engines: [{iemkey: ...}]`` or ``- iemkey``)."""
    engines = opts.get("engines") or []
    if isinstance(engines, dict):
        engines = [{k: v} for k, v in engines.items()]
    for entry in engines:
        name, conf = next(iter(entry.items())) if isinstance(entry, dict) and entry else (entry, None)
        module = (conf or {}).get("engine_module") if isinstance(conf, dict) else None
        if (module or name) == "iemkey":
            return True
    return False


def now():
    return datetime.datetime.now(UTC)


class Announcer:
    """``iemkey/reactor/decided`` on the master bus, for whoever watches it (``salt-run state.event``,
    a SIEM, the tests). It holds no secret; nothing acts on it."""

    def __init__(self, opts):
        self.opts, self.bus, self.lock = opts, None, threading.Lock()

    def __call__(self, decided):
        import salt.utils.event  # pylint: disable=import-outside-toplevel

        with self.lock:
            try:
                if self.bus is None:
                    self.bus = salt.utils.event.get_master_event(self.opts, self.opts["sock_dir"], listen=False)
                self.bus.fire_event(dict(decided), iemkey_react.DECIDED_TAG)
            except Exception as exc:  # pylint: disable=broad-except
                self.bus = None
                log.debug("iemkey: could not announce a decision: %s", exc)


def event_of(tag, data):
    """What the gate and the decisions read of a bus event (never salt-api's token)."""
    if tag == iemkey_gate.HOOK_TAG:
        event = iemkey_gate.hook_event(data)
    else:
        event = {"id": data.get("id"), "data": data.get("data")}
    event["stamp"] = data.get("_stamp")  # when the master received it: its bus stamps every event
    return event


class Engine:
    """One master's engine (see the module's docstring). ``store``, ``publisher`` and ``announce``
    are given, so that tests and the bench can run it in-process."""

    def __init__(self, opts, store, publisher, announce, resolve=None, clock=now):
        self.opts, self.store, self.publisher, self.announce = opts, store, publisher, announce
        self.clock = clock
        self.gate = iemkey_gate.Gate()
        self.reactions = iemkey_react.Reactions(opts, store, resolve=resolve, now=clock)
        self.inbox = collections.deque()
        self.wake = threading.Condition()
        self.outbox = {}  # minion -> (since, exact, [decisions to announce once published])
        self.out = threading.Condition()
        # published, not yet recorded as delivered (the store was out of reach): recorded, never published again
        self.unrecorded = collections.deque()
        self.running = False
        self.dropped = 0
        # what the engine remembers between passes instead of writing it for every minion each time
        self.probed = {}  # minion -> (jid, when) of the last probe
        self.redelivered = {}  # minion -> (when, jid): an away minion last sent its job again
        self.sending = {}  # minion -> decisions, from taking its batch until its job is recorded
        self.back = {}  # minion -> when its start or auth event last redelivered
        self.last_pass = 0.0

    # -- settings ---------------------------------------------------------------------------------
    def settings(self):
        return iemkey_config.delivery(self.opts)

    # -- the reader -------------------------------------------------------------------------------
    def offer(self, tag, data):
        """The reader's one step: keep an event the engine acts on, cheaply; False for any other."""
        if not (tag in TAGS or tag.startswith("salt/job/") or tag == "salt/auth" or _is_start(tag)):
            return False
        if tag.startswith("salt/job/") and "/ret/" not in tag:
            return False
        with self.wake:
            if len(self.inbox) >= INBOX_MAX:
                self.dropped += 1
                if self.dropped in (1, 10, 100) or self.dropped % 10_000 == 0:
                    log.error(
                        "iemkey engine: %d events dropped: %d wait for the decider (minions send their alerts "
                        "again until they rotate; a webhook dropped here is lost)",
                        self.dropped,
                        len(self.inbox),
                    )
                return False
            self.inbox.append((tag, data))
            self.wake.notify()
        return True

    def read(self, bus):
        """Drain the master bus into the inbox until stopped."""
        while self.running:
            try:
                event = bus.get_event(wait=0.5, full=True, auto_reconnect=True)
            except Exception as exc:  # pylint: disable=broad-except
                log.warning("iemkey engine: reading the master bus failed (%s); reading on", exc)
                time.sleep(0.5)
                continue
            if event and isinstance(event.get("data"), dict):
                self.offer(str(event.get("tag")), event["data"])

    # -- the decider ------------------------------------------------------------------------------
    def decide_loop(self):
        while self.running:
            with self.wake:
                if not self.inbox:
                    self.wake.wait(timeout=0.2)
                item = self.inbox.popleft() if self.inbox else None
            try:
                if item is not None:
                    self.decide(*item)
                self.maybe_pass()
            except iemkey_store.StoreError as exc:
                if item is not None:
                    with self.wake:
                        self.inbox.appendleft(item)  # not decided: the same event again, once the store answers
                log.error("iemkey engine: %s; %d events wait and will be decided once it answers", exc, len(self.inbox))
                time.sleep(1)
            except Exception:  # pylint: disable=broad-except
                log.exception("iemkey engine: deciding %s failed", item[0] if item else "the pass")

    def decide(self, tag, data):
        """Decide one event from the bus."""
        if tag in TAGS:
            self.decide_iemkey(tag, data)
        elif tag.startswith("salt/job/"):
            self.job_returned(data)
        elif tag == "salt/auth":
            if data.get("act") == "accept" and isinstance(data.get("id"), str):
                self.minion_back(data["id"], "it authenticated again (salt/auth)")
        elif _is_start(tag):
            self.minion_back(tag.split("/")[2], "it started (salt/minion/<id>/start)")

    def decide_iemkey(self, tag, data):
        if data.get("__peer_id"):
            # a master cluster re-publishes each event on every peer, adding __peer_id: the master that
            # received it from the minion (or salt-api) decides; its peers act on nothing
            log.debug(
                "iemkey engine: %s event from cluster peer %s: its receiving master decides", tag, data["__peer_id"]
            )
            return
        # kept with the bus event: when the store fails mid-decision, the same event (its claim on its
        # nonce included) is decided again, not taken for a replay of itself
        event = data.setdefault("__iemkey_event", event_of(tag, data))
        received = iemkey_react.received_at(event["stamp"], self.clock())
        try:
            verified = self.gate.admit(tag, event, self.opts, received)
        except iemkey_gate.Refused as exc:  # what cannot be genuine costs a check and a counted line
            self.gate.refused(tag, event.get("id"), str(exc))
            return
        except iemkey_config.Misconfigured as exc:
            log.error("iemkey engine: %s event not acted on: %s", tag, exc)
            self.announce({"tag": tag, "result": False, "action": "error", "error": str(exc)})
            return
        decided = self.reactions.handle(tag, event, verified=verified, refusal=self.gate.refused, cover=False)
        if decided.get("deliver"):
            self.queue(decided["minion"], decided["since"], False, decided)
        else:
            self.announce(decided)

    def minion_back(self, minion, why):
        """A minion came back: its owed rotation is delivered again now if it was away. A job in
        flight is left to the probe (``saltutil.find_job`` after ``probe_after``: a job the minion no
        longer runs, with no return, is delivered again): Salt fires a minion's start event and
        authenticates it on every reconnection, not only when it restarts (Salt 3007's minions do so
        every second while they check a restarted master), so neither says the job was lost. A
        pending one is the next batch's already."""
        last = self.back.get(minion)
        moment = time.monotonic()
        if last is not None and moment - last < BACK_EVERY:
            return
        record = self.store.get("owed", minion) if _valid(minion) else None
        if not record or record["state"] != "away":
            return
        self.back[minion] = moment
        log.info("iemkey engine: %s is back (%s): delivering its owed rotation again", minion, why)
        detail = f"the minion is back ({why})"
        self.transition_any(minion, lambda r: iemkey_owed.retry_now(r, self.clock(), BY, detail))
        self.queue(minion, record["since"], record.get("exact", False), None)

    def job_returned(self, data):
        """A job return: a rotation job's outcome, or a probe's answer."""
        minion = data.get("id")
        if not _valid(minion):
            return
        answer = iemkey_delivery.probe_answer(data)
        if answer is not None:
            self.probe_answered(minion, *answer)
            return
        if not iemkey_delivery.is_rotation_job(data):
            return
        ok, error = iemkey_delivery.outcome(data)
        moment, settings, jid = self.clock(), self.settings(), str(data.get("jid"))
        with self.store.update("owed", minion) as record:
            # only the return of the job the owed rotation waits for counts, once: a copy of an
            # earlier job (or one that raced it) is not one more attempt
            if not record or record["state"] not in ("delivered", "away") or not self.awaited(minion, record, jid):
                return
            record["jid"] = jid
            record.update(iemkey_owed.answered(record, moment, BY))  # it answered: connected
            if ok:
                record["returned"] = moment.isoformat()
                if record.get("exact"):  # a re-sent rotation did not settle it: ask again with its own since
                    record.update(iemkey_owed.move(record, "pending", "asking again with its own since", moment, BY))
            else:
                record.update(iemkey_owed.failed(record, error, moment, BY, settings))
        if not ok:
            log.warning(
                "iemkey engine: %s's rotation job %s returned without a rotation: %s", minion, data.get("jid"), error
            )

    def awaited(self, minion, record, jid):
        """Whether job ``jid`` is the one ``minion``'s owed rotation waits for: the one recorded, or
        the last one sent again while the minion was away (remembered here, not written)."""
        return record.get("jid") == jid or (
            record["state"] == "away" and self.redelivered.get(minion, (0, None))[1] == jid
        )

    def probe_answered(self, minion, jid, running):
        """``saltutil.find_job`` answered: the minion is connected; a job it no longer runs, with no
        return and nothing settled, is delivered again."""
        moment = self.clock()
        with self.store.update("owed", minion) as record:
            if not record or record.get("jid") != jid:
                return
            if record["state"] == "away":
                record.update(iemkey_owed.answered(record, moment, BY))
            record["seen"] = moment.isoformat()
            if not running and not record.get("returned") and record["state"] == "delivered":
                detail = f"job {jid} did not reach it (connected now): delivering again"
                record.update(iemkey_owed.move(record, "pending", detail, moment, BY))
        self.probed.pop(minion, None)

    # -- the pass ---------------------------------------------------------------------------------
    def maybe_pass(self):
        """A pass every ``interval`` seconds; while events wait to be decided (a storm, a flood), at
        most every BUSY_PASS_EVERY seconds: a pass reads every owed rotation, deciding comes first."""
        settings = self.settings()
        since = time.monotonic() - self.last_pass
        if since < settings["interval"] or (self.inbox and since < BUSY_PASS_EVERY):
            return
        self.last_pass = time.monotonic()
        self.run_pass(settings)
        self.gate_tick()

    def gate_tick(self):
        with self.gate.lock:
            self.gate.flush()

    def run_pass(self, settings):
        """Deliveries due, probes to send, minions gone away."""
        moment = self.clock()
        probes = collections.defaultdict(list)
        for minion, stored in self.store.all("owed").items():
            if stored.get("state") not in iemkey_owed.OPEN:
                continue
            record = stored
            if record["state"] == "away" and minion in self.redelivered:  # sent again since, not written
                record = {**record, "delivered_at": self.redelivered[minion][0].isoformat()}
            if iemkey_owed.due(record, moment, settings):
                self.queue(minion, record["since"], record.get("exact", False), None)
                continue
            probed = self.probed.get(minion)
            view = {**record, "probed_at": probed[1].isoformat() if probed and probed[0] == record.get("jid") else None}
            action = iemkey_owed.probe(view, moment, settings)
            if action == "probe":
                probes[record["jid"]].append(minion)
            elif action == "away":
                self.transition(minion, record.get("jid"), lambda r: iemkey_owed.away(r, moment, BY))
                self.probed.pop(minion, None)
            elif action == "redeliver":
                self.transition(
                    minion, record.get("jid"), lambda r: iemkey_owed.failed(r, UNSETTLED, moment, BY, settings)
                )
        for jid, minions in probes.items():
            try:
                self.publisher.probe(minions, jid)
            except iemkey_delivery.PublishError as exc:
                log.error("iemkey engine: %s", exc)
                continue
            for minion in minions:
                self.probed[minion] = (jid, moment)

    def transition(self, minion, jid, change):
        """Apply ``change`` to ``minion``'s owed rotation, if it is still about job ``jid``."""
        with self.store.update("owed", minion) as record:
            if record and record.get("jid") == jid and record["state"] in iemkey_owed.OPEN:
                record.update(change(record))

    # -- the publisher ----------------------------------------------------------------------------
    def queue(self, minion, since, exact, decided):
        """Publish a rotation job to ``minion`` in the next batch (``decided``: announced then). While
        a job for it is being published and not yet recorded, that job is the delivery: ``decided``
        is announced with it, and nothing is published twice (the pass and a decision racing)."""
        with self.out:
            if minion in self.sending:
                if decided:
                    self.sending[minion].append(decided)
                return
            earlier = self.outbox.get(minion)
            decisions = (earlier[2] if earlier else []) + ([decided] if decided else [])
            if earlier:
                since = min(since, earlier[0], key=iemkey_owed.parse)
                exact = exact or earlier[1]
            self.outbox[minion] = (since, exact, decisions)
            self.out.notify()

    def publish_loop(self):
        while self.running:
            try:
                self.record_published()
            except iemkey_store.StoreError as exc:
                log.error("iemkey engine: %s; %d published jobs wait to be recorded", exc, len(self.unrecorded))
                time.sleep(1)
                continue
            with self.out:
                if not self.outbox:
                    self.out.wait(timeout=0.5)
                    continue
            self.let_the_batch_fill(self.settings()["batch_window"])
            with self.out:
                batch, self.outbox = self.outbox, {}
                self.sending.update((minion, item[2]) for minion, item in batch.items())
            try:
                self.publish(batch)
            except iemkey_store.StoreError as exc:  # before anything was published: the batch waits
                log.error("iemkey engine: %s; %d rotations wait to be published", exc, len(batch))
                with self.out:
                    for minion, item in batch.items():
                        self.sending.pop(minion, None)
                        self.outbox.setdefault(minion, item)
                time.sleep(1)
            except Exception:  # pylint: disable=broad-except
                log.exception("iemkey engine: publishing a batch failed")

    def let_the_batch_fill(self, window, step=0.05):
        """Wait while more minions join the next batch, at most ``window`` seconds: a lone alert is
        published within ``step``, a storm in batches of what ``window`` gathers."""
        deadline = time.monotonic() + window
        with self.out:
            size = len(self.outbox)
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(step, left))
            with self.out:
                if len(self.outbox) == size:
                    return
                size = len(self.outbox)

    def publish(self, batch):
        """One job per ``batch_size`` minions (the earliest ``since`` among them); a minion marked
        ``exact`` gets its own. Each owed rotation then says delivered, with the job id: {minion: jid}.
        A job published is never published again: when the store cannot record it, it waits in
        ``unrecorded`` until the store answers."""
        settings, moment = self.settings(), self.clock()
        batch = self.still_owed(batch)
        exact = [m for m, item in batch.items() if item[1]]
        shared = sorted(m for m, item in batch.items() if not item[1])
        size = settings["batch_size"]
        groups = [[m] for m in exact] + [shared[i : i + size] for i in range(0, len(shared), size)]
        published = {}
        for group in groups:
            since = min((batch[m][0] for m in group), key=iemkey_owed.parse)
            try:
                jid = self.publisher.rotation(group, since)
            except iemkey_delivery.PublishError as exc:
                log.error("iemkey engine: %s; they stay owed and are tried again", exc)
                for minion in group:
                    self.unrecorded.append((minion, None, moment, batch[minion][2], str(exc)))
                continue
            log.info("iemkey engine: rotation job %s published to %d minions (since %s)", jid, len(group), since)
            published.update(dict.fromkeys(group, jid))
            for minion in group:
                self.unrecorded.append((minion, jid, moment, batch[minion][2], None))
        compromised = {m for m, item in batch.items() if any(d.get("action") for d in item[2])}
        try:
            self.record_published()
            if compromised:  # their open clean-ups become compromise ones: one read for the whole batch
                self.reactions.cover(compromised, f"{BY} (compromise)")
        except iemkey_store.StoreError as exc:
            log.error("iemkey engine: %s; %d published jobs wait to be recorded", exc, len(self.unrecorded))
        return published

    def still_owed(self, batch):
        """The part of ``batch`` whose rotation is still owed and not waiting for an operator (one
        settled, cancelled or sent to review while it waited is not published); decisions of the rest
        are announced with no job."""
        kept = {}
        for minion, item in batch.items():
            record = self.store.get("owed", minion)
            if record and record["state"] in iemkey_owed.OPEN and record["state"] not in ("review", "held"):
                kept[minion] = item
                continue
            with self.out:
                decisions = self.sending.pop(minion, item[2])
            for decided in decisions:
                self.announce({**decided, "jid": None, "detail": f"{decided.get('detail')} (no longer owed)"})
        return kept

    def record_published(self):
        """Record what was published (or failed to be), oldest first; StoreError leaves the rest."""
        while self.unrecorded:
            minion, jid, moment, decisions, error = self.unrecorded[0]
            if jid is None:
                conf = self.settings()
                self.transition_any(minion, lambda r, e=error, m=moment, c=conf: iemkey_owed.failed(r, e, m, BY, c))
            else:
                self.delivered(minion, jid, moment)
            with self.out:  # decisions that joined while it was being published are announced with it
                self.unrecorded.popleft()
                decisions = self.sending.pop(minion, decisions)
            for decided in decisions:
                self.announce(
                    {**decided, "result": False, "jid": None, "error": error}
                    if jid is None
                    else {**decided, "jid": jid}
                )

    def delivered(self, minion, jid, moment):
        record = self.store.get("owed", minion)
        if not record or record["state"] not in iemkey_owed.OPEN:
            return
        if record["state"] == "away":  # still away until it answers: remembered, not written each time
            self.redelivered[minion] = (moment, str(jid))
            return
        self.transition_any(minion, lambda r: iemkey_owed.delivered(r, jid, moment, BY))

    def transition_any(self, minion, change):
        with self.store.update("owed", minion) as record:
            if record and record["state"] in iemkey_owed.OPEN:
                record.update(change(record))

    # -- running ----------------------------------------------------------------------------------
    def start(self, bus):
        """Run the three threads; returns them (``stop`` ends them)."""
        self.running = True
        threads = [
            threading.Thread(target=self.read, args=(bus,), name="iemkey-reader", daemon=True),
            threading.Thread(target=self.decide_loop, name="iemkey-decider", daemon=True),
            threading.Thread(target=self.publish_loop, name="iemkey-publisher", daemon=True),
        ]
        for thread in threads:
            thread.start()
        return threads

    def stop(self, threads=()):
        self.running = False
        with self.wake:
            self.wake.notify_all()
        with self.out:
            self.out.notify_all()
        for thread in threads:
            thread.join(5)


def _is_start(tag):
    return fnmatch.fnmatch(tag, "salt/minion/*/start")


def _valid(minion):
    return isinstance(minion, str) and bool(iemkey_react.iemkey_auth.MINION_ID.fullmatch(minion))


def run(opts, resolve=None):
    """The engine process's body (``_engines/iemkey.py``): build it from the master opts and run it
    until the master stops it."""
    import salt.utils.event  # pylint: disable=import-outside-toplevel

    store = iemkey_store.from_opts(opts, resolve=resolve)
    engine = Engine(opts, store, iemkey_delivery.Publisher(opts), Announcer(opts), resolve=resolve)
    try:
        engine.settings()
    except iemkey_config.Misconfigured as exc:
        log.error("iemkey engine: %s; every owed rotation waits until it is fixed", exc)
    bus = salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=True)
    log.info("iemkey engine: deciding iemkey events and delivering owed rotations (store %r)", store)
    threads = engine.start(bus)
    try:
        while all(thread.is_alive() for thread in threads):
            time.sleep(1)
    finally:
        engine.stop(threads)
        bus.destroy()


# -- the reactor files: a master without the engine -------------------------------------------------
_HERE = {"engine": None, "opts": None, "warned": False}


def reaction(tag, data, opts, resolve=None):
    """What the reactor files return for an iemkey event: always nothing for Salt to run. Where the
    engine runs, nothing (it decides). Without it, the event is decided here, in the reactor, and a
    rotation published at once, as before the engine; owed rotations are recorded but nobody delivers
    them again (a WARNING says so once)."""
    if configured(opts):
        log.debug("iemkey reactor: %s event: the iemkey engine decides it", tag)
        return {}
    if not _HERE["warned"]:
        _HERE["warned"] = True
        log.warning(
            "iemkey reactor: deciding in Salt's reactor because the iemkey engine is not configured: a minion "
            "that is away when its rotation is published is not asked again; add `engines: [{iemkey: {}}]` to "
            "the master config and remove the iemkey reactor entries (CHANGELOG)"
        )
    if resolve is None:
        import salt.utils.sdb  # pylint: disable=import-outside-toplevel

        def resolve(uri):
            return salt.utils.sdb.sdb_get(uri, opts)

    if _HERE["engine"] is None or _HERE["opts"] is not opts:
        try:
            store = iemkey_store.from_opts(opts, resolve=resolve)
        except iemkey_store.StoreError as exc:
            log.error("iemkey reactor: %s event not acted on: %s", tag, exc)
            return {}
        engine = Engine(opts, store, iemkey_delivery.Publisher(opts), Announcer(opts), resolve=resolve)
        _HERE.update(engine=engine, opts=opts)
    engine = _HERE["engine"]
    try:
        engine.decide(tag, data)
        with engine.out:
            batch, engine.outbox = engine.outbox, {}
        if batch:
            engine.publish(batch)
    except iemkey_store.StoreError as exc:  # a shared store unreachable for longer than its wait
        decided = {"tag": tag, "id": data.get("id"), "action": "error", "error": str(exc)}
        log.error("iemkey reactor: %s event from %s NOT decided, send it again: %s", tag, data.get("id"), exc)
        engine.announce(decided)
    return {}
