"""Passes planned from the live cache, on the real control plane: a change made behind the
controller's back (another client scales, edits a label, deletes) is corrected by the next
pass; with the watches broken the plan is still right (the set is LISTed); a no-op pass
sends no request at all."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.cache import OURS_GRACE, LiveCache
from controller.adapters.kube import Kube
from controller.adapters.sources.resource import ResourceSource
from controller.adapters.watching import Selector
from controller.model.objects import LABEL_INSTANCE
from controller.reconcile.applying import selector
from controller.reconcile.engine import Engine
from tests.support.cluster import App
from tests.support.proxy import ApiProxy, Fault
from tests.support.waiting import wait_for


class Cached:
    """An engine planning from a live cache, through the counting proxy."""

    def __init__(self, app: App, workdir: Path, fault: Fault | None = None,
                 sync_timeout: float = 10.0) -> None:
        self.proxy = ApiProxy(app.cluster.kubeconfig, workdir, fault)
        self.kube = Kube.connect(replace(app.cfg, kubeconfig=str(self.proxy.kubeconfig)))
        self.live = LiveCache(self.kube, sync_timeout=sync_timeout)
        self.engine = Engine(app.cfg, self.kube, ResourceSource(app.cfg), live=self.live)
        self.app = app

    def shows(self, api_version: str, kind: str, name: str, test: object) -> bool:
        """Whether the cached copy of one of our objects passes `test` (None: absent)."""
        sel = Selector(api_version, kind, self.app.namespace, selector(self.app.cfg))
        items = self.live.objects(sel) or []
        found = next((o for o in items if o["metadata"]["name"] == name), None)
        return bool(test(found))  # type: ignore[operator]

    def close(self) -> None:
        self.live.stop()
        self.kube.close()
        self.proxy.__exit__()


@pytest.fixture
def cached(app: App, tmp_path: Path) -> Iterator[Cached]:
    c = Cached(app, tmp_path)
    c.proxy.__enter__()
    try:
        yield c
    finally:
        c.close()


def live(app: App, api_version: str, kind: str, name: str) -> dict[str, Any]:
    obj = app.kube.get(api_version, kind, name, app.namespace)
    assert obj is not None, name
    return obj


def corrections(report: object) -> dict[str, str]:
    return {str(r.key): r.reason for r in report.results.items  # type: ignore[attr-defined]
            if r.outcome == "applied"}


def test_changes_behind_the_controllers_back_are_corrected(app: App, cached: Cached) -> None:
    assert cached.engine.up().ok
    assert cached.engine.reconcile().results.counts()["applied"] == 0
    ns = app.namespace
    replicas = live(app, "apps/v1", "Deployment", "frontend")["spec"]["replicas"]
    # Another client: scale, take a label away, delete.
    app.kube.patch("apps/v1", "Deployment", "frontend", {"spec": {"replicas": 5}}, ns)
    app.kube.patch("v1", "Service", "frontend",
                   {"metadata": {"labels": {LABEL_INSTANCE: None}}}, ns)
    app.kube.delete("v1", "Service", "redis", ns)
    wait_for(lambda: cached.shows("apps/v1", "Deployment", "frontend",
                                  lambda o: o and o["spec"]["replicas"] == 5))
    wait_for(lambda: cached.shows("v1", "Service", "frontend", lambda o: o is None))
    wait_for(lambda: cached.shows("v1", "Service", "redis", lambda o: o is None))

    report = cached.engine.reconcile()
    assert report.ok, report.to_dict()
    fixed = corrections(report)
    assert f"{ns}/Deployment/frontend" in fixed
    assert f"{ns}/Service/frontend" in fixed
    assert f"{ns}/Service/redis" in fixed
    assert live(app, "apps/v1", "Deployment", "frontend")["spec"]["replicas"] == \
        replicas
    labels = live(app, "v1", "Service", "frontend")["metadata"]["labels"]
    assert labels[LABEL_INSTANCE] == app.cfg.instance
    assert app.kube.get("v1", "Service", "redis", ns) is not None
    # The next pass agrees (our writes were read back): nothing to do, no request.
    cached.proxy.stats.reset()
    again = cached.engine.reconcile()
    assert again.results.counts()["applied"] == 0, again.to_dict()
    assert cached.proxy.stats.log == []


def test_an_interval_pass_skips_after_our_writes_and_runs_after_kubectl_scale(
        app: App, cached: Cached) -> None:
    """Our own applies (their watch events too, before or after their answers) and the
    controller manager rolling out are no reason for a full interval pass; `kubectl
    scale` is (the scale subresource moves no managedFields entry before Kubernetes 1.22:
    only the version tells whose change it is)."""
    assert cached.engine.up().ok
    assert not cached.engine.reconcile("start").skipped
    assert cached.engine.reconcile("interval").skipped
    replicas = live(app, "apps/v1", "Deployment", "frontend")["spec"]["replicas"]
    steady = cached.live.changes(app.cfg.instance)
    subprocess.run(["kubectl", "--kubeconfig", app.cluster.kubeconfig, "-n", app.namespace,
                    "scale", "deployment/frontend", f"--replicas={replicas + 2}"],
                   check=True, capture_output=True)
    wait_for(lambda: cached.shows("apps/v1", "Deployment", "frontend",
                                  lambda o: o and o["spec"]["replicas"] == replicas + 2))
    # No answer of ours follows the scale's event: after OURS_GRACE it is someone else's.
    # (An interval pass before that runs in full too, and so does the one after it.)
    wait_for(lambda: cached.live.changes(app.cfg.instance) != steady and
             cached.live.changes(app.cfg.instance) >= 0, timeout=OURS_GRACE + 10,
             message="the scale stamped")
    report = cached.engine.reconcile("interval")
    assert not report.skipped and report.ok, report.to_dict()
    assert f"{app.namespace}/Deployment/frontend" in corrections(report)
    assert live(app, "apps/v1", "Deployment", "frontend")["spec"]["replicas"] == replicas
    # The correction's own watch event, and the rollout that follows it, change nothing.
    wait_for(lambda: cached.shows("apps/v1", "Deployment", "frontend",
                                  lambda o: o and o["spec"]["replicas"] == replicas))
    assert cached.engine.reconcile("interval").skipped


def test_a_no_op_pass_sends_no_request(app: App, cached: Cached) -> None:
    assert cached.engine.up().ok
    cached.engine.reconcile()
    cached.proxy.stats.reset()
    report = cached.engine.reconcile()
    assert report.ok and report.results.counts()["applied"] == 0, report.to_dict()
    assert cached.proxy.stats.log == [], cached.proxy.stats.log


def test_with_the_watches_broken_the_plan_is_still_right(app: App, tmp_path: Path) -> None:
    """The cache's watches drop (and cannot come back) after it listed everything: a
    change made then is not in any copy, yet the next pass sees it, because a set that is
    not fresh is LISTed directly."""
    broken = {"on": False}

    def fault(method: str, path: str, n: int) -> str | None:
        return "drop" if broken["on"] and "watch=true" in path else None

    c = Cached(app, tmp_path, fault, sync_timeout=0.5)
    c.proxy.__enter__()
    try:
        assert c.engine.up().ok
        sets = c.live.sets()
        wait_for(lambda: all(s.fresh.is_set() for s in sets))
        broken["on"] = True
        for s in sets:
            s.backoff = 120.0  # no relist during the test: only a direct LIST can see it
            s._response.shutdown()  # the connection drops under the open watch
        wait_for(lambda: not any(s.fresh.is_set() for s in sets))
        ns = app.namespace
        replicas = live(app, "apps/v1", "Deployment", "frontend")["spec"]["replicas"]
        app.kube.patch("apps/v1", "Deployment", "frontend", {"spec": {"replicas": 7}}, ns)
        report = c.engine.reconcile()
        assert report.ok, report.to_dict()
        assert f"{ns}/Deployment/frontend" in corrections(report)
        assert live(app, "apps/v1", "Deployment", "frontend")["spec"]["replicas"] == \
            replicas
        assert not any(s.fresh.is_set() for s in sets)  # it was not a relist that saw it
    finally:
        c.close()
