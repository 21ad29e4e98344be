"""`ControllerService`: the API's `Service` (runtime/service.py) over a running controller.

The policy the HTTP handlers used to hold lives here, in one place: which instance a
request means, Git or the DeploymentParameters object for a parameters write, validation
against the CRD's schema before any request, the version checks of If-Match, redaction for
callers without the write scope, the dispatch of up/update/down to the engine, and plans
of drafts. It holds the controller's pieces through `Parts` (a Protocol the composition
root satisfies), never the composition root's module: the floors stay pointing down.

Parameter writes carry the resourceVersion they were computed from, so two concurrent
writers cannot lose each other's keys: a PATCH whose base changed is re-read and its merge
patch re-applied (a few times); a replace (POST, rollback) answers 409 conflict when the
spec changed under it (a status or annotation write in between is retried, it changed no
parameter). With If-Match the base must also be the version the caller read.

Plans of drafts (issue 15) run a second, hook-less engine over a snapshot built from the
draft: the engine already plans from any `ParameterSource` by server-side dry run, so a
draft is just another source, and nothing is recorded, published or written. Each plan is
kept in memory for `PLAN_TTL` seconds (bounded), under an id bound to the instance, the
draft's digest and the version it was planned against.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import yaml
from prometheus_client import CollectorRegistry

from controller.adapters import requirements
from controller.adapters.kube import Body, Kube
from controller.adapters.sources import Snapshot
from controller.adapters.sources.resource import ParametersResource
from controller.adapters.store.events import EventStore
from controller.adapters.store.history import History
from controller.config import Config
from controller.errors import (
    ConductorError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    ReconciliationError,
)
from controller.model import instance as instance_model
from controller.model import rendering
from controller.model.health import ServiceHealth
from controller.model.instance import API_VERSION, KIND, is_suspended
from controller.model.parameters import (
    Parameters,
    check_limits,
    effective,
    redact,
    section_schema,
    validate_spec,
)
from controller.model.redaction import REDACTED
from controller.model.times import rfc3339
from controller.reconcile.engine import Engine, Report, SuspendedError
from controller.runtime.observing import HealthMonitor
from controller.runtime.operations import Operations
from controller.runtime.requests import (
    FAILURES,
    MESSAGES,
    KubeObjects,
    Request,
    RequestBoard,
    answer_outcome,
    runner,
    unguarded,
)
from controller.runtime.service import (
    Caller,
    Deployed,
    DeployRequest,
    Draft,
    EventSource,
    InstanceScope,
    Versioned,
    check_version,
)

Key = tuple[str, str]  # an instance: (namespace, name)

TOP_LEVEL = ("global", "services")
# Writes of one request racing others: enough for a handful of concurrent writers, bounded
# so a hot object answers 409 rather than spin.
WRITE_ATTEMPTS = 8
PLAN_TTL = 600.0  # seconds a plan stays readable at GET /api/plans/{planId}
PLANS_KEPT = 256  # plans in memory at most (the oldest go first)
# What /api/status shows a caller limited to instances other than the controller's own.
STATUS_FOR_ANY_SCOPE = ("app", "time", "leader")

CHANGED = "***REDACTED (changed)***"


class GitWriter(Protocol):
    """What a parameters write needs of the Git source (adapters/sources/git.GitSource)."""

    url: str

    def write_params(self, params: Mapping[str, Any], message: str, author: str = ...
                     ) -> str: ...


class Parts(Protocol):
    """The controller's pieces the service uses (runtime/controller.Controller has them)."""

    cfg: Config
    kube: Kube
    engine: Engine
    health: HealthMonitor
    events: EventStore
    history: History
    operations: Operations
    registry: CollectorRegistry
    started: threading.Event

    own_key: tuple[str, str]

    def resolve(self, instance: str | None) -> tuple[str, str]: ...

    def engine_for(self, key: tuple[str, str]) -> Engine: ...

    def health_for(self, key: tuple[str, str]) -> HealthMonitor: ...

    def instance_keys(self) -> list[tuple[str, str]]: ...

    def instance_object(self, key: tuple[str, str]) -> Body | None: ...

    def loop_state(self, key: tuple[str, str]) -> Any: ...

    def is_leader(self) -> bool: ...

    def leader_identity(self) -> str: ...

    def owns(self, key: tuple[str, str]) -> bool: ...

    def owner_identity(self, key: tuple[str, str]) -> str: ...

    def api_server(self) -> dict[str, Any]: ...

    def status(self) -> dict[str, Any]: ...

    def git_source(self) -> Any: ...

    def git_push_announced(self, ref: str, repositories: Sequence[str]
                           ) -> dict[str, list[tuple[str, str]]]: ...

    @property
    def loop(self) -> Any: ...


# --- pure helpers (also used by the fake service in tests) ----------------------------------


def values_replaced(current: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A replace (POST, rollback) replaces the parameter values (`global`, `services`);
    the instance's controls beside them (`suspend`, `ignore`) are kept: a values write
    must not resume a suspended instance or drop its ignore rules (PATCH and
    /api/suspend, /api/resume change those)."""
    kept = {k: v for k, v in current.items() if k not in TOP_LEVEL}
    return {**kept, **{k: v for k, v in values.items() if k in TOP_LEVEL}}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: maps merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def blob_sha(data: bytes) -> str:
    """Git's object id of a file's content (`git hash-object`)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def draft_digest(draft: Draft | None, services: Sequence[str]) -> str:
    """A stable digest of what was asked to be planned (key order does not matter)."""
    doc: dict[str, Any] = {"services": sorted(services)}
    if draft is not None:
        doc.update(parameters=draft.parameters, patch=draft.patch, ref=draft.ref)
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def report_body(report: Report, op: str) -> dict[str, Any]:
    """The contract's success body, or raise its reconciliation_error (first failure)."""
    if report.error is not None:
        raise report.error
    failed = report.results.failed
    if failed:
        first = failed[0].error or {}
        raise ReconciliationError(FAILURES.get(op, "Reconciliation failed"), {
            "resource": first.get("resource", str(failed[0].key)),
            "error": first.get("error", "Error"), "message": first.get("message", ""),
            "failed": len(failed), "results": [r.to_dict() for r in report.results.items]})
    return {"message": MESSAGES[op], "services": report.services,
            "revision": report.revision, "counts": report.results.counts(),
            "results": [r.to_dict() for r in report.results.items]}


def plan_body(report: Report) -> dict[str, Any]:
    """The plan answer: per object the action, reason and a unified diff (Secrets
    redacted), counts by action, fields left to others, whether suspended."""
    if report.error is not None:
        raise report.error
    changes = []
    for r in report.results.items:
        item: dict[str, Any] = {"resource": str(r.key), "service": r.service,
                                "action": r.action, "reason": r.reason}
        if r.outcome == "failed":
            item["error"] = r.error
        if r.action in ("create", "update") and r.body is not None:
            item["diff"] = diff(report.live.get(r.key), r.body)
        changes.append(item)
    counts: dict[str, int] = {}
    for c in changes:
        counts[c["action"]] = counts.get(c["action"], 0) + 1
    body: dict[str, Any] = {"services": report.services, "revision": report.revision,
                            "counts": counts, "changes": changes}
    ignored = [{"resource": str(c.key), "service": c.service, "paths": list(c.ignored)}
               for c in (report.plan.items if report.plan else ()) if c.ignored]
    if ignored:  # fields left to someone else (spec.ignore): never applied after create
        body["ignored"] = ignored
    if report.suspended:
        body["suspended"] = True
    return body


def diff(live: dict[str, Any] | None, after: dict[str, Any]) -> str:
    """A unified diff of the object as YAML, noise removed, Secret values redacted.

    A Secret value that changes is shown as changed (another marker), never by value: with
    one marker for both sides, a password change would plan an update with an empty diff.
    """
    before = yaml.safe_dump(_clean(live), sort_keys=True) if live else ""
    after_text = yaml.safe_dump(_clean(after, live), sort_keys=True)
    return "".join(difflib.unified_diff(before.splitlines(keepends=True),
                                        after_text.splitlines(keepends=True),
                                        "live", "planned"))


def _clean(obj: dict[str, Any], live: dict[str, Any] | None = None) -> dict[str, Any]:
    """`obj` without server-side noise; a Secret's values redacted (those that differ from
    `live`, when given, with the CHANGED marker)."""
    out = {k: v for k, v in obj.items() if k != "status"}
    meta = {k: v for k, v in (obj.get("metadata") or {}).items()
            if k not in ("managedFields", "resourceVersion", "uid", "creationTimestamp",
                         "generation", "selfLink")}
    out["metadata"] = meta
    if obj.get("kind") == "Secret":
        for field in ("data", "stringData"):
            if field in out:
                old = (live or {}).get(field) or {}
                out[field] = {k: REDACTED if live is None or old.get(k) == v else CHANGED
                              for k, v in (out[field] or {}).items()}
    return out


def instance_row(obj: Body, default: str) -> dict[str, Any]:
    """One DeploymentParameters object as GET /api/parameters/instances lists it."""
    status = obj.get("status") or {}
    ready = next((c.get("status") for c in status.get("conditions") or []
                  if c.get("type") == "Ready"), "Unknown")
    return {"name": obj["metadata"]["name"], "namespace": obj["metadata"]["namespace"],
            "generation": obj["metadata"].get("generation"), "ready": ready,
            "lastAppliedRevision": status.get("lastAppliedRevision", ""),
            "default": obj["metadata"]["name"] == default}


def health_failure(op: str, result: Mapping[str, ServiceHealth]) -> ReconciliationError | None:
    """The error of a wait for health that met an unhealthy service (the reason of its
    first failing object, as the reference's ImagePullBackOff example), else None."""
    bad = [h for h in result.values() if h.status == "unhealthy"]
    if not bad:
        return None
    first = bad[0]
    resource, why = (first.failing[0][0], first.failing[0][1].reason) \
        if first.failing else (first.name, first.reason or first.status)
    return ReconciliationError(FAILURES[op], {
        "resource": resource, "error": why, "service": first.name,
        "status": first.status, "message": first.message, "hint": first.hint,
        "health": {name: h.to_dict() for name, h in result.items()}})


class PlanStore:
    """Plans by id for `ttl` seconds, at most `size` of them (oldest dropped first)."""

    def __init__(self, ttl: float = PLAN_TTL, size: int = PLANS_KEPT,
                 clock: Callable[[], float] = time.time) -> None:
        self.ttl = ttl
        self.size = size
        self.clock = clock
        self._plans: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def keep(self, body: dict[str, Any], instance: str, digest: str,
             based_on: str, namespace: str = "") -> dict[str, Any]:
        """`body` with planId, expiresAt and basedOn, kept. The id names its binding
        (instance, draft digest, version) by a hash, plus randomness: never guessable."""
        bound = hashlib.sha256(f"{namespace}/{instance}\0{digest}\0{based_on}".encode()
                               ).hexdigest()
        plan_id = f"{bound[:16]}{secrets.token_hex(8)}"
        moment = self.clock()
        expires = moment + self.ttl
        out = {**body, "planId": plan_id, "basedOn": based_on, "instance": instance,
               "namespace": namespace, "expiresAt": rfc3339(_utc(expires))}
        with self._lock:
            self._plans[plan_id] = (expires, out)
            for key in [k for k, (t, _) in self._plans.items() if t <= moment]:
                del self._plans[key]
            while len(self._plans) > self.size:
                self._plans.popitem(last=False)
        return out

    def get(self, plan_id: str,
            shown: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """A kept plan; not found once expired, or when `shown` says the caller may not
        see it (the same answer: whether it exists must not leak)."""
        with self._lock:
            found = self._plans.get(plan_id)
            if found is not None and found[0] <= self.clock():
                del self._plans[plan_id]
                found = None
        if found is not None and shown is not None and not shown(found[1]):
            found = None
        if found is None:
            raise NotFoundError(f"no plan {plan_id[:80]} (plans are kept "
                                f"{int(self.ttl)} s, in this process only)",
                                {"planId": plan_id[:80], "ttlSeconds": self.ttl})
        return found[1]


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


class _DraftSource:
    """A ParameterSource that answers one fixed snapshot: the draft to plan."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def snapshot(self, resource: dict[str, Any]) -> Snapshot:
        return self.snap


@dataclass(frozen=True)
class _Current:
    """The parameters in force for one instance, with their version and (resource
    source) the object they were read from."""

    snap: Snapshot
    version: str
    obj: Body | None = None


class ControllerService:
    """The `Service` of a running controller (see runtime/service.py)."""

    def __init__(self, parts: Parts, env: Mapping[str, str] | None = None,
                 plans: PlanStore | None = None) -> None:
        self.c = parts
        self.cfg = parts.cfg
        self.env = dict(env or {})
        self.plans = plans or PlanStore()
        self._blob_lock = threading.Lock()
        self._blobs: OrderedDict[str, str] = OrderedDict()  # commit -> params blob SHA
        # The user's writes (parameters, suspend, requests) may be made by any replica:
        # not fenced by leadership (resourceVersion and If-Match guard their races).
        self.user_kube = unguarded(parts.kube)
        # up/update/down for an instance another replica owns (runtime/requests.py).
        self.board = RequestBoard(KubeObjects(self.user_kube, parts.instance_object))

    @property
    def events(self) -> EventSource:
        return self.c.events

    # -- instances -------------------------------------------------------------------------

    def _key(self, instance: str | None) -> Key:
        """(namespace, name) of the instance a request names (see `resolve`)."""
        return self.c.resolve(instance)

    def _is_git(self, key: Key) -> bool:
        return self.cfg.source == "git" and key == self.c.own_key

    def resolve(self, instance: str | None, scope: InstanceScope | None = None) -> str:
        if scope is not None and instance is not None and "/" not in instance:
            # A bare name means the caller's instance of that name: a same-named one of
            # another namespace is not its business, nor is its existence.
            mine = [k for k in self.c.instance_keys()
                    if k[1] == instance and self._visible(k, scope)]
            if len(mine) == 1:
                return f"{mine[0][0]}/{mine[0][1]}"
            if len(mine) > 1:
                raise InvalidRequestError(
                    f"instance {instance} exists in several namespaces: add ?namespace=",
                    {"instance": instance, "namespaces": sorted(k[0] for k in mine)})
        try:
            key = self._key(instance)
        except InvalidRequestError as e:  # several others of that name, none of its own
            if scope is None:
                raise
            raise NotFoundError(  # as an unknown name's (controller.resolve)
                f"DeploymentParameters {self.cfg.namespace}/{instance} not found",
                {"namespace": self.cfg.namespace, "instance": instance}) from e
        if scope is not None and not self._visible(key, scope):
            # The same answer as for a name that does not exist: existence must not leak.
            raise NotFoundError(f"DeploymentParameters {key[0]}/{key[1]} not found",
                                {"namespace": key[0], "instance": key[1]})
        return f"{key[0]}/{key[1]}"

    def _visible(self, key: Key, scope: InstanceScope) -> bool:
        obj = self.c.instance_object(key)
        labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
        return scope.allows(key[0], key[1], labels)

    def _concerns(self, body: Mapping[str, Any], scope: InstanceScope | None) -> bool:
        """Whether an answer about an instance by id (an operation, a plan) may go to a
        caller limited to `scope`: its instance (namespace, name) is within it. One of a
        namespace not known (recorded before there were namespaces) is not."""
        if scope is None:
            return True
        name, namespace = str(body.get("instance") or ""), str(body.get("namespace") or "")
        if not namespace:
            return False
        try:
            return self._visible((namespace, name), scope)
        except NotFoundError:
            return scope.allows(namespace, name, {})  # gone: no labels left to match

    # -- probes and status -----------------------------------------------------------------

    def ready(self) -> tuple[bool, dict[str, Any]]:
        c = self.c
        body: dict[str, Any] = {"status": "ready", "leader": c.is_leader(),
                                "holder": c.leader_identity()}
        if not c.started.is_set():
            body["status"] = "starting"
            return False, body
        body["apiServer"] = c.api_server()
        if not body["apiServer"]["reachable"]:
            body["status"] = "apiserver-unreachable"
            return False, body
        return True, body

    def status(self, scope: InstanceScope | None = None) -> dict[str, Any]:
        body = self.c.status()
        if scope is None or self._visible(self.c.own_key, scope):
            return body
        # A caller limited to other instances sees what is controller-wide (the app, the
        # clock, leadership) and which of its instances are reconciled here; the own
        # instance's source, passes and store are not its business.
        out = {k: body[k] for k in STATUS_FOR_ANY_SCOPE if k in body}
        out["instances"] = [{"namespace": k[0], "name": k[1]}
                            for k in sorted(self.c.instance_keys()) if self._visible(k, scope)]
        return out

    def requirements(self) -> dict[str, Any]:
        return requirements.check(self.c.kube, self.c.engine.current().manifest_root)

    # -- services and health ---------------------------------------------------------------

    def instances(self, scope: InstanceScope | None = None) -> list[dict[str, Any]]:
        rows = []
        for key in sorted(self.c.instance_keys()):
            obj = self.c.instance_object(key)
            if obj is None:
                continue  # deleted a moment ago
            labels = (obj.get("metadata") or {}).get("labels") or {}
            if scope is not None and not scope.allows(key[0], key[1], labels):
                continue
            row = instance_row(obj, self.cfg.instance)
            row["default"] = key == self.c.own_key
            row["suspended"] = is_suspended(obj)
            state = self.c.loop_state(key)
            last = state.last if state is not None else None
            if key == self.c.own_key and last is None:
                last = self.c.engine.last  # operations run outside the loop count too
            row["lastPass"] = None if last is None else {
                "time": last.started, "result": "success" if last.ok else "failed",
                "trigger": last.trigger, "duration": round(last.duration, 4)}
            try:
                statuses = [h.status for h in self.c.health_for(key).services()]
            except NotFoundError:
                statuses = []
            row["health"] = {status: statuses.count(status) for status in sorted(set(statuses))}
            rows.append(row)
        return rows

    def services(self, instance: str | None) -> list[dict[str, Any]]:
        monitor = self.c.health_for(self._key(instance))  # NotFoundError if missing
        return [h.to_dict() for h in monitor.services()]

    def services_now(self, instance: str | None) -> list[dict[str, Any]] | None:
        # Only the controller's own instance: naming one means resolving it, which may
        # wait for the cache (a name created a moment ago).
        if instance is not None:
            return None
        listing = self.c.health.services_now()
        return None if listing is None else [h.to_dict() for h in listing]

    def service_detail(self, instance: str | None, name: str) -> dict[str, Any]:
        key = self._key(instance)
        monitor = self.c.health_for(key)
        health = monitor.service(name)  # NotFoundError for an unknown service
        keys = monitor.objects(name)
        objects = [{"resource": str(k), "kind": k.kind, "name": k.name,
                    "namespace": k.namespace, **h.to_dict()} for k, h in keys]
        # This instance's own events: other instances have services of the same names.
        events = self.c.events.query(service=name, instance=key[1], namespace=key[0],
                                     limit=20)
        return {"name": name, "namespace": health.namespace, "instance": key[1],
                "health": health.to_dict(), "objects": objects,
                "events": [e.to_dict() for e in events]}

    # -- deploying -------------------------------------------------------------------------

    def deploy(self, request: DeployRequest) -> Deployed:
        op_name = request.op
        key = self._key(request.instance)
        instance = key[1]
        engine = self.c.engine_for(key)
        force = request.force and op_name != "down"
        if request.if_match is not None:
            check_version(request.if_match, self._current(key).version)
        if op_name != "down" and not force:
            obj = engine.resource.get()
            if obj is not None and is_suspended(obj):
                raise SuspendedError(
                    f"instance {instance} is suspended: {op_name} applies nothing until it "
                    "is resumed (POST /api/resume); ?force=true applies this once anyway",
                    {"reason": "Suspended", "instance": instance,
                     "namespace": engine.resource.namespace})
        services = list(request.services)
        timeout = self.cfg.api.sync_timeout if request.timeout is None else request.timeout
        if not self.c.owns(key):
            return self._deploy_elsewhere(request, key, force, timeout)
        op = self.c.operations.start(op_name, services, instance,
                                     runner(engine, op_name, services, force),
                                     namespace=key[0])
        try:
            report = op.future.result(timeout=timeout) if timeout else None
        except TimeoutError:
            report = None
        if report is None:
            return Deployed({"message": f"{op_name} is running; follow it at "
                                        f"/api/operations/{op.id}", **op.to_dict()},
                            accepted=True, location=f"/api/operations/{op.id}")
        body = report_body(report, op_name)
        body["operation"] = op.id
        return self._settled(request, key, body)

    def _deploy_elsewhere(self, request: DeployRequest, key: Key, force: bool,
                          timeout: float) -> Deployed:
        """up/update/down for an instance another replica owns: recorded on its object
        for the owner to run (runtime/requests.py), waited for up to `timeout`, answered
        as the owner would have; 202 with the operation to follow after the timeout."""
        op_id = self.c.operations.new_id()
        self.board.submit(key, Request(op_id, request.op, tuple(request.services), force,
                                       rfc3339(_utc(time.time())), self.c.operations.boot))
        found = self.board.wait(key, op_id, timeout) if timeout else None
        if found is None:
            link = f"/api/operations/{op_id}"
            return Deployed({"message": f"{request.op} is running; follow it at {link}",
                             "id": op_id, "operation": request.op,
                             "services": list(request.services), "instance": key[1],
                             "status": "running", "owner": self.c.owner_identity(key),
                             "links": {"self": link}}, accepted=True, location=link)
        body = answer_outcome(found, self.c.operations.get(op_id))
        body["operation"] = op_id
        return self._settled(request, key, body)

    def _settled(self, request: DeployRequest, key: Key, body: dict[str, Any]) -> Deployed:
        """An applied up/update/down's answer, after waiting for health when asked."""
        op_name = request.op
        if op_name != "down" and request.wait_healthy:
            result = self.c.health_for(key).wait(body["services"], request.health_timeout)
            failure = health_failure(op_name, result)
            if failure is not None:
                raise failure
            body["health"] = {name: h.to_dict() for name, h in result.items()}
            if not all(h.settled for h in result.values()):
                body["message"] = "applied; not every service is healthy yet"
                return Deployed(body, accepted=True)
        return Deployed(body)

    def operation(self, op_id: str, scope: InstanceScope | None = None) -> dict[str, Any]:
        body = self._operation(op_id)
        if not self._concerns(body, scope):  # the same 404 as an unknown id: no leak
            raise self.c.operations.missing(op_id)
        return body

    def _operation(self, op_id: str) -> dict[str, Any]:
        op = self.c.operations.get(op_id)
        if op is not None:
            return op.to_dict()
        # Accepted by some replica, not started by the owner yet: on its object.
        waiting = self.board.find(op_id, self.c.instance_keys())
        if waiting is None:
            raise self.c.operations.missing(op_id)
        key, found = waiting
        return {"id": op_id, "operation": found.op, "services": list(found.services),
                "instance": key[1], "status": "running", "queued": True,
                "owner": self.c.owner_identity(key),
                "links": {"self": f"/api/operations/{op_id}"}}

    def plan(self, instance: str | None, services: Sequence[str],
             draft: Draft | None = None) -> dict[str, Any]:
        key = self._key(instance)
        name = key[1]
        engine = self.c.engine_for(key)
        current = self._current(key)
        if draft is None:
            body = plan_body(engine.plan(list(services)))
        else:
            snap = self._draft_snapshot(key, current, draft)
            # A hook-less engine over the draft: nothing recorded, published or written
            # (a plan's only requests are reads and server-side dry runs).
            planner = Engine(engine.cfg, self.c.kube, _DraftSource(snap))
            body = plan_body(planner.plan(list(services)))
            body["draft"] = True
        return self.plans.keep(body, name, draft_digest(draft, services), current.version,
                               namespace=key[0])

    def _draft_snapshot(self, instance: Key, current: _Current, draft: Draft) -> Snapshot:
        base = current.snap
        if draft.ref is not None:
            if not self._is_git(instance):
                raise InvalidRequestError("'ref' needs a Git source: this instance's "
                                          "parameters come from its DeploymentParameters "
                                          "object", {"field": "ref", "source": "resource"})
            base = self._git_ref_snapshot(draft.ref)
        spec = dict(base.spec)
        if draft.parameters is not None:
            spec = values_replaced(spec, draft.parameters)
        if draft.patch is not None:
            check_limits(draft.patch)
            spec = merge_patch(spec, draft.patch)
        validate_spec(spec, self.c.engine.schema)
        return replace(base, spec=spec, details={**base.details, "draft": True})

    def _git_ref_snapshot(self, ref: str) -> Snapshot:
        """The parameters and manifests at another ref, fetched into a cache of their own
        (the loop's worktree stays at the ref it applies)."""
        from controller.adapters.sources.git import GitSource  # gitpython: only with Git

        git = GitSource(replace(self.cfg.git, ref=ref,
                                cache_dir=self.cfg.git.cache_dir / "plans"), self.env)
        snap = git.fetch()
        return Snapshot(spec=snap.params, revision=snap.sha,
                        manifest_root=snap.manifest_root or self.cfg.manifest_root,
                        source="git", committed_at=snap.committed_at,
                        details={"ref": ref})

    def saved_plan(self, plan_id: str, scope: InstanceScope | None = None) -> dict[str, Any]:
        return self.plans.get(plan_id, lambda body: self._concerns(body, scope))

    def suspend(self, instance: str | None, suspend: bool) -> dict[str, Any]:
        """Write only `spec.suspend` (a merge patch); idempotent: no write when it is
        already so. The object's watch wakes the loop; ours is woken at once."""
        key = self._key(instance)
        name = key[1]
        resource = self.c.engine_for(key).resource
        obj = resource.read()
        changed = is_suspended(obj) != suspend
        if changed:
            self.user_kube.patch(API_VERSION, KIND, resource.name,
                                 {"spec": {"suspend": suspend}}, resource.namespace)
            self.c.loop.wake("suspend" if suspend else "resume", key)
        state = "suspended" if suspend else "resumed"
        return {"message": f"instance {name} {state}" if changed else
                f"instance {name} was already {state}",
                "instance": name, "namespace": resource.namespace, "suspended": suspend,
                "changed": changed}

    # -- parameters: reading ---------------------------------------------------------------

    def _current(self, instance: Key, fresh: bool = False) -> _Current:
        """The parameters in force and their version: the object's spec and generation
        (see `_resource_version`), or the Git file (as the last pass read it, unless `fresh`) and
        its blob SHA."""
        engine = self.c.engine_for(instance)
        if self._is_git(instance):
            snap = engine.current(fresh)
            return _Current(snap, self._git_version(snap.revision))
        obj = engine.resource.read()
        snap = engine.source.snapshot(obj)
        # Another instance following Git: its file's blob id (sources/instances.py).
        version = str(snap.details.get("version") or "") if snap.source == "git" else ""
        return _Current(snap, version or _resource_version(obj), obj)

    def _git_version(self, commit: str) -> str:
        """The blob SHA of the parameters file at `commit` (kept per commit)."""
        with self._blob_lock:
            found = self._blobs.get(commit)
        if found is not None:
            return found
        git = self.c.git_source()
        if git is None:
            return commit
        data = git._blob(commit, git._params_path(), "read")  # the file as committed
        version = blob_sha(data or b"")
        with self._blob_lock:
            self._blobs[commit] = version
            while len(self._blobs) > 64:
                self._blobs.popitem(last=False)
        return version

    def _redact(self, caller: Caller, value: Any, section: str = "") -> Any:
        if caller.may_see_secrets:
            return value
        schema = self.c.engine.schema
        return redact(value, section_schema(schema, section) if section else schema)

    def parameters(self, instance: str | None, caller: Caller) -> Versioned:
        current = self._current(self._key(instance))
        return Versioned(self._redact(caller, dict(current.snap.spec)), current.version)

    def schema(self) -> dict[str, Any]:
        return self.c.engine.schema

    def values(self, instance: str | None, caller: Caller) -> dict[str, Any]:
        engine = self.c.engine_for(self._key(instance))
        snap = engine.current()
        params = engine.parameters(snap)
        names = rendering.load_tree(snap.manifest_root).names
        return {"revision": snap.revision,
                "services": {n: self._redact(caller, effective(params, n), "service")
                             for n in names}}

    def service_values(self, instance: str | None, service: str,
                       caller: Caller) -> Versioned:
        key = self._key(instance)
        engine = self.c.engine_for(key)
        current = self._current(key)
        snap = current.snap
        names = rendering.load_tree(snap.manifest_root).names
        if service not in names:
            raise NotFoundError(f"unknown service: {service}",
                                {"service": service, "available": names})
        own = Parameters.from_spec(snap.spec)
        return Versioned({
            "service": service,
            "values": self._redact(caller, own.services.get(service, {}), "service"),
            "global": self._redact(caller, own.global_, "global"),
            "effective": self._redact(caller, effective(engine.parameters(snap), service),
                                      "service")}, current.version)

    def history(self, instance: str | None, limit: int,
                caller: Caller) -> list[dict[str, Any]]:
        key = self._key(instance)
        rows = self.c.history.list(key[1], limit, namespace=key[0])
        for row in rows:  # history keeps old values for good: old passwords included
            row["parameters"] = self._redact(caller, row["parameters"])
        return rows

    # -- parameters: writing ---------------------------------------------------------------

    def replace_parameters(self, instance: str | None, spec: dict[str, Any], caller: Caller,
                           if_match: str | None = None) -> Versioned:
        validate_spec(spec, self.c.engine.schema)  # before any request
        return self._write(self._key(instance), caller, if_match,
                           lambda current: values_replaced(current, spec),
                           "conductor: replace parameters", reapply=False)

    def patch_parameters(self, instance: str | None, patch: dict[str, Any], caller: Caller,
                         if_match: str | None = None) -> Versioned:
        check_limits(patch)  # the merged spec is validated in full once the base is read
        return self._write(self._key(instance), caller, if_match,
                           lambda current: merge_patch(current, patch),
                           "conductor: patch parameters", reapply=True)

    def rollback(self, instance: str | None, revision: str, caller: Caller,
                 if_match: str | None = None) -> Versioned:
        key = self._key(instance)
        name = key[1]
        entry = self.c.history.entry(name, revision, namespace=key[0])
        if entry is None:
            raise NotFoundError(f"no recorded parameters for revision {revision}",
                                {"revision": revision, "instance": name})
        if entry["applied"] is False:  # refused when it was current: it would fail again
            raise ConflictError(
                f"revision {revision} was never applied (its pass failed); roll back to a "
                "revision with applied: true", {"revision": revision, "instance": name,
                                                "applied": False,
                                                "hint": "see /api/parameters/history"})
        spec = entry["parameters"]
        written = self._write(key, caller, if_match,
                              lambda current: values_replaced(current, spec),
                              f"conductor: roll parameters back to {revision}",
                              reapply=False)
        body = {**written.body, "message": f"Parameters rolled back to {revision}",
                "rolledBackTo": revision}
        return Versioned(body, written.version)

    def _write(self, instance: Key, caller: Caller, if_match: str | None,
               build: Callable[[dict[str, Any]], dict[str, Any]], message: str, *,
               reapply: bool) -> Versioned:
        """Write `build(current spec)`. `reapply`: a conflict re-reads and builds again (a
        merge patch); otherwise a spec changed by someone else is a 409 (a replace). With
        `if_match`, the base written on must be that version (412 otherwise)."""
        schema = self.c.engine.schema
        if self._is_git(instance):
            return self._write_git(caller, if_match, build, message)
        resource = ParametersResource(self.user_kube,
                                      replace(self.cfg, namespace=instance[0]), instance[1])
        base = resource.get()
        if base is None:
            if self._recreate(resource, instance, build, reapply, if_match):
                obj = resource.read()  # created with exactly this spec
                return self._written(obj)
            base = resource.read()
        _refuse_if_from_git(base, instance)
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            spec = build(dict(base.get("spec") or {}))
            validate_spec(spec, schema)  # an invalid body is a 400 whatever its If-Match
            check_version(if_match, _resource_version(base))
            try:
                obj = resource.replace_spec(spec, base)
                break
            except ConflictError as e:
                fresh = resource.read()
                changed = _generation(fresh) != _generation(base)
                if attempt == WRITE_ATTEMPTS or (changed and not reapply):
                    e.details["hint"] = ("the parameters were changed by another writer; "
                                         "read them again and retry")
                    e.details["currentGeneration"] = _generation(fresh)
                    raise
                base = fresh
        return self._written(obj)

    def _written(self, obj: Body) -> Versioned:
        return Versioned({"message": "Parameters updated", "parameters": obj.get("spec") or {},
                          "revision": f"generation/{obj['metadata'].get('generation')}"},
                         _resource_version(obj))

    def _write_git(self, caller: Caller, if_match: str | None,
                   build: Callable[[dict[str, Any]], dict[str, Any]],
                   message: str) -> Versioned:
        git = self.c.git_source()
        writable = git is not None and self.cfg.git.write
        # Validation comes first: an invalid body is a 400 whatever the source allows.
        current = self._current(self.c.own_key, fresh=writable)
        spec = build(dict(current.snap.spec))
        validate_spec(spec, self.c.engine.schema)
        if git is None or not writable:
            raise ConflictError(
                "parameters come from Git and this controller may not push; change them "
                "with a commit", {"source": "git", "url": git.url if git else "",
                                  "ref": self.cfg.git.ref, "hint": "set CONDUCTOR_GIT_WRITE"})
        check_version(if_match, current.version)
        from controller.adapters.sources.git import author_for  # gitpython: only with Git

        sha = git.write_params(spec, message, author=author_for(caller.token_name))
        self.c.loop.wake("api")
        return Versioned({"message": "Parameters updated", "parameters": spec,
                          "revision": sha}, self._git_version(sha))

    def _recreate(self, resource: ParametersResource, key: Key,
                  build: Callable[[dict[str, Any]], dict[str, Any]], reapply: bool,
                  if_match: str | None) -> bool:
        """The controller's own object is missing (deleted after it was applied: the loop
        has stopped and kept the app). A whole spec (POST, rollback) creates it again; a
        merge patch has nothing to merge into. True when created with the spec; False when
        another writer created it meanwhile (then written over as usual)."""
        instance = key[1]
        own = key == self.c.own_key
        missing = NotFoundError(
            f"DeploymentParameters {resource.namespace}/{instance} not found",
            {"namespace": resource.namespace, "instance": instance,
             "hint": "POST /api/parameters with the whole spec creates the controller's "
                     "own instance again" if own else ""})
        if reapply or not own:
            raise missing
        spec = build({})
        validate_spec(spec, self.c.engine.schema)
        check_version(if_match, "")  # no object: only * matches
        created = resource.ensure(seed=spec)
        if (created.get("spec") or {}) == spec:
            self.c.loop.wake("api")
            return True
        return False

    # -- Git -------------------------------------------------------------------------------

    def git_push(self, ref: str, repositories: Sequence[str] = ()) -> dict[str, Any]:
        # Every instance following that repository and ref is woken, on whichever
        # replica owns it (the owner directly; another through its object).
        done = self.c.git_push_announced(ref, repositories)
        woken = [*done["woken"], *done["asked"]]
        if not woken:
            where = ", ".join(repositories) or "the controller's repository"
            return {"message": f"ignored: push to {ref or 'a ref'} of {where}, which no "
                               f"instance follows (watching {self.cfg.git.ref})",
                    "triggered": False}
        return {"message": "reconciliation triggered", "triggered": True, "ref": ref,
                "instances": [{"namespace": k[0], "name": k[1],
                               "via": "owner" if k in done["woken"] else "annotation",
                               "owner": self.c.owner_identity(k)}
                              for k in woken]}


def _refuse_if_from_git(obj: Body, key: Key) -> None:
    """Another instance whose object says its parameters come from Git (spec.source or
    the parameter-source annotation): writing its spec would change nothing that runs,
    so the write is refused, as the controller's own Git instance does without write."""
    try:
        spec = instance_model.source_spec(obj)
    except ConductorError:
        spec = instance_model.SourceSpec("", "", "")  # malformed: still asks for Git
    if spec is not None:
        where = spec.url or "the controller's repository"
        raise ConflictError(
            f"the parameters of {key[0]}/{key[1]} come from Git ({where}, "
            f"{spec.path or 'spec.source.path'}); change them with a commit",
            {"source": "git", "url": spec.url, "path": spec.path, "namespace": key[0],
             "instance": key[1]})


def _generation(obj: Body) -> Any:
    return (obj.get("metadata") or {}).get("generation")


def _resource_version(obj: Body) -> str:
    """The parameters version of a DeploymentParameters object: its generation, which the
    API server moves with the spec only (status and annotation writes, made by every pass,
    leave it), qualified by the uid so that a deleted and recreated object at the same
    generation is another version."""
    meta = obj.get("metadata") or {}
    uid = str(meta.get("uid") or "")[:8]
    return f"{meta.get('generation', 0)}-{uid}" if uid else str(meta.get("generation", 0))


__all__ = ["ControllerService", "Parts", "PlanStore"]
