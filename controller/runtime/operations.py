"""Run up / update / down / plan in the background so a caller can wait, then follow.

An API call waits for its operation up to a timeout; if it is still running then, the
caller gets its id and follows it (GET /api/operations/{id}) instead of holding a
connection open. Finished operations are kept for a while (bounded) so late readers find
them.

Operations live in this process's memory only: after a restart (or on another replica) an
id is unknown. Every id starts with the id of the process that started it, so such a miss
is answered plainly ("started by an earlier controller process; not kept across
restarts") instead of a bare "no operation"; its objects' results are in the events, which
are recorded as each object is applied.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from controller.errors import NotFoundError
from controller.reconcile.engine import Report


@dataclass
class Operation:
    id: str
    kind: str
    services: list[str]
    instance: str
    started: float = field(default_factory=time.time)
    future: Future[Report] = field(default_factory=Future)

    @property
    def done(self) -> bool:
        return self.future.done()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "operation": self.kind,
                               "services": self.services, "instance": self.instance,
                               "status": "running", "links": {"self":
                                                              f"/api/operations/{self.id}"}}
        if self.done:
            report = self.future.result()
            out["status"] = "succeeded" if report.ok else "failed"
            out["report"] = report.to_dict()
        return out


class Operations:
    def __init__(self, workers: int = 4, keep: int = 200, boot: str | None = None) -> None:
        self.boot = boot or secrets.token_hex(4)  # this process's part of every id
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="operation")
        self._ops: OrderedDict[str, Operation] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()

    def start(self, kind: str, services: list[str], instance: str,
              run: Callable[[], Report]) -> Operation:
        op = Operation(f"{self.boot}-{secrets.token_hex(6)}", kind, services, instance)
        op.future = self._pool.submit(run)
        with self._lock:
            self._ops[op.id] = op
            while len(self._ops) > self._keep:
                oldest = next(iter(self._ops.values()))
                if not oldest.done:
                    break
                self._ops.popitem(last=False)
        return op

    def get(self, op_id: str) -> Operation | None:
        with self._lock:
            return self._ops.get(op_id)

    def missing(self, op_id: str) -> NotFoundError:
        """The 404 for an id `get` does not know, saying why when we can tell."""
        boot, dash, rest = op_id.partition("-")
        if dash and rest and boot != self.boot and _is_hex(boot) and _is_hex(rest):
            return NotFoundError(
                f"operation {op_id} was started by an earlier controller process (or another "
                "replica): operations are kept in memory and are not kept across restarts; "
                "its results per object are in the events (GET /api/events), the current "
                "state in GET /api/status",
                {"operation": op_id, "reason": "OperationLost", "processId": self.boot})
        return NotFoundError(f"no operation {op_id}", {"operation": op_id})

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)


def _is_hex(text: str) -> bool:
    return bool(text) and all(c in "0123456789abcdef" for c in text)
