"""`git push` changes what runs: the controller with a Git source on the real cluster."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.kube import Kube
from controller.adapters.sources.resource import API_VERSION, KIND
from controller.config import Config, EventSettings, GitSettings, LoopSettings
from controller.runtime.controller import Controller
from tests.support.cluster import LocalCluster
from tests.support.gitrepo import GitServer, User, example_files, example_params
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]


def test_git_push_is_applied_with_its_sha_in_status(
        cluster: LocalCluster, kube: Kube, namespace: str, tmp_path: Path,
        crd: dict[str, Any], git_server: GitServer,
        make_user: Callable[[str], User]) -> None:
    user = make_user("dev")
    first = user.commit_and_push(example_files(namespace), "add the example app")
    cfg = Config(kubeconfig=cluster.kubeconfig, namespace=namespace,
                 default_namespace=namespace, source="git",
                 loop=LoopSettings(interval=3600),
                 git=GitSettings(url=git_server.url, ref="main",
                                 params_path="app/parameters.yaml",
                                 manifests_path="app/manifests",
                                 cache_dir=tmp_path / "git-cache", poll_interval=0.3),
                 events=EventSettings(path=tmp_path / "events.db"))
    controller = Controller(cfg, env={}).start()

    def status() -> dict[str, Any]:
        obj = kube.get(API_VERSION, KIND, "default", namespace) or {}
        return dict(obj.get("status") or {})

    def redis_replicas() -> int:
        dep = kube.get("apps/v1", "Deployment", "redis", namespace)
        return int(dep["spec"]["replicas"]) if dep else -1

    try:
        wait_for(lambda: status().get("lastAppliedRevision") == first, timeout=30,
                 message="the first commit applied")
        assert redis_replicas() == 1

        second = user.commit_and_push({"app/parameters.yaml": example_params(namespace, 3)},
                                      "scale redis")
        wait_for(lambda: status().get("lastAppliedRevision") == second, timeout=30,
                 message="the pushed commit applied (poller wakes the loop)")
        assert redis_replicas() == 3

        # An invalid value in Git: nothing applied, the path named, the last good state kept.
        user.commit_and_push({"app/parameters.yaml": example_params(namespace, -1)}, "oops")
        def stalled() -> dict[str, Any] | None:
            conds = {c["type"]: c for c in status().get("conditions", [])}
            stall = conds.get("Stalled", {})
            return stall if stall.get("status") == "True" else None
        stall = wait_for(stalled, timeout=30, message="Stalled after an invalid push")
        assert stall["reason"] == "validation_error"
        assert "spec.services.redis.replicas" in stall["message"]
        assert status()["lastAppliedRevision"] == second
        assert redis_replicas() == 3

        fixed = user.commit_and_push({"app/parameters.yaml": example_params(namespace, 2)}, "fix")
        wait_for(lambda: status().get("lastAppliedRevision") == fixed, timeout=30,
                 message="recovered with the fix")
        assert redis_replicas() == 2
    finally:
        controller.stop()
