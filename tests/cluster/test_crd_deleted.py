"""The DeploymentParameters CRD deleted under a running controller (issue 9 finding 22).

Deleting a CRD is cluster-wide: these tests never run against a shared control plane
(CONDUCTOR_TEST_KUBECONFIG) unless CONDUCTOR_TEST_CLUSTER_WIDE=true says that cluster is
this run's alone. They leave the CRD installed.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from controller.adapters.crds import ensure_crd, load_crd
from controller.adapters.kube import Body, Kube, KubeError
from controller.adapters.sources.resource import API_VERSION, KIND
from tests.support.cluster import App
from tests.support.waiting import wait_for

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(bool(os.environ.get("CONDUCTOR_TEST_KUBECONFIG"))
                       and os.environ.get("CONDUCTOR_TEST_CLUSTER_WIDE") != "true",
                       reason="deletes the cluster-wide CRD: private control plane only"),
]

CRD = "apiextensions.k8s.io/v1"


def _delete_crd(kube: Kube) -> None:
    name = load_crd()["metadata"]["name"]
    kube.delete(CRD, "CustomResourceDefinition", name)
    wait_for(lambda: kube.get(CRD, "CustomResourceDefinition", name) is None, timeout=60,
             message="the CRD gone")


@pytest.fixture
def restore_crd(kube: Kube) -> Any:
    yield
    ensure_crd(kube)  # whatever the test did, the next ones find it installed


def test_deleted_crd_is_reinstalled_and_the_deletion_reported(
        app: App, kube: Kube, restore_crd: None) -> None:
    engine = app.engine()
    assert engine.up().ok
    before = app.versions()
    _delete_crd(kube)  # takes every DeploymentParameters object with it
    report = engine.reconcile()
    # Reinstalled (RBAC allows it here); its objects are gone with it, so this is a
    # deleted DeploymentParameters object: stop, keep the app, say so.
    kube.forget(API_VERSION)
    assert kube.resource(API_VERSION, KIND) is not None
    assert report.error is not None, report.summary()
    assert report.error.details.get("reason") == "ParametersDeleted", report.error.to_dict()
    assert "404" not in report.error.message
    assert app.versions() == before
    assert app.kube.get(API_VERSION, KIND, "default", app.namespace) is None


class NoCRDInstall(Kube):
    """A connection whose identity may not write CRDs (the deploy kit's RBAC), refused at
    our own API wrapper as the API server would answer."""

    def apply(self, body: Body, *, force: bool | None = None, dry_run: bool = False) -> Body:
        if body.get("kind") == "CustomResourceDefinition":
            raise KubeError("customresourcedefinitions is forbidden", status=403,
                            reason="Forbidden")
        return super().apply(body, force=force, dry_run=dry_run)


def test_deleted_crd_that_may_not_be_reinstalled_is_reported_plainly(
        app: App, kube: Kube, restore_crd: None) -> None:
    guarded = NoCRDInstall.connect(app.cfg)
    try:
        engine = app.engine(kube=guarded)
        assert engine.up().ok
        _delete_crd(kube)
        for _ in range(2):  # every pass says the same, plainly
            report = engine.reconcile()
            assert report.error is not None, report.summary()
            assert report.error.code == "kubernetes_error"
            assert report.error.details.get("reason") == "CRDNotInstalled"
            assert "is not installed" in report.error.message
            assert "page not found" not in report.error.message
    finally:
        guarded.close()


def test_an_older_crd_is_upgraded_so_new_fields_are_kept(kube: Kube,
                                                         restore_crd: None) -> None:
    from controller.adapters.crds import DIGEST_ANNOTATION

    ensure_crd(kube)
    older = load_crd()
    del older["metadata"]["annotations"][DIGEST_ANNOTATION]  # as a release before digests
    schema = older["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    del schema["properties"]["spec"]["properties"]["suspend"]  # as a release before it
    kube.apply(older, force=True)
    name = older["metadata"]["name"]

    def installed() -> dict[str, Any]:
        crd = kube.get(CRD, "CustomResourceDefinition", name)
        assert crd is not None
        return crd
    spec_props = ("spec", "versions", 0, "schema", "openAPIV3Schema", "properties", "spec",
                  "properties")

    def props() -> dict[str, Any]:
        node: Any = installed()
        for key in spec_props:
            node = node[key]
        return dict(node)
    assert "suspend" not in props()
    ensure_crd(kube)
    assert "suspend" in props()
    assert installed()["metadata"]["annotations"][DIGEST_ANNOTATION] == \
        load_crd()["metadata"]["annotations"][DIGEST_ANNOTATION]
