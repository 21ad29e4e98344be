"""The image, built from the Dockerfile with Debian's buildah and run with Debian's podman.

What the Deployment relies on is checked on the running container, not on the Dockerfile's
text: it runs as uid 10001 on a read-only root filesystem with only /tmp writable, answers
/healthz and /readyz, and, pointed at the local control plane with a kubeconfig mounted
from outside, deploys the example app baked into it and reports it healthy (pods made
ready by the simulated kubelet's helper, in this test's namespace only).

The base image is made locally (tests/deploy/imaging.py says why and how) and cached, so
only the first run pays for debootstrap and the dependency layer; the time each step took
is printed with the results.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.adapters.kube import Kube
from controller.adapters.sources.resource import API_VERSION, KIND
from devcluster import kubelet
from devcluster.running import free_port
from tests.support import imaging
from tests.support.cluster import LocalCluster
from tests.support.waiting import wait_for

# A first run debootstraps the base and builds every layer: about 5 minutes on 2 cores, more
# on a slow mirror; the suite's 600 s per test is too tight for that.
pytestmark = [pytest.mark.image, pytest.mark.cluster, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
UID = 10001
KUBECONFIG_IN_IMAGE = "/etc/conductor/kubeconfig"
SERVICES = {"frontend", "redis", "postgres"}


@dataclass(frozen=True)
class Built:
    image: str  # the ID: what was built here, whatever the tag says by now
    timing: imaging.Timing


def _say(request: pytest.FixtureRequest, line: str) -> None:
    """A line in pytest's own output (not captured): the cost of the image steps."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # fd capture would swallow it
            reporter.write_line(line)


@pytest.fixture(scope="module")
def image(request: pytest.FixtureRequest) -> Built:
    missing = imaging.missing_tools()
    if missing or os.geteuid() != 0:
        why = (f"apt-get install {' '.join(missing)} (scripts/setup does)" if missing
               else "rootful podman needs root")
        if os.environ.get("CI"):  # CI's machine is set up for this: never skip there
            pytest.fail(f"the image test cannot run: {why}")
        pytest.skip(f"the image test cannot run: {why}")
    base, timing = imaging.ensure_base_image()
    image_id, spent = imaging.build(REPO, imaging.TEST_TAG, base)
    timing = imaging.Timing(timing.debootstrap, timing.base_import, spent)
    _say(request, f"image: debootstrap {timing.debootstrap:.0f}s, import "
                  f"{timing.base_import:.0f}s, build {timing.build:.0f}s (0 = cached)")
    return Built(image_id, timing)


def _get(port: int, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def _exec(name: str, *argv: str, user: str = "") -> subprocess.CompletedProcess[str]:
    who = ["--user", user] if user else []
    return subprocess.run(["podman", "exec", *who, name, *argv], capture_output=True,
                          text=True, check=False, stdin=subprocess.DEVNULL, timeout=60)


def test_image_metadata_and_contents(image: Built) -> None:
    (inspected,) = json.loads(imaging.run("inspect", ["podman", "image", "inspect",
                                                      image.image]))
    config = inspected["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["python", "-m", "controller"]
    assert config["Cmd"] == ["run"]
    assert "8081/tcp" in config["ExposedPorts"]
    # gunicorn's settings as `conductor run` reads them, naming a worker class the image
    # can import; the CRD and the example app: package data of the installed package.
    probe = ("import runpy, importlib.util, pathlib, controller.assets as a; "
             "s = runpy.run_path(str(a.GUNICORN_CONF)); "
             "m, _, c = s['worker_class'].rpartition('.'); getattr(importlib.import_module(m), c); "
             "import controller.adapters.crds as crds, controller.config as cfg; "
             "print(s['worker_class'], crds.CRD_FILE, cfg.DEFAULT_MANIFESTS, "
             "pathlib.Path(cfg.DEFAULT_MANIFESTS, 'parameters.yaml').is_file(), "
             "importlib.util.find_spec('devcluster'))")
    out = imaging.run("probe", ["podman", "run", "--rm", "--runtime", imaging.runtime(),
                                "--read-only", "--network", "none", *imaging.ULIMITS,
                                "--entrypoint", "python", image.image, "-c", probe])
    assets = "/opt/venv/lib/python3.11/site-packages/controller/assets"
    assert out.split() == ["controller.api.worker.Worker",
                           f"{assets}/crd/deploymentparameters.yaml", f"{assets}/manifests",
                           "True", "None"]


@pytest.fixture
def kubeconfig(cluster: LocalCluster, tmp_path: Path) -> Path:
    """The cluster's kubeconfig with certificates inline (the files it names are not in
    the container), readable by the image's user."""
    flat = imaging.run("flatten", ["kubectl", "config", "view", "--raw", "--flatten",
                                   "--kubeconfig", cluster.kubeconfig])
    path = tmp_path / "kubeconfig"
    path.write_text(flat)
    path.chmod(0o644)
    return path


def test_container_runs_as_10001_read_only_and_deploys_the_example_app(
        image: Built, kube: Kube, namespace: str, kubeconfig: Path,
        crd: dict[str, Any]) -> None:
    # The example app's defaults, into this test's namespace (the baked-in parameters.yaml
    # says "default", which other tests share).
    spec = yaml.safe_load((REPO / "manifests" / "parameters.yaml").read_text())
    spec["global"]["namespace"] = namespace
    kube.create({"apiVersion": API_VERSION, "kind": KIND,
                 "metadata": {"name": "default", "namespace": namespace}, "spec": spec})
    port = free_port()
    name = f"conductor-test-{secrets.token_hex(4)}"
    env = {"KUBECONFIG": KUBECONFIG_IN_IMAGE, "CONDUCTOR_NAMESPACE": namespace,
           "CONDUCTOR_DEFAULT_NAMESPACE": namespace, "CONDUCTOR_API_AUTH": "false"}
    with imaging.container(image.image, name, ["run", "--port", str(port)], env,
                           {kubeconfig: KUBECONFIG_IN_IMAGE}):
        try:
            _check_running(name, port, kube, namespace)
        except BaseException:
            print(f"--- podman logs {name}:\n{imaging.logs(name)}")
            raise


def _check_running(name: str, port: int, kube: Kube, namespace: str) -> None:
    wait_for(lambda: _get(port, "/healthz") == (200, {"status": "ok"}), timeout=90,
             interval=0.5, message="/healthz from the container")

    def ready() -> Any:
        status, body = _get(port, "/readyz")
        return status == 200 and body["status"] == "ready" and body["leader"] is True

    wait_for(ready, timeout=60, interval=0.5, message="/readyz ready and leading")

    # The controller process (pid 1: exec'd by the entrypoint) as uid/gid 10001.
    status = _exec(name, "cat", "/proc/1/status").stdout
    ids = {line.split(":")[0]: line.split()[1:] for line in status.splitlines()
           if line.startswith(("Uid:", "Gid:"))}
    assert ids == {"Uid": [str(UID)] * 4, "Gid": [str(UID)] * 4}, status
    # Read-only root even for root inside the container; /tmp (the tmpfs) writable.
    refused = _exec(name, "touch", "/usr/conductor-was-here", user="0")
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr, refused
    assert _exec(name, "touch", "/tmp/conductor-was-here").returncode == 0
    (inspected,) = json.loads(imaging.run("inspect", ["podman", "container", "inspect",
                                                      name]))
    assert inspected["HostConfig"]["ReadonlyRootfs"] is True

    # The first pass deploys the baked-in example; the pods go Ready as a kubelet would
    # report them, and the controller sees every service healthy.
    def healthy() -> bool:
        kubelet.settle(kube, namespace)
        code, body = _get(port, "/api/services/health")
        return code == 200 and {s["name"]: s["status"] for s in body["services"]} == \
            dict.fromkeys(SERVICES, "healthy")

    wait_for(healthy, timeout=120, interval=1, message="every service healthy")
    for kind, api_version, obj in [("Deployment", "apps/v1", "frontend"),
                                   ("Deployment", "apps/v1", "redis"),
                                   ("StatefulSet", "apps/v1", "postgres")]:
        assert kube.get(api_version, kind, obj, namespace) is not None, (kind, obj)

    def ready_condition() -> bool:
        resource = kube.get(API_VERSION, KIND, "default", namespace) or {}
        conditions = (resource.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    wait_for(ready_condition, timeout=60, interval=0.5,
             message="the DeploymentParameters object Ready=True")
    code, status_body = _get(port, "/api/status")
    assert code == 200 and status_body["leader"]["isLeader"] is True, status_body
