"""The runner's unit tests: the master's opts in a temp dir, real minion key pairs, LocalClient faked."""

import pytest
import salt.client
from runner_fakes import KEYS, FakeLocalClient


@pytest.fixture
def local(monkeypatch):
    client = FakeLocalClient()
    monkeypatch.setattr(salt.client, "get_local_client", lambda *a, **k: client)
    return client


@pytest.fixture
def master_opts(tmp_path):
    pki = tmp_path / "pki"
    (pki / "minions").mkdir(parents=True)
    for name in ("alpha", "beta"):
        (pki / "minions" / name).write_bytes(KEYS[name][1])
    return {
        "cachedir": str(tmp_path / "cache"),
        "pki_dir": str(pki),
        "sock_dir": str(tmp_path / "sock"),
        "iemkey": {"reactor": {"cooldown": 300, "hook_secret": "unit-hook-secret"}},
    }
