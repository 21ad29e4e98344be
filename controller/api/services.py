"""The services endpoints, answered from memory: the health monitor's watched state.

No request here calls the API server: health comes from the watches, the list of services
from the manifests and the last pass, events from the local store.
"""

from __future__ import annotations

import falcon

from controller.main import Controller


class ServiceList:
    """GET /api/services: every service, its namespace, whether deployed, its status."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        health = self.controller.health.services()
        resp.media = {"services": [
            {"name": h.name, "namespace": h.namespace, "deployed": h.status != "down",
             "status": h.status, "lastChecked": h.last_checked} for h in health]}


class ServicesHealth:
    """GET /api/services/health: the contract's shape, plus reasons and hints when failing."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"services": [h.to_dict() for h in self.controller.health.services()]}


class ServiceDetail:
    """GET /api/services/{name}: objects with their health, reasons, recent events."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        monitor = self.controller.health
        health = monitor.service(name)  # NotFoundError for an unknown service
        objects = [{"resource": str(key), "kind": key.kind, "name": key.name,
                    "namespace": key.namespace, **h.to_dict()}
                   for key, h in monitor.objects(name)]
        events = self.controller.events.query(service=name, limit=20)
        resp.media = {"name": name, "namespace": health.namespace, "health": health.to_dict(),
                      "objects": objects, "events": [e.to_dict() for e in events]}
