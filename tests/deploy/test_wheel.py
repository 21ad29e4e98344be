"""The built wheel is the product: installed into a clean virtualenv, it runs.

The wheel is built from a copy of the checkout (setuptools' build/ folder keeps files of
removed modules, so building in the shared tree could ship stale code), with the assets'
symlinks followed. Its dependencies come from a wheelhouse built once from the project's
index (PyPI) and cached under ~/.cache/conductor/wheelhouse, keyed by the dependency list:
the install is then offline (`--no-index`) and takes seconds. `conductor run` is started
from that venv with its working directory outside the repository, so nothing of the
checkout can stand in for what the package lacks.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tomllib
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.adapters.kube import Kube
from controller.adapters.sources.resource import API_VERSION, KIND
from devcluster import kubelet
from devcluster.running import free_port
from tests.support.cluster import LocalCluster
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
CACHE = Path.home() / ".cache" / "conductor" / "wheelhouse"
# What the product reads at run time, as the wheel must hold it: name in the package ->
# the one copy in the checkout.
ASSETS = {
    "controller/assets/crd/deploymentparameters.yaml": "config/crd/deploymentparameters.yaml",
    "controller/assets/gunicorn.conf.py": "config/gunicorn.conf.py",
    **{f"controller/assets/manifests/{p.relative_to(REPO / 'manifests')}":
       str(p.relative_to(REPO)) for p in sorted((REPO / "manifests").rglob("*"))
       if p.is_file()},
}
SKIP = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__",
                              ".mypy_cache", ".ruff_cache", ".pytest_cache", ".hypothesis")


def _pip(python: Path, *args: str, timeout: float = 900) -> None:
    out = subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", "-q",
                          *args], capture_output=True, text=True, timeout=timeout,
                         check=False, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, f"pip {' '.join(args)}:\n{out.stdout}\n{out.stderr}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=SKIP)
    _pip(Path(sys.executable), "wheel", "--no-deps", "-w", str(work / "dist"), str(src))
    (built,) = (work / "dist").glob("conductor-*.whl")
    return built


def _wheelhouse() -> Path:
    """The product's dependencies as wheels, fetched once per dependency list."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    key = hashlib.sha256(json.dumps([sys.version_info[:2], sorted(deps)]).encode())
    house = CACHE / key.hexdigest()[:16]
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent runs wait for one fetch
        if not house.is_dir():
            partial = CACHE / f".{house.name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            _pip(Path(sys.executable), "wheel", "-w", str(partial), *deps)
            partial.rename(house)  # complete or absent, never half-written
    return house


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean virtualenv (no system site-packages) with only the wheel and its
    dependencies installed."""
    env = tmp_path_factory.mktemp("venv") / "venv"
    # No pip inside (ensurepip costs seconds): this pip installs into it; no bytecode
    # compiled ahead (the run compiles what it imports).
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True,
                   timeout=120)
    _pip(Path(sys.executable), "--python", str(env / "bin" / "python"), "install",
         "--no-compile", "--no-index", "--find-links", str(_wheelhouse()), str(wheel))
    return env


def _clean_env(home: Path) -> dict[str, str]:
    """The environment a user's shell would give: no PYTHONPATH, no CONDUCTOR_* from the
    test run, HOME elsewhere (the Git cache and the event store land there)."""
    keep = ("PATH", "LANG", "LC_ALL", "TMPDIR")
    return {**{k: v for k, v in os.environ.items() if k in keep}, "HOME": str(home),
            "PYTHONUNBUFFERED": "1"}


def test_wheel_holds_the_package_and_its_assets_and_nothing_else(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        tops = {n.split("/", 1)[0] for n in names}
        assert tops == {"controller", "conductor-0.1.0.dist-info"}, tops
        assert not [n for n in names if n.startswith(("devcluster/", "tests/", "bench/"))]
        for inside, original in ASSETS.items():
            # The content, not a symlink: a zip member of the file's own bytes.
            assert zf.read(inside) == (REPO / original).read_bytes(), inside


@pytest.mark.cluster
def test_installed_wheel_runs_and_deploys_the_example_app(
        venv: Path, cluster: LocalCluster, kube: Kube, namespace: str, tmp_path: Path,
        crd: dict[str, Any]) -> None:
    conductor = venv / "bin" / "conductor"
    env = _clean_env(tmp_path)
    # The development control plane is not in the product: one clear line, no traceback.
    missing = subprocess.run([str(conductor), "cluster", "up"], capture_output=True,
                             text=True, cwd=tmp_path, env=env, timeout=60, check=False)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        "conductor cluster: the local control plane is not part of the installed product; "
        "run it from a checkout of the repository (`python -m devcluster up`)"]

    # The example app's own defaults, into this test's namespace: the object a user would
    # `kubectl apply` first. The templates and defaults come from the package.
    defaults = yaml.safe_load((REPO / "manifests" / "parameters.yaml").read_text())
    defaults["global"]["namespace"] = namespace
    kube.create({"apiVersion": API_VERSION, "kind": KIND,
                 "metadata": {"name": "default", "namespace": namespace}, "spec": defaults})
    port = free_port()
    log = tmp_path / "conductor.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(conductor), "run", "--kubeconfig", cluster.kubeconfig, "--namespace",
             namespace, "--port", str(port), "--interval", "3600"],
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**env, "CONDUCTOR_API_AUTH": "false",
                 "CONDUCTOR_EVENTS_PATH": str(tmp_path / "events.db")})
    try:
        _converges(kube, namespace, port, proc, log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def _converges(kube: Kube, namespace: str, port: int, proc: subprocess.Popen[bytes],
               log: Path) -> None:
    def running() -> bool:
        assert proc.poll() is None, f"conductor run exited:\n{log.read_text()}"
        return True

    def deployed() -> bool:
        running()
        return all(kube.get(api, kind, name, namespace) is not None for api, kind, name in (
            ("apps/v1", "Deployment", "frontend"), ("apps/v1", "Deployment", "redis"),
            ("apps/v1", "StatefulSet", "postgres"), ("v1", "Service", "redis"),
            ("v1", "Secret", "postgres")))
    wait_for(deployed, timeout=120, message=f"the example app applied (log: {log})")

    def ready() -> bool:
        running()
        kubelet.settle(kube, namespace)  # Ready means applied and healthy: pods run
        obj = kube.get(API_VERSION, KIND, "default", namespace) or {}
        conditions = {c["type"]: c["status"]
                      for c in (obj.get("status") or {}).get("conditions", [])}
        return conditions.get("Ready") == "True"
    wait_for(ready, timeout=120, message=f"the first pass ok, Ready=True (log: {log})")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/services", timeout=5) as r:
        services = {s["name"] for s in json.loads(r.read())["services"]}
    assert services == {"frontend", "redis", "postgres"}

