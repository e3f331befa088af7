"""
mutmut's hook (it imports this file from the repository root): run, for each mutant, only the unit
and functional tests that execute the mutated line, as recorded by `make mutation`'s coverage pass
(.mutation/tests-by-line.json). A line no test executes keeps a test command that passes: the
mutant survives and the report says why.
"""

import ast
import json
import os
import pathlib
import shlex
import sys

HERE = pathlib.Path(__file__).resolve().parent
_MAP = {}
_SCOPE = {}


def _tests_by_line():
    if not _MAP:
        _MAP.update(json.loads((HERE / ".mutation" / "tests-by-line.json").read_text()))
    return _MAP


def _function_of(filename, line):
    """The name of the top-level function holding ``line`` (1-based), or None."""
    if filename not in _SCOPE:
        tree = ast.parse((HERE / filename).read_text())
        _SCOPE[filename] = [(node.lineno, node.end_lineno, node.name) for node in tree.body
                            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    return next((name for first, last, name in _SCOPE[filename] if first <= line <= last), None)


def pre_mutation(context):
    line = context.mutation_id.line_number + 1
    scope = os.environ.get("IEMKEY_MUTATION_FUNCTIONS")
    if scope and _function_of(context.filename, line) not in scope.split(","):
        context.skip = True
        return
    tests = _tests_by_line().get(context.filename, {}).get(str(line), [])
    if tests:
        context.config.test_command = shlex.join(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests])
    else:
        context.config.test_command = shlex.join([sys.executable, "-c", "pass"])  # no test runs this line
