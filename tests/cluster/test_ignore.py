"""Ignore rules (issue 11 part 4) on the real control plane: conductor does not fight a
second writer over a field `spec.ignore` leaves to it, and still converges the rest.

The writer is HPA-like: it scales the Deployment through the scale subresource, as a
HorizontalPodAutoscaler does (on a 1.20 API server that write leaves the field's
ownership with whoever applied it last, the hard case), every two seconds for 30 s.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from controller.adapters.kube import Kube
from tests.support.api import Api
from tests.support.cluster import App
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

RULE = {"service": "redis", "kind": "Deployment", "name": "redis",
        "paths": ["/spec/replicas"]}


def _drift_corrections(api: Api) -> float:
    registry = api.controller.registry
    return sum(s.value for m in registry.collect() for s in m.samples
               if s.name == "conductor_drift_corrections_total")


def _owners_of_replicas(body: dict[str, Any]) -> set[str]:
    return {e["manager"] for e in body["metadata"].get("managedFields") or []
            if "f:replicas" in (e.get("fieldsV1") or {}).get("f:spec", {})}


def _scale(kube: Kube, app: App, replicas: int) -> None:
    kube.patch("apps/v1", "Deployment", "redis", {"spec": {"replicas": replicas}},
               app.namespace, subresource="scale")


def _env(body: dict[str, Any]) -> dict[str, str]:
    container = body["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container.get("env") or []}


def test_an_hpa_like_writer_is_not_fought(api: Api, kube: Kube, current_crd: None) -> None:
    app = api.app
    controller = api.controller
    redis = app.objects()[("Deployment", "redis")]
    assert redis["spec"]["replicas"] == 1 and "conductor" in _owners_of_replicas(redis)

    # The rule arrives after the create: conductor owns replicas and must hand them over.
    passes = controller.loop.passes
    app.patch_spec({"ignore": [RULE]})
    wait_for(lambda: controller.loop.passes > passes and controller.engine.last is not None
             and controller.engine.last.ok, timeout=60, message="a pass with the rule")
    wait_for(lambda: "conductor" not in _owners_of_replicas(
        app.objects()[("Deployment", "redis")]), timeout=60,
        message="conductor no longer owning spec.replicas")
    assert app.objects()[("Deployment", "redis")]["spec"]["replicas"] == 1  # kept, not reset

    drift_before = _drift_corrections(api)
    deadline = time.monotonic() + 30
    value, changed_env = 1, False
    while time.monotonic() < deadline:  # bounded: 30 s of an autoscaler at work
        value = 2 + value % 3
        _scale(kube, app, value)
        passes = controller.loop.passes
        controller.loop.wake("test")
        if not changed_env and deadline - time.monotonic() < 20:
            # Another field of the same object still converges meanwhile.
            app.patch_spec({"services": {"redis": {"env": {"MODE": "autoscaled"}}}})
            changed_env = True
        wait_for(lambda: controller.loop.passes > passes, timeout=30,  # noqa: B023
                 message="a pass during the writer's loop")
        live = app.objects()[("Deployment", "redis")]
        assert live["spec"]["replicas"] == value, "conductor wrote replicas back"
        assert "conductor" not in _owners_of_replicas(live)
        last = controller.engine.last
        assert last is not None and last.ok, last.summary() if last else None
        assert not [r for r in last.results.items if r.reason == "drift"], last.summary()
        time.sleep(2)  # the writer's own period, not a wait for conductor

    assert _drift_corrections(api) == drift_before

    def env_applied() -> dict[str, Any] | None:
        body = app.objects()[("Deployment", "redis")]
        return body if _env(body).get("MODE") == "autoscaled" else None

    live = wait_for(env_applied, timeout=60, message="the env change applied")
    assert live["spec"]["replicas"] == value
    plan = api.client.simulate_post("/api/plan", json={"services": ["redis"]})
    assert plan.status_code == 200, plan.text
    assert {"resource": f"{app.namespace}/Deployment/redis", "service": "redis",
            "paths": ["/spec/replicas"]} in plan.json["ignored"]
    assert all(c["action"] == "unchanged" for c in plan.json["changes"]
               if c["resource"].endswith("/Deployment/redis")), plan.json
