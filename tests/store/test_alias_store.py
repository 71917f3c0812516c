"""The alias stores against the real things: a SQLite file and a private redis-server.

One behaviour suite runs on both backends (store, refresh, clash, daily cap, expiry,
several processes at once); then what each backend adds (eviction and lock waits for
SQLite; TTLs, password, TLS, unix socket, db number, prefix, outages for Redis).
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from srsd.alias_store import CLASH, FULL, REFRESHED, STORED, RedisStore, SQLiteStore, StoreError
from srsd.config import StoreSettings
from srsd.srs_alias import Alias
from tests.redis_server import RedisServer, make_tls_files

NOW = 1795521600  # 2026-11-24T12:00:00Z, day 20781
DAY = 86400
EXPIRES = (NOW // DAY + 22) * DAY


def alias(key: str = "AAAAAAAAAAAAAAAA", target: str = "long.sender@example.org", expires: int = EXPIRES) -> Alias:
    return Alias(key, target, f"SRS0=hhhh=JN=={key}@fwd.example", expires)


def redis_settings(server: RedisServer, **changes) -> StoreSettings:
    base = StoreSettings(backend="redis", redis_host="127.0.0.1", redis_port=server.port)
    # A prefix of its own per store: tests sharing the module's server never meet.
    return replace(base, redis_key_prefix=f"test-{uuid.uuid4().hex[:8]}:", **changes)


def make_store(where: Path | StoreSettings, cap: int = 1000, timeout: float = 2.0):
    """A SQLite store in directory *where*, or a Redis store with settings *where*."""
    if isinstance(where, Path):
        return SQLiteStore(str(where / "aliases.sqlite"), max_new_per_day=cap, timeout=timeout)
    return RedisStore(where, "", max_new_per_day=cap, timeout=timeout)


@pytest.fixture(params=["sqlite", "redis"])
def backend(request, tmp_path):
    """Where a fresh store of each kind lives, for :func:`make_store`."""
    if request.param == "sqlite":
        return tmp_path
    return redis_settings(request.getfixturevalue("redis_server"))


@pytest.fixture
def store(backend):
    made = make_store(backend, cap=3)
    yield made
    made.close()


# -- both backends ---------------------------------------------------------------------


def test_store_then_recall(store):
    assert store.get("AAAAAAAAAAAAAAAA", NOW) is None
    assert store.put(alias(), NOW) == STORED
    assert store.get("AAAAAAAAAAAAAAAA", NOW) == "long.sender@example.org"
    assert store.put(alias(), NOW + 60) == REFRESHED  # the same sender again: no new row


def test_a_key_holding_another_address_is_a_clash(store):
    assert store.put(alias(target="first@example.org"), NOW) == STORED
    assert store.put(alias(target="second@example.org"), NOW) == CLASH
    assert store.get("AAAAAAAAAAAAAAAA", NOW) == "first@example.org"


def test_daily_cap_bounds_new_keys_only(store):
    keys = [f"{c}" * 16 for c in "BCDEF"]
    assert [store.put(alias(k), NOW) for k in keys[:3]] == [STORED] * 3
    assert store.put(alias(keys[3]), NOW) == FULL
    assert store.get(keys[3], NOW) is None
    assert store.put(alias(keys[0]), NOW) == REFRESHED  # known senders still get their alias
    assert store.put(alias(keys[3]), NOW + DAY) == STORED  # the next UTC day has its own cap


def test_targets_round_trip_byte_for_byte(store):
    target = "J\u00f6rg+\udcff=x@B\u00fccher.example"  # UTF-8 and a raw byte (surrogateescape)
    assert store.put(alias(target=target), NOW) == STORED
    assert store.get("AAAAAAAAAAAAAAAA", NOW) == target


def _worker(args):
    where, keys = args
    store = make_store(where, cap=10**6)
    try:
        return [store.put(alias(k, target=f"sender-{k}@example.org"), NOW) for k in keys]
    finally:
        store.close()


def test_several_processes_count_each_new_key_once(backend):
    """Four processes (as ``--workers`` or a fleet) store overlapping keys at once."""
    keys = [f"{i:016d}".replace("0", "A").replace("1", "B") for i in range(40)]
    jobs = [(backend, keys[i % 2 :: 2] + keys[:20]) for i in range(4)]
    with multiprocessing.get_context("fork").Pool(4) as pool:
        results = [r for batch in pool.map(_worker, jobs) for r in batch]
    assert results.count(STORED) == len(set(keys))
    assert set(results) == {STORED, REFRESHED}
    reader = make_store(backend)
    assert all(reader.get(k, NOW) == f"sender-{k}@example.org" for k in keys)


# -- SQLite ------------------------------------------------------------------------


def test_sqlite_expires_and_evicts(tmp_path):
    store = SQLiteStore(str(tmp_path / "a.sqlite"), max_new_per_day=10, timeout=1)
    store.put(alias("BBBBBBBBBBBBBBBB", expires=NOW + DAY), NOW)
    store.put(alias("CCCCCCCCCCCCCCCC", expires=NOW + 3 * DAY), NOW)
    assert store.get("BBBBBBBBBBBBBBBB", NOW + DAY) is None  # expired, not yet evicted
    assert store.evict(NOW + DAY) == 1
    assert store.evict(NOW + DAY) == 0
    assert store.get("CCCCCCCCCCCCCCCC", NOW + DAY) is not None
    assert store.check().endswith(": 1 aliases")


def test_sqlite_refresh_extends_the_expiry(tmp_path):
    store = SQLiteStore(str(tmp_path / "a.sqlite"), max_new_per_day=10, timeout=1)
    store.put(alias(expires=NOW + DAY), NOW)
    assert store.put(alias(expires=NOW + 5 * DAY), NOW + 60) == REFRESHED
    assert store.get("AAAAAAAAAAAAAAAA", NOW + 4 * DAY) == "long.sender@example.org"
    # An expired row of the same key is a new alias again (and counted).
    assert store.put(alias(expires=NOW + 30 * DAY), NOW + 6 * DAY) == STORED


def test_sqlite_uses_wal_and_creates_its_directory(tmp_path):
    path = tmp_path / "state" / "srsd" / "aliases.sqlite"
    store = SQLiteStore(str(path), max_new_per_day=10, timeout=1)
    store.check()
    import sqlite3

    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (path.parent.stat().st_mode & 0o777) == 0o700


def test_sqlite_locked_past_the_timeout_is_a_store_error(tmp_path):
    import sqlite3

    path = tmp_path / "a.sqlite"
    store = SQLiteStore(str(path), max_new_per_day=10, timeout=0.3)
    store.check()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process writing, for longer than busy_timeout
    try:
        started = time.monotonic()
        with pytest.raises(StoreError, match="locked"):
            store.put(alias(), NOW)
        assert time.monotonic() - started >= 0.25  # it did wait for the lock first
    finally:
        holder.execute("ROLLBACK")
    assert store.put(alias(), NOW) == STORED


def test_sqlite_unusable_path_is_a_store_error(tmp_path):
    (tmp_path / "file").write_text("")
    store = SQLiteStore(str(tmp_path / "file" / "aliases.sqlite"), max_new_per_day=10, timeout=1)
    with pytest.raises(StoreError, match="sqlite"):
        store.get("AAAAAAAAAAAAAAAA", NOW)


# -- Redis -------------------------------------------------------------------------


def test_redis_keys_ttl_and_prefix(redis_server):
    settings = redis_settings(redis_server)
    store = RedisStore(settings, "", max_new_per_day=10, timeout=2)
    now = time.time()
    expires = (int(now) // DAY + 22) * DAY
    store.put(alias(expires=expires), now)
    client = redis_server.client()
    key = settings.redis_key_prefix + "alias:AAAAAAAAAAAAAAAA"
    assert client.get(key) == b"long.sender@example.org"
    assert expires - now - 5 <= client.ttl(key) <= expires - now + 1  # Redis expires it: TTL = max age
    day_counter = client.ttl(settings.redis_key_prefix + f"new:{int(now) // DAY}")
    assert 0 < day_counter <= 2 * DAY
    assert sorted(k.decode() for k in client.keys(settings.redis_key_prefix + "*")) == sorted(
        [key, settings.redis_key_prefix + f"new:{int(now) // DAY}"]
    )


def test_redis_db_number(redis_server):
    store = RedisStore(redis_settings(redis_server, redis_db=3), "", max_new_per_day=10, timeout=2)
    store.put(alias(), NOW)
    assert redis_server.client(db=3).dbsize() >= 1
    assert store.get("AAAAAAAAAAAAAAAA", NOW) is not None
    assert "db 3" in store.description


def test_redis_password_unix_socket(tmp_path):
    socket_path = tmp_path / "redis.sock"
    server = RedisServer(tmp_path, password="s3cret-pw", unix_socket=socket_path).start()
    try:
        settings = replace(StoreSettings(backend="redis"), redis_unix_socket=str(socket_path))
        store = RedisStore(settings, "s3cret-pw", max_new_per_day=10, timeout=2)
        assert store.put(alias(), NOW) == STORED
        assert "Redis 7" in store.check()
        with pytest.raises(StoreError, match="(?i)auth|password"):
            RedisStore(settings, "wrong", max_new_per_day=10, timeout=2).get("AAAAAAAAAAAAAAAA", NOW)
        with pytest.raises(StoreError):
            RedisStore(settings, "", max_new_per_day=10, timeout=2).get("AAAAAAAAAAAAAAAA", NOW)
    finally:
        server.stop()


def test_redis_tls_with_client_certificate(tmp_path):
    tls = make_tls_files(tmp_path)
    server = RedisServer(tmp_path, tls=tls).start()
    try:
        settings = replace(
            StoreSettings(backend="redis"),
            redis_port=server.port,
            redis_tls=True,
            redis_tls_ca_file=str(tls.ca),
            redis_tls_cert_file=str(tls.client_cert),
            redis_tls_key_file=str(tls.client_key),
        )
        store = RedisStore(settings, "", max_new_per_day=10, timeout=2)
        assert store.put(alias(), NOW) == STORED
        assert store.description.startswith("redis rediss://127.0.0.1:")
        # No client certificate: the server refuses us; that is a store error, not a crash.
        bare = replace(settings, redis_tls_cert_file="", redis_tls_key_file="")
        with pytest.raises(StoreError):
            RedisStore(bare, "", max_new_per_day=10, timeout=2).get("AAAAAAAAAAAAAAAA", NOW)
        # Plain TCP to a TLS port: a store error too.
        with pytest.raises(StoreError):
            RedisStore(replace(settings, redis_tls=False), "", max_new_per_day=10, timeout=1).get("A" * 16, NOW)
    finally:
        server.stop()


def test_redis_down_hung_and_back(tmp_path):
    """Down: an error at once; hung (SIGSTOP): an error after the timeout; restarted: the
    stale pooled connection is retried once and the data is still there."""
    server = RedisServer(tmp_path).start()
    try:
        store = RedisStore(redis_settings(server), "", max_new_per_day=10, timeout=0.5)
        assert store.put(alias(), NOW) == STORED

        server.pause()
        started = time.monotonic()
        with pytest.raises(StoreError, match="(?i)timeout|timed out"):
            store.get("AAAAAAAAAAAAAAAA", NOW)
        assert time.monotonic() - started < 5  # bounded: timeout, one retry
        server.resume()

        server.stop()
        with pytest.raises(StoreError):
            store.get("AAAAAAAAAAAAAAAA", NOW)
        server.start()  # same port, same data (appendfsync always)
        assert store.get("AAAAAAAAAAAAAAAA", NOW) == "long.sender@example.org"
    finally:
        server.stop()


def test_redis_refresh_extends_the_ttl_once_a_day(redis_server):
    settings = redis_settings(redis_server)
    store = RedisStore(settings, "", max_new_per_day=10, timeout=2)
    client = redis_server.client()
    key = settings.redis_key_prefix + "alias:AAAAAAAAAAAAAAAA"
    now = time.time()
    today_end = (int(now) // DAY + 22) * DAY
    store.put(alias(expires=today_end), now)
    full = int(today_end - now)
    client.expire(key, full - 30)  # within the clocks' slack: the same day's refresh writes nothing
    assert store.put(alias(expires=today_end), now) == REFRESHED
    assert client.ttl(key) <= full - 30
    client.expire(key, 1000)  # short of its address's validity: extended
    assert store.put(alias(expires=today_end), now) == REFRESHED
    assert client.ttl(key) >= full - 5
    assert store.put(alias(expires=today_end + DAY), now) == REFRESHED  # tomorrow's address
    assert client.ttl(key) >= full + DAY - 5
