"""The kit and the example app against the published schemas of current Kubernetes, offline.

The local control plane is 1.20, so a server-side dry run there (test_kit.py) cannot see
what newer clusters refuse: a `policy/v1beta1` PodDisruptionBudget is fine on 1.20 and
rejected by every Kubernetes from 1.25 on. So every object that any kustomization in the
repository builds, and every object the example app renders, is validated here against
the OpenAPI-derived JSON schemas that `kubernetes-validate` ships, for each Kubernetes
minor version from 1.25 (the oldest we support) to the newest it carries, in strict mode
(an unknown field is an error, as `kubectl apply --validate=strict` makes it).

A kind the schemas do not know fails the test, except where this file says why: the
Prometheus Operator's kinds (not Kubernetes', so only their metadata is checked here) and
the 1.20 overlay's PodDisruptionBudget (made for the local 1.20 server and dry-run there).
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from kubernetes_validate import utils as kv_utils
from packaging.version import Version
from referencing import Registry, Resource

from controller.model.parameters import Parameters
from controller.model.rendering import load_tree, render

REPO = Path(__file__).resolve().parents[2]
OLDEST_SUPPORTED = Version("1.25")
# The newest version the pinned kubernetes-validate (pyproject.toml) carries: a release
# that dropped versions must not shrink what we check unnoticed.
NEWEST_AT_LEAST = Version("1.37")
# Kinds that are not Kubernetes' own: the Prometheus Operator's CRDs define them, and
# config/prometheus needs that operator installed. Their metadata is still checked.
NOT_KUBERNETES = {("monitoring.coreos.com/v1", "ServiceMonitor"),
                  ("monitoring.coreos.com/v1", "PrometheusRule")}
# Objects an overlay builds for one older server only, checked on that server instead.
LOCAL_ONLY = {"config/kubernetes-1.20": {("policy/v1beta1", "PodDisruptionBudget")}}
OBJECT_META = "https://kubernetes.io/api/_definitions.json#/$defs/" \
              "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def _versions() -> list[str]:
    # One entry per schema folder (plain and strict), so the same version appears twice.
    return sorted(set(kv_utils.all_versions()), key=Version)


VERSIONS = [v for v in _versions() if Version(v) >= OLDEST_SUPPORTED]
# Every kustomization in the repository: a new overlay is validated without editing this.
BUILDS = [".", *sorted(str(p.parent.relative_to(REPO))
                        for p in (REPO / "config").glob("*/kustomization.yaml"))]


@pytest.fixture(scope="module", autouse=True)
def _cached_schemas() -> Iterator[None]:
    """Read each schema file once: kubernetes-validate re-reads its 1 MB definitions file
    on every call (about 30 s for this module instead of about 2)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kv_utils, "schema_contents", functools.cache(kv_utils.schema_contents))
        yield


def _kustomize(path: str) -> list[dict[str, Any]]:
    out = subprocess.run(["kubectl", "kustomize", str(REPO / path)], capture_output=True,
                         text=True, timeout=120, check=False)
    assert out.returncode == 0, f"kubectl kustomize {path}:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _name(doc: dict[str, Any]) -> str:
    return f"{doc['apiVersion']} {doc['kind']} {doc['metadata'].get('name')}"


def _metadata_problems(doc: dict[str, Any], version: str) -> list[str]:
    defs = kv_utils.schema_contents(
        f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version)
    validator = jsonschema.Draft202012Validator(
        {"$ref": OBJECT_META}, registry=Resource.from_contents(defs) @ Registry())
    return [f"{_name(doc)}: metadata.{'.'.join(map(str, e.path))}: {e.message}"
            for e in validator.iter_errors(doc["metadata"])]


def problems(docs: list[dict[str, Any]], version: str,
             allowed_unknown: frozenset[tuple[str, str]] = frozenset()) -> list[str]:
    """Every way `docs` break Kubernetes `version`'s strict schemas, one line each."""
    found: list[str] = []
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in NOT_KUBERNETES:
            found += _metadata_problems(doc, version)
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            if key not in allowed_unknown:
                found.append(f"{_name(doc)}: Kubernetes {version} serves no such kind")
        except kubernetes_validate.ValidationError as e:
            path = ".".join(map(str, e.path))
            found.append(f"{_name(doc)}: {path}: {e.message}")
    return found


def test_versions_run_from_1_25_to_the_newest_without_gaps() -> None:
    assert VERSIONS, "kubernetes-validate carries no schema of 1.25 or later"
    minors = [Version(v).minor for v in VERSIONS]
    assert Version(VERSIONS[0]).release[:2] == OLDEST_SUPPORTED.release
    assert minors == list(range(minors[0], minors[-1] + 1)), VERSIONS
    assert Version(VERSIONS[-1]) >= NEWEST_AT_LEAST, VERSIONS


@pytest.mark.parametrize("build", BUILDS)
def test_kit_validates_on_every_supported_kubernetes(build: str) -> None:
    docs = _kustomize(build)
    assert docs, f"{build} builds nothing"
    local_only = frozenset(LOCAL_ONLY.get(build, set()))
    if local_only:  # what the overlay exempts must be there, or the exemption is stale
        assert local_only <= {(d["apiVersion"], d["kind"]) for d in docs}, build
    found = {v: problems(docs, v, local_only) for v in VERSIONS}
    assert not {v: p for v, p in found.items() if p}, found


def test_default_build_has_no_beta_apis() -> None:
    """`kubectl apply -k .` is for 1.25+: no v1beta1 (policy's PDB was the one we had)."""
    betas = [_name(d) for d in _kustomize(".") if "beta" in d["apiVersion"].split("/")[-1]]
    assert betas == []


def test_rendered_example_app_validates_on_every_supported_kubernetes() -> None:
    defaults = yaml.safe_load((REPO / "manifests" / "parameters.yaml").read_text())
    tree = load_tree(REPO / "manifests")
    # As shipped, and in a namespace of its own (which `_shared` then renders).
    elsewhere = {**defaults, "global": {**defaults["global"], "namespace": "shop"}}
    docs = [m.body for spec in (defaults, elsewhere)
            for m in render(tree, Parameters.from_spec(spec))]
    assert {d["kind"] for d in docs} >= {"Namespace", "Deployment", "StatefulSet", "Service",
                                         "Secret", "PersistentVolumeClaim"}
    found = {v: problems(docs, v) for v in VERSIONS}
    assert not {v: p for v, p in found.items() if p}, found


def test_the_check_refuses_what_a_cluster_would() -> None:
    """The validation is not vacuous: each of these is refused by a real API server."""
    deployment = next(d for d in _kustomize(".") if d["kind"] == "Deployment")
    newest = VERSIONS[-1]
    assert problems([deployment], newest) == []
    unknown_field = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    wrong_type = {**deployment, "spec": {**deployment["spec"], "replicas": "two"}}
    old_pdb = {"apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget",
               "metadata": {"name": "x"}, "spec": {"maxUnavailable": 1}}
    bad_meta = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
                "metadata": {"name": "x", "labels": {"a": 1}}, "spec": {}}
    for doc, expected in [(unknown_field, "replica"), (wrong_type, "spec.replicas"),
                          (old_pdb, "serves no such kind"), (bad_meta, "metadata.labels.a")]:
        (problem,) = problems([doc], newest)
        assert expected in problem, problem
