"""The local cluster and the example app, as tests use them.

`LocalCluster` is the control plane of the session (started by tests/conftest.py, or reused
through CONDUCTOR_TEST_KUBECONFIG); `App` is the example app copied into a test's own
namespace; `controller_process` runs a real `conductor run`; the pod helpers stand in for a
kubelet where a test drives pods itself.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from controller.adapters.kube import Kube
from controller.adapters.sources.resource import API_VERSION, KIND, ResourceSource
from controller.config import ApplySettings, Config, EventSettings, LoopSettings
from controller.model.objects import LABEL_INSTANCE
from controller.reconcile.engine import Engine
from devcluster import kubelet, running
from tests.support.waiting import wait_for


class LocalCluster:
    def __init__(self, kubeconfig: str, state: running.ClusterState | None) -> None:
        self.kubeconfig = kubeconfig
        self.state = state

    def config(self, **overrides: Any) -> Config:
        return replace(Config(kubeconfig=self.kubeconfig), **overrides)

    def kube(self, **overrides: Any) -> Kube:
        return Kube.connect(self.config(**overrides))


REPO = Path(__file__).resolve().parents[2]
APP_KINDS = {("apps/v1", "Deployment"), ("apps/v1", "StatefulSet"), ("v1", "Service"),
             ("v1", "Secret"), ("v1", "PersistentVolumeClaim"), ("v1", "ConfigMap")}


class App:
    """The example app, copied so a test may edit it, deployed into one namespace."""

    def __init__(self, cluster: LocalCluster, kube: Kube, namespace: str, root: Path) -> None:
        self.cluster = cluster
        self.kube = kube
        self.namespace = namespace
        self.root = root
        self.cfg = Config(kubeconfig=cluster.kubeconfig, namespace=namespace,
                          manifest_root=root, default_namespace=namespace,
                          events=EventSettings(path=root.parent / "events.db"),
                          loop=LoopSettings(interval=3600),
                          apply=ApplySettings(backoff_initial=0.05, backoff_max=0.5))

    def engine(self, cfg: Config | None = None, kube: Kube | None = None) -> Engine:
        cfg = cfg or self.cfg
        return Engine(cfg, kube or self.kube, ResourceSource(cfg))

    def objects(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Our objects in the namespace: (Kind, name) -> body."""
        out = {}
        for api_version, kind in APP_KINDS:
            for item in self.kube.list(api_version, kind, self.namespace,
                                       f"{LABEL_INSTANCE}=default")[0]:
                out[(kind, item["metadata"]["name"])] = item
        return out

    def versions(self) -> dict[tuple[str, str], str]:
        """resourceVersions once the controller manager has caught up with every workload
        (its status writes would otherwise change them behind the test's back): all
        observed, and no version moved over half a second."""
        seen: list[tuple[float, dict[tuple[str, str], str]]] = []

        def settled() -> dict[tuple[str, str], str] | None:
            objects = self.objects()
            for (kind, _), body in objects.items():
                status = body.get("status", {})
                if kind in ("Deployment", "StatefulSet") and (
                        status.get("observedGeneration") != body["metadata"]["generation"]
                        or status.get("replicas") != body["spec"]["replicas"]):
                    return None
            current = {k: v["metadata"]["resourceVersion"] for k, v in objects.items()}
            now = time.monotonic()
            if not seen or seen[-1][1] != current:
                seen.append((now, current))
                return None
            return current if now - seen[-1][0] >= 0.5 else None
        result: dict[tuple[str, str], str] = wait_for(settled, message="workloads settled")
        return result

    def resource(self) -> dict[str, Any]:
        obj = self.kube.get(API_VERSION, KIND, "default", self.namespace)
        assert obj is not None
        return obj

    def patch_spec(self, patch: dict[str, Any]) -> None:
        self.kube.patch(API_VERSION, KIND, "default", {"spec": patch}, self.namespace)

    def take_replicas(self, name: str, replicas: int, manager: str = "someone-else") -> None:
        """Another field manager takes a Deployment's spec.replicas by server-side apply
        (a conflict for conductor)."""
        body = {"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": self.namespace},
                "spec": {"replicas": replicas}}
        self.kube.request("PATCH", f"/apis/apps/v1/namespaces/{self.namespace}/deployments/"
                          f"{name}", query={"fieldManager": manager, "force": "true"},
                          body=body, content_type="application/apply-patch+yaml")


def pods(app: App, name: str) -> list[dict[str, Any]]:
    found = app.kube.list("v1", "Pod", app.namespace, f"app.kubernetes.io/name={name}")[0]
    return sorted((p for p in found if not p["metadata"].get("deletionTimestamp")),
                  key=lambda p: p["metadata"]["name"])


def wait_pods(app: App, name: str, count: int) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = wait_for(
        lambda: (found := pods(app, name)) and len(found) == count and found,
        message=f"{count} {name} pod(s)")
    return result


def make_all_ready(app: App, but: str = "") -> None:
    for name, count in (("frontend", 2), ("redis", 1), ("postgres", 1)):
        if name == but:
            continue
        for pod in wait_pods(app, name, count):
            kubelet.mark_ready(app.kube, pod)
    claim = app.kube.get("v1", "PersistentVolumeClaim", "postgres-data", app.namespace)
    assert claim is not None
    kubelet.bind_claim(app.kube, claim)


@contextmanager
def controller_process(cluster: LocalCluster, root: Path, namespace: str, port: int,
                       log: Path, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    environ = {**os.environ, "CONDUCTOR_DEFAULT_NAMESPACE": namespace,
               "CONDUCTOR_API_AUTH": "false", "CONDUCTOR_EVENTS_PATH": str(log.parent / "ev.db"),
               "PYTHONUNBUFFERED": "1", **env}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "controller", "run", "--kubeconfig", cluster.kubeconfig,
             "--manifests", str(root), "--namespace", namespace, "--port", str(port),
             "--interval", "3600"],
            stdout=out, stderr=subprocess.STDOUT, env=environ, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


@contextmanager
def missing_image_tag(cluster: LocalCluster, kube: Kube, namespace: str,
                      prefix: str) -> Iterator[str]:
    """An image tag the simulated kubelet reports as not found (ImagePullBackOff): added
    to the running simulator's list (it re-reads it on every Pod; the tag is unique, so it
    touches no one else's Pods and may stay listed), or, with no simulator running, this
    test's own for its namespace only."""
    tag = f"{prefix}-{secrets.token_hex(4)}"
    state_dir = Path(cluster.state.dir) if cluster.state else Path(cluster.kubeconfig).parent
    state = running.ClusterState.load(state_dir)
    if state is not None and any(p.name == "kubelet-simulator" and Path(f"/proc/{p.pid}").exists()
                                 for p in state.processes):
        with running.missing_images_file(state_dir).open("a") as f:
            f.write(f"{tag}\n")
        yield tag
        return
    simulator = kubelet.Simulator(kube, lambda: {tag}, namespace).start()
    try:
        yield tag
    finally:
        simulator.stop()


def service_account_kubeconfig(cluster: LocalCluster, kube: Kube, namespace: str,
                                name: str, path: Path) -> Path:
    """A kubeconfig with the token the API server issued for this ServiceAccount (the
    token controller's Secret, as on 1.20), the cluster's server and CA."""
    def token() -> str | None:
        sa = kube.get("v1", "ServiceAccount", name, namespace)
        for ref in (sa or {}).get("secrets") or []:
            secret = kube.get("v1", "Secret", ref["name"], namespace)
            if secret and (secret.get("data") or {}).get("token"):
                return base64.b64decode(secret["data"]["token"]).decode()
        return None

    value: str = wait_for(token, message=f"a token Secret for ServiceAccount {name}")
    admin = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    cluster_entry = admin["clusters"][0]["cluster"]
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster_entry}],
        "users": [{"name": name, "user": {"token": value}}],
        "contexts": [{"name": name, "context": {"cluster": "local", "user": name}}],
        "current-context": name,
    }))
    path.chmod(0o600)
    return path


@contextmanager
def more_namespaces(kube: Kube, names: list[str]) -> Iterator[list[str]]:
    """Namespaces beyond a test's own, for instances of their own; deleted after, each
    instance's finalizers stripped first (its controller is stopped by then, and a
    namespace holding conductor's finalizer would stay Terminating)."""
    for name in names:
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    try:
        yield names
    finally:
        for name in names:
            for obj in kube.list(API_VERSION, KIND, name)[0]:
                kube.patch(API_VERSION, KIND, obj["metadata"]["name"],
                           {"metadata": {"finalizers": []}}, name)
            kube.delete("v1", "Namespace", name)
