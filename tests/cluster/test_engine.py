"""The reconcile engine on the real control plane, with the example app."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.kube import Kube, KubeError
from controller.runtime.controller import Controller
from tests.support.cluster import App
from tests.support.proxy import ApiProxy
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

def _condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == kind)


def test_deploy_example_app(app: App) -> None:
    report = app.engine().up()
    assert report.ok, report.summary()
    objects = app.objects()
    for kind, name in [("Deployment", "frontend"), ("Service", "frontend"),
                       ("Deployment", "redis"), ("Service", "redis"),
                       ("StatefulSet", "postgres"), ("Service", "postgres"),
                       ("PersistentVolumeClaim", "postgres-data")]:
        assert (kind, name) in objects, sorted(objects)
    assert any(k == "Secret" for k, _ in objects)
    status = app.resource()["status"]
    assert _condition(app.resource(), "Ready")["status"] == "True"
    assert _condition(app.resource(), "Stalled")["status"] == "False"
    assert status["lastAppliedRevision"].startswith("generation/")
    assert {s["state"] for s in status["services"].values()} == {"deployed"}
    assert len(status["inventory"]) == len(report.results.items)
    # The controller manager acts on what we applied.
    wait_for(lambda: app.kube.list("apps/v1", "ReplicaSet", app.namespace)[0],
             message="ReplicaSets")


def test_noop_pass_makes_no_writes_and_no_per_object_gets(app: App, tmp_path: Path) -> None:
    assert app.engine().up().ok
    with ApiProxy(app.cluster.kubeconfig, tmp_path) as proxy:
        cfg = replace(app.cfg, kubeconfig=str(proxy.kubeconfig))
        kube = Kube.connect(cfg)
        engine = app.engine(cfg, kube)
        proxy.stats.reset()
        report = engine.reconcile()
        assert report.ok, report.summary()
        assert report.results.counts()["applied"] == 0
        assert proxy.stats.writes == 0, proxy.stats.log
        gets = [path for method, path, _ in proxy.stats.log if method == "GET"]
        single = [p for p in gets if "labelSelector=" not in p
                  and not p.endswith("/deploymentparameters/default")
                  and not p.rstrip("/").split("?")[0].endswith(("/v1", "/apps/v1",
                                                                 "/conductor.io/v1alpha1"))]
        assert single == [], single
        kube.close()


def test_parameter_change_applied_by_the_loop(app: App) -> None:
    controller = Controller(app.cfg).start()  # its own connection: it guards writes
    try:
        wait_for(lambda: ("Deployment", "redis") in app.objects(), timeout=30,
                 message="first pass")
        app.patch_spec({"services": {"redis": {"replicas": 3}}})
        wait_for(lambda: app.objects()[("Deployment", "redis")]["spec"]["replicas"] == 3,
                 timeout=20, message="the watch wakes the loop and the change is applied")
        wait_for(lambda: app.resource()["status"].get("observedGeneration")
                 == app.resource()["metadata"]["generation"], message="observedGeneration")
    finally:
        controller.stop()


def test_drift_is_corrected_in_the_next_pass(app: App) -> None:
    engine = app.engine()
    assert engine.up().ok
    subprocess.run(["kubectl", "--kubeconfig", app.cluster.kubeconfig, "-n", app.namespace,
                    "scale", "deployment/redis", "--replicas=4"], check=True,
                   capture_output=True)
    subprocess.run(["kubectl", "--kubeconfig", app.cluster.kubeconfig, "-n", app.namespace,
                    "patch", "service/frontend", "-p",
                    '{"spec":{"ports":[{"port":80,"targetPort":9999}]}}'],
                   check=True, capture_output=True)
    assert app.objects()[("Deployment", "redis")]["spec"]["replicas"] == 4
    report = engine.reconcile()
    assert report.ok, report.summary()
    corrected = {(r.key.kind, r.key.name): r.reason for r in report.results.items
                 if r.outcome == "applied"}
    assert corrected == {("Deployment", "redis"): "drift", ("Service", "frontend"): "drift"}
    objects = app.objects()
    assert objects[("Deployment", "redis")]["spec"]["replicas"] == 1
    assert [p["targetPort"] for p in objects[("Service", "frontend")]["spec"]["ports"]] \
        != [9999]


def test_removed_service_is_pruned_and_others_untouched(app: App) -> None:
    engine = app.engine()
    assert engine.up().ok
    before = app.versions()
    shutil.rmtree(app.root / "frontend")
    report = engine.reconcile()
    assert report.ok, report.summary()
    after = app.versions()
    assert ("Deployment", "frontend") not in after
    assert ("Service", "frontend") not in after
    for key, version in after.items():
        assert before[key] == version, key
    assert "frontend" not in {e["s"] for e in app.resource()["status"]["inventory"]}


def test_up_down_update_touch_only_their_service(app: App) -> None:
    engine = app.engine()
    assert engine.up().ok
    before = app.versions()
    others = {k: v for k, v in before.items() if not k[1].startswith("redis")}

    report = engine.down(["redis"])
    assert report.ok, report.summary()
    assert {r.outcome for r in report.results.items} == {"deleted"}
    after = app.versions()
    assert not [k for k in after if k[1].startswith("redis")]
    assert {k: after[k] for k in others} == others
    assert app.resource()["status"]["services"]["redis"]["state"] == "down"

    # The loop never brings back a service that is down.
    assert engine.reconcile().ok
    assert not [k for k in app.versions() if k[1].startswith("redis")]

    # update of redis while it is down: nothing (it stays down); of postgres: only postgres.
    app.patch_spec({"services": {"frontend": {"replicas": 3},
                                 "postgres": {"tag": "16.4"}}})
    report = engine.update(["postgres"])
    assert report.ok, report.summary()
    assert {r.service for r in report.results.items} <= {"postgres", "_shared"}
    objects = app.objects()
    assert objects[("Deployment", "frontend")]["spec"]["replicas"] == 2  # not yet
    containers = objects[("StatefulSet", "postgres")]["spec"]["template"]["spec"]["containers"]
    assert containers[0]["image"] == "postgres:16.4"

    others = {k: v for k, v in app.versions().items() if not k[1].startswith("redis")}
    report = engine.up(["redis"])
    assert report.ok
    now = app.versions()
    assert ("Deployment", "redis") in now
    assert {k: now[k] for k in others} == others
    # Idempotent: again changes nothing.
    again = engine.up(["redis"])
    assert again.results.counts()["applied"] == 0


def test_render_failure_applies_nothing_and_keeps_running_state(app: App) -> None:
    engine = app.engine()
    assert engine.up().ok
    before = app.versions()
    template = next((app.root / "redis").glob("*.yaml"))
    good = template.read_text()
    template.write_text(good + "\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n"
                        "  name: {{ service.no_such_value }}\n")
    app.patch_spec({"services": {"frontend": {"replicas": 3}}})  # would change frontend
    report = engine.reconcile()
    assert report.error is not None
    assert report.error.code == "validation_error"
    assert report.error.details["file"].startswith("redis/")
    assert "no_such_value" in report.error.message
    assert app.versions() == before
    obj = app.resource()
    assert _condition(obj, "Ready")["status"] == "False"
    assert _condition(obj, "Stalled")["status"] == "True"
    assert _condition(obj, "Stalled")["reason"] == "validation_error"

    template.write_text(good + "\n---\nkind: [unclosed\n")
    report = engine.reconcile()
    assert report.error is not None and report.error.code == "invalid_yaml"
    assert report.error.details["line"] > 0
    assert app.versions() == before

    template.write_text(good)
    report = engine.reconcile()
    assert report.ok
    assert app.objects()[("Deployment", "frontend")]["spec"]["replicas"] == 3
    assert _condition(app.resource(), "Ready")["status"] == "True"


def test_the_crd_schema_rejects_invalid_parameters_at_the_api_server(app: App) -> None:
    engine = app.engine()
    assert engine.up().ok
    before = app.versions()
    with pytest.raises(KubeError) as err:
        app.patch_spec({"services": {"redis": {"replicas": "many"}}})
    assert err.value.status == 422
    assert "spec.services.redis.replicas" in err.value.message
    assert engine.reconcile().ok
    assert app.versions() == before


def test_transient_api_failures_are_retried(app: App, tmp_path: Path) -> None:
    def flaky(method: str, path: str, n: int) -> str | None:
        if method == "PATCH" and "/status" not in path:
            return {0: "503", 1: "429", 2: "drop"}.get(n % 5)
        return None

    with ApiProxy(app.cluster.kubeconfig, tmp_path, flaky) as proxy:
        cfg = replace(app.cfg, kubeconfig=str(proxy.kubeconfig))
        kube = Kube.connect(cfg)
        report = app.engine(cfg, kube).up()
        assert report.ok, report.summary()
        assert proxy.stats.faults["503"] and proxy.stats.faults["429"]
        assert proxy.stats.faults["drop"]
        kube.close()
    assert ("Deployment", "redis") in app.objects()


def test_a_422_is_reported_once_and_not_retried(app: App, tmp_path: Path) -> None:
    (app.root / "broken").mkdir()
    (app.root / "broken" / "service.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: broken\n"
        "spec:\n  ports:\n  - port: 70000\n    protocol: TCP\n")
    with ApiProxy(app.cluster.kubeconfig, tmp_path) as proxy:
        cfg = replace(app.cfg, kubeconfig=str(proxy.kubeconfig))
        kube = Kube.connect(cfg)
        report = app.engine(cfg, kube).up()
        kube.close()
    failed = report.results.failed
    assert [(r.key.kind, r.key.name) for r in failed] == [("Service", "broken")]
    assert failed[0].error is not None and failed[0].error["status"] == 422
    sent = [p for m, p, _ in proxy.stats.log if m == "PATCH" and "/services/broken" in p]
    assert len(sent) == 1 and "dryRun=All" in sent[0]  # refused by the dry-run, once
    # A refusal before applying applies nothing (issue 9 finding 10: this used to roll
    # out every other service); the failure is in status.
    assert report.error is not None and report.error.code == "validation_error"
    assert app.objects() == {}
    assert app.resource()["status"]["services"]["broken"]["state"] == "failed"


CRD_SERVICE = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.{{ name }}.example.com
spec:
  group: {{ name }}.example.com
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {size: {type: integer}}}
---
apiVersion: {{ name }}.example.com/v1
kind: Gadget
metadata:
  name: one
spec:
  size: {{ service.size | default(1) }}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: {{ global.namespace }}-gadget-reader
rules:
- apiGroups: ["{{ name }}.example.com"]
  resources: [gadgets]
  verbs: [get, list, watch]
"""


def test_custom_resources_and_cluster_scoped_objects(app: App) -> None:
    group = f"g{app.namespace[-6:]}"  # a CRD group per test: CRDs are cluster-wide
    (app.root / group).mkdir()
    (app.root / group / "objects.yaml").write_text(CRD_SERVICE)
    engine = app.engine()
    report = engine.up()
    assert report.ok, report.summary()
    gadget = app.kube.get(f"{group}.example.com/v1", "Gadget", "one", app.namespace)
    assert gadget is not None and gadget["spec"] == {"size": 1}
    role = f"{app.namespace}-gadget-reader"
    assert app.kube.get("rbac.authorization.k8s.io/v1", "ClusterRole", role) is not None
    # Order: the CRD (phase 0) was applied before the custom resource that needs it.
    applied = [str(r.key) for r in report.results.items if r.outcome == "applied"]
    assert applied.index(f"-/CustomResourceDefinition/gadgets.{group}.example.com") < \
        applied.index(f"{app.namespace}/Gadget/one")
    assert engine.reconcile().results.counts()["applied"] == 0
    # Removing the service prunes all three, the custom resource before its CRD.
    shutil.rmtree(app.root / group)
    report = engine.reconcile()
    assert report.ok, report.summary()
    deleted = [str(r.key) for r in report.results.items if r.outcome == "deleted"]
    assert deleted.index(f"{app.namespace}/Gadget/one") < \
        deleted.index(f"-/CustomResourceDefinition/gadgets.{group}.example.com")
    assert app.kube.get("rbac.authorization.k8s.io/v1", "ClusterRole", role) is None


def test_conflict_policy_force_or_fail(app: App) -> None:
    engine = app.engine()
    assert engine.up().ok
    app.take_replicas("redis", 5)  # another field manager's: a conflict for us
    strict = app.engine(replace(app.cfg, apply=replace(app.cfg.apply, conflicts="fail")))
    report = strict.reconcile()
    failed = {(r.key.kind, r.key.name): r.error for r in report.results.failed}
    assert set(failed) == {("Deployment", "redis")}
    conflict = failed[("Deployment", "redis")]
    assert conflict is not None and conflict["status"] == 409
    assert app.objects()[("Deployment", "redis")]["spec"]["replicas"] == 5
    report = engine.reconcile()  # force (the default) takes the field back
    assert report.ok, report.summary()
    assert app.objects()[("Deployment", "redis")]["spec"]["replicas"] == 1


def test_moving_namespaces_prunes_the_old_and_lets_its_claim_go(app: App) -> None:
    engine = app.engine()
    assert engine.up().ok
    target = f"{app.namespace[:50]}-moved"
    app.patch_spec({"global": {"namespace": target}})
    try:
        report = engine.reconcile()
        assert report.ok, report.summary()
        # Everything now lives in the new namespace (made by _shared/namespace.yaml)...
        assert app.kube.get("apps/v1", "Deployment", "redis", target) is not None
        assert app.kube.get("apps/v1", "Deployment", "redis", app.namespace) is None
        # ...but the old claim holds data: kept, out of the inventory, no longer ours.
        kept = {(r.key.kind, r.key.namespace): r.reason for r in report.results.items
                if r.outcome == "kept"}
        assert kept[("PersistentVolumeClaim", app.namespace)] == "policy: orphaned"
        claim = app.kube.get("v1", "PersistentVolumeClaim", "postgres-data", app.namespace)
        assert claim is not None
        assert not {k for k in claim["metadata"].get("labels", {})
                    if k.startswith("conductor.io/")}
        keys = {e["k"] for e in app.resource()["status"]["inventory"]}
        assert f"/PersistentVolumeClaim/{app.namespace}/postgres-data" not in keys
        # Let go for good: the next pass neither reports nor touches it.
        again = engine.reconcile()
        assert again.ok and not [r for r in again.results.items if r.outcome == "kept"
                                 and r.key.namespace == app.namespace]
    finally:
        engine.down()
        app.kube.delete("v1", "Namespace", target)
