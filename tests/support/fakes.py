"""An in-memory `Service` (controller/runtime/service.py) for the API's cluster-free tests.

Not a mock: a small working controller without Kubernetes. It holds a few services, the
parameters of one or more instances with versions (a counter, as a resourceVersion), a
real SQLite event store, operations, suspensions and plans, and applies the same rules as
the real service where those rules are the domain's (validation against the real CRD
schema, merge patches, If-Match, redaction, the plan store with its expiry). What it does
not do is talk to a cluster: its plans and deploys are computed from the parameters
alone. `FakeService.calls` records what the API asked for, so a test can check that a
refused request reached nothing.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from controller.adapters.store.events import EventStore
from controller.config import EventSettings
from controller.errors import ConflictError, InvalidRequestError, NotFoundError
from controller.model.parameters import (
    Parameters,
    check_limits,
    effective,
    load_schema,
    redact,
    section_schema,
    validate_spec,
)
from controller.reconcile.engine import SuspendedError
from controller.runtime.controller_service import (
    STATUS_FOR_ANY_SCOPE,
    PlanStore,
    draft_digest,
    merge_patch,
    values_replaced,
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

SERVICES = ("frontend", "postgres", "redis")
SPEC: dict[str, Any] = {
    "global": {"namespace": "shop", "environment": "test"},
    "services": {
        "redis": {"image": "redis:7.2", "replicas": 1, "port": 6379},
        "postgres": {"image": "postgres:16", "replicas": 1, "port": 5432,
                     "password": "s3cret-pw"},
        "frontend": {"image": "nginx:1.25", "replicas": 2, "port": 80},
    },
}
MESSAGES = {"up": "Successfully deployed all manifests",
            "update": "Successfully updated all manifests",
            "down": "Successfully removed all manifests"}


@dataclass
class Instance:
    """One DeploymentParameters object, in memory."""

    name: str
    spec: dict[str, Any]
    namespace: str = ""  # "": the service's namespace
    labels: dict[str, str] = field(default_factory=dict)
    version: int = 1
    generation: int = 1
    deployed: set[str] = field(default_factory=lambda: set(SERVICES))
    history: list[dict[str, Any]] = field(default_factory=list)

    def record(self) -> None:
        revision = f"generation/{self.generation}"
        self.history.insert(0, {"revision": revision, "source": "resource",
                                "parameters": self.spec, "applied": True,
                                "recordedAt": "2024-01-01T00:00:00Z"})


class FakeService:
    """The `Service` protocol in memory (see the module docstring)."""

    def __init__(self, events_path: Path, *, instance: str = "default",
                 namespace: str = "shop") -> None:
        self.default = instance
        self.namespace = namespace
        self.schema_ = load_schema()
        self.store = EventStore.from_settings(EventSettings(path=events_path))
        self.instances_: dict[str, Instance] = {instance: Instance(instance, _copy(SPEC))}
        self.instances_[instance].record()
        self.plans = PlanStore()
        self.operations: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, Any]] = []
        self.started = True
        self.git_pushes: list[str] = []
        self.git_repositories: list[list[str]] = []  # the URLs each push named
        self.git_ref = "main"
        self.block = threading.Event()  # set: deploys finish; clear: they keep running
        self.block.set()
        # Whether `services_now` answers (as a health monitor whose published view is
        # current) or says "ask services" (a change not computed yet).
        self.health_published = True
        self._lock = threading.Lock()

    def close(self) -> None:
        self.store.close()

    # -- helpers ---------------------------------------------------------------------------

    def add_instance(self, name: str, namespace: str = "",
                     labels: dict[str, str] | None = None) -> Instance:
        """Another instance (names are unique across namespaces in this fake)."""
        inst = self.instances_[name] = Instance(name, _copy(SPEC), namespace,
                                                dict(labels or {}))
        inst.record()
        return inst

    def _ns(self, inst: Instance) -> str:
        return inst.namespace or self.namespace

    def _get(self, instance: str | None) -> Instance:
        namespace, _, name = (instance or self.default).rpartition("/")
        found = self.instances_.get(name)
        if found is not None and namespace and self._ns(found) != namespace:
            found = None
        if found is None:
            raise NotFoundError(f"DeploymentParameters {self.namespace}/{name} not found",
                                {"namespace": self.namespace, "instance": name})
        return found

    def _redact(self, caller: Caller, value: Any, section: str = "") -> Any:
        if caller.may_see_secrets:
            return value
        return redact(value, section_schema(self.schema_, section) if section
                      else self.schema_)

    def _health(self, inst: Instance, name: str) -> dict[str, Any]:
        status = "healthy" if name in inst.deployed else "down"
        if (inst.spec.get("suspend") is True) and status == "healthy":
            status = "suspended"
        out: dict[str, Any] = {"name": name, "namespace": self.namespace, "status": status,
                               "lastChecked": "2024-01-01T00:00:00Z"}
        image = str(effective(Parameters.from_spec(inst.spec), name).get("image", ""))
        if image.endswith(":missing"):
            out.update(status="unhealthy", reason="ImagePullBackOff",
                       message=f"image {image} not found",
                       objects=[{"resource": f"{self.namespace}/Pod/{name}-0",
                                 "status": "unhealthy", "reason": "ImagePullBackOff",
                                 "message": f"image {image} not found"}])
        return out

    def _check_services(self, names: Sequence[str]) -> None:
        unknown = sorted(set(names) - set(SERVICES))
        if unknown:
            raise NotFoundError(f"unknown service(s): {', '.join(unknown)}",
                                {"services": unknown, "available": list(SERVICES)})

    # -- Service ---------------------------------------------------------------------------

    @property
    def events(self) -> EventSource:
        return self.store

    def ready(self) -> tuple[bool, dict[str, Any]]:
        body = {"status": "ready" if self.started else "starting", "leader": True,
                "holder": "self"}
        return self.started, body

    def status(self, scope: InstanceScope | None = None) -> dict[str, Any]:
        body = {"instance": self.default, "namespace": self.namespace, "app": "conductor",
                "time": "2024-01-01T00:00:00Z",
                "leader": {"isLeader": True, "identity": "self", "holder": "self"},
                "source": {"type": "resource",
                           "revision": f"generation/{self._get(None).generation}"},
                "loop": {"interval": 30.0, "passes": 1, "consecutiveFailures": 0}}
        own = self._get(None)
        if scope is None or scope.allows(self._ns(own), own.name, own.labels):
            return body
        # As the controller's: the controller-wide part, and the caller's instances.
        return {**{k: body[k] for k in STATUS_FOR_ANY_SCOPE},
                "instances": [{"namespace": i["namespace"], "name": i["name"]}
                              for i in self.instances(scope)]}

    def _shown(self, body: dict[str, Any], scope: InstanceScope | None) -> bool:
        """An operation or plan is shown to a limited caller only if its instance is."""
        if scope is None:
            return True
        try:
            self.resolve(f"{body.get('namespace')}/{body.get('instance')}", scope)
        except NotFoundError:
            return False
        return True

    def requirements(self) -> dict[str, Any]:
        return {"ok": True, "checks": [{"name": "kubernetes", "ok": True}]}

    def resolve(self, instance: str | None, scope: InstanceScope | None = None) -> str:
        inst = self._get(instance)
        if scope is not None and not scope.allows(self._ns(inst), inst.name, inst.labels):
            raise NotFoundError(f"DeploymentParameters {self._ns(inst)}/{inst.name} not "
                                "found", {"namespace": self._ns(inst), "instance": inst.name})
        return f"{self._ns(inst)}/{inst.name}"

    def instances(self, scope: InstanceScope | None = None) -> list[dict[str, Any]]:
        return [{"name": i.name, "namespace": self._ns(i), "generation": i.generation,
                 "ready": "True", "lastAppliedRevision": f"generation/{i.generation}",
                 "default": i.name == self.default,
                 "suspended": i.spec.get("suspend") is True,
                 "lastPass": {"time": "2024-01-01T00:00:00Z", "result": "success"},
                 "health": {"healthy": len(i.deployed)}}
                for i in self.instances_.values()
                if scope is None or scope.allows(self._ns(i), i.name, i.labels)]

    def services(self, instance: str | None) -> list[dict[str, Any]]:
        inst = self._get(instance)
        return [self._health(inst, n) for n in SERVICES]

    def services_now(self, instance: str | None) -> list[dict[str, Any]] | None:
        if instance is not None or not self.health_published:
            return None
        self.calls.append(("services_now", instance))
        return self.services(instance)

    def service_detail(self, instance: str | None, name: str) -> dict[str, Any]:
        inst = self._get(instance)
        if name not in SERVICES:
            raise NotFoundError(f"unknown service: {name}", {"service": name})
        health = self._health(inst, name)
        events = self.store.query(service=name, limit=20)
        return {"name": name, "namespace": self.namespace, "instance": inst.name,
                "health": health,
                "objects": [{"resource": f"{self.namespace}/Deployment/{name}",
                             "kind": "Deployment", "name": name,
                             "namespace": self.namespace, "status": health["status"]}],
                "events": [e.to_dict() for e in events]}

    def deploy(self, request: DeployRequest) -> Deployed:
        self.calls.append(("deploy", request))
        inst = self._get(request.instance)
        self._check_services(request.services)
        check_version(request.if_match, str(inst.version))
        if request.op != "down" and not request.force and inst.spec.get("suspend") is True:
            raise SuspendedError(f"instance {inst.name} is suspended",
                                 {"reason": "Suspended", "instance": inst.name})
        named = set(request.services or SERVICES)
        if request.op == "down":
            inst.deployed -= named
        else:
            inst.deployed |= named
        results = [{"resource": f"{self.namespace}/Deployment/{n}", "service": n,
                    "result": "deleted" if request.op == "down" else "applied"}
                   for n in sorted(named)]
        body: dict[str, Any] = {"message": MESSAGES[request.op],
                                "services": sorted(request.services),
                                "revision": f"generation/{inst.generation}",
                                "counts": {results[0]["result"]: len(results)},
                                "results": results}
        op_id = f"fake-{len(self.operations) + 1}"
        operation = {"id": op_id, "operation": request.op, "services": body["services"],
                     "instance": inst.name, "namespace": self._ns(inst),
                     "status": "succeeded", "links": {"self": f"/api/operations/{op_id}"}}
        self.operations[op_id] = operation
        self.store.add("success", f"{request.op} succeeded", reason="OperationSucceeded")
        if request.timeout == 0 or not self.block.is_set():
            operation["status"] = "running"
            return Deployed({"message": f"{request.op} is running; follow it at "
                                        f"/api/operations/{op_id}", **operation},
                            accepted=True, location=f"/api/operations/{op_id}")
        body["operation"] = op_id
        if request.wait_healthy and request.op != "down":
            body["health"] = {n: self._health(inst, n) for n in sorted(named)}
        return Deployed(body)

    def operation(self, op_id: str, scope: InstanceScope | None = None) -> dict[str, Any]:
        found = self.operations.get(op_id)
        if found is None or not self._shown(found, scope):
            raise NotFoundError(f"no operation {op_id}", {"operation": op_id})
        return found

    def plan(self, instance: str | None, services: Sequence[str],
             draft: Draft | None = None) -> dict[str, Any]:
        self.calls.append(("plan", draft))
        inst = self._get(instance)
        self._check_services(services)
        spec = inst.spec
        if draft is not None:
            if draft.ref is not None:
                raise InvalidRequestError("'ref' needs a Git source", {"field": "ref"})
            if draft.parameters is not None:
                spec = values_replaced(spec, draft.parameters)
            if draft.patch is not None:
                check_limits(draft.patch)
                spec = merge_patch(spec, draft.patch)
            validate_spec(spec, self.schema_)
        before, after = Parameters.from_spec(inst.spec), Parameters.from_spec(spec)
        changes = []
        for name in services or SERVICES:
            old, new = effective(before, name), effective(after, name)
            if old == new:
                changes.append({"resource": f"{self.namespace}/Deployment/{name}",
                                "service": name, "action": "unchanged", "reason": "current"})
                continue
            text = "".join(difflib.unified_diff(
                yaml.safe_dump(self._redact(Caller(), old, "service")).splitlines(True),
                yaml.safe_dump(self._redact(Caller(), new, "service")).splitlines(True),
                "live", "planned"))
            changes.append({"resource": f"{self.namespace}/Deployment/{name}",
                            "service": name, "action": "update", "reason": "changed",
                            "diff": text})
        counts: dict[str, int] = {}
        for c in changes:
            counts[c["action"]] = counts.get(c["action"], 0) + 1
        body: dict[str, Any] = {"services": sorted(services),
                                "revision": f"generation/{inst.generation}",
                                "counts": counts, "changes": changes}
        if draft is not None:
            body["draft"] = True
        return self.plans.keep(body, inst.name, draft_digest(draft, services),
                               str(inst.version), namespace=self._ns(inst))

    def saved_plan(self, plan_id: str, scope: InstanceScope | None = None) -> dict[str, Any]:
        return self.plans.get(plan_id, lambda body: self._shown(body, scope))

    def suspend(self, instance: str | None, suspend: bool) -> dict[str, Any]:
        inst = self._get(instance)
        changed = (inst.spec.get("suspend") is True) != suspend
        if changed:
            self._bump(inst, {**inst.spec, "suspend": suspend})
        state = "suspended" if suspend else "resumed"
        return {"message": f"instance {inst.name} {state}" if changed else
                f"instance {inst.name} was already {state}", "instance": inst.name,
                "namespace": self.namespace, "suspended": suspend, "changed": changed}

    def parameters(self, instance: str | None, caller: Caller) -> Versioned:
        inst = self._get(instance)
        return Versioned(self._redact(caller, _copy(inst.spec)), str(inst.version))

    def _bump(self, inst: Instance, spec: dict[str, Any]) -> None:
        inst.version += 1
        if {k: v for k, v in spec.items()} != inst.spec:
            inst.generation += 1
        inst.spec = spec

    def _write(self, inst: Instance, spec: dict[str, Any], if_match: str | None) -> Versioned:
        with self._lock:  # one writer at a time, as the API server serializes writes
            validate_spec(spec, self.schema_)  # an invalid body is a 400 whatever If-Match
            check_version(if_match, str(inst.version))
            if spec != inst.spec:
                self._bump(inst, spec)
                inst.record()
            return Versioned({"message": "Parameters updated", "parameters": _copy(spec),
                              "revision": f"generation/{inst.generation}"},
                             str(inst.version))

    def replace_parameters(self, instance: str | None, spec: dict[str, Any], caller: Caller,
                           if_match: str | None = None) -> Versioned:
        self.calls.append(("replace", spec))
        validate_spec(spec, self.schema_)
        inst = self._get(instance)
        return self._write(inst, values_replaced(inst.spec, spec), if_match)

    def patch_parameters(self, instance: str | None, patch: dict[str, Any], caller: Caller,
                         if_match: str | None = None) -> Versioned:
        self.calls.append(("patch", patch))
        check_limits(patch)
        inst = self._get(instance)
        return self._write(inst, merge_patch(inst.spec, patch), if_match)

    def rollback(self, instance: str | None, revision: str, caller: Caller,
                 if_match: str | None = None) -> Versioned:
        self.calls.append(("rollback", revision))
        inst = self._get(instance)
        entry = next((h for h in inst.history if h["revision"] == revision), None)
        if entry is None:
            raise NotFoundError(f"no recorded parameters for revision {revision}",
                                {"revision": revision, "instance": inst.name})
        if entry["applied"] is False:
            raise ConflictError(f"revision {revision} was never applied",
                                {"revision": revision, "applied": False})
        written = self._write(inst, values_replaced(inst.spec, entry["parameters"]),
                              if_match)
        return Versioned({**written.body, "message": f"Parameters rolled back to {revision}",
                          "rolledBackTo": revision}, written.version)

    def schema(self) -> dict[str, Any]:
        return self.schema_

    def values(self, instance: str | None, caller: Caller) -> dict[str, Any]:
        inst = self._get(instance)
        params = Parameters.from_spec(inst.spec)
        return {"revision": f"generation/{inst.generation}",
                "services": {n: self._redact(caller, effective(params, n), "service")
                             for n in SERVICES}}

    def service_values(self, instance: str | None, service: str,
                       caller: Caller) -> Versioned:
        inst = self._get(instance)
        if service not in SERVICES:
            raise NotFoundError(f"unknown service: {service}",
                                {"service": service, "available": list(SERVICES)})
        own = Parameters.from_spec(inst.spec)
        return Versioned({"service": service,
                          "values": self._redact(caller, own.services.get(service, {}),
                                                 "service"),
                          "global": self._redact(caller, own.global_, "global"),
                          "effective": self._redact(caller, effective(own, service),
                                                    "service")}, str(inst.version))

    def history(self, instance: str | None, limit: int,
                caller: Caller) -> list[dict[str, Any]]:
        rows = [dict(h) for h in self._get(instance).history[:limit]]
        for row in rows:
            row["parameters"] = self._redact(caller, row["parameters"])
        return rows

    def git_push(self, ref: str, repositories: Sequence[str] = ()) -> dict[str, Any]:
        if ref and ref.removeprefix("refs/heads/") != self.git_ref:
            return {"message": f"ignored: push to {ref}, watching {self.git_ref}",
                    "triggered": False}
        self.git_pushes.append(ref)
        self.git_repositories.append(list(repositories))
        return {"message": "reconciliation triggered", "triggered": True, "ref": ref}


def _copy(spec: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(yaml.safe_dump(spec))  # type: ignore[no-any-return]
