"""README stays true: its config blocks parse, and every iemkey function it shows exists, documented."""

import ast
import pathlib
import re

import pytest
import salt.config
import yaml
from helpers import REPO

README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"^ *```(\w*)\n(.*?)^ *```", README, flags=re.S | re.M)


def _public_functions(kind):
    tree = ast.parse((REPO / kind / "iemkey.py").read_text())
    return {
        node.name: ast.get_docstring(node) or ""
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")
    }


MODULE, STATE, RUNNER = (_public_functions(kind) for kind in ("_modules", "_states", "_runners"))


def test_readme_has_the_two_commands_and_no_links_outside_the_repo():
    assert "make demo" in README and "make test" in README
    assert "../shared" not in README
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if not target.startswith("http"):
            assert (REPO / target).exists(), target


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
    assert ("salt-run", "cleanup") in seen and ("salt-call", "alert") in seen


@pytest.mark.parametrize(("kind", "functions"), [("module", MODULE), ("runner", RUNNER)])
def test_every_public_function_is_in_the_readme_with_a_cli_example(kind, functions):
    for name, doc in functions.items():
        if kind == "runner" and name == "react":
            continue  # the reactors' entry point: README describes it under "Reactor"
        assert f"iemkey.{name}" in README, name
        assert "CLI Example:" in doc and f"iemkey.{name}" in doc.split("CLI Example:")[1], name


def test_the_state_is_documented():
    assert set(STATE) == {"rotated"} and "iemkey.rotated" in README


def test_pillar_example_lists_every_key_the_readme_configures():
    text = (REPO / "pillar.example").read_text()
    yaml.safe_load(text)
    for key in re.findall(r"\| `iemkey:(?:reactor:|cleanup:)?(\w+)`", README):
        assert re.search(rf"^\s*#?\s*{key}:", text, flags=re.M), key


def test_every_sls_file_readme_names_exists():
    for path in set(re.findall(r"salt://(iemkey/[\w/]+\.sls)", README)):
        assert (REPO / "salt" / path).is_file(), path
    assert pathlib.Path(REPO / "docs" / "bigfix-facts.md").is_file()


def _reactor_blocks():
    """README's reactor.conf blocks, as the YAML they are."""
    return [
        (text, yaml.safe_load(text))
        for lang, text in BLOCKS
        if lang == "yaml" and "reactor.conf" in text.split("\n", 1)[0] and "reactor:" in text
    ]


def test_the_reactor_blocks_merge_into_an_existing_reactor_conf_that_salt_loads(tmp_path):
    """Operators already have a reactor.conf. README's entries, merged into its one ``reactor:``
    list as README says, load with Salt's own config loader; pasted after it as a second
    ``reactor:`` key they do not (Salt ignores that whole file: the failure README warns of)."""
    blocks = _reactor_blocks()
    assert len(blocks) >= 2
    readme_entries = []
    for _text, block in blocks:
        readme_entries += [entry for entry in block["reactor"] if entry not in readme_entries]
    existing = [{"salt/auth": ["salt://auth/accept.sls"]}, {"salt/minion/*/start": ["salt://start.sls"]}]
    conf = tmp_path / "master"
    conf.write_text(yaml.safe_dump({"root_dir": str(tmp_path / "root")}))
    (tmp_path / "master.d").mkdir()
    reactor_conf = tmp_path / "master.d" / "reactor.conf"
    reactor_conf.write_text(yaml.safe_dump({"reactor": existing + readme_entries}))
    opts = salt.config.master_config(str(conf))
    assert opts["reactor"] == existing + readme_entries
    tags = {tag for entry in opts["reactor"] for tag in entry}
    assert {"iemkey/compromised", "salt/netapi/hook/iemkey/compromised", "iemkey/rotated"} <= tags
    # what README's warning is about: a block appended as is, with a second reactor: key
    reactor_conf.write_text(yaml.safe_dump({"reactor": existing}) + blocks[-1][0])
    assert salt.config.master_config(str(conf))["reactor"] == []  # the whole file is ignored
    assert "merge" in README.split("Console clean-up and revocation")[1][:600]


def _documented_master_defaults():
    """{"section:key": default} of README's configuration table, for the master's numeric settings."""
    found = {}
    for keys, default in re.findall(r"^\| (`iemkey:[^|]*) \(master\) \| [^|]* \| ([^|]*) \|$", README, flags=re.M):
        names = re.findall(r"`([^`]+)`", keys)
        section = names[0].split(":")[1]
        values = [v.strip() for v in default.split("/")]
        for name, value in zip(names, values, strict=False):  # a default may hold a slash
            found[f"{section}:{name.split(':')[-1]}"] = value
    return found


def test_the_master_defaults_are_the_ones_readme_documents():
    import iemkey_bigfix
    import iemkey_cleanup
    import iemkey_gate
    import iemkey_react

    documented = _documented_master_defaults()
    code = {
        **{f"cleanup:{k}": v for k, v in iemkey_cleanup.DEFAULTS.items()},
        **{f"reactor:{k}": v for k, v in {**iemkey_gate.DEFAULTS, **iemkey_react.REACTOR_DEFAULTS}.items()},
        **{f"api:{k}": iemkey_bigfix.DEFAULTS[k] for k in ("concurrency", "lookup")},
    }
    assert {k: str(v) for k, v in code.items()} == {k: documented[k] for k in code}
    # the gate and the decision judge an event's age alike
    assert all(iemkey_gate.DEFAULTS[k] == iemkey_react.REACTOR_DEFAULTS[k] for k in ("max_age", "max_skew"))
