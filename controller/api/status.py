"""Probes, the controller's status and its metrics: what operators and Kubernetes poll."""

from __future__ import annotations

from typing import Any

import falcon
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controller.adapters import requirements
from controller.runtime.controller import Controller


class Healthz:
    """Liveness: the process answers. Nothing here may depend on the API server."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class Readyz:
    """Readiness: started, and the API server answering (a replica that cannot reach it
    can neither reconcile nor serve current state). Reports the role, from the lease's
    clock (a leader past its renew deadline says false at once); followers are ready too,
    since every replica serves reads."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        c = self.controller
        body: dict[str, Any] = {"status": "ready", "leader": c.is_leader(),
                                "holder": c.leader_identity()}
        if not c.started.is_set():
            resp.status = falcon.HTTP_503
            body["status"] = "starting"
        else:
            body["apiServer"] = c.api_server()
            if not body["apiServer"]["reachable"]:
                resp.status = falcon.HTTP_503
                body["status"] = "apiserver-unreachable"
        resp.media = body


class Status:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.controller.status()


class MetricsResource:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        # Scrape-time gauges are a registered collector (metrics.LiveGauges): fresh as is.
        resp.content_type = CONTENT_TYPE_LATEST
        resp.data = generate_latest(self.controller.registry)


class Requirements:
    """GET /api/cluster/requirements: the cluster against the manifests' requirements."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        engine = self.controller.engine
        snap = engine.current()
        resp.media = requirements.check(self.controller.kube, snap.manifest_root)
