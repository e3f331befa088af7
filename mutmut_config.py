"""
mutmut's hook (it imports this file from the repository root): run, for each mutant, only the unit
and then the functional tests that execute the mutated code, as recorded by `make mutation`'s
coverage pass (.mutation/tests-by-line.json). Code that runs when the module is imported (a
function's signature, module-level tables) ran under whichever test imported the module first, so
for a signature line the tests of the function's body count, and for module-level lines (the per-OS
table, defaults, imports) every unit test that touched the module: the unit layer is where each OS's
row is asserted, and the functional layer (Linux only, ~25 s a run) would be paid by every survivor.
A line no test executes gets a command that passes: the mutant survives and the report says why.
"""

import ast
import json
import os
import pathlib
import shlex
import sys

HERE = pathlib.Path(__file__).resolve().parent
STEP_TIMEOUT = "150"
_MAP = {}
_FUNCTIONS = {}
_STATEMENTS = {}


def _tests_by_line(filename):
    if not _MAP:
        _MAP.update(json.loads((HERE / ".mutation" / "tests-by-line.json").read_text()))
    return _MAP.get(filename, {})


def _functions(filename):
    """(first line, first body line, last line, name) of each top-level function and of each method of
    a top-level class (``Class.method``), 1-based. A method is a function: its mutants run the tests
    that execute it, not every unit test that imported its module (which left the functional-only
    tests of a class, such as the Redis store's, out)."""
    if filename not in _FUNCTIONS:
        tree = ast.parse((HERE / filename).read_text())
        found = []
        for top in tree.body:
            nodes = [(top, top.name)] if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef)) else []
            if isinstance(top, ast.ClassDef):
                kinds = (ast.FunctionDef, ast.AsyncFunctionDef)
                nodes = [(node, f"{top.name}.{node.name}") for node in top.body if isinstance(node, kinds)]
            found += [
                (
                    min([node.lineno] + [d.lineno for d in node.decorator_list]),
                    node.body[0].lineno,
                    node.end_lineno,
                    name,
                )
                for node, name in nodes
            ]
        _FUNCTIONS[filename] = found
    return _FUNCTIONS[filename]


def _statement_lines(filename, line):
    """The lines of the innermost statement that holds ``line``: coverage records a statement that
    spans lines (a call, a message split over lines) on its first line only."""
    if filename not in _STATEMENTS:
        tree = ast.parse((HERE / filename).read_text())
        _STATEMENTS[filename] = [(n.lineno, n.end_lineno) for n in ast.walk(tree) if isinstance(n, ast.stmt)]
    spans = [(first, last) for first, last in _STATEMENTS[filename] if first <= line <= last]
    first, last = min(spans, key=lambda span: span[1] - span[0], default=(line, line))
    return range(first, last + 1)


def covering_tests(filename, line):
    """The tests that run the code on ``line`` (1-based), and the function it belongs to."""
    by_line = _tests_by_line(filename)
    for first, body, last, name in _functions(filename):
        if first <= line <= last:
            if line >= body:
                return {t for n in _statement_lines(filename, line) for t in by_line.get(str(n), ())}, name
            return {t for n in range(body, last + 1) for t in by_line.get(str(n), ())}, name
    return {t for tests in by_line.values() for t in tests if t.startswith("tests/unit/")}, None


def pre_mutation(context):
    line = context.mutation_id.line_number + 1
    tests, function = covering_tests(context.filename, line)
    scope = os.environ.get("IEMKEY_MUTATION_FUNCTIONS")
    if scope and (function or "(module)") not in scope.split(","):
        context.skip = True
        return
    # a mutant can make a test hang (endless retries): the step ends itself before mutmut's own timeout
    # (make mutation sets it to 60 s + 3 x the baseline), which kills only this shell, not its pytest
    pytest = shlex.join(
        ["timeout", "-k", "5", STEP_TIMEOUT, sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    )
    steps = [
        f"{pytest} {shlex.join(sorted(t for t in tests if t.startswith(layer)))}"
        for layer in ("tests/unit/", "tests/functional/")
        if any(t.startswith(layer) for t in tests)
    ]
    # unit tests first (seconds), the functional ones only if the unit tests let the mutant live.
    # mutmut 2 counts only exit status 1 as "the tests failed": a step that errors (2: the mutant
    # broke an import) or hangs (124 from timeout) noticed the mutant too, so every failure exits 1
    chain = f"{' && '.join(steps)} || exit 1" if steps else "true"
    context.config.test_command = shlex.join(["sh", "-c", chain])
