"""`create_app(controller)` wires resources to routes; the gunicorn worker serves it.

The app is Falcon's ASGI app (served by gunicorn's asyncio worker, api/worker.py): a
connection costs no thread until its request has fully arrived, and event streams wait on
the loop. Resources stay synchronous and run on one bounded pool (api/offload.py); the
probes answer on the loop itself.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import falcon
import falcon.asgi

from controller.api import (
    deploying,
    errors,
    eventing,
    parameters,
    security,
    services,
    status,
    suspending,
    ui,
    webhooks,
)
from controller.api.offload import inline, offload
from controller.api.openapi import OpenAPI
from controller.runtime.controller import Controller

# Request metrics are labelled by method: only these, anything else is "other" (a client
# inventing methods must not grow /metrics without bound).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetrics:
    """Count and time every request by route template (bounded label values).

    The labelled children are looked up once per label set and kept: `labels()` takes the
    metric's lock and builds its key on every call, a cost paid on every request."""

    def __init__(self, controller: Controller) -> None:
        self.metrics = controller.metrics
        self._latency: dict[tuple[str, str], Any] = {}
        self._requests: dict[tuple[str, str, str], Any] = {}

    async def process_request(self, req: falcon.asgi.Request,
                              resp: falcon.asgi.Response) -> None:
        req.context.started = time.perf_counter()

    async def process_response(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                               resource: Any, req_succeeded: bool) -> None:
        route = req.uri_template or "unmatched"
        method = req.method if req.method in KNOWN_METHODS else "other"
        started = getattr(req.context, "started", None)
        if started is not None:
            key = (route, method)
            latency = self._latency.get(key)
            if latency is None:
                latency = self._latency.setdefault(key, self.metrics.api_latency.labels(
                    route=route, method=method))
            latency.observe(time.perf_counter() - started)
        counted = (route, method, str(resp.status)[:3])
        counter = self._requests.get(counted)
        if counter is None:
            counter = self._requests.setdefault(counted, self.metrics.api_requests.labels(
                *counted))
        counter.inc()


class App(falcon.asgi.App[Any, Any]):
    """Falcon's ASGI app, plus what a long response needs to know: whether its client is
    still there (`req.scope["conductor.gone"]`), and whether the server is stopping."""

    pool: ThreadPoolExecutor
    stream_pool: ThreadPoolExecutor
    draining: eventing.Draining

    async def __call__(  # type: ignore[override]
            self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await super().__call__(scope, receive, send)
            return
        gone = asyncio.Event()
        scope["conductor.gone"] = gone

        async def watched() -> dict[str, Any]:
            message: dict[str, Any] = await receive()
            if message.get("type") == "http.disconnect":
                gone.set()
            return message

        await super().__call__(scope, watched, send)

    def on_draining(self) -> None:
        """The server is stopping: end the event streams now (called by the worker)."""
        self.draining.set()

    def close(self) -> None:
        self.draining.set()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.stream_pool.shutdown(wait=False, cancel_futures=True)


def create_app(controller: Controller, tokens: list[security.Token] | None = None) -> App:
    """The app; `tokens` as loaded before start (default: read the settings' file)."""
    api = controller.cfg.api
    app = App(middleware=[RequestMetrics(controller), *security.middleware(api, tokens)])
    app.req_options.strip_url_path_trailing_slash = True
    app.pool = ThreadPoolExecutor(max_workers=api.threads, thread_name_prefix="api")
    # The streams' queries have their own two threads: hundreds of streams woken by one
    # commit queue there, never in front of other requests.
    app.stream_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="streams")
    app.draining = eventing.Draining()
    errors.install(app)
    routes(app, controller, app.pool, app.draining, app.stream_pool)
    app.add_route("/openapi.json", inline(OpenAPI()))
    return app


def routes(app: falcon.asgi.App[Any, Any], c: Controller, pool: ThreadPoolExecutor,
           draining: eventing.Draining, stream_pool: ThreadPoolExecutor) -> None:
    def add(path: str, resource: object) -> None:
        app.add_route(path, offload(resource, pool))

    # Probes read memory only: on the loop, never queued behind long operations.
    app.add_route("/healthz", inline(status.Healthz()))
    app.add_route("/readyz", inline(status.Readyz(c)))
    add("/metrics", status.MetricsResource(c))
    add("/api/status", status.Status(c))
    add("/api/services", services.ServiceList(c))
    add("/api/services/health", services.ServicesHealth(c))
    add("/api/services/{name}", services.ServiceDetail(c))
    for op in ("up", "update", "down"):
        add(f"/api/{op}", deploying.Deploy(c, op))
    add("/api/plan", deploying.Plan(c))
    add("/api/suspend", suspending.Suspend(c, suspend=True))
    add("/api/resume", suspending.Suspend(c, suspend=False))
    add("/api/operations/{op_id}", deploying.OperationStatus(c))
    add("/api/events", eventing.Events(c))
    add("/api/events/errors", eventing.Errors(c))
    app.add_route("/api/events/stream", eventing.Stream(c, stream_pool, draining))
    add("/api/events/{namespace}/{kind}/{name}", eventing.ForResource(c))
    add("/api/parameters", parameters.ParametersRoot(c))
    add("/api/parameters/instances", parameters.Instances(c))
    add("/api/parameters/schema", parameters.Schema(c))
    add("/api/parameters/values", parameters.Values(c))
    add("/api/parameters/history", parameters.HistoryList(c))
    add("/api/parameters/rollback", parameters.Rollback(c))
    add("/api/parameters/{service}", parameters.ServiceValues(c))
    add("/api/webhooks/git", webhooks.GitWebhook(c))
    add("/api/cluster/requirements", status.Requirements(c))
    ui.add_routes(app)  # the dashboard's static files, on the loop (memory only)
