"""The services endpoints, answered from memory: the health monitor's watched state.

No request here calls the API server: health comes from the watches, the list of services
from the manifests and the last pass, events from the local store. `?instance=` answers for
another DeploymentParameters object in the namespace (watched from its first request; an
instance that does not exist is a 404 naming it).
"""

from __future__ import annotations

import falcon

from controller.api.common import instance_param
from controller.runtime.controller import Controller
from controller.runtime.observing import HealthMonitor


class _Base:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def _monitor(self, req: falcon.Request) -> tuple[str, HealthMonitor]:
        instance = instance_param(req, self.controller.cfg.instance)
        return instance, self.controller.health_for(instance)  # NotFoundError if missing


class ServiceList(_Base):
    """GET /api/services: every service, its namespace, whether deployed, its status."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _, monitor = self._monitor(req)
        resp.media = {"services": [
            {"name": h.name, "namespace": h.namespace, "deployed": h.status != "down",
             "status": h.status, "lastChecked": h.last_checked} for h in monitor.services()]}


class ServicesHealth(_Base):
    """GET /api/services/health: the contract's shape, plus reasons and hints when failing."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _, monitor = self._monitor(req)
        resp.media = {"services": [h.to_dict() for h in monitor.services()]}


class ServiceDetail(_Base):
    """GET /api/services/{name}: objects with their health, reasons, recent events."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        instance, monitor = self._monitor(req)
        health = monitor.service(name)  # NotFoundError for an unknown service
        keys = monitor.objects(name)
        objects = [{"resource": str(key), "kind": key.kind, "name": key.name,
                    "namespace": key.namespace, **h.to_dict()} for key, h in keys]
        if instance == self.controller.cfg.instance:
            events = self.controller.events.query(service=name, limit=20)
        else:
            # Events carry the service, not the instance: another instance's are found by
            # its own objects, so ours (same service names) do not show up here.
            found = [e for key, _ in keys
                     for e in self.controller.events.query(resource=str(key), limit=20)]
            events = sorted(found, key=lambda e: e.id, reverse=True)[:20]
        resp.media = {"name": name, "namespace": health.namespace, "instance": instance,
                      "health": health.to_dict(), "objects": objects,
                      "events": [e.to_dict() for e in events]}
