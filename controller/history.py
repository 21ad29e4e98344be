"""Parameter history: every parameters spec a pass has seen, so a rollback can restore it.

Kept in SQLite beside the event store (same file, own table): a revision (a Git SHA or
`generation/N` of the resource), its spec, where it came from and when. Rolling back writes
a stored spec as the new spec (or a new Git commit): history is never rewritten.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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


class History:
    def __init__(self, path: Path | str, keep: int = 500) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=10)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._keep = keep
        self._lock = threading.Lock()

    def record(self, instance: str, revision: str, source: str, spec: dict[str, Any]) -> bool:
        """Store the spec of a revision once; True when it was new."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        with self._lock, self._db:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO parameter_history (instance, revision, source, "
                "timestamp, spec) VALUES (?, ?, ?, ?, ?)",
                (instance, revision, source, now, json.dumps(spec, sort_keys=True)))
            if cur.rowcount:
                self._db.execute(
                    "DELETE FROM parameter_history WHERE instance = ? AND id <= "
                    "(SELECT id FROM parameter_history WHERE instance = ? "
                    "ORDER BY id DESC LIMIT 1 OFFSET ?)", (instance, instance, self._keep))
            return bool(cur.rowcount)

    def list(self, instance: str, limit: int = 50) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT revision, source, timestamp, spec FROM parameter_history "
                "WHERE instance = ? ORDER BY id DESC LIMIT ?", (instance, limit)).fetchall()
        return [{"revision": r[0], "source": r[1], "timestamp": r[2],
                 "parameters": json.loads(r[3])} for r in rows]

    def get(self, instance: str, revision: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT spec FROM parameter_history WHERE instance = ? AND revision = ?",
                (instance, revision)).fetchone()
        return json.loads(row[0]) if row else None

    def close(self) -> None:
        with self._lock:
            self._db.close()
