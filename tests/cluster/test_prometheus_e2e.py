"""End to end: a real Prometheus scrapes `conductor run` and fires ConductorServiceUnhealthy.

The controller runs as a real process (gunicorn, loop, leader election) on the example app;
a simulated kubelet status sends one redis Pod to ImagePullBackOff while the other services'
Pods are marked ready. Debian's Prometheus, on loopback with its storage in a temporary
directory, scrapes the controller every second and evaluates a copy of
config/prometheus/rules.yml in which only the `for:` durations are shortened; the
expressions are the shipped ones.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.adapters.kube import Kube
from devcluster import kubelet
from devcluster.running import free_port
from tests.support.cluster import LocalCluster, controller_process
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = "/usr/bin/prometheus"
FOR = re.compile(r"^(\s+for:\s*)\d+[smhd]\s*$", re.MULTILINE)


def shortened_rules(target: Path) -> Path:
    """The shipped rules with every `for:` cut to 2s; nothing else changes."""
    text = (REPO / "config" / "prometheus" / "rules.yml").read_text()
    short, count = FOR.subn(r"\g<1>2s", text)
    assert count == len(yaml.safe_load(text)["groups"][0]["rules"]), "a rule without for:?"
    assert "for: 5m" not in short and "for: 10m" not in short
    target.write_text(short)
    return target


def readme_relabeling() -> list[dict[str, Any]]:
    """The `metric_relabel_configs` README.md shows for Flux and Argo CD dashboards."""
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(metric_relabel_configs:\n.*?)```", readme, re.DOTALL)
    assert len(blocks) == 1, "README.md: no (or more than one) metric_relabel_configs block"
    rules: list[dict[str, Any]] = yaml.safe_load(blocks[0])["metric_relabel_configs"]
    return rules


@contextmanager
def prometheus(workdir: Path, target_port: int) -> Iterator[int]:
    """Prometheus on 127.0.0.1:<free port>, scraping the controller as job "conductor",
    and again as job "compat" through README.md's relabeling, keeping only the renamed."""
    workdir.mkdir()
    rules = shortened_rules(workdir / "rules.yml")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s",
                   "scrape_timeout": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{
            "job_name": "conductor", "honor_labels": True,
            "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
        }, {
            "job_name": "compat", "honor_labels": True,
            "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
            "metric_relabel_configs": [*readme_relabeling(), {
                "source_labels": ["__name__"], "regex": "gotk_.*|argocd_.*",
                "action": "keep"}],
        }],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    check = subprocess.run(["/usr/bin/promtool", "check", "config",
                            str(workdir / "prometheus.yml")], check=False, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=info"],
            stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        wait_for(lambda: _http(port, "/-/ready") is not None, timeout=30,
                 message=f"Prometheus to be ready (log: {log})")
        yield port
    finally:
        proc.kill()
        proc.wait(30)


def _http(port: int, path: str) -> bytes | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return bytes(resp.read()) if resp.status == 200 else None


def _api(port: int, path: str, **query: str) -> Any:
    raw = _http(port, f"{path}?{urllib.parse.urlencode(query)}" if query else path)
    assert raw is not None
    doc = json.loads(raw)
    assert doc["status"] == "success", doc
    return doc["data"]


def _firing(port: int) -> list[dict[str, str]]:
    """Labels of the ConductorServiceUnhealthy alerts that are firing."""
    alerts = _api(port, "/api/v1/alerts")["alerts"]
    return [a["labels"] for a in alerts if a["labels"]["alertname"] ==
            "ConductorServiceUnhealthy" and a["state"] == "firing"]


def _pods(kube: Kube, namespace: str, name: str, count: int) -> list[dict[str, Any]]:
    def found() -> list[dict[str, Any]] | None:
        pods = [p for p in kube.list("v1", "Pod", namespace,
                                     f"app.kubernetes.io/name={name}")[0]
                if not p["metadata"].get("deletionTimestamp")]
        return pods if len(pods) == count else None
    result: list[dict[str, Any]] = wait_for(found, timeout=60, message=f"{count} {name} pod(s)")
    return result


def test_prometheus_fires_service_unhealthy_for_a_pod_in_image_pull_backoff(
        cluster: LocalCluster, kube: Kube, namespace: str, tmp_path: Path,
        crd: dict[str, Any]) -> None:
    assert shutil.which(PROMETHEUS), "Debian's prometheus package is not installed"
    root = tmp_path / "manifests"
    shutil.copytree(REPO / "manifests", root)
    params = yaml.safe_load((root / "parameters.yaml").read_text())
    params.setdefault("global", {})["namespace"] = namespace
    (root / "parameters.yaml").write_text(yaml.safe_dump(params))
    port = free_port()
    log = tmp_path / "controller" / "controller.log"
    log.parent.mkdir()
    with controller_process(cluster, root, namespace, port, log), \
            prometheus(tmp_path / "prometheus", port) as prom:
        # The example app deployed; every service ready but redis, which cannot pull.
        for name, count in (("frontend", 2), ("postgres", 1)):
            for pod in _pods(kube, namespace, name, count):
                kubelet.mark_ready(kube, pod)
        claim = wait_for(lambda: kube.get("v1", "PersistentVolumeClaim", "postgres-data",
                                          namespace), message="the postgres claim")
        kubelet.bind_claim(kube, claim)
        (redis,) = _pods(kube, namespace, "redis", 1)
        kubelet.mark_waiting(kube, redis, "ImagePullBackOff",
                             'Back-off pulling image "redis:0.0-missing"')

        def up() -> bool:
            result = _api(prom, "/api/v1/query", query='up{job="conductor"} == 1')["result"]
            return len(result) == 1 and result[0]["value"][1] == "1"
        wait_for(up, timeout=30, message=f"Prometheus to scrape the controller (log: {log})")

        firing: list[dict[str, str]] = wait_for(
            lambda: _firing(prom), timeout=60, interval=0.5,
            message=f"ConductorServiceUnhealthy to fire (controller log: {log})")
        assert [a["service"] for a in firing] == ["redis"], firing
        alert = firing[0]
        assert alert["namespace"] == namespace
        assert alert["name"] == "default"
        assert alert["kind"] == "DeploymentParameters"
        assert alert["job"] == "conductor"
        assert alert["severity"] == "warning"
        # What the alert saw, in the scraped series: redis unhealthy, from the leader.
        unhealthy = _api(prom, "/api/v1/query",
                         query='conductor_service_health{status="unhealthy"} == 1')["result"]
        assert [r["metric"]["service"] for r in unhealthy] == ["redis"]
        leader = _api(prom, "/api/v1/query", query="conductor_leader")["result"]
        assert [r["value"][1] for r in leader] == ["1"]

        # Flux- and Argo CD-style series through README.md's relabeling, same labels.
        def compat(query: str) -> list[dict[str, Any]]:
            result: list[dict[str, Any]] = _api(prom, "/api/v1/query", query=query)["result"]
            return result
        app = f'job="compat",kind="DeploymentParameters",name="default",namespace="{namespace}"'
        # Ready means applied *and* healthy: redis cannot pull, so it is False.
        ready = wait_for(lambda: compat(
            f'gotk_reconcile_condition{{{app},type="Ready",status="False"}} == 1'),
            timeout=10, message="gotk_reconcile_condition through the relabeling")
        assert len(ready) == 1
        assert compat(f'gotk_reconcile_duration_seconds_count{{{app},operation="reconcile"}}')
        info = compat(f'argocd_app_info{{{app}}}')
        assert [(r["metric"]["health_status"], r["metric"]["sync_status"]) for r in info] \
            == [("Degraded", "Synced")]
        assert compat(f'argocd_app_sync_total{{{app},phase="Succeeded"}}')
        assert compat('{job="compat",__name__=~"conductor_.*"}') == []
