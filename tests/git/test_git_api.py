"""The parameters API of a controller whose parameters come from Git (real git daemon).

It may not push: writes answer 409 conflict (the repository stays the only truth). It may
push: a write is a commit on the branch, which the loop then applies. A signed webhook
makes the loop pick up a push at once (the poller is slowed down to prove it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from falcon import testing

from controller.api.app import create_app
from controller.config import ApiSettings, Config, EventSettings, GitSettings, LoopSettings
from controller.kube import Kube
from controller.main import Controller
from tests.api.conftest import envelope
from tests.conftest import LocalCluster
from tests.git.conftest import GitServer, User
from tests.git.test_git_e2e import _example_files, _params
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster

SECRET = "git-hook-secret"


@pytest.fixture
def served(cluster: LocalCluster, kube: Kube, namespace: str, tmp_path: Path,
           crd: dict[str, Any], git_server: GitServer,
           make_user: Callable[[str], User]) -> Iterator[Callable[..., testing.TestClient]]:
    """`serve(write=False)`: a Git-source controller on the example app, behind a client."""
    user = make_user("dev")
    user.commit_and_push(_example_files(namespace), "add the example app")
    (tmp_path / "hook-secret").write_text(SECRET)
    started: list[Controller] = []

    def serve(write: bool = False) -> testing.TestClient:
        cfg = Config(kubeconfig=cluster.kubeconfig, namespace=namespace,
                     default_namespace=namespace, source="git",
                     loop=LoopSettings(interval=3600), api=ApiSettings(auth=False),
                     git=GitSettings(url=git_server.url, ref="main",
                                     params_path="app/parameters.yaml",
                                     manifests_path="app/manifests",
                                     cache_dir=tmp_path / "git-cache", poll_interval=3600,
                                     write=write,
                                     webhook_secret_file=str(tmp_path / "hook-secret")),
                     events=EventSettings(path=tmp_path / "events.db"))
        controller = Controller(cfg, env={}).start()
        started.append(controller)
        wait_for(lambda: controller.engine.last is not None, timeout=60, message="first pass")
        assert controller.engine.last is not None and controller.engine.last.ok
        return testing.TestClient(create_app(controller))

    yield serve
    for controller in started:
        controller.stop()


def _redis_replicas(kube: Kube, namespace: str) -> int:
    dep = kube.get("apps/v1", "Deployment", "redis", namespace)
    return int(dep["spec"]["replicas"]) if dep else -1


def test_writes_are_409_when_the_controller_may_not_push(
        served: Callable[..., testing.TestClient], git_server: GitServer,
        namespace: str, make_user: Callable[[str], User]) -> None:
    client = served(write=False)
    watcher = make_user("watcher")
    head = watcher.remote_head()
    status = client.simulate_get("/api/status").json
    assert status["source"]["type"] == "git" and status["source"]["url"] == git_server.url
    spec = client.simulate_get("/api/parameters").json
    assert spec == yaml.safe_load(_params(namespace, 1))

    details = envelope(client.simulate_post("/api/parameters", json=spec), 409, "conflict")
    assert details["source"] == "git" and details["ref"] == "main"
    assert details["url"] == git_server.url and "CONDUCTOR_GIT_WRITE" in details["hint"]
    envelope(client.simulate_patch("/api/parameters",
                                   json={"services": {"redis": {"replicas": 2}}}),
             409, "conflict")
    revision = client.simulate_get("/api/parameters/history").json["history"][0]["revision"]
    envelope(client.simulate_post("/api/parameters/rollback", json={"revision": revision}),
             409, "conflict")
    # Validation still comes first: an invalid body is a 400, not a 409.
    details = envelope(client.simulate_patch(
        "/api/parameters", json={"services": {"redis": {"replicas": "x"}}}),
        400, "validation_error")
    assert details["path"] == "spec.services.redis.replicas"
    assert watcher.remote_head() == head  # nothing was pushed


def test_a_write_is_a_pushed_commit_that_the_loop_applies(
        served: Callable[..., testing.TestClient], kube: Kube, namespace: str,
        make_user: Callable[[str], User]) -> None:
    client = served(write=True)
    assert _redis_replicas(kube, namespace) == 1
    result = client.simulate_patch("/api/parameters",
                                   json={"services": {"redis": {"replicas": 3}}})
    assert result.status_code == 200, result.text
    sha = result.json["revision"]
    reader = make_user("reader")
    assert reader.remote_head() == sha
    pushed = yaml.safe_load(reader.git("show", f"{sha}:app/parameters.yaml"))
    assert pushed["services"]["redis"]["replicas"] == 3
    wait_for(lambda: _redis_replicas(kube, namespace) == 3, timeout=30,
             message="the pushed parameters applied")
    wait_for(lambda: client.simulate_get("/api/status").json["source"]["revision"] == sha,
             timeout=10, message="the pass at the new commit")


def test_a_signed_push_webhook_applies_the_new_commit_now(
        served: Callable[..., testing.TestClient], kube: Kube, namespace: str,
        make_user: Callable[[str], User]) -> None:
    client = served(write=False)
    user = make_user("pusher")
    sha = user.commit_and_push({"app/parameters.yaml": _params(namespace, 2)}, "scale")
    body = json.dumps({"ref": "refs/heads/main", "after": sha}).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    result = client.simulate_post("/api/webhooks/git", body=body,
                                  headers={"X-Hub-Signature-256": signature})
    assert result.status_code == 202, result.text
    assert result.json["triggered"] is True
    wait_for(lambda: _redis_replicas(kube, namespace) == 2, timeout=30,
             message="the pushed commit applied (the poller is an hour away)")
    envelope(client.simulate_post("/api/webhooks/git", body=body,
                                  headers={"X-Hub-Signature-256": "sha256=" + "0" * 64}),
             401, "unauthorized")


