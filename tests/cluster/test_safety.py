"""The engine's safety on the real control plane: what it refuses to do, and how it says so.

A deleted DeploymentParameters object stops the app's passes instead of resetting it to the
shipped defaults; a manifests tree without services is an empty render, refused like one;
one object the API server refuses means nothing is applied; a pass that did not finish is
resumed, not reported as drift. (A deleted CRD is in test_crd_deleted.py: it needs a
private control plane.)
"""

from __future__ import annotations

import shutil
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from controller.adapters.kube import Kube
from controller.adapters.sources.resource import (
    API_VERSION,
    KIND,
    ParametersResource,
    ResourceSource,
    load_seed,
)
from controller.reconcile.applying import ObjectResult
from controller.reconcile.engine import Engine
from controller.reconcile.passes import ObjectDone
from controller.runtime.controller import Controller
from controller.runtime.operations import Operations
from tests.support.cluster import App
from tests.support.proxy import ApiProxy
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster


PASSWORD = "not-the-shipped-default"


def _delete_parameters(app: App) -> None:
    app.kube.delete(API_VERSION, KIND, "default", app.namespace)
    wait_for(lambda: app.kube.get(API_VERSION, KIND, "default", app.namespace) is None,
             message="the DeploymentParameters object gone")


# -- finding 3: a deleted DeploymentParameters object ----------------------------------------


def test_deleted_parameters_stop_passes_keep_the_app_and_resume_when_recreated(
        app: App) -> None:
    engine = app.engine()
    assert engine.up().ok
    app.patch_spec({"services": {"postgres": {"password": PASSWORD}}})
    assert engine.down(["redis"]).ok  # a selection the defaults would undo
    assert engine.reconcile().ok
    spec = app.resource()["spec"]
    before = app.versions()

    _delete_parameters(app)
    for current in (engine, app.engine()):  # the same engine, and one after a restart
        report = current.reconcile()
        assert report.error is not None, report.summary()
        assert report.error.code == "not_found"
        assert report.error.details["reason"] == "ParametersDeleted"
        assert "recreated" in report.error.message
        assert report.results.items == []  # nothing applied, nothing pruned
        # Not re-created from the defaults; every object still there, untouched.
        assert app.kube.get(API_VERSION, KIND, "default", app.namespace) is None
        assert app.versions() == before
    # An operation cannot bring it back from the defaults either.
    assert engine.up(["redis"]).error is not None
    assert app.kube.get(API_VERSION, KIND, "default", app.namespace) is None

    # A person recreates it (here with the same spec): passes resume from it.
    app.kube.create({"apiVersion": API_VERSION, "kind": KIND,
                     "metadata": {"name": "default", "namespace": app.namespace},
                     "spec": spec})
    report = engine.reconcile()
    assert report.ok, report.summary()
    secret = next(o for (k, _), o in app.objects().items() if k == "Secret")
    assert secret["metadata"]["resourceVersion"] == before[("Secret",
                                                            secret["metadata"]["name"])]


def test_first_install_still_creates_the_object_from_the_defaults(app: App) -> None:
    assert app.kube.get(API_VERSION, KIND, "default", app.namespace) is None
    report = app.engine().reconcile()
    assert report.ok, report.summary()
    assert app.resource()["spec"]["services"]["redis"]


def test_the_watch_stops_the_loop_at_once_when_the_object_is_deleted(app: App) -> None:
    controller = Controller(app.cfg).start()  # interval 3600 s: only the watch can wake it
    try:
        wait_for(lambda: controller.engine.last is not None and controller.engine.last.ok,
                 timeout=60, message="first pass")
        spec = app.resource()["spec"]
        _delete_parameters(app)

        def stopped() -> bool:
            last = controller.engine.last
            return last is not None and last.error is not None and \
                last.error.details.get("reason") == "ParametersDeleted"
        wait_for(stopped, timeout=15, message="a pass reporting the deletion")
        status = controller.status()
        assert status["lastPass"]["error"]["details"]["reason"] == "ParametersDeleted"
        assert "ParametersDeleted" in {e.reason for e in controller.events.query(
            type="warning")}
        assert app.kube.get(API_VERSION, KIND, "default", app.namespace) is None

        # Recreated (same generation 1 as the first object): the watch wakes the loop.
        app.kube.create({"apiVersion": API_VERSION, "kind": KIND,
                         "metadata": {"name": "default", "namespace": app.namespace},
                         "spec": spec})
        wait_for(lambda: controller.engine.last is not None and controller.engine.last.ok,
                 timeout=15, message="a pass after the object is recreated")
    finally:
        controller.stop()


# -- finding 4: a tree without services -----------------------------------------------------


def test_a_tree_without_services_is_an_empty_render_and_prunes_nothing(app: App) -> None:
    engine = app.engine()
    assert engine.up().ok
    before = app.versions()
    inventory = app.resource()["status"]["inventory"]
    for folder in [p for p in app.root.iterdir() if p.is_dir()]:
        shutil.rmtree(folder)  # what a Git push removing every service folder leaves
    report = engine.reconcile()
    assert report.error is not None, report.summary()
    assert report.error.code == "validation_error"
    assert "refusing to prune" in report.error.message
    assert app.versions() == before
    assert app.resource()["status"]["inventory"] == inventory


def test_only_an_explicit_down_empties_an_instance(app: App) -> None:
    engine = app.engine()
    assert engine.up().ok
    assert engine.down().ok
    report = engine.reconcile()  # every service marked down: empty on purpose, no error
    assert report.ok, report.summary()
    assert not [k for k in app.objects() if k[0] != "PersistentVolumeClaim"]


# -- finding 10: a refused object applies nothing ---------------------------------------------


def test_one_refused_object_applies_nothing_and_every_refusal_is_reported(app: App) -> None:
    engine = app.engine()
    assert engine.up().ok
    before = app.versions()
    for service, port in (("redis", 70000), ("frontend", 70001)):
        (app.root / service / "extra.yaml").write_text(
            f"apiVersion: v1\nkind: Service\nmetadata:\n  name: {service}-extra\n"
            f"spec:\n  ports:\n  - port: {port}\n    protocol: TCP\n")
    app.patch_spec({"services": {"frontend": {"replicas": 3}}})  # would change frontend
    report = engine.reconcile()
    assert report.error is not None, report.summary()
    assert report.error.code == "validation_error"
    refused = {o["resource"]: o for o in report.error.details["refused"]}
    assert set(refused) == {f"{app.namespace}/Service/redis-extra",
                            f"{app.namespace}/Service/frontend-extra"}
    assert all(o["status"] == 422 and o["dryRun"] for o in refused.values())
    assert {str(r.key) for r in report.results.failed} == set(refused)
    assert report.results.counts()["applied"] == 0
    assert app.versions() == before  # frontend still at 2 replicas, no extra Service
    assert app.resource()["status"]["services"]["redis"]["state"] == "failed"


def test_dry_run_lets_a_namespace_created_in_the_same_pass_through(app: App) -> None:
    target = f"{app.namespace[:50]}-new"
    seed = load_seed(app.root)
    seed["global"]["namespace"] = target  # _shared/namespace.yaml creates it in the pass
    ParametersResource(app.kube, app.cfg).ensure(seed)
    engine = app.engine()
    try:
        report = engine.up()
        assert report.ok, report.summary()
        assert app.kube.get("apps/v1", "Deployment", "redis", target) is not None
    finally:
        engine.down()
        app.kube.delete("v1", "Namespace", target)


# -- finding 20: an unfinished pass -----------------------------------------------------------


def test_objects_of_an_unfinished_pass_are_resumed_not_drift(app: App) -> None:
    engine = app.engine()
    assert engine.up().ok
    # What a pass killed after creating its objects leaves: entries written as intent
    # before the apply, without digest or fingerprint.
    inventory = [{**e, "d": "", "f": ""} for e in app.resource()["status"]["inventory"]]
    app.kube.patch(API_VERSION, KIND, "default", {"status": {"inventory": inventory}},
                   app.namespace, subresource="status")
    report = engine.reconcile()
    assert report.ok, report.summary()
    reasons = {r.reason for r in report.results.items if r.outcome == "applied"}
    assert reasons == {"resumed"}
    assert engine.reconcile().results.counts()["applied"] == 0


def test_results_are_recorded_as_each_object_is_applied(app: App, tmp_path: Path) -> None:
    release = threading.Event()

    def hold_redis(method: str, path: str, n: int) -> str | None:
        if method == "PATCH" and "/deployments/redis" in path and "dryRun" not in path:
            release.wait(30)
        return None

    recorded: list[ObjectResult] = []
    with ApiProxy(app.cluster.kubeconfig, tmp_path, hold_redis) as proxy:
        cfg = replace(app.cfg, kubeconfig=str(proxy.kubeconfig))
        kube = Kube.connect(cfg)
        engine = Engine(cfg, kube, ResourceSource(cfg), sink=lambda event: recorded.append(
            event.result) if isinstance(event, ObjectDone) else None)
        worker = threading.Thread(target=engine.up)
        worker.start()
        try:
            # Frontend's Deployment and postgres's StatefulSet share redis's phase: their
            # results are recorded while redis's apply is still in flight.
            wait_for(lambda: {("Deployment", "frontend"), ("StatefulSet", "postgres")} <= {
                (r.key.kind, r.key.name) for r in recorded}, timeout=20,
                message="results recorded before the phase ends")
            assert ("Deployment", "redis") not in {(r.key.kind, r.key.name) for r in recorded}
        finally:
            release.set()
            worker.join(60)
            kube.close()
    assert engine.last is not None and engine.last.ok, engine.last.summary() \
        if engine.last else ""


def test_an_operation_of_an_earlier_process_is_a_clear_404() -> None:
    before = Operations(workers=1)
    op = before.start("up", [], "default", lambda: None)  # type: ignore[arg-type,return-value]
    before.shutdown()
    after = Operations(workers=1)  # the restarted controller
    try:
        assert after.get(op.id) is None
        lost = after.missing(op.id)
        assert lost.code == "not_found"
        assert "not kept across restarts" in lost.message
        assert lost.details["reason"] == "OperationLost"
        made_up = after.missing("no-such-thing")
        assert made_up.message == "no operation no-such-thing"
    finally:
        after.shutdown()
