"""The minion's events carry its own signature: iemkey.alert and the iemkey/rotated of iemkey.rotate."""

import datetime

import iemkey_auth
import pytest
from helpers import load_source, rsa_key_pair
from salt.exceptions import CommandExecutionError

iemkey = load_source("_modules", "iemkey_module_events")
UTC = datetime.timezone.utc


@pytest.fixture(scope="module")
def minion_key():
    return rsa_key_pair()


@pytest.fixture
def sent():
    return []


@pytest.fixture
def configure_loader_modules(tmp_path, minion_key, sent):
    (tmp_path / "minion.pem").write_bytes(minion_key[0])

    def send(tag, data):
        sent.append((tag, data))
        return True

    return {
        iemkey: {
            "__opts__": {"id": "web01", "pki_dir": str(tmp_path), "cachedir": str(tmp_path), "file_client": "remote"},
            "__grains__": {"kernel": "Linux"},
            "__salt__": {"event.send": send},
        }
    }


def _verify(tag, data, public):
    return iemkey_auth.verify(tag, data, public, datetime.datetime.now(UTC), max_age=60, max_skew=5)


def test_alert_sends_a_compromise_signed_with_this_minions_key(sent, minion_key):
    ret = iemkey.alert(reason="IDS rule 4711")
    assert ret["sent"] is True and ret["id"] == "web01" and ret["reason"] == "IDS rule 4711"
    ((tag, data),) = sent
    assert tag == "iemkey/compromised"
    minion_id, payload, signed_at, _nonce = _verify(tag, data, minion_key[1])
    assert (minion_id, payload) == ("web01", {"reason": "IDS rule 4711"})
    assert signed_at.isoformat() == ret["signed_at"]


def test_alert_reasons_are_cut_at_1000_characters(sent):
    assert len(iemkey.alert(reason="x" * 5000)["reason"]) == 1000


def test_alert_fails_loudly_when_nothing_was_sent(sent, monkeypatch):
    iemkey.__salt__["event.send"] = lambda tag, data: False
    with pytest.raises(CommandExecutionError, match="could not send iemkey/compromised"):
        iemkey.alert(reason="x")


def test_alert_needs_a_master(sent):
    iemkey.__opts__["file_client"] = "local"
    with pytest.raises(CommandExecutionError, match="masterless"):
        iemkey.alert()
    assert sent == []


def test_the_rotated_event_is_signed_and_masterless_sends_none(sent, minion_key):
    assert iemkey._fire("iemkey/rotated", {"old_computer_id": "1001", "rotated_at": "2026-11-27T00:00:00+00:00"})
    ((tag, data),) = sent
    assert _verify(tag, data, minion_key[1])[1] == {
        "old_computer_id": "1001",
        "rotated_at": "2026-11-27T00:00:00+00:00",
    }
    iemkey.__opts__["file_client"] = "local"
    assert iemkey._fire("iemkey/rotated", {}) is False and len(sent) == 1


def test_an_unreadable_minion_key_is_a_clear_error(sent, tmp_path):
    (tmp_path / "minion.pem").unlink()
    with pytest.raises(CommandExecutionError, match=r"cannot sign the iemkey/compromised event .*minion\.pem"):
        iemkey.alert()
