"""
`make bench`, scale section: incident scale on one real salt-master.

N simulated minions exist as accepted keys on the master and sign their own events with their own
2048-bit keys; one real minion relays those events in batched `_minion_event` loads, exactly what
any minion can send. A stand-in BigFix server (tests/support/bigfix_rest.py) answers every request
after 50 ms, many at a time, as a real server does. Phases, each timed from the master's own event
stamps and the stand-in's request log:

1. alert storm: N signed `iemkey/compromised`, one per minion -> every signer asked to rotate (the
   iemkey engine publishes one job per batch: `state.single iemkey.rotated owed=True` to a list of
   minions, each of which rotates only itself), each signer exactly once, nobody else
                                                         targets: N=1,000 <= 10 s, N=10,000 <= 60 s
2. second wave: N more alerts while each rotation is owed: nothing is delivered twice while a
   delivery is in flight (a minion that did not answer its job is asked again: the sims never answer)
3. clean-up storm: N signed `iemkey/rotated` (routine by then: the bench's compromise_window is 1 s)
   -> N superseded computers DELETEd, each exactly once, no new computer touched    target <= 60 s
4. flood: 12,000 unsigned events claiming to come from one minion, then one genuine alert from
   another -> that alert's job published                               target <= 30 s

Also: REST requests per phase, peak RSS of the master's processes. Keys are cached in
.bench-cache/keys (they take ~50 ms each to make). `BENCH_SCALE="1000 10000"` (default) sets N. The
master keeps Salt's defaults for its bus (`pub_server_write_queue_size` 10,000; `BENCH_PUB_QUEUE` sets
it); `BENCH_REACTOR=1` decides in Salt's reactor instead of the engine (what iemkey 0.2 did).
"""

import collections
import datetime
import multiprocessing
import os
import pathlib
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
CACHE = HERE.parent / ".bench-cache" / "keys"
FLOOD = int(os.environ.get("BENCH_FLOOD", "12000"))
LATENCY = 0.05
BATCH = 400  # events per batched _minion_event load


def _make_key(minion_id):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    path = CACHE / f"{minion_id}.pem"
    if not path.exists():
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(pem)
        os.replace(tmp, path)
    return minion_id


def keys(ids):
    """{minion id: (private PEM, public PEM)}, made once and cached."""
    from cryptography.hazmat.primitives import serialization

    CACHE.mkdir(parents=True, exist_ok=True)
    missing = [m for m in ids if not (CACHE / f"{m}.pem").exists()]
    if missing:
        print(f"  making {len(missing)} minion keys (cached in {CACHE})", flush=True)
        with multiprocessing.Pool(os.cpu_count() or 2) as pool:
            pool.map(_make_key, missing, chunksize=50)
    found = {}
    for minion_id in ids:
        private = (CACHE / f"{minion_id}.pem").read_bytes()
        key = serialization.load_pem_private_key(private, None, unsafe_skip_rsa_key_validation=True)
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        found[minion_id] = (private, public)
    return found


class Bus(threading.Thread):
    """Every master event the phases time, with the master's own stamps (a bus subscriber like any
    other: if Salt dropped it, the phases would say so by missing events)."""

    def __init__(self, opts):
        super().__init__(daemon=True)
        import salt.utils.event

        self.event = salt.utils.event.get_event("master", sock_dir=opts["sock_dir"], opts=opts, listen=True)
        self.lock = threading.Lock()
        self.jobs = []  # (stamp, targets) of every state.single published
        self.sent = collections.defaultdict(list)  # tag -> stamps
        self.reactions = []  # the reactor's decisions (iemkey/reactor/decided)
        self.running = True

    def run(self):
        while self.running:
            event = self.event.get_event(wait=1, full=True)
            if not event:
                continue
            tag, data = event["tag"], event["data"]
            stamp = _stamp(data.get("_stamp"))
            with self.lock:
                if tag in ("iemkey/compromised", "iemkey/rotated"):
                    self.sent[tag].append(stamp)
                elif tag.startswith("salt/job/") and tag.endswith("/new") and data.get("fun") == "state.single":
                    self.jobs.append((stamp, tuple(sorted(data.get("minions") or ()))))
                elif tag == "iemkey/reactor/decided":
                    self.reactions.append(data)

    def stop(self):
        self.running = False
        self.join(5)
        self.event.destroy()


def _stamp(text):
    try:
        stamp = datetime.datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=datetime.timezone.utc)


class Relay:
    """Batched _minion_event loads from the real minion, as `event.fire_master ... preload` sends them."""

    def __init__(self, conf):
        import salt.config

        self.opts = salt.config.minion_config(str(conf / "minion"))
        self.opts["master_uri"] = f"tcp://127.0.0.1:{self.opts['master_port']}"

    def send(self, events):
        import salt.channel.client

        with salt.channel.client.ReqChannel.factory(self.opts, master_uri=self.opts["master_uri"]) as channel:
            for start in range(0, len(events), BATCH):
                load = {"id": self.opts["id"], "tag": "bench/relay", "data": {}, "cmd": "_minion_event"}
                channel.send({**load, "events": events[start : start + BATCH]}, timeout=120)


class Peak(threading.Thread):
    """The largest resident set of the master and its children while it runs."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0, True

    def run(self):
        import psutil

        master = psutil.Process(self.pid)
        while self.running:
            try:
                processes = [master, *master.children(recursive=True)]
                self.peak = max(self.peak, sum(p.memory_info().rss for p in processes if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.5)


def _wait(predicate, timeout, every=0.5):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(every)
    return predicate()


def run(top, size, sandbox_class, stand_in_class, auth):
    """The four phases at ``size`` simulated minions: {phase: figures}."""
    import salt.config
    from pytest_httpserver import HTTPServer

    sims = [f"sim-{n:05d}" for n in range(size)]
    flooded = "sim-flood"
    pairs = keys([*sims, flooded])
    rest = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    rest.start()

    class Agents:
        def __init__(self):
            self.known = {}

        def computers(self):
            return self.known

    agents = Agents()
    bigfix = stand_in_class([agents], "iemkey-operator", "bench-pw", latency=LATENCY).serve(rest)
    reactor_dir = str(HERE.parent / "salt" / "iemkey" / "reactor")
    deciding = (
        {
            "reactor": [
                {"iemkey/compromised": [f"{reactor_dir}/compromised.sls"]},
                {"iemkey/rotated": [f"{reactor_dir}/rotated.sls"]},
            ]
        }
        if os.environ.get("BENCH_REACTOR")
        else {"engines": [{"iemkey": {}}]}
    )
    master_extra = {
        **deciding,
        "schedule": {"iemkey-cleanup": {"function": "iemkey.cleanup", "seconds": 5}},
        "iemkey": {
            # routine once 1 s has passed since the last alert; every confirmed duplicate may go in one pass
            "cleanup": {"report_margin": 0, "compromise_window": 1, "max_deletes": size * 2},
            "api": {
                "url": rest.url_for("").rstrip("/"),
                "user": "iemkey-operator",
                "password": "bench-pw",
                "verify": False,
                "timeout": 30,
            },
        },
    }
    if os.environ.get("BENCH_PUB_QUEUE"):  # Salt's default (10,000) unless asked
        master_extra["pub_server_write_queue_size"] = int(os.environ["BENCH_PUB_QUEUE"])
    box = sandbox_class(top, minions=["relay"], master_extra=master_extra)
    results = {}
    try:
        box.write_config()
        pki = top / "root" / "etc" / "salt" / "pki" / "master" / "minions"
        pki.mkdir(parents=True, exist_ok=True)
        for minion_id, (_private, public) in pairs.items():
            (pki / minion_id).write_bytes(public)
        box.start()
        box.sync()
        box.restart_master()  # the schedule loads the synced runner when the master starts
        opts = salt.config.master_config(str(box.conf / "master"))
        bus, relay = Bus(opts), Relay(box.minion_conf("relay"))
        bus.start()
        peak = Peak(box.procs[0].pid)
        peak.start()

        def alerts():
            return [
                {
                    "tag": "iemkey/compromised",
                    "data": {"id": m, "data": auth.sign("iemkey/compromised", m, {"reason": "bench"}, pairs[m][0])},
                }
                for m in sims
            ]

        # 1. alert storm
        events = alerts()
        jobs_before, reactions_before = len(bus.jobs), len(bus.reactions)
        started = time.time()
        relay.send(events)
        sent = time.time() - started

        def asked():
            with bus.lock:
                return {m for _s, t in bus.jobs[jobs_before:] for m in t}

        _wait(lambda: len(asked()) >= size, timeout=max(300, size * 0.2))
        _wait(lambda: len(bus.reactions) - reactions_before >= size, timeout=120)  # every decision announced
        with bus.lock:
            jobs = bus.jobs[jobs_before:]
            first = min(bus.sent["iemkey/compromised"])
        seen, firsts, again = set(), [], 0
        for stamp, targets in jobs:  # a minion's first job; later ones are deliveries again (it never answers)
            fresh = [m for m in targets if m not in seen]
            again += len(targets) - len(fresh)
            seen.update(fresh)
            if fresh:
                firsts.append((stamp, fresh))
        last = max((s for s, _t in firsts), default=first)
        results["alert storm"] = {
            "wall": (last - first).total_seconds(),
            "asked": len(seen),
            "jobs": len(firsts),
            "signers_only": seen <= set(sims),
            "asked_again": again,
            "within_10_s": len({m for s, t in firsts if (s - first).total_seconds() <= 10 for m in t}),
            "within_60_s": len({m for s, t in firsts if (s - first).total_seconds() <= 60 for m in t}),
            "decisions": len(bus.reactions) - reactions_before,
            "send": sent,
        }
        print(f"  N={size} alert storm: {results['alert storm']}", flush=True)

        if os.environ.get("BENCH_PHASES") == "alerts":  # a quick look at one phase
            return results
        # 2. a second wave while the rotations are owed: nothing in flight is delivered twice
        jobs_before, reactions_before = len(bus.jobs), len(bus.reactions)
        relay.send(alerts())
        _wait(lambda: len(bus.reactions) - reactions_before >= size, timeout=max(300, size * 0.2))
        time.sleep(5)
        with bus.lock:
            actions = collections.Counter((r or {}).get("action") for r in bus.reactions[reactions_before:])
            jobs = bus.jobs[jobs_before:]
        results["second wave"] = {
            "jobs": len(jobs),
            "minions_in_them": sum(len(t) for _s, t in jobs),
            "actions": dict(actions),
        }
        print(f"  N={size} second wave: {results['second wave']}", flush=True)

        # 3. clean-up storm: each minion's rotation leaves an old computer BigFix shows as superseded
        time.sleep(2)  # past the bench's compromise_window: these rotations are routine
        now = time.time()
        old_ids = {m: str(100_000 + n) for n, m in enumerate(sims)}
        new_ids = {m: str(500_000 + n) for n, m in enumerate(sims)}
        for m in sims:
            agents.known[old_ids[m]] = {"name": m, "registered": now - 86400, "last_report": now - 3600}
            agents.known[new_ids[m]] = {"name": m, "registered": now - 5, "last_report": now - 1}
        rotated = [
            {
                "tag": "iemkey/rotated",
                "data": {
                    "id": m,
                    "data": auth.sign(
                        "iemkey/rotated",
                        m,
                        {
                            "old_computer_id": old_ids[m],
                            "new_computer_id": new_ids[m],
                            "rotated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                        },
                        pairs[m][0],
                    ),
                },
            }
            for m in sims
        ]
        calls_before = len(bigfix.calls)
        relay.send(rotated)
        deleted = set(old_ids.values())
        _wait(lambda: deleted <= set(bigfix.deletes()), timeout=max(600, size * 0.3), every=1)
        with bus.lock:
            first = min(bus.sent["iemkey/rotated"])
        with bigfix.lock:
            calls = bigfix.calls[calls_before:]
            times = bigfix.call_times[calls_before:]
        delete_times = [t for (m, p, _s), t in zip(calls, times, strict=True) if m == "DELETE"]
        counts = collections.Counter(bigfix.deletes())
        results["clean-up storm"] = {
            "wall": (max(delete_times) - first.timestamp()) if delete_times else None,
            "deleted": len(deleted & set(counts)),
            "each_once": all(counts[c] == 1 for c in deleted),
            "new_touched": sum(counts[c] for c in new_ids.values()),
            "requests": dict(collections.Counter(m for m, _p, _s in calls)),
        }
        print(f"  N={size} clean-up storm: {results['clean-up storm']}", flush=True)

        # 4. flood: 12,000 unsigned events as from one minion, then a genuine alert from another
        flood = [{"tag": "iemkey/compromised", "data": {"id": sims[0], "data": {"reason": "flood"}}}] * FLOOD
        jobs_before = len(bus.jobs)
        relay.send(flood)
        genuine = auth.sign("iemkey/compromised", flooded, {"reason": "after the flood"}, pairs[flooded][0])
        sent = datetime.datetime.now(datetime.timezone.utc)
        relay.send([{"tag": "iemkey/compromised", "data": {"id": flooded, "data": genuine}}])
        _wait(lambda: any(flooded in t for _s, t in bus.jobs[jobs_before:]), timeout=300)
        with bus.lock:
            acted = [s for s, t in bus.jobs[jobs_before:] if flooded in t]
        results["flood"] = {
            "genuine_after": (acted[0] - sent).total_seconds() if acted else None,
            "asked_for_the_flood": sims[0] in {m for _s, t in bus.jobs[jobs_before:] for m in t},
        }
        print(f"  N={size} flood: {results['flood']}", flush=True)
        peak.running = False
        results["peak_rss_mib"] = peak.peak / 2**20
        bus.stop()
    finally:
        box.stop()
        rest.clear()
        rest.stop()
    return results


def section(all_results):
    """The scale section of bench/RESULTS.md."""
    lines = [
        "## Scale: incident storms on one master",
        "",
        f"N simulated minions (accepted keys, their own 2048-bit keys), events relayed by one real minion in "
        f"batched `_minion_event` loads of {BATCH}; a stand-in BigFix server answering after {LATENCY * 1000:.0f} ms, "
        "many requests at a time. Wall times from the master's own event stamps and the stand-in's request log.",
        "",
        "| N | phase | wall time | what | target (N=1,000) |",
        "|---|---|---|---|---|",
    ]
    for size, r in sorted(all_results.items()):
        target = "<= 10 s" if size <= 1000 else "<= 60 s"
        a = r["alert storm"]
        if "flood" not in r:  # BENCH_PHASES=alerts: the first phase only
            lines.append(
                f"| {size} | alert storm | {a['wall']:.1f} s | {a['asked']} of {size} signers asked to rotate in "
                f"{a['jobs']} jobs ({a['within_10_s']} within 10 s, {a['within_60_s']} within 60 s) | {target} |"
            )
            continue
        w, c, f = r["second wave"], r["clean-up storm"], r["flood"]
        lines += [
            f"| {size} | alert storm | {a['wall']:.1f} s | {a['asked']} of {size} signers asked to rotate in "
            f"{a['jobs']} jobs ({a['within_10_s']} within 10 s, {a['within_60_s']} within 60 s); nobody else: "
            f"{a['signers_only']}; {a['decisions']} decisions announced | {target} |",
            f"| {size} | second wave while owed | - | {w['jobs']} jobs ({w['minions_in_them']} minions in them); "
            f"decisions {w['actions']} | nothing in flight twice |",
            f"| {size} | clean-up storm | {c['wall']:.1f} s | {c['deleted']} of {size} DELETEd, each once: "
            f"{c['each_once']}, new computers touched: {c['new_touched']}; requests {c['requests']} | <= 60 s |"
            if c["wall"] is not None
            else f"| {size} | clean-up storm | - | {c['deleted']} of {size} DELETEd | <= 60 s |",
            f"| {size} | flood ({FLOOD} unsigned), then one genuine alert | "
            f"{f['genuine_after']:.1f} s | the flooded minion asked to rotate: {f['asked_for_the_flood']} | <= 30 s |"
            if f["genuine_after"] is not None
            else f"| {size} | flood | not acted on | - | <= 30 s |",
            f"| {size} | peak master RSS | - | {r['peak_rss_mib']:.0f} MiB | - |",
        ]
    return lines
