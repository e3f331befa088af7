"""
Issue 28: the docs' shell blocks, as pasted, against a real master on the dev pin. The wait-for-
minions loop of docs/topics/install.md keeps waiting while an accepted minion is down and ends once
none is (the form README showed before, ``[ -z "$(salt-run manage.down --out=txt)" ]``, never ends
on Salt 3008, which prints ``[]`` for none).
"""

import pathlib
import subprocess
import sys

import pytest
from helpers import REPO, rsa_key_pair

INSTALL = (REPO / "docs" / "topics" / "install.md").read_text()
WAIT = next(line for line in INSTALL.splitlines() if line.startswith("until ") and "manage.down" in line)


@pytest.fixture
def cli_path(salt_master, tmp_path):
    """A PATH whose ``salt-run`` is this master's, as an operator's shell on the master has it."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "salt-run"
    salt_run = pathlib.Path(sys.executable).with_name("salt-run")
    wrapper.write_text(f'#!/bin/sh\nexec "{salt_run}" -c "{salt_master.config_dir}" "$@"\n')
    wrapper.chmod(0o755)
    return f"{bindir}:/usr/bin:/bin"


def _wait(cli_path, seconds):
    """Run the docs' loop as pasted, for at most ``seconds``: True if it ended by itself."""
    done = subprocess.run(
        ["timeout", str(seconds), "bash", "-c", WAIT], env={"PATH": cli_path}, capture_output=True, check=False
    )
    assert done.returncode in (0, 124), done
    return done.returncode == 0


def test_the_wait_for_minions_loop_waits_for_a_down_minion_and_ends_when_none_is(
    salt_master, salt_minion, salt_run_cli, cli_path
):
    down = salt_run_cli.run("manage.down")
    assert down.returncode == 0 and not down.data, f"a test before this one left minions down: {down.data}"
    away = pathlib.Path(salt_master.config["pki_dir"]) / "minions" / "docs-away-minion"
    away.write_bytes(rsa_key_pair()[1])  # accepted, never started: down
    try:
        assert not _wait(cli_path, 25), "the loop ended while a minion was down"
    finally:
        away.unlink()
    assert _wait(cli_path, 120), "the loop did not end with every minion up"
