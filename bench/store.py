"""
The store section of `make bench` (BENCH_PARTS=store): what one decision's store operations cost on
the local files and on a Redis server on loopback (redis-server started here, append-only file with
fsync on every write, as README tells operators), with N cases already on record, in one run:

- claim: ``add`` of a new nonce (one per signed event);
- update: ``update`` of one compromise record (one per alert);
- read a minion's cases: ``all("cases", prefix="<minion>:")`` among N (one per rotated event);
- read every case: ``all("cases")`` (one per clean-up pass).
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "_utils"), str(HERE.parent / "tests" / "support")]

import iemkey_store  # noqa: E402


def _per_op(fn, count):
    samples = []
    for n in range(count):
        start = time.perf_counter()
        fn(n)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def measure(store, cases, count=300):
    for n in range(cases):
        store.put("cases", f"m{n}:{1000 + n}", {"status": "deleted", "minion": f"m{n}", "old_computer_id": str(n)})
    store.put("compromises", "m1", {"alerts": 0})

    def bump(_n):
        with store.update("compromises", "m1") as record:
            record["alerts"] += 1

    return {
        "claim (add a nonce)": _per_op(lambda n: store.add("nonces", f"m1:{n:032x}", {"expires": 1}), count),
        "update one record": _per_op(bump, count),
        "a minion's cases among N": _per_op(lambda n: store.all("cases", prefix=f"m{n % cases}:"), count // 3),
        "every case (one clean-up pass)": _per_op(lambda _n: store.all("cases"), 5),
    }


def run(cases=10000):
    import redisserver

    with tempfile.TemporaryDirectory(prefix="iemkey-bench-store-") as tmp:
        local = measure(iemkey_store.LocalStore(Path(tmp) / "local"), cases)
        server = redisserver.RedisServer(Path(tmp) / "redis").start()
        try:
            shared = measure(iemkey_store.from_opts({"iemkey": {"store": server.conf(prefix="bench")}}), cases)
        finally:
            server.stop()
    lines = [
        f"## Store: one decision's operations, local files vs Redis on loopback ({cases:,} cases on record)",
        "",
        "Median seconds per operation, measured in one run (Redis: append-only file, `appendfsync always`).",
        "",
        "| operation | local files | redis | redis / local |",
        "|---|---|---|---|",
    ]
    for name, seconds in local.items():
        theirs = shared[name]
        lines.append(f"| {name} | {seconds * 1000:.3f} ms | {theirs * 1000:.3f} ms | {theirs / seconds:.2f} |")
    return lines


if __name__ == "__main__":
    print("\n".join(run(int(sys.argv[1]) if len(sys.argv) > 1 else 10000)))
