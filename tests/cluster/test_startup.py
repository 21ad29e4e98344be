"""`conductor run` refuses to start with one line and a documented exit code: an unknown
or invalid setting (2), Kubernetes unreachable (3), a permission missing (4); `--debug`
shows the traceback; `conductor config` prints the effective settings, secrets masked."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from controller.adapters.kube import Kube
from devcluster.running import free_port
from tests.support.cluster import LocalCluster, service_account_kubeconfig

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]


def conductor(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CONDUCTOR_")}
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "controller", *args], capture_output=True,
                          text=True, env=environ, timeout=60, check=False)


def refused(done: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    assert done.returncode == code, (done.returncode, done.stderr[-3000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def run_args(kubeconfig: str, namespace: str = "default") -> list[str]:
    return ["run", "--kubeconfig", kubeconfig, "--namespace", namespace,
            "--port", str(free_port()), "--manifests", str(REPO / "manifests")]


def test_configuration_errors_are_one_line_exit_2(cluster: LocalCluster,
                                                  tmp_path: Path) -> None:
    refused(conductor(*run_args(cluster.kubeconfig), CONDUCTOR_LOOP_INTERVALL="30"), 2,
            "CONDUCTOR_LOOP_INTERVALL", "did you mean CONDUCTOR_LOOP_INTERVAL")
    refused(conductor(*run_args(cluster.kubeconfig), CONDUCTOR_APPLY_CONFLICTS="bogus"), 2,
            "CONDUCTOR_APPLY_CONFLICTS", "force, fail")
    missing = tmp_path / "nowhere" / "kubeconfig"
    refused(conductor(*run_args(str(missing))), 2, str(missing))
    receivers = tmp_path / "receivers.yaml"
    receivers.write_text("receivers:\n  - name: chat\n    type: carrier-pigeon\n")
    refused(conductor(*run_args(cluster.kubeconfig),
                      CONDUCTOR_NOTIFY_RECEIVERS_FILE=str(receivers)), 2, str(receivers))


def test_an_unreachable_api_server_is_exit_3_and_debug_shows_why(
        cluster: LocalCluster, tmp_path: Path) -> None:
    config = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
    closed = tmp_path / "kubeconfig"
    closed.write_text(yaml.safe_dump(config))
    line = refused(conductor(*run_args(str(closed))), 3, "does not answer")
    assert "127.0.0.1" in line
    debug = conductor("--debug", *run_args(str(closed)))
    assert debug.returncode == 3 and "Traceback" in debug.stderr


def test_a_missing_permission_is_exit_4(cluster: LocalCluster, kube: Kube, namespace: str,
                                        crd: dict[str, object], tmp_path: Path) -> None:
    kube.create({"apiVersion": "v1", "kind": "ServiceAccount",
                 "metadata": {"name": "nobody", "namespace": namespace}})
    kubeconfig = service_account_kubeconfig(cluster, kube, namespace, "nobody",
                                             tmp_path / "kubeconfig")
    refused(conductor(*run_args(str(kubeconfig), namespace)), 4,
            "not allowed to list DeploymentParameters", namespace, "config/rbac")


def test_config_prints_the_effective_settings_masked(tmp_path: Path) -> None:
    done = conductor("config", "--manifests", str(REPO / "manifests"), "--interval", "30",
                     CONDUCTOR_GIT_URL="https://bot:hunter2@git.example/app.git",
                     CONDUCTOR_API_AUTH="false")
    assert done.returncode == 0, done.stderr
    shown = dict(line.split("=", 1) for line in done.stdout.splitlines())
    assert shown["CONDUCTOR_LOOP_INTERVAL"] == "30.0"
    assert shown["CONDUCTOR_API_AUTH"] == "False"
    assert shown["CONDUCTOR_GIT_URL"] == "https://***@git.example/app.git"
    assert "hunter2" not in done.stdout
    listed = conductor("config", "--list").stdout.split()
    assert "CONDUCTOR_API_MAX_STREAMS" in listed
