"""Parameter history: every parameters spec a pass has seen, so a rollback can restore it.

Kept in SQLite beside the event store (same file, own table): a revision (a Git SHA or
`generation/N` of the resource), its spec, where it came from, when, and whether a pass
applied it. A pass records the revision it read before it knows the outcome, so revisions
that were refused (invalid parameters, a template that does not render) are listed too,
marked `applied: false`; a rollback to one of them would only fail again. Rolling back
writes a stored spec as the new spec (or a new Git commit): history is never rewritten.

A resource's revisions (`generation/N`) start again at 1 when the object is deleted and
created anew, so each row also keeps its `origin` (the object's uid): when a revision comes
back from another origin, the older row is renamed `generation/N@<uid prefix>` and stays
listed (and restorable) under that name, and the new object's row takes the plain name.

Errors of the file (damaged, read-only, removed underneath) become `EventStoreError`
naming the file, never a bare sqlite3 error.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from controller.adapters.store.events import EventStoreError
from controller.model.times import now, rfc3339_micro

_T = TypeVar("_T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS parameter_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    instance TEXT NOT NULL,
    revision TEXT NOT NULL,
    source TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    spec TEXT NOT NULL,
    UNIQUE (instance, revision)
);
CREATE INDEX IF NOT EXISTS parameter_history_instance ON parameter_history (instance, id);
"""
# Added later: NULL for rows recorded before they existed (unknown).
_COLUMNS = {"applied": "ALTER TABLE parameter_history ADD COLUMN applied INTEGER",  # 0 or 1
            "origin": "ALTER TABLE parameter_history ADD COLUMN origin TEXT"}


class History:
    def __init__(self, path: Path | str, keep: int = 500) -> None:
        self.path = Path(path)
        self._keep = keep
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=10)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(parameter_history)")}
            for name, statement in _COLUMNS.items():
                if name not in columns:
                    self._db.execute(statement)
        except BaseException:
            self._db.close()
            raise

    def record(self, instance: str, revision: str, source: str, spec: dict[str, Any],
               origin: str = "") -> bool:
        """Store the spec of a revision once (not yet applied); True when it was new.
        `origin`: what the revision counts within (a resource's uid), "" for Git."""
        stamp = rfc3339_micro(now())

        def write(db: sqlite3.Connection) -> bool:
            if origin:
                old = db.execute(
                    "SELECT id, origin FROM parameter_history WHERE instance = ? AND "
                    "revision = ?", (instance, revision)).fetchone()
                if old is not None and old[1] and old[1] != origin:
                    # The same name from a deleted object: keep its row under its own name.
                    db.execute("UPDATE OR REPLACE parameter_history SET revision = ? "
                               "WHERE id = ?", (f"{revision}@{old[1][:8]}", old[0]))
            cur = db.execute(
                "INSERT OR IGNORE INTO parameter_history (instance, revision, source, "
                "timestamp, spec, applied, origin) VALUES (?, ?, ?, ?, ?, 0, ?)",
                (instance, revision, source, stamp, json.dumps(spec, sort_keys=True),
                 origin or None))
            if cur.rowcount:
                db.execute(
                    "DELETE FROM parameter_history WHERE instance = ? AND id <= "
                    "(SELECT id FROM parameter_history WHERE instance = ? "
                    "ORDER BY id DESC LIMIT 1 OFFSET ?)", (instance, instance, self._keep))
            return bool(cur.rowcount)

        return self._write(write)

    def mark_applied(self, instance: str, revision: str) -> None:
        """A pass applied this revision (recorded first with `record`)."""
        self._write(lambda db: db.execute(
            "UPDATE parameter_history SET applied = 1 WHERE instance = ? AND revision = ? "
            "AND applied IS NOT 1", (instance, revision)))

    def list(self, instance: str, limit: int = 50) -> list[dict[str, Any]]:
        with self._reading() as db:
            rows = db.execute(
                "SELECT revision, source, timestamp, spec, applied FROM parameter_history "
                "WHERE instance = ? ORDER BY id DESC LIMIT ?", (instance, limit)).fetchall()
        return [{"revision": r[0], "source": r[1], "timestamp": r[2],
                 "parameters": json.loads(r[3]), "applied": _applied(r[4])} for r in rows]

    def get(self, instance: str, revision: str) -> dict[str, Any] | None:
        entry = self.entry(instance, revision)
        return entry["parameters"] if entry else None

    def entry(self, instance: str, revision: str) -> dict[str, Any] | None:
        """{"parameters", "applied"} of a recorded revision; `applied` is None when it was
        recorded before the history kept that."""
        with self._reading() as db:
            row = db.execute(
                "SELECT spec, applied FROM parameter_history WHERE instance = ? "
                "AND revision = ?", (instance, revision)).fetchone()
        return {"parameters": json.loads(row[0]), "applied": _applied(row[1])} if row \
            else None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- the file -------------------------------------------------------------------------

    def _write(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._reading() as db, db:  # `with db`: one transaction, committed or rolled back
            return work(db)

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as e:
                raise EventStoreError(
                    f"parameter history in {self.path} is unusable: {e}",
                    {"path": str(self.path), "error": f"{type(e).__name__}: {e}"}) from e


def _applied(value: object) -> bool | None:
    return None if value is None else bool(value)
