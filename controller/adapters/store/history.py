"""Parameter history: every parameters spec a pass has seen, so a rollback can restore it.

Kept in the shared store (sql.py: SQLite beside the events by default, PostgreSQL for
several replicas), so a rollback to a revision the old leader recorded works on the new
one: a revision (a Git SHA or `generation/N` of the resource), its spec, where it came
from, when, and whether a pass applied it. A pass records the revision it read before it
knows the outcome, so revisions that were refused (invalid parameters, a template that does
not render) are listed too, marked `applied: false`; a rollback to one of them would only
fail again. Rolling back writes a stored spec as the new spec (or a new Git commit):
history is never rewritten.

A resource's revisions (`generation/N`) start again at 1 when the object is deleted and
created anew, so each row also keeps its `origin` (the object's uid): when a revision comes
back from another origin, the older row is renamed `generation/N@<uid prefix>` and stays
listed (and restorable) under that name, and the new object's row takes the plain name.

An instance is its namespace and name: two DeploymentParameters objects of one name in two
namespaces have two histories (a token limited to one namespace must not read, nor roll
back to, the other's specs). Migration 2 added the namespace; rows recorded before it are
given the controller's own instance's namespace (`home`) when they carry its name, and
keep "" otherwise (another instance's old rows then belong to no instance: hidden, never
shown to the wrong one).

Bounded: the newest `keep` revisions per instance (each new one deletes what fell out, one
probe of the (namespace, instance, id) index and one range delete). Two replicas recording
the same revision at once store it once (`ON CONFLICT DO NOTHING`). The schema is
migrations 1-2 of store "history"; a SQLite file written before there was a version table
(its table made with `CREATE ... IF NOT EXISTS`, the `applied` and `origin` columns added
later by hand) is adopted as it is. Errors of the store (a damaged file, a lost connection) become
`EventStoreError` naming it, never a bare driver error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from controller.adapters.store.events import EventStoreError
from controller.adapters.store.sql import (
    STORE_ERRORS,
    Database,
    Migration,
    SqliteDatabase,
    Tx,
)
from controller.model.times import now, rfc3339_micro

_T = TypeVar("_T")

STORE = "history"
_TABLE = """
CREATE TABLE IF NOT EXISTS parameter_history (
    id {id},
    instance TEXT NOT NULL,
    revision TEXT NOT NULL,
    source TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    spec TEXT NOT NULL,
    applied INTEGER,                      -- 0 or 1, NULL: recorded before it was kept
    origin TEXT,                          -- the resource uid, NULL for Git
    UNIQUE (instance, revision)
);
CREATE INDEX IF NOT EXISTS parameter_history_instance ON parameter_history (instance, id)
"""
# Migration 2: the namespace, in the unique key and the index. SQLite cannot change a
# table's constraints: the table is copied (ids kept, so AUTOINCREMENT goes on after them).
_NAMESPACE_SQLITE = """
CREATE TABLE parameter_history_v2 (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace TEXT NOT NULL DEFAULT '',   -- the DeploymentParameters object's namespace
    instance TEXT NOT NULL,
    revision TEXT NOT NULL,
    source TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    spec TEXT NOT NULL,
    applied INTEGER,
    origin TEXT,
    UNIQUE (namespace, instance, revision)
);
INSERT INTO parameter_history_v2 (id, instance, revision, source, timestamp, spec, applied,
    origin) SELECT id, instance, revision, source, timestamp, spec, applied, origin
    FROM parameter_history;
DROP TABLE parameter_history;
ALTER TABLE parameter_history_v2 RENAME TO parameter_history;
CREATE INDEX parameter_history_instance ON parameter_history (namespace, instance, id)
"""
_NAMESPACE_PG = """
ALTER TABLE parameter_history ADD COLUMN namespace TEXT NOT NULL DEFAULT '';
ALTER TABLE parameter_history DROP CONSTRAINT IF EXISTS
    parameter_history_instance_revision_key;
ALTER TABLE parameter_history ADD CONSTRAINT parameter_history_key
    UNIQUE (namespace, instance, revision);
DROP INDEX IF EXISTS parameter_history_instance;
CREATE INDEX parameter_history_instance ON parameter_history (namespace, instance, id)
"""
Home = tuple[str, str]  # the controller's own instance: (namespace, name)


def migrations(home: Home | None = None) -> tuple[Migration, ...]:
    """The schema steps; `home` names the namespace of the own instance's old rows."""

    def fill(tx: Tx) -> None:
        if home is not None:
            tx.execute("UPDATE parameter_history SET namespace = ? WHERE namespace = '' AND "
                       "instance = ?", home)

    return (Migration(1, _TABLE.format(id="INTEGER PRIMARY KEY AUTOINCREMENT"),
                      _TABLE.format(id="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY")),
            Migration(2, _NAMESPACE_SQLITE, _NAMESPACE_PG, after=fill))


MIGRATIONS = migrations()
# Columns SQLite files written before the version table may lack (NULL: unknown).
_LEGACY_COLUMNS = {"applied": "ALTER TABLE parameter_history ADD COLUMN applied INTEGER",
                   "origin": "ALTER TABLE parameter_history ADD COLUMN origin TEXT"}


class History:
    """The parameter history in a `Database`; given a path, in its own SQLite file."""

    def __init__(self, target: Path | str | Database, keep: int = 500, *,
                 home: Home | None = None) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self._keep = keep
        self._owned = not isinstance(target, Database)  # we opened it: we close it
        try:
            self.db = target if isinstance(target, Database) else SqliteDatabase(target)
        except STORE_ERRORS as e:
            raise _unusable(str(target), e) from e
        self.path = self.db.display  # where it is, for messages
        try:
            self._call(self._adopt)
            self.db.migrate(STORE, migrations(home))
        except BaseException:
            self.close()
            raise

    def _adopt(self) -> None:
        """A SQLite file from before the version table: add the columns it lacks."""
        if self.db.dialect != "sqlite":
            return
        with self.db.write() as tx:
            columns = {str(r[1]) for r in tx.all("PRAGMA table_info(parameter_history)")}
            if columns:
                for name, statement in _LEGACY_COLUMNS.items():
                    if name not in columns:
                        tx.execute(statement)

    def record(self, instance: str, revision: str, source: str, spec: dict[str, Any],
               origin: str = "", *, namespace: str = "") -> bool:
        """Store the spec of a revision of the instance `namespace/instance` once (not yet
        applied); True when it was new. `origin`: what the revision counts within (a
        resource's uid), "" for Git."""
        stamp = rfc3339_micro(now())
        key = (namespace, instance)

        def write(tx: Tx) -> bool:
            if origin:
                old = tx.one("SELECT id, origin FROM parameter_history WHERE namespace = ? "
                             "AND instance = ? AND revision = ?", (*key, revision))
                if old is not None and old[1] and old[1] != origin:
                    # The same name from a deleted object: keep its row under its own name
                    # (replacing an older row of that name, as a third object's would).
                    renamed = f"{revision}@{old[1][:8]}"
                    tx.execute("DELETE FROM parameter_history WHERE namespace = ? AND "
                               "instance = ? AND revision = ?", (*key, renamed))
                    tx.execute("UPDATE parameter_history SET revision = ? WHERE id = ?",
                               (renamed, old[0]))
            added = tx.execute(
                "INSERT INTO parameter_history (namespace, instance, revision, source, "
                "timestamp, spec, applied, origin) VALUES (?, ?, ?, ?, ?, ?, 0, ?) "
                "ON CONFLICT (namespace, instance, revision) DO NOTHING",
                (*key, revision, source, stamp, json.dumps(spec, sort_keys=True),
                 origin or None))
            if added:
                tx.execute(
                    "DELETE FROM parameter_history WHERE namespace = ? AND instance = ? AND "
                    "id <= (SELECT id FROM parameter_history WHERE namespace = ? AND "
                    "instance = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (*key, *key, self._keep))
            return bool(added)

        return self._write(write)

    def mark_applied(self, instance: str, revision: str, *, namespace: str = "") -> None:
        """A pass applied this revision (recorded first with `record`)."""
        self._write(lambda tx: tx.execute(
            "UPDATE parameter_history SET applied = 1 WHERE namespace = ? AND instance = ? "
            "AND revision = ? AND (applied IS NULL OR applied <> 1)",
            (namespace, instance, revision)))

    def list(self, instance: str, limit: int = 50, *,
             namespace: str = "") -> list[dict[str, Any]]:
        """The newest revisions of `namespace/instance` first."""
        with self._reading() as tx:
            rows = tx.all(
                "SELECT revision, source, timestamp, spec, applied FROM parameter_history "
                "WHERE namespace = ? AND instance = ? ORDER BY id DESC LIMIT ?",
                (namespace, instance, max(0, limit)))
        return [{"revision": r[0], "source": r[1], "timestamp": r[2],
                 "parameters": json.loads(r[3]), "applied": _applied(r[4])} for r in rows]

    def get(self, instance: str, revision: str, *,
            namespace: str = "") -> dict[str, Any] | None:
        entry = self.entry(instance, revision, namespace=namespace)
        return entry["parameters"] if entry else None

    def entry(self, instance: str, revision: str, *,
              namespace: str = "") -> dict[str, Any] | None:
        """{"parameters", "applied"} of a recorded revision; `applied` is None when it was
        recorded before the history kept that."""
        with self._reading() as tx:
            row = tx.one("SELECT spec, applied FROM parameter_history WHERE namespace = ? "
                         "AND instance = ? AND revision = ?", (namespace, instance, revision))
        return {"parameters": json.loads(row[0]), "applied": _applied(row[1])} if row \
            else None

    def close(self) -> None:
        if self._owned:
            self.db.close()

    # -- the store ------------------------------------------------------------------------

    def _write(self, work: Callable[[Tx], _T]) -> _T:
        def run() -> _T:
            with self.db.write() as tx:
                return work(tx)
        return self._call(run)

    @contextmanager
    def _reading(self) -> Iterator[Tx]:
        try:
            with self.db.read() as tx:
                yield tx
        except STORE_ERRORS as e:
            raise _unusable(self.path, e) from e

    def _call(self, work: Callable[[], _T]) -> _T:
        try:
            return work()
        except STORE_ERRORS as e:
            raise _unusable(self.path, e) from e


def _unusable(where: str, e: BaseException) -> EventStoreError:
    if isinstance(e, EventStoreError):
        return e
    return EventStoreError(f"parameter history in {where} is unusable: {e}",
                           {"path": where, "error": f"{type(e).__name__}: {e}"})


def _applied(value: object) -> bool | None:
    return None if value is None else bool(value)
