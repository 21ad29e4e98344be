"""Falcon resources: thin nouns that read the controller's state or call the engine.

No logic lives here beyond request parsing and response shaping; the engine decides, the
error handlers in api/errors.py shape every failure.
"""

from __future__ import annotations

import json
from typing import Any

import falcon

from controller import rendering
from controller.engine import Report
from controller.errors import ConflictError, InvalidRequestError, ReconciliationError
from controller.main import Controller
from controller.parameters import validate_spec

MESSAGES = {
    "up": "Successfully deployed all manifests",
    "update": "Successfully updated all manifests",
    "down": "Successfully removed all manifests",
}


def json_body(req: falcon.Request, default: Any = None) -> Any:
    """The request body as JSON, whatever Content-Type says.

    The reference's own examples send JSON with `curl -d` and no header, which curl labels
    form-urlencoded; reading it as a form would turn `{"services": ["a"]}` into an empty
    selection, i.e. *every* service. An empty body gives `default`; anything that is not
    JSON is an invalid_request, never a guess.
    """
    raw = req.bounded_stream.read()
    if not raw.strip():
        return default
    try:
        return json.loads(raw)
    except ValueError as e:
        raise InvalidRequestError(f"request body is not valid JSON: {e}",
                                  {"content_type": req.content_type or ""}) from e


def services_from(req: falcon.Request) -> list[str]:
    body = json_body(req, {})
    if not isinstance(body, dict):
        raise InvalidRequestError("request body must be a JSON object",
                                  {"expected": {"services": ["name"]}})
    services = body.get("services", [])
    if services is None:
        services = []
    if not isinstance(services, list) or not all(isinstance(s, str) for s in services):
        raise InvalidRequestError("'services' must be a list of service names",
                                  {"field": "services", "got": services})
    return services


def report_or_raise(report: Report, op: str) -> dict[str, Any]:
    """The contract's success body, or its reconciliation_error with the failing object."""
    if report.error is not None:
        raise report.error
    failed = report.results.failed
    if failed:
        first = failed[0].error or {}
        raise ReconciliationError(
            {"up": "Deployment failed", "update": "Update failed",
             "down": "Removal failed"}.get(op, "Reconciliation failed"),
            {"resource": first.get("resource", str(failed[0].key)),
             "error": first.get("error", "Error"), "message": first.get("message", ""),
             "failed": len(failed), "results": [r.to_dict() for r in report.results.items]})
    return {"message": MESSAGES[op], "services": report.services,
            "revision": report.revision, "counts": report.results.counts(),
            "results": [r.to_dict() for r in report.results.items]}


class Healthz:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class Readyz:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        if not self.controller.started.is_set():
            resp.status = falcon.HTTP_503
            resp.media = {"status": "starting"}
            return
        resp.media = {"status": "ready"}


class Deploy:
    """POST /api/up, /api/update, /api/down."""

    def __init__(self, controller: Controller, op: str) -> None:
        self.controller = controller
        self.op = op

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        services = services_from(req)
        report = getattr(self.controller.engine, self.op)(services)
        resp.media = report_or_raise(report, self.op)


class Services:
    """GET /api/services: every service of the app, its namespace and deployed state."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        engine = self.controller.engine
        obj = engine.resource.read()
        down = engine.resource.down_services(obj)
        snap = engine.source.snapshot(obj)
        tree = rendering.load_tree(snap.manifest_root)
        from controller.parameters import Parameters, effective

        params = Parameters.from_spec(snap.spec)
        states = (obj.get("status") or {}).get("services") or {}
        resp.media = {"services": [
            {"name": name,
             "namespace": str(effective(params, name).get("namespace")
                              or engine.cfg.default_namespace),
             "deployed": name not in down,
             "state": (states.get(name) or {}).get("state", "down" if name in down
                                                   else "unknown")}
            for name in tree.names]}


class Parameters:
    """GET/POST /api/parameters: the DeploymentParameters spec (global + services)."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        engine = self.controller.engine
        obj = engine.resource.read()
        resp.media = engine.source.snapshot(obj).spec

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        engine = self.controller.engine
        spec = json_body(req)
        if not isinstance(spec, dict):
            raise InvalidRequestError("request body must be a JSON object with "
                                      "'global' and/or 'services'")
        unknown = sorted(set(spec) - {"global", "services"})
        if unknown:
            raise InvalidRequestError(f"unknown top-level field(s): {', '.join(unknown)}",
                                      {"fields": unknown, "allowed": ["global", "services"]})
        validate_spec(spec, engine.schema)
        if engine.cfg.source == "git":
            raise ConflictError("parameters come from Git; change them with a commit",
                                {"source": "git", "url": engine.cfg.git.url})
        obj = engine.resource.replace_spec(spec)
        resp.media = {"message": "Parameters updated", "parameters": obj.get("spec") or {},
                      "generation": obj["metadata"].get("generation")}
