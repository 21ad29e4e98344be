"""A real Controller's metrics against the local control plane, with the example app.

Each test runs a `Controller` with its own connection (so its requests are observed and its
writes guarded by the lease) and leader election on, and reads its registry the way a scrape
does: `/metrics` refreshes the scrape-time gauges, `get_sample_value` reads one series.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from falcon import testing
from prometheus_client import CollectorRegistry

from controller.adapters.metrics import KIND
from controller.config import ApiSettings, Config, EventSettings
from controller.runtime.controller import Controller
from controller.serving import app_for
from devcluster import kubelet
from tests.support.cluster import App
from tests.support.proxy import ApiProxy
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster


@contextmanager
def running(cfg: Config) -> Iterator[Controller]:
    assert cfg.leader.enabled
    controller = Controller(cfg).start()  # connects itself: observer and retries wired
    try:
        yield controller
    finally:
        controller.stop()
        controller.kube.close()


def sample(registry: CollectorRegistry, series: str, **labels: str) -> float:
    return registry.get_sample_value(series, labels) or 0.0


def obj(app: App) -> dict[str, str]:
    return {"kind": KIND, "name": "default", "namespace": app.namespace}


def successes(controller: Controller, app: App) -> float:
    return sample(controller.registry, "conductor_reconcile_total", **obj(app),
                  operation="reconcile", result="success")


def test_the_first_pass_is_measured(app: App) -> None:
    with running(app.cfg) as controller:
        reg = controller.registry
        wait_for(lambda: successes(controller, app) >= 1, timeout=60,
                 message="a successful first pass in the registry")
        first = controller.reports[0]  # later passes (woken by the watch) apply nothing
        assert first.ok and first.operation == "reconcile"
        applied = first.results.counts()["applied"]
        assert applied >= len(app.objects()) > 0
        assert sample(reg, "conductor_objects_total", **obj(app), outcome="applied") \
            >= applied
        assert sample(reg, "conductor_objects_total", **obj(app), outcome="failed") == 0
        assert sample(reg, "conductor_reconcile_duration_seconds_count", **obj(app),
                      operation="reconcile") >= 1
        # Every request the controller sent is timed by verb and code (an apply that
        # creates answers 201).
        assert sample(reg, "conductor_kube_request_duration_seconds_count",
                      verb="PATCH", code="201") > 0
        assert sum(sample(reg, "conductor_kube_request_duration_seconds_count",
                          verb="PATCH", code=code) for code in ("200", "201")) >= applied
        assert sample(reg, "conductor_kube_request_duration_seconds_count",
                      verb="GET", code="200") > 0
        assert sample(reg, "conductor_leader", **obj(app)) == 1
        assert controller.elector is not None
        lease = app.kube.get("coordination.k8s.io/v1", "Lease", "conductor-conductor-default",
                             app.namespace)
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == controller.elector.identity
        last = controller.engine.last
        assert last is not None and last.revision.startswith("generation/")
        assert sample(reg, "conductor_last_applied_revision_info", **obj(app),
                      revision=last.revision) == 1
        # Ready follows the conditions: applied *and* healthy. Pods run once the
        # (simulated) kubelet reports them; until then the app is only progressing.
        kubelet.settle(app.kube, app.namespace)
        wait_for(lambda: (kubelet.settle(app.kube, app.namespace), sample(
            reg, "conductor_reconcile_condition", **obj(app), type="Ready",
            status="True"))[1] == 1, timeout=60, message="Ready=True once the pods run")
        assert sample(reg, "conductor_drift_corrections_total", **obj(app),
                      service="redis") == 0

        # The scrape: gauges computed from memory, in the text format, on an open path.
        client = testing.TestClient(app_for(controller))
        resp = client.simulate_get("/metrics")
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/plain")
        for series in (
                f'conductor_leader{{kind="{KIND}",name="default",'
                f'namespace="{app.namespace}"}} 1.0',
                f'conductor_service_health{{kind="{KIND}",name="default",'
                f'namespace="{app.namespace}",service="redis",status=',
                'conductor_event_store_events ',
                'conductor_app_info{'):
            assert series in resp.text, series
        assert sample(reg, "conductor_event_store_events") > 0
        assert sample(reg, "conductor_api_requests_total", route="/metrics", method="GET",
                      code="200") == 1


def test_a_drift_correction_is_counted_per_service(app: App) -> None:
    with running(app.cfg) as controller:
        reg = controller.registry
        wait_for(lambda: successes(controller, app) >= 1, timeout=60, message="first pass")
        drift = {**obj(app), "service": "redis"}
        assert sample(reg, "conductor_drift_corrections_total", **drift) == 0
        # Two objects of the redis service changed behind the controller's back.
        seen = len(controller.reports)
        port = app.objects()[("Service", "redis")]["spec"]["ports"][0]["port"]
        kubectl = ["kubectl", "--kubeconfig", app.cluster.kubeconfig, "-n", app.namespace]
        subprocess.run([*kubectl, "scale", "deployment/redis", "--replicas=4"], check=True,
                       capture_output=True)
        subprocess.run([*kubectl, "patch", "service/redis", "-p", json.dumps(
            {"spec": {"ports": [{"port": port, "targetPort": 9999}]}})], check=True,
            capture_output=True)
        controller.loop.wake("test")

        def corrected() -> list[tuple[str, str]]:
            return sorted((r.key.kind, r.key.name) for report in controller.reports[seen:]
                          for r in report.results.items if r.reason == "drift")
        # One pass or two: under load a pass (the watch's wake-up, or the interval) may
        # land between the two edits and correct the first alone. Each object is
        # corrected once, whichever pass it was.
        both = [("Deployment", "redis"), ("Service", "redis")]

        def both_corrected() -> bool:
            found = corrected()
            assert set(found) == set(both), found  # shown on a timeout
            return True
        wait_for(both_corrected, timeout=30, message="the passes that correct the drift")
        assert corrected() == both
        # One correction per object re-applied, labelled with its service (the report is
        # kept just before it is measured: poll).
        wait_for(lambda: sample(reg, "conductor_drift_corrections_total", **drift) == 2,
                 timeout=10, message="two drift corrections of redis counted")
        assert sample(reg, "conductor_drift_corrections_total", **obj(app),
                      service="frontend") == 0
        objects = app.objects()
        assert objects[("Deployment", "redis")]["spec"]["replicas"] == 1
        assert objects[("Service", "redis")]["spec"]["ports"][0]["targetPort"] != 9999
        # A pass with nothing drifted counts nothing more.
        done = successes(controller, app)
        controller.loop.wake("test")
        wait_for(lambda: successes(controller, app) > done, timeout=30,
                 message="one more pass")
        assert sample(reg, "conductor_drift_corrections_total", **drift) == 2


def test_transient_failures_count_as_retries(app: App, tmp_path: Path) -> None:
    faulted: set[str] = set()
    lock = threading.Lock()

    def first_patch_fails(method: str, path: str, n: int) -> str | None:
        """Every object's first PATCH answers 503; its retry goes through."""
        if method != "PATCH" or "dryRun" in path:
            return None
        with lock:
            if path in faulted:
                return None
            faulted.add(path)
        return "503"

    with ApiProxy(app.cluster.kubeconfig, tmp_path, first_patch_fails) as proxy:
        cfg = replace(app.cfg, kubeconfig=str(proxy.kubeconfig))
        with running(cfg) as controller:
            reg = controller.registry
            wait_for(lambda: successes(controller, app) >= 1, timeout=60,
                     message="a successful first pass despite the 503s")
            injected = proxy.stats.faults["503"]
            assert injected >= len(app.objects())
            assert sample(reg, "conductor_kube_request_retries_total", verb="PATCH",
                          code="503") == injected
            assert sample(reg, "conductor_kube_request_duration_seconds_count",
                          verb="PATCH", code="503") == injected
            assert sample(reg, "conductor_objects_total", **obj(app), outcome="failed") == 0
            # Nothing else was retried: only the faults we injected.
            retried = {(s.labels["verb"], s.labels["code"])
                       for f in reg.collect() if f.name == "conductor_kube_request_retries"
                       for s in f.samples if s.name.endswith("_total")}
            assert retried == {("PATCH", "503")}
    assert ("Deployment", "redis") in app.objects()



def test_an_unusable_events_file_degrades_loudly_and_reconciling_goes_on(
        app: App, tmp_path: Path) -> None:
    """Before: a corrupt events file stopped the controller with a traceback that did not
    name it (or booted, and /api/parameters/history answered 500)."""
    path = tmp_path / "events.db"
    path.write_bytes(b"not a database at all\n" * 200)
    cfg = replace(app.cfg, events=EventSettings(path=path), api=ApiSettings(auth=False))
    controller = Controller(cfg).start()
    try:
        wait_for(lambda: controller.engine.last is not None, timeout=60,
                 message="the first pass")
        last = controller.engine.last
        assert last is not None and last.ok, last.summary() if last else None
        client = testing.TestClient(app_for(controller))
        store = client.simulate_get("/api/status").json["eventStore"]
        assert store["status"] == "degraded" and store["path"] == str(path)
        assert "not a database" in store["error"] and store["hint"]
        metrics = client.simulate_get("/metrics").text
        assert "conductor_event_store_degraded 1.0" in metrics
        history = client.simulate_get("/api/parameters/history")
        assert history.status_code == 200, history.text
        wait_for(lambda: client.simulate_get("/api/parameters/history").json["history"][0]
                 ["applied"], timeout=10, message="the first pass recorded as applied")
        # Said where operators look: an event (and a Kubernetes Event), once.
        wait_for(lambda: [e for e in client.simulate_get("/api/events?type=warning")
                          .json["events"] if e["reason"] == "EventStoreUnusable"],
                 timeout=10, message="the EventStoreUnusable event")
        wait_for(lambda: [e for e in app.kube.list("v1", "Event", app.namespace)[0]
                          if e.get("reason") == "EventStoreUnusable"], timeout=10,
                 message="the Kubernetes Event on the DeploymentParameters object")
    finally:
        controller.stop()
    assert path.read_bytes().startswith(b"not a database")  # kept for inspection
