"""
iemkey installed as a Salt extension: the wheel built from this repo, installed with this test run's
Salt into a fresh venv, loads its execution module, state and runner through Salt's loader from the
``salt.loader`` entry point, with no file_roots and no saltutil.sync_*.
"""

import json
import subprocess
import sys
import textwrap

import pytest
import salt.version
from helpers import REPO

PROBE = textwrap.dedent("""
    import json, pathlib, sys
    import salt.config, salt.loader
    root = pathlib.Path(sys.argv[1])
    for name in ("minion", "master"):
        (root / name).write_text(f"root_dir: {root}/{name}-root\\nfile_client: local\\nfile_roots: {{}}\\n")
    opts = salt.config.minion_config(str(root / "minion"))
    opts["grains"] = salt.loader.grains(opts)
    utils = salt.loader.utils(opts)
    funcs = salt.loader.minion_mods(opts, utils=utils)
    states = salt.loader.states(opts, funcs, utils, salt.loader.serializers(opts))
    mopts = salt.config.master_config(str(root / "master"))
    runners = salt.loader.runner(mopts, utils=salt.loader.utils(mopts))
    import saltext.iemkey
    print(json.dumps({
        "salt": salt.version.__version__,
        "extension": saltext.iemkey.__file__,
        "files": sorted({loader[name].func.__globals__["__file__"] for loader, name in (
            (funcs, "iemkey.paths"), (states, "iemkey.rotated"), (runners, "iemkey.report"))}),
        "modules": sorted(f for f in funcs if f.startswith("iemkey.")),
        "states": sorted(f for f in states if f.startswith("iemkey.")),
        "runners": sorted(f for f in runners if f.startswith("iemkey.")),
        "paths": funcs["iemkey.paths"](),
        "formula": sorted(str(p.relative_to(saltext.iemkey.FORMULA_DIR))
                          for p in pathlib.Path(saltext.iemkey.FORMULA_DIR).rglob("*.sls")),
    }))
""")


@pytest.fixture(scope="module")
def extension_venv(tmp_path_factory):
    """A fresh venv with this run's Salt (the pins of its line) and the iemkey wheel."""
    top = tmp_path_factory.mktemp("extension")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(top / "dist"), str(REPO)], check=True
    )
    (wheel,) = (top / "dist").glob("saltext_iemkey-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(top / "venv")], check=True)
    line = salt.version.__saltstack_version__.info[0]
    pins = REPO / "requirements" / f"salt-{line}.txt"
    subprocess.run(
        [
            str(top / "venv/bin/python"),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-c",
            str(pins),
            f"salt=={salt.version.__version__}",
            str(wheel),
        ],
        check=True,
    )
    return top


def test_the_wheel_loads_module_state_and_runner_through_salts_loader(extension_venv, tmp_path):
    probe = subprocess.run(
        [str(extension_venv / "venv/bin/python"), "-c", PROBE, str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout.splitlines()[-1])
    print(json.dumps(found, indent=1))  # the note quotes it
    assert found["salt"] == salt.version.__version__
    site = found["extension"].rsplit("/saltext/iemkey/", 1)[0]
    assert site.startswith(str(extension_venv / "venv"))  # the installed wheel, not this checkout
    assert found["files"] == [f"{site}/saltext/iemkey/{kind}/iemkey.py" for kind in ("modules", "runners", "states")]
    assert {
        "iemkey.alert",
        "iemkey.check",
        "iemkey.paths",
        "iemkey.register",
        "iemkey.restart",
        "iemkey.rotate",
        "iemkey.status",
    } <= set(found["modules"])
    assert found["states"] == ["iemkey.rotated"]
    assert {"iemkey.cleanup", "iemkey.react", "iemkey.remove_computer", "iemkey.report"} <= set(found["runners"])
    assert found["paths"]["os"] == "linux" and found["paths"]["keystorage"] == "/var/opt/BESClient/KeyStorage"
    assert found["formula"] == [
        "iemkey/init.sls",
        "iemkey/orch/rotate.sls",
        "iemkey/reactor/compromised.sls",
        "iemkey/reactor/rotated.sls",
    ]
