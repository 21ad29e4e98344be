"""POST /api/up, /api/update, /api/down, /api/plan and GET /api/operations/{id}.

Synchronous up to a timeout: the answer carries a result per object. When the operation
outlives the timeout the answer is 202 with an operation id to follow, never a dropped
connection. Failures use the contract's envelope, e.g. `reconciliation_error` naming the
first failing object. up/update on a suspended instance answer `409 conflict` at once,
before an operation starts, unless `?force=true` (the engine checks again under its lock).
"""

from __future__ import annotations

import difflib
from typing import Any

import falcon
import yaml

from controller.api.common import (
    bool_param,
    float_param,
    instance_param,
    json_body,
    services_from,
)
from controller.errors import ReconciliationError
from controller.model.redaction import REDACTED
from controller.reconcile.engine import Report, SuspendedError, is_suspended
from controller.runtime.controller import Controller

MESSAGES = {
    "up": "Successfully deployed all manifests",
    "update": "Successfully updated all manifests",
    "down": "Successfully removed all manifests",
}
FAILURES = {"up": "Deployment failed", "update": "Update failed", "down": "Removal failed"}
CHANGED = "***REDACTED (changed)***"


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


class Deploy:
    """POST /api/up, /api/update, /api/down (?instance=, ?wait=false, ?timeout=s)."""

    def __init__(self, controller: Controller, op: str) -> None:
        self.controller = controller
        self.op = op

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        # Every input is parsed before anything runs: a bad parameter must be a 400 that
        # changed nothing, not an error reported after the services were applied.
        services = services_from(json_body(req, {}))
        instance = instance_param(req, self.controller.cfg.instance)
        timeout = float_param(req, "timeout", self.controller.cfg.api.sync_timeout, 0, 3600)
        if not bool_param(req, "wait", True):
            timeout = 0
        wait_healthy = bool_param(req, "waitHealthy", False)
        health_timeout = float_param(req, "healthTimeout", 120.0, 0, 3600)
        force = bool_param(req, "force", False) if self.op != "down" else False
        engine = self.controller.engine_for(instance)
        if self.op != "down" and not force:
            obj = engine.resource.get()
            if obj is not None and is_suspended(obj):
                raise SuspendedError(
                    f"instance {instance} is suspended: {self.op} applies nothing until it "
                    "is resumed (POST /api/resume); ?force=true applies this once anyway",
                    {"reason": "Suspended", "instance": instance,
                     "namespace": engine.resource.namespace})

        def run() -> Report:
            if self.op == "down":
                return engine.down(services)
            return getattr(engine, self.op)(services, force=force)  # type: ignore[no-any-return]

        op = self.controller.operations.start(self.op, services, instance, run)
        try:
            report = op.future.result(timeout=timeout) if timeout else None
        except TimeoutError:
            report = None
        if report is None:
            resp.status = falcon.HTTP_202
            resp.set_header("Location", f"/api/operations/{op.id}")
            resp.media = {"message": f"{self.op} is running; follow it at "
                                     f"/api/operations/{op.id}", **op.to_dict()}
            return
        body = report_body(report, self.op)
        body["operation"] = op.id
        if self.op != "down" and wait_healthy and instance == self.controller.cfg.instance:
            body["health"], settled = self._wait_healthy(report.services, health_timeout)
            if not settled:  # applied; health still on its way at the timeout
                resp.status = falcon.HTTP_202
                body["message"] = "applied; not every service is healthy yet"
        resp.media = body

    def _wait_healthy(self, services: list[str],
                      timeout: float) -> tuple[dict[str, Any], bool]:
        """Block until the services are healthy or suspended (True) or the timeout (False:
        202, still progressing). An unhealthy one fails the call with the reason of its
        first failing object, as the reference's ImagePullBackOff example."""
        result = self.controller.health.wait(services, timeout)
        health = {name: h.to_dict() for name, h in result.items()}
        bad = [h for h in result.values() if h.status == "unhealthy"]
        if bad:
            first = bad[0]
            resource, why = (first.failing[0][0], first.failing[0][1].reason) \
                if first.failing else (first.name, first.reason or first.status)
            raise ReconciliationError(FAILURES[self.op], {
                "resource": resource, "error": why, "service": first.name,
                "status": first.status, "message": first.message, "hint": first.hint,
                "health": health})
        return health, all(h.settled for h in result.values())


class OperationStatus:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def on_get(self, req: falcon.Request, resp: falcon.Response, op_id: str) -> None:
        op = self.controller.operations.get(op_id)
        if op is None:
            raise self.controller.operations.missing(op_id)
        resp.media = op.to_dict()


class Plan:
    """POST /api/plan: what up/update would do (server-side dry-run), with diffs."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        services = services_from(json_body(req, {}))
        engine = self.controller.engine_for(instance_param(req, self.controller.cfg.instance))
        report = engine.plan(services)
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
        resp.media = body


def diff(live: dict[str, Any] | None, after: dict[str, Any]) -> str:
    """A unified diff of the object as YAML, noise removed, Secret values redacted.

    A Secret value that changes is shown as changed (another marker), never by value: with
    one marker for both sides, a password change would plan an update with an empty diff.
    """
    before = yaml.safe_dump(_clean(live), sort_keys=True) if live else ""
    now = yaml.safe_dump(_clean(after, live), sort_keys=True)
    return "".join(difflib.unified_diff(before.splitlines(keepends=True),
                                        now.splitlines(keepends=True),
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
