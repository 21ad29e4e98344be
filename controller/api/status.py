"""Probes, the controller's status and its metrics: what operators and Kubernetes poll."""

from __future__ import annotations

import falcon
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from controller.api.security import scope_of
from controller.runtime.service import Service


class Healthz:
    """Liveness: the process answers. Nothing here may depend on the API server."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class Readyz:
    """Readiness: started, and the API server answering (a replica that cannot reach it
    can neither reconcile nor serve current state). Reports the role, from the lease's
    clock (a leader past its renew deadline says false at once); followers are ready too,
    since every replica serves reads. Answered on the loop: the service reads memory."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        ready, body = self.service.ready()
        if not ready:
            resp.status = falcon.HTTP_503
        resp.media = body


class Status:
    """GET /api/status: the controller's; a token limited to instances sees only what is
    controller-wide and which of its instances are here (see `Service.status`)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.service.status(scope_of(req))


class WhoAmI:
    """GET /api/whoami: the caller's token name, scopes and instance restriction, so a
    client (the dashboard) knows what it may do without trying a refused write."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        client = str(getattr(req.context, "client", "") or "")
        scopes: frozenset[str] = getattr(req.context, "scopes", frozenset())
        scope = scope_of(req)
        resp.media = {"token": client.removeprefix("token:") if client.startswith("token:")
                      else None, "scopes": sorted(scopes),
                      "instances": None if scope is None else scope.to_dict()}


class MetricsResource:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        # Scrape-time gauges are a registered collector (metrics.LiveGauges): fresh as is.
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(self.registry)


class Requirements:
    """GET /api/cluster/requirements: the cluster against the manifests' requirements."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.service.requirements()
