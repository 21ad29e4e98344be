"""Shared fixtures: a real local control plane for the session, a fresh namespace per test,
the example app copied into it (`app`), the current CRD (`current_crd`), and controllers
served in-process for the API's end-to-end tests (`make_api`, `api`: a real `Controller`,
started, its first pass awaited, behind its `ControllerService`, driven through
`falcon.testing.TestClient`; stopped at teardown). Cluster-free API tests use the in-memory
service of tests/support/fakes.py instead.

The control plane is `devcluster.running` on loopback (etcd, kube-apiserver,
kube-controller-manager), started once per session in a temporary state directory and
stopped at the end. Set CONDUCTOR_TEST_KUBECONFIG to reuse one that is already running.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from falcon import testing
from prometheus_client import CollectorRegistry

from controller.adapters.crds import load_crd
from controller.adapters.kube import Kube, KubeError
from controller.adapters.metrics import Metrics
from controller.adapters.sources.resource import API_VERSION, KIND
from controller.api.app import Settings, create_app
from controller.config import ApiSettings
from controller.runtime.controller import FINALIZER, Controller
from controller.serving import app_for
from devcluster import building, running
from tests.support.api import READ, WRITE, Api, FakeApi
from tests.support.cluster import REPO, App, LocalCluster
from tests.support.fakes import FakeService
from tests.support.waiting import wait_for


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    reuse = os.environ.get("CONDUCTOR_TEST_KUBECONFIG")
    if reuse:
        yield LocalCluster(reuse, None)
        return
    state_dir = tmp_path_factory.mktemp("cluster")
    state = running.up(state_dir, building.ensure_binaries())
    try:
        yield LocalCluster(state.kubeconfig, state)
    finally:
        running.down(state_dir)


@pytest.fixture(scope="session")
def kube(cluster: LocalCluster) -> Iterator[Kube]:
    k = cluster.kube()
    yield k
    k.close()


@pytest.fixture
def namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for this test, deleted afterwards."""
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base}-{secrets.token_hex(3)}"
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    release_instances(kube, name)
    kube.delete("v1", "Namespace", name)


def release_instances(kube: Kube, namespace: str) -> None:
    """Take conductor's finalizer off the namespace's DeploymentParameters objects: the
    test's controllers are stopped by now, and an object nobody will finalise would hold
    its namespace in Terminating, and a later deletion of the CRD, forever."""
    try:
        objects = kube.list(API_VERSION, KIND, namespace)[0]
    except KubeError:
        return  # no CRD served (a test deleted it): no objects to hold anything
    for obj in objects:
        finalizers = obj["metadata"].get("finalizers") or []
        if FINALIZER in finalizers:
            with contextlib.suppress(KubeError):  # gone meanwhile
                kube.patch(API_VERSION, KIND, obj["metadata"]["name"], {"metadata": {
                    "finalizers": [f for f in finalizers if f != FINALIZER]}}, namespace)


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def crd(kube: Kube) -> dict[str, Any]:
    """The DeploymentParameters CRD from config/crd, installed and served."""
    from controller.adapters.crds import ensure_crd

    return ensure_crd(kube)


@pytest.fixture
def app(cluster: LocalCluster, kube: Kube, namespace: str, tmp_path: Path,
        crd: dict[str, Any]) -> App:
    root = tmp_path / "manifests"
    shutil.copytree(REPO / "manifests", root)
    params = yaml.safe_load((root / "parameters.yaml").read_text())
    params.setdefault("global", {})["namespace"] = namespace
    (root / "parameters.yaml").write_text(yaml.safe_dump(params))
    return App(cluster, kube, namespace, root)


@pytest.fixture
def current_crd(kube: Kube, crd: dict[str, Any], namespace: str) -> None:
    """The CRD as in config/crd: a shared control plane may serve an older one, whose
    schema would prune spec.suspend and spec.ignore (an additive update, safe to share)."""
    kube.apply(load_crd(), force=True)
    probe = {"apiVersion": API_VERSION, "kind": KIND,
             "metadata": {"name": "probe", "namespace": namespace},
             "spec": {"suspend": True, "ignore": [{"paths": ["/spec/replicas"]}]}}
    wait_for(lambda: kube.apply(probe, dry_run=True).get("spec", {}).get("suspend") is True,
             message="the API server serving the current CRD schema")


@pytest.fixture
def make_api(app: App) -> Iterator[Callable[..., Api]]:
    """Build and start a controller for the test's app: `make_api(api=ApiSettings(...),
    first_pass=True, pass_ok=True, **config_changes)`. Authentication is off unless `api`
    says otherwise; the first pass is awaited (and must succeed) unless told not to."""
    started: list[Controller] = []

    def make(api: ApiSettings | None = None, first_pass: bool = True, pass_ok: bool = True,
             **changes: Any) -> Api:
        cfg = replace(app.cfg, api=api or ApiSettings(auth=False), **changes)
        settings = Settings.from_config(cfg)  # as serving does: checked before the start
        controller = Controller(cfg).start()  # its own connection: it guards writes
        started.append(controller)
        served = Api(testing.TestClient(app_for(controller, settings=settings)),
                     controller, app)
        if first_pass:
            wait_for(lambda: controller.engine.last is not None, timeout=60,
                     message="the controller's first pass")
            last = controller.engine.last
            assert last is not None and (last.ok or not pass_ok), last.summary() if last \
                else None
        return served

    yield make
    for controller in reversed(started):
        controller.stop()


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    """The default: authentication off, the example app deployed by the first pass."""
    return make_api()


@pytest.fixture
def make_fake_api(tmp_path: Path) -> Iterator[Callable[..., FakeApi]]:
    """The API over the in-memory service (no cluster): `make_fake_api(api=ApiSettings(...),
    webhook_secret=b"...")`; authentication off unless `api` says otherwise."""
    built: list[tuple[FakeService, Any]] = []

    def make(api: ApiSettings | None = None, webhook_secret: bytes | None = None) -> FakeApi:
        service = FakeService(tmp_path / f"events-{len(built)}.db")
        registry = CollectorRegistry()
        app = create_app(service, registry,
                         Settings(api or ApiSettings(auth=False, rate_limit=0),
                                  webhook_secret=webhook_secret),
                         meters=Metrics(registry, "default", "shop"))
        built.append((service, app))
        return FakeApi(testing.TestClient(app), service, registry)

    yield make
    for service, app in built:
        app.close()
        service.close()


@pytest.fixture
def fake_api(make_fake_api: Callable[..., FakeApi]) -> FakeApi:
    """The default: authentication and rate limits off."""
    return make_fake_api()


@pytest.fixture
def tokens_file(tmp_path: Path) -> str:
    """An API tokens file: "dashboard" may read (READ), "ci" may write (WRITE)."""
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump({"tokens": [
        {"name": "dashboard", "token": READ, "scopes": ["read"]},
        {"name": "ci", "token": WRITE, "scopes": ["write"]}]}))
    return str(path)
