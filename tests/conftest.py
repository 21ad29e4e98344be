"""Shared fixtures: a real local control plane for the session, a fresh namespace per test.

The control plane is `devcluster.running` on loopback (etcd, kube-apiserver,
kube-controller-manager), started once per session in a temporary state directory and
stopped at the end. Set CONDUCTOR_TEST_KUBECONFIG to reuse one that is already running.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.kube import Kube
from controller.config import Config
from devcluster import building, running


class LocalCluster:
    def __init__(self, kubeconfig: str, state: running.ClusterState | None) -> None:
        self.kubeconfig = kubeconfig
        self.state = state

    def config(self, **overrides: Any) -> Config:
        return replace(Config(kubeconfig=self.kubeconfig), **overrides)

    def kube(self, **overrides: Any) -> Kube:
        return Kube.connect(self.config(**overrides))


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
    kube.delete("v1", "Namespace", name)


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def crd(kube: Kube) -> dict[str, Any]:
    """The DeploymentParameters CRD from config/crd, installed and served."""
    from controller.adapters.crds import ensure_crd

    return ensure_crd(kube)
