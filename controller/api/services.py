"""The services endpoints, answered from memory: the health monitor's watched state.

No request here calls the API server: health comes from the watches, the list of services
from the manifests and the last pass, events from the local store (all behind the
service). `?instance=` answers for another DeploymentParameters object in the namespace
(watched from its first request; an instance that does not exist is a 404 naming it).
"""

from __future__ import annotations

from typing import Any

import falcon

from controller.api.common import instance_param
from controller.runtime.service import Service


class _Base:
    def __init__(self, service: Service) -> None:
        self.service = service


class ServicesHealth(_Base):
    """GET /api/services/health: the contract's shape, plus reasons and hints when failing.

    Polled by dashboards, agents and probes: answered on the event loop from the health
    monitor's published view when it is current (`on_get_now`, see api/offload.py), else
    on the pool, where the monitor may compute it or wait for its first listing."""

    def on_get_now(self, req: falcon.Request, resp: falcon.Response) -> bool:
        services = self.service.services_now(instance_param(req))
        if services is None:
            return False
        resp.media = self.shape(services)
        return True

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.shape(self.service.services(instance_param(req)))

    def shape(self, services: list[dict[str, Any]]) -> dict[str, Any]:
        return {"services": services}


class ServiceList(ServicesHealth):
    """GET /api/services: every service, its namespace, whether deployed, its status."""

    def shape(self, services: list[dict[str, Any]]) -> dict[str, Any]:
        return {"services": [
            {"name": h["name"], "namespace": h["namespace"], "deployed": h["status"] != "down",
             "status": h["status"], "lastChecked": h["lastChecked"]} for h in services]}


class ServiceDetail(_Base):
    """GET /api/services/{name}: objects with their health, reasons, recent events."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        resp.media = self.service.service_detail(instance_param(req), name)
