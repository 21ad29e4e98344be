"""Per-instance Git sources (issue 13) and webhooks on any replica (issue 14), on the local
control plane with real `git daemon` remotes on loopback.

Repository A holds the example app's manifests, the controller's own parameters and one
file per other instance (`instances/<namespace>/<name>.yaml`); repository B holds the
parameters of an instance that names it in its own `spec.source`. A push changes only the
instance whose file changed (the others' objects are not written); each instance's status
carries the commit it applied; a broken source fails only its instance. With two
controller processes, a webhook POSTed to the follower wakes exactly the instances that
follow the pushed repository, through their owner (the leader), and their new revision is
applied.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.kube import Kube
from controller.adapters.sources.resource import API_VERSION, KIND
from controller.config import (
    Config,
    EventSettings,
    GitSettings,
    InstanceSettings,
    LoopSettings,
)
from controller.errors import ConflictError
from controller.model.instance import ANNOTATION_PARAMETER_SOURCE, ANNOTATION_REQUESTED
from controller.model.objects import LABEL_INSTANCE
from controller.runtime.controller import Controller
from controller.runtime.controller_service import ControllerService
from controller.runtime.service import Caller
from tests.support.cluster import LocalCluster, controller_process, more_namespaces
from tests.support.gitrepo import (
    User,
    example_files,
    example_params,
    free_port,
    git_daemon,
    publish,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

SECRET = "webhook-secret-0123456789"
# Kinds only conductor writes (no status): their resourceVersions move only if it does.
QUIET_KINDS = (("v1", "Service"), ("v1", "Secret"), ("v1", "ConfigMap"))


@dataclass
class Remotes:
    """Repository A (the controller's) and B, served by one daemon; a user of each."""

    port: int
    a: User
    b: User

    def url(self, name: str) -> str:
        return f"git://127.0.0.1:{self.port}/{name}.git"


@pytest.fixture
def spaces(kube: Kube, namespace: str) -> Iterator[list[str]]:
    """The test's namespace and three more."""
    with more_namespaces(kube, [f"{namespace}-{s}" for s in ("b", "c", "d")]) as extra:
        yield [namespace, *extra]


@pytest.fixture
def remotes(tmp_path: Path, spaces: list[str]) -> Iterator[Remotes]:
    own, ns_b, ns_c, ns_d = spaces
    base = tmp_path / "served"
    base.mkdir()
    publish(base, "a", {**example_files(own),
                        f"instances/{ns_b}/beta.yaml": example_params(ns_b, 1),
                        f"instances/{ns_c}/gamma.yaml": example_params(ns_c, 1)})
    publish(base, "b", {"envs/delta.yaml": example_params(ns_d, 1)})
    with git_daemon(base, tmp_path / "git-daemon.log") as port:
        (tmp_path / "users").mkdir()
        yield Remotes(port, User(f"git://127.0.0.1:{port}/a.git", tmp_path / "users" / "a"),
                      User(f"git://127.0.0.1:{port}/b.git", tmp_path / "users" / "b"))


def _follower(name: str, namespace: str) -> dict[str, Any]:
    """An instance that takes its parameters from its file in the controller's repository."""
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": name, "namespace": namespace,
                         "annotations": {ANNOTATION_PARAMETER_SOURCE: "git"}},
            "spec": {}}


def _own_source(name: str, namespace: str, url: str, path: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"source": {"url": url, "ref": "main", "path": path}}}


def _status(kube: Kube, key: tuple[str, str]) -> dict[str, Any]:
    obj = kube.get(API_VERSION, KIND, key[1], key[0]) or {}
    return dict(obj.get("status") or {})


def _revision(kube: Kube, key: tuple[str, str]) -> str:
    return str(_status(kube, key).get("lastAppliedRevision") or "")


def _redis(kube: Kube, namespace: str) -> int:
    dep = kube.get("apps/v1", "Deployment", "redis", namespace) or {}
    return int((dep.get("spec") or {}).get("replicas") or -1)


def _written(kube: Kube, key: tuple[str, str]) -> dict[tuple[str, str], str]:
    """What would move if conductor wrote an instance's objects: the quiet kinds'
    resourceVersions and the Deployments' generations."""
    namespace, name = key
    out = {}
    for api_version, kind in QUIET_KINDS:
        for item in kube.list(api_version, kind, namespace, f"{LABEL_INSTANCE}={name}")[0]:
            out[(kind, item["metadata"]["name"])] = item["metadata"]["resourceVersion"]
    for item in kube.list("apps/v1", "Deployment", namespace, f"{LABEL_INSTANCE}={name}")[0]:
        out[("Deployment", item["metadata"]["name"])] = str(item["metadata"]["generation"])
    return out


def _stalled(kube: Kube, key: tuple[str, str]) -> dict[str, Any] | None:
    conds = {c["type"]: c for c in _status(kube, key).get("conditions", [])}
    stall = conds.get("Stalled") or {}
    return stall if stall.get("status") == "True" else None


def test_a_push_updates_only_the_instance_whose_file_changed(
        cluster: LocalCluster, kube: Kube, spaces: list[str], tmp_path: Path,
        crd: dict[str, Any], remotes: Remotes) -> None:
    own, ns_b, ns_c, ns_d = spaces
    kube.create(_follower("beta", ns_b))
    kube.create(_follower("gamma", ns_c))
    kube.create(_own_source("delta", ns_d, remotes.url("b"), "envs/delta.yaml"))
    cfg = Config(kubeconfig=cluster.kubeconfig, namespace=own, default_namespace=own,
                 source="git", loop=LoopSettings(interval=3600),
                 instances=InstanceSettings(namespaces=tuple(spaces)),
                 git=GitSettings(url=remotes.url("a"), ref="main",
                                 params_path="app/parameters.yaml",
                                 manifests_path="app/manifests",
                                 cache_dir=tmp_path / "git-cache", poll_interval=0.3),
                 events=EventSettings(path=tmp_path / "events.db"))
    controller = Controller(cfg, env={}).start()
    keys = {"own": (own, "default"), "beta": (ns_b, "beta"), "gamma": (ns_c, "gamma"),
            "delta": (ns_d, "delta")}
    try:
        head_a, head_b = remotes.a.remote_head(), remotes.b.remote_head()
        wanted = {"own": head_a, "beta": head_a, "gamma": head_a, "delta": head_b}
        for name, key in keys.items():  # each applied from Git, its commit in its status
            wait_for(lambda key=key, sha=wanted[name]: _revision(kube, key) == sha,
                     timeout=120, message=f"{name} applied at its commit")
            assert _redis(kube, key[0]) == 1
        # One clone per repository: A (the controller's, also read by beta and gamma), B.
        clones = [p for p in (tmp_path / "git-cache").iterdir() if (p / ".git").is_dir()]
        assert len(clones) == 2

        # A push changing beta's file: beta updated with the new commit in its status; the
        # others' objects not written.
        def latencies() -> float:
            return controller.registry.get_sample_value(
                "conductor_push_to_applied_seconds_count",
                {"kind": KIND, "name": "beta", "namespace": ns_b}) or 0.0

        measured = wait_for(latencies, timeout=10, message="beta's first commit measured")
        before = {n: _written(kube, k) for n, k in keys.items() if n != "beta"}
        pushed = remotes.a.commit_and_push(
            {f"instances/{ns_b}/beta.yaml": example_params(ns_b, 2)}, "scale beta's redis")
        wait_for(lambda: _revision(kube, keys["beta"]) == pushed, timeout=60,
                 message="beta applied the pushed commit")
        assert _redis(kube, ns_b) == 2
        # Its push-to-applied latency is measured under its own name, once per commit.
        wait_for(lambda: latencies() == measured + 1, timeout=10,
                 message="beta's pushed commit measured")
        # The same repository's other instances re-render at that commit (nothing of
        # theirs changed in it, so nothing is written); B's instance is not even woken.
        for name in ("own", "gamma"):
            wait_for(lambda name=name: _revision(kube, keys[name]) == pushed, timeout=60,
                     message=f"{name} at the pushed commit")
        assert _revision(kube, keys["delta"]) == head_b
        assert {n: _written(kube, k) for n, k in keys.items() if n != "beta"} == before

        # Its object's spec is not its parameters: an API write there is refused (409),
        # nothing written, rather than accepted and silently ignored.
        service = ControllerService(controller)
        # Its version (the ETag) is its file's blob id at the applied commit.
        read = service.parameters(f"{ns_b}/beta", Caller(may_see_secrets=True))
        assert read.version == remotes.a.git("rev-parse", f"{pushed}:instances/{ns_b}/beta.yaml")
        generation = (kube.get(API_VERSION, KIND, "beta", ns_b) or {})["metadata"]["generation"]
        with pytest.raises(ConflictError) as refused:
            service.patch_parameters(f"{ns_b}/beta", {"global": {"replicas": 5}},
                                     Caller(may_see_secrets=True))
        assert refused.value.details["source"] == "git"
        assert refused.value.details["path"] == f"instances/{ns_b}/beta.yaml"
        assert (kube.get(API_VERSION, KIND, "beta", ns_b) or {})["metadata"]["generation"] \
            == generation

        # A push to B changes only delta.
        before = {n: _written(kube, k) for n, k in keys.items() if n != "delta"}
        pushed_b = remotes.b.commit_and_push({"envs/delta.yaml": example_params(ns_d, 3)},
                                             "scale delta's redis")
        wait_for(lambda: _revision(kube, keys["delta"]) == pushed_b, timeout=60,
                 message="delta applied B's pushed commit")
        assert _redis(kube, ns_d) == 3
        assert {n: _revision(kube, keys[n]) for n in ("own", "beta", "gamma")} == \
            dict.fromkeys(("own", "beta", "gamma"), pushed)
        assert {n: _written(kube, k) for n, k in keys.items() if n != "delta"} == before

        # A broken source is gamma's problem only: Stalled with the source's error, its
        # objects kept; the others still follow their pushes.
        kube.patch(API_VERSION, KIND, "gamma", {"spec": {"source": {
            "url": f"git://127.0.0.1:{free_port()}/nowhere.git"}}}, ns_c)
        stall = wait_for(lambda: _stalled(kube, keys["gamma"]), timeout=60,
                         message="gamma Stalled on its unreachable source")
        assert stall["reason"] == "source_error", stall
        kube.patch(API_VERSION, KIND, "delta", {"spec": {"source": {
            "path": "envs/missing.yaml"}}}, ns_d)
        stall = wait_for(lambda: _stalled(kube, keys["delta"]), timeout=60,
                         message="delta Stalled on its missing file")
        assert "envs/missing.yaml" in stall["message"]
        assert _redis(kube, ns_c) == 1 and _redis(kube, ns_d) == 3
        fixed = remotes.a.commit_and_push(
            {f"instances/{ns_b}/beta.yaml": example_params(ns_b, 1)}, "beta back to 1")
        wait_for(lambda: _revision(kube, keys["beta"]) == fixed, timeout=60,
                 message="beta still follows its pushes")
        assert _redis(kube, ns_b) == 1
        assert _stalled(kube, keys["own"]) is None and _stalled(kube, keys["beta"]) is None
    finally:
        controller.stop()


# -- a webhook on the follower -----------------------------------------------------------------


def _get(port: int, path: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
        body: dict[str, Any] = json.loads(answer.read())
        return body


def _webhook(port: int, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/webhooks/git", data=body, method="POST",
        headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature,
                 "X-GitHub-Event": "push"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.status, json.loads(answer.read())


def _leading(port: int) -> bool | None:
    try:
        return bool(_get(port, "/api/status")["leader"]["isLeader"])
    except OSError:
        return None


def test_a_webhook_on_the_follower_wakes_exactly_the_instances_of_that_repository(
        cluster: LocalCluster, kube: Kube, spaces: list[str], tmp_path: Path,
        crd: dict[str, Any], remotes: Remotes) -> None:
    own, ns_b, _ns_c, ns_d = spaces
    kube.create(_follower("beta", ns_b))
    kube.create(_own_source("delta", ns_d, remotes.url("b"), "envs/delta.yaml"))
    secret = tmp_path / "webhook-secret"
    secret.write_text(SECRET)
    keys = {"own": (own, "default"), "beta": (ns_b, "beta"), "delta": (ns_d, "delta")}
    env = {"CONDUCTOR_SOURCE": "git", "CONDUCTOR_GIT_URL": remotes.url("a"),
           "CONDUCTOR_GIT_PARAMS_PATH": "app/parameters.yaml",
           "CONDUCTOR_GIT_MANIFESTS_PATH": "app/manifests",
           "CONDUCTOR_GIT_POLL_INTERVAL": "3600",  # only the webhooks wake anyone
           "CONDUCTOR_GIT_WEBHOOK_SECRET_FILE": str(secret),
           # The default lease timings: nothing here fails over, and a loaded machine must
           # not make the leader step down between the roles' check and the webhooks.
           "CONDUCTOR_INSTANCES_NAMESPACES": ",".join((own, ns_b, ns_d))}
    ports = [free_port(), free_port()]
    with ExitStack() as stack:
        for i, port in enumerate(ports):
            work = tmp_path / f"replica-{i}"
            work.mkdir()
            stack.enter_context(controller_process(
                cluster, tmp_path, own, port, work / "controller.log",
                CONDUCTOR_LEADER_IDENTITY=f"replica-{i}",
                CONDUCTOR_GIT_CACHE_DIR=str(work / "git-cache"), **env))
        roles = wait_for(lambda: (r := [_leading(p) for p in ports]) and
                         sorted(r, key=str) == [False, True] and r,
                         timeout=90, message="one leader, one follower")
        follower = ports[roles.index(False)]
        head_a, head_b = remotes.a.remote_head(), remotes.b.remote_head()
        for name, key in keys.items():
            wait_for(lambda key=key, sha=head_b if name == "delta" else head_a:
                     _revision(kube, key) == sha, timeout=120,
                     message=f"{name} applied at its commit")

        # Both repositories move; only B's webhook is sent, to the follower.
        pushed_a = remotes.a.commit_and_push(
            {f"instances/{ns_b}/beta.yaml": example_params(ns_b, 2)}, "scale beta")
        pushed_b = remotes.b.commit_and_push({"envs/delta.yaml": example_params(ns_d, 2)},
                                             "scale delta")
        sent = time.monotonic()
        status, answer = _webhook(follower, {
            "ref": "refs/heads/main", "after": pushed_b,
            "repository": {"clone_url": f"http://127.0.0.1:{remotes.port}/b.git",
                           "git_url": remotes.url("b")}})
        assert status == 202 and answer["triggered"] is True, answer
        leader = f"replica-{roles.index(True)}"
        assert answer["instances"] == [{"namespace": ns_d, "name": "delta",
                                        "via": "annotation", "owner": leader}], answer
        wait_for(lambda: _revision(kube, keys["delta"]) == pushed_b, timeout=60,
                 interval=0.02, message="delta applied B's commit through its owner")
        print(f"webhook on the follower -> applied by the owner: "
              f"{time.monotonic() - sent:.2f} s")
        assert _redis(kube, ns_d) == 2
        # A's instances were not woken: nothing asked them, the poller is an hour away.
        for name in ("own", "beta"):
            obj = kube.get(API_VERSION, KIND, keys[name][1], keys[name][0]) or {}
            assert ANNOTATION_REQUESTED not in (obj["metadata"].get("annotations") or {})
            assert _revision(kube, keys[name]) == head_a
        assert _redis(kube, ns_b) == 1

        # A's webhook (GitHub's payload) on the follower: the new revision is applied.
        status, answer = _webhook(follower, {
            "ref": "refs/heads/main", "after": pushed_a,
            "repository": {"clone_url": f"http://127.0.0.1:{remotes.port}/a.git",
                           "ssh_url": f"git@127.0.0.1:{remotes.port}/a.git",
                           "git_url": remotes.url("a")}})
        assert status == 202, answer
        assert sorted((i["namespace"], i["name"]) for i in answer["instances"]) == \
            sorted([keys["own"], keys["beta"]]), answer
        for name in ("own", "beta"):
            wait_for(lambda name=name: _revision(kube, keys[name]) == pushed_a, timeout=60,
                     message=f"{name} applied A's commit through the leader")
        assert _redis(kube, ns_b) == 2
        assert _revision(kube, keys["delta"]) == pushed_b

