"""
The master's store: one JSON file per record, atomic writes, an atomic create that exactly one of
many racing callers wins, a locked read-modify-write, expiry, and refusals of what is not a key.
"""

import json
import multiprocessing
import os
import pathlib
import threading

import iemkey_store
import pytest


@pytest.fixture
def store(tmp_path):
    return iemkey_store.LocalStore(tmp_path / "iemkey")


def test_records_are_one_file_each_and_read_back(store, tmp_path):
    store.put("cases", "web01:1001", {"status": "pending"})
    store.put("cases", "web02:1002", {"status": "review"})
    assert store.get("cases", "web01:1001") == {"status": "pending"}
    assert store.get("cases", "nosuch:1") is None
    assert store.all("cases") == {"web01:1001": {"status": "pending"}, "web02:1002": {"status": "review"}}
    assert sorted(os.listdir(tmp_path / "iemkey" / "cases")) == ["web01:1001.json", "web02:1002.json"]
    assert json.loads((tmp_path / "iemkey/cases/web01:1001.json").read_text()) == {"status": "pending"}
    assert store.delete("cases", "web01:1001") is True and store.delete("cases", "web01:1001") is False
    assert store.all("cases") == {"web02:1002": {"status": "review"}}


def test_a_prefix_reads_only_the_records_it_names(store, monkeypatch):
    for key in ("web01:1", "web01:2", "web010:3", "db01:4"):
        store.put("cases", key, {"key": key})
    reads = []
    real = iemkey_store._read
    monkeypatch.setattr(iemkey_store, "_read", lambda path: reads.append(path) or real(path))
    assert sorted(store.all("cases", prefix="web01:")) == ["web01:1", "web01:2"]
    assert len(reads) == 2


def test_add_creates_only_a_new_key(store):
    assert store.add("nonces", "alpha:ab", {"expires": 1}) is True
    assert store.add("nonces", "alpha:ab", {"expires": 2}) is False
    assert store.get("nonces", "alpha:ab") == {"expires": 1}  # the first one stands
    assert [n for n in os.listdir(os.path.join(store.root, "nonces")) if n.endswith(".tmp")] == []


def _claim(root, key, results):
    results.put(iemkey_store.LocalStore(root).add("nonces", key, {"pid": os.getpid()}))


def test_of_many_processes_racing_for_one_key_exactly_one_wins(store):
    results = multiprocessing.Queue()
    racers = [multiprocessing.Process(target=_claim, args=(store.root, "alpha:race", results)) for _ in range(8)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(30)
    won = [results.get(timeout=5) for _ in racers]
    assert won.count(True) == 1 and won.count(False) == 7


def test_update_is_a_locked_read_modify_write(store):
    store.put("compromises", "alpha", {"alerts": 0})

    def bump():
        for _ in range(50):
            with store.update("compromises", "alpha") as record:
                record["alerts"] += 1

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.get("compromises", "alpha") == {"alerts": 200}  # no increment lost


def test_update_creates_writes_only_changes_and_removes_an_emptied_record(store, monkeypatch):
    with store.update("incidents", "worm") as record:
        assert record == {}
        record["since"] = "2026-11-20T08:00:00+00:00"
    assert store.get("incidents", "worm") == {"since": "2026-11-20T08:00:00+00:00"}
    writes = []
    monkeypatch.setattr(store, "put", lambda *args: writes.append(args))
    with store.update("incidents", "worm"):
        pass
    assert writes == []  # unchanged: not written again
    monkeypatch.undo()
    with store.update("incidents", "worm") as record:
        record.clear()
    assert store.get("incidents", "worm") is None


def test_a_non_blocking_lock_says_when_another_holder_has_it(store):
    with store.locked("cleanup-pass") as mine:
        assert mine is True
        seen = []
        thread = threading.Thread(target=lambda: seen.append(store.locked("cleanup-pass", blocking=False).__enter__()))
        thread.start()
        thread.join()
        assert seen == [False]
    with store.locked("cleanup-pass", blocking=False) as mine:
        assert mine is True


def test_sweep_removes_what_expired_at_most_once_a_minute(store):
    store.put("nonces", "alpha:old", {"expires": 100})
    store.put("nonces", "alpha:new", {"expires": 10_000})
    assert store.sweep("nonces", now=1000) == 1
    assert sorted(store.all("nonces")) == ["alpha:new"]
    store.put("nonces", "alpha:old2", {"expires": 100})
    assert store.sweep("nonces", now=1030) == 0  # swept 30 s ago: not yet
    assert store.sweep("nonces", now=1059.5) == 0
    assert store.sweep("nonces", now=1060) == 1  # a minute on
    store.put("nonces", "alpha:now", {"expires": 1120})
    assert store.sweep("nonces", now=1120) == 0  # expires at 1120: not yet expired at 1120
    assert sorted(store.all("nonces")) == ["alpha:new", "alpha:now"]
    store.put("nonces", "beta:1", {"expires": 1150})
    store.put("nonces", "beta:2", {"expires": 1150})
    store.put("nonces", "beta:3", {"expires": "never"})  # not a time: kept
    assert store.sweep("nonces", now=1180.5) == 3
    assert sorted(store.all("nonces")) == ["alpha:new", "beta:3"]


@pytest.mark.parametrize("key", ["../cases/x", "a/b", "", ".hidden", "x" * 400, None, "web 01"])
def test_anything_but_a_key_is_refused(store, key):
    with pytest.raises(iemkey_store.StoreError) as raised:
        store.put("cases", key, {})
    assert str(raised.value) == f"{key!r} is not a key of the iemkey store"
    with pytest.raises(iemkey_store.StoreError) as raised, store.locked(key):
        pass
    assert str(raised.value) == f"{key!r} is not a lock of the iemkey store"


def test_banks_are_for_the_master_only_and_hidden_files_in_them_are_not_records(store):
    store.put("cases", "a:1", {"ok": True})
    bank = os.path.join(store.root, "cases")
    assert os.stat(bank).st_mode & 0o777 == 0o700
    with store.locked("cleanup-pass") as mine:
        assert mine is True and os.path.isfile(os.path.join(store.root, ".cleanup-pass.lock"))
    assert os.stat(store.root).st_mode & 0o777 == 0o700
    with open(os.path.join(bank, ".a:2.json"), "w", encoding="utf-8") as handle:
        handle.write('{"planted": true}')  # no key starts with a dot: not a record
    assert store.all("cases") == {"a:1": {"ok": True}}


def test_unknown_banks_and_drivers_are_refused(tmp_path):
    def refusal(call):
        with pytest.raises(iemkey_store.StoreError) as raised:
            call()
        return str(raised.value)

    assert refusal(lambda: iemkey_store.LocalStore(tmp_path).all("secrets")) == "no bank 'secrets' in the iemkey store"
    assert refusal(
        lambda: iemkey_store.from_opts({"cachedir": str(tmp_path), "iemkey": {"store": {"driver": "consul"}}})
    ) == ("iemkey:store:driver 'consul' is not known: local (the default, one master) or redis (several)")
    assert refusal(lambda: iemkey_store.from_opts({"cachedir": str(tmp_path), "iemkey": {"store": "local"}})) == (
        "iemkey:store must be a mapping such as {driver: local}, not 'local'"
    )
    assert repr(iemkey_store.from_opts({"cachedir": "/c", "iemkey": {}})) == "LocalStore('/c/iemkey')"
    assert repr(iemkey_store.from_opts({"cachedir": "/c", "iemkey": {"store": {"path": "/s"}}})) == "LocalStore('/s')"
    shared = iemkey_store.from_opts({"iemkey": {"store": {"driver": "redis", "host": "redis.example", "db": 2}}})
    assert repr(shared) == "RedisStore('redis://redis.example:6379/2', prefix='iemkey')"  # connects when used


def test_a_lock_taken_first_makes_the_root_for_the_master_only(tmp_path):
    store = iemkey_store.LocalStore(tmp_path / "fresh")
    with store.locked("cleanup-pass") as mine:
        assert mine is True
    assert os.stat(store.root).st_mode & 0o777 == 0o700


def test_the_default_store_lives_in_the_master_cachedir(tmp_path):
    store = iemkey_store.from_opts({"cachedir": str(tmp_path)})
    assert store.root == str(tmp_path / "iemkey")
    custom = iemkey_store.from_opts({"cachedir": str(tmp_path), "iemkey": {"store": {"path": str(tmp_path / "s")}}})
    assert custom.root == str(tmp_path / "s")


def test_an_unreadable_record_is_skipped_and_logged(store, caplog):
    store.put("cases", "a:1", {"ok": True})
    with open(os.path.join(store.root, "cases", "b:2.json"), "w", encoding="utf-8") as handle:
        handle.write("{not json")
    assert store.all("cases") == {"a:1": {"ok": True}}
    assert "ignoring unreadable store record" in caplog.text and "b:2.json" in caplog.text


def test_a_bank_folder_removed_while_the_master_runs_is_made_again(store, tmp_path):
    import shutil

    store.put("owed", "web01", {"a": 1})
    shutil.rmtree(pathlib.Path(store.root) / "owed")  # an operator resetting a bank by hand
    assert store.all("owed") == {} and store.get("owed", "web01") is None
    assert store.add("owed", "web01", {"a": 2}) is True
    shutil.rmtree(pathlib.Path(store.root) / "owed")
    store.put("owed", "web02", {"b": 1})
    shutil.rmtree(pathlib.Path(store.root) / "owed")
    store.sweep("owed", now=0)
    assert store.all("owed") == {} and (pathlib.Path(store.root) / "owed").is_dir()
