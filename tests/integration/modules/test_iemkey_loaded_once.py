"""
Issue 26: one import path per module at runtime. Each utility module is importable as ``iemkey_x``
(a formula's synced ``_utils``) or ``saltext.iemkey.utils.iemkey_x`` (the extension), and Salt's
own utils loader could load it a third time as ``salt.loaded.ext.utils.iemkey_x``: two copies of
one file are two ``StoreError`` classes, two key caches, two locks. In a real minion's job process
(after the module, the state and the grain ran) and in a real ``salt-run`` process (after the
runner ran), a probe synced beside iemkey lists the modules Python holds: every iemkey utility once.
"""

import collections

import pytest

PROBE_MODULE = '''
import sys


def modules():
    """Run iemkey's execution module and state here, then list what Python holds."""
    __salt__["iemkey.status"]()
    __salt__["state.single"]("iemkey.rotated", "probe", since="2001-01-01T00:00:00Z", test=True)
    return sorted(name for name in sys.modules if "iemkey" in name)
'''

PROBE_RUNNER = '''
import sys

import salt.loader


def modules():
    """Run iemkey's runner here, then list what Python holds."""
    runners = salt.loader.runner(__opts__)
    runners["iemkey.owed"]()
    runners["iemkey.history"](minion="nobody")
    return sorted(name for name in sys.modules if "iemkey" in name)
'''


@pytest.fixture(scope="module")
def probes(state_root, salt_master, salt_minion):
    salt_cli, salt_run_cli = salt_master.salt_cli(timeout=120), salt_master.salt_run_cli(timeout=120)
    for kind, text in (("_modules", PROBE_MODULE), ("_runners", PROBE_RUNNER)):
        (state_root / kind).mkdir(exist_ok=True)
        (state_root / kind / "probe_loaded.py").write_text(text)
    assert salt_cli.run("saltutil.sync_modules", minion_tgt=salt_minion.id).returncode == 0
    assert salt_run_cli.run("saltutil.sync_runners").returncode == 0
    yield
    for kind in ("_modules", "_runners"):
        (state_root / kind / "probe_loaded.py").unlink()
    salt_cli.run("saltutil.sync_modules", minion_tgt=salt_minion.id)
    salt_run_cli.run("saltutil.sync_runners")


def _twice(names):
    """{utility: [every name it is loaded under]} for the utilities loaded more than once."""
    by_file = collections.defaultdict(list)
    for name in names:
        last = name.rsplit(".", 1)[-1]
        if last.startswith("iemkey_"):
            by_file[last].append(name)
    return {util: found for util, found in by_file.items() if len(found) > 1}


def _loaded_once(ret, expected):
    """The probe answered, listed ``expected`` among the modules it holds, each utility once."""
    assert ret.returncode == 0, ret
    names = ret.data
    assert expected <= {n.rsplit(".", 1)[-1] for n in names}, names
    assert _twice(names) == {}


def test_the_minion_loads_each_iemkey_utility_once(probes, salt_cli, salt_minion):
    ret = salt_cli.run("probe_loaded.modules", minion_tgt=salt_minion.id)
    _loaded_once(ret, {"iemkey_platforms", "iemkey_storage", "iemkey_record", "iemkey_time"})


def test_the_master_loads_each_iemkey_utility_once(probes, salt_run_cli):
    ret = salt_run_cli.run("probe_loaded.modules")
    _loaded_once(ret, {"iemkey_store", "iemkey_owed", "iemkey_cleanup", "iemkey_incidents"})


def test_twice_finds_a_utility_under_two_names():
    names = ["iemkey_store", "saltext.iemkey.utils.iemkey_store", "iemkey_owed", "salt.loaded.ext.runners.iemkey"]
    assert _twice(names) == {"iemkey_store": ["iemkey_store", "saltext.iemkey.utils.iemkey_store"]}
