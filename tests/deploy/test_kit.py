"""The deploy kit: alert rules, the kustomize build, the image layout, and the RBAC for real.

What the kit promises is checked where it can go wrong: the alert rules with promtool's
own unit tests (and against the metric names the controller really exports); the build
with `kubectl kustomize`, then a server-side dry-run of all of it on the local API server
(through config/kubernetes-1.20, the overlay for that 1.20 server; test_schemas.py checks
the default kit against 1.25 and later offline); the image installs the package (no
loose folders); and the least-privilege RBAC by deploying the
example app as the kit's ServiceAccount, with a token the API server issued for exactly
that account.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from controller.adapters.kube import Body, Kube, KubeError
from controller.adapters.metrics import Metrics
from controller.adapters.sources.resource import (
    API_VERSION,
    KIND,
    ParametersResource,
    ResourceSource,
)
from controller.cli import _parser
from controller.config import ApplySettings, Config, LoopSettings
from controller.model.objects import LABEL_INSTANCE
from controller.reconcile.engine import Engine
from controller.runtime.leadership import LeaderElector
from tests.support.cluster import LocalCluster, service_account_kubeconfig
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "config" / "prometheus"
# What the local 1.20 control plane (tests, demo) takes instead of the default kit.
LOCAL_OVERLAY = REPO / "config" / "kubernetes-1.20"
SYSTEM_NAMESPACE = "conductor-system"
ALERTS = {"ConductorReconcileFailing", "ConductorServiceUnhealthy", "ConductorGitFetchFailing",
          "ConductorNoSuccessfulReconcile", "ConductorNoLeader", "ConductorAbsent",
          "ConductorHighRetryRate"}
DEFAULT_KINDS = {"Namespace", "CustomResourceDefinition", "ServiceAccount", "Role",
                 "ClusterRole", "RoleBinding", "ClusterRoleBinding", "Service", "Deployment",
                 "PodDisruptionBudget"}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (scripts/setup installs it)")
    return path


def _run(*args: str, stdin: str | None = None, cwd: Path = REPO) -> str:
    proc = subprocess.run(args, input=stdin, capture_output=True, text=True, cwd=cwd,
                          timeout=120, check=False)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def kustomize(path: Path) -> list[Body]:
    out = _run(_tool("kubectl"), "kustomize", str(path))
    return [d for d in yaml.safe_load_all(out) if d]


def one(docs: list[Body], kind: str, name: str | None = None) -> Body:
    found = [d for d in docs if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def built() -> list[Body]:
    """`kubectl kustomize .` at the repository top: what `kubectl apply -k .` installs."""
    return kustomize(REPO)


# -- alerts -------------------------------------------------------------------------------


def _rules() -> dict[str, Any]:
    doc = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def _alerts() -> dict[str, Body]:
    return {r["alert"]: r for g in _rules()["groups"] for r in g["rules"] if "alert" in r}


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = _tool("promtool")
    _run(promtool, "check", "rules", "rules.yml", cwd=PROMETHEUS)
    out = _run(promtool, "test", "rules", "rules_test.yml", cwd=PROMETHEUS)
    assert "SUCCESS" in out


def test_prometheus_rule_holds_the_same_groups_as_the_rules_file() -> None:
    rule = yaml.safe_load((PROMETHEUS / "prometheus_rule.yaml").read_text())
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["spec"] == _rules()


def test_alerts_are_the_needed_ones_with_severity_and_text() -> None:
    alerts = _alerts()
    assert set(alerts) == ALERTS
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert rule.get("for"), f"{name} fires on a single evaluation"


def test_alerts_use_metrics_the_controller_exports() -> None:
    registry = CollectorRegistry()
    Metrics(registry, "default", "default")
    exported = set()
    for family in registry.collect():
        exported |= {family.name + suffix
                     for suffix in ("", "_total", "_count", "_sum", "_bucket", "_info")}
    used = {m for rule in _alerts().values()
            for m in re.findall(r"\bconductor_[a-z_]+", rule["expr"])}
    assert used, "the rules use no conductor metric"
    assert used <= exported, f"not exported by controller/adapters/metrics.py: {used - exported}"


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    tests = yaml.safe_load((PROMETHEUS / "rules_test.yml").read_text())
    assert tests["rule_files"] == ["rules.yml"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == ALERTS, f"never tested firing: {ALERTS - firing}"
    assert quiet == ALERTS, f"never tested quiet: {ALERTS - quiet}"


# -- the kustomize build --------------------------------------------------------------------


def test_default_build_has_the_kit_and_no_monitoring(built: list[Body]) -> None:
    assert {d["kind"] for d in built} == DEFAULT_KINDS
    one(built, "Namespace", SYSTEM_NAMESPACE)
    for doc in built:
        if doc["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole",
                               "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == SYSTEM_NAMESPACE, doc["metadata"]
    crd = one(built, "CustomResourceDefinition")
    assert crd["metadata"]["name"] == "deploymentparameters.conductor.io"


def test_manager_deployment(built: list[Body]) -> None:
    deploy = one(built, "Deployment")
    spec = deploy["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"][
        "labels"].items()
    sa = one(built, "ServiceAccount")
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    (container,) = pod["containers"]
    assert container["image"] == "conductor:latest"
    # The image's entrypoint is `python -m controller`: the args must parse with the real
    # command line and bind every address (the default is loopback only).
    args = _parser().parse_args(container["args"])
    assert (args.command, args.host, args.port) == ("run", "0.0.0.0", 8081)
    port = next(p for p in container["ports"] if p["name"] == "http")
    assert port["containerPort"] == 8081
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    env = {e["name"]: e for e in container["env"]}
    assert env["CONDUCTOR_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.namespace"
    # The only writable place is an emptyDir at /tmp (HOME, caches, gunicorn's files).
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_pdb_and_service(built: list[Body]) -> None:
    deploy = one(built, "Deployment")
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    pdb = one(built, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"  # 1.25+ serve no other (test_schemas.py)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = one(built, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [{"name": "http", "port": 8081, "targetPort": "http",
                                         "protocol": "TCP"}]


def test_bindings_refer_to_the_built_roles_and_service_account(built: list[Body]) -> None:
    sa = one(built, "ServiceAccount")["metadata"]
    roles = {(d["kind"], d["metadata"]["name"]) for d in built
             if d["kind"] in ("Role", "ClusterRole")}
    bindings = [d for d in built if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert len(bindings) == 3
    for binding in bindings:
        ref = binding["roleRef"]
        assert (ref["kind"], ref["name"]) in roles, ref
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["name"],
                                        "namespace": sa["namespace"]}]


def test_monitoring_overlay_adds_servicemonitor_and_rules() -> None:
    docs = kustomize(PROMETHEUS)
    assert {d["kind"] for d in docs} == DEFAULT_KINDS | {"ServiceMonitor", "PrometheusRule"}
    rule = one(docs, "PrometheusRule")
    assert rule["spec"] == _rules()
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    # job="conductor", as the alerts expect, and the metrics' own namespace/name labels.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "conductor"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["honorLabels"]) == \
        ("http", "/metrics", True)
    assert not [d for d in docs if d["metadata"]["name"].startswith("conductor-conductor-")]


def test_kubernetes_1_20_overlay_only_switches_the_pdb(built: list[Body]) -> None:
    """The local control plane's overlay: the default kit with a policy/v1beta1 PDB (1.20
    serves no policy/v1 one); every other object exactly as the default build has it."""
    docs = kustomize(LOCAL_OVERLAY)
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1beta1"
    old = one(built, "PodDisruptionBudget")
    assert pdb["spec"] == old["spec"]
    assert {k: v for k, v in pdb.items() if k != "apiVersion"} == \
        {k: v for k, v in old.items() if k != "apiVersion"}
    assert [d for d in docs if d is not pdb] == [d for d in built if d is not old]


def test_postgres_overlay_adds_only_the_store_url_from_a_secret(built: list[Body]) -> None:
    """config/postgres (issue 14): two replicas sharing PostgreSQL, the URL from a Secret
    the user creates; every other object as the default build, which has no store URL."""
    docs = kustomize(REPO / "config" / "postgres")
    deploy, old = one(docs, "Deployment"), one(built, "Deployment")
    assert deploy["spec"]["replicas"] == 2
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["CONDUCTOR_STORE_URL"]["valueFrom"] == {
        "secretKeyRef": {"name": "conductor-store", "key": "url"}}
    (default_container,) = old["spec"]["template"]["spec"]["containers"]
    assert "CONDUCTOR_STORE_URL" not in {e["name"] for e in default_container["env"]}
    container["env"] = [e for e in container["env"] if e["name"] != "CONDUCTOR_STORE_URL"]
    assert deploy == old
    assert [d for d in docs if d is not deploy] == [d for d in built if d is not old]


# -- the image ------------------------------------------------------------------------------


def _dockerfile() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = (REPO / "Dockerfile").read_text()
    text = re.sub(r"\\\n\s*", " ", text)
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_shape(built: list[Body]) -> None:
    lines = _dockerfile()
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) == 2 and " AS builder" in stages[0]
    assert 'ARG PYTHON_IMAGE=python:3.11-slim' in lines
    assert "USER 10001:10001" in lines
    assert "EXPOSE 8081" in lines
    assert 'ENTRYPOINT ["python", "-m", "controller"]' in lines
    deploy = one(built, "Deployment")["spec"]["template"]["spec"]
    assert deploy["securityContext"]["runAsUser"] == 10001
    # Everything the image copies from the context passes the .dockerignore allow-list.
    allowed = {line[1:] for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    copies = [line.split()[1:] for line in lines
              if line.startswith("COPY ") and "--from=" not in line]
    assert copies
    for *sources, _dest in copies:
        for src in sources:
            assert src in allowed, f"{src} is copied but excluded by .dockerignore"
            assert (REPO / src).exists(), src


def test_image_installs_the_package_not_loose_folders() -> None:
    """The final stage takes only the builder's venv, where the package is pip-installed
    (its assets are package data: tests/deploy/test_wheel.py); nothing is put on
    PYTHONPATH and no source folder is copied into it; devcluster/ is not in the context."""
    lines = _dockerfile()
    final = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    assert [line for line in lines[final:] if line.startswith("COPY ")] == \
        ["COPY --from=builder /opt/venv /opt/venv"]
    assert not any("PYTHONPATH" in line for line in lines)
    assert any(line.startswith("RUN /opt/venv/bin/pip install --no-deps .")
               for line in lines[:final])
    allowed = {line[1:] for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    assert not any(a.startswith(("devcluster", "tests", "bench")) for a in allowed)


# -- on the real API server ----------------------------------------------------------------


@pytest.fixture
def system_namespace(kube: Kube) -> Iterator[str]:
    """conductor-system, existing (a dry-run cannot create it for the objects inside it),
    and removed afterwards if this test created it."""
    def settled() -> Body | bool:
        ns = kube.get("v1", "Namespace", SYSTEM_NAMESPACE)
        return ns is None or ns.get("status", {}).get("phase") != "Terminating"

    wait_for(settled, timeout=60, message=f"{SYSTEM_NAMESPACE} not terminating")
    created = kube.get("v1", "Namespace", SYSTEM_NAMESPACE) is None
    if created:
        kube.create({"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": SYSTEM_NAMESPACE}})
    yield SYSTEM_NAMESPACE
    if created:
        kube.delete("v1", "Namespace", SYSTEM_NAMESPACE)


@pytest.mark.cluster
def test_server_side_dry_run_of_the_build(cluster: LocalCluster,
                                          system_namespace: str) -> None:
    # The local API server is 1.20: its overlay (the default kit is validated against
    # 1.25+ schemas offline in test_schemas.py).
    rendered = _run(_tool("kubectl"), "kustomize", str(LOCAL_OVERLAY))
    out = _run(_tool("kubectl"), "--kubeconfig", cluster.kubeconfig, "apply",
               "--server-side", "--dry-run=server", "-f", "-", stdin=rendered)
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == len([d for d in yaml.safe_load_all(rendered) if d]), out
    assert all(line.endswith("serverside-applied (server dry run)") for line in lines), out


def _allowed(kube: Kube, verb: str, resource: str, namespace: str = "", group: str = "",
             name: str = "") -> bool:
    review = kube.create({"apiVersion": "authorization.k8s.io/v1",
                          "kind": "SelfSubjectAccessReview", "metadata": {},
                          "spec": {"resourceAttributes": {
                              "verb": verb, "resource": resource, "group": group,
                              "namespace": namespace, "name": name}}})
    return bool(review.get("status", {}).get("allowed"))


DAEMONSET = """\
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: {{ name }}
  namespace: {{ service.namespace }}
spec:
  selector:
    matchLabels: {app.kubernetes.io/name: "{{ name }}"}
  template:
    metadata:
      labels: {app.kubernetes.io/name: "{{ name }}"}
    spec:
      containers:
        - name: agent
          image: busybox:1.36
"""


@pytest.mark.cluster
def test_rbac_is_enough_for_the_example_app_and_no_more(
        cluster: LocalCluster, kube: Kube, namespace: str, crd: dict[str, Any],
        tmp_path: Path) -> None:
    # The kit's RBAC, through kustomize as config/default does it, into this test's
    # namespace; cluster-scoped names get a suffix so tests never share them.
    suffix = secrets.token_hex(3)
    overlay = tmp_path / "rbac"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "namespace": namespace, "namePrefix": "conductor-", "nameSuffix": f"-{suffix}",
        "resources": [os.path.relpath(REPO / "config" / "rbac", overlay)]}))
    rbac = kustomize(overlay)
    app_namespace = f"{namespace}-app"  # created by the app's _shared/namespace.yaml
    cluster_scoped = [d for d in rbac if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    try:
        for doc in rbac:
            kube.apply(doc)
        sa_name = one(rbac, "ServiceAccount")["metadata"]["name"]
        kubeconfig = service_account_kubeconfig(cluster, kube, namespace, sa_name,
                                                 tmp_path / "kubeconfig")
        _deploy_as_service_account(kube, kubeconfig, namespace, app_namespace, tmp_path)
    finally:
        for doc in cluster_scoped:
            kube.delete(doc["apiVersion"], doc["kind"], doc["metadata"]["name"])
        kube.delete("v1", "Namespace", app_namespace)


def _deploy_as_service_account(admin: Kube, kubeconfig: Path, namespace: str,
                               app_namespace: str, tmp_path: Path) -> None:
    root = tmp_path / "manifests"
    shutil.copytree(REPO / "manifests", root)
    params = yaml.safe_load((root / "parameters.yaml").read_text())
    params.setdefault("global", {})["namespace"] = app_namespace
    (root / "parameters.yaml").write_text(yaml.safe_dump(params))
    cfg = Config(kubeconfig=str(kubeconfig), namespace=namespace, default_namespace=namespace,
                 manifest_root=root, loop=LoopSettings(interval=3600),
                 apply=ApplySettings(backoff_initial=0.05, backoff_max=0.5,
                                     delete_timeout=20))
    kube = Kube.connect(cfg)
    try:
        # Least privilege, as the API server sees it: the Role works in its namespace only;
        # nothing outside the example app's kinds; no CRDs (the kit installs the CRD).
        assert _allowed(kube, "watch", "deploymentparameters", namespace, "conductor.io")
        assert _allowed(kube, "patch", "deploymentparameters/status", namespace,
                        "conductor.io")
        assert _allowed(kube, "create", "events", namespace)
        assert not _allowed(kube, "get", "deploymentparameters", "default", "conductor.io")
        assert not _allowed(kube, "create", "leases", "default", "coordination.k8s.io")
        assert not _allowed(kube, "create", "daemonsets", app_namespace, "apps")
        assert not _allowed(kube, "create", "customresourcedefinitions", "",
                            "apiextensions.k8s.io")
        assert not _allowed(kube, "create", "clusterroles", "", "rbac.authorization.k8s.io")

        # Leader election on its Lease: create, renew (update), release.
        elector = LeaderElector(kube, namespace, "conductor-rbac-test", retry_period=0.2,
                                renew_deadline=5.0, lease_duration=10.0).start()
        try:
            wait_for(lambda: elector.is_leader, message="the lease taken as the SA")
        finally:
            elector.stop(release=True)
        lease = admin.get("coordination.k8s.io/v1", "Lease", "conductor-rbac-test", namespace)
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == ""  # released, i.e. updated

        # The controller's own resource, watched as the loop does.
        changes: list[Body] = []
        reflector = ParametersResource(kube, cfg).watch(changes.append)
        try:
            engine = Engine(cfg, kube, ResourceSource(cfg))
            report = engine.up()
            assert report.ok, report.summary()
            wait_for(reflector.synced.is_set, message="the DeploymentParameters watch")
        finally:
            reflector.stop()
        assert admin.get("v1", "Namespace", app_namespace) is not None
        ours = f"{LABEL_INSTANCE}=default"
        found = {(kind, item["metadata"]["name"])
                 for api_version, kind in [("apps/v1", "Deployment"),
                                           ("apps/v1", "StatefulSet"), ("v1", "Service"),
                                           ("v1", "Secret"), ("v1", "PersistentVolumeClaim")]
                 for item in admin.list(api_version, kind, app_namespace, ours)[0]}
        assert {("Deployment", "frontend"), ("Deployment", "redis"),
                ("StatefulSet", "postgres"), ("Service", "frontend"), ("Service", "redis"),
                ("Service", "postgres"), ("Secret", "postgres"),
                ("PersistentVolumeClaim", "postgres-data")} <= found, sorted(found)
        resource = admin.get(API_VERSION, KIND, "default", namespace)
        assert resource is not None
        ready = next(c for c in resource["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True", ready
        # A full pass (observe everything, prune nothing) works as well.
        again = engine.reconcile()
        assert again.ok, again.summary()
        assert again.results.counts()["applied"] == 0, again.summary()
        # `down` deletes a service's objects and waits until they are gone.
        down = engine.down(["redis"])
        assert down.ok, down.summary()
        assert down.results.counts()["deleted"] == 2, down.summary()
        assert admin.get("apps/v1", "Deployment", "redis", app_namespace) is None

        # A kind outside the role: refused by the API server with 403, nothing created.
        (root / "agent").mkdir()
        (root / "agent" / "daemonset.yaml").write_text(DAEMONSET)
        refused = engine.up(["agent"])
        assert not refused.ok
        statuses = [r.error.get("status") for r in refused.results.failed if r.error]
        if isinstance(refused.error, KubeError):
            statuses.append(refused.error.status)
        assert 403 in statuses, refused.summary()
        assert admin.list("apps/v1", "DaemonSet", app_namespace)[0] == []
    finally:
        kube.close()
