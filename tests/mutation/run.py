"""
`make mutation`: mutation testing of _modules/, _states/, _runners/ and _utils/ with the unit and
functional layers, using mutmut 2 (it writes each mutant into the file on disk, so the functional
tests' real Salt loader loads the mutant as it is; mutmut 3's in-process trampolines key mutants by
module name, which Salt's loader changes, so none of them would ever run).

1. coverage runs both layers once, recording which test executes which line (the functional tests
   run the modules from Salt's extmods copies: those paths are mapped back to the repository's);
2. mutmut runs each mutant against only the tests that execute its line (mutmut_config.py);
3. the report (.mutation/report.txt) lists every surviving mutant as a diff, grouped by function,
   and ends with `mutation score: K/N killed (P%)`.

IEMKEY_MUTATION_FUNCTIONS=f1,f2 limits the run to those functions ((module) for module-level code);
IEMKEY_MUTATION_PATHS=_modules/iemkey.py,... to those files (to run shards in separate clones).
"""

import collections
import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

REPO = pathlib.Path(__file__).resolve().parents[2]
OUT = REPO / ".mutation"
TARGETS = {
    "modules/iemkey.py": "_modules/iemkey.py",
    "states/iemkey.py": "_states/iemkey.py",
    "runners/iemkey.py": "_runners/iemkey.py",
    # every utility module, as Salt's loader syncs it (extmods/utils/) and as tests import it (_utils/)
    **{f"utils/{util.name}": f"_utils/{util.name}" for util in sorted((REPO / "_utils").glob("iemkey_*.py"))},
}
LAYERS = ["tests/unit", "tests/functional"]


def sh(*command, **kwargs):
    print("$", " ".join(map(str, command)), flush=True)
    return subprocess.run(command, cwd=REPO, check=False, **kwargs)


def repository_path(measured):
    """The repository file a measured path is (itself, or Salt's extmods/<kind>/ copy of it)."""
    for suffix, path in TARGETS.items():
        if measured.endswith("/" + suffix) or measured.endswith("_" + suffix):
            return path
    return None


def node_id(context):
    """coverage's test_function context (tests.unit.test_x.test_y or ...Class.test_y) -> pytest node id."""
    parts = context.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module = REPO.joinpath(*parts[:cut]).with_suffix(".py")
        if module.is_file():
            return f"{module.relative_to(REPO)}::{'::'.join(parts[cut:])}"
    return None


def coverage_map():
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    run = sh(
        sys.executable,
        "-m",
        "coverage",
        "run",
        "--rcfile=tests/mutation/coveragerc",
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        *LAYERS,
    )
    if run.returncode != 0:
        raise SystemExit("the tests fail without any mutation: fix them first")
    import coverage

    data = coverage.CoverageData(basename=str(OUT / "coverage"))
    data.read()  # the raw data: Salt's extmods copies the functional tests ran are gone by now
    tests = collections.defaultdict(lambda: collections.defaultdict(set))
    for path in data.measured_files():
        target = repository_path(path)
        for line, contexts in (data.contexts_by_lineno(path) or {}).items() if target else ():
            tests[target][str(line)].update(filter(None, map(node_id, contexts)))
    (OUT / "tests-by-line.json").write_text(
        json.dumps(
            {path: {line: sorted(ids) for line, ids in lines.items()} for path, lines in tests.items()}, indent=0
        )
    )


def _statuses():
    """{status: count} of the mutants mutmut tested (from its cache)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(REPO / ".mutmut-cache")) as db:
        return dict(db.execute("SELECT status, count(*) FROM Mutant GROUP BY status").fetchall())


def _explained():
    """(file, function or None, original line) -> why a mutant there survives, from
    tests/mutation/explained.txt (an entry's first line is the file, optionally followed by the
    function, for a line that is not unique in the file)."""
    found = {}
    for entry in (REPO / "tests" / "mutation" / "explained.txt").read_text().split("\n\n"):
        lines = [line for line in entry.strip().splitlines() if not line.startswith("#")]
        if len(lines) >= 3:
            path, _, function = lines[0].strip().partition(" ")
            found[(path, function or None, lines[1].strip())] = " ".join(line.strip() for line in lines[2:])
    return found


def report(seconds):
    xml = subprocess.run(
        [sys.executable, "-m", "mutmut", "junitxml"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout
    explained, survivors = _explained(), collections.defaultdict(list)
    sys.path.insert(0, str(REPO))
    from mutmut_config import covering_tests

    for case in ET.fromstring(xml[xml.index("<") :]).iter("testcase"):
        failure = case.find("failure")
        if failure is None:
            continue
        path, line = case.get("file"), case.get("line")
        diff = (failure.text or "").strip()
        original = next((d[1:].strip() for d in diff.splitlines() if d.startswith("-") and not d.startswith("---")), "")
        tests, function = covering_tests(path, int(line))  # the selection mutmut_config made for it
        why = explained.get((path, function, original)) or explained.get((path, None, original))
        why = f"  EXPLAINED: {why}" if why else ("" if tests else "  (no unit or functional test executes this line)")
        survivors[(path, function)].append(f"{path}:{line}{why}\n{diff}")
    status = _statuses()
    killed = status.get("ok_killed", 0) + status.get("ok_suspicious", 0) + status.get("bad_timeout", 0)
    tested = killed + status.get("bad_survived", 0)
    paths = os.environ.get("IEMKEY_MUTATION_PATHS") or ", ".join(TARGETS.values())
    lines = [
        f"mutation testing of {paths} with {' and '.join(LAYERS)}",
        f"wall time {seconds / 60:.1f} min; mutants: {status} (timeouts count as killed: the tests "
        "noticed); skipped = outside IEMKEY_MUTATION_FUNCTIONS",
        "",
    ]
    for (path, function), items in sorted(survivors.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        lines.append(f"== survivors in {path} {function or '(module level)'}: {len(items)}")
        lines.extend(items)
        lines.append("")
    lines.append(f"mutation score: {killed}/{tested} killed ({100 * killed / max(tested, 1):.1f}%)")
    (OUT / "report.txt").write_text("\n".join(lines) + "\n")
    print(f"\nsurvivors: {OUT / 'report.txt'}\n{lines[-1]}")


def main():
    start = time.monotonic()
    coverage_map()
    (REPO / ".mutmut-cache").unlink(missing_ok=True)
    default = f"{sys.executable} -m pytest -x -q -p no:cacheprovider {' '.join(LAYERS)}"
    paths = os.environ.get("IEMKEY_MUTATION_PATHS") or ",".join(TARGETS.values())
    sh(
        sys.executable,
        "-m",
        "mutmut",
        "run",
        "--paths-to-mutate",
        paths,
        "--runner",
        default,
        "--tests-dir",
        "tests",
        "--test-time-base",
        "60",
        "--test-time-multiplier",
        "3",
        "--no-progress",
        "--simple-output",
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    report(time.monotonic() - start)


if __name__ == "__main__":
    main()
