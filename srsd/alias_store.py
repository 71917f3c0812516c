"""The alias store: alias key -> the address a bounce to its short SRS0 must reach.

Only senders whose SRS0 would be too long are stored (:mod:`srsd.srs_alias`), so the store
stays small; a key is derived from the sender, so repeats add no rows; at most
``store.max_new_per_day`` new keys a UTC day (:data:`FULL` past it); a key lives until its
address's timestamp expires (SQLite: an ``expires`` column, evicted by :meth:`evict`;
Redis: the key's TTL). Decisions and reasons: ``docs/alias-store.md``.

* :class:`SQLiteStore` (``store.backend = "sqlite"``, the default): one file, shared
  safely by every ``--workers`` process of one host (WAL journal, ``busy_timeout``).
* :class:`RedisStore` (``"redis"``): one Redis shared by a fleet of forwarders (redis-py).

Every :class:`AliasStore` method blocks and raises :class:`StoreError` when the store cannot
answer; :class:`DeferredStore` runs them off the reactor thread on a
:class:`~srsd.workpool.BoundedPool` with a timeout (or at once, for the CLI).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer

from srsd.config import Config
from srsd.srs_alias import Alias
from srsd.workpool import BoundedPool

__all__ = [
    "AliasStore",
    "SQLiteStore",
    "RedisStore",
    "DeferredStore",
    "StoreError",
    "open_store",
    "STORED",
    "REFRESHED",
    "FULL",
    "CLASH",
]

#: :meth:`AliasStore.put` results
STORED = "stored"  # a new key, counted against the day's cap
REFRESHED = "refreshed"  # the key was there with the same address; its expiry extended if needed
FULL = "full"  # store.max_new_per_day new keys today already: nothing stored
CLASH = "clash"  # the key holds another address (an 80-bit collision): nothing stored

_DAY = 86400


class StoreError(Exception):
    """The store could not answer (down, slow, locked, refused us): a temporary failure."""


def _encode(address: str) -> bytes:
    return address.encode("utf-8", "surrogateescape")


def _decode(raw: bytes) -> str:
    return bytes(raw).decode("utf-8", "surrogateescape")


class AliasStore:
    """What every backend does. Every method blocks: run it off the reactor thread.

    :param max_new_per_day: new keys accepted per UTC day (store-wide: a fleet shares it).
    :raises StoreError: from every method, when the store cannot answer.
    """

    #: for logs and check-config: what and where (no password)
    description = "alias store"

    def __init__(self, max_new_per_day: int) -> None:
        self.max_new_per_day = max_new_per_day

    def put(self, alias: Alias, now: float) -> str:
        """Store ``alias.key -> alias.target`` until ``alias.expires`` (unix seconds).

        :returns: :data:`STORED`, :data:`REFRESHED`, :data:`FULL` or :data:`CLASH`.
        """
        raise NotImplementedError

    def get(self, key: str, now: float) -> str | None:
        """The address stored under *key*, or None when it is not there (or expired)."""
        raise NotImplementedError

    def check(self) -> str:
        """Reach the store (SQLite: open it, create the tables); a line for the log."""
        raise NotImplementedError

    def evict(self, now: float) -> int:
        """Remove expired keys; how many went (Redis expires its own: 0)."""
        return 0

    def close(self) -> None:
        """Close every connection (the next call opens new ones)."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS aliases (
    key TEXT PRIMARY KEY,
    target BLOB NOT NULL,
    expires INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS aliases_expires ON aliases (expires);
CREATE TABLE IF NOT EXISTS new_per_day (day INTEGER PRIMARY KEY, count INTEGER NOT NULL);
"""


class SQLiteStore(AliasStore):
    """The embedded store: one SQLite file for every srsd process of this host.

    WAL journal (readers never wait for the writer), ``busy_timeout`` = *timeout* for the
    write lock, ``synchronous = FULL``: an alias whose address went out survives a crash.
    Writes take the lock up front (``BEGIN IMMEDIATE``), so two processes storing the same
    key cannot both count it. Connections are pooled (sqlite3 connections are not shared
    by threads at once) and opened on first use.

    :param path: the database file; its directory is created (0700) if missing.
    :param timeout: seconds to wait for another process's write lock.
    """

    def __init__(self, path: str, *, max_new_per_day: int, timeout: float) -> None:
        super().__init__(max_new_per_day)
        self.path = path
        self.timeout = timeout
        self.description = f"sqlite {path}"
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            conn.execute("PRAGMA synchronous = FULL")
            # Switching to WAL and creating the tables answer "locked" at once, without the
            # busy handler, while another process does the same: retry until the timeout.
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                        conn.execute("PRAGMA journal_mode = WAL")
                    conn.executescript(_SCHEMA)
                    break
                except sqlite3.OperationalError:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.01)
        except BaseException:
            conn.close()
            raise
        return conn

    def _run(self, work: Any) -> Any:
        """``work(connection)`` on a pooled connection; sqlite3 and OS errors -> StoreError."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        try:
            if conn is None:
                conn = self._connect()
            result = work(conn)
        except (sqlite3.Error, OSError) as exc:
            if conn is not None:
                conn.close()
            raise StoreError(f"{self.description}: {exc}") from None
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        with self._lock:
            self._idle.append(conn)
        return result

    def put(self, alias: Alias, now: float) -> str:
        target = _encode(alias.target)

        def existing(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT target, expires FROM aliases WHERE key = ? AND expires > ?", (alias.key, int(now))
            ).fetchone()
            if row is None:
                return None
            if bytes(row[0]) != target:
                return CLASH
            if row[1] < alias.expires:
                conn.execute("UPDATE aliases SET expires = ? WHERE key = ?", (alias.expires, alias.key))
            return REFRESHED

        def write(conn: sqlite3.Connection) -> str:
            # Most forwards of a long sender find its key there: that read needs no lock.
            if conn.execute(
                "SELECT 1 FROM aliases WHERE key = ? AND target = ? AND expires >= ?",
                (alias.key, target, alias.expires),
            ).fetchone():
                return REFRESHED
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = existing(conn)
                if result is None:
                    day = int(now) // _DAY
                    row = conn.execute("SELECT count FROM new_per_day WHERE day = ?", (day,)).fetchone()
                    if row is not None and row[0] >= self.max_new_per_day:
                        result = FULL
                    else:
                        conn.execute(
                            "INSERT OR REPLACE INTO aliases (key, target, expires) VALUES (?, ?, ?)",
                            (alias.key, target, alias.expires),
                        )
                        conn.execute(
                            "INSERT INTO new_per_day (day, count) VALUES (?, 1)"
                            " ON CONFLICT (day) DO UPDATE SET count = count + 1",
                            (day,),
                        )
                        result = STORED
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return result

        return self._run(write)

    def get(self, key: str, now: float) -> str | None:
        row = self._run(
            lambda conn: conn.execute(
                "SELECT target FROM aliases WHERE key = ? AND expires > ?", (key, int(now))
            ).fetchone()
        )
        return None if row is None else _decode(row[0])

    def check(self) -> str:
        count = self._run(lambda conn: conn.execute("SELECT count(*) FROM aliases").fetchone()[0])
        return f"{self.description}: {count} aliases"

    def evict(self, now: float) -> int:
        def delete(conn: sqlite3.Connection) -> int:
            gone = conn.execute("DELETE FROM aliases WHERE expires <= ?", (int(now),)).rowcount
            conn.execute("DELETE FROM new_per_day WHERE day < ?", (int(now) // _DAY - 1,))
            return gone

        return self._run(delete)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


# KEYS: the alias key, today's counter. ARGV: target, seconds to live, the cap, the counter's TTL.
# One script, so two nodes storing keys at once count each new one exactly once.
_PUT_SCRIPT = """
local held = redis.call('GET', KEYS[1])
if held then
  if held ~= ARGV[1] then return 'clash' end
  -- Expiries are day-aligned: extend once a day (60 s of slack for the nodes' clocks).
  if redis.call('TTL', KEYS[1]) < tonumber(ARGV[2]) - 60 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
  return 'refreshed'
end
local n = redis.call('INCR', KEYS[2])
if n == 1 then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
if n > tonumber(ARGV[3]) then return 'full' end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 'stored'
"""


class RedisStore(AliasStore):
    """A Redis shared by a fleet (redis-py's synchronous client, on srsd's pool).

    Keys: ``PREFIX alias:KEY`` (the address, TTL until the address expires) and
    ``PREFIX new:DAY`` (that day's count of new keys, kept two days). Every connection
    and command times out after *timeout* seconds; a dropped connection is retried once
    (a pooled connection goes stale when Redis restarts), never more.

    :param settings: the ``[store]`` section (host/port or unix socket, db, user, TLS, prefix).
    :param password: AUTH password ("" = none).
    """

    def __init__(self, settings: Any, password: str, *, max_new_per_day: int, timeout: float) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        super().__init__(max_new_per_day)
        self._errors = redis.RedisError
        options: dict[str, Any] = {
            "db": settings.redis_db,
            "username": settings.redis_username or None,
            "password": password or None,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 1),
        }
        if settings.redis_unix_socket:
            where = f"unix:{settings.redis_unix_socket}"
            self.client = redis.Redis(unix_socket_path=settings.redis_unix_socket, **options)
        else:
            scheme = "rediss" if settings.redis_tls else "redis"
            where = f"{scheme}://{settings.redis_host}:{settings.redis_port}"
            if settings.redis_tls:
                options |= {
                    "ssl": True,
                    "ssl_ca_certs": settings.redis_tls_ca_file or None,
                    "ssl_certfile": settings.redis_tls_cert_file or None,
                    "ssl_keyfile": settings.redis_tls_key_file or None,
                }
            self.client = redis.Redis(host=settings.redis_host, port=settings.redis_port, **options)
        self.description = f"redis {where} db {settings.redis_db}"
        self.prefix = settings.redis_key_prefix.encode()
        self._put = self.client.register_script(_PUT_SCRIPT)

    def _call(self, f: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except self._errors as exc:
            raise StoreError(f"{self.description}: {exc}") from None

    def put(self, alias: Alias, now: float) -> str:
        day = int(now) // _DAY
        result = self._call(
            self._put,
            keys=[self.prefix + b"alias:" + alias.key.encode(), self.prefix + b"new:%d" % day],
            args=[_encode(alias.target), max(1, alias.expires - int(now)), self.max_new_per_day, 2 * _DAY],
        )
        return result.decode() if isinstance(result, bytes) else str(result)

    def get(self, key: str, now: float) -> str | None:
        raw = self._call(self.client.get, self.prefix + b"alias:" + key.encode())
        return None if raw is None else _decode(raw)

    def check(self) -> str:
        info = self._call(self.client.info, "server")
        return f"{self.description}: Redis {info.get('redis_version', '?')}"

    def close(self) -> None:
        self.client.close()


def open_store(config: Config) -> AliasStore | None:
    """The store ``[store]`` names (not yet connected), or None for ``backend = "none"``."""
    st = config.store
    if st.backend == "sqlite":
        return SQLiteStore(st.sqlite_path, max_new_per_day=st.max_new_per_day, timeout=st.timeout)
    if st.backend == "redis":
        return RedisStore(st, config.store_password, max_new_per_day=st.max_new_per_day, timeout=st.timeout)
    return None


class DeferredStore:
    """A store's operations as Deferreds.

    :param store: the blocking store.
    :param pool: run each call on it with *timeout* (the daemon); None calls at once,
        blocking, and returns a fired Deferred (the CLI).
    :param timeout: seconds a caller waits; the Deferred then fails with
        ``defer.TimeoutError`` (a full pool fails at once with ``PoolOverloaded``).
    """

    def __init__(self, store: AliasStore, pool: BoundedPool | None = None, timeout: float = 2.0) -> None:
        self.store = store
        self.pool = pool
        self.timeout = timeout

    def _run(self, f: Any, *args: Any) -> defer.Deferred:
        if self.pool is None:
            return defer.maybeDeferred(f, *args)
        return self.pool.run(self.timeout, f, *args)

    def put(self, alias: Alias, now: float) -> defer.Deferred:
        """:meth:`AliasStore.put` -> a Deferred with its result."""
        return self._run(self.store.put, alias, now)

    def get(self, key: str, now: float) -> defer.Deferred:
        """:meth:`AliasStore.get` -> a Deferred with the address or None."""
        return self._run(self.store.get, key, now)

    def check(self) -> defer.Deferred:
        return self._run(self.store.check)

    def evict(self, now: float) -> defer.Deferred:
        return self._run(self.store.evict, now)
