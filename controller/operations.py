"""Run up / update / down / plan in the background so a caller can wait, then follow.

An API call waits for its operation up to a timeout; if it is still running then, the
caller gets its id and follows it (GET /api/operations/{id}) instead of holding a
connection open. Finished operations are kept for a while (bounded) so late readers find
them.
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

from controller.engine import Report


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
    def __init__(self, workers: int = 4, keep: int = 200) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="operation")
        self._ops: OrderedDict[str, Operation] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()

    def start(self, kind: str, services: list[str], instance: str,
              run: Callable[[], Report]) -> Operation:
        op = Operation(secrets.token_hex(8), kind, services, instance)
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

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)
