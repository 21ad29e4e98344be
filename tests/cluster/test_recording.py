"""Kubernetes Events in and out, on the real control plane."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from controller.adapters.sources.resource import API_VERSION, KIND, ParametersResource
from controller.config import InstanceSettings
from controller.model import rendering
from controller.runtime.controller import Controller
from tests.support.cluster import App
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster


def _posted(app: App) -> list[dict]:
    events = app.kube.list("v1", "Event", app.namespace)[0]
    return [e for e in events if e["involvedObject"].get("kind") == KIND
            and e.get("source", {}).get("component") == "conductor"]


def test_events_about_our_objects_are_stored_and_ours_are_posted(app: App,
                                                                 tmp_path: Path) -> None:
    cfg = replace(app.cfg, events=replace(app.cfg.events, path=tmp_path / "events.db"))
    controller = Controller(cfg).start()
    try:
        wait_for(lambda: controller.engine.last is not None and controller.engine.last.ok,
                 timeout=30, message="the first pass")
        # The first pass applied objects: one Event on the DeploymentParameters object.
        posted = wait_for(lambda: _posted(app), message="our Event posted")
        assert posted[0]["involvedObject"]["apiVersion"] == API_VERSION
        assert posted[0]["reason"] == "ReconcileSucceeded"
        # A pass that changes nothing posts nothing.
        assert controller.engine.reconcile().results.counts()["applied"] == 0
        assert len(_posted(app)) == len(posted)

        # Events about objects that are not ours are not stored; one about our Deployment
        # is (the same watch delivers both in order, so the second is the barrier).
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        for name, kind, api_version in (("other", "ConfigMap", "v1"),
                                        ("redis", "Deployment", "apps/v1")):
            app.kube.create({
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"generateName": f"{name}.", "namespace": app.namespace},
                "involvedObject": {"apiVersion": api_version, "kind": kind, "name": name,
                                   "namespace": app.namespace},
                "type": "Warning", "reason": "FailedCreate", "message": "quota exceeded",
                "firstTimestamp": now, "lastTimestamp": now, "count": 1,
                "source": {"component": "test"}})
        resource = f"{app.namespace}/Deployment/redis"
        stored = wait_for(lambda: controller.events.query(resource=resource,
                                                          type="warning"),
                          timeout=20, message="the Kubernetes Event stored")
        assert stored[0].reason == "FailedCreate"
        assert stored[0].service == "redis"
        assert not controller.events.query(resource=f"{app.namespace}/ConfigMap/other")
    finally:
        controller.stop()


def test_another_instances_events_are_its_own(app: App, tmp_path: Path) -> None:
    """An engine for another DeploymentParameters object (?instance=other) stores its
    events under that instance and posts its Kubernetes Events on that object, not on the
    controller's own."""
    # Without the finalizer: a deletion is then the ParametersDeleted case this test is
    # about, not a finalisation (tests/cluster/test_instances.py has that).
    cfg = replace(app.cfg, events=replace(app.cfg.events, path=tmp_path / "events.db"),
                  instances=InstanceSettings(finalize=False))
    other_cfg = replace(cfg, instance="other")
    other = ParametersResource(app.kube, other_cfg)
    other.ensure()
    # An instance that deploys nothing: the controller reconciles every instance of its
    # namespace (issue 13), and this one must not fight ours over the same objects.
    other.set_down(frozenset(rendering.load_tree(app.root).names))
    controller = Controller(cfg).start()
    try:
        wait_for(lambda: controller.engine.last is not None, timeout=30,
                 message="the first pass")
        engine = controller.engine_for("other")
        assert engine.reconcile().ok
        app.kube.delete(API_VERSION, KIND, "other", app.namespace)
        wait_for(lambda: other.get() is None, message="other deleted")
        # Finalised (nothing to prune) and forgotten once the watch saw it go.
        wait_for(lambda: (app.namespace, "other") not in controller.instance_keys(),
                 message="other forgotten")
        report = engine.reconcile()
        assert report.error is not None and report.error.details["reason"] == \
            "ParametersDeleted"
        stored = controller.events.query(instance="other", limit=20)
        assert {"PassStarted", "ParametersDeleted", "ReconcileFailed"} <= \
            {e.reason for e in stored}
        assert all(e.instance == "other" for e in stored)
        assert not [e for e in controller.events.query(instance="default", limit=200)
                    if e.reason == "ParametersDeleted"]
        posted = wait_for(lambda: [e for e in _posted(app) if e["reason"] in (
            "ParametersDeleted", "ReconcileFailed")], message="the other instance's Events")
        assert {e["involvedObject"]["name"] for e in posted} == {"other"}
    finally:
        controller.stop()
