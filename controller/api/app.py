"""`create_app(controller)` wires resources to routes; the gunicorn worker calls it."""

from __future__ import annotations

import time
from typing import Any

import falcon

from controller.api import (
    deploying,
    errors,
    eventing,
    parameters,
    security,
    services,
    status,
    webhooks,
)
from controller.api.openapi import OpenAPI
from controller.main import Controller


class RequestMetrics:
    """Count and time every request by route template (bounded label values).

    The labelled children are looked up once per label set and kept: `labels()` takes the
    metric's lock and builds its key on every call, a cost paid on every request."""

    def __init__(self, controller: Controller) -> None:
        self.metrics = controller.metrics
        self._latency: dict[tuple[str, str], Any] = {}
        self._requests: dict[tuple[str, str, str], Any] = {}

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         req_succeeded: bool) -> None:
        route = req.uri_template or "unmatched"
        started = getattr(req.context, "started", None)
        if started is not None:
            key = (route, req.method)
            latency = self._latency.get(key)
            if latency is None:
                latency = self._latency.setdefault(key, self.metrics.api_latency.labels(
                    route=route, method=req.method))
            latency.observe(time.perf_counter() - started)
        counted = (route, req.method, str(resp.status)[:3])
        counter = self._requests.get(counted)
        if counter is None:
            counter = self._requests.setdefault(counted, self.metrics.api_requests.labels(
                *counted))
        counter.inc()


def create_app(controller: Controller) -> falcon.App[Any, Any]:
    app = falcon.App(middleware=[RequestMetrics(controller),
                                 *security.middleware(controller.cfg.api)])
    app.req_options.strip_url_path_trailing_slash = True
    errors.install(app)
    routes(app, controller)
    app.add_route("/openapi.json", OpenAPI())
    return app


def routes(app: falcon.App[Any, Any], c: Controller) -> None:
    app.add_route("/healthz", status.Healthz())
    app.add_route("/readyz", status.Readyz(c))
    app.add_route("/metrics", status.MetricsResource(c))
    app.add_route("/api/status", status.Status(c))
    app.add_route("/api/services", services.ServiceList(c))
    app.add_route("/api/services/health", services.ServicesHealth(c))
    app.add_route("/api/services/{name}", services.ServiceDetail(c))
    for op in ("up", "update", "down"):
        app.add_route(f"/api/{op}", deploying.Deploy(c, op))
    app.add_route("/api/plan", deploying.Plan(c))
    app.add_route("/api/operations/{op_id}", deploying.OperationStatus(c))
    app.add_route("/api/events", eventing.Events(c))
    app.add_route("/api/events/errors", eventing.Errors(c))
    app.add_route("/api/events/stream", eventing.Stream(c))
    app.add_route("/api/events/{namespace}/{kind}/{name}", eventing.ForResource(c))
    app.add_route("/api/parameters", parameters.ParametersRoot(c))
    app.add_route("/api/parameters/instances", parameters.Instances(c))
    app.add_route("/api/parameters/schema", parameters.Schema(c))
    app.add_route("/api/parameters/values", parameters.Values(c))
    app.add_route("/api/parameters/history", parameters.HistoryList(c))
    app.add_route("/api/parameters/rollback", parameters.Rollback(c))
    app.add_route("/api/parameters/{service}", parameters.ServiceValues(c))
    app.add_route("/api/webhooks/git", webhooks.GitWebhook(c))
    app.add_route("/api/cluster/requirements", status.Requirements(c))
