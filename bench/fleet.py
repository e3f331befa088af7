"""
`make bench` part `fleet` (BENCH_PARTS="... fleet"): reading every computer of a large BigFix fleet for
the report's agents outside Salt (`iemkey_coverage.survey`), against the stand-in BigFix server in a
process of its own on loopback (so that the memory measured is iemkey's, not the server's): wall time,
requests, and the peak of what Python allocated in iemkey's process (tracemalloc), at each size in
BENCH_FLEET (default 10000 50000 250000), once with every computer covered by a minion (memory bound
by one part's answer) and once with none (every computer is kept to be listed).
"""

import os
import pathlib
import socket
import subprocess
import sys
import time
import tracemalloc

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
SERVER = """
import sys, time
sys.path.insert(0, {support!r})
from werkzeug.serving import make_server
from bigfix_rest import StandInBigFix

size, port = int(sys.argv[1]), int(sys.argv[2])
now = time.time()
server = StandInBigFix([], "op", "pw")
server.check_schema = False  # the tests check its replies; here only iemkey's side is timed
server.others = {{str(10_000_000 + n): {{"name": f"host-{{n}}", "registered": now - 86400, "last_report": now - 600}}
                 for n in range(size)}}
make_server("127.0.0.1", port, server.wsgi, threaded=True).serve_forever()
"""


def _port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(port, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the stand-in BigFix server did not listen on {port}")


def measure(size, chunk=5000):
    sys.path.insert(0, str(REPO / "_utils"))
    import iemkey_bigfix
    import iemkey_coverage

    port = _port()
    code = SERVER.format(support=str(REPO / "tests" / "support"))
    server = subprocess.Popen([sys.executable, "-c", code, str(size), str(port)])
    try:
        _wait(port)
        api = {"url": f"http://127.0.0.1:{port}", "user": "op", "password": "pw", "verify": False}
        api = iemkey_bigfix.settings({**api, "timeout": 120, "retries": 1})
        conf = iemkey_coverage.settings({"chunk": chunk})
        results = {}
        for label, covered in (("every computer a minion's", True), ("no computer a minion's", False)):
            minions = {f"m{n}": {"computer_id": str(10_000_000 + n)} for n in range(size)} if covered else {}
            tracemalloc.start()
            start = time.perf_counter()
            with iemkey_bigfix.session(api) as client:
                found = iemkey_coverage.survey(client, conf, minions, [], True)
                sent = client.requests
            wall = time.perf_counter() - start
            _current, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            assert found["reported"] == size and found["count"] == (0 if covered else size), found["count"]
            results[label] = {"wall": wall, "requests": sent, "parts": found["requests"] - 1, "peak": peak}
        return results
    finally:
        server.terminate()
        server.wait()


def run():
    sizes = [int(n) for n in os.environ.get("BENCH_FLEET", "10000 50000 250000").split()]
    lines = [
        "## Reading the fleet: agents outside Salt (`BENCH_PARTS=fleet`)",
        "",
        "`iemkey_coverage.survey` against the stand-in BigFix server in its own process on loopback,",
        "`iemkey:coverage:chunk` 5000: one request counts the computers, then one per part. Peak: what",
        "Python allocated in iemkey's process during the read (tracemalloc; the minion table included).",
        "",
        "| computers | minions cover | requests | wall s | peak MiB |",
        "|---|---|---|---|---|",
    ]
    for size in sizes:
        print(f"fleet: {size} computers", flush=True)
        for label, r in measure(size).items():
            lines.append(f"| {size:,} | {label} | {r['requests']} | {r['wall']:.1f} | {r['peak'] / 2**20:.1f} |")
    return lines
