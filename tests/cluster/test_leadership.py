"""Leader election on a coordination.k8s.io/v1 Lease against the local control plane.

Two `conductor run` processes serve the same app instance, each behind its own counting
proxy (tests/proxy.py), so the test sees every request each replica sends: exactly one
leads and writes, both serve reads, a change is applied once, and when the leader is killed
the other takes over within the lease duration without applying anything a second time.
In-process, a leader that cannot renew steps down within its renew deadline and refuses
writes from that moment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from falcon import testing

from controller.adapters.kube import Kube, NotLeaderError
from controller.adapters.sources.resource import API_VERSION, KIND
from controller.config import ApiSettings, ApplySettings, Config, EventSettings, LeaderSettings
from controller.runtime.controller import Controller
from controller.runtime.leadership import LeaderElector
from controller.serving import app_for
from devcluster import kubelet
from devcluster.running import free_port
from tests.support.cluster import App, LocalCluster, controller_process
from tests.support.proxy import ApiProxy
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster


REPO = Path(__file__).resolve().parents[2]
LEASE = "conductor-conductor-default"  # conductor-<app name>-<instance>
LEASE_DURATION = 4.0
RENEW_DEADLINE = 3.0
RETRY_PERIOD = 0.5
# Our own bookkeeping, not the app's objects: the lease, the DeploymentParameters object
# (and its status), Kubernetes Events (resource names in a request path).
BOOKKEEPING = frozenset({"leases", "deploymentparameters", "events"})


@dataclass
class Replica:
    identity: str
    port: int
    proxy: ApiProxy
    proc: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            return json.loads(r.read())

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method="POST",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def metric(self, series: str) -> float | None:
        """One series' value from /metrics, None when the replica does not export it."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        for line in text.splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
        return None

    def services(self) -> set[str]:
        return {s["name"] for s in self.get("/api/services")["services"]}

    def role(self) -> dict[str, Any]:
        """/readyz: 200 once started, with the role."""
        ready: dict[str, Any] = self.get("/readyz")
        return ready

    def writes(self) -> list[tuple[str, str, int]]:
        """Write requests this replica sent since the proxy's last reset."""
        with self.proxy.stats.lock:
            return [e for e in self.proxy.stats.log if e[0] in ("POST", "PUT", "PATCH",
                                                                 "DELETE")]

    def app_writes(self) -> list[tuple[str, str, int]]:
        """Writes to the app's objects (applies, prunes), not our bookkeeping."""
        return [e for e in self.writes() if "dryRun" not in e[1]
                and not BOOKKEEPING & set(e[1].split("?")[0].split("/"))]

    def applies_of(self, namespace: str, kind_path: str, name: str) -> int:
        path = f"/namespaces/{namespace}/{kind_path}/{name}"
        return sum(1 for m, p, _ in self.app_writes()
                   if m == "PATCH" and p.split("?")[0].endswith(path))


@contextmanager
def replica(cluster: LocalCluster, root: Path, namespace: str, workdir: Path,
            identity: str) -> Iterator[Replica]:
    """`conductor run` with identity `identity`, talking to the API server through a proxy."""
    workdir.mkdir()
    with ApiProxy(cluster.kubeconfig, workdir) as proxy:
        port = free_port()
        log = workdir / "controller.log"  # its event store is workdir/ev.db: its own
        via_proxy = LocalCluster(str(proxy.kubeconfig), None)
        with controller_process(
                via_proxy, root, namespace, port, log,
                CONDUCTOR_LEADER_LEASE_DURATION=str(LEASE_DURATION),
                CONDUCTOR_LEADER_RENEW_DEADLINE=str(RENEW_DEADLINE),
                CONDUCTOR_LEADER_RETRY_PERIOD=str(RETRY_PERIOD),
                CONDUCTOR_LEADER_IDENTITY=identity) as proc:
            yield Replica(identity, port, proxy, proc, log)


def manifests(tmp_path: Path, namespace: str) -> Path:
    root = tmp_path / "manifests"
    shutil.copytree(REPO / "manifests", root)
    params = yaml.safe_load((root / "parameters.yaml").read_text())
    params.setdefault("global", {})["namespace"] = namespace
    (root / "parameters.yaml").write_text(yaml.safe_dump(params))
    return root


def holder(kube: Kube, namespace: str) -> str:
    lease = kube.get("coordination.k8s.io/v1", "Lease", LEASE, namespace) or {}
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def redis_replicas(kube: Kube, namespace: str) -> int:
    deployment = kube.get("apps/v1", "Deployment", "redis", namespace) or {}
    return int((deployment.get("spec") or {}).get("replicas") or 0)


def settled(kube: Kube, namespace: str, replica: Replica) -> bool:
    """The parameters' current generation is applied (Ready) and `replica` has run a pass."""
    kubelet.settle(kube, namespace)  # Ready means applied and healthy: pods must run
    obj = kube.get(API_VERSION, KIND, "default", namespace) or {}
    status = obj.get("status") or {}
    ready = {c["type"]: c["status"] for c in status.get("conditions", [])}.get("Ready")
    return (ready == "True" and status.get("observedGeneration")
            == obj["metadata"]["generation"] and "lastPass" in replica.get("/api/status"))


def scale_redis(cluster: LocalCluster, namespace: str, replicas: int) -> None:
    """Someone else changes the Deployment (drift), as `kubectl scale`."""
    subprocess.run(["kubectl", "--kubeconfig", cluster.kubeconfig, "-n", namespace, "scale",
                    "deployment/redis", f"--replicas={replicas}"], check=True,
                   capture_output=True)


def patch_redis(kube: Kube, namespace: str, replicas: int) -> None:
    kube.patch(API_VERSION, KIND, "default",
               {"spec": {"services": {"redis": {"replicas": replicas}}}}, namespace)


@pytest.fixture
def pair(cluster: LocalCluster, kube: Kube, namespace: str, tmp_path: Path,
         crd: dict[str, Any]) -> Iterator[tuple[Replica, Replica]]:
    """Two replicas of one instance, started together; (leader, follower) once decided."""
    root = manifests(tmp_path, namespace)
    with ExitStack() as stack:
        replicas = [stack.enter_context(replica(cluster, root, namespace, tmp_path / name,
                                                name)) for name in ("a", "b")]

        def decided() -> tuple[Replica, Replica] | None:
            roles = [r.role() for r in replicas]
            if any(role["status"] != "ready" for role in roles):
                return None
            leaders = [r for r, role in zip(replicas, roles, strict=True) if role["leader"]]
            if len(leaders) != 1:
                return None
            follower = next(r for r in replicas if r is not leaders[0])
            return leaders[0], follower
        leader, follower = wait_for(decided, timeout=60, message="one leader of two replicas")
        wait_for(lambda: settled(kube, namespace, leader), timeout=60,
                 message=f"the leader's first pass (log: {leader.log})")
        yield leader, follower


def test_exactly_one_replica_leads_both_serve_reads_and_a_change_is_applied_once(
        pair: tuple[Replica, Replica], cluster: LocalCluster, kube: Kube,
        namespace: str) -> None:
    leader, follower = pair
    assert holder(kube, namespace) == leader.identity
    for r in (leader, follower):
        role = r.role()
        assert role["leader"] is (r is leader)
        assert role["holder"] == leader.identity
        status = r.get("/api/status")
        assert status["leader"] == {"isLeader": r is leader, "identity": r.identity,
                                    "holder": leader.identity}
        # Reads are served by every replica, from their own watches.
        services = wait_for(r.services, message=f"services on {r.identity}")
        assert services == {"frontend", "redis", "postgres"}
    # Each replica's /metrics says whether it leads (the alerts' leader filter needs the 0).
    series = f'conductor_leader{{kind="{KIND}",name="default",namespace="{namespace}"}}'
    assert leader.metric(series) == 1
    assert follower.metric(series) == 0
    assert "lastPass" in leader.get("/api/status")
    assert "lastPass" not in follower.get("/api/status"), "the follower ran a pass"
    assert follower.get("/api/status")["loop"]["passes"] == 0
    assert follower.app_writes() == [], "the follower wrote to the app's objects"

    leader.proxy.stats.reset()
    follower.proxy.stats.reset()
    # A follower asked to write does not refuse (issue 14): it records the request on the
    # DeploymentParameters object, the leader carries it out (once), and the follower
    # answers the leader's result; it writes nothing to the app's objects itself.
    scale_redis(cluster, namespace, 5)
    code, answer = follower.post("/api/up", {"services": ["redis"]})
    assert code == 200 and answer["message"] == "Successfully deployed all manifests", answer
    assert follower.app_writes() == []
    assert redis_replicas(kube, namespace) == 1
    assert leader.applies_of(namespace, "deployments", "redis") == 1
    leader.proxy.stats.reset()
    follower.proxy.stats.reset()

    patch_redis(kube, namespace, 2)
    wait_for(lambda: redis_replicas(kube, namespace) == 2, timeout=30,
             message="the change applied")
    wait_for(lambda: settled(kube, namespace, leader), timeout=30, message="the pass done")
    assert leader.applies_of(namespace, "deployments", "redis") == 1, leader.app_writes()
    assert follower.writes() == [], "the follower sent a write request"
    assert follower.get("/api/status")["loop"]["passes"] == 0
    # Later passes (another change) apply what changed, and never redis again.
    kube.patch(API_VERSION, KIND, "default",
               {"spec": {"services": {"frontend": {"replicas": 3}}}}, namespace)
    wait_for(lambda: (kube.get("apps/v1", "Deployment", "frontend", namespace) or {})
             .get("spec", {}).get("replicas") == 3, timeout=30, message="a second change")
    wait_for(lambda: settled(kube, namespace, leader), timeout=30, message="the pass done")
    assert leader.applies_of(namespace, "deployments", "frontend") == 1
    assert leader.applies_of(namespace, "deployments", "redis") == 1
    assert follower.writes() == []
    # The follower still serves reads of the new state (health from its watches).
    redis = follower.get("/api/services/redis")
    assert redis["name"] == "redis"
    assert holder(kube, namespace) == leader.identity


def test_killing_the_leader_hands_over_within_the_lease_duration_without_reapplying(
        pair: tuple[Replica, Replica], kube: Kube, namespace: str) -> None:
    leader, survivor = pair
    leader.proxy.stats.reset()
    patch_redis(kube, namespace, 2)
    wait_for(lambda: redis_replicas(kube, namespace) == 2, timeout=30,
             message="the change applied by the first leader")
    wait_for(lambda: settled(kube, namespace, leader), timeout=30, message="the pass done")
    assert leader.applies_of(namespace, "deployments", "redis") == 1
    assert survivor.app_writes() == []

    survivor.proxy.stats.reset()
    os.killpg(leader.proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    leader.proc.wait(30)
    wait_for(lambda: survivor.role()["leader"], timeout=LEASE_DURATION * 3, interval=0.05,
             message="the survivor to take over")
    took = time.monotonic() - killed
    # The dead leader renewed at most a retry period before the kill; its lease expires
    # LEASE_DURATION after that renew and the survivor notices within one retry period.
    # The margin covers one lease request and the poll of /readyz.
    assert took <= LEASE_DURATION + RETRY_PERIOD + 0.5, took
    assert holder(kube, namespace) == survivor.identity
    assert survivor.get("/api/status")["leader"]["isLeader"] is True
    series = f'conductor_leader{{kind="{KIND}",name="default",namespace="{namespace}"}}'
    assert survivor.metric(series) == 1

    # Its first pass as leader finds everything applied: nothing is applied twice.
    wait_for(lambda: survivor.get("/api/status")["loop"]["passes"] >= 1, timeout=30,
             message=f"the new leader's first pass (log: {survivor.log})")
    wait_for(lambda: settled(kube, namespace, survivor), timeout=30, message="its pass done")
    assert survivor.app_writes() == [], "the takeover re-applied objects"
    assert survivor.get("/api/status")["lastPass"]["counts"]["applied"] == 0

    # And it applies the next change, once.
    patch_redis(kube, namespace, 3)
    wait_for(lambda: redis_replicas(kube, namespace) == 3, timeout=30,
             message="the new leader applies a new change")
    wait_for(lambda: settled(kube, namespace, survivor), timeout=30, message="the pass done")
    assert survivor.applies_of(namespace, "deployments", "redis") == 1, survivor.app_writes()


def test_a_leader_that_cannot_renew_steps_down_and_stops_writing_at_once(
        cluster: LocalCluster, namespace: str, tmp_path: Path) -> None:
    broken = threading.Event()

    def lease_outage(method: str, path: str, n: int) -> str | None:
        return "503" if broken.is_set() and "/leases" in path else None

    changes: list[bool] = []
    with ApiProxy(cluster.kubeconfig, tmp_path, lease_outage) as proxy:
        cfg = replace(Config(kubeconfig=str(proxy.kubeconfig)),
                      apply=ApplySettings(backoff_initial=0.05, backoff_max=0.2))
        kube = Kube.connect(cfg)
        elector = LeaderElector(kube, namespace, "solo", identity="solo",
                                lease_duration=LEASE_DURATION, renew_deadline=RENEW_DEADLINE,
                                retry_period=RETRY_PERIOD, on_change=changes.append)
        kube.write_guard = lambda: elector.is_leader
        config_map = {"apiVersion": "v1", "kind": "ConfigMap",
                      "metadata": {"name": "written", "namespace": namespace},
                      "data": {"n": "1"}}
        try:
            elector.start()
            wait_for(lambda: elector.is_leader, timeout=10, message="the lease acquired")
            kube.apply(config_map)  # the leader writes
            wait_for(lambda: changes == [True], message="on_change(True)")

            broken.set()
            cut = time.monotonic()
            wait_for(lambda: not elector.is_leader, timeout=RENEW_DEADLINE * 3,
                     interval=0.02, message="the leader to step down")
            stepped_down = time.monotonic() - cut
            # Within the renew deadline of the last renew (which came before the cut), and
            # before the lease could expire for another replica.
            assert stepped_down <= RENEW_DEADLINE + 0.1, stepped_down
            assert stepped_down < LEASE_DURATION
            assert proxy.stats.faults["503"] > 0, "no lease request failed"
            # From that moment no write leaves the process.
            assert kube.write_guard() is False
            proxy.stats.reset()
            with pytest.raises(NotLeaderError):
                kube.apply({**config_map, "data": {"n": "2"}})
            with pytest.raises(NotLeaderError):
                kube.delete("v1", "ConfigMap", "written", namespace)
            assert proxy.stats.writes == 0
            wait_for(lambda: changes == [True, False], timeout=RETRY_PERIOD * 20,
                     message="on_change(False)")
            # Reads still work.
            found = kube.get("v1", "ConfigMap", "written", namespace)
            assert found is not None and found["data"] == {"n": "1"}

            # The API server back: the same identity takes its lease again and writes.
            broken.clear()
            wait_for(lambda: elector.is_leader, timeout=LEASE_DURATION * 3,
                     message="the lease re-acquired")
            kube.apply({**config_map, "data": {"n": "3"}})
            found = kube.get("v1", "ConfigMap", "written", namespace)
            assert found is not None and found["data"] == {"n": "3"}
        finally:
            elector.stop(release=True)
            kube.close()


def test_readiness_and_the_role_follow_the_api_server(app: App, tmp_path: Path) -> None:
    """The review saw /readyz answer ready and leader for ~20 s while the API server
    refused connections. Now: not ready within two retry periods and a request's timeout,
    no longer leader within the renew deadline, both back once it answers again."""
    cut = threading.Event()

    def outage(method: str, path: str, n: int) -> str | None:
        return "drop" if cut.is_set() else None

    with ApiProxy(app.cluster.kubeconfig, tmp_path, outage) as proxy:
        cfg = replace(app.cfg, kubeconfig=str(proxy.kubeconfig), api=ApiSettings(auth=False),
                      events=EventSettings(path=tmp_path / "events.db"),
                      apply=ApplySettings(backoff_initial=0.05, backoff_max=0.2),
                      leader=LeaderSettings(lease_duration=LEASE_DURATION,
                                            renew_deadline=RENEW_DEADLINE,
                                            retry_period=RETRY_PERIOD))
        controller = Controller(cfg).start()
        try:
            client = testing.TestClient(app_for(controller))

            def readyz() -> tuple[int, dict[str, Any]]:
                result = client.simulate_get("/readyz")
                return result.status_code, result.json

            wait_for(lambda: readyz() == (200, {**readyz()[1], "status": "ready",
                                                "leader": True}),
                     timeout=30, message="ready and leading")
            cut.set()
            started = time.monotonic()
            wait_for(lambda: readyz()[0] == 503, timeout=30, interval=0.05,
                     message="not ready while the API server is cut off")
            unready = time.monotonic() - started
            status, body = readyz()
            assert (status, body["status"]) == (503, "apiserver-unreachable"), body
            assert body["apiServer"]["reachable"] is False
            # The last answer came at most a retry period before the cut; the margin is
            # the request's timeout (the probe's) and this test's polling.
            assert unready <= RETRY_PERIOD * 3 + 1.0, unready
            wait_for(lambda: readyz()[1]["leader"] is False, timeout=30, interval=0.05,
                     message="leadership given up")
            stepped_down = time.monotonic() - started
            assert stepped_down <= RENEW_DEADLINE + 0.5, stepped_down
            assert stepped_down < LEASE_DURATION  # before another replica could take it
            assert controller.kube.write_guard() is False

            cut.clear()
            wait_for(lambda: readyz()[0] == 200 and readyz()[1]["leader"] is True,
                     timeout=LEASE_DURATION * 3, message="ready and leading again")
        finally:
            cut.clear()
            controller.stop()
