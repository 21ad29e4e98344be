"""The event store: what the controller did and what Kubernetes said about our objects.

An agent diagnosing a failed deployment asks "what went wrong, where, and when" long after
the pass that failed; logs are gone by then and Kubernetes Events expire after an hour. So
events are kept in the durable store (sql.py): SQLite (WAL, one file that survives
restarts) for one replica, the demo's default; PostgreSQL shared by every replica when
there are several, so each replica answers the same and streams what any of them wrote.
The controller's own events (pass started/finished with counts; object applied, deleted or
failed, with the Kubernetes error and its details) and the Kubernetes Events of managed
objects (a kubelet's pull failures...), de-duplicated by the Event's uid.

Each event is serialized once, when it is written: the row holds the event as the API
shows it (`json`, the text `json.dumps(event.to_dict())` gives), beside the columns the
filters use (type, resource, service, instance and its namespace, time). A query is then
a SELECT of ready text and a join (`page`), not a row-by-row decode and re-encode; `query`
still returns `Event`s for callers that want objects. The schema is migrations 1-2 of
store "events" on both databases; a SQLite file of schema 1 (message, reason and details
as columns) is rebuilt once, in one transaction, when it is opened, and `PRAGMA
user_version` still says 2 (a controller from before the version table reads it).

**An instance is (namespace, name).** Two DeploymentParameters objects of one name in two
namespaces are two instances, and a token limited to one namespace must not read the
other's events, so every event carries both (migration 2 added the namespace). Rows
written before it are given one where it can be told: the controller's own instance
(`home`) for its name, else the namespace of the object the event is about; pass events
of another instance keep "" (unknown), which a namespaced filter never matches: an old
row becomes invisible to a limited token rather than visible to the wrong one.

Query cost must not grow with the store. Ids are commit order, and a stored timestamp
never goes backwards along them (an earlier one is raised to the newest stored), so
`since`/`until` become id bounds with two O(log n) probes of the (ts_ms, id) index. Every
query is then an id range on one index chosen per filter (SQLite: `INDEXED BY`, so it
cannot pick a worse plan; PostgreSQL picks the same (column, id) index by itself, a
Merge Append over several types): read newest first, it stops after offset + limit
entries. `EventStore.explain` shows the plans; the tests require every one to be an index
search, on both databases.

**Ids across replicas, and the gap.** A follower resumes after the last id it read
(Last-Event-ID), so an id must never become visible after a higher one was read: with
plain sequence ids, replica A's transaction could take id 7, replica B's id 8 and commit
first, and a follower that read 8 would never see 7. So every write transaction first
takes one PostgreSQL advisory lock (transaction-scoped) and only then draws its ids from
the `events_ids` sequence: ids are handed out in commit order (the lock is released after
the commit is visible), `max(id)` is a watermark below which nothing is still to come, and
a rolled-back write leaves a gap nobody waits for. SQLite's `BEGIN IMMEDIATE` does the
same for one file. The lock costs a writer the other writers' commit time, which events
(tens a second at most) can afford.

**Following.** `last_id` is that watermark; `wait_for_new` blocks on a condition that a
commit in this process sets at once, and that, on PostgreSQL, a watcher thread sets when
another replica commits: its own connection LISTENs on `conductor_events` (each insert
sends `pg_notify` with its newest id, delivered at commit), with a poll of `max(id)` every
`poll_interval` seconds as the fallback (a lost connection, a notification missed while it
reconnects). So SSE streams (`follow`, the API's Fanout) serve any replica's events with
the same Last-Event-ID semantics.

Secrets never reach the store: every event passes through `redact`
(controller/model/redaction.py) first. Filters are checked in controller/model/eventquery.py,
timestamps come from controller/model/times.py, and the engine's hooks that feed the store
live in controller/runtime/recording.py.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, Required, TypedDict

from controller.adapters.store.sql import (
    STORE_ERRORS,
    Database,
    Listener,
    Migration,
    SqliteDatabase,
    StoreError,
    Tx,
    open_database,
)
from controller.config import EventSettings, StoreSettings
from controller.errors import ValidationError
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

STORE = "events"
SCHEMA_VERSION = 2  # 2: the event's JSON serialized at write, and its instance
# (PRAGMA user_version, for controllers from before the version table; the namespace is
# the version table's migration 2 and needs nothing of them)
MIGRATE_CHUNK = 5000  # rows re-encoded per step when a schema-1 file is rebuilt
PRUNE_EVERY = 1000  # inserts between retention passes
PRUNE_INTERVAL = 3600.0  # seconds: an idle-ish store is still pruned at its next add
PRUNE_CHUNK = 5000  # rows deleted per write transaction, so adds interleave with a prune
MAX_MESSAGE = 4096
MAX_FIELD = 512  # reason, resource, service
MAX_DETAILS_BYTES = 64 * 1024
CHANNEL = "conductor_events"  # PostgreSQL: NOTIFY <newest id> at each insert's commit
POLL_INTERVAL = 1.0  # seconds: PostgreSQL followers check max(id) at least this often
# pg_advisory_xact_lock key: one event writer at a time, so ids are commit order
# ("cndctevt").
_WRITE_LOCK = 0x636E_6463_7465_7674

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
_INDEXES = """;
CREATE INDEX IF NOT EXISTS events_type ON events (type, id);
CREATE INDEX IF NOT EXISTS events_resource ON events (resource, id);
CREATE INDEX IF NOT EXISTS events_resource_type ON events (resource, type, id);
CREATE INDEX IF NOT EXISTS events_service ON events (service, id);
CREATE INDEX IF NOT EXISTS events_service_type ON events (service, type, id);
CREATE INDEX IF NOT EXISTS events_instance ON events (instance, id);
CREATE INDEX IF NOT EXISTS events_instance_type ON events (instance, type, id);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts_ms, id);
CREATE UNIQUE INDEX IF NOT EXISTS events_kube_uid ON events (kube_uid)
    WHERE kube_uid IS NOT NULL
"""
# PostgreSQL: ids from a sequence drawn under the write lock (never reused, as
# AUTOINCREMENT), not an identity column, so a write knows them before it inserts.
_PG_TABLE = """
CREATE SEQUENCE IF NOT EXISTS events_ids;
CREATE TABLE IF NOT EXISTS events (
    id BIGINT PRIMARY KEY,
    ts_ms BIGINT NOT NULL,
    type TEXT NOT NULL CHECK (type IN ('error', 'warning', 'info', 'success')),
    resource TEXT NOT NULL DEFAULT '',
    service TEXT NOT NULL DEFAULT '',
    instance TEXT NOT NULL DEFAULT '',
    kube_uid TEXT,
    json TEXT NOT NULL
)"""
# Migration 2: the instance's namespace, and the indexes a query by instance and namespace
# walks (instance first: a query by name alone keeps events_instance).
_NAMESPACE = """
ALTER TABLE events ADD COLUMN namespace TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS events_instance_ns ON events (instance, namespace, id);
CREATE INDEX IF NOT EXISTS events_instance_ns_type ON events (instance, namespace, type, id)
"""
# Migration 3: one instance's service, what a limited token's ?service= asks (every
# instance of an app has the same services: the service's own range is all of theirs).
_INSTANCE_SERVICE = """
CREATE INDEX IF NOT EXISTS events_instance_ns_service
    ON events (instance, namespace, service, id);
CREATE INDEX IF NOT EXISTS events_instance_ns_service_type
    ON events (instance, namespace, service, type, id)
"""
Home = tuple[str, str]  # the controller's own instance: (namespace, name)


def migrations(home: Home | None = None) -> tuple[Migration, ...]:
    """The schema steps; `home` names the namespace of the own instance's old rows."""
    return (Migration(1, _TABLE.format(name="events") + _INDEXES, _PG_TABLE + _INDEXES),
            Migration(2, _NAMESPACE, _NAMESPACE, after=lambda tx: _fill_namespaces(tx, home)),
            Migration.same(3, _INSTANCE_SERVICE))


MIGRATIONS = migrations()
_INSERT = ("INSERT INTO events (id, ts_ms, type, resource, service, instance, namespace, "
           "kube_uid, json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
_INSERT_V1 = ("INSERT INTO events_v2 (id, ts_ms, type, resource, service, instance, kube_uid, "
              "json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_FIRST_SINCE = "SELECT id FROM events WHERE ts_ms >= ? ORDER BY ts_ms, id LIMIT 1"
_LAST_UNTIL = "SELECT id FROM events WHERE ts_ms <= ? ORDER BY ts_ms DESC, id DESC LIMIT 1"
_LAST_BEFORE = "SELECT id FROM events WHERE ts_ms < ? ORDER BY ts_ms DESC, id DESC LIMIT 1"

# The store's error (closed, unreachable, written by a newer controller) is sql.py's; the
# old name stays for its importers. What a failing store raises is STORE_ERRORS: callers
# that must survive the store (the recorder) catch those without knowing the database.
EventStoreError = StoreError


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
    namespace: str = ""  # that object's namespace ("" if unknown)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "timestamp": self.timestamp, "type": self.type,
                "resource": self.resource, "service": self.service, "message": self.message,
                "reason": self.reason, "details": self.details, "instance": self.instance,
                "namespace": self.namespace}

    def to_json(self) -> str:
        """The stored form: what `json.dumps(to_dict())` gives (non-ASCII kept as is)."""
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Event:
        d = json.loads(text)
        return cls(d["id"], d["timestamp"], d["type"], d["resource"], d["service"],
                   d["message"], d["reason"], d["details"], d.get("instance", ""),
                   d.get("namespace", ""))


class EventInput(TypedDict, total=False):
    """One event for `EventStore.add_many`: the keyword arguments of `add`."""

    type: Required[str]
    message: Required[str]
    resource: str
    service: str
    instance: str
    namespace: str
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
    namespace: str = ""


def resource_key(namespace: str, kind: str, name: str) -> str:
    """The resource key events use, the same as `str(ObjectKey)`: "-" for cluster-scoped."""
    return f"{namespace or '-'}/{kind}/{name}"




class EventStore:
    """Events in a `Database` (given a path: its own SQLite file): add, query with bounded
    index scans, retain, follow, whichever replica wrote them."""

    def __init__(self, target: Path | str | Database, max_age_days: float = 14,
                 max_count: int = 100_000, busy_timeout: float = 10.0, *,
                 own_db: bool | None = None, poll_interval: float = POLL_INTERVAL,
                 home: Home | None = None) -> None:
        if not max_age_days > 0:
            raise ValueError(f"max_age_days must be > 0, got {max_age_days}")
        if max_count < 1:
            raise ValueError(f"max_count must be >= 1, got {max_count}")
        self.max_age_days = float(max_age_days)
        self.max_count = int(max_count)
        self.poll_interval = poll_interval
        given = isinstance(target, Database)
        self.db: Database = target if isinstance(target, Database) else \
            SqliteDatabase(target, busy_timeout)
        self._owned = not given if own_db is None else own_db  # we close what we own
        # The file, for SQLite (where the history sits beside it, its size); None else.
        self.path: Path | None = getattr(self.db, "path", None)
        self._write_lock = threading.Lock()  # this process's writers, one at a time
        self._prune_lock = threading.Lock()
        self._changed = threading.Condition()
        self._closed = False
        try:
            self._adopt()
            self.db.migrate(STORE, migrations(home))
            if self.db.dialect == "sqlite":
                with self.db.write() as tx:  # for controllers from before the version table
                    tx.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._last_id: int = self._newest()
        except BaseException:
            if self._owned:
                self.db.close()  # a file we cannot use must not stay open
            raise
        self._since_prune = 0
        self._pruned_at = 0.0
        try:
            self.prune()
        except BaseException:
            self.close()
            raise
        self._watcher: threading.Thread | None = None
        if self.db.dialect == "postgresql":
            self._watcher = threading.Thread(target=self._watch, name="event-watcher",
                                             daemon=True)
            self._watcher.start()

    @classmethod
    def from_settings(cls, settings: EventSettings) -> EventStore:
        return cls(settings.path, settings.max_age_days, settings.max_count)

    def check(self) -> None:
        """Raise unless the store reads back intact.

        Opening only reads the schema: a SQLite file damaged further in opens fine and
        fails the first query that reaches the damage (a 500 much later, far from its
        cause). The check reads every page once, which costs about a second per GB."""
        self.db.check()

    # -- schema ---------------------------------------------------------------------------

    def _adopt(self) -> None:
        """A SQLite file from before the version table: refuse a newer one (its
        `user_version`), rebuild a schema-1 table as schema 2. The file may hold other
        stores' tables (parameter history); they do not use `user_version`."""
        if self.db.dialect != "sqlite":
            return
        with self.db.write() as tx:
            row = tx.one("PRAGMA user_version")
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise EventStoreError(
                    f"event store {self.db.display} has schema version {version}; this "
                    f"controller knows up to {SCHEMA_VERSION}",
                    {"path": self.db.display, "version": version,
                     "supported": SCHEMA_VERSION})
            columns = {str(r[1]) for r in tx.all("PRAGMA table_info(events)")}
            if columns and "json" not in columns:
                _rebuild_v1(tx)

    def _newest(self) -> int:
        with self.db.read() as tx:
            row = tx.one("SELECT max(id) FROM events")
        return int(row[0] or 0) if row else 0

    # -- transactions ---------------------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._closed:
            raise EventStoreError("the event store is closed", {"database": self.db.display})

    @contextmanager
    def _writing(self) -> Iterator[Tx]:
        """One write transaction that may insert events (PostgreSQL: under the write lock,
        see the module docstring); the caller wakes the followers after it (`_published`)."""
        with self._write_lock:
            self._ensure_open()
            with self.db.write() as tx:
                if tx.dialect == "postgresql":
                    tx.execute("SELECT pg_advisory_xact_lock(?)", (_WRITE_LOCK,))
                yield tx

    def _published(self, last: int) -> None:
        """Ids up to `last` are committed: wake the followers if that moves them on."""
        with self._changed:
            if last > self._last_id:
                self._last_id = last
                self._changed.notify_all()

    def _watch(self) -> None:
        """PostgreSQL: learn of other replicas' commits (LISTEN, else a poll of max(id))."""
        listener: Listener | None = None
        while not self._closed:
            try:
                if listener is None:
                    listener = self.db.listen(CHANNEL)
                    self._published(self._newest())  # what came while not listening
                payloads = listener.wait(self.poll_interval) if listener else []
                ids = [int(p) for p in payloads if p.isdigit()]
                self._published(max(ids) if ids else self._newest())
            except STORE_ERRORS as e:
                if self.closed:
                    break
                log.warning("event store %s: following other replicas' events by polling "
                            "(%s)", self.db.display, e)
                if listener is not None:
                    with suppress(*STORE_ERRORS):
                        listener.close()
                    listener = None
                with self._changed:  # a close ends the wait
                    self._changed.wait_for(lambda: self._closed, self.poll_interval)
                with suppress(*STORE_ERRORS):
                    self._published(self._newest())
        if listener is not None:
            with suppress(*STORE_ERRORS):
                listener.close()

    # -- writing --------------------------------------------------------------------------

    def add(self, type: str, message: str, *, resource: str = "", service: str = "",
            reason: str = "", details: Mapping[str, Any] | None = None,
            timestamp: datetime | str | None = None, instance: str = "",
            namespace: str = "") -> Event:
        """Store one event (redacted); `timestamp` defaults to now; `instance` and
        `namespace` name the DeploymentParameters object it is about."""
        row = _row(type, message, resource, service, reason, details, _ts(timestamp),
                   instance=instance, namespace=namespace)
        with self._writing() as tx:
            event = _insert(tx, [row])[0]
        self._published(event.id)
        self._inserted(1)
        return event

    def add_many(self, events: Iterable[EventInput]) -> list[Event]:
        """Store several events in one transaction (all or none), in the order given."""
        rows = [_row(e["type"], e["message"], e.get("resource", ""), e.get("service", ""),
                     e.get("reason", ""), e.get("details"), _ts(e.get("timestamp")),
                     instance=e.get("instance", ""), namespace=e.get("namespace", ""))
                for e in events]
        if not rows:
            return []
        with self._writing() as tx:
            out = _insert(tx, rows)
        self._published(out[-1].id)
        self._inserted(len(rows))
        return out

    def record_kube_event(self, body: Mapping[str, Any], *, service: str = "",
                          resource: str | None = None, instance: str = "",
                          namespace: str = "") -> Event | None:
        """Store a core/v1 (or events.k8s.io/v1) Event of a managed object.

        `resource` files it under another object than the one it is about: a Pod's Event
        under the Deployment that owns it (its involvedObject stays in the details).

        The same Event (by metadata.uid) seen again with a higher count or a later last
        timestamp replaces its stored row (one row per Event; the row takes a new id, so
        newest-first lists and followers see the repetition). Returns None when there is
        nothing new (e.g. the watch re-lists an Event already stored, or another replica
        stored it first: the check runs under the write lock).
        """
        row, count, last_ms = _kube_row(body, service, resource, instance, namespace)
        with self._writing() as tx:
            stored = tx.one("SELECT id, json FROM events WHERE kube_uid = ?", (row.kube_uid,))
            if stored is not None:
                old: dict[str, Any] = json.loads(stored[1]).get("details") or {}
                raw = old.get("count")
                old_count = raw if isinstance(raw, int) else 0
                old_last = parse_ms(old.get("lastTimestamp")) or 0
                if count <= old_count and (last_ms or 0) <= old_last:
                    return None
                tx.execute("DELETE FROM events WHERE id = ?", (stored[0],))
            event = _insert(tx, [row])[0]
        self._published(event.id)
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
            self._ensure_open()
            with self.db.read() as tx:
                row = tx.one(_LAST_BEFORE, (cutoff,))
                upto = int(row[0]) if row else 0
                bounds = tx.one("SELECT min(id), max(id) FROM events")
                lo, hi = bounds if bounds else (None, None)
                if lo is not None and hi - lo + 1 > self.max_count:
                    # Ids may have gaps: the span only says when to count exactly. Walk the
                    # small ts index, not the table: its order is id order (ts never goes
                    # back along ids).
                    using = "INDEXED BY events_ts " if tx.dialect == "sqlite" else ""
                    row = tx.one(f"SELECT id FROM events {using}ORDER BY ts_ms DESC, "
                                 "id DESC LIMIT 1 OFFSET ?", (self.max_count,))
                    upto = max(upto, int(row[0]) if row else 0)
            deleted = 0
            while upto:
                with self._write_lock:  # deletes need no id order: not the shared lock
                    self._ensure_open()
                    with self.db.write() as tx:
                        first_row = tx.one("SELECT min(id) FROM events")
                        first = first_row[0] if first_row else None
                        if first is None or first > upto:
                            break
                        deleted += tx.execute("DELETE FROM events WHERE id BETWEEN ? AND ?",
                                              (first, min(upto, first + PRUNE_CHUNK - 1)))
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
              oldest_first: bool = False, instance: str | None = None,
              namespace: str | None = None) -> list[Event]:
        """Events matching every filter given, newest first (or oldest first).

        `type` is one type, a comma-separated string or a list; `since`/`until` are
        inclusive RFC 3339 timestamps (or datetimes, or "15m", "2h", "7d" ago);
        `after_id`/`before_id` are exclusive id bounds (resume a stream, page deeply);
        `instance` the DeploymentParameters object the events are about (by name; with
        `namespace`, that namespace's object only). `limit` is clamped to 1..1000;
        `offset` must be 0..10,000.
        """
        return [Event.from_json(text) for text in self.query_json(
            type, resource, service, since, until, limit, offset, after_id, before_id,
            oldest_first, instance, namespace)]

    def query_json(self, type: str | Sequence[str] | None = None,
                   resource: str | None = None, service: str | None = None,
                   since: datetime | str | None = None, until: datetime | str | None = None,
                   limit: int = 100, offset: int = 0, after_id: int | None = None,
                   before_id: int | None = None, oldest_first: bool = False,
                   instance: str | None = None, namespace: str | None = None) -> list[str]:
        """`query`'s events as their stored JSON text (`Event.to_json`), in its order."""
        f = filters(type, resource, service, since, until, limit, offset, after_id,
                    before_id, oldest_first, instance, namespace)
        self._ensure_open()
        with self.db.read() as tx:
            if tx.dialect != "sqlite":  # one round trip: the page's rows by its ids
                found = _select_ids(tx, f, rows=True)
                return [str(text) for _id, text in sorted(
                    found, key=lambda r: int(r[0]), reverse=not f.ascending)]
            if not f.offset:
                # A first page: its rows straight from the index walk, which stops after
                # `limit` of them (one statement; half the time of ids, then rows by id).
                return [str(r[1]) for r in _select_ids(tx, f, columns="id, json")]
            # Deeper: the ids first, so the rows skipped by the offset are never read.
            ids = [int(r[0]) for r in _select_ids(tx, f)]
            if not ids:
                return []
            rows = tx.all(f"SELECT id, json FROM events WHERE id IN "
                          f"({','.join('?' * len(ids))})", ids)
        by_id: dict[int, str] = {int(i): str(text) for i, text in rows}
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
                oldest_first: bool = False, instance: str | None = None,
                namespace: str | None = None) -> list[str]:
        """The query plan of every statement `query` runs for these filters (SQLite:
        EXPLAIN QUERY PLAN's details; PostgreSQL: EXPLAIN's lines, without costs)."""
        f = filters(type, resource, service, since, until, limit, offset, after_id,
                    before_id, oldest_first, instance, namespace)
        out: list[str] = []
        self._ensure_open()
        with self.db.read() as tx:
            _bounded(tx)
            statements = [(_FIRST_SINCE, [f.since_ms])] if f.since_ms is not None else []
            if f.until_ms is not None:
                statements.append((_LAST_UNTIL, [f.until_ms]))
            sql, params = _ids_statement(f, f.lo, f.hi, tx.dialect)
            if tx.dialect == "sqlite" and not f.offset:  # the page's rows in one (query_json)
                statements.append(_ids_statement(f, f.lo, f.hi, tx.dialect, "id, json"))
            elif tx.dialect == "sqlite":
                statements.append((sql, params))
                statements.append(("SELECT id, json FROM events WHERE id IN (?, ?)", [1, 2]))
            else:  # the page's ids and rows in one statement (query_json)
                statements.append((f"SELECT id, json FROM events WHERE id IN ({sql})",
                                   params))
            for sql, params in statements:
                if tx.dialect == "sqlite":
                    out += [str(r[3]) for r in tx.all("EXPLAIN QUERY PLAN " + sql, params)]
                else:
                    out += [str(r[0]).strip() for r in tx.all("EXPLAIN (COSTS OFF) " + sql,
                                                              params)]
        return out

    def get(self, id: int) -> Event | None:
        self._ensure_open()
        with self.db.read() as tx:
            row = tx.one("SELECT json FROM events WHERE id = ?", (id,))
        return Event.from_json(row[0]) if row else None

    def count(self) -> int:
        """How many events are stored (a full count: for metrics, not per request)."""
        self._ensure_open()
        with self.db.read() as tx:
            row = tx.one("SELECT count(*) FROM events")
        return int(row[0]) if row else 0

    def size_bytes(self) -> int:
        """The space the events take: SQLite, the file and its write-ahead log (the
        history beside them included); PostgreSQL, the table and its indexes."""
        if self.path is None:
            with self.db.read() as tx:
                row = tx.one("SELECT pg_total_relation_size('events')")
            return int(row[0]) if row else 0
        total = 0
        for p in (self.path, self.path.with_name(self.path.name + "-wal")):
            with suppress(FileNotFoundError):
                total += p.stat().st_size
        return total

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def local(self) -> bool:
        """Whether a read is a local file's (SQLite), never a network round trip: a small
        query may then run where waiting is not allowed (the API's event loop)."""
        return self.db.dialect == "sqlite"

    @property
    def last_id(self) -> int:
        """The newest committed event id this process knows of (0 when none ever was);
        every event up to it is committed (the watermark: see the module docstring)."""
        return self._last_id

    # -- following (Server-Sent Events) ---------------------------------------------------

    def wait_for_new(self, after_id: int, timeout: float | None) -> bool:
        """Block until an event newer than `after_id` is committed (True) or the timeout
        passes or the store closes (False). Woken by the commit (another replica's: its
        notification, or at worst the poll), not by polling here."""
        with self._changed:
            self._changed.wait_for(lambda: self._closed or self._last_id > after_id, timeout)
            return not self._closed and self._last_id > after_id

    def follow(self, *, after_id: int = 0, type: str | Sequence[str] | None = None,
               resource: str | None = None, service: str | None = None,
               since: datetime | str | None = None, until: datetime | str | None = None,
               batch: int = 100, heartbeat: float = 15.0,
               stop: threading.Event | None = None,
               instance: str | None = None,
               namespace: str | None = None) -> Iterator[list[Event]]:
        """Yield the matching events after `after_id`, oldest first, in batches, as they
        are committed; an empty batch every `heartbeat` seconds without one (an SSE
        comment keeps proxies from closing the stream). Ends when the store closes or
        `stop` is set. Resume with the last id sent (Last-Event-ID); start with
        `after_id=store.last_id` for new events only. Events that do not match are skipped
        once, not re-read at every wake-up."""
        batch = filters(type, resource, service, since, until, batch, 0, after_id, None,
                        True, instance, namespace).limit
        last = after_id
        while not self._closed and not (stop is not None and stop.is_set()):
            mark = self._last_id  # read before the query: every match <= mark is visible
            page = self.query(type, resource, service, since, until, limit=batch,
                              after_id=last, oldest_first=True, instance=instance,
                              namespace=namespace)
            if page:
                # A short page holds every match up to mark: skip the others for good.
                last = page[-1].id if len(page) >= batch else max(page[-1].id, mark)
                yield page
                continue
            last = max(last, mark)
            if not self.wait_for_new(last, heartbeat):
                yield []

    def close(self) -> None:
        """End the followers and the watcher, and close the database if this store
        opened it; the store is unusable after."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        with self._write_lock:  # a write in progress finishes first
            if self._owned:
                self.db.close()

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


_UNUSABLE: tuple[type[Exception], ...] = (*STORE_ERRORS, OSError)  # a SQLite file: fall back


def open_store(settings: EventSettings, store: StoreSettings | None = None, *,
               own_db: bool = True,
               home: Home | None = None) -> tuple[EventStore, StoreProblem | None]:
    """The event store in the database `store` names (PostgreSQL, or a SQLite file), by
    default SQLite at `settings.path`, checked. A SQLite file that is unusable (not a
    database, damaged, read-only, a directory, under a file) gives a fresh store in a
    temporary directory and the problem, logged once with the file and the fix. A
    PostgreSQL that cannot be reached is an error (StoreError): replicas that silently
    kept their own events would answer differently. `own_db`: the store closes its
    database when it closes (False: the caller shares it and closes it).

    The events are a diagnosis aid: losing them until someone fixes the file is better
    than a controller that stops reconciling (or crash-loops) because of them.
    """
    url = store.url if store is not None else ""
    if store is not None and url and not url.startswith("sqlite://"):
        return EventStore(open_database(store, settings.path), settings.max_age_days,
                          settings.max_count, own_db=own_db, home=home), None
    path = Path(url.removeprefix("sqlite://")) if url else settings.path
    events: EventStore | None = None
    try:
        events = EventStore(path, settings.max_age_days, settings.max_count,
                            own_db=own_db, home=home)
        events.check()
        return events, None
    except _UNUSABLE as e:
        if events is not None:
            events.close()
            events.db.close()
        # Name what SQLite or the OS said (sql.py wraps it in a StoreError).
        cause = e.__cause__ if isinstance(e, StoreError) and e.__cause__ else e
        error = f"{type(cause).__name__}: {cause}"
    settings = EventSettings(path=path, max_age_days=settings.max_age_days,
                             max_count=settings.max_count)
    fallback = Path(tempfile.mkdtemp(prefix="conductor-events-")) / "events.db"
    problem = StoreProblem(str(settings.path), error, _store_hint(settings.path, error),
                           str(fallback))
    log.error("event store %s is unusable (%s); %s. Until then events and parameter "
              "history are kept in %s and lost at restart", problem.path, error,
              problem.hint, fallback)
    return EventStore(fallback, settings.max_age_days, settings.max_count,
                      own_db=own_db, home=home), problem


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


# PostgreSQL's INDEXED BY: for this read transaction only, plans that read every match
# (a bitmap of the whole range), sort, or scan the table cost more than any ordered index
# scan that stops after offset + limit rows. Statistics (a skewed service) would otherwise
# pick them at times: fast on average, unbounded at worst.
_PG_BOUNDED = ("SELECT set_config('enable_bitmapscan', 'off', true), "
               "set_config('enable_sort', 'off', true), "
               "set_config('enable_seqscan', 'off', true)")


def _bounded(tx: Tx) -> None:
    if tx.dialect == "postgresql":
        tx.one(_PG_BOUNDED)


def _select_ids(tx: Tx, f: Filters, rows: bool = False,
                columns: str = "id") -> list[tuple[Any, ...]]:
    """The page's ids (rows of one column), or with `rows` its (id, json) rows in no
    particular order (one statement: the ids' range query as a subquery), or the page's
    `columns` in its order."""
    _bounded(tx)
    lo, hi = f.lo, f.hi
    if f.since_ms is not None:  # ts_ms is non-decreasing along id: a bound on ts is one on id
        row = tx.one(_FIRST_SINCE, (f.since_ms,))
        if row is None:
            return []
        lo = max(lo, int(row[0]))
    if f.until_ms is not None:
        row = tx.one(_LAST_UNTIL, (f.until_ms,))
        if row is None:
            return []
        hi = min(hi, int(row[0]))
    if lo > hi:
        return []
    sql, params = _ids_statement(f, lo, hi, tx.dialect, columns)
    if rows:
        sql = f"SELECT id, json FROM events WHERE id IN ({sql})"
    return tx.all(sql, params)


def _ids_statement(f: Filters, lo: int, hi: int, dialect: str = "sqlite",
                   columns: str = "id") -> tuple[str, list[Any]]:
    """The page's ids: one id range per type asked for (one for any type), on the index
    that has every equality filter before the id.

    Several types are a UNION ALL under one ORDER BY id: SQLite merges the ranges lazily
    (MERGE, no temporary sort), PostgreSQL with a Merge Append of index scans, and both
    stop after offset + limit ids. SQLite is told the index (`INDEXED BY`); PostgreSQL
    picks it from the same (column, id) shape.

    The instance has its own index for a query by instance alone, and with its namespace
    (instance, namespace, id), and one instance's service (instance, namespace, service,
    id): what a limited token always asks, and every instance of an app has the same
    services, so the service's own range would cost a factor of the instances. By name
    alone with a service, and with a resource (an object is one instance's), the instance
    is checked on that range's rows.
    """
    selects: list[str] = []
    params: list[Any] = []
    for t in f.types or (None,):
        where: list[str] = []
        one = f.instance is not None and f.namespace is not None  # one instance
        if f.resource is not None:
            index = "events_resource_type" if t else "events_resource"
            where.append("resource = ?")
            params.append(f.resource)
        elif one:
            index = "events_instance_ns" + ("_service" if f.service is not None else "") + \
                ("_type" if t else "")
            where += ["instance = ?", "namespace = ?"]
            params += [f.instance, f.namespace]
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
            where.append("service = ?")  # with resource: checked on that range's rows
            params.append(f.service)
        if f.instance is not None and (f.resource is not None or
                                       (f.service is not None and not one)):
            where.append("instance = ?")
            params.append(f.instance)
            if f.namespace is not None:
                where.append("namespace = ?")
                params.append(f.namespace)
        where.append("id BETWEEN ? AND ?")
        params += [lo, hi]
        using = ""  # PostgreSQL: picked by the planner
        if dialect == "sqlite":  # NOT INDEXED: the rowid range
            using = f" INDEXED BY {index}" if index else " NOT INDEXED"
        select = f"SELECT {columns} FROM events{using} WHERE {' AND '.join(where)}"
        if dialect != "sqlite" and len(f.types or ()) > 1:
            # Each branch ordered and bounded, so the planner merges index ranges.
            select = (f"({select} ORDER BY id {'ASC' if f.ascending else 'DESC'} "
                      "LIMIT ?)")
            params.append(f.limit + f.offset)
        selects.append(select)
    params += [f.limit, f.offset]
    return (f"{' UNION ALL '.join(selects)} ORDER BY id {'ASC' if f.ascending else 'DESC'} "
            "LIMIT ? OFFSET ?", params)


def _row(type: str, message: str, resource: str, service: str, reason: str,
         details: Mapping[str, Any] | None, ts_ms: int | None,
         kube_uid: str | None = None, *, instance: str = "", namespace: str = "") -> _Row:
    t = validate_type(type)
    fields = {"message": message, "resource": resource, "service": service, "reason": reason,
              "instance": instance, "namespace": namespace}
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
                instance[:MAX_FIELD], namespace[:MAX_FIELD])


def _insert(tx: Tx, rows: Sequence[_Row]) -> list[Event]:
    """Insert in a write transaction (`EventStore._writing`): ids follow the sequence,
    timestamps never go back; on PostgreSQL the commit notifies the other replicas."""
    newest = tx.one("SELECT max(ts_ms) FROM events")
    if tx.dialect == "sqlite":
        seq = tx.one("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
        top = tx.one("SELECT max(id) FROM events")
        next_id = max(int(seq[0]) if seq else 0, int(top[0] or 0) if top else 0) + 1
    else:  # under the write lock: nobody else draws from the sequence meanwhile
        got = tx.one("SELECT setval('events_ids', nextval('events_ids') + ? - 1)",
                     (len(rows),))
        assert got is not None
        next_id = int(got[0]) - len(rows) + 1
    floor = int(newest[0] or 0) if newest else 0
    now = now_ms()
    params: list[tuple[Any, ...]] = []
    out: list[Event] = []
    for i, r in enumerate(rows):
        ts = max(now if r.ts_ms is None else r.ts_ms, floor)
        floor = ts
        event = Event(next_id + i, format_ms(ts), r.type, r.resource, r.service, r.message,
                      r.reason, r.details, r.instance, r.namespace)
        params.append((event.id, ts, r.type, r.resource, r.service, r.instance, r.namespace,
                       r.kube_uid, event.to_json()))
        out.append(event)
    tx.many(_INSERT, params)
    if tx.dialect != "sqlite":
        tx.execute("SELECT pg_notify(?, ?)", (CHANNEL, str(out[-1].id)))
    return out


def _rebuild_v1(tx: Tx) -> None:
    """A schema-1 `events` table rebuilt as schema 2, inside the caller's transaction:
    each row's JSON written once (as `_insert` would have), the instance taken from the
    details where a health event named it ("" otherwise: older events did not say), ids
    and the AUTOINCREMENT sequence kept. Read in id chunks, so memory stays bounded."""
    seq = tx.one("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
    tx.execute("DROP TABLE IF EXISTS events_v2")
    tx.execute(_TABLE.format(name="events_v2"))
    last, copied = 0, 0
    while True:
        rows = tx.all(
            "SELECT id, ts_ms, type, resource, service, reason, message, details, kube_uid "
            "FROM events WHERE id > ? ORDER BY id LIMIT ?", (last, MIGRATE_CHUNK))
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
        tx.many(_INSERT_V1, params)
        last, copied = int(rows[-1][0]), copied + len(rows)
    tx.execute("DROP TABLE events")  # its indexes go with it; the migration makes new ones
    tx.execute("ALTER TABLE events_v2 RENAME TO events")
    if seq is not None:  # ids are never reused, also across the rebuild
        tx.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'events'",
                   (int(seq[0]),))
    log.info("event store: %d event(s) migrated to schema %d", copied, SCHEMA_VERSION)


def _fill_namespaces(tx: Tx, home: Home | None) -> None:
    """Migration 2's rows: each row's namespace told where it can be (see the module
    docstring), its stored JSON written again with it, in id chunks (bounded memory)."""
    last, filled = 0, 0
    while True:
        rows = tx.all("SELECT id, instance, resource, json FROM events WHERE id > ? "
                      "ORDER BY id LIMIT ?", (last, MIGRATE_CHUNK))
        if not rows:
            break
        params = []
        for id_, instance, resource, text in rows:
            namespace = _namespace_of(str(instance), str(resource), home)
            event = replace(Event.from_json(str(text)), namespace=namespace)
            params.append((namespace, event.to_json(), int(id_)))
            filled += bool(namespace)
        tx.many("UPDATE events SET namespace = ?, json = ? WHERE id = ?", params)
        last = int(rows[-1][0])
    if last:
        log.info("event store: namespaces told for %d stored event(s)", filled)


def _namespace_of(instance: str, resource: str, home: Home | None) -> str:
    """The namespace of an event stored before events had one ("" when it cannot be
    told): the own instance's, else that of the object it is about."""
    if not instance:
        return ""
    if home is not None and instance == home[1]:
        return home[0]
    namespace = resource.partition("/")[0] if resource.count("/") == 2 else ""
    return "" if namespace == "-" else namespace


def _kube_row(body: Mapping[str, Any], service: str, resource: str | None = None,
              instance: str = "", namespace: str = "") -> tuple[_Row, int, int | None]:
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
               str(body.get("reason") or ""), details, ts, uid, instance=instance,
               namespace=namespace)
    return row, count, last_ms


def _ts(value: datetime | str | None) -> int | None:
    return None if value is None else parse_time(value, "timestamp")



# Importers from before the split (the API, bench, tests) find these names here too.
__all__ = ["EVENT_TYPES", "MAX_LIMIT", "MAX_OFFSET", "REDACTED", "STORE_ERRORS", "Event",
           "EventInput", "EventStore", "EventStoreError", "EventType", "Home", "StoreProblem",
           "format_ms", "open_store", "parse_time", "redact", "redact_text", "resource_key",
           "validate_type"]
