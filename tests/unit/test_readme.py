"""The README and the docs stay true: their config blocks parse and load as Salt loads them, every
iemkey function they show exists and is documented with a CLI example, every setting they document
is in pillar.example with the default the code has, every link resolves, and the version is one."""

import ast
import pathlib
import re

import pytest
import salt.config
import yaml
from helpers import REPO

README = (REPO / "README.md").read_text()
TOPICS = {path.name: path.read_text() for path in sorted((REPO / "docs" / "topics").glob("*.md"))}
DOCS = "\n".join([README, *TOPICS.values()])
FENCE = re.compile(r"^ *```(\w*)\n(.*?)^ *```", flags=re.S | re.M)
BLOCKS = FENCE.findall(DOCS)


def _public_functions(kind):
    tree = ast.parse((REPO / kind / "iemkey.py").read_text())
    return {
        node.name: ast.get_docstring(node) or ""
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")
    }


MODULE, STATE, RUNNER = (_public_functions(kind) for kind in ("_modules", "_states", "_runners"))


def test_readme_is_short_has_the_two_commands_and_no_links_outside_the_repo():
    assert len(README.encode()) <= 12 * 1024
    assert "make demo" in README and "make test" in README
    assert "../shared" not in DOCS


@pytest.mark.parametrize("name", ["README.md", *[f"docs/topics/{n}" for n in TOPICS]])
def test_every_relative_link_resolves(name):
    path = REPO / name
    for target in re.findall(r"\]\(([^)#\s]+)\)", path.read_text()):
        if not target.startswith(("http://", "https://")):
            assert (path.parent / target).exists(), target


@pytest.mark.parametrize("block", [text for lang, text in BLOCKS if lang == "yaml"], ids=lambda t: t.split("\n")[0])
def test_every_yaml_block_parses(block):
    assert yaml.safe_load(block) is not None


def test_every_command_names_a_function_that_exists():
    shell = "\n".join(text for lang, text in BLOCKS if lang in ("bash", ""))
    seen = set()
    # the function is the first word after the program (and, for salt, its target)
    command = r"\b(salt-run|salt-call|salt(?:\s+(?:'[^']*'|[\w.*-]+)))\s+(?:-\S+\s+)*iemkey\.(\w+)"
    for invocation, function in re.findall(command, shell):
        program = invocation.split()[0]
        known = RUNNER if program == "salt-run" else MODULE
        assert function in known, f"{program} iemkey.{function}"
        seen.add((program, function))
    assert {("salt-run", "cleanup"), ("salt-call", "alert"), ("salt-run", "incident"), ("salt-run", "owed")} <= seen


@pytest.mark.parametrize(("kind", "functions"), [("module", MODULE), ("runner", RUNNER)])
def test_every_public_function_is_in_the_docs_with_a_cli_example(kind, functions):
    for name, doc in functions.items():
        assert f"iemkey.{name}" in DOCS, name
        assert "CLI Example:" in doc and f"iemkey.{name}" in doc.split("CLI Example:")[1], name


def test_the_state_is_documented():
    assert set(STATE) == {"rotated"} and "iemkey.rotated" in TOPICS["formula.md"]


CONFIGURATION = TOPICS["configuration.md"]


def test_pillar_example_lists_every_key_the_docs_configure_and_is_safe_to_copy():
    text = (REPO / "pillar.example").read_text()
    documented = set()
    for keys in re.findall(r"^\| (`iemkey:[^|]*) \|", CONFIGURATION, flags=re.M):
        for name in re.findall(r"`([^`]+)`", keys):
            documented.add(name.split(":")[-1])
    assert {"rotated_since", "require_agent", "alert_resend", "batch_window", "redeliver_every"} <= documented
    for key in documented:
        assert re.search(rf"^\s*#?\s*{key}:", text, flags=re.M), key
    # copied as it is, it sets nothing that changes anything: the one live key is its default
    assert yaml.safe_load(text) == {"iemkey": {"wait": 0}}


def test_every_sls_file_the_docs_name_exists():
    for path in set(re.findall(r"salt://(iemkey/[\w/]+\.sls)", DOCS)):
        assert (REPO / "salt" / path).is_file(), path
    assert pathlib.Path(REPO / "docs" / "bigfix-facts.md").is_file()


def _documented_master_defaults():
    """{"section:key": default} of the configuration table, for the master's numeric settings."""
    found = {}
    for keys, default in re.findall(r"^\| (`iemkey:[^|]*) \(master\) \| [^|]* \| ([^|]*) \|$", CONFIGURATION, re.M):
        names = re.findall(r"`([^`]+)`", keys)
        section = names[0].split(":")[1]
        values = [v.strip() for v in default.split("/")]
        for name, value in zip(names, values, strict=False):  # a default may hold a slash
            found[f"{section}:{name.split(':')[-1]}"] = value
    return found


def test_the_master_defaults_are_the_ones_the_docs_document():
    import iemkey_bigfix
    import iemkey_cleanup
    import iemkey_config
    import iemkey_owed

    documented = _documented_master_defaults()
    code = {
        **{f"cleanup:{k}": v for k, v in iemkey_cleanup.DEFAULTS.items()},
        **{f"reactor:{k}": v for k, v in iemkey_config.REACTOR.items()},
        **{f"delivery:{k}": v for k, v in iemkey_owed.DEFAULTS.items()},
        **{f"api:{k}": iemkey_bigfix.DEFAULTS[k] for k in ("concurrency", "lookup")},
    }
    assert {k: str(v) for k, v in code.items()} == {k: documented[k] for k in code}


def test_the_engine_blocks_load_as_salt_loads_a_master_config_and_run_the_engine(tmp_path):
    """What the docs tell an operator to add runs the engine, merged into a master.d with other
    engines already there (Salt reads each config file's keys once)."""
    import iemkey_engine

    blocks = [yaml.safe_load(text) for lang, text in BLOCKS if lang == "yaml" and "engines:" in text]
    assert len(blocks) >= 2
    conf = tmp_path / "master"
    conf.write_text(yaml.safe_dump({"root_dir": str(tmp_path / "root")}))
    (tmp_path / "master.d").mkdir()
    for number, block in enumerate(blocks):
        existing = [{"webhook": {"port": 9000}}]
        (tmp_path / "master.d" / "iemkey.conf").write_text(
            yaml.safe_dump({**block, "engines": existing + block["engines"]})
        )
        opts = salt.config.master_config(str(conf))
        assert iemkey_engine.configured(opts), number
        assert iemkey_engine.iemkey_config.delivery(opts)  # the delivery settings shown are valid


def test_no_doc_tells_an_operator_to_map_iemkeys_reactor_files_any_more():
    for lang, text in BLOCKS:
        if lang == "yaml":
            assert "iemkey/reactor/" not in text, text


def test_the_version_is_one():
    version = (REPO / "VERSION").read_text().strip()
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)
    formula = yaml.safe_load((REPO / "FORMULA").read_text())
    assert str(formula["version"]) == version
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject and 'version = {file = "VERSION"}' in pyproject
    changelog = (REPO / "CHANGELOG.md").read_text()
    assert re.search(r"^## (\S+)", changelog, re.M).group(1) == version  # the newest entry is this version
