"""
The Redis store's settings as the client gets them, and the text it matches with: what needs no
server (the store itself is tested on a real redis-server in tests/functional/utils).
"""

import iemkey_redis
import iemkey_store


def test_the_defaults_reach_the_client_and_the_store():
    store = iemkey_store.from_opts({"iemkey": {"store": {"driver": "redis"}}})
    kwargs = store.client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("127.0.0.1", 6379, 0)
    assert kwargs["socket_timeout"] == 5 and kwargs["socket_connect_timeout"] == 5
    assert kwargs["username"] is None and kwargs["password"] is None
    assert kwargs["retry"]._retries == 0  # the store retries itself, knowing what landed
    assert store.client.connection_pool.connection_class.__name__ == "Connection"
    assert (store.wait, store.lock_ttl, store.prefix) == (30.0, 60.0, "iemkey")
    assert store.where == "redis://127.0.0.1:6379/0"


def test_settings_reach_the_client_and_tls_is_asked_for():
    conf = {"driver": "redis", "host": "r.example", "port": "6380", "db": 3, "username": "m1", "password": "pw"}
    store = iemkey_store.from_opts({"iemkey": {"store": {**conf, "ssl": True, "wait": 2, "lock_ttl": 9}}})
    kwargs = store.client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["username"]) == ("r.example", 6380, 3, "m1")
    assert store.client.connection_pool.connection_class.__name__ == "SSLConnection"
    assert (store.wait, store.lock_ttl) == (2.0, 9.0) and "pw" not in repr(store) + store.where


def test_a_prefix_is_matched_as_text_never_as_a_pattern():
    assert "a*b?[c]^d\\e".translate(iemkey_redis._GLOB) == "a\\*b\\?\\[c\\]\\^d\\\\e"
    assert "web01:".translate(iemkey_redis._GLOB) == "web01:" and "WEBX-01:".translate(iemkey_redis._GLOB) == "WEBX-01:"


def test_the_lock_scripts_compare_the_holders_token():
    assert iemkey_redis._RELEASE == (
        "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
    )
    assert iemkey_redis._RENEW == (
        "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
    )
