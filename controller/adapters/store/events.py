"""The event store: what the controller did and what Kubernetes said about our objects.

An agent diagnosing a failed deployment asks "what went wrong, where, and when" long after
the pass that failed; logs are gone by then and Kubernetes Events expire after an hour. So
events are kept in SQLite (standard library, WAL, one file that survives restarts): the
controller's own (pass started/finished with counts; object applied, deleted or failed, with
the Kubernetes error and its details) and the Kubernetes Events of managed objects (a
kubelet's pull failures...), de-duplicated by the Event's uid.

Each event is serialized once, when it is written: the row holds the event as the API
shows it (`json`, the text `json.dumps(event.to_dict())` gives), beside the columns the
filters use (type, resource, service, instance, time). A query is then a SELECT of ready
text and a join (`page`), not a row-by-row decode and re-encode; `query` still returns
`Event`s for callers that want objects. A file of schema 1 (message, reason and details
as columns) is rebuilt once, in one transaction, when it is opened.

Query cost must not grow with the store. Ids are arrival order, and a stored timestamp
never goes backwards along them (an earlier one is raised to the newest stored), so
`since`/`until` become id bounds with two O(log n) probes of the (ts_ms, id) index. Every
query is then an id range on one index chosen per filter (`INDEXED BY`, so SQLite cannot
pick a worse plan): read newest first, it stops after offset + limit entries (several types:
one range per type, merged lazily). `EventStore.explain` shows the plans; the tests require
every one to be an index search.

One writer connection behind a lock, and one reader connection per thread: in WAL mode
readers see a consistent snapshot and never wait for the writer. Secrets never reach the
file: every event passes through `redact` (controller/model/redaction.py) first. Filters are
checked in controller/model/eventquery.py, timestamps come from controller/model/times.py, and the
engine's hooks that feed the store live in controller/runtime/recording.py.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import tempfile
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, Required, TypedDict

from controller.config import EventSettings
from controller.errors import ConductorError, ValidationError
from controller.model.eventquery import (
    EVENT_TYPES,
    MAX_LIMIT,
    MAX_OFFSET,
    EventType,
    Filters,
    filters,
    validate_type,
)
from controller.model.redaction import REDACTED, redact, redact_text
from controller.model.times import format_ms, now_ms, parse_ms, parse_time

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # 2: the event's JSON serialized at write, and its instance
MIGRATE_CHUNK = 5000  # rows re-encoded per step when a schema-1 file is rebuilt
PRUNE_EVERY = 1000  # inserts between retention passes
PRUNE_INTERVAL = 3600.0  # seconds: an idle-ish store is still pruned at its next add
PRUNE_CHUNK = 5000  # rows deleted per write transaction, so adds interleave with a prune
MAX_MESSAGE = 4096
MAX_FIELD = 512  # reason, resource, service
MAX_DETAILS_BYTES = 64 * 1024

_TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids are never reused, so a
                                           -- stream resuming from Last-Event-ID misses none
    ts_ms INTEGER NOT NULL,                -- non-decreasing along id (see module docstring)
    type TEXT NOT NULL CHECK (type IN ('error', 'warning', 'info', 'success')),
    resource TEXT NOT NULL DEFAULT '',
    service TEXT NOT NULL DEFAULT '',
    instance TEXT NOT NULL DEFAULT '',     -- the DeploymentParameters object's name
    kube_uid TEXT,                         -- metadata.uid of a Kubernetes Event, else NULL
    json TEXT NOT NULL                     -- the event as the API shows it (Event.to_dict)
)"""
_SCHEMA = _TABLE.format(name="events") + """;
CREATE INDEX IF NOT EXISTS events_type ON events (type, id);
CREATE INDEX IF NOT EXISTS events_resource ON events (resource, id);
CREATE INDEX IF NOT EXISTS events_resource_type ON events (resource, type, id);
CREATE INDEX IF NOT EXISTS events_service ON events (service, id);
CREATE INDEX IF NOT EXISTS events_service_type ON events (service, type, id);
CREATE INDEX IF NOT EXISTS events_instance ON events (instance, id);
CREATE INDEX IF NOT EXISTS events_instance_type ON events (instance, type, id);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts_ms, id);
CREATE UNIQUE INDEX IF NOT EXISTS events_kube_uid ON events (kube_uid)
    WHERE kube_uid IS NOT NULL;
"""
_INSERT = ("INSERT INTO events (id, ts_ms, type, resource, service, instance, kube_uid, json) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_FIRST_SINCE = "SELECT id FROM events WHERE ts_ms >= ? ORDER BY ts_ms, id LIMIT 1"
_LAST_UNTIL = "SELECT id FROM events WHERE ts_ms <= ? ORDER BY ts_ms DESC, id DESC LIMIT 1"
_LAST_BEFORE = "SELECT id FROM events WHERE ts_ms < ? ORDER BY ts_ms DESC, id DESC LIMIT 1"


class EventStoreError(ConductorError):
    """The store cannot be used: closed, or a file written by a newer schema."""


# What a failing store raises: its own error, or SQLite's (a damaged file, a full disk).
# Callers that must survive the store (the recorder) catch these without knowing SQLite.
STORE_ERRORS: tuple[type[Exception], ...] = (EventStoreError, sqlite3.Error)


@dataclass(frozen=True)
class Event:
    """One stored event, as the API returns it."""

    id: int
    timestamp: str  # RFC 3339, UTC, milliseconds: 2024-05-01T12:00:00.123Z
    type: EventType
    resource: str  # "namespace/Kind/name" ("-" for cluster-scoped), "" for none
    service: str
    message: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)
    instance: str = ""  # the DeploymentParameters object it is about ("" if unknown)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "timestamp": self.timestamp, "type": self.type,
                "resource": self.resource, "service": self.service, "message": self.message,
                "reason": self.reason, "details": self.details, "instance": self.instance}

    def to_json(self) -> str:
        """The stored form: what `json.dumps(to_dict())` gives (non-ASCII kept as is)."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Event:
        d = json.loads(text)
        return cls(d["id"], d["timestamp"], d["type"], d["resource"], d["service"],
                   d["message"], d["reason"], d["details"], d.get("instance", ""))


class EventInput(TypedDict, total=False):
    """One event for `EventStore.add_many`: the keyword arguments of `add`."""

    type: Required[str]
    message: Required[str]
    resource: str
    service: str
    instance: str
    reason: str
    details: Mapping[str, Any] | None
    timestamp: datetime | str | None


class _Row(NamedTuple):
    """An event validated and redacted, waiting for its id and final timestamp."""

    type: EventType
    message: str
    resource: str
    service: str
    reason: str
    details: dict[str, Any]
    ts_ms: int | None  # None: now
    kube_uid: str | None
    instance: str = ""


class _Reader:
    """Holds one thread's reader connection; weakly tracked so `close()` can reach it and
    a finished thread's connection is closed with its thread-local storage."""

    __slots__ = ("__weakref__", "busy", "conn")

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.busy = False  # in a read transaction: close() leaves it to its own thread


def resource_key(namespace: str, kind: str, name: str) -> str:
    """The resource key events use, the same as `str(ObjectKey)`: "-" for cluster-scoped."""
    return f"{namespace or '-'}/{kind}/{name}"


class EventStore:
    """Events in one SQLite file: add, query with bounded index scans, retain, follow."""

    def __init__(self, path: Path | str, max_age_days: float = 14,
                 max_count: int = 100_000, busy_timeout: float = 10.0) -> None:
        if not max_age_days > 0:
            raise ValueError(f"max_age_days must be > 0, got {max_age_days}")
        if max_count < 1:
            raise ValueError(f"max_count must be >= 1, got {max_count}")
        self.path = Path(path)
        self.max_age_days = float(max_age_days)
        self.max_count = int(max_count)
        self._busy_timeout = busy_timeout
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.Lock()
        self._prune_lock = threading.Lock()
        self._changed = threading.Condition()
        self._local = threading.local()
        self._readers: weakref.WeakSet[_Reader] = weakref.WeakSet()
        self._readers_lock = threading.Lock()
        self._closed = False
        self._writer = self._connect()
        try:
            self._writer.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: never corrupt; a power cut may lose the last commits,
            # which events can afford, and commits skip an fsync each.
            self._writer.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
            row = self._writer.execute("SELECT max(id) FROM events").fetchone()
        except BaseException:
            self._writer.close()  # a file we cannot use must not stay open
            raise
        self._last_id: int = int(row[0] or 0)
        self._since_prune = 0
        self._pruned_at = 0.0
        try:
            self.prune()
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_settings(cls, settings: EventSettings) -> EventStore:
        return cls(settings.path, settings.max_age_days, settings.max_count)

    def check(self) -> None:
        """Raise sqlite3.DatabaseError unless every page of the file reads back intact.

        Opening only reads the schema: a file damaged further in opens fine and fails the
        first query that reaches the damage (a 500 much later, far from its cause).
        `quick_check` reads every page once, which costs about a second per GB."""
        with self._write_lock:
            problems = [str(r[0]) for r in self._writer.execute("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError("; ".join(problems))

    # -- connections ----------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE for writes), so
        # the sqlite3 module never opens one behind our back. check_same_thread=False only
        # so that close() may close every connection; each is used by one thread at a time.
        conn = sqlite3.connect(str(self.path), timeout=self._busy_timeout,
                               isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)}")
        return conn

    def _migrate(self) -> None:
        """Create or upgrade the schema. `user_version` is the file's schema version (the
        file may hold other tables, e.g. parameter history; they do not use it)."""
        version = int(self._writer.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise EventStoreError(
                f"event store {self.path} has schema version {version}; this controller "
                f"knows up to {SCHEMA_VERSION}",
                {"path": str(self.path), "version": version, "supported": SCHEMA_VERSION})
        with self._write_lock:
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                columns = {str(r[1]) for r in self._writer.execute(
                    "PRAGMA table_info(events)")}
                if columns and "json" not in columns:
                    _rebuild_v1(self._writer)
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._writer.execute(statement)
                self._writer.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                self._writer.execute("COMMIT")
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise

    @contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """One read transaction on this thread's reader: the bounds probes and the rows
        come from the same state."""
        holder: _Reader | None = getattr(self._local, "reader", None)
        if holder is None and not self._closed:
            conn = self._connect()
            conn.execute("PRAGMA query_only=1")
            holder = _Reader(conn)
            self._local.reader = holder
            with self._readers_lock:
                self._readers.add(holder)
        with self._readers_lock:
            if self._closed or holder is None:
                raise EventStoreError("the event store is closed", {"path": str(self.path)})
            holder.busy = True
        try:
            holder.conn.execute("BEGIN")
            try:
                yield holder.conn
            finally:
                holder.conn.execute("COMMIT")
        finally:
            with self._readers_lock:
                holder.busy = False
                if self.closed:  # close() left this connection to us
                    holder.conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            if self._closed:
                raise EventStoreError("the event store is closed", {"path": str(self.path)})
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
                self._writer.execute("COMMIT")
            except BaseException:
                if self._writer.in_transaction:  # also when COMMIT itself failed
                    self._writer.execute("ROLLBACK")
                raise
            self._published()

    def _published(self) -> None:
        """After a commit (write lock held): wake the followers if ids moved on."""
        row = self._writer.execute("SELECT max(id) FROM events").fetchone()
        last = int(row[0] or 0)
        if last > self._last_id:
            with self._changed:
                self._last_id = last
                self._changed.notify_all()

    # -- writing --------------------------------------------------------------------------

    def add(self, type: str, message: str, *, resource: str = "", service: str = "",
            reason: str = "", details: Mapping[str, Any] | None = None,
            timestamp: datetime | str | None = None, instance: str = "") -> Event:
        """Store one event (redacted); `timestamp` defaults to now."""
        row = _row(type, message, resource, service, reason, details, _ts(timestamp),
                   instance=instance)
        with self._transaction() as db:
            event = _insert(db, [row])[0]
        self._inserted(1)
        return event

    def add_many(self, events: Iterable[EventInput]) -> list[Event]:
        """Store several events in one transaction (all or none), in the order given."""
        rows = [_row(e["type"], e["message"], e.get("resource", ""), e.get("service", ""),
                     e.get("reason", ""), e.get("details"), _ts(e.get("timestamp")),
                     instance=e.get("instance", ""))
                for e in events]
        if not rows:
            return []
        with self._transaction() as db:
            out = _insert(db, rows)
        self._inserted(len(rows))
        return out

    def record_kube_event(self, body: Mapping[str, Any], *, service: str = "",
                          resource: str | None = None, instance: str = "") -> Event | None:
        """Store a core/v1 (or events.k8s.io/v1) Event of a managed object.

        `resource` files it under another object than the one it is about: a Pod's Event
        under the Deployment that owns it (its involvedObject stays in the details).

        The same Event (by metadata.uid) seen again with a higher count or a later last
        timestamp replaces its stored row (one row per Event; the row takes a new id, so
        newest-first lists and followers see the repetition). Returns None when there is
        nothing new (e.g. the watch re-lists an Event already stored).
        """
        row, count, last_ms = _kube_row(body, service, resource, instance)
        with self._transaction() as db:
            stored = db.execute("SELECT id, json FROM events WHERE kube_uid = ?",
                                (row.kube_uid,)).fetchone()
            if stored is not None:
                old: dict[str, Any] = json.loads(stored[1]).get("details") or {}
                raw = old.get("count")
                old_count = raw if isinstance(raw, int) else 0
                old_last = parse_ms(old.get("lastTimestamp")) or 0
                if count <= old_count and (last_ms or 0) <= old_last:
                    return None
                db.execute("DELETE FROM events WHERE id = ?", (stored[0],))
            event = _insert(db, [row])[0]
        self._inserted(1)
        return event

    def _inserted(self, n: int) -> None:
        self._since_prune += n
        if self._since_prune >= PRUNE_EVERY or \
                time.monotonic() - self._pruned_at > PRUNE_INTERVAL:
            self.prune()

    def prune(self) -> int:
        """Apply retention: drop events older than max_age_days, then all but the newest
        max_count. Cheap when nothing is due (two index probes); deletes in chunks so
        adds are never held up for long. Returns the number of events deleted."""
        if not self._prune_lock.acquire(blocking=False):
            return 0  # another thread is pruning right now
        try:
            self._since_prune = 0
            self._pruned_at = time.monotonic()
            cutoff = now_ms() - int(self.max_age_days * 86_400_000)
            with self._snapshot() as db:
                row = db.execute(_LAST_BEFORE, (cutoff,)).fetchone()
                upto = int(row[0]) if row else 0
                lo, hi = db.execute("SELECT min(id), max(id) FROM events").fetchone()
                if lo is not None and hi - lo + 1 > self.max_count:
                    # Ids may have gaps: the span only says when to count exactly. Walk the
                    # small ts index, not the table: its order is id order (ts never goes
                    # back along ids).
                    row = db.execute(
                        "SELECT id FROM events INDEXED BY events_ts ORDER BY ts_ms DESC, "
                        "id DESC LIMIT 1 OFFSET ?", (self.max_count,)).fetchone()
                    upto = max(upto, int(row[0]) if row else 0)
            deleted = 0
            while upto:
                with self._transaction() as db:
                    first = db.execute("SELECT min(id) FROM events").fetchone()[0]
                    if first is None or first > upto:
                        break
                    deleted += db.execute("DELETE FROM events WHERE id BETWEEN ? AND ?",
                                          (first, min(upto, first + PRUNE_CHUNK - 1))).rowcount
            if deleted:
                log.debug("event retention deleted %d event(s)", deleted)
            return deleted
        finally:
            self._prune_lock.release()

    # -- reading --------------------------------------------------------------------------

    def query(self, type: str | Sequence[str] | None = None, resource: str | None = None,
              service: str | None = None, since: datetime | str | None = None,
              until: datetime | str | None = None, limit: int = 100, offset: int = 0,
              after_id: int | None = None, before_id: int | None = None,
              oldest_first: bool = False, instance: str | None = None) -> list[Event]:
        """Events matching every filter given, newest first (or oldest first).

        `type` is one type, a comma-separated string or a list; `since`/`until` are
        inclusive RFC 3339 timestamps (or datetimes, or "15m", "2h", "7d" ago);
        `after_id`/`before_id` are exclusive id bounds (resume a stream, page deeply);
        `instance` the DeploymentParameters object the events are about.
        `limit` is clamped to 1..1000; `offset` must be 0..10,000.
        """
        return [Event.from_json(text) for text in self.query_json(
            type, resource, service, since, until, limit, offset, after_id, before_id,
            oldest_first, instance)]

    def query_json(self, type: str | Sequence[str] | None = None,
                   resource: str | None = None, service: str | None = None,
                   since: datetime | str | None = None, until: datetime | str | None = None,
                   limit: int = 100, offset: int = 0, after_id: int | None = None,
                   before_id: int | None = None, oldest_first: bool = False,
                   instance: str | None = None) -> list[str]:
        """`query`'s events as their stored JSON text (`Event.to_json`), in its order."""
        f = filters(type, resource, service, since, until, limit, offset, after_id,
                    before_id, oldest_first, instance)
        with self._snapshot() as db:
            ids = _select_ids(db, f)
            if not ids:
                return []
            rows = db.execute(f"SELECT id, json FROM events WHERE id IN "
                              f"({','.join('?' * len(ids))})", ids).fetchall()
        by_id: dict[int, str] = dict(rows)
        return [by_id[i] for i in ids if i in by_id]

    def page(self, **query: Any) -> bytes:
        """The API's answer to an event query, `{"events": [...], "count": n}`, as UTF-8
        bytes: the stored JSON of each event joined, nothing decoded or re-encoded. The
        same text `json.dumps({"events": [e.to_dict() ...], "count": n},
        ensure_ascii=False)` gives. `query` takes `query_json`'s filters."""
        items = self.query_json(**query)
        return f'{{"events": [{", ".join(items)}], "count": {len(items)}}}'.encode()

    def explain(self, type: str | Sequence[str] | None = None, resource: str | None = None,
                service: str | None = None, since: datetime | str | None = None,
                until: datetime | str | None = None, limit: int = 100, offset: int = 0,
                after_id: int | None = None, before_id: int | None = None,
                oldest_first: bool = False, instance: str | None = None) -> list[str]:
        """The SQLite query plan of every statement `query` runs for these filters."""
        f = filters(type, resource, service, since, until, limit, offset, after_id,
                    before_id, oldest_first, instance)
        out: list[str] = []
        with self._snapshot() as db:
            statements = [(_FIRST_SINCE, [f.since_ms])] if f.since_ms is not None else []
            if f.until_ms is not None:
                statements.append((_LAST_UNTIL, [f.until_ms]))
            statements.append(_ids_statement(f, f.lo, f.hi))
            statements.append(("SELECT id, json FROM events WHERE id IN (?, ?)", [1, 2]))
            for sql, params in statements:
                out += [str(r[3]) for r in db.execute("EXPLAIN QUERY PLAN " + sql, params)]
        return out

    def get(self, id: int) -> Event | None:
        with self._snapshot() as db:
            row = db.execute("SELECT json FROM events WHERE id = ?", (id,)).fetchone()
        return Event.from_json(row[0]) if row else None

    def count(self) -> int:
        """How many events are stored (a full count: for metrics, not per request)."""
        with self._snapshot() as db:
            return int(db.execute("SELECT count(*) FROM events").fetchone()[0])

    def size_bytes(self) -> int:
        """The file and its write-ahead log on disk."""
        total = 0
        for p in (self.path, self.path.with_name(self.path.name + "-wal")):
            with suppress(FileNotFoundError):
                total += p.stat().st_size
        return total

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def last_id(self) -> int:
        """The id of the newest committed event (0 when none ever was)."""
        return self._last_id

    # -- following (Server-Sent Events) ---------------------------------------------------

    def wait_for_new(self, after_id: int, timeout: float | None) -> bool:
        """Block until an event newer than `after_id` is committed (True) or the timeout
        passes or the store closes (False). Woken by the commit, never by polling."""
        with self._changed:
            self._changed.wait_for(lambda: self._closed or self._last_id > after_id, timeout)
            return not self._closed and self._last_id > after_id

    def follow(self, *, after_id: int = 0, type: str | Sequence[str] | None = None,
               resource: str | None = None, service: str | None = None,
               since: datetime | str | None = None, until: datetime | str | None = None,
               batch: int = 100, heartbeat: float = 15.0,
               stop: threading.Event | None = None,
               instance: str | None = None) -> Iterator[list[Event]]:
        """Yield the matching events after `after_id`, oldest first, in batches, as they
        are committed; an empty batch every `heartbeat` seconds without one (an SSE
        comment keeps proxies from closing the stream). Ends when the store closes or
        `stop` is set. Resume with the last id sent (Last-Event-ID); start with
        `after_id=store.last_id` for new events only. Events that do not match are skipped
        once, not re-read at every wake-up."""
        batch = filters(type, resource, service, since, until, batch, 0, after_id, None,
                        True, instance).limit
        last = after_id
        while not self._closed and not (stop is not None and stop.is_set()):
            mark = self._last_id  # read before the query: every match <= mark is visible
            page = self.query(type, resource, service, since, until, limit=batch,
                              after_id=last, oldest_first=True, instance=instance)
            if page:
                # A short page holds every match up to mark: skip the others for good.
                last = page[-1].id if len(page) >= batch else max(page[-1].id, mark)
                yield page
                continue
            last = max(last, mark)
            if not self.wait_for_new(last, heartbeat):
                yield []

    def close(self) -> None:
        """Close every connection and end the followers; the store is unusable after.
        A reader in the middle of a query is closed by its own thread when it is done."""
        with self._readers_lock:
            self._closed = True
            for holder in list(self._readers):
                if not holder.busy:
                    holder.conn.close()
        with self._changed:
            self._changed.notify_all()
        with self._write_lock:
            self._writer.close()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


# -- opening at start ---------------------------------------------------------------------


@dataclass(frozen=True)
class StoreProblem:
    """Why the configured event store file could not be used, and how to fix it."""

    path: str
    error: str
    hint: str
    fallback: str  # the temporary file used instead until a restart

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "error": self.error, "hint": self.hint,
                "fallback": self.fallback}


def open_store(settings: EventSettings) -> tuple[EventStore, StoreProblem | None]:
    """The event store at `settings.path`, checked; or, when that file is unusable (not a
    database, damaged, read-only, a directory, under a file), a fresh store in a temporary
    directory and the problem, logged once with the file and the fix.

    The events are a diagnosis aid: losing them until someone fixes the file is better
    than a controller that stops reconciling (or crash-loops) because of them.
    """
    store: EventStore | None = None
    try:
        store = EventStore.from_settings(settings)
        store.check()
        return store, None
    except (sqlite3.Error, OSError, EventStoreError) as e:
        if store is not None:
            store.close()
        error = f"{type(e).__name__}: {e}"
    fallback = Path(tempfile.mkdtemp(prefix="conductor-events-")) / "events.db"
    problem = StoreProblem(str(settings.path), error, _store_hint(settings.path, error),
                           str(fallback))
    log.error("event store %s is unusable (%s); %s. Until then events and parameter "
              "history are kept in %s and lost at restart", problem.path, error,
              problem.hint, fallback)
    return EventStore(fallback, settings.max_age_days, settings.max_count), problem


def _store_hint(path: Path, error: str) -> str:
    if path.is_dir():
        return f"{path} is a directory: set CONDUCTOR_EVENTS_PATH to a file path"
    if any(p.exists() and not p.is_dir() for p in path.parents):
        return f"a parent of {path} is not a directory: set CONDUCTOR_EVENTS_PATH to a " \
               "path under a writable directory"
    if "readonly" in error.replace(" ", "") or "ermission" in error:
        return f"make {path} and its directory writable by the controller (SQLite also " \
               "writes -wal and -shm files beside it)"
    return f"move {path} (and any -wal/-shm beside it) away to keep it for inspection; " \
           "the controller then creates a new one"


def _select_ids(db: sqlite3.Connection, f: Filters) -> list[int]:
    lo, hi = f.lo, f.hi
    if f.since_ms is not None:  # ts_ms is non-decreasing along id: a bound on ts is one on id
        row = db.execute(_FIRST_SINCE, (f.since_ms,)).fetchone()
        if row is None:
            return []
        lo = max(lo, int(row[0]))
    if f.until_ms is not None:
        row = db.execute(_LAST_UNTIL, (f.until_ms,)).fetchone()
        if row is None:
            return []
        hi = min(hi, int(row[0]))
    if lo > hi:
        return []
    sql, params = _ids_statement(f, lo, hi)
    return [r[0] for r in db.execute(sql, params)]


def _ids_statement(f: Filters, lo: int, hi: int) -> tuple[str, list[Any]]:
    """The page's ids: one id range per type asked for (one for any type), on the index
    that has every equality filter before the id.

    Several types are a UNION ALL under one ORDER BY id: SQLite merges the ranges lazily
    (MERGE, no temporary sort) and stops after offset + limit ids.

    The instance has its own index for a query by instance alone; with a resource or a
    service it is checked on that range's rows (two instances of one app share service
    names, so that costs at most a factor of the instances that share them).
    """
    selects: list[str] = []
    params: list[Any] = []
    for t in f.types or (None,):
        where: list[str] = []
        if f.resource is not None:
            index = "events_resource_type" if t else "events_resource"
            where.append("resource = ?")
            params.append(f.resource)
        elif f.service is not None:
            index = "events_service_type" if t else "events_service"
        elif f.instance is not None:
            index = "events_instance_type" if t else "events_instance"
            where.append("instance = ?")
            params.append(f.instance)
        else:
            index = "events_type" if t else ""
        if t:
            where.append("type = ?")
            params.append(t)
        if f.service is not None:
            where.append("service = ?")  # with resource too: checked on that range's rows
            params.append(f.service)
        if f.instance is not None and (f.resource is not None or f.service is not None):
            where.append("instance = ?")
            params.append(f.instance)
        where.append("id BETWEEN ? AND ?")
        params += [lo, hi]
        using = f"INDEXED BY {index}" if index else "NOT INDEXED"  # NOT INDEXED: rowid range
        selects.append(f"SELECT id FROM events {using} WHERE {' AND '.join(where)}")
    params += [f.limit, f.offset]
    return (f"{' UNION ALL '.join(selects)} ORDER BY id {'ASC' if f.ascending else 'DESC'} "
            "LIMIT ? OFFSET ?", params)


def _row(type: str, message: str, resource: str, service: str, reason: str,
         details: Mapping[str, Any] | None, ts_ms: int | None,
         kube_uid: str | None = None, *, instance: str = "") -> _Row:
    t = validate_type(type)
    fields = {"message": message, "resource": resource, "service": service, "reason": reason,
              "instance": instance}
    for name, value in fields.items():
        if not isinstance(value, str):
            raise ValidationError(f"{name}: must be a string",
                                  {"field": name, "value": repr(value)})
    if details is not None and not isinstance(details, Mapping):
        raise ValidationError("details: must be an object",
                              {"field": "details", "value": repr(details)[:200]})
    clean = redact(details)
    text = json.dumps(clean, separators=(",", ":"), ensure_ascii=False)
    if len(text) > MAX_DETAILS_BYTES:
        clean = {"truncated": True, "size": len(text), "keys": sorted(clean)[:50]}
        text = json.dumps(clean, separators=(",", ":"))
    return _Row(t, redact_text(message)[:MAX_MESSAGE], resource[:MAX_FIELD],
                service[:MAX_FIELD], redact_text(reason)[:MAX_FIELD], clean, ts_ms, kube_uid,
                instance[:MAX_FIELD])


def _insert(db: sqlite3.Connection, rows: Sequence[_Row]) -> list[Event]:
    """Insert in a write transaction: ids follow the sequence, timestamps never go back."""
    seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    newest = db.execute("SELECT max(ts_ms) FROM events").fetchone()[0]
    next_id = max(int(seq[0]) if seq else 0,
                  int(db.execute("SELECT max(id) FROM events").fetchone()[0] or 0)) + 1
    floor = int(newest or 0)
    now = now_ms()
    params: list[tuple[Any, ...]] = []
    out: list[Event] = []
    for i, r in enumerate(rows):
        ts = max(now if r.ts_ms is None else r.ts_ms, floor)
        floor = ts
        event = Event(next_id + i, format_ms(ts), r.type, r.resource, r.service, r.message,
                      r.reason, r.details, r.instance)
        params.append((event.id, ts, r.type, r.resource, r.service, r.instance, r.kube_uid,
                       event.to_json()))
        out.append(event)
    db.executemany(_INSERT, params)
    return out


def _rebuild_v1(db: sqlite3.Connection) -> None:
    """A schema-1 `events` table rebuilt as schema 2, inside the caller's transaction:
    each row's JSON written once (as `_insert` would have), the instance taken from the
    details where a health event named it ("" otherwise: older events did not say), ids
    and the AUTOINCREMENT sequence kept. Read in id chunks, so memory stays bounded."""
    seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
    db.execute("DROP TABLE IF EXISTS events_v2")
    db.execute(_TABLE.format(name="events_v2"))
    last, copied = 0, 0
    while True:
        rows = db.execute(
            "SELECT id, ts_ms, type, resource, service, reason, message, details, kube_uid "
            "FROM events WHERE id > ? ORDER BY id LIMIT ?", (last, MIGRATE_CHUNK)).fetchall()
        if not rows:
            break
        params = []
        for id_, ts, type_, resource, service, reason, message, details, uid in rows:
            try:
                parsed = json.loads(details)
            except ValueError:
                parsed = {}
            parsed = parsed if isinstance(parsed, dict) else {}
            named = parsed.get("instance")
            instance = named if isinstance(named, str) else ""
            event = Event(int(id_), format_ms(int(ts)), type_, resource, service, message,
                          reason, parsed, instance)
            params.append((event.id, ts, type_, resource, service, instance, uid,
                           event.to_json()))
        db.executemany(_INSERT.replace("INTO events ", "INTO events_v2 "), params)
        last, copied = int(rows[-1][0]), copied + len(rows)
    db.execute("DROP TABLE events")  # its indexes go with it; _SCHEMA creates the new ones
    db.execute("ALTER TABLE events_v2 RENAME TO events")
    if seq is not None:  # ids are never reused, also across the rebuild
        db.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'events'",
                   (int(seq[0]),))
    log.info("event store: %d event(s) migrated to schema %d", copied, SCHEMA_VERSION)


def _kube_row(body: Mapping[str, Any], service: str, resource: str | None = None,
              instance: str = "") -> tuple[_Row, int, int | None]:
    """A Kubernetes Event as a row, with its count and last-seen time (ms)."""
    if not isinstance(body, Mapping):
        raise ValidationError("a Kubernetes Event must be an object", {"field": "event"})
    meta = body.get("metadata") or {}
    inv = body.get("involvedObject") or body.get("regarding") or {}  # core/v1, events/v1
    uid = str(meta.get("uid") or "")
    if not uid and meta.get("name"):
        uid = f"{meta.get('namespace') or ''}/{meta['name']}"
    if not uid:
        raise ValidationError("a Kubernetes Event without metadata.uid or name",
                              {"field": "metadata.uid"})
    series = body.get("series") or {}
    raw_count = series.get("count") or body.get("count") or body.get("deprecatedCount") or 1
    try:
        count = max(1, int(raw_count))
    except (TypeError, ValueError):
        count = 1
    first = body.get("firstTimestamp") or body.get("deprecatedFirstTimestamp") or \
        body.get("eventTime") or meta.get("creationTimestamp")
    last = series.get("lastObservedTime") or body.get("lastTimestamp") or \
        body.get("deprecatedLastTimestamp") or body.get("eventTime") or first
    source = body.get("source") or {}
    details: dict[str, Any] = {
        "origin": "kubernetes",
        "count": count,
        "firstTimestamp": first,
        "lastTimestamp": last,
        "component": source.get("component") or body.get("reportingController") or
        body.get("reportingComponent") or "",
        "host": source.get("host") or body.get("reportingInstance") or "",
        "involvedObject": {k: inv[k] for k in ("apiVersion", "kind", "namespace", "name",
                                               "uid", "fieldPath") if inv.get(k)},
        "event": f"{meta.get('namespace') or ''}/{meta.get('name') or ''}",
    }
    last_ms = parse_ms(last)
    # The store's time for this row: when it was last seen, but never in the future (a
    # skewed API server clock would otherwise hold every later timestamp back).
    ts = min(last_ms, now_ms()) if last_ms is not None else None
    key = resource or resource_key(str(inv.get("namespace") or ""),
                                   str(inv.get("kind") or ""), str(inv.get("name") or ""))
    row = _row("warning" if body.get("type") == "Warning" else "info",
               str(body.get("message") or body.get("note") or ""), key, service,
               str(body.get("reason") or ""), details, ts, uid, instance=instance)
    return row, count, last_ms


def _ts(value: datetime | str | None) -> int | None:
    return None if value is None else parse_time(value, "timestamp")



# Importers from before the split (the API, bench, tests) find these names here too.
__all__ = ["EVENT_TYPES", "MAX_LIMIT", "MAX_OFFSET", "REDACTED", "STORE_ERRORS", "Event",
           "EventInput", "EventStore", "EventStoreError", "EventType", "StoreProblem",
           "format_ms", "open_store", "parse_time", "redact", "redact_text", "resource_key",
           "validate_type"]
