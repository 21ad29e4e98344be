"""The ground everything else stands on: a real API server and controller manager."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from controller.adapters.kube import Kube, KubeError
from devcluster import kubelet, running
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.conductor.io"},
    "spec": {
        "group": "test.conductor.io",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "spec": {"type": "object", "properties": {"size": {"type": "integer"}}}}}},
        }],
    },
}


def _deployment(name: str, namespace: str, image: str = "nginx:1.25",
                replicas: int = 2) -> dict:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "web", "image": image}]}}},
    }


def _pods(kube: Kube, namespace: str, app: str) -> list[dict]:
    return kube.list("v1", "Pod", namespace, f"app={app}")[0]


def test_crd_and_custom_resource_round_trip(kube: Kube, namespace: str) -> None:
    kube.apply(WIDGET_CRD)
    wait_for(lambda: any(c["type"] == "Established" and c["status"] == "True"
                         for c in (kube.get("apiextensions.k8s.io/v1",
                                            "CustomResourceDefinition",
                                            "widgets.test.conductor.io") or {})
                         .get("status", {}).get("conditions", [])), message="CRD established")
    kube.forget("test.conductor.io/v1")
    wait_for(lambda: kube.resource("test.conductor.io/v1", "Widget"), message="discovery")
    kube.apply({"apiVersion": "test.conductor.io/v1", "kind": "Widget",
                "metadata": {"name": "w1", "namespace": namespace}, "spec": {"size": 3}})
    got = kube.get("test.conductor.io/v1", "Widget", "w1", namespace)
    assert got is not None
    assert got["spec"] == {"size": 3}
    assert got["metadata"]["managedFields"][0]["manager"] == "conductor"


def test_deployment_gets_replicaset_and_pods(kube: Kube, namespace: str) -> None:
    applied = kube.apply(_deployment("web", namespace))
    uid = applied["metadata"]["uid"]
    rs = wait_for(lambda: kube.list("apps/v1", "ReplicaSet", namespace, "app=web")[0],
                  message="ReplicaSet from the deployment controller")
    assert rs[0]["metadata"]["ownerReferences"][0]["uid"] == uid
    pods = wait_for(lambda: len(_pods(kube, namespace, "web")) == 2
                    and _pods(kube, namespace, "web"), message="2 pods")
    assert all(p["status"]["phase"] == "Pending" for p in pods)  # no scheduler, no kubelet
    # Garbage collection (controller manager) removes dependents of a deleted owner.
    kube.delete("apps/v1", "Deployment", "web", namespace)
    wait_for(lambda: not kube.list("apps/v1", "ReplicaSet", namespace, "app=web")[0],
             message="ReplicaSet collected")


def test_kubelet_helper_drives_pod_states(kube: Kube, namespace: str) -> None:
    kube.apply(_deployment("app", namespace, replicas=2))
    pods = wait_for(lambda: len(_pods(kube, namespace, "app")) == 2
                    and _pods(kube, namespace, "app"), message="pods")
    kubelet.mark_ready(kube, pods[0])
    kubelet.mark_waiting(kube, pods[1], "ImagePullBackOff",
                         'Back-off pulling image "nginx:1.25"')
    ready = kube.get("v1", "Pod", pods[0]["metadata"]["name"], namespace)
    waiting = kube.get("v1", "Pod", pods[1]["metadata"]["name"], namespace)
    assert ready and waiting
    assert ready["status"]["phase"] == "Running"
    assert {c["type"]: c["status"] for c in ready["status"]["conditions"]}["Ready"] == "True"
    state = waiting["status"]["containerStatuses"][0]["state"]
    assert state["waiting"]["reason"] == "ImagePullBackOff"
    # The deployment controller sees the ready pod through the real status.
    wait_for(lambda: (kube.get("apps/v1", "Deployment", "app", namespace) or {})
             .get("status", {}).get("readyReplicas") == 1, message="readyReplicas=1")
    kubelet.mark_waiting(kube, waiting, "CrashLoopBackOff", "back-off 10s restarting",
                         restarts=3, last_exit_code=1)
    crashed = kube.get("v1", "Pod", pods[1]["metadata"]["name"], namespace)
    assert crashed
    status = crashed["status"]["containerStatuses"][0]
    assert status["restartCount"] == 3
    assert status["lastState"]["terminated"]["exitCode"] == 1


def test_more_services_than_a_slash_24_holds(kube: Kube, namespace: str) -> None:
    """Benchmarks of many instances create hundreds of Services; a /24 service range ran
    out at 254 ("range is full"). 300 ClusterIP Services all get an address."""
    from concurrent.futures import ThreadPoolExecutor

    def create(i: int) -> str:
        body = kube.create({"apiVersion": "v1", "kind": "Service",
                            "metadata": {"name": f"s{i}", "namespace": namespace},
                            "spec": {"ports": [{"port": 80}]}})
        return str(body["spec"]["clusterIP"])

    with ThreadPoolExecutor(8) as pool:
        addresses = set(pool.map(create, range(300)))
    assert len(addresses) == 300


def test_permanent_errors_are_not_retried(kube: Kube, namespace: str) -> None:
    calls: list[int] = []
    observed = Kube(kube.api, kube.settings, observer=lambda verb, code, s: calls.append(code))
    with pytest.raises(KubeError) as err:
        observed.apply({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": "Not_Valid", "namespace": namespace}})
    assert err.value.status == 422
    assert calls.count(422) == 1


def _listening_addresses(pids: set[int]) -> list[str]:
    out = subprocess.run(["ss", "-H", "-ltnp"], capture_output=True, text=True,
                         check=True).stdout
    found = []
    for line in out.splitlines():
        if any(f"pid={pid}," in line for pid in pids):
            found.append(line.split()[3])
    return found


def test_cli_up_simulated_kubelet_loopback_only_and_down(tmp_path: Path) -> None:
    """The command line as a user runs it: up, use, env, down — no process left behind."""
    state_dir = tmp_path / "state"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    conductor = [sys.executable, "-m", "controller", "cluster"]
    up = subprocess.run([*conductor, "up", "--simulate-kubelet", "--missing-image", "0.0-missing",
                         "--state-dir", str(state_dir)], capture_output=True, text=True,
                        env=env, timeout=300, check=False)
    assert up.returncode == 0, up.stderr
    state = running.ClusterState.load(state_dir)
    assert state is not None
    try:
        assert up.stdout.strip() == f"export KUBECONFIG={state.kubeconfig}"
        env_out = subprocess.run([*conductor, "env", "--state-dir", str(state_dir)],
                                 capture_output=True, text=True, check=True).stdout
        assert env_out.strip() == up.stdout.strip()
        names = {p.name for p in state.processes}
        assert names == {"etcd", "kube-apiserver", "kube-controller-manager",
                         "kubelet-simulator"}
        pids = {p.pid for p in state.processes}
        addresses = wait_for(lambda: _listening_addresses(pids), message="listeners")
        assert all(a.startswith("127.0.0.1:") for a in addresses), addresses

        from controller.config import Config
        kube = Kube.connect(Config(kubeconfig=state.kubeconfig))
        kube.apply(_deployment("good", "default", "nginx:1.25", replicas=1))
        kube.apply(_deployment("bad", "default", "nginx:0.0-missing", replicas=1))
        wait_for(lambda: (kube.get("apps/v1", "Deployment", "good", "default") or {})
                 .get("status", {}).get("readyReplicas") == 1, timeout=60,
                 message="simulated kubelet makes the good pod ready")

        def bad_reason() -> str:
            pods = _pods(kube, "default", "bad")
            statuses = pods[0]["status"].get("containerStatuses") if pods else None
            return str(statuses[0]["state"].get("waiting", {}).get("reason")) if statuses else ""
        assert wait_for(lambda: bad_reason() == "ImagePullBackOff", timeout=60,
                        message="missing image -> ImagePullBackOff")
        kube.close()
    finally:
        down = subprocess.run([*conductor, "down", "--state-dir", str(state_dir)],
                              capture_output=True, text=True, timeout=120, check=False)
    assert down.returncode == 0, down.stderr
    for proc in state.processes:
        assert not Path(f"/proc/{proc.pid}").exists() or _zombie_or_other(proc), proc.name


def _zombie_or_other(proc: running.Proc) -> bool:
    try:
        stat = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return True
    return stat[0] == "Z" or stat[19] != proc.start_time
