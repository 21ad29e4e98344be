"""Run up / update / down / plan in the background so a caller can wait, then follow.

An API call waits for its operation up to a timeout; if it is still running then, the
caller gets its id and follows it (GET /api/operations/{id}) instead of holding a
connection open. Finished operations are kept for a while (bounded) so late readers find
them.

With an `OperationStore` (adapters/store/operations.py) every operation is also recorded
there as it starts and ends, so an id stays known after a restart and on every replica
sharing the store: `get` answers from this process's memory when it runs the operation,
else from the record. An operation whose process died before it finished is reported as
`interrupted` (with what to do), never silently dropped; this process says it is alive
with a heartbeat thread, and `shutdown` lets running operations finish, then leaves.
Without a store (or while it fails: reconciling matters more than the record of it) ids
live in memory only, and every id starts with the id of the process that started it, so
a miss is answered plainly ("started by an earlier controller process...").
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from controller.adapters.store.operations import OperationRecord, OperationStore
from controller.adapters.store.sql import STORE_ERRORS
from controller.errors import NotFoundError
from controller.reconcile.engine import Report

log = logging.getLogger(__name__)


@dataclass
class Operation:
    id: str
    kind: str
    services: list[str]
    instance: str
    started: float = field(default_factory=time.time)
    future: Future[Report] = field(default_factory=Future)
    # Set when the operation is known from the store only (another process runs or ran it).
    record: OperationRecord | None = None
    namespace: str = ""  # the instance's: an instance is (namespace, name)

    @property
    def done(self) -> bool:
        if self.record is not None:
            return self.record.state != "running"
        return self.future.done()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "operation": self.kind,
                               "services": self.services, "instance": self.instance,
                               "namespace": self.namespace, "status": "running", "links": {"self":
                                                              f"/api/operations/{self.id}"}}
        if self.record is not None:
            out["status"] = self.record.state
            if self.record.result is not None:
                out["report"] = self.record.result
            if self.record.error:
                out["message"] = self.record.error
        elif self.done and self.future.exception() is not None:
            error = self.future.exception()
            out["status"] = "failed"
            out["message"] = f"{type(error).__name__}: {error}"
        elif self.done:
            report = self.future.result()
            out["status"] = "succeeded" if report.ok else "failed"
            out["report"] = report.to_dict()
        return out

    @classmethod
    def from_record(cls, record: OperationRecord) -> Operation:
        return cls(record.id, record.op, record.services, record.instance,
                   started=record.created_ms / 1000, record=record,
                   namespace=record.namespace)


class Operations:
    def __init__(self, workers: int = 4, keep: int = 200, boot: str | None = None,
                 store: OperationStore | None = None) -> None:
        self.boot = boot or secrets.token_hex(4)  # this process's part of every id
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="operation")
        self._ops: OrderedDict[str, Operation] = OrderedDict()
        self._keep = keep
        self._lock = threading.Lock()
        self.store = store
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None
        if store is not None:
            self._record("join", store.join, self.boot)
            self._beater = threading.Thread(target=self._beat, name="operations-heartbeat",
                                            daemon=True)
            self._beater.start()

    def new_id(self) -> str:
        """A fresh operation id (this process's part first)."""
        return f"{self.boot}-{secrets.token_hex(6)}"

    def start(self, kind: str, services: list[str], instance: str,
              run: Callable[[], Report], namespace: str = "") -> Operation:
        op = Operation(self.new_id(), kind, services, instance, namespace=namespace)
        if self.store is not None:  # recorded before it runs, so its end finds the row
            self._record("create", self.store.create, op.id, instance, kind, services,
                         self.boot, namespace)
        return self._submit(op, run)

    def claim(self, op_id: str, kind: str, services: list[str], instance: str,
              run: Callable[[], Report], namespace: str = "") -> Operation | None:
        """Start the operation `op_id` (a request another replica accepted) unless some
        process already has: the store's unique id is the claim, so it runs once across
        replicas and failovers. None when it is claimed already. A store that cannot be
        written does not stop it (reconciling matters more than the record of it)."""
        with self._lock:
            if op_id in self._ops:
                return None
        op = Operation(op_id, kind, services, instance, namespace=namespace)
        if self.store is not None:
            try:
                self.store.create(op_id, instance, kind, services, self.boot, namespace)
            except STORE_ERRORS as e:
                if self._record("get", self.store.get, op_id) is not None:
                    return None  # another process created it first
                log.warning("operation store: create failed: %s", e)
        return self._submit(op, run)

    def _submit(self, op: Operation, run: Callable[[], Report]) -> Operation:
        op.future = self._pool.submit(self._recorded, op.id, run)
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
            op = self._ops.get(op_id)
        if self.store is None or (op is not None and not op.done):
            return op
        # A finished one as the store has it, so that every replica answers the same.
        record = self._record("get", self.store.get, op_id)
        return Operation.from_record(record) if record is not None else op

    def missing(self, op_id: str) -> NotFoundError:
        """The 404 for an id `get` does not know, saying why when we can tell."""
        if self.store is not None:
            return NotFoundError(
                f"no operation {op_id}: operations are kept in the store, the newest "
                f"{self.store.keep} of them (older ones are dropped); the results per "
                "object are in the events (GET /api/events), the current state in GET "
                "/api/status", {"operation": op_id, "kept": self.store.keep})
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
        self._stop.set()
        if self._beater is not None:
            self._beater.join()
        if self.store is not None:
            self._record("leave", self.store.leave, self.boot)

    # -- the store -------------------------------------------------------------------------

    def _recorded(self, op_id: str, run: Callable[[], Report]) -> Report:
        """Run, and record the end before the caller sees it: whoever reads the record
        after the answer (another replica) finds it finished."""
        try:
            report = run()
        except BaseException as error:
            if self.store is not None:
                self._record("finish", self.store.finish, op_id, "failed", None,
                             f"{type(error).__name__}: {error}")
            raise
        if self.store is not None:
            self._record("finish", self.store.finish, op_id,
                         "succeeded" if report.ok else "failed", report.to_dict())
        return report

    def _beat(self) -> None:
        assert self.store is not None
        interval = self.store.stale_after / 3
        while not self._stop.wait(interval):
            self._record("heartbeat", self.store.heartbeat, self.boot)

    def _record(self, what: str, call: Callable[..., Any], *args: Any) -> Any:
        """Call the store; a failing store is logged, and the operation goes on."""
        try:
            return call(*args)
        except STORE_ERRORS as e:
            log.warning("operation store: %s failed: %s", what, e)
            return None


def _is_hex(text: str) -> bool:
    return bool(text) and all(c in "0123456789abcdef" for c in text)
