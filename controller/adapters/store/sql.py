"""The one place that knows the two databases the durable stores run on.

One replica keeps its state in SQLite: a file beside the controller, nothing to run, the
demo's and the README's default. Several replicas must give the same answers and survive
any one of them, so they share PostgreSQL. Every store (events, parameter history,
operation records) is written once against `Database`, and this module is the only one
that imports `sqlite3` or `psycopg`:

- **Connections.** SQLite: one connection per thread (WAL: readers see a snapshot and never
  wait for the writer; writers take `BEGIN IMMEDIATE` and wait up to the busy timeout,
  which also serialises writers in other processes on the same file). PostgreSQL: one
  `psycopg_pool.ConnectionPool` per process and URL, shared by every store of that
  process (`open_database` twice gives two handles on one pool; the last `close` closes
  it), so the connection count is `pool_size` x replicas whatever the number of stores
  (plus, per replica, the event store's one LISTEN connection: `Database.listen`).
- **SQL.** Statements are written once with `?` placeholders and the SQL both engines
  share (`INSERT ... ON CONFLICT ... DO UPDATE`, `RETURNING`, `LIMIT`/`OFFSET`); `?`
  becomes `%s` for psycopg. What differs is spelled per dialect in a `Migration` (an
  identity column is `INTEGER PRIMARY KEY AUTOINCREMENT` in SQLite, `BIGINT GENERATED
  ALWAYS AS IDENTITY` in PostgreSQL) or taken from `Database.now_ms`, the database's own
  clock in milliseconds: replicas compare times written by each other (an owner's
  heartbeat), so they use one clock, not each pod's.
- **Transactions.** `write()` is one read-write transaction (committed on exit, rolled
  back on an exception); `read()` is one snapshot (PostgreSQL: REPEATABLE READ, READ ONLY),
  so a query's bounds probes and its rows come from the same state. Not nested.
- **Migrations.** Each store has a row in `store_versions` (store, version) and a list of
  numbered `Migration`s; `migrate` applies the missing ones in one transaction under a
  lock (SQLite: the write lock; PostgreSQL: a transaction-scoped advisory lock, since two
  replicas starting together would otherwise race on `CREATE TABLE`). A database written
  by a newer controller (a version above the newest known) is refused with `StoreError`,
  never downgraded.

The stores on it: the event store (events.py: store "events", also the notifier's
cursors, store "notify"), the parameter history (history.py) and the operation records
(operations.py). Their tables are each store's migration 1 (the SQLite DDL as before; for
PostgreSQL BIGINT ids, a sequence or an identity), and for an existing SQLite file
migration 1 is `CREATE ... IF NOT EXISTS`, so files from before the version table are
adopted as they are. Their queries keep their shape, which is what keeps them bounded:
every query is an id range on one index, newest first, with `LIMIT offset + limit`;
SQLite's `INDEXED BY` stays in the SQLite text only (PostgreSQL is kept from plans that
read every match by per-transaction planner settings; `EventStore.explain` shows both).
Event ids are commit order on both (PostgreSQL: an advisory lock around the sequence), so
`Last-Event-ID` works across replicas; followers on another replica learn of new rows by
`LISTEN/NOTIFY` (`Database.listen`: a connection of its own) or a poll of `max(id)`.
Errors: catch `STORE_ERRORS` (this module's) instead of a driver's.
"""

from __future__ import annotations

import abc
import functools
import logging
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg_pool

from controller.config import StoreSettings
from controller.errors import ConductorError

log = logging.getLogger(__name__)

Dialect = Literal["sqlite", "postgresql"]
SQLITE_SCHEME = "sqlite://"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")
# pg_advisory_xact_lock key serialising migrations of every store ("cndctmig").
_MIGRATION_LOCK = 0x636E_6463_746D_6967

_VERSIONS = """CREATE TABLE IF NOT EXISTS store_versions (
    store TEXT PRIMARY KEY,
    version INTEGER NOT NULL
)"""


class StoreError(ConductorError):
    """A store cannot be used: closed, unreachable, or written by a newer controller."""


# What a failing store raises: its own error, or the driver's (a damaged file, a full disk,
# a lost connection, no free connection in the pool). Callers that must survive the store
# catch these without knowing which database is behind it.
STORE_ERRORS: tuple[type[Exception], ...] = (StoreError, sqlite3.Error, psycopg.Error,
                                             psycopg_pool.PoolTimeout)


@dataclass(frozen=True)
class Migration:
    """One schema step of one store, per dialect: statements separated by `;` (so none
    in a comment or a string literal)."""

    version: int
    sqlite: str
    postgresql: str
    # Run after the statements, in the same transaction: a data step SQL cannot say
    # once for both databases (rows rewritten in bounded chunks).
    after: Callable[[Tx], None] | None = None

    @classmethod
    def same(cls, version: int, sql: str) -> Migration:
        """A step written in the SQL both engines take as it is."""
        return cls(version, sql, sql)

    def statements(self, dialect: Dialect) -> list[str]:
        text = self.sqlite if dialect == "sqlite" else self.postgresql
        return [s.strip() for s in text.split(";") if s.strip()]


class _Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: Any, params: Any = ..., /) -> Any: ...
    def executemany(self, sql: Any, params: Any, /) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> Any: ...


class Tx:
    """One transaction's statements, with `?` placeholders whatever the database."""

    def __init__(self, cursor: _Cursor, dialect: Dialect) -> None:
        self._cursor = cursor
        self.dialect = dialect

    def _sql(self, sql: str) -> str:
        return sql if self.dialect == "sqlite" else _pg_sql(sql)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        self._cursor.execute(self._sql(sql), tuple(params))
        return int(self._cursor.rowcount)

    def many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._cursor.executemany(self._sql(sql), [tuple(r) for r in rows])

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        self._cursor.execute(self._sql(sql), tuple(params))
        row = self._cursor.fetchone()
        return None if row is None else tuple(row)

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._cursor.execute(self._sql(sql), tuple(params))
        return [tuple(r) for r in self._cursor.fetchall()]


@functools.lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    # psycopg's placeholder is %s, so a literal % must be doubled.
    return sql.replace("%", "%%").replace("?", "%s")


class Database(abc.ABC):
    """A handle on one database; the stores share it (`open_database`)."""

    dialect: Dialect
    display: str  # where it is, for messages: a path, or the URL without credentials
    now_ms: str  # SQL expression: the database's clock, milliseconds since the epoch

    @abc.abstractmethod
    def write(self) -> AbstractContextManager[Tx]:
        """One read-write transaction: committed on exit, rolled back on an exception."""

    @abc.abstractmethod
    def read(self) -> AbstractContextManager[Tx]:
        """One read-only snapshot."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connections (PostgreSQL: the pool, when its last user closes)."""

    def migrate(self, store: str, migrations: Sequence[Migration]) -> int:
        """Bring `store`'s tables to the newest of `migrations`; the version it is at."""
        steps = sorted(migrations, key=lambda m: m.version)
        if [m.version for m in steps] != list(range(1, len(steps) + 1)):
            raise ValueError(f"{store}: migrations must be numbered 1..n, got "
                             f"{[m.version for m in steps]}")
        newest = len(steps)
        with self.write() as tx:
            if self.dialect == "postgresql":
                tx.execute("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
            tx.execute(_VERSIONS)
            row = tx.one("SELECT version FROM store_versions WHERE store = ?", (store,))
            current = int(row[0]) if row else 0
            if current > newest:
                raise StoreError(
                    f"the {store} store in {self.display} has schema version {current}; "
                    f"this controller knows up to {newest} (written by a newer "
                    "controller: upgrade this one, or point it at another store)",
                    {"store": store, "version": current, "supported": newest,
                     "database": self.display})
            for step in steps[current:]:
                for statement in step.statements(self.dialect):
                    tx.execute(statement)
                if step.after is not None:
                    step.after(tx)
            if current < newest:
                tx.execute("INSERT INTO store_versions (store, version) VALUES (?, ?) "
                           "ON CONFLICT (store) DO UPDATE SET version = excluded.version",
                           (store, newest))
                log.info("store %s in %s: schema %d -> %d", store, self.display, current,
                         newest)
        return newest

    def listen(self, channel: str) -> Listener | None:
        """A connection of its own that waits for `NOTIFY channel` (PostgreSQL: a commit
        in another replica wakes this one); None where there is no such thing (SQLite:
        writers in this process wake their followers directly)."""
        return None

    def check(self) -> None:
        """Raise unless the database reads back intact (SQLite: every page of the file,
        about a second per GB; a server checks its own pages)."""
        with self.read() as tx:
            tx.one("SELECT 1")

    def version(self, store: str) -> int:
        """The schema version `store` is at here (0: never migrated)."""
        with self.write() as tx:  # write: creates the version table on a new database
            tx.execute(_VERSIONS)
            row = tx.one("SELECT version FROM store_versions WHERE store = ?", (store,))
        return int(row[0]) if row else 0


class Listener:
    """One dedicated PostgreSQL connection LISTENing on a channel: not a pool connection,
    since it sits waiting. Errors (the server restarted) are STORE_ERRORS: open another."""

    def __init__(self, conn: psycopg.Connection[Any], channel: str) -> None:
        self._conn = conn
        self.channel = channel

    def wait(self, timeout: float) -> list[str]:
        """The payloads of the notifications that arrive within `timeout` seconds (it
        returns at the first one: [] means none came)."""
        return [n.payload for n in self._conn.notifies(timeout=timeout, stop_after=1)]

    def close(self) -> None:
        self._conn.close()


# -- SQLite --------------------------------------------------------------------------------


class _Conn:
    """Holds one thread's connection; weakly tracked so `close()` reaches it, and closed
    with its thread's local storage when the thread ends."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __del__(self) -> None:
        self.conn.close()


class SqliteDatabase(Database):
    dialect: Dialect = "sqlite"
    now_ms = "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)"

    def __init__(self, path: Path | str, busy_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.display = str(self.path)
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._conns: weakref.WeakSet[_Conn] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._conn()
            # WAL is a property of the file: set once, every later connection has it.
            conn.execute("PRAGMA journal_mode=WAL")
        except (OSError, sqlite3.Error) as e:
            self.close()
            raise StoreError(f"cannot open the store {self.display}: {e}",
                             {"database": self.display}) from e

    def _conn(self) -> sqlite3.Connection:
        holder: _Conn | None = getattr(self._local, "holder", None)
        if holder is not None:
            return holder.conn
        with self._lock:
            if self._closed:
                raise StoreError(f"the store {self.display} is closed",
                                 {"database": self.display})
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE for
            # writes), so the sqlite3 module never opens one behind our back.
            # check_same_thread=False only so that close() may close every connection.
            conn = sqlite3.connect(str(self.path), timeout=self._busy_timeout,
                                   isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)}")
            # NORMAL in WAL mode: never corrupt; a power cut may lose the last commits.
            conn.execute("PRAGMA synchronous=NORMAL")
            holder = _Conn(conn)
            self._conns.add(holder)
        self._local.holder = holder
        return conn

    @contextmanager
    def _transaction(self, begin: str) -> Iterator[Tx]:
        if self._closed:
            raise StoreError(f"the store {self.display} is closed",
                             {"database": self.display})
        conn = self._conn()
        conn.execute(begin)
        try:
            yield Tx(conn.cursor(), "sqlite")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # also when COMMIT itself failed
                conn.execute("ROLLBACK")
            raise

    @contextmanager
    def write(self) -> Iterator[Tx]:
        with self._transaction("BEGIN IMMEDIATE") as tx:
            yield tx

    @contextmanager
    def read(self) -> Iterator[Tx]:
        with self._transaction("BEGIN") as tx:
            yield tx

    def check(self) -> None:
        with self.read() as tx:
            problems = [str(r[0]) for r in tx.all("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError("; ".join(problems))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            holders = list(self._conns)
        for holder in holders:
            holder.conn.close()


# -- PostgreSQL ----------------------------------------------------------------------------


class _SharedPool:
    def __init__(self, pool: psycopg_pool.ConnectionPool[Any]) -> None:
        self.pool = pool
        self.users = 0


_POOLS: dict[tuple[str, str, int], _SharedPool] = {}
_POOLS_LOCK = threading.Lock()


class PostgresDatabase(Database):
    dialect: Dialect = "postgresql"
    now_ms = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"

    def __init__(self, url: str, password: str = "", pool_size: int = 8,
                 connect_timeout: float = 10.0) -> None:
        self.display = display_url(url)
        self._url, self._password = url, password
        self._connect_timeout = connect_timeout
        self._key = (url, password, pool_size)
        self._closed = False
        with _POOLS_LOCK:
            shared = _POOLS.get(self._key)
            if shared is None:
                kwargs: dict[str, Any] = {
                    "autocommit": True,  # transactions are explicit: conn.transaction()
                    "connect_timeout": max(1, round(connect_timeout))}
                if password:
                    kwargs["password"] = password  # never in the URL we show or log
                pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
                    url, min_size=1, max_size=pool_size, kwargs=kwargs, open=False,
                    timeout=connect_timeout, name="conductor-store")
                try:
                    pool.open(wait=True, timeout=connect_timeout)
                except (psycopg.Error, psycopg_pool.PoolTimeout) as e:
                    pool.close()
                    raise StoreError(
                        f"cannot connect to the store {self.display} within "
                        f"{connect_timeout:g} s: {e}",
                        {"database": self.display}) from e
                shared = _POOLS[self._key] = _SharedPool(pool)
            shared.users += 1
        self._pool = shared.pool

    @contextmanager
    def _transaction(self, read_only: bool) -> Iterator[Tx]:
        if self._closed:
            raise StoreError(f"the store {self.display} is closed",
                             {"database": self.display})
        with self._pool.connection() as conn:
            # Said in the BEGIN itself (psycopg adds them to it): no round trip of its own.
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ if read_only \
                else None
            conn.read_only = read_only
            with conn.transaction():
                yield Tx(conn.cursor(), "postgresql")

    @contextmanager
    def write(self) -> Iterator[Tx]:
        with self._transaction(read_only=False) as tx:
            yield tx

    @contextmanager
    def read(self) -> Iterator[Tx]:
        with self._transaction(read_only=True) as tx:
            yield tx

    def listen(self, channel: str) -> Listener:
        if not channel.isidentifier():
            raise ValueError(f"not a channel name: {channel!r}")
        if self._closed:
            raise StoreError(f"the store {self.display} is closed",
                             {"database": self.display})
        kwargs: dict[str, Any] = {"password": self._password} if self._password else {}
        conn = psycopg.connect(self._url, autocommit=True,
                               connect_timeout=max(1, round(self._connect_timeout)), **kwargs)
        try:
            conn.execute(f"LISTEN {channel}")
        except BaseException:
            conn.close()
            raise
        return Listener(conn, channel)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with _POOLS_LOCK:
            shared = _POOLS.get(self._key)
            if shared is None:
                return
            shared.users -= 1
            if shared.users > 0:
                return
            del _POOLS[self._key]
        shared.pool.close()


# -- opening -------------------------------------------------------------------------------


def display_url(url: str) -> str:
    """The URL without its password (user and host stay: they say where it points)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, f"{user}:***@{host}{port}", parts.path, parts.query,
                       parts.fragment))


def open_database(settings: StoreSettings, default_path: Path) -> Database:
    """The database `settings.url` names; "" is SQLite at `default_path` (the events file,
    as before there was a setting). The password, when in a file, is read here, once."""
    url = settings.url
    if not url:
        return SqliteDatabase(default_path)
    if url.startswith(SQLITE_SCHEME):
        return SqliteDatabase(Path(url.removeprefix(SQLITE_SCHEME)))
    if url.startswith(POSTGRES_SCHEMES):
        password = ""
        if settings.password_file:
            password = Path(settings.password_file).read_text().strip()
        return PostgresDatabase(url, password, settings.pool_size, settings.connect_timeout)
    raise StoreError(f"unknown store URL {display_url(url)}: expected sqlite:///path or "
                     "postgresql://user@host:port/database", {"url": display_url(url)})
