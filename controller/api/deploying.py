"""POST /api/up, /api/update, /api/down, /api/plan, GET /api/plans/{id} and
GET /api/operations/{id}.

Synchronous up to a timeout: the answer carries a result per object. When the operation
outlives the timeout the answer is 202 with an operation id to follow, never a dropped
connection. Failures use the contract's envelope, e.g. `reconciliation_error` naming the
first failing object. up/update on a suspended instance answer `409 conflict` at once,
unless `?force=true`. With `If-Match` the parameters must still be at that version (412
otherwise). A plan may be of a draft (`parameters`, `patch`, or with Git a `ref`): it is
planned, never written. What runs and how is the service's (runtime/service.py).
"""

from __future__ import annotations

from typing import Any

import falcon

from controller.api.common import (
    bool_param,
    float_param,
    if_match,
    instance_param,
    json_body,
    services_from,
)
from controller.api.security import scope_of
from controller.errors import InvalidRequestError
from controller.runtime.service import DeployOp, DeployRequest, Draft, Service

DRAFT_FIELDS = ("parameters", "patch", "ref")


class Deploy:
    """POST /api/up, /api/update, /api/down (?instance=, ?wait=false, ?timeout=s)."""

    def __init__(self, service: Service, op: DeployOp) -> None:
        self.service = service
        self.op = op

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        # Every input is parsed before anything runs: a bad parameter must be a 400 that
        # changed nothing, not an error reported after the services were applied.
        services = services_from(json_body(req, {}))
        instance = instance_param(req)
        timeout: float | None = None
        if req.get_param("timeout") is not None:
            timeout = float_param(req, "timeout", 0, 0, 3600)
        if not bool_param(req, "wait", True):
            timeout = 0
        wait_healthy = bool_param(req, "waitHealthy", False)
        health_timeout = float_param(req, "healthTimeout", 120.0, 0, 3600)
        force = bool_param(req, "force", False) if self.op != "down" else False
        result = self.service.deploy(DeployRequest(
            self.op, instance, tuple(services), force=force, timeout=timeout,
            wait_healthy=wait_healthy, health_timeout=health_timeout, if_match=if_match(req)))
        if result.accepted:
            resp.status = falcon.HTTP_202
        if result.location:
            resp.set_header("Location", result.location)
        resp.media = result.body


class OperationStatus:
    def __init__(self, service: Service) -> None:
        self.service = service

    def on_get(self, req: falcon.Request, resp: falcon.Response, op_id: str) -> None:
        # Another instance's operation is a 404 to a limited token, as an unknown id.
        resp.media = self.service.operation(op_id, scope_of(req))


def draft_from(body: dict[str, Any]) -> Draft | None:
    """The draft of a plan body, shapes checked (values are the service's to validate)."""
    if not any(k in body for k in DRAFT_FIELDS):
        return None
    if "parameters" in body and "patch" in body:
        raise InvalidRequestError("give either 'parameters' (the whole spec) or 'patch' (a "
                                  "merge patch on the current spec), not both",
                                  {"fields": ["parameters", "patch"]})
    for name in ("parameters", "patch"):
        if name in body:
            check_spec_shape(body[name], name)
    ref = body.get("ref")
    if "ref" in body and (not isinstance(ref, str) or not ref.strip() or len(ref) > 255):
        raise InvalidRequestError("'ref' must be a Git branch, tag or commit",
                                  {"field": "ref"})
    return Draft(parameters=body.get("parameters"), patch=body.get("patch"), ref=ref)


def check_spec_shape(spec: Any, field: str = "") -> dict[str, Any]:
    """A parameters body (or draft): an object of `global` and/or `services` only."""
    where = f"'{field}' must be" if field else "request body must be"
    allowed = ["global", "services"]
    if not isinstance(spec, dict):
        raise InvalidRequestError(f"{where} a JSON object with 'global' and/or 'services'",
                                  {"allowed": allowed, **({"field": field} if field else {})})
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise InvalidRequestError(f"unknown top-level field(s): {', '.join(unknown)[:200]}",
                                  {"fields": unknown[:20], "allowed": allowed,
                                   **({"field": field} if field else {})})
    return spec


class Plan:
    """POST /api/plan: what up/update would do (server-side dry-run), with diffs; of the
    parameters in force, or of a draft. Kept for a while under its planId."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = json_body(req, {})
        services = services_from(body, ("services", *DRAFT_FIELDS))
        draft = draft_from(body)
        resp.media = self.service.plan(instance_param(req), services, draft)


class SavedPlan:
    """GET /api/plans/{plan_id}: a plan's answer again, until it expires (404 after)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def on_get(self, req: falcon.Request, resp: falcon.Response, plan_id: str) -> None:
        resp.media = self.service.saved_plan(plan_id, scope_of(req))
