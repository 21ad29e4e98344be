"""Suspend and resume (issue 11 part 4) on the real control plane, with the example app.

A suspended instance still plans every pass (drift is reported) but applies and prunes
nothing; resuming applies everything that waited in one pass. The API answers 409 to
up/update on a suspended instance unless `?force=true`.
"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from controller.reconcile.engine import SuspendedError
from tests.support.api import Api, envelope
from tests.support.cluster import App
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster


def _scale(app: App, name: str, replicas: int) -> None:
    subprocess.run(["kubectl", "--kubeconfig", app.cluster.kubeconfig, "-n", app.namespace,
                    "scale", f"deployment/{name}", f"--replicas={replicas}"], check=True,
                   capture_output=True)


def _redis(app: App) -> dict[str, Any]:
    return app.objects()[("Deployment", "redis")]


def _env(body: dict[str, Any]) -> dict[str, str]:
    container = body["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container.get("env") or []}


def _ready(app: App) -> dict[str, Any]:
    return next(c for c in app.resource()["status"]["conditions"] if c["type"] == "Ready")


def test_suspended_instance_applies_nothing_and_resume_applies_all(
        app: App, current_crd: None) -> None:
    engine = app.engine()
    assert engine.up().ok
    app.patch_spec({"suspend": True})
    _scale(app, "redis", 3)
    app.patch_spec({"services": {"redis": {"env": {"MODE": "suspended-test"}}}})

    report = engine.reconcile()
    assert report.ok and report.suspended, report.summary()
    assert report.results.counts()["applied"] == 0
    assert report.results.counts()["deleted"] == 0
    pending = {(p["resource"], p["reason"]) for p in report.pending()}
    assert (f"{app.namespace}/Deployment/redis", "changed") in pending, pending
    assert report.to_dict()["suspended"] is True
    redis = _redis(app)
    assert redis["spec"]["replicas"] == 3 and "MODE" not in _env(redis)
    assert (_ready(app)["status"], _ready(app)["reason"]) == ("False", "Suspended")

    # up/update refuse (nothing recorded as a failure), unless forced.
    refused = engine.update(["redis"])
    assert isinstance(refused.error, SuspendedError) and refused.error.code == "conflict"
    assert _ready(app)["reason"] == "Suspended"
    assert _redis(app)["spec"]["replicas"] == 3

    app.patch_spec({"suspend": False})
    resumed = engine.reconcile()
    assert resumed.ok and not resumed.suspended, resumed.summary()
    applied = [r for r in resumed.results.items if r.outcome == "applied"]
    assert [(r.key.kind, r.key.name) for r in applied] == [("Deployment", "redis")]
    redis = _redis(app)
    assert redis["spec"]["replicas"] == 1 and _env(redis) == {"MODE": "suspended-test"}
    assert _ready(app)["reason"] != "Suspended"


def test_api_suspend_resume_and_409(api: Api, current_crd: None) -> None:
    app = api.app
    done = api.client.simulate_post("/api/suspend", json={})
    assert done.status_code == 200, done.text
    assert done.json["suspended"] is True and done.json["changed"] is True
    again = api.client.simulate_post("/api/suspend")
    assert again.status_code == 200 and again.json["changed"] is False
    assert app.resource()["spec"]["suspend"] is True

    _scale(app, "redis", 2)
    for op in ("up", "update"):
        err = envelope(api.client.simulate_post(f"/api/{op}", json={"services": ["redis"]}),
                       409, "conflict")
        assert err["reason"] == "Suspended"
    # The loop's passes (woken by the suspension) leave the drift alone and say so.
    wait_for(lambda: _ready(app)["reason"] == "Suspended", message="Ready=False Suspended")
    assert _redis(app)["spec"]["replicas"] == 2
    plan = api.client.simulate_post("/api/plan", json={"services": ["redis"]})
    assert plan.status_code == 200 and plan.json["suspended"] is True
    assert any(c["reason"] == "drift" for c in plan.json["changes"]), plan.json

    forced = api.client.simulate_post("/api/update", json={"services": ["redis"]},
                                      params={"force": "true"})
    assert forced.status_code == 200, forced.text
    assert _redis(app)["spec"]["replicas"] == 1
    assert app.resource()["spec"]["suspend"] is True  # forced once, still suspended

    bad = api.client.simulate_post("/api/resume", json={"now": True})
    envelope(bad, 400, "invalid_request")
    assert app.resource()["spec"]["suspend"] is True
    resumed = api.client.simulate_post("/api/resume")
    assert resumed.status_code == 200 and resumed.json["suspended"] is False
    assert app.resource()["spec"]["suspend"] is False
    wait_for(lambda: _ready(app)["reason"] != "Suspended", timeout=60,
             message="Ready no longer Suspended after resume")
