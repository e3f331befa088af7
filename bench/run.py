"""
`make bench`: what iemkey costs, measured against a baseline in the same run.

a. `iemkey.rotate` vs the bare technote procedure (stop; rm -rf KeyStorage; start), both
   through `salt-call --local` on the same stand-in agent               target ratio <= 1.10
b. an already-satisfied `iemkey.rotated` vs `test.succeed_without_changes`, both through
   `state.single` with `salt-call --local`                              target ratio <= 1.20
c. `iemkey/compromised` (`salt-call iemkey.alert`) -> `iemkey/rotated` through a local master
   (event stamps on the master bus) vs the stand-in agent's own restart  target <= restart + 3 s
e. what verifying the alert adds: event on the bus -> the rotation job published, through
   the iemkey engine that checks the signature and decides vs a baseline reactor that trusts
   data['id'] (bench/unverified.sls, the pre-signature design)          target < 0.1 s added
   and, in-process, one signature check (iemkey_auth.verify) and one signing
d. `salt <targets> iemkey.rotate` over 1, 5 and 10 local minions         target 10 <= 2x one
   and the bare procedure through `salt -L ... cmd.run`: fan-out, signing included,
   10 minions' iemkey.rotate / 10 minions' bare procedure                 target <= 1.05

Each pair is interleaved (A, B, A, B, ...) so machine noise hits both sides alike; the
table gives median, min and max over BENCH_REPS repetitions (default 7) and writes
bench/RESULTS.md.
"""

import datetime
import os
import pathlib
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "demo"))
sys.path.insert(0, str(HERE.parent / "tests" / "support"))
sys.path.insert(0, str(HERE))

from sandbox import BIN, REPO, Sandbox, StandInAgent, agent_settings  # noqa: E402

REPS = int(os.environ.get("BENCH_REPS", "7"))
# the bare technote procedure on whichever minion runs it, paths from its own iemkey settings
BARE_TEMPLATE = (
    "{{ opts['iemkey']['init_script'] }} stop && "
    "rm -rf {{ salt['file.dirname'](opts['iemkey']['config_file']) }}/KeyStorage && "
    "{{ opts['iemkey']['init_script'] }} start"
)
MINIONS = [f"bench-{i:02d}" for i in range(10)]
sys.path.insert(0, str(REPO / "_utils"))

import iemkey_auth  # noqa: E402


def timed(command):
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"benchmark step failed: {shlex.join(command)}\n{result.stdout}\n{result.stderr}")
    return elapsed


def stats(samples):
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples)}


class Local:
    """A masterless minion (`salt-call --local`) with its own stand-in agent."""

    def __init__(self, top):
        self.conf = top / "local-conf"
        self.agent = StandInAgent(top / "local-agent").install()
        self.conf.mkdir()
        (self.conf / "minion").write_text(
            yaml.safe_dump(
                {
                    "id": "bench-local",
                    "root_dir": str(top / "local-root"),
                    "file_client": "local",
                    "file_roots": {"base": [str(REPO), str(REPO / "salt")]},
                    "iemkey": agent_settings(self.agent),
                }
            )
        )
        timed(self.call("saltutil.sync_all"))
        timed([str(self.agent.init_script), "start"])
        self.agent.wait_for_keys()

    def call(self, *args):
        return [str(BIN / "salt-call"), "--local", "-c", str(self.conf), "--out=json", *args]


def pair(name, first, second, reps, between=None):
    """Interleave two commands ``reps`` times; stats for each."""
    samples = {first[0]: [], second[0]: []}
    for _ in range(reps):
        for label, command in (first, second):
            samples[label].append(timed(command))
            if between:
                between()
    print(f"  {name}: done", flush=True)
    return {label: stats(values) for label, values in samples.items()}


def bench_local(top, reps):
    local = Local(top)
    agent = local.agent
    bare = (
        f"{shlex.quote(str(agent.init_script))} stop && rm -rf {shlex.quote(str(agent.keystorage))} && "
        f"{shlex.quote(str(agent.init_script))} start"
    )
    rotate = pair(
        "a. rotate vs bare procedure",
        ("iemkey.rotate", local.call("iemkey.rotate")),
        ("bare procedure", local.call("cmd.run", bare, "python_shell=True")),
        reps,
        between=agent.wait_for_keys,
    )
    state = pair(
        "b. satisfied state vs test state",
        (
            "iemkey.rotated (satisfied)",
            local.call("state.single", "iemkey.rotated", "name=key", "since=2020-01-01T00:00:00Z"),
        ),
        ("test.succeed_without_changes", local.call("state.single", "test.succeed_without_changes", "name=x")),
        reps,
    )
    agent.kill()
    return rotate, state


def bench_fleet(top, reps):
    import salt.config
    import salt.utils.event

    box = Sandbox(
        top / "fleet",
        minions=MINIONS,
        master_extra={
            "engines": [{"iemkey": {}}],  # decides iemkey's events (README)
            "reactor": [{"bench/unverified": ["salt://bench/unverified.sls"]}],
            # one minion sends 14 alerts in two minutes (c. and e.), beyond the default
            # iemkey:reactor:rate (10 a minute) that would refuse the 11th
            "iemkey": {"reactor": {"cooldown": 0, "rate": 1000}},
        },
    )
    try:
        for agent in box.agents.values():
            agent.install()
        box.write_config()
        box.start()
        box.sync()
        box.restart_master()  # the master starts its engine with the synced modules
        box.salt("*", "iemkey.restart", show=False)
        opts = salt.config.master_config(str(box.conf / "master"))
        bus = salt.utils.event.get_event("master", sock_dir=opts["sock_dir"], opts=opts, listen=True)
        first, agent = MINIONS[0], box.agents[MINIONS[0]]

        # c. compromise -> rotation, from the master's own event stamps
        latency, restart = [], []
        for _ in range(reps):
            restart.append(timed([str(agent.init_script), "restart"]))
            agent.wait_for_keys()
            time.sleep(1)  # the event's time must be after the key's, or the alert is a duplicate
            box.salt_call(first, "iemkey.alert", "reason=bench", show=False)
            stamps = {}
            deadline = time.monotonic() + 120
            while len(stamps) < 2 and time.monotonic() < deadline:
                event = bus.get_event(wait=5, full=True)
                if (
                    event
                    and event["data"].get("id") == first
                    and event["tag"] in ("iemkey/compromised", "iemkey/rotated")
                ):
                    stamps[event["tag"]] = datetime.datetime.fromisoformat(event["data"]["_stamp"])
            if len(stamps) < 2:
                raise SystemExit("no iemkey/rotated within 120 s of iemkey/compromised")
            latency.append((stamps["iemkey/rotated"] - stamps["iemkey/compromised"]).total_seconds())
            agent.wait_for_keys()
        print("  c. compromise -> rotated: done", flush=True)

        # e. event -> rotation job published: verified (signature, replay store, runner) vs trusted data['id']
        dispatch = {"verified": [], "unverified": []}
        for _ in range(reps):
            for label, command in (
                ("verified", ("iemkey.alert", "reason=bench")),
                ("unverified", ("event.send", "bench/unverified")),
            ):
                time.sleep(1)
                box.salt_call(first, *command, show=False)
                dispatch[label].append(_dispatch_latency(bus, first))
                agent.wait_for_keys()
        print("  e. verification overhead: done", flush=True)

        # d. fan-out over 1, 5 and 10 minions, interleaved, iemkey and the bare procedure alike
        salt = [str(BIN / "salt"), "-c", str(box.conf), "--timeout=120", "--out=json", "-L"]
        jobs = {
            "iemkey.rotate": ["iemkey.rotate"],
            "bare procedure": ["cmd.run", BARE_TEMPLATE, "python_shell=True", "template=jinja"],
        }
        fleet = {(job, count): [] for job in jobs for count in (1, 5, 10)}
        for _ in range(reps):
            for (job, count), samples in fleet.items():
                samples.append(timed([*salt, ",".join(MINIONS[:count]), *jobs[job]]))
                for minion in MINIONS[:count]:
                    box.agents[minion].wait_for_keys()
        print("  d. fleet fan-out: done", flush=True)
        bus.destroy()
        return (
            stats(latency),
            stats(restart),
            {key: stats(v) for key, v in fleet.items()},
            {label: stats(v) for label, v in dispatch.items()},
        )
    finally:
        box.stop()


def _dispatch_latency(bus, minion_id):
    """Seconds from the minion's event on the master bus to the state.single job it caused being
    published, from the master's own stamps; waits for that job to return."""
    sent = published = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        event = bus.get_event(wait=5, full=True)
        if not event:
            continue
        tag, data = event["tag"], event["data"]
        if tag in ("iemkey/compromised", "bench/unverified") and data.get("id") == minion_id:
            sent = datetime.datetime.fromisoformat(data["_stamp"])
        elif tag.endswith("/new") and data.get("fun") == "state.single" and data.get("minions") == [minion_id]:
            published, jid = datetime.datetime.fromisoformat(data["_stamp"]), data["jid"]
        elif published and tag == f"salt/job/{jid}/ret/{minion_id}":
            return (published - sent).total_seconds()
    raise SystemExit("no state.single job published and returned within 120 s of the event")


def signature_costs(count=500):
    """Seconds per sign and per verify of a rotated event, in-process."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # Salt's default minion keysize
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    payload = {"old_computer_id": "1074618178", "rotated_at": "2026-11-27T04:55:28.789132+00:00"}
    start = time.perf_counter()
    signed = [iemkey_auth.sign("iemkey/rotated", "web01", payload, private) for _ in range(count)]
    sign = (time.perf_counter() - start) / count
    now = datetime.datetime.now(datetime.timezone.utc)
    start = time.perf_counter()
    for data in signed:
        iemkey_auth.verify("iemkey/rotated", data, public, now, 300, 60)
    return sign, (time.perf_counter() - start) / count


def machine():
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
        platform.processor(),
    )
    mem = next((line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal")), "0")
    import salt.version

    return (
        f"{os.cpu_count()} CPUs ({cpu}), {int(mem) // 1024 // 1024} GiB, Python {platform.python_version()}, "
        f"Salt {salt.version.__version__}, {platform.system()} {platform.release()}"
    )


def row(label, s):
    return f"| {label} | {s['median']:.3f} | {s['min']:.3f} | {s['max']:.3f} | {s['n']} |"


def verdict(ok):
    return "met" if ok else "**missed**"


def bench_scale(top):
    """The scale section: each size in BENCH_SCALE (default 1000 and 10000 simulated minions)."""
    import scale
    from bigfix_rest import StandInBigFix

    found = {}
    for size in (int(n) for n in os.environ.get("BENCH_SCALE", "1000 10000").split()):
        print(f"scale: {size} simulated minions", flush=True)
        found[size] = scale.run(top / f"scale-{size}", size, Sandbox, StandInBigFix, iemkey_auth)
    return scale.section(found)


def main():
    parts = os.environ.get("BENCH_PARTS", "minion scale fleet").split()
    with tempfile.TemporaryDirectory(prefix="iemkey-bench-") as tmp:
        top = pathlib.Path(tmp)
        print(f"benchmarking with {REPS} repetitions under {top}", flush=True)
        scaled = bench_scale(top) if "scale" in parts else []
        if "store" in parts:  # BENCH_PARTS="... store": local files vs a shared Redis store
            import store

            scaled += ["", *store.run()]
        if "fleet" in parts:  # reading a large BigFix fleet for the agents outside Salt
            import fleet

            scaled += ["", *fleet.run()]
        if "minion" not in parts:  # a partial run (BENCH_PARTS=scale): bench/out/, not RESULTS.md
            text = "\n".join([f"Machine: {machine()}.", "", *scaled])
            print("\n" + text)
            (HERE / "out").mkdir(exist_ok=True)
            (HERE / "out" / "scale.md").write_text(text + "\n")
            return
        rotate, state = bench_local(top, REPS)
        latency, restart, fleet, dispatch = bench_fleet(top, REPS)
    sign, verify = signature_costs()
    ratio_a = rotate["iemkey.rotate"]["median"] / rotate["bare procedure"]["median"]
    ratio_b = state["iemkey.rotated (satisfied)"]["median"] / state["test.succeed_without_changes"]["median"]
    budget_c = restart["median"] + 3
    ratio_d = fleet["iemkey.rotate", 10]["median"] / fleet["iemkey.rotate", 1]["median"]
    ratio_d_bare = fleet["bare procedure", 10]["median"] / fleet["bare procedure", 1]["median"]
    fan_out = fleet["iemkey.rotate", 10]["median"] / fleet["bare procedure", 10]["median"]
    added_e = dispatch["verified"]["median"] - dispatch["unverified"]["median"]
    lines = [
        "# iemkey benchmark results",
        "",
        f"Run {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC} with `make bench` "
        f"({REPS} repetitions, pairs interleaved).",
        f"Machine: {machine()}.",
        "",
        "Seconds of wall time:",
        "",
        "| measurement | median | min | max | n |",
        "|---|---|---|---|---|",
        *(row(f"a. {label} (`salt-call --local`)", s) for label, s in rotate.items()),
        *(row(f"b. `state.single` {label} (`salt-call --local`)", s) for label, s in state.items()),
        row("c. `iemkey/compromised` -> `iemkey/rotated` on the master bus", latency),
        row("c. stand-in agent restart (`besclient restart`)", restart),
        *(row(f"d. `salt -L <{count} minions>` {job}", s) for (job, count), s in fleet.items()),
        row(
            "e. event -> rotation job published, verified (the engine's gate, decision and batch window)",
            dispatch["verified"],
        ),
        row(
            "e. event -> rotation job published, unverified baseline (reactor trusts data['id'])",
            dispatch["unverified"],
        ),
        "",
        f"In-process (2048-bit minion key, 500 each): signing {sign * 1000:.2f} ms, "
        f"verifying {verify * 1000:.3f} ms per event.",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
        f"| a. rotate / bare procedure <= 1.10 | {ratio_a:.3f} | {verdict(ratio_a <= 1.10)} |",
        f"| b. satisfied state / test state <= 1.20 | {ratio_b:.3f} | {verdict(ratio_b <= 1.20)} |",
        f"| c. compromise -> rotated <= restart + 3 s ({budget_c:.2f} s) | {latency['median']:.2f} s "
        f"| {verdict(latency['median'] <= budget_c)} |",
        f"| d. 10 minions / 1 minion <= 2.0 | {ratio_d:.3f} (5 minions: "
        f"{fleet['iemkey.rotate', 5]['median'] / fleet['iemkey.rotate', 1]['median']:.3f}; the bare procedure "
        f"through Salt: {ratio_d_bare:.3f}) | {verdict(ratio_d <= 2.0)} |",
        f"| d. fan-out: 10 minions iemkey.rotate / 10 minions bare procedure <= 1.05 (signing included) "
        f"| {fan_out:.3f} | {verdict(fan_out <= 1.05)} |",
        f"| e. verification adds to compromise -> rotation < 0.1 s | {added_e:+.3f} s | {verdict(added_e < 0.1)} |",
        "",
        *scaled,
        "",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    (HERE / "RESULTS.md").write_text(text)


if __name__ == "__main__":
    main()
