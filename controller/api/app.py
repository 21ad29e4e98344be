"""`create_app(service, registry, settings)` wires resources to routes; gunicorn serves it.

Each resource gets the service (runtime/service.py: the one narrow interface to the
controller) or the one collaborator it needs (the event store, the metrics registry),
never the controller itself: the API can be built over an in-memory fake in tests.

The app is Falcon's ASGI app (served by gunicorn's asyncio worker, api/worker.py): a
connection costs no thread until its request has fully arrived, and event streams wait on
the loop. Resources stay synchronous and run on one bounded pool (api/offload.py); the
probes answer on the loop itself.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import falcon
import falcon.asgi
import falcon.media
from prometheus_client import CollectorRegistry

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
from controller.api.common import dump_json
from controller.api.offload import inline, offload
from controller.api.openapi import OpenAPI
from controller.config import ApiSettings, Config
from controller.runtime.service import Service

# Request metrics are labelled by method: only these, anything else is "other" (a client
# inventing methods must not grow /metrics without bound).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass(frozen=True)
class Settings:
    """What the API needs of the configuration, read before it is built: the API settings,
    the tokens as loaded at start (None: read the settings' file), and the Git webhook
    secret (None: webhooks are off)."""

    api: ApiSettings
    tokens: list[security.Token] | None = None
    webhook_secret: bytes | None = None

    @classmethod
    def from_config(cls, cfg: Config, tokens: list[security.Token] | None = None) -> Settings:
        """Raises ValueError naming the webhook secret file when it cannot be used."""
        return cls(cfg.api, tokens, webhooks.load_secret(cfg.git))


class RequestMeters(Protocol):
    """The request collectors (adapters/metrics.Metrics has them)."""

    @property
    def api_latency(self) -> Any: ...

    @property
    def api_requests(self) -> Any: ...


class RequestMetrics:
    """Count and time every request by route template (bounded label values).

    The labelled children are looked up once per label set and kept: `labels()` takes the
    metric's lock and builds its key on every call, a cost paid on every request."""

    def __init__(self, meters: RequestMeters) -> None:
        self.metrics = meters
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


STREAM_PATH = "/api/events/stream"


class App(falcon.asgi.App[Any, Any]):
    """Falcon's ASGI app, plus what a long response needs to know: whether its client is
    still there (`req.scope["conductor.gone"]`), and whether the server is stopping."""

    pool: ThreadPoolExecutor
    stream_pool: ThreadPoolExecutor
    draining: eventing.Draining

    async def __call__(  # type: ignore[override]
            self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        # Only a stream outlives its request: the others need no watch (an Event and a
        # wrapped `receive` on every request are a cost the short reads do not repay).
        if scope.get("type") != "http" or not scope.get("path", "").startswith(STREAM_PATH):
            await super().__call__(scope, receive, send)
            return
        gone = eventing.Gone()
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


def create_app(service: Service, registry: CollectorRegistry, settings: Settings,
               meters: RequestMeters | None = None) -> App:
    """The app over `service`; `registry` is what /metrics exposes, `meters` the request
    collectors registered in it (none: requests are not counted)."""
    api = settings.api
    counted = [RequestMetrics(meters)] if meters is not None else []
    app = App(middleware=[*counted, *security.middleware(api, settings.tokens, service)])
    app.req_options.strip_url_path_trailing_slash = True
    # Answers are encoded with orjson (common.dump_json); request bodies keep their own
    # strict parser (common.json_body).
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = falcon.media.JSONHandler(
        dumps=dump_json)
    app.pool = ThreadPoolExecutor(max_workers=api.threads, thread_name_prefix="api")
    # The streams' queries have their own two threads: hundreds of streams woken by one
    # commit queue there, never in front of other requests.
    app.stream_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="streams")
    app.draining = eventing.Draining()
    errors.install(app)
    routes(app, service, registry, settings, app.pool, app.draining, app.stream_pool)
    app.add_route("/openapi.json", inline(OpenAPI()))
    return app


def routes(app: falcon.asgi.App[Any, Any], s: Service, registry: CollectorRegistry,
           settings: Settings, pool: ThreadPoolExecutor, draining: eventing.Draining,
           stream_pool: ThreadPoolExecutor) -> None:
    def add(path: str, resource: object) -> None:
        app.add_route(path, offload(resource, pool))

    # Probes read memory only: on the loop, never queued behind long operations.
    app.add_route("/healthz", inline(status.Healthz()))
    app.add_route("/readyz", inline(status.Readyz(s)))
    add("/metrics", status.MetricsResource(registry))
    add("/api/status", status.Status(s))
    add("/api/services", services.ServiceList(s))
    add("/api/services/health", services.ServicesHealth(s))
    add("/api/services/{name}", services.ServiceDetail(s))
    add("/api/up", deploying.Deploy(s, "up"))
    add("/api/update", deploying.Deploy(s, "update"))
    add("/api/down", deploying.Deploy(s, "down"))
    add("/api/plan", deploying.Plan(s))
    add("/api/plans/{plan_id}", deploying.SavedPlan(s))
    add("/api/suspend", suspending.Suspend(s, suspend=True))
    add("/api/resume", suspending.Suspend(s, suspend=False))
    add("/api/operations/{op_id}", deploying.OperationStatus(s))
    add("/api/events", eventing.Events(s.events))
    add("/api/events/errors", eventing.Errors(s.events))
    app.add_route(STREAM_PATH, eventing.Stream(s.events, stream_pool, draining,
                                                        settings.api.max_streams))
    add("/api/events/{namespace}/{kind}/{name}", eventing.ForResource(s.events))
    add("/api/parameters", parameters.ParametersRoot(s))
    add("/api/parameters/instances", parameters.Instances(s))
    add("/api/instances", parameters.Instances(s))
    add("/api/whoami", status.WhoAmI())
    add("/api/parameters/schema", parameters.Schema(s))
    add("/api/parameters/values", parameters.Values(s))
    add("/api/parameters/history", parameters.HistoryList(s))
    add("/api/parameters/rollback", parameters.Rollback(s))
    add("/api/parameters/{service}", parameters.ServiceValues(s))
    add("/api/webhooks/git", webhooks.GitWebhook(s, settings.webhook_secret))
    add("/api/cluster/requirements", status.Requirements(s))
    ui.add_routes(app)  # the dashboard's static files, on the loop (memory only)
