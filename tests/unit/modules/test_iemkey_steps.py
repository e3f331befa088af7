"""
The steps of ``iemkey.rotate`` that leave evidence: the rotation record at each step (what a
crash leaves for the next run), a delete that fails part-way, what follows the delete (the key
exchange, the event, a step that raises), with the agent's service and Salt's cmd, event and
pillar functions loader-mocked around a real KeyStorage in a temp dir.
"""

import datetime
import json
import os
from unittest.mock import MagicMock

import iemkey_agent
import iemkey_auth
import iemkey_rotation
import pytest
from helpers import load_source, rsa_key_pair
from salt.exceptions import CommandExecutionError, SaltInvocationError

iemkey = load_source("_modules", "iemkey_module_steps")
UTC = datetime.timezone.utc
RELAY = "http://relay.example:52311"
PASSWORD = "S3cret-relay"
KEY = rsa_key_pair()


@pytest.fixture
def storage(tmp_path):
    path = tmp_path / "storage"
    (path / "KeyStorage").mkdir(parents=True)
    for name in ("ClientCert.crt", "ClientKey.pvk"):
        (path / "KeyStorage" / name).write_text("key material")
    (path / "__BESData").mkdir()
    return path


@pytest.fixture
def seen():
    """What the rotation record said at each service call: [(verb, record)]."""
    return []


@pytest.fixture
def config(storage, tmp_path):
    return {"storage_path": str(storage), "config_file": str(tmp_path / "none.config")}


@pytest.fixture
def sent():
    return []


@pytest.fixture
def configure_loader_modules(tmp_path, seen, config, sent):
    (tmp_path / "minion.pem").write_bytes(KEY[0])
    binary = tmp_path / "BESClient"
    binary.write_text("")
    config["client_binary"] = str(binary)

    def verb(name):
        def call(_service):
            seen.append((name, iemkey._agent().read_record()))
            return True

        return call

    def send(tag, data):
        sent.append((tag, data))
        return True

    salt_mods = {f"service.{name}": verb(name) for name in ("stop", "start")} | {
        "service.available": MagicMock(return_value=True),
        "service.status": MagicMock(return_value=True),
        "config.get": lambda key, default=None: config.get(key.split(":", 1)[1], default),
        "pillar.get": MagicMock(return_value=None),
        "event.send": send,
        # the client's registry: its ComputerID (StoragePath comes from iemkey:storage_path)
        "reg.read_value": lambda _hive, key, name: (
            {"success": True, "vdata": "1001"} if name == "ComputerID" and "Wow6432Node" in key else {"success": False}
        ),
        "cmd.run_all": MagicMock(return_value={"retcode": 0, "stdout": "registered", "stderr": ""}),
    }
    return {
        iemkey: {
            "__grains__": {"kernel": "Windows", "os_family": "Windows", "cpuarch": "AMD64"},
            "__salt__": salt_mods,
            "__context__": {},
            "__opts__": {
                "id": "web01",
                "pki_dir": str(tmp_path),
                "cachedir": str(tmp_path / "cache"),
                "file_client": "remote",
            },
        }
    }


@pytest.fixture(autouse=True)
def _posix_paths(monkeypatch):
    """The file work runs on this Linux host: only the path syntax is Windows' on a real minion."""
    monkeypatch.setattr(iemkey_agent.Agent, "pathmod", lambda _self: os.path)


def _keystorage(storage):
    return str(storage / "KeyStorage")


# -- the record: what the next run finds if this one dies -----------------------------------------
def test_the_record_names_each_step_before_it_is_taken(storage, seen):
    ret = iemkey.rotate()
    before = {"keystorage": _keystorage(storage), "old_computer_id": "1001"}
    assert seen == [
        ("stop", {**before, "step": "stopping"}),
        (
            "start",
            {
                **before,
                "step": "deleted",
                "removed": ["ClientCert.crt", "ClientKey.pvk"],
                "deleted_at": ret["rotated_at"],
            },
        ),
    ]
    assert iemkey._agent().read_record() == {
        **before,
        "step": "done",
        "removed": ["ClientCert.crt", "ClientKey.pvk"],
        "rotated_at": ret["rotated_at"],
    }
    assert datetime.datetime.fromisoformat(ret["rotated_at"]).tzinfo is not None


def test_a_failed_stop_leaves_the_record_as_it_was_and_the_next_run_rotates(storage, seen):
    iemkey.__salt__["service.stop"] = MagicMock(return_value=False)
    with pytest.raises(CommandExecutionError, match="KeyStorage was not touched"):
        iemkey.rotate()
    # there was no record: there is none (a crash during the stop would leave "stopping", never resumed)
    assert iemkey._agent().read_record() is None and iemkey.status()["pending"] is False
    del iemkey.__salt__["service.stop"]
    iemkey.__salt__["service.stop"] = MagicMock(return_value=True)
    ret = iemkey.rotate()
    assert ret["resumed"] is False and ret["removed"] == ["ClientCert.crt", "ClientKey.pvk"]


def _unlink_fails_for(monkeypatch, *names):
    real_unlink = os.unlink

    def unlink(path, *args, **kwargs):
        if os.path.basename(path) in names:
            raise PermissionError(13, "Permission denied", path)
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)


@pytest.mark.parametrize(
    ("start_ok", "restarted"),
    [
        (True, "the agent was started again"),
        (False, "starting it again failed: `service.start BESClient` exited 1"),
    ],
)
def test_a_delete_that_fails_part_way_records_what_went_and_starts_the_agent(
    storage, seen, monkeypatch, start_ok, restarted
):
    _unlink_fails_for(monkeypatch, "ClientKey.pvk")
    if not start_ok:
        iemkey.__salt__["service.start"] = MagicMock(return_value=False)
    with pytest.raises(CommandExecutionError) as err:
        iemkey.rotate()
    assert str(err.value) == (
        f"could not delete all of {_keystorage(storage)}: removed ['ClientCert.crt']; "
        f"not removed ClientKey.pvk (Permission denied); {restarted}"
    )
    assert iemkey._agent().read_record() == {
        "keystorage": _keystorage(storage),
        "old_computer_id": "1001",
        "step": "failed",
        "removed": ["ClientCert.crt"],
    }
    assert sorted(os.listdir(_keystorage(storage))) == ["ClientKey.pvk"]
    assert iemkey.status()["pending"] is False  # KeyStorage is still there: the next run is a full one


def test_two_entries_that_cannot_go_are_both_named(storage, monkeypatch):
    _unlink_fails_for(monkeypatch, "ClientKey.pvk", "ClientCert.crt")
    with pytest.raises(CommandExecutionError) as err:
        iemkey.rotate()
    assert (
        "removed nothing; not removed ClientCert.crt (Permission denied), ClientKey.pvk (Permission denied); "
        "the agent was started again"
    ) in str(err.value)


# -- after the delete: the key exchange -----------------------------------------------------------
def _relay(config, password=PASSWORD):
    config["relay"] = RELAY
    iemkey.__salt__["pillar.get"].return_value = password


def test_no_relay_no_key_exchange(storage):
    ret = iemkey.rotate()
    assert "registered" not in ret and "register_error" not in ret
    iemkey.__salt__["cmd.run_all"].assert_not_called()
    assert "retcode" not in iemkey.__context__


def test_a_relay_without_a_password_is_left_to_the_operator(storage, config):
    _relay(config, password=None)
    ret = iemkey.rotate()
    assert "registered" not in ret and "register_error" not in ret and "retcode" not in iemkey.__context__
    iemkey.__salt__["cmd.run_all"].assert_not_called()


def test_the_key_exchange_runs_after_the_start(storage, config, seen):
    _relay(config)
    ret = iemkey.rotate()
    assert ret["registered"] is True and "register_error" not in ret and "retcode" not in iemkey.__context__
    (call,) = iemkey.__salt__["cmd.run_all"].call_args_list
    assert call.args[0] == ["cmd", "/c", config["client_binary"], "-register", PASSWORD, RELAY]
    assert [verb for verb, _record in seen] == ["stop", "start"]


def test_a_rejected_key_exchange_fails_the_job_and_keeps_the_rotation(storage, config):
    _relay(config)
    rejected = {"retcode": 2, "stdout": "", "stderr": f"password {PASSWORD} rejected"}
    iemkey.__salt__["cmd.run_all"].return_value = rejected
    ret = iemkey.rotate()
    assert ret["rotated"] is True and ret["registered"] is False
    assert ret["register_error"] == (
        f"`cmd /c {config['client_binary']} -register ******** {RELAY}` exited 2: password ******** rejected"
    )
    assert iemkey.__context__["retcode"] == 1
    assert PASSWORD not in json.dumps(ret)


def test_a_password_that_cannot_be_used_fails_the_job_and_keeps_the_rotation(storage, config):
    _relay(config, password="pässword")
    ret = iemkey.rotate()
    assert ret["rotated"] is True and ret["registered"] is False
    assert ret["register_error"] == "iemkey:register_password must be printable ASCII (BigFix relay passwords are)"
    assert iemkey.__context__["retcode"] == 1
    iemkey.__salt__["cmd.run_all"].assert_not_called()


@pytest.mark.parametrize(
    ("relay", "password", "missing"),
    [
        (None, PASSWORD, "iemkey:relay"),
        (RELAY, None, "iemkey:register_password"),
        (None, None, "iemkey:relay and iemkey:register_password"),
    ],
)
def test_register_says_what_it_misses(config, relay, password, missing):
    if relay:
        config["relay"] = relay
    iemkey.__salt__["pillar.get"].return_value = password
    with pytest.raises(CommandExecutionError) as err:
        iemkey.register()
    assert str(err.value) == f"the manual key exchange needs {missing}"


def test_register_that_the_relay_rejects_is_an_error_without_the_password(config):
    _relay(config)
    iemkey.__salt__["cmd.run_all"].return_value = {"retcode": 1, "stdout": f"bad {PASSWORD}", "stderr": ""}
    with pytest.raises(CommandExecutionError) as err:
        iemkey.register()
    assert str(err.value) == (
        f"the manual key exchange with {RELAY} failed: "
        f"`cmd /c {config['client_binary']} -register ******** {RELAY}` exited 1: bad ********"
    )


# -- after the delete: the event, and a step that raises ------------------------------------------
def test_the_rotated_event_carries_the_rotation_signed(storage, sent):
    ret = iemkey.rotate()
    ((tag, data),) = sent
    assert tag == "iemkey/rotated" and ret["event_sent"] is True
    now = datetime.datetime.now(UTC)
    minion, payload, _signed_at, _nonce = iemkey_auth.verify(tag, data, KEY[1], now, max_age=60, max_skew=5)
    assert minion == "web01"
    assert payload == {"old_computer_id": "1001", "rotated_at": ret["rotated_at"], "keystorage": _keystorage(storage)}


def test_the_rotated_event_names_the_new_computer_when_rotate_waited_for_it(storage, sent, monkeypatch):
    monkeypatch.setattr(
        iemkey_rotation,
        "wait_for_new_key",
        lambda *_a: {"new_computer_id": "2002", "key_created": "2026-11-27T10:00:00+00:00"},
    )
    ret = iemkey.rotate(wait=5)
    ((tag, data),) = sent
    payload = iemkey_auth.verify(tag, data, KEY[1], datetime.datetime.now(UTC), max_age=60, max_skew=5)[1]
    assert payload["new_computer_id"] == "2002" == ret["new_computer_id"]


def test_an_event_that_cannot_be_sent_is_reported_not_fatal(storage, caplog):
    def broken(_tag, _data):
        raise RuntimeError("no master connection")

    iemkey.__salt__["event.send"] = broken
    ret = iemkey.rotate()
    assert ret["rotated"] is True and ret["event_sent"] is False and "errors" not in ret
    assert "retcode" not in iemkey.__context__
    assert (
        "iemkey: no master took iemkey/rotated: {'minion daemon': 'event.send failed: no master connection'}"
        in caplog.text
    )


def test_a_step_that_raises_after_the_delete_fails_the_job_and_keeps_the_rotation(storage, monkeypatch, caplog):
    def boom(_ret):
        raise RuntimeError("boom")

    monkeypatch.setattr(iemkey, "_send_rotated", boom)
    ret = iemkey.rotate()
    assert ret["rotated"] is True and ret["removed"] == ["ClientCert.crt", "ClientKey.pvk"]
    assert ret["errors"] == ["sending iemkey/rotated failed after the rotation: RuntimeError: boom"]
    assert iemkey.__context__["retcode"] == 1
    assert (
        f"iemkey: KeyStorage {_keystorage(storage)} was rotated, but sending iemkey/rotated failed after the "
        "rotation: RuntimeError: boom"
    ) in caplog.text


# -- check: the decision the state and the report stand on ----------------------------------------
def _age(storage, when):
    for path in (storage / "KeyStorage").iterdir():
        os.utime(path, (when.timestamp(), when.timestamp()))


def test_check_compares_the_oldest_key_file_with_since_inclusively(storage):
    made = datetime.datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    _age(storage, made)
    ret = iemkey.check("2026-11-20T08:00:00Z")
    assert (ret["compliant"], ret["basis"], ret["key_time"], ret["stale"]) == (
        True,
        "key_created",
        made.isoformat(),
        False,
    )
    assert ret["reason"] == f"key_created {made.isoformat()} is at or after since {made.isoformat()}"
    later = iemkey.check("2026-11-20T08:00:01Z")
    assert later["compliant"] is False
    assert later["reason"] == f"key_created {made.isoformat()} is before since 2026-11-20T08:00:01+00:00"


def test_check_of_a_keyless_agent_iemkey_never_rotated(storage):
    for path in (storage / "KeyStorage").iterdir():
        path.unlink()
    ret = iemkey.check("2026-11-20T08:00:00Z")
    assert (ret["compliant"], ret["basis"], ret["key_time"]) == (False, None, None)
    assert ret["reason"] == "KeyStorage holds no key and iemkey recorded no rotation"


def test_check_of_a_keyless_agent_long_after_a_rotation_is_stale(storage, config):
    config["stale_after"] = 60
    rotated = datetime.datetime.now(UTC) - datetime.timedelta(seconds=120)
    for path in (storage / "KeyStorage").iterdir():
        path.unlink()
    (storage / "KeyStorage").rmdir()
    iemkey._agent().write_record(
        {"step": "done", "keystorage": _keystorage(storage), "rotated_at": rotated.isoformat()}
    )
    ret = iemkey.check("2026-11-20T08:00:00Z")
    assert (ret["compliant"], ret["basis"], ret["key_time"], ret["stale"]) == (
        True,
        "last_rotated",
        rotated.isoformat(),
        True,
    )
    assert ret["reason"] == (
        f"last_rotated {rotated.isoformat()} is at or after since 2026-11-20T08:00:00+00:00; "
        "but the agent has written no key since that rotation, more than iemkey:stale_after "
        "(60 s) ago: it is down or cannot register"
    )
    config["stale_after"] = 600
    assert iemkey.check("2026-11-20T08:00:00Z")["stale"] is False


def test_check_where_no_agent_is_installed_has_nothing_to_rotate_unless_one_is_required(config, tmp_path):
    config["storage_path"] = str(tmp_path / "nowhere")
    ret = iemkey.check("2026-11-20T08:00:00Z", probe_agent=False)
    assert (ret["compliant"], ret["basis"], ret["key_time"], ret["stale"]) == (True, None, None, False)
    assert (ret["no_agent"], ret["require_agent"]) == (True, False)
    assert ret["reason"] == (
        f"no BigFix agent here: nothing to rotate (no storage path at {tmp_path / 'nowhere'} (config "
        "iemkey:storage_path))"
    )
    config["require_agent"] = True
    required = iemkey.check("2026-11-20T08:00:00Z", probe_agent=False)
    assert (required["compliant"], required["no_agent"], required["require_agent"]) == (False, True, True)
    assert required["reason"] == (
        "the BigFix agent is not installed, and iemkey:require_agent is true: no storage path at "
        f"{tmp_path / 'nowhere'} (config iemkey:storage_path)"
    )
    config["require_agent"] = "yes-please"
    with pytest.raises(SaltInvocationError, match=r"^iemkey:require_agent must be True or False, not 'yes-please'$"):
        iemkey.check("2026-11-20T08:00:00Z", probe_agent=False)


def test_rotate_where_no_agent_is_installed_is_success_with_nothing_to_rotate(config, tmp_path, seen):
    config["storage_path"] = str(tmp_path / "nowhere")
    ret = iemkey.rotate()
    assert ret == {
        "rotated": False,
        "no_agent": True,
        "keystorage": None,
        "removed": [],
        "comment": f"no BigFix agent here: nothing to rotate (no storage path at {tmp_path / 'nowhere'} (config "
        "iemkey:storage_path); iemkey:require_agent is false)",
    }
    assert seen == []
    config["require_agent"] = True
    with pytest.raises(CommandExecutionError, match="the BigFix agent is not installed here: no storage path"):
        iemkey.rotate()


def test_check_refuses_a_since_in_the_future():
    with pytest.raises(SaltInvocationError) as err:
        iemkey.check("2999-01-01T00:00:00Z")
    assert str(err.value).startswith("since 2999-01-01T00:00:00+00:00 is in the future (now ")
    assert str(err.value).endswith("): no key could ever satisfy it")


def test_check_asks_whether_the_agent_runs_unless_told_not_to(storage):
    assert iemkey.check("2026-11-20T08:00:00Z")["status"]["agent_running"] is True
    assert iemkey.check("2026-11-20T08:00:00Z", probe_agent=False)["status"]["agent_running"] is None


# -- _control through the service module, and test mode ---------------------------------------------
def test_a_service_call_that_raises_is_a_failed_command():
    iemkey.__salt__["service.stop"] = MagicMock(side_effect=CommandExecutionError("Access is denied"))
    control = iemkey._agent().resolve()["control"]
    assert iemkey._agent().control("stop", control) == {
        "command": "service.stop BESClient",
        "retcode": 1,
        "stdout": "",
        "stderr": "Access is denied",
    }
    iemkey.__salt__["service.stop"] = MagicMock(return_value=False)
    assert iemkey._agent().control("stop", control) == {
        "command": "service.stop BESClient",
        "retcode": 1,
        "stdout": "",
        "stderr": "",
    }


def test_test_mode_plans_without_touching_anything(storage, seen):
    ret = iemkey.rotate(test=True)
    assert ret == {
        "rotated": None,
        "test": True,
        "keystorage": _keystorage(storage),
        "old_computer_id": "1001",
        "would_remove": ["ClientCert.crt", "ClientKey.pvk"],
        "would_run": ["service.stop BESClient", f"delete {_keystorage(storage)}", "service.start BESClient"],
        "comment": "rotate the key",
    }
    assert seen == [] and iemkey._agent().read_record() is None
    assert iemkey.rotate(__pub_test=True)["test"] is True and seen == []


def test_a_wait_that_is_no_number_is_refused_before_anything(storage, seen):
    with pytest.raises(SaltInvocationError) as err:
        iemkey.rotate(wait="soon")
    assert str(err.value) == "wait must be a number of seconds, not 'soon'"
    assert seen == []


def test_test_mode_from_the_minion_config_plans_too(storage, seen):
    iemkey.__opts__["test"] = True
    assert iemkey.rotate()["would_run"][-1] == "service.start BESClient"
    assert seen == [] and os.path.isdir(_keystorage(storage))


def test_a_key_new_enough_is_not_rotated_and_says_why(storage, seen):
    ret = iemkey.rotate(since="2001-01-01T00:00:00Z")
    assert ret["rotated"] is False and ret["keystorage"] == _keystorage(storage)
    assert ret["comment"].startswith("key_created ") and ret["comment"].endswith(
        " is at or after since 2001-01-01T00:00:00+00:00"
    )
    assert seen == []


@pytest.mark.parametrize(("name", "value"), [("force", "yes-please"), ("test", 2), ("owed", "sure")])
def test_a_switch_that_is_not_a_boolean_is_refused_before_anything_changes(storage, seen, name, value):
    with pytest.raises(SaltInvocationError, match=f"^{name} must be True or False, not "):
        iemkey.rotate(since="2001-01-01T00:00:00Z", **{name: value})
    assert seen == []


# -- an interrupted rotation: the next run finishes it, deleting nothing new -------------------------
@pytest.fixture
def interrupted(storage):
    """What a rotation that died between its delete and its start leaves: no KeyStorage, a record."""
    record = {
        "step": "deleted",
        "keystorage": _keystorage(storage),
        "old_computer_id": "1001",
        "removed": ["ClientCert.crt", "ClientKey.pvk"],
        "deleted_at": "2026-11-27T08:00:00+00:00",
    }
    for name in record["removed"]:
        os.unlink(os.path.join(record["keystorage"], name))
    os.rmdir(record["keystorage"])
    iemkey._agent().write_record(record)
    return record


def test_the_plan_of_an_interrupted_rotation_is_only_the_start(storage, seen, interrupted):
    assert iemkey.rotate(test=True) == {
        "rotated": None,
        "test": True,
        "keystorage": _keystorage(storage),
        "old_computer_id": "1001",
        "would_remove": [],
        "would_run": ["service.start BESClient"],
        "comment": "finish the interrupted rotation",
    }
    assert seen == []


def test_an_interrupted_rotation_is_finished_with_its_own_facts(storage, seen, interrupted, caplog):
    with caplog.at_level("INFO"):
        ret = iemkey.rotate()
    assert [verb for verb, _record in seen] == ["start"]  # not stopped again, nothing deleted again
    assert {key: ret[key] for key in ("rotated", "resumed", "old_computer_id", "rotated_at", "removed")} == {
        "rotated": True,
        "resumed": True,
        "old_computer_id": "1001",
        "rotated_at": "2026-11-27T08:00:00+00:00",
        "removed": ["ClientCert.crt", "ClientKey.pvk"],
    }
    said = f"iemkey: finishing the rotation interrupted after deleting {_keystorage(storage)}"
    assert said in [record.getMessage() for record in caplog.records]
    assert iemkey._agent().read_record() == {
        "step": "done",
        "keystorage": _keystorage(storage),
        "old_computer_id": "1001",
        "rotated_at": "2026-11-27T08:00:00+00:00",
        "removed": ["ClientCert.crt", "ClientKey.pvk"],
    }


def test_an_agent_that_does_not_run_after_its_start_fails_the_job_and_says_how_to_finish(storage):
    iemkey.__salt__["service.status"] = MagicMock(return_value=False)
    with pytest.raises(CommandExecutionError) as err:
        iemkey.rotate()
    assert str(err.value) == (
        f"KeyStorage {_keystorage(storage)} was deleted but the agent is not running after "
        "`service.start BESClient` exited 0. The keys are gone and the agent is down; run iemkey.rotate again "
        "to finish."
    )


@pytest.mark.parametrize(
    ("owner", "helper", "step"),
    [
        (iemkey_agent.Agent, "write_record", "recording the rotation"),
        (iemkey_rotation, "key_exchange", "the manual key exchange"),
        (iemkey_rotation, "await_new_key", "waiting for the new key"),
    ],
)
def test_each_step_after_the_delete_is_named_when_it_fails(storage, monkeypatch, owner, helper, step):
    real_write = iemkey_agent.Agent.write_record

    def boom(*args):
        if helper != "write_record" or args[-1].get("step") == "done":
            raise RuntimeError("boom")
        return real_write(*args)

    monkeypatch.setattr(owner, helper, boom)
    ret = iemkey.rotate(wait=1)
    assert ret["rotated"] is True and ret["errors"][0] == f"{step} failed after the rotation: RuntimeError: boom"
    # this stand-in makes no new key: a wait that ends without one is an error of its own
    assert len(ret["errors"]) == (1 if helper == "await_new_key" else 2)


# -- an owed rotation: only iemkey's own rotation after since counts; it is then reported again --------
def _record(storage, rotated_at, step="done"):
    record = {"step": step, "keystorage": _keystorage(storage), "old_computer_id": "999", "rotated_at": rotated_at}
    iemkey._agent().write_record(record)
    return record


def test_an_owed_rotation_rotates_a_key_whose_files_are_new_but_that_iemkey_never_rotated(storage, seen, sent):
    since = (datetime.datetime.now(UTC) - datetime.timedelta(hours=1)).isoformat()
    assert iemkey.check(since, probe_agent=False)["compliant"] is True  # by the key files' time it would pass
    owed = iemkey.check(since, probe_agent=False, owed=True)
    assert owed["compliant"] is False and owed["reason"] == (
        f"iemkey recorded no rotation of this key at or after since {since}"
    )
    ret = iemkey.rotate(since=since, owed=True)
    assert ret["rotated"] is True and [verb for verb, _ in seen] == ["stop", "start"]
    assert [tag for tag, _ in sent] == ["iemkey/rotated"]


def test_an_owed_rotation_iemkey_already_made_is_reported_again_not_made_twice(storage, seen, sent):
    rotated_at = datetime.datetime.now(UTC) - datetime.timedelta(minutes=10)
    for path in (storage / "KeyStorage").iterdir():  # the agent wrote its new keys after that rotation
        os.utime(path, (rotated_at.timestamp() + 5, rotated_at.timestamp() + 5))
    _record(storage, rotated_at.isoformat())
    since = (rotated_at - datetime.timedelta(minutes=1)).isoformat()
    verdict = iemkey.check(since, probe_agent=False, owed=True)
    assert (verdict["compliant"], verdict["basis"], verdict["key_time"]) == (True, "rotation", rotated_at.isoformat())
    planned = iemkey.rotate(since=since, owed=True, test=True)
    assert planned["resent"] is None and "would send its iemkey/rotated again" in planned["comment"] and sent == []
    ret = iemkey.rotate(since=since, owed=True)
    assert (ret["rotated"], ret["resent"], ret["old_computer_id"], ret["new_computer_id"]) == (
        False,
        True,
        "999",
        "1001",
    )
    assert seen == [] and ret["event_sent"] is True
    ((tag, data),) = sent
    payload = iemkey_auth.verify(tag, data, KEY[1], datetime.datetime.now(UTC), 60, 5)[1]
    assert payload == {
        "old_computer_id": "999",
        "new_computer_id": "1001",
        "rotated_at": rotated_at.isoformat(),
        "keystorage": _keystorage(storage),
    }


@pytest.mark.parametrize(
    "case",
    ["before_since", "keys_restored_from_a_backup", "another_keystorage", "not_done"],
)
def test_what_is_not_an_iemkey_rotation_after_since_is_rotated_for_an_owed_rotation(storage, seen, case):
    rotated_at = datetime.datetime.now(UTC) - datetime.timedelta(minutes=10)
    since = rotated_at - datetime.timedelta(minutes=1)
    record = _record(storage, rotated_at.isoformat(), step="stopping" if case == "not_done" else "done")
    if case == "before_since":
        since = rotated_at + datetime.timedelta(seconds=1)
    if case == "keys_restored_from_a_backup":
        for path in (storage / "KeyStorage").iterdir():
            os.utime(path, (rotated_at.timestamp() - 3, rotated_at.timestamp() - 3))
    if case == "another_keystorage":
        iemkey._agent().write_record({**record, "keystorage": "/elsewhere/KeyStorage"})
    assert iemkey.check(since.isoformat(), probe_agent=False, owed=True)["compliant"] is False
    assert iemkey.rotate(since=since.isoformat(), owed=True)["rotated"] is True


def test_an_owed_rotation_needs_since(storage):
    with pytest.raises(SaltInvocationError, match="owed=True needs since"):
        iemkey.rotate(owed=True)


def test_an_owed_rotation_on_a_minion_without_an_agent_says_so_signed(config, tmp_path, sent, seen):
    config["storage_path"] = str(tmp_path / "nowhere")
    ret = iemkey.rotate(since="2026-11-20T08:00:00Z", owed=True)
    assert ret["no_agent"] is True and ret["event_sent"] is True and seen == []
    ((tag, data),) = sent
    assert tag == "iemkey/rotated"
    assert iemkey_auth.verify(tag, data, KEY[1], datetime.datetime.now(UTC), 60, 5)[1] == {"no_agent": True}
    assert iemkey.rotate(since="2026-11-20T08:00:00Z", owed=True, test=True)["no_agent"] is True and len(sent) == 1
