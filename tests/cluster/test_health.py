"""Service health on the real control plane: the example app, pods driven like a kubelet.

There is no scheduler and no kubelet: the controller manager creates ReplicaSets and pods
and computes workload status from the pod status the kubelet helper writes. Each failure
must show up in the monitor within one observation cycle (a watch event), so every check
waits a few seconds at most.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.adapters.kube import Kube
from controller.config import Config
from controller.model.health import IMAGE_HINT, ServiceHealth
from controller.model.times import parse_rfc3339 as parse_time
from controller.model.times import rfc3339
from controller.reconcile.engine import Engine
from controller.runtime.controller import Controller
from controller.runtime.observing import HealthMonitor
from devcluster import kubelet
from tests.support.cluster import App, make_all_ready, pods, wait_pods
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

DETECT = 5.0  # seconds: one watch event, with room for a loaded machine
SERVICES = ["frontend", "postgres", "redis"]


def start(app: App, **kwargs: Any) -> tuple[Engine, HealthMonitor]:
    engine = app.engine()
    report = engine.up()
    assert report.ok, report.summary()
    return engine, HealthMonitor(app.kube, app.cfg, **kwargs).start()


@pytest.fixture
def deployed(app: App) -> Iterator[tuple[Engine, HealthMonitor]]:
    engine, monitor = start(app)
    yield engine, monitor
    monitor.stop()


def status_of(monitor: HealthMonitor, name: str, status: str,
              timeout: float = DETECT) -> ServiceHealth:
    found: ServiceHealth = wait_for(
        lambda: (h := monitor.service(name)).status == status and h,
        timeout=timeout, message=f"{name} {status} (last: {monitor.service(name)})")
    return found


def test_ready_pods_make_every_service_healthy(deployed: tuple[Engine, HealthMonitor],
                                              app: App) -> None:
    _, monitor = deployed
    status_of(monitor, "frontend", "progressing")  # pods created, not running
    make_all_ready(app)
    started = time.monotonic()
    result = monitor.wait(SERVICES, timeout=20)
    assert {n: h.status for n, h in result.items()} == dict.fromkeys(SERVICES, "healthy"), \
        result
    assert time.monotonic() - started < 10

    listed = {h.name: h for h in monitor.services()}
    assert sorted(listed) == SERVICES
    frontend = listed["frontend"].to_dict()
    assert frontend["namespace"] == app.namespace
    checked = parse_time(frontend["lastChecked"])
    assert checked is not None and checked <= datetime.now(UTC)
    # The time of the last change, not of the request: asked again after the clock moved
    # on, with nothing changed, it stays (a late status write starts the check over).
    last = [frontend["lastChecked"]]

    def stays() -> bool:
        now, current = rfc3339(datetime.now(UTC)), monitor.service("frontend").last_checked
        if current != last[-1]:
            last.append(current)
            return False
        return now > current

    wait_for(stays, timeout=10, message=f"lastChecked to stay put (seen: {last})")
    kinds = {k.kind: h.status for k, h in monitor.objects("postgres")}
    assert kinds == {"StatefulSet": "healthy", "PersistentVolumeClaim": "healthy",
                     "Secret": "healthy", "Service": "healthy"}


@pytest.mark.parametrize(("reason", "message", "extra", "hints"), [
    ("ImagePullBackOff", 'Back-off pulling image "nginx:0.0-missing"', {}, [IMAGE_HINT]),
    ("ErrImagePull", "rpc error: code = Unknown desc = Error response from daemon: manifest "
     "for nginx:0.0-missing not found: manifest unknown", {}, [IMAGE_HINT]),
    ("CrashLoopBackOff", "back-off 40s restarting failed container=frontend",
     {"restarts": 4, "last_exit_code": 3}, ["container crashing", "exit code 3",
                                            "4 restart(s)"]),
    ("CreateContainerConfigError", 'secret "db-credentials" not found', {},
     ["missing ConfigMap or Secret: db-credentials"]),
])
def test_a_failing_pod_makes_its_service_unhealthy_at_once(
        deployed: tuple[Engine, HealthMonitor], app: App, reason: str,
        message: str, extra: dict[str, Any], hints: list[str]) -> None:
    _, monitor = deployed
    good, bad = wait_pods(app, "frontend", 2)
    kubelet.mark_ready(app.kube, good)
    status_of(monitor, "frontend", "progressing")
    kubelet.mark_waiting(app.kube, bad, reason, message, **extra)
    started = time.monotonic()
    health = status_of(monitor, "frontend", "unhealthy")
    assert time.monotonic() - started < DETECT
    assert health.reason == reason
    for hint in hints:
        assert hint in health.hint, health.hint
    resource, obj = health.failing[0]
    assert resource == f"{app.namespace}/Deployment/frontend"
    pod = bad["metadata"]["name"]
    assert obj.message == f"pod {pod}: container frontend: {reason}: {message}"
    assert obj.details["pod"] == pod and obj.details["container"] == "frontend"
    # The other services are not affected, and the failure is in the serialized form.
    assert monitor.service("redis").status != "unhealthy"
    assert health.to_dict()["objects"][0]["details"]["reason"] == reason


def test_unschedulable_beyond_the_threshold_is_unhealthy(
        deployed: tuple[Engine, HealthMonitor], app: App) -> None:
    _, monitor = deployed
    (pod,) = wait_pods(app, "redis", 1)
    created = parse_time(pod["metadata"]["creationTimestamp"])
    assert created is not None
    # Test-shortened threshold: the pod turns unhealthy about 3 s from now.
    monitor.pending_threshold = (datetime.now(UTC) - created).total_seconds() + 3
    scheduler = "0/3 nodes are available: 3 Insufficient memory."
    kubelet.mark_unschedulable(app.kube, pod, scheduler)
    early = wait_for(lambda: (h := monitor.service("redis")).reason == "Unschedulable" and h,
                     timeout=DETECT, message="redis unschedulable (progressing)")
    assert early.status == "progressing", early
    assert early.hint == f"unschedulable: {scheduler}"
    started = time.monotonic()
    result = monitor.wait(["redis"], timeout=20)  # wakes at the threshold, not by polling
    assert time.monotonic() - started < 10
    health = result["redis"]
    assert health.status == "unhealthy", health
    assert health.reason == "Unschedulable"
    assert health.hint == f"unschedulable: {scheduler}"
    assert pod["metadata"]["name"] in health.message


def test_a_rolling_deployment_is_progressing_then_healthy(
        deployed: tuple[Engine, HealthMonitor], app: App) -> None:
    engine, monitor = deployed
    for pod in wait_pods(app, "frontend", 2):
        kubelet.mark_ready(app.kube, pod)
    status_of(monitor, "frontend", "healthy")

    app.patch_spec({"services": {"frontend": {"tag": "1.26"}}})
    assert engine.update(["frontend"]).ok
    status_of(monitor, "frontend", "progressing")
    seen: list[str] = []

    def rolled() -> bool:
        for pod in pods(app, "frontend"):
            image = pod["spec"]["containers"][0]["image"]
            if image == "nginx:1.26" and not pod.get("status", {}).get("containerStatuses"):
                kubelet.mark_ready(app.kube, pod)
        health = monitor.service("frontend")
        seen.append(health.status)
        return health.status == "healthy"

    wait_for(rolled, timeout=60, message="rollout to nginx:1.26")
    assert "unhealthy" not in seen, seen
    images = {p["spec"]["containers"][0]["image"] for p in pods(app, "frontend")}
    assert images == {"nginx:1.26"}


JOB = """\
apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
  namespace: {{{{ service.namespace }}}}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
        - name: {name}
          image: busybox:1.36
          command: ["true"]
"""


def test_a_failing_job_is_unhealthy(app: App) -> None:
    (app.root / "batch").mkdir()
    for name in ("migrate", "seed"):
        (app.root / "batch" / f"{name}.yaml").write_text(JOB.format(name=name))
    _, monitor = start(app)
    try:
        status_of(monitor, "batch", "progressing")
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        finished = {
            "seed": {"succeeded": 1, "completionTime": now, "conditions": [
                {"type": "Complete", "status": "True", "lastProbeTime": now,
                 "lastTransitionTime": now}]},
            "migrate": {"failed": 1, "conditions": [
                {"type": "Failed", "status": "True", "lastProbeTime": now,
                 "lastTransitionTime": now, "reason": "BackoffLimitExceeded",
                 "message": "Job has reached the specified backoff limit"}]}}

        def finish() -> None:
            """Play the pods' end. The real job controller syncs these Jobs too (their pods
            stay Pending here) and a sync that began before our write replaces the status
            with its own: write again until ours holds."""
            for name, status in finished.items():
                job = app.kube.get("batch/v1", "Job", name, app.namespace) or {}
                types = {c.get("type") for c in (job.get("status") or {}).get("conditions")
                         or []}
                if not types & {"Complete", "Failed"}:
                    app.kube.patch("batch/v1", "Job", name, {"status": status},
                                   app.namespace, subresource="status")

        def batch(status: str) -> ServiceHealth | None:
            finish()
            health = monitor.service("batch")
            return health if health.status == status else None
        health = wait_for(lambda: batch("unhealthy"), timeout=DETECT * 3,
                          message="batch unhealthy")
        assert health.reason == "BackoffLimitExceeded"
        assert health.message == (f"{app.namespace}/Job/migrate: Job has reached the "
                                  "specified backoff limit")
        assert "check its pods' logs" in health.hint

        def objects() -> dict[str, str]:
            finish()
            return {k.name: h.status for k, h in monitor.objects("batch")}
        wait_for(lambda: objects() == {"migrate": "unhealthy", "seed": "healthy"},
                 timeout=DETECT * 3, message="migrate unhealthy, seed healthy")
    finally:
        monitor.stop()


def test_a_service_taken_down_reports_down(deployed: tuple[Engine, HealthMonitor],
                                           app: App) -> None:
    engine, monitor = deployed
    status_of(monitor, "redis", "progressing")
    assert engine.down(["redis"]).ok
    health = status_of(monitor, "redis", "down")
    assert health.reason == "NotDeployed"
    assert monitor.service("frontend").status != "down"
    assert "redis" in {h.name for h in monitor.services()}
    # Waiting for everything deployed leaves out what is down.
    make_all_ready(app, but="redis")
    assert sorted(monitor.wait(timeout=20)) == ["frontend", "postgres"]
    assert engine.up(["redis"]).ok
    status_of(monitor, "redis", "progressing")


def test_the_controller_serves_health_from_its_passes(app: App, tmp_path: Path) -> None:
    cfg = replace(app.cfg, events=replace(app.cfg.events, path=tmp_path / "events.db"))
    # Its own connection: the controller guards writes on it by leadership.
    kube = Kube.connect(cfg)
    controller = Controller(cfg, kube=kube).start()
    try:
        wait_for(lambda: sorted(h.name for h in controller.health.services()) == SERVICES,
                 timeout=30, message="services known after the first pass")
        make_all_ready(app)
        result = controller.health.wait(timeout=20)
        assert {n: h.status for n, h in result.items()} == dict.fromkeys(SERVICES, "healthy")
    finally:
        controller.stop()
        kube.close()


# -- RBAC ------------------------------------------------------------------------------------

ROLE_RULES = [
    {"apiGroups": ["conductor.io"], "verbs": ["*"],
     "resources": ["deploymentparameters", "deploymentparameters/status"]},
    {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets"], "verbs": ["*"]},
    {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["configmaps", "secrets", "persistentvolumeclaims"],
     "verbs": ["*"]},
    # Services may be read, not written; pods not even read.
    {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch"]},
]


def limited_kube(app: App, tmp_path: Path) -> Kube:
    """A connection as a service account bound to ROLE_RULES (plus its namespace)."""
    ns, kube = app.namespace, app.kube
    kube.create({"apiVersion": "v1", "kind": "ServiceAccount",
                 "metadata": {"name": "limited", "namespace": ns}})
    kube.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                 "metadata": {"name": "limited", "namespace": ns}, "rules": ROLE_RULES})
    subject = [{"kind": "ServiceAccount", "name": "limited", "namespace": ns}]
    kube.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                 "metadata": {"name": "limited", "namespace": ns}, "subjects": subject,
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                             "name": "limited"}})
    # The app's Namespace object is cluster-scoped: a ClusterRole may apply it.
    kube.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                 "metadata": {"name": f"limited-{ns}"}, "rules": [
                     {"apiGroups": [""], "resources": ["namespaces"],
                      "verbs": ["get", "list", "watch", "patch"]}]})
    kube.create({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                 "metadata": {"name": f"limited-{ns}"}, "subjects": subject,
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                             "name": f"limited-{ns}"}})

    def token() -> str:
        account = kube.get("v1", "ServiceAccount", "limited", ns) or {}
        for ref in account.get("secrets") or []:
            secret = kube.get("v1", "Secret", ref["name"], ns) or {}
            if (secret.get("data") or {}).get("token"):
                return base64.b64decode(secret["data"]["token"]).decode()
        return ""

    config = yaml.safe_load(Path(app.cluster.kubeconfig).read_text())
    for user in config["users"]:
        user["user"] = {"token": wait_for(token, message="service account token")}
    path = tmp_path / "limited.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return Kube.connect(Config(kubeconfig=str(path)))


@contextmanager
def limited(app: App, tmp_path: Path) -> Iterator[Kube]:
    """`limited_kube`, closed and its cluster-scoped grants removed afterwards."""
    kube = limited_kube(app, tmp_path)
    try:
        yield kube
    finally:
        kube.close()
        for kind in ("ClusterRoleBinding", "ClusterRole"):
            app.kube.delete("rbac.authorization.k8s.io/v1", kind, f"limited-{app.namespace}")


def test_a_service_rbac_keeps_from_being_created_is_unhealthy_not_down(
        app: App, tmp_path: Path) -> None:
    # The first install, refused by the dry run: nothing exists, yet every service is
    # wanted; health names the refusal instead of calling them not deployed.
    with limited(app, tmp_path) as kube:
        report = app.engine(kube=kube).up()
        assert report.error is not None and report.results.failed, report.summary()
        monitor = HealthMonitor(kube, app.cfg).start()
        try:
            assert report.plan is not None
            monitor.after_pass(report.plan.items, report.results.items, report.error)
            health = status_of(monitor, "frontend", "unhealthy")
            assert health.reason == "Forbidden", health
            assert health.hint.startswith("RBAC: the controller may not patch services")
        finally:
            monitor.stop()


def test_forbidden_answers_are_rbac_problems(app: App, tmp_path: Path) -> None:
    # Deployed with full rights; then the controller's account loses Services' writes and
    # pods' reads, and a change to the frontend's port needs both its Service and its
    # Deployment: the dry run refuses the Service, so nothing is applied.
    assert app.engine().up().ok
    with limited(app, tmp_path) as kube:
        app.patch_spec({"services": {"frontend": {"port": 8080}}})
        report = app.engine(kube=kube).up()
        failed = {(r.key.kind, (r.error or {}).get("status")) for r in report.results.failed}
        assert failed == {("Service", 403)}, report.summary()
        monitor = HealthMonitor(kube, app.cfg).start()
        try:
            assert report.plan is not None
            monitor.after_pass(report.plan.items, report.results.items, report.error)
            health = status_of(monitor, "frontend", "unhealthy")
            problems = {(h.details.get("verb"), h.details.get("resource")): (key, h)
                        for key, h in health.failing if h.reason == "Forbidden"}
            key, problem = problems[("patch", "services")]
            assert key == f"{app.namespace}/Service/frontend"
            assert problem.hint.startswith("RBAC: the controller may not patch services")
            assert "cannot patch resource" in problem.message
            # The monitor's own watch of pods is forbidden too, and says so.
            wait_for(lambda: any(h.details.get("verb") == "list"
                                 and h.details.get("resource") == "pods"
                                 for _, h in monitor.service("redis").failing),
                     timeout=DETECT, message="list pods forbidden")
        finally:
            monitor.stop()
