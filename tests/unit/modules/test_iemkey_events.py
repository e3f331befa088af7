"""The minion's events carry its own signature: iemkey.alert and the iemkey/rotated of iemkey.rotate."""

import datetime
import json
import logging

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


class Schedule:
    """The minion's schedule module as iemkey uses it: ``online`` is whether the minion daemon answers
    (schedule.add/delete through it); ``offline=True`` writes the persisted file itself."""

    def __init__(self):
        self.jobs, self.saved, self.online, self.calls = {}, {}, True, []

    def list(self, return_yaml=True, offline=False):
        assert return_yaml is False
        return dict(self.saved if offline else self.jobs)

    def add(self, name, persist=True, offline=False, **job):
        self.calls.append(("add", name, "offline" if offline else "online"))
        if offline:
            self.saved[name] = job
            return {"result": True, "comment": f"Added job: {name} to schedule."}
        if not self.online:
            return {"result": False, "comment": "the minion daemon did not answer"}
        self.jobs[name] = job
        if persist:
            self.saved[name] = job
        return {"result": True, "comment": f"Added job: {name} to schedule."}

    def delete(self, name, persist=True, offline=False):
        self.calls.append(("delete", name, "offline" if offline else "online"))
        if not offline and not self.online:
            return {"result": False, "comment": "the minion daemon did not answer"}
        self.jobs.pop(name, None)
        self.saved.pop(name, None)
        return {"result": True}


@pytest.fixture
def schedule():
    return Schedule()


@pytest.fixture
def configure_loader_modules(tmp_path, minion_key, sent, schedule):
    (tmp_path / "minion.pem").write_bytes(minion_key[0])

    def send(tag, data):
        sent.append((tag, data))
        return True

    return {
        iemkey: {
            "__opts__": {"id": "web01", "pki_dir": str(tmp_path), "cachedir": str(tmp_path), "file_client": "remote"},
            "__grains__": {"kernel": "Linux"},
            "__salt__": {
                "event.send": send,
                "config.get": lambda key, default=None: default,
                "schedule.list": schedule.list,
                "schedule.add": schedule.add,
                "schedule.delete": schedule.delete,
            },
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
    assert minion_id == "web01" and signed_at.isoformat() == ret["signed_at"]
    assert payload == {"reason": "IDS rule 4711", "alert_id": ret["alert_id"], "raised_at": payload["raised_at"]}
    assert datetime.datetime.fromisoformat(payload["raised_at"]) <= signed_at


def test_alert_reasons_are_cut_at_1000_characters(sent):
    assert len(iemkey.alert(reason="x" * 5000)["reason"]) == 1000


def test_alert_fails_loudly_when_nothing_was_sent_and_keeps_the_alert_to_send_again(sent, tmp_path, schedule):
    iemkey.__salt__["event.send"] = lambda tag, data: False
    with pytest.raises(CommandExecutionError) as raised:
        iemkey.alert(reason="x")
    assert str(raised.value) == (
        "could not send iemkey/compromised to any master (minion daemon: event.send returned False); the alert is "
        "kept and sent again: every 60 s (schedule iemkey-alert-resend)"
    )
    (kept,) = (tmp_path / "iemkey" / "alerts").glob("*.json")
    assert json.loads(kept.read_text())["took"] is False


# -- at-least-once: kept, sent again, forgotten once a rotation follows -------------------------------
def test_an_alert_is_kept_and_the_schedule_sends_it_again_with_its_id_and_time_until_a_rotation_follows(
    sent, tmp_path, schedule, minion_key
):
    ret = iemkey.alert(reason="EDR")
    assert ret["resend"] == "every 60 s (schedule iemkey-alert-resend)"
    assert schedule.jobs["iemkey-alert-resend"] == {
        "function": "iemkey.resend_alerts",
        "seconds": 60,
        "run_on_start": False,  # not at once: the alert was just sent
        "maxrunning": 1,
    }
    assert schedule.saved == schedule.jobs  # persisted: it survives a minion restart
    again = iemkey.resend_alerts()
    assert list(again["sent_again"]) == [ret["alert_id"]] and again["kept"] == 1
    first, second = (_verify(tag, data, minion_key[1]) for tag, data in sent)
    assert first[1] == second[1] and first[3] != second[3]  # the same alert, a new signature
    # a rotation iemkey made after the alert was raised: it is done
    record = {"step": "done", "rotated_at": datetime.datetime.now(UTC).isoformat(), "keystorage": "/k"}
    (tmp_path / "iemkey" / "rotation.json").write_text(json.dumps(record))
    done = iemkey.resend_alerts()
    assert done == {"sent_again": {}, "done": [ret["alert_id"]], "expired": [], "kept": 0}
    assert list((tmp_path / "iemkey" / "alerts").iterdir()) == [] and len(sent) == 2
    assert "iemkey-alert-resend" not in schedule.jobs and "iemkey-alert-resend" not in schedule.saved


def test_a_rotation_before_the_alert_does_not_end_it_and_one_kept_too_long_is_dropped_loudly(
    sent, tmp_path, schedule, caplog
):
    before = {"step": "done", "rotated_at": "2026-01-01T00:00:00+00:00", "keystorage": "/k"}
    (tmp_path / "iemkey").mkdir(exist_ok=True)
    (tmp_path / "iemkey" / "rotation.json").write_text(json.dumps(before))
    ret = iemkey.alert(reason="x")
    assert iemkey.resend_alerts()["kept"] == 1
    path = tmp_path / "iemkey" / "alerts" / f"{ret['alert_id']}.json"
    alert = json.loads(path.read_text())
    path.write_text(json.dumps({**alert, "raised_at": "2026-01-02T00:00:00+00:00"}))  # kept for months
    with caplog.at_level(logging.ERROR):
        assert iemkey.resend_alerts()["expired"] == [ret["alert_id"]]
    assert "kept for more than iemkey:alert_keep (86400 s) without a rotation following it" in caplog.text
    assert not path.exists()


def test_with_the_minion_daemon_down_the_schedule_is_written_for_its_next_start(sent, schedule):
    schedule.online = False
    ret = iemkey.alert(reason="x")
    assert ret["resend"] == "every 60 s (schedule iemkey-alert-resend)"
    assert schedule.calls == [("add", "iemkey-alert-resend", "online"), ("add", "iemkey-alert-resend", "offline")]
    assert "iemkey-alert-resend" in schedule.saved
    iemkey.alert(reason="again")  # already in the persisted schedule: not added twice
    assert len(schedule.calls) == 2


def test_without_a_schedule_module_the_alert_still_goes_and_says_it_is_not_scheduled(sent, caplog):
    del iemkey.__salt__["schedule.list"]
    with caplog.at_level(logging.ERROR):
        ret = iemkey.alert(reason="x")
    assert (
        ret["sent"] is True
        and ret["resend"].startswith("NOT scheduled (")
        and "run iemkey.resend_alerts" in ret["resend"]
    )


def test_alert_needs_a_master(sent):
    iemkey.__opts__["master_type"] = "disable"
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


class _Channel:
    """salt.channel.client.ReqChannel for two masters: one takes the event, one is down (its send
    never returns, as a dead master's does not for 60 s x 3 tries)."""

    def __init__(self, uri, sent, hang):
        self.uri, self.sent, self.hang = uri, sent, hang

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def send(self, load, tries=None, timeout=None):
        if self.uri in self.hang:
            self.hang[self.uri].wait(30)
            raise TimeoutError("Message timed out")
        self.sent.append((self.uri, load["tag"], load["cmd"], load["id"], tries, timeout))


@pytest.fixture
def salt_call(monkeypatch):
    import threading

    import salt.channel.client

    calls, hang = [], {"tcp://127.0.0.2:4506": threading.Event()}
    monkeypatch.setattr(
        salt.channel.client.ReqChannel,
        "factory",
        staticmethod(
            lambda opts, master_uri: _Channel(master_uri, calls, hang) if opts["master_uri"] == master_uri else 0
        ),
    )
    iemkey.__opts__.update(__cli="salt-call", master_uri_list=["tcp://127.0.0.1:4506", "tcp://127.0.0.2:4506"])
    iemkey.__salt__["config.get"] = lambda key, default=None: {"iemkey:send_timeout": 1.5}.get(key, default)
    yield calls
    for event in hang.values():
        event.set()


@pytest.mark.parametrize("start", ["fork", "threads"])
def test_under_salt_call_an_alert_goes_to_every_master_at_once_and_a_dead_one_costs_send_timeout(
    sent, salt_call, monkeypatch, start
):
    import multiprocessing
    import time

    if start == "threads":  # Windows: no fork
        monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])

    started = time.monotonic()
    ret = iemkey.alert(reason="EDR: credential dump")
    took = time.monotonic() - started
    assert 1.4 < took < 5, took  # send_timeout (1.5 s), not Salt's 60 s x 3 tries for the dead master
    assert ret["masters"] == {"tcp://127.0.0.1:4506": True, "tcp://127.0.0.2:4506": "no answer within 1.5 s"}
    if start == "threads":  # a forked sender's calls stay in its own process
        assert salt_call == [("tcp://127.0.0.1:4506", "iemkey/compromised", "_minion_event", "web01", 1, 1.5)]
    assert sent == []  # not through a minion daemon


def test_under_salt_call_an_alert_no_master_took_fails_naming_each(sent, salt_call, monkeypatch):
    import salt.channel.client

    def refused(opts, master_uri):
        raise OSError(f"connection refused by {master_uri}")

    monkeypatch.setattr(salt.channel.client.ReqChannel, "factory", staticmethod(refused))
    with pytest.raises(CommandExecutionError) as raised:
        iemkey.alert(reason="x")
    assert str(raised.value) == (
        "could not send iemkey/compromised to any master ("
        "tcp://127.0.0.1:4506: not sent: OSError: connection refused by tcp://127.0.0.1:4506; "
        "tcp://127.0.0.2:4506: not sent: OSError: connection refused by tcp://127.0.0.2:4506"
        "); the alert is kept and sent again: every 60 s (schedule iemkey-alert-resend)"
    )
    # a rotation's iemkey/rotated is not a failure of the rotation when no master takes it
    rotated = {"old_computer_id": "1001", "rotated_at": "2026-11-27T00:00:00+00:00"}
    assert iemkey._fire("iemkey/rotated", rotated) is False


def test_in_a_job_of_the_minion_daemon_the_alert_goes_through_the_daemon(sent, salt_call):
    iemkey.__opts__["__cli"] = "salt-minion"
    ret = iemkey.alert(reason="x")
    assert ret["masters"] == {"minion daemon": True} and [tag for tag, _ in sent] == ["iemkey/compromised"]
    assert salt_call == []


def test_salt_call_local_sends_the_alert_to_each_configured_master_itself(sent, salt_call):
    iemkey.__opts__.update(file_client="local", master=["127.0.0.1", "127.0.0.2:4506"], master_port=4506)
    del iemkey.__opts__["master_uri_list"]
    ret = iemkey.alert(reason="x")
    assert ret["masters"] == {"tcp://127.0.0.1:4506": True, "tcp://127.0.0.2:4506": "no answer within 1.5 s"}
    assert sent == []
    # a rotation under --local sends no event: it has no master connection to report through
    assert iemkey._fire("iemkey/rotated", {"old_computer_id": "1", "rotated_at": "2026-11-27T00:00:00+00:00"}) is False
