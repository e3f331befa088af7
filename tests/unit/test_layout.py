"""
The layout the developers' guide asks for: loader modules are thin glue over ``_utils/iemkey_*``,
and no iemkey module imports, directly or through others, a module that imports it back (an import
cycle makes which one loads first matter, and hides which one owns what). Imports inside functions
count: a lazy cycle is still a cycle.
"""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
FOLDERS = ("_utils", "_modules", "_states", "_runners", "_engines", "_grains")


def _iemkey_imports(path):
    """The iemkey utility modules ``path`` imports, wherever the import statement is."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.rsplit(".", 1)[-1] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            found |= {alias.name for alias in node.names}
            if node.module:
                found.add(node.module.rsplit(".", 1)[-1])
    return {name for name in found if name.startswith("iemkey_")}


def graph():
    """{module: the iemkey utility modules it imports}; utilities by their name, loader modules by
    folder/name (they share the name ``iemkey``)."""
    edges = {}
    for folder in FOLDERS:
        for path in sorted((REPO / folder).glob("*.py")):
            name = path.stem if folder == "_utils" else f"{folder}/{path.stem}"
            edges[name] = _iemkey_imports(path)
    return edges


def cycles(edges):
    """Every import cycle in ``edges``, each as the list of modules around it (first repeated last)."""
    found, done = [], set()

    def visit(node, path):
        for nxt in sorted(edges.get(node, ())):
            if nxt in path:
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in done:
                visit(nxt, [*path, nxt])
        done.add(node)

    for start in sorted(edges):
        if start not in done:
            visit(start, [start])
    return found


def test_the_graph_sees_the_imports_it_must():
    """The check below is only worth something if the graph finds imports, lazy ones included."""
    edges = graph()
    assert {"iemkey_store", "iemkey_engine", "iemkey_report"} <= edges["_runners/iemkey"]
    assert "iemkey_redis" in edges["iemkey_store"]  # imported inside from_opts
    assert "iemkey_banks" in edges["iemkey_redis"]
    assert edges["_engines/iemkey"] == {"iemkey_engine"}


@pytest.mark.parametrize(
    "edges, expected",
    [
        ({"a": {"b"}, "b": {"a"}}, [["a", "b", "a"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c", "a"]]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
        ({"a": {"a"}}, [["a", "a"]]),
    ],
)
def test_cycles_finds_a_cycle_of_any_length(edges, expected):
    assert cycles(edges) == expected


def test_no_iemkey_module_imports_one_that_imports_it_back():
    assert cycles(graph()) == []


def test_every_import_of_a_utility_names_one_that_exists():
    """A misspelt or removed utility is found here, not at a master's first event."""
    utilities = {path.stem for path in (REPO / "_utils").glob("iemkey_*.py")}
    missing = {name: sorted(deps - utilities) for name, deps in graph().items() if deps - utilities}
    assert not missing


def test_every_exception_iemkey_raises_derives_from_one_base():
    """``except iemkey_errors.IemkeyError`` catches every error iemkey raises on purpose."""
    import importlib
    import inspect

    import iemkey_errors

    found = {}
    for path in sorted((REPO / "_utils").glob("iemkey_*.py")):
        module = importlib.import_module(path.stem)
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BaseException) and cls.__module__ == module.__name__:
                found[f"{path.stem}.{name}"] = issubclass(cls, iemkey_errors.IemkeyError)
    assert len(found) >= 8 and all(found.values()), found
