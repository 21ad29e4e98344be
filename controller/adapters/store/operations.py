"""Operation records: the background up/update/down calls, kept where every replica and
the next process can read them.

An API call that outlives its timeout answers 202 with an operation id to follow. Kept in
one process's memory, that id was unknown after a restart or on another replica, so the
records live in the shared store (sql.py): id, instance (namespace and name: migration 2
added the namespace, so a token limited to one namespace is told nothing of another's
operations; older records keep "", an instance no limited token sees), operation,
services, state (running, succeeded, failed, interrupted), the report (redacted, as events
are) or the error, the process that owns it and the times.

**Interrupted, never dropped.** A process that dies mid-operation cannot write its end,
so every process has a row in `operation_owners` with a heartbeat (the database's clock,
so replicas' clocks need not agree). A running record whose owner has no fresh heartbeat
(older than `stale_after`, or the row is gone: a clean shutdown deletes it) is reported,
and then stored, as `interrupted`. A process starting on the same host also ends at once
the rows of owners whose process is gone, without waiting for the heartbeat to age: an
owner is its pid *and* that pid's start time (/proc), so a reused pid (a restarted
container is pid 1 again) is not taken for the process that died. If an owner only
stalled and finishes after all, its real outcome overwrites `interrupted`: the truth wins.

**Bounded.** The newest `keep` records are kept (running ones are never deleted): each
finish deletes what fell out, one indexed range delete. Stale owner rows go with the sweep.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from controller.adapters.store.sql import Database, Migration, Tx
from controller.model.redaction import redact

State = Literal["running", "succeeded", "failed", "interrupted"]
STATES: tuple[State, ...] = ("running", "succeeded", "failed", "interrupted")
STORE = "operations"

_OPERATIONS = """
CREATE TABLE IF NOT EXISTS operations (
    seq {seq},
    id TEXT NOT NULL UNIQUE,
    instance TEXT NOT NULL,
    op TEXT NOT NULL,
    services TEXT NOT NULL,               -- JSON list
    state TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed', 'interrupted')),
    result TEXT,                          -- JSON: the report, redacted
    error TEXT NOT NULL DEFAULT '',
    owner TEXT NOT NULL,                  -- operation_owners.owner of the process running it
    created_ms BIGINT NOT NULL,
    finished_ms BIGINT
);
CREATE INDEX IF NOT EXISTS operations_state ON operations (state, seq);
CREATE INDEX IF NOT EXISTS operations_instance ON operations (instance, seq);
CREATE TABLE IF NOT EXISTS operation_owners (
    owner TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    process TEXT NOT NULL,                -- the pid's start time on its host ("" unknown)
    started_ms BIGINT NOT NULL,
    heartbeat_ms BIGINT NOT NULL
)
"""
_NAMESPACE = """
ALTER TABLE operations ADD COLUMN namespace TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS operations_instance_ns ON operations (namespace, instance, seq)
"""
MIGRATIONS = (
    Migration(1, _OPERATIONS.format(seq="INTEGER PRIMARY KEY AUTOINCREMENT"),
              _OPERATIONS.format(seq="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY")),
    Migration.same(2, _NAMESPACE),
)
_COLUMNS = ("id, instance, op, services, state, result, error, owner, created_ms, "
            "finished_ms, namespace")
# Running rows whose owner has no heartbeat newer than `now - stale_ms` (the ? below).
_ORPHANED = ("state = 'running' AND NOT EXISTS (SELECT 1 FROM operation_owners o WHERE "
             "o.owner = operations.owner AND o.heartbeat_ms >= {now} - ?)")
INTERRUPTED = ("the controller process that ran it ({owner}) stopped before it finished; "
               "the results per object are in the events (GET /api/events): retry the "
               "call (it is idempotent)")


@dataclass(frozen=True)
class OperationRecord:
    id: str
    instance: str
    op: str
    services: list[str]
    state: State
    result: dict[str, Any] | None
    error: str
    owner: str
    created_ms: int
    finished_ms: int | None
    namespace: str = ""  # the instance's ("": recorded before operations had one)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> OperationRecord:
        state = str(row[4])
        assert state in STATES, state
        return cls(str(row[0]), str(row[1]), str(row[2]), list(json.loads(row[3])),
                   state, json.loads(row[5]) if row[5] else None,
                   str(row[6]), str(row[7]), int(row[8]),
                   None if row[9] is None else int(row[9]), str(row[10] or ""))


class OperationStore:
    """Operation records and their owners' heartbeats in a shared `Database`."""

    def __init__(self, db: Database, keep: int = 200, stale_after: float = 30.0) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        if not stale_after > 0:
            raise ValueError(f"stale_after must be > 0, got {stale_after}")
        self.db = db
        self.keep = keep
        self.stale_after = stale_after
        self._stale_ms = int(stale_after * 1000)
        self._orphaned = _ORPHANED.format(now=db.now_ms)
        db.migrate(STORE, MIGRATIONS)

    # -- owners ----------------------------------------------------------------------------

    def join(self, owner: str, host: str | None = None, pid: int | None = None) -> int:
        """Register this process as `owner` (heartbeat now), and end the records of
        owners that cannot be alive: on this host, a pid that is gone or is ours. The
        number of records that became interrupted."""
        host = socket.gethostname() if host is None else host
        pid = os.getpid() if pid is None else pid
        with self.db.write() as tx:
            self._beat(tx, owner, host, pid)
            dead = [o for o, p, started in tx.all(
                        "SELECT owner, pid, process FROM operation_owners WHERE host = ? "
                        "AND owner <> ?", (host, owner))
                    if not _alive(int(p), str(started))]
            for gone in dead:
                tx.execute("DELETE FROM operation_owners WHERE owner = ?", (gone,))
            return self._sweep(tx)

    def heartbeat(self, owner: str, host: str | None = None, pid: int | None = None) -> int:
        """Say `owner` is alive, and end the records of owners that stopped saying so
        (the number that became interrupted)."""
        with self.db.write() as tx:
            self._beat(tx, owner, socket.gethostname() if host is None else host,
                       os.getpid() if pid is None else pid)
            return self._sweep(tx)

    def leave(self, owner: str) -> None:
        """A clean stop: what `owner` still runs is interrupted from now on."""
        with self.db.write() as tx:
            tx.execute("DELETE FROM operation_owners WHERE owner = ?", (owner,))

    def _beat(self, tx: Tx, owner: str, host: str, pid: int) -> None:
        now = self.db.now_ms
        tx.execute(f"INSERT INTO operation_owners (owner, host, pid, process, started_ms, "
                   f"heartbeat_ms) VALUES (?, ?, ?, ?, {now}, {now}) ON CONFLICT (owner) "
                   f"DO UPDATE SET heartbeat_ms = excluded.heartbeat_ms",
                   (owner, host, pid, _started(pid) or ""))

    def _sweep(self, tx: Tx, op_id: str | None = None) -> int:
        """Running records of owners without a fresh heartbeat become interrupted."""
        where = self._orphaned + (" AND id = ?" if op_id else "")
        params: list[Any] = [self._stale_ms] + ([op_id] if op_id else [])
        orphans = tx.all(f"SELECT id, owner FROM operations WHERE {where}", params)
        for oid, owner in orphans:
            tx.execute(f"UPDATE operations SET state = 'interrupted', error = ?, "
                       f"finished_ms = {self.db.now_ms} WHERE id = ? AND state = 'running'",
                       (INTERRUPTED.format(owner=owner), oid))
        if op_id is None:
            tx.execute(f"DELETE FROM operation_owners WHERE heartbeat_ms < "
                       f"{self.db.now_ms} - ?", (self._stale_ms,))
        return len(orphans)

    # -- records ---------------------------------------------------------------------------

    def create(self, op_id: str, instance: str, op: str, services: Sequence[str],
               owner: str, namespace: str = "") -> OperationRecord:
        with self.db.write() as tx:
            tx.execute(f"INSERT INTO operations (id, instance, namespace, op, services, "
                       f"state, owner, created_ms) VALUES (?, ?, ?, ?, ?, 'running', ?, "
                       f"{self.db.now_ms})",
                       (op_id, instance, namespace, op, json.dumps(list(services)), owner))
            row = tx.one(f"SELECT {_COLUMNS} FROM operations WHERE id = ?", (op_id,))
        assert row is not None
        return OperationRecord.from_row(row)

    def finish(self, op_id: str, state: State, result: Mapping[str, Any] | None = None,
               error: str = "") -> None:
        """Record the outcome (over `interrupted` too: the owner was only late), then
        drop what falls out of the newest `keep`."""
        if state == "running":
            raise ValueError("finish needs an end state")
        body = json.dumps(redact(result), separators=(",", ":")) if result else None
        with self.db.write() as tx:
            tx.execute(f"UPDATE operations SET state = ?, result = ?, error = ?, "
                       f"finished_ms = {self.db.now_ms} WHERE id = ?",
                       (state, body, error, op_id))
            self._prune(tx)

    def get(self, op_id: str) -> OperationRecord | None:
        with self.db.read() as tx:
            row = tx.one(f"SELECT {_COLUMNS} FROM operations WHERE id = ?", (op_id,))
        if row is None:
            return None
        record = OperationRecord.from_row(row)
        if record.state == "running":  # still running, or its owner is gone?
            with self.db.write() as tx:
                if self._sweep(tx, op_id):
                    row = tx.one(f"SELECT {_COLUMNS} FROM operations WHERE id = ?",
                                 (op_id,))
                    assert row is not None
                    record = OperationRecord.from_row(row)
        return record

    def recent(self, instance: str | None = None, limit: int = 50,
               namespace: str | None = None) -> list[OperationRecord]:
        """The newest records first (at most `limit`), of one instance (by name; with
        `namespace`, of that namespace's object) or all."""
        where, params = ("WHERE instance = ? ", [instance]) if instance is not None else ("", [])
        if instance is not None and namespace is not None:
            where, params = "WHERE namespace = ? AND instance = ? ", [namespace, instance]
        with self.db.read() as tx:
            rows = tx.all(f"SELECT {_COLUMNS} FROM operations {where}ORDER BY seq DESC "
                          "LIMIT ?", [*params, max(0, limit)])
        return [OperationRecord.from_row(r) for r in rows]

    def count(self) -> int:
        with self.db.read() as tx:
            row = tx.one("SELECT count(*) FROM operations")
        return int(row[0]) if row else 0

    def prune(self) -> int:
        with self.db.write() as tx:
            return self._prune(tx)

    def _prune(self, tx: Tx) -> int:
        # The keep-th newest seq is the cutoff: one probe of the primary key, then one
        # range delete (running records stay whatever their age).
        row = tx.one("SELECT seq FROM operations ORDER BY seq DESC LIMIT 1 OFFSET ?",
                     (self.keep,))
        if row is None:
            return 0
        return tx.execute("DELETE FROM operations WHERE seq <= ? AND state <> 'running'",
                          (int(row[0]),))


def _started(pid: int) -> str | None:
    """The start time of `pid` (clock ticks since boot, Linux), None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the command name may hold spaces
    return fields[19] if len(fields) > 19 else None


def _alive(pid: int, started: str) -> bool:
    """Whether the process an owner row names still runs on this host."""
    if started:
        return _started(pid) == started  # gone, or its pid now belongs to another
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True
