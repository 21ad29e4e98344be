"""Writes from any replica: up/update/down taken by a replica that does not own the
instance are carried out by the one that does (issue 14).

Every replica answers every call, but only the owner of an instance (Controller.owns)
reconciles it. A replica that is not the owner does not refuse, and does not forward over
HTTP (a forward dies with the owner mid-call): it records the request on the instance's
DeploymentParameters object, the one thing every replica and every future owner shares,
as Flux's `reconcile.fluxcd.io/requestedAt` does:

- **The request** is an entry in the annotation `conductor.io/requests` (a JSON list:
  {"id", "op", "services", "force", "at", "by"}), appended on the resourceVersion read,
  so two accepting replicas never lose each other's entry (a 409 is re-read and retried).
  Entries already handled are dropped from the list by the next append; at most
  `MAX_PENDING` wait at once (more answer 429 rate_limited: retry).
- **The owner** (`RequestHandler`) sees the annotation through the live cache's watch of
  its instances (and rescans every `RESCAN` seconds, which is how a new owner finds what
  the old one left after a failover: the objects the watch last saw carrying requests,
  and every instance each `FULL_RESCAN` seconds; 1,000 instances looked up each second
  were a seventh of an idle controller's CPU). It runs the request through the same code
  path as a call made to it (`runner` + `Operations`), under the request's id as the
  operation id: the operation store's unique id is the claim, so a request is carried out
  once, however many replicas see it or how often ownership moves.
- **The outcome** goes to `status.handledRequests` (the newest `KEEP_HANDLED`): {"id",
  "op", "operation", "result": succeeded | failed | interrupted | refused, "revision",
  "counts", "services", "error"?, "at"}. An operation whose process died shows in the
  shared store as `interrupted` once its heartbeat is stale; the next owner records that
  outcome rather than run it again (the caller retries: up/update/down are idempotent).
- **The accepting replica** waits for the outcome in its own cache and answers what the
  owner would have answered (`answer` rebuilds the owner's body, or its error, from the
  report in the shared operation store), synchronously up to the call's timeout, else 202
  with the operation to follow (GET /api/operations/{id} answers from any replica: the
  record is shared, and a request not yet started is found in the annotation).

The annotation and the status are written with conductor's own connection but outside
the leadership write guard on the accepting side (`unguarded`): a request is the user's
data, like a parameters write, not a reconcile write; the guard keeps fencing the
owner's reconcile writes (the outcome included).
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from controller.adapters.kube import Body, Kube, KubeError, NotLeaderError, acting_for
from controller.adapters.sources.resource import API_VERSION, KIND
from controller.errors import ConductorError, RateLimitedError, ReconciliationError
from controller.model.instance import ANNOTATION_REQUESTS
from controller.model.times import now_rfc3339
from controller.reconcile.engine import Engine, Report
from controller.runtime.operations import Operation, Operations

log = logging.getLogger(__name__)

Key = tuple[str, str]  # an instance: (namespace, name)

ANNOTATION = ANNOTATION_REQUESTS
HANDLED = "handledRequests"  # the status field of outcomes
KEEP_HANDLED = 20  # outcomes kept in status (a waiting replica reads its own at once)
MAX_PENDING = 16  # requests waiting on one object at most
RESCAN = 1.0  # seconds between the owner's scans when no watch event woke it
FULL_RESCAN = 30.0  # seconds between scans of every instance, not only those flagged
POLL = 0.05  # seconds between a waiting replica's looks at its cache
WRITE_ATTEMPTS = 8  # resourceVersion conflicts retried on one write

MESSAGES = {
    "up": "Successfully deployed all manifests",
    "update": "Successfully updated all manifests",
    "down": "Successfully removed all manifests",
}
FAILURES = {"up": "Deployment failed", "update": "Update failed", "down": "Removal failed"}


class UnavailableError(ConductorError):
    """The call was accepted but could not be carried out now (the replica running it
    stopped): nothing is half-promised; retry it (up/update/down are idempotent)."""

    code = "unavailable"


@dataclass(frozen=True)
class Request:
    """One up/update/down accepted by a replica for the instance's owner to run."""

    id: str
    op: str
    services: tuple[str, ...] = ()
    force: bool = False
    at: str = ""
    by: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "op": self.op, "services": list(self.services),
                "force": self.force, "at": self.at, "by": self.by}

    @classmethod
    def from_dict(cls, raw: Any) -> Request | None:
        """An entry of the annotation, or None when it is not one (someone edited it)."""
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str) or \
                raw.get("op") not in MESSAGES:
            return None
        services = raw.get("services") or []
        if not isinstance(services, list) or not all(isinstance(s, str) for s in services):
            return None
        return cls(raw["id"], raw["op"], tuple(services), raw.get("force") is True,
                   str(raw.get("at") or ""), str(raw.get("by") or ""))


# --- the object as data (pure) ---------------------------------------------------------------


def pending(obj: Body | None) -> list[Request]:
    """The requests recorded on `obj`, in the order they were accepted."""
    text = (((obj or {}).get("metadata") or {}).get("annotations") or {}).get(ANNOTATION)
    if not text:
        return []
    try:
        raw = json.loads(text)
    except ValueError:
        return []
    found = [Request.from_dict(r) for r in raw] if isinstance(raw, list) else []
    return [r for r in found if r is not None]


def outcomes(obj: Body | None) -> list[dict[str, Any]]:
    raw = ((obj or {}).get("status") or {}).get(HANDLED) or []
    return [o for o in raw if isinstance(o, dict)] if isinstance(raw, list) else []


def outcome_of(obj: Body | None, request_id: str) -> dict[str, Any] | None:
    return next((o for o in outcomes(obj) if o.get("id") == request_id), None)


def with_request(obj: Body, request: Request) -> list[dict[str, Any]]:
    """The annotation's new list: the requests still waiting, then `request`."""
    done = {o.get("id") for o in outcomes(obj)}
    waiting = [r for r in pending(obj) if r.id not in done and r.id != request.id]
    if len(waiting) >= MAX_PENDING:
        raise RateLimitedError(
            f"{len(waiting)} requests already wait for the owner of this instance; retry "
            "shortly", {"pending": len(waiting), "retry": True})
    return [*(r.to_dict() for r in waiting), request.to_dict()]


def outcome(request: Request, result: str, report: Mapping[str, Any] | None = None,
            error: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The status entry of a handled request (small: the full report is in the store)."""
    out: dict[str, Any] = {"id": request.id, "op": request.op, "operation": request.id,
                           "result": result, "at": now_rfc3339()}
    if report is not None:
        out.update(services=report.get("services", []), revision=report.get("revision", ""),
                   counts=report.get("counts", {}))
    if error is not None:
        details = {k: v for k, v in (error.get("details") or {}).items()
                   if k not in ("results", "health")}  # per-object lists stay in the store
        out["error"] = {"error": str(error.get("error") or "internal_error"),
                        "message": str(error.get("message") or ""), "details": details}
    return out


def error_from(envelope: Mapping[str, Any]) -> ConductorError:
    """The error an envelope describes, with its code (raised again on this replica)."""
    error = ConductorError(str(envelope.get("message") or ""),
                           dict(envelope.get("details") or {}))
    error.code = str(envelope.get("error") or "internal_error")
    return error


def answer(op: str, report: Mapping[str, Any]) -> dict[str, Any]:
    """The contract's success body from a report as stored (Report.to_dict), or raise the
    error the owner would have raised: the same as `report_body` on the owner."""
    if report.get("error"):
        raise error_from(report["error"])
    objects = list(report.get("objects") or [])
    failed = [o for o in objects if o.get("result") == "failed"]
    if failed:
        first = failed[0].get("error") or {}
        raise ReconciliationError(FAILURES.get(op, "Reconciliation failed"), {
            "resource": first.get("resource", failed[0].get("resource", "")),
            "error": first.get("error", "Error"), "message": first.get("message", ""),
            "failed": len(failed), "results": objects})
    return {"message": MESSAGES[op], "services": list(report.get("services") or []),
            "revision": report.get("revision", ""), "counts": report.get("counts", {}),
            "results": objects}


def answer_outcome(found: Mapping[str, Any], record: Operation | None) -> dict[str, Any]:
    """What the accepting replica answers for an outcome: the owner's body or error.
    `record` is the operation as the shared store has it (None with a store per replica:
    then the outcome's summary, without the per-object results)."""
    op = str(found.get("op") or "")
    result = found.get("result")
    if result == "interrupted":
        raise UnavailableError(
            f"the replica carrying out this {op} stopped before it finished; retry the call "
            "(it is idempotent)", {"operation": found.get("operation"), "retry": True,
                                   "reason": "OwnerStopped",
                                   "message": (found.get("error") or {}).get("message", "")})
    report = record.to_dict().get("report") if record is not None else None
    if isinstance(report, dict) and result in ("succeeded", "failed"):
        return answer(op, report)
    if found.get("error"):
        raise error_from(found["error"])
    return {"message": MESSAGES.get(op, ""), "services": found.get("services", []),
            "revision": found.get("revision", ""), "counts": found.get("counts", {}),
            "results": []}


def runner(engine: Engine, op: str, services: Sequence[str],
           force: bool = False) -> Callable[[], Report]:
    """What an up/update/down runs, whichever replica accepted it."""
    names = list(services)
    if op == "down":
        return lambda: engine.down(names)
    if op == "up":
        return lambda: engine.up(names, force=force)
    return lambda: engine.update(names, force=force)


def unguarded(kube: Kube) -> Kube:
    """`kube` without the leadership write guard, for the user's own data (parameters
    writes, requests): any replica may make them; resourceVersion guards their races. The
    connection, caches and the live cache's write observer are shared."""
    view = copy.copy(kube)
    view.write_guard = lambda: True
    return view


# --- the objects, as the board and the handler read and write them --------------------------


class Objects(Protocol):
    def cached(self, key: Key) -> Body | None:
        """The object as this replica's live cache has it (no request)."""

    def fresh(self, key: Key) -> Body | None:
        """The object read from the API server now."""

    def patch(self, key: Key, patch: Body, status: bool = False) -> Body:
        """A merge patch (its metadata.resourceVersion, when set, is a precondition):
        KubeError 409 when the object moved."""


class KubeObjects:
    """`Objects` over the API server and a cache reader."""

    def __init__(self, kube: Kube, cached: Callable[[Key], Body | None]) -> None:
        self.kube = kube
        self._cached = cached

    def cached(self, key: Key) -> Body | None:
        return self._cached(key)

    def fresh(self, key: Key) -> Body | None:
        return self.kube.get(API_VERSION, KIND, key[1], key[0])

    def patch(self, key: Key, patch: Body, status: bool = False) -> Body:
        return self.kube.patch(API_VERSION, KIND, key[1], patch, key[0],
                               subresource="status" if status else "")


def _update(objects: Objects, key: Key, build: Callable[[Body], Body | None],
            status: bool = False) -> Body | None:
    """`build` a merge patch on the object (None: nothing to write) and write it on the
    resourceVersion it was built on; a conflict is read again (bounded). The first try
    builds on the cached copy (usually current: one request instead of two)."""
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        obj = (objects.cached(key) if attempt == 1 else None) or objects.fresh(key)
        if obj is None:
            return None
        patch = build(obj)
        if patch is None:
            return obj
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        patch.setdefault("metadata", {})["resourceVersion"] = rv
        try:
            return objects.patch(key, patch, status)
        except KubeError as e:
            if e.status != 409 or attempt == WRITE_ATTEMPTS:
                raise
    return None


class RequestBoard:
    """The accepting side: record a request on the object, then wait for its outcome."""

    def __init__(self, objects: Objects, poll: float = POLL) -> None:
        self.objects = objects
        self.poll = poll

    def submit(self, key: Key, request: Request) -> None:
        def build(obj: Body) -> Body:
            text = json.dumps(with_request(obj, request), separators=(",", ":"))
            return {"metadata": {"annotations": {ANNOTATION: text}}}

        if _update(self.objects, key, build) is None:
            from controller.errors import NotFoundError

            raise NotFoundError(f"DeploymentParameters {key[0]}/{key[1]} not found",
                                {"namespace": key[0], "instance": key[1]})

    def wait(self, key: Key, request_id: str, timeout: float) -> dict[str, Any] | None:
        """The request's outcome once the owner recorded it, None after `timeout`."""
        deadline = time.monotonic() + max(0.0, timeout)
        idle = threading.Event()  # never set: a pause that does not hold the GIL
        while True:
            found = outcome_of(self.objects.cached(key), request_id)
            if found is not None or time.monotonic() >= deadline:
                return found
            idle.wait(self.poll)

    def find(self, request_id: str, keys: Sequence[Key]) -> tuple[Key, Request] | None:
        """A request not handled yet, by id, on any of `keys`' objects (cache only)."""
        for key in keys:
            obj = self.objects.cached(key)
            for request in pending(obj):
                if request.id == request_id and outcome_of(obj, request_id) is None:
                    return key, request
        return None


class RequestHandler:
    """The owner's side: carry out the requests recorded on the instances it owns, once
    each, and record their outcomes in status. A thread, woken by the watch of the
    instances' objects and every `rescan` seconds."""

    def __init__(self, objects: Objects, keys: Callable[[], list[Key]],
                 owns: Callable[[Key], bool], operations: Operations,
                 engine_for: Callable[[Key], Engine], rescan: float = RESCAN) -> None:
        self.objects = objects
        self.keys = keys
        self.owns = owns
        self.operations = operations
        self.engine_for = engine_for
        self.rescan = rescan
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Keys whose object, as the watch last saw it, carries the annotation.
        self._flagged: set[Key] = set()
        self._flag_lock = threading.Lock()

    def start(self) -> RequestHandler:
        self._thread = threading.Thread(target=self._run, name="requests", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    def wake(self) -> None:
        self._wake.set()

    def on_watch(self, kind: str, obj: Body) -> None:
        """A watch handler of the instances' sets: an object carrying requests is flagged
        and wakes the handler (it runs under the watch's lock, so it does nothing more)."""
        meta = obj.get("metadata") or {}
        key: Key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        carries = kind != "DELETED" and ANNOTATION in (meta.get("annotations") or {})
        with self._flag_lock:
            if carries:
                self._flagged.add(key)
            else:
                self._flagged.discard(key)
        if carries:
            self._wake.set()

    def _run(self) -> None:
        last_full = float("-inf")
        while not self._stop.is_set():
            self._wake.wait(self.rescan)
            self._wake.clear()
            if self._stop.is_set():
                return
            full = time.monotonic() - last_full >= FULL_RESCAN
            try:
                self.scan(full)
                if full:
                    last_full = time.monotonic()
            except Exception:  # the next scan retries; a request is never dropped
                log.exception("handling requests failed")

    def scan(self, full: bool = True) -> int:
        """Handle what waits on the owned instances (all of them, else only those the
        watch saw carrying requests); the number of outcomes recorded."""
        recorded = 0
        keys = self.keys()
        if not full:
            with self._flag_lock:
                flagged = set(self._flagged)
            keys = [k for k in keys if k in flagged]
        for key in keys:
            obj = self.objects.cached(key)
            waiting = [r for r in pending(obj) if outcome_of(obj, r.id) is None]
            if not waiting or not self.owns(key):
                continue
            for request in waiting:
                found = self._handle(key, request)
                if found is not None:
                    try:
                        with acting_for(key):  # the owner's write: fenced as the instance's
                            self._record(key, found)
                        recorded += 1
                    except NotLeaderError:
                        return recorded  # no longer ours: the next owner records it
        return recorded

    def _handle(self, key: Key, request: Request) -> dict[str, Any] | None:
        """Start `request`, or its outcome when it has one (None: not finished yet)."""
        # Claimed first (one insert), looked up only when that fails: the usual request
        # costs the operation store one round trip before it runs.
        try:
            engine = self.engine_for(key)
            op = self.operations.claim(
                request.id, request.op, list(request.services), key[1],
                runner(engine, request.op, request.services, request.force),
                    namespace=key[0])
        except ConductorError as e:
            return outcome(request, "refused", error=e.to_dict())
        if op is not None:
            op.future.add_done_callback(lambda _f: self._wake.set())
            log.info("request %s (%s %s) accepted by %s: running", request.id, request.op,
                     ",".join(request.services) or "all", request.by or "?")
        else:  # ours already, or another process's (running, finished or interrupted)
            op = self.operations.get(request.id)
            if op is None:
                return None
        if not op.done:
            return None
        return self._outcome(request, op)

    def _outcome(self, request: Request, op: Operation) -> dict[str, Any]:
        raised = op.future.exception() if op.record is None else None
        if raised is not None:  # the operation itself raised (no report)
            return outcome(request, "failed", error=raised.to_dict() if isinstance(
                raised, ConductorError) else {"error": "internal_error",
                                              "message": f"{type(raised).__name__}: {raised}"})
        body = op.to_dict()
        state = str(body.get("status"))
        report = body.get("report") if isinstance(body.get("report"), dict) else None
        if state == "interrupted":
            return outcome(request, "interrupted",
                           error={"error": "unavailable", "message": body.get("message", "")})
        if report is None:  # failed without a report: the operation itself raised
            return outcome(request, "failed", error={
                "error": "internal_error", "message": str(body.get("message") or state)})
        if (report.get("error") or {}).get("error") == "not_leader":
            # The owner lost the instance mid-way and stopped writing: not carried out.
            return outcome(request, "interrupted", report, {
                "error": "unavailable", "message": report["error"].get("message", "")})
        try:
            answer(request.op, report)
        except ConductorError as e:
            return outcome(request, "failed", report, e.to_dict())
        return outcome(request, "succeeded", report)

    def _record(self, key: Key, found: dict[str, Any]) -> None:
        def build(obj: Body) -> Body | None:
            kept = [o for o in outcomes(obj) if o.get("id") != found["id"]]
            if len(kept) != len(outcomes(obj)):
                return None  # recorded already (by an earlier owner)
            return {"status": {HANDLED: [*kept, found][-KEEP_HANDLED:]}}

        _update(self.objects, key, build, status=True)


__all__ = ["ANNOTATION", "HANDLED", "KubeObjects", "Request", "RequestBoard",
           "RequestHandler", "UnavailableError", "answer", "answer_outcome", "runner",
           "unguarded"]
