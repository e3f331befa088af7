"""The runner's unit tests: the master's opts in a temp dir, real minion key pairs, LocalClient faked."""

import pytest
import salt.client
from runner_fakes import FakeLocalClient, accepted_keys


@pytest.fixture
def local(monkeypatch):
    client = FakeLocalClient()
    monkeypatch.setattr(salt.client, "get_local_client", lambda *a, **k: client)
    return client


@pytest.fixture
def master_opts(tmp_path):
    return {
        "cachedir": str(tmp_path / "cache"),
        "pki_dir": accepted_keys(tmp_path),
        "sock_dir": str(tmp_path / "sock"),
        "iemkey": {"reactor": {"cooldown": 300, "hook_secret": "unit-hook-secret"}},
    }
