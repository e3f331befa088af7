"""
Re-check the survivors of a `make mutation` shard against the tests of another checkout (the tests
written since the shard ran), without re-running every mutant:

    SHARD_CLONE/.venv-mutation/bin/python tests/mutation/recheck.py SHARD_CLONE > report.txt

For each mutant the shard's ``.mutmut-cache`` says survived, ``mutmut show`` gives its diff; the
mutated line replaces the same original line in this checkout's file (the occurrence nearest the
line number it had; a line that is no longer there is reported as "changed", not as killed), and
the unit tests of that module run against it (-x, 150 s). A failing test kills it. One mutant at
a time (each module's tests import the others), each file restored after it; run it when the shard
has finished (``mutmut show`` reads the shard's own files).
"""

import argparse
import pathlib
import sqlite3
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[2]
UNIT = ["tests/unit/test_readme.py", "tests/unit/runners", "tests/unit/utils"]
TESTS = {  # the unit tests that exercise each master-side module
    "_utils/iemkey_bigfix.py": ["tests/unit/utils/test_iemkey_bigfix.py", "tests/unit/runners"],
    "_utils/iemkey_cleanup.py": [
        "tests/unit/utils/test_iemkey_cleanup.py",
        "tests/unit/test_readme.py",
        "tests/unit/runners",
    ],
    "_utils/iemkey_store.py": ["tests/unit/utils/test_iemkey_store.py", "tests/unit/runners"],
    "_utils/iemkey_gate.py": [
        "tests/unit/utils/test_iemkey_gate.py",
        "tests/unit/test_readme.py",
        "tests/unit/runners/test_iemkey_react.py",
    ],
    "_utils/iemkey_redis.py": [  # its store tests need a real redis-server (functional layer)
        "tests/unit/utils/test_iemkey_redis.py",
        "tests/functional/utils/test_iemkey_store_redis.py",
    ],
    "_utils/iemkey_react.py": [
        "tests/unit/runners",
        "tests/unit/utils/test_iemkey_gate.py",
        "tests/unit/test_readme.py",
    ],
}


def survivors(shard):
    db = sqlite3.connect(shard / ".mutmut-cache")
    rows = db.execute(
        "select m.id, sf.filename, l.line_number from Mutant m join Line l on m.line = l.id "
        "join SourceFile sf on l.sourcefile = sf.id where m.status = 'bad_survived' order by m.id"
    ).fetchall()
    return [(mid, filename, number) for mid, filename, number in rows]


def diff_of(shard, mutant):
    """(original line, mutated line) of ``mutant``, as ``mutmut show`` prints them."""
    shown = subprocess.run(
        [sys.executable, "-m", "mutmut", "show", str(mutant)], cwd=shard, capture_output=True, text=True, check=True
    ).stdout
    removed = [line[1:] for line in shown.splitlines() if line.startswith("-") and not line.startswith("---")]
    added = [line[1:] for line in shown.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return ("\n".join(removed), "\n".join(added))


def check(filename, number, original, mutated, tests):
    path = REPO / filename
    source = path.read_text()
    lines = source.split("\n")
    first = original.split("\n")
    found = [i for i in range(len(lines)) if lines[i : i + len(first)] == first]
    if not found:
        return "changed"
    at = min(found, key=lambda i: abs(i + 1 - number))
    lines[at : at + len(first)] = mutated.split("\n") if mutated else []
    path.write_text("\n".join(lines))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ran = subprocess.run(
                [
                    "timeout",
                    "-k",
                    "5",
                    "150",
                    sys.executable,
                    "-m",
                    "pytest",
                    "-x",
                    "-q",
                    "-p",
                    "no:cacheprovider",
                    f"--basetemp={tmp}/t",
                    *tests,
                ],
                cwd=REPO,
                capture_output=True,
                check=False,
            )
        return "killed" if ran.returncode != 0 else "survived"
    finally:
        path.write_text(source)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("shard", type=pathlib.Path)
    parser.add_argument("--ids", type=lambda text: {int(i) for i in text.split(",")}, help="only these mutants")
    args = parser.parse_args()
    results = []
    for mutant, filename, number in survivors(args.shard):
        if args.ids and mutant not in args.ids:
            continue
        original, mutated = diff_of(args.shard, mutant)
        status = check(filename, number, original, mutated, TESTS.get(filename, UNIT))
        results.append((mutant, filename, number, original, mutated, status))
    for mutant, filename, number, original, mutated, status in results:
        print(f"{status.upper():9} {mutant:4} {filename}:{number}\n    - {original.strip()}\n    + {mutated.strip()}")
    counts = {s: sum(1 for r in results if r[-1] == s) for s in ("killed", "survived", "changed")}
    print(
        f"\nre-checked {len(results)} survivors: {counts['killed']} killed, {counts['survived']} survive, "
        f"{counts['changed']} on lines that changed"
    )


if __name__ == "__main__":
    main()
