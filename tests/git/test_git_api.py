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

from controller.adapters.kube import Kube
from controller.adapters.sources.resource import API_VERSION, KIND
from controller.config import ApiSettings, Config, EventSettings, GitSettings, LoopSettings
from controller.runtime.controller import Controller
from controller.serving import app_for
from devcluster import kubelet
from tests.support.api import envelope
from tests.support.cluster import LocalCluster
from tests.support.gitrepo import GitServer, User, example_files, example_params
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

SECRET = "git-hook-secret"
# The controllers `served` started, newest last: tests read their metrics and state.
controllers: list[Controller] = []


@pytest.fixture
def served(cluster: LocalCluster, kube: Kube, namespace: str, tmp_path: Path,
           crd: dict[str, Any], git_server: GitServer,
           make_user: Callable[[str], User]) -> Iterator[Callable[..., testing.TestClient]]:
    """`serve(write=False)`: a Git-source controller on the example app, behind a client."""
    user = make_user("dev")
    user.commit_and_push(example_files(namespace), "add the example app")
    (tmp_path / "hook-secret").write_text(SECRET)
    started: list[Controller] = []
    controllers.clear()

    def serve(write: bool = False, poll_interval: float = 3600) -> testing.TestClient:
        cfg = Config(kubeconfig=cluster.kubeconfig, namespace=namespace,
                     default_namespace=namespace, source="git",
                     loop=LoopSettings(interval=3600, retry_backoff=0.5),
                     api=ApiSettings(auth=False),
                     git=GitSettings(url=git_server.url, ref="main",
                                     params_path="app/parameters.yaml",
                                     manifests_path="app/manifests",
                                     cache_dir=tmp_path / "git-cache",
                                     poll_interval=poll_interval, write=write,
                                     webhook_secret_file=str(tmp_path / "hook-secret")),
                     events=EventSettings(path=tmp_path / "events.db"))
        controller = Controller(cfg, env={}).start()
        started.append(controller)
        controllers.append(controller)
        wait_for(lambda: controller.engine.last is not None, timeout=60, message="first pass")
        assert controller.engine.last is not None and controller.engine.last.ok
        return testing.TestClient(app_for(controller))

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
    assert spec == yaml.safe_load(example_params(namespace, 1))

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
    sha = user.commit_and_push({"app/parameters.yaml": example_params(namespace, 2)}, "scale")
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




# -- the Git path, measured (issue 9 #5) ------------------------------------------------------


def _metric(controller: Controller, name: str, **labels: str) -> float:
    obj = {"kind": "DeploymentParameters", "name": "default",
           "namespace": controller.cfg.namespace}
    return controller.registry.get_sample_value(name, {**obj, **labels}) or 0.0


def _webhook(client: testing.TestClient, sha: str) -> None:
    body = json.dumps({"ref": "refs/heads/main", "after": sha}).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    result = client.simulate_post("/api/webhooks/git", body=body,
                                  headers={"X-Hub-Signature-256": signature})
    assert result.status_code == 202, result.text


def _status(kube: Kube, namespace: str) -> dict[str, Any]:
    obj = kube.get(API_VERSION, KIND, "default", namespace) or {}
    status: dict[str, Any] = obj.get("status") or {}
    return status


def _ready(kube: Kube, namespace: str) -> dict[str, Any]:
    # Ready means applied and healthy: the (simulated) kubelet runs the app's pods.
    kubelet.settle(kube, namespace)
    conditions = _status(kube, namespace).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Ready"), {})


def test_push_to_applied_is_observed_once_per_new_revision_from_when_it_was_seen(
        served: Callable[..., testing.TestClient], kube: Kube, namespace: str,
        make_user: Callable[[str], User]) -> None:
    """Before: every successful pass observed it (an interval pass added ~65 s, a start
    ~12 s), from the commit's whole-second time, with 1 s as the smallest bucket."""
    client = served()
    controller = controllers[-1]
    count = "conductor_push_to_applied_seconds_count"
    wait_for(lambda: _metric(controller, count) == 1, timeout=10,  # the seeded commit
             message="the first pass observed")
    user = make_user("pusher")
    for replicas in (2, 3):
        sha = user.commit_and_push({"app/parameters.yaml": example_params(namespace, replicas)})
        _webhook(client, sha)
        wait_for(lambda: client.simulate_get("/api/status").json["source"]["revision"]
                 == sha, timeout=30, message="the pushed commit applied")  # noqa: B023
    wait_for(lambda: _metric(controller, count) == 3, timeout=10, message="observations")
    # From the webhook's arrival: a fraction of a second here, visible as such.
    assert _metric(controller, "conductor_push_to_applied_seconds_sum") < 3 * 5
    assert _metric(controller, "conductor_push_to_applied_seconds_bucket", le="5.0") == 3
    assert _metric(controller, "conductor_commit_to_applied_seconds_count") == 3
    # Passes at the same revision observe nothing more.
    passes = controller.loop.passes
    for _ in range(2):
        before = controller.loop.passes
        controller.loop.wake("test")
        wait_for(lambda: controller.loop.passes > before, timeout=30,  # noqa: B023
                 message="another pass")
    assert controller.loop.passes >= passes + 2
    assert _metric(controller, count) == 3


def test_a_git_outage_is_counted_and_reported_between_passes_and_fails_no_service(
        served: Callable[..., testing.TestClient], kube: Kube, namespace: str,
        git_server: GitServer) -> None:
    client = served(poll_interval=0.2)
    controller = controllers[-1]
    applied = client.simulate_get("/api/status").json["source"]["revision"]
    assert applied and _metric(controller, "conductor_git_fetch_failures_total") == 0
    moved = git_server.base / "away.git"
    git_server.bare.rename(moved)  # the remote no longer serves the repository
    try:
        # The poller counts and reports the outage without waiting for an interval pass.
        wait_for(lambda: _metric(controller, "conductor_git_fetch_failures_total") >= 2,
                 timeout=20, message="poll failures counted")
        source = wait_for(lambda: client.simulate_get("/api/status").json["source"]
                          if "error" in client.simulate_get("/api/status").json["source"]
                          else None, timeout=10, message="the outage in /api/status")
        assert source["error"]["error"] == "source_error", source
        assert source["revision"] == applied  # the last applied revision is kept
        # The pass it woke says so in the conditions...
        wait_for(lambda: _ready(kube, namespace).get("reason") == "source_error",
                 timeout=30, message="Ready=False source_error")
        assert _ready(kube, namespace)["status"] == "False"
        status = _status(kube, namespace)
        # ...but a source failure is no service failure, and the revision stays.
        assert {s["state"] for s in status["services"].values()} == {"deployed"}, status
        assert status["lastAppliedRevision"] == applied
        info = [s for s in controller.registry.collect() if s.name == "conductor_app_info"]
        assert [x.labels["revision"] for x in info[0].samples] == [applied]
    finally:
        moved.rename(git_server.bare)
    wait_for(lambda: "error" not in client.simulate_get("/api/status").json["source"],
             timeout=20, message="the outage over")
    wait_for(lambda: _ready(kube, namespace).get("status") == "True", timeout=30,
             message="Ready again")


def test_invalid_yaml_is_invalid_yaml_not_a_fetch_failure_and_cannot_be_rolled_back_to(
        served: Callable[..., testing.TestClient], kube: Kube, namespace: str,
        make_user: Callable[[str], User]) -> None:
    client = served(write=True)
    controller = controllers[-1]
    good = client.simulate_get("/api/status").json["source"]["revision"]
    user = make_user("typo")
    bad = user.commit_and_push({"app/parameters.yaml": "global: [\n"}, "a typo")
    _webhook(client, bad)
    wait_for(lambda: _ready(kube, namespace).get("reason") == "invalid_yaml", timeout=30,
             message="Ready=False invalid_yaml")
    assert "app/parameters.yaml:" in _ready(kube, namespace)["message"]
    assert _metric(controller, "conductor_git_fetch_failures_total") == 0
    assert "error" not in client.simulate_get("/api/status").json["source"]
    # The history lists both; only the good one applied, and only it can be restored.
    history = {h["revision"]: h["applied"]
               for h in client.simulate_get("/api/parameters/history").json["history"]}
    assert history[good] is True
    fixed = user.commit_and_push({"app/parameters.yaml": example_params(namespace, 1)}, "fix")
    _webhook(client, fixed)
    wait_for(lambda: _ready(kube, namespace).get("status") == "True", timeout=30,
             message="the fix applied")
    broken = example_params(namespace, "not-a-number")
    refused = user.commit_and_push({"app/parameters.yaml": broken}, "refused value")
    _webhook(client, refused)
    wait_for(lambda: _ready(kube, namespace).get("reason") == "validation_error",
             timeout=30, message="Ready=False validation_error")
    history = {h["revision"]: h["applied"]
               for h in client.simulate_get("/api/parameters/history").json["history"]}
    assert history[refused] is False and history[fixed] is True
    details = envelope(client.simulate_post("/api/parameters/rollback",
                                            json={"revision": refused}), 409, "conflict")
    assert details["applied"] is False and details["revision"] == refused
    assert client.simulate_post("/api/parameters/rollback",
                                json={"revision": good}).status_code == 200


def test_a_force_push_to_a_non_descendant_is_applied_with_a_warning(
        served: Callable[..., testing.TestClient], kube: Kube, namespace: str,
        make_user: Callable[[str], User]) -> None:
    client = served()
    user = make_user("rewriter")
    base = user.remote_head()
    ahead = user.commit_and_push({"app/parameters.yaml": example_params(namespace, 2)}, "two")
    _webhook(client, ahead)
    wait_for(lambda: client.simulate_get("/api/status").json["source"]["revision"] == ahead,
             timeout=30, message="the first push applied")
    assert "warning" not in _ready(kube, namespace)["message"]
    # Someone rewrites main: a new commit on `base`, force-pushed over `ahead`.
    user.git("reset", "--quiet", "--hard", base)
    (user.path / "app" / "parameters.yaml").write_text(example_params(namespace, 3))
    user.git("commit", "--quiet", "-am", "rewritten")
    user.git("push", "--quiet", "--force", "origin", "HEAD:refs/heads/main")
    rewritten = user.remote_head()
    _webhook(client, rewritten)
    wait_for(lambda: client.simulate_get("/api/status").json["source"]["revision"]
             == rewritten, timeout=30, message="the rewritten ref applied")
    # Ready follows health (the pods the kubelet runs) a moment after the pass.
    ready = wait_for(lambda: (r := _ready(kube, namespace)).get("status") == "True" and r,
                     timeout=30, message="Ready=True after the rewritten ref")
    assert "does not descend from the applied " + ahead[:12] in ready["message"], ready
    events = client.simulate_get("/api/events?type=warning").json["events"]
    moved = [e for e in events if e["reason"] == "RefNotDescendant"]
    assert len(moved) == 1, events
    assert (moved[0]["details"]["previous"], moved[0]["details"]["revision"]) == \
        (ahead, rewritten)
    assert "warning" in client.simulate_get("/api/status").json["source"]
