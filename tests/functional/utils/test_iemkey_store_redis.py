"""
The store that several masters share, on a real Redis server (redis-server on loopback, append-only
file, password): the same contract as the local files, an atomic claim that exactly one of many
masters wins (also when a reply is lost and retried), locks that a dead master frees, the server
restarting mid-incident (nothing lost, nothing done twice), and clear errors that hold no password.
"""

import logging
import multiprocessing
import threading
import time

import iemkey_redis
import iemkey_store
import pytest
from redisserver import PASSWORD, RedisServer, ReplyEater


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


def _store(conf, **extra):
    return iemkey_store.from_opts({"cachedir": "/nonexistent", "iemkey": {"store": {**conf, **extra}}})


@pytest.fixture
def conf(server, request):
    # a prefix of each test's own: tests share the server, never a record
    return server.conf(prefix=f"t{abs(hash(request.node.nodeid)) % 10**9}", wait=10)


@pytest.fixture
def store(conf):
    return _store(conf)


def test_records_read_back_by_key_and_prefix_from_any_master(store, conf):
    other = _store(conf)  # a second master: its own client, the same server
    for key in ("web01:1", "web01:2", "web010:3", "db01:4"):
        store.put("cases", key, {"key": key})
    assert other.get("cases", "web01:2") == {"key": "web01:2"} and other.get("cases", "nosuch:1") is None
    assert sorted(other.all("cases", prefix="web01:")) == ["web01:1", "web01:2"]
    assert list(other.all("cases")) == sorted(["db01:4", "web01:1", "web01:2", "web010:3"])
    assert other.all("cases", prefix="*") == {}  # a prefix is text, never a pattern
    assert other.delete("cases", "web01:1") is True and store.delete("cases", "web01:1") is False
    assert store.get("cases", "web01:1") is None


def test_a_claim_is_won_once_and_the_first_record_stands(store, conf):
    other = _store(conf)
    assert store.add("nonces", "alpha:ab", {"expires": 1}) is True
    assert other.add("nonces", "alpha:ab", {"expires": 1}) is False  # same content, still not a second win
    assert other.get("nonces", "alpha:ab") == {"expires": 1}


def _claim(conf, key, start, results):
    store = _store(conf)
    start.wait(10)
    results.put(store.add("nonces", key, {"expires": 1}))


def test_of_many_masters_racing_for_one_claim_exactly_one_wins(conf):
    results, start = multiprocessing.Queue(), multiprocessing.Event()
    racers = [multiprocessing.Process(target=_claim, args=(conf, "alpha:race", start, results)) for _ in range(8)]
    for racer in racers:
        racer.start()
    start.set()
    won = [results.get(timeout=30) for _ in racers]
    for racer in racers:
        racer.join(30)
    assert won.count(True) == 1 and won.count(False) == 7


def test_updates_from_several_masters_lose_nothing(store, conf):
    stores = [store, _store(conf), _store(conf), _store(conf)]
    store.put("compromises", "alpha", {"alerts": 0})

    def bump(each):
        for _ in range(25):
            with each.update("compromises", "alpha") as record:
                record["alerts"] += 1

    threads = [threading.Thread(target=bump, args=(each,)) for each in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.get("compromises", "alpha") == {"alerts": 100}
    with store.update("compromises", "alpha") as record:
        record.clear()
    assert store.get("compromises", "alpha") is None


def test_a_lock_is_one_masters_and_a_dead_holder_frees_it(conf):
    first, second = _store(conf, lock_ttl=1.5), _store(conf, lock_ttl=1.5)
    with first.locked("cleanup-pass") as mine:
        assert mine is True
        time.sleep(2.0)  # longer than lock_ttl: the holder renews it
        with second.locked("cleanup-pass", blocking=False) as theirs:
            assert theirs is False
    with second.locked("cleanup-pass", blocking=False) as theirs:
        assert theirs is True
    # a master that dies holding the lock (no release, no renewal) frees it after lock_ttl
    held = first.client.set(f"{conf['prefix']}:lock:cleanup-pass", "dead-master", nx=True, px=1500)
    assert held
    with second.locked("cleanup-pass", blocking=False) as theirs:
        assert theirs is False
    started = time.monotonic()
    with second.locked("cleanup-pass") as theirs:
        assert theirs is True and 0.5 < time.monotonic() - started < 5


def test_sweep_runs_once_a_minute_whichever_master_asks(store, conf):
    other = _store(conf)
    store.put("nonces", "alpha:old", {"expires": 100})
    store.put("nonces", "alpha:new", {"expires": 10_000})
    store.put("nonces", "alpha:odd", {"expires": "never"})
    assert store.sweep("nonces", now=1000) == 1
    store.put("nonces", "alpha:old2", {"expires": 100})
    assert other.sweep("nonces", now=1030) == 0  # swept by the first master 30 s ago
    assert other.sweep("nonces", now=1060) == 1
    assert sorted(store.all("nonces")) == ["alpha:new", "alpha:odd"]
    for key, expires in (("beta:1", 1100), ("beta:2", 1100), ("beta:now", 1120)):
        store.put("nonces", key, {"expires": expires})
    assert store.sweep("nonces", now=1120) == 2  # two expired; one expiring at 1120 is not yet
    assert sorted(store.all("nonces")) == ["alpha:new", "alpha:odd", "beta:now"]


@pytest.mark.parametrize("key", ["../cases/x", "a/b", "", "x" * 400, None, "web 01", "a*"])
def test_anything_but_a_key_is_refused(store, key):
    with pytest.raises(iemkey_store.StoreError, match="is not a key"):
        store.put("cases", key, {})
    with pytest.raises(iemkey_store.StoreError, match="no bank"):
        store.get("keys", "alpha")


def test_a_lost_reply_is_not_a_second_claim_nor_a_lost_one(server, conf):
    proxy = ReplyEater(server.port)
    try:
        via_proxy = _store(conf, port=proxy.port)
        other = _store(conf)
        via_proxy.get("nonces", "warm:up")  # connected (and the persistence check made) before eating
        proxy.eat(1)  # HSETNX lands, its reply is lost; the retry must know the claim is its own
        assert via_proxy.add("nonces", "alpha:lost", {"expires": 1}) is True
        assert proxy.eaten == 1
        assert other.add("nonces", "alpha:lost", {"expires": 1}) is False
        other.put("nonces", "beta:taken", {"expires": 1})
        proxy.eat(1)  # the claim fails, and its reply is lost too: still not ours
        assert via_proxy.add("nonces", "beta:taken", {"expires": 1}) is False
        proxy.eat(1)  # the lock is taken but the reply lost: the retry knows it holds it
        with via_proxy.locked("cleanup-pass", blocking=False) as mine:
            assert mine is True
            with other.locked("cleanup-pass", blocking=False) as theirs:
                assert theirs is False
        with other.locked("cleanup-pass", blocking=False) as theirs:
            assert theirs is True  # released by its holder
            proxy.eat(1)  # another master holds it and this refusal's reply is lost: still not ours
            with via_proxy.locked("cleanup-pass", blocking=False) as mine:
                assert mine is False
    finally:
        proxy.close()


def test_the_server_restarting_mid_incident_loses_nothing_and_does_nothing_twice(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        conf = server.conf(wait=20)
        store, other = _store(conf), _store(conf)
        for n in range(50):
            assert store.add("nonces", f"alpha:{n}", {"expires": 1}) is True
        store.put("cases", "alpha:1001", {"status": "to revoke"})
        server.kill()  # a crash: only the append-only file survives
        during = {}

        def claim_while_down():  # a reactor deciding while Redis is away
            during["won"] = other.add("nonces", "alpha:during", {"expires": 1})

        thread = threading.Thread(target=claim_while_down)
        thread.start()
        time.sleep(1.5)
        assert thread.is_alive()  # waiting for the server, not deciding on a guess
        server.start()
        thread.join(30)
        assert during == {"won": True}
        assert len(store.all("nonces")) == 51 and store.get("cases", "alpha:1001") == {"status": "to revoke"}
        assert [store.add("nonces", f"alpha:{n}", {"expires": 1}) for n in range(50)] == [False] * 50
        assert store.add("nonces", "alpha:during", {"expires": 1}) is False
    finally:
        server.stop()


def test_a_server_gone_for_longer_than_wait_is_a_clear_error_and_no_decision(tmp_path, caplog):
    server = RedisServer(tmp_path / "redis").start()
    store = _store(server.conf(wait=1.5))
    store.put("cases", "alpha:1", {"status": "pending"})
    server.kill()
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG), pytest.raises(iemkey_store.StoreError) as raised:
        store.add("nonces", "alpha:n", {"expires": 1})
    assert time.monotonic() - started < 5
    where = f"redis://127.0.0.1:{server.port}/0"
    assert str(raised.value) == (
        f"the iemkey store at {where} did not answer within 1.5 s (claiming nonces): ConnectionError; "
        "nothing was decided"
    )
    retrying = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert retrying == [f"iemkey store: {where} unreachable (ConnectionError); retrying claiming nonces"]
    assert PASSWORD not in str(raised.value) and PASSWORD not in caplog.text


def test_a_reply_redis_refuses_is_a_clear_error(store, conf):
    store.client.set(f"{conf['prefix']}:cases", "not a hash")  # another program's key where a bank lives
    with pytest.raises(iemkey_store.StoreError) as raised:
        store.get("cases", "alpha:1")
    assert str(raised.value) == (
        f"the iemkey store at {store.where} refused reading cases: "
        "WRONGTYPE Operation against a key holding the wrong kind of value"
    )


def test_a_wrong_password_is_refused_at_once_without_saying_it(server, caplog):
    store = _store(server.conf(password="not-the-" + "password-9f3"))
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG), pytest.raises(iemkey_store.StoreError) as raised:
        store.get("cases", "alpha:1")
    assert time.monotonic() - started < 3
    assert str(raised.value).startswith(f"the iemkey store at {store.where} refused the login (reading cases): ")
    assert "not-the-password-9f3" not in str(caplog.text) + str(store) + repr(store)


def test_the_password_can_come_from_sdb(server, conf):
    asked = []
    opts = {"iemkey": {"store": {**conf, "password": "sdb://vault/iemkey/redis"}}}
    store = iemkey_store.from_opts(opts, resolve=lambda uri: asked.append(uri) or PASSWORD)
    store.put("incidents", "worm", {"since": "2026-11-20T08:00:00+00:00"})
    assert asked == ["sdb://vault/iemkey/redis"] and store.get("incidents", "worm")


def test_a_server_without_an_append_only_file_is_warned_about(server, conf, caplog):
    admin = _store(conf).client
    admin.config_set("appendonly", "no")
    try:
        warned = _store(conf)
        with caplog.at_level(logging.WARNING):
            warned.get("cases", "alpha:1")
            warned.put("cases", "alpha:1", {})  # once per store, not once per operation
        assert [r.getMessage() for r in caplog.records] == [
            f"iemkey store: {warned.where} keeps no append-only file: a restart of Redis loses what iemkey "
            "recorded since its last snapshot (nonces, clean-ups); set appendonly yes and appendfsync always"
        ]
    finally:
        admin.config_set("appendonly", "yes")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _store(conf).get("cases", "alpha:1")
    assert "append-only" not in caplog.text


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"hots": "typo"}, "iemkey:store: hots is not a setting of the redis driver"),
        ({"hots": 1, "dv": 2}, "iemkey:store: dv, hots is not a setting of the redis driver"),
        ({"port": "six"}, "iemkey:store: port, db, wait, socket_timeout and lock_ttl must be numbers"),
        ({"wait": 0}, "iemkey:store: wait, socket_timeout and lock_ttl must be positive, prefix a plain name"),
        ({"prefix": "a/b"}, "iemkey:store: wait, socket_timeout and lock_ttl must be positive, prefix a plain name"),
    ],
)
def test_settings_that_cannot_work_are_refused_before_anything_is_sent(server, setting, message):
    with pytest.raises(iemkey_store.StoreError) as raised:
        _store(server.conf(), **setting)
    assert str(raised.value) == message


def test_a_redis_acl_user_logs_in_with_its_own_name(server, conf):
    admin = _store(conf).client
    admin.acl_setuser("iemkey-master", enabled=True, passwords=["+acl-Pw-77"], keys=["*"], commands=["+@all"])
    try:
        user = _store({**conf, "username": "iemkey-master", "password": "acl-Pw-77"})
        user.put("incidents", "acl", {"since": "2026-11-20T08:00:00+00:00"})
        assert user.client.acl_whoami() == "iemkey-master" and user.get("incidents", "acl")
    finally:
        admin.acl_deluser("iemkey-master")


def test_without_the_redis_package_the_error_says_how_to_install_it(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_redis(name, *args, **kwargs):
        if name == "redis" or name.startswith("redis."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_redis)
    with pytest.raises(iemkey_store.StoreError) as raised:
        iemkey_redis.RedisStore.from_conf({"driver": "redis"})
    assert str(raised.value) == (
        "iemkey:store:driver redis needs the Python package redis on the master (salt-pip install redis)"
    )


def test_a_masters_local_backlog_moves_into_the_shared_store_without_overwriting(store, tmp_path):
    local = iemkey_store.LocalStore(tmp_path / "old-master")
    local.put("cases", "web01:1001", {"status": "revoke", "minion": "web01"})
    local.put("cases", "web02:1002", {"status": "pending", "minion": "web02"})
    local.put("nonces", "web01:ab", {"expires": 10**10})
    store.put("cases", "web02:1002", {"status": "dismissed", "minion": "web02"})  # decided since: it stands
    assert iemkey_store.copy_into(local, store, test=True)["cases"] == {"added": 1, "kept": 1}
    assert store.get("cases", "web01:1001") is None  # test: nothing added
    counts = iemkey_store.copy_into(local, store)
    assert counts["cases"] == {"added": 1, "kept": 1} and counts["nonces"] == {"added": 1, "kept": 0}
    assert store.get("cases", "web02:1002")["status"] == "dismissed"
    assert store.get("cases", "web01:1001")["status"] == "revoke"
    assert iemkey_store.copy_into(local, store)["cases"] == {"added": 0, "kept": 2}  # again: nothing twice


def test_a_holder_whose_lock_was_taken_from_it_says_so(conf, caplog):
    store = _store(conf, lock_ttl=0.6)
    lock = f"{conf['prefix']}:lock:cleanup-pass"
    with caplog.at_level(logging.ERROR), store.locked("cleanup-pass") as mine:
        assert mine is True and store.client.pttl(lock) > 0
        store.client.set(lock, "another-master")  # expired and taken while this holder was paused
        time.sleep(0.5)  # past the next renewal (every lock_ttl / 3)
    assert [r.getMessage() for r in caplog.records] == [f"iemkey store: the lock {lock} was lost (held past 0.6 s?)"]
    assert store.client.get(lock) == "another-master"  # released only by its holder: not this one
