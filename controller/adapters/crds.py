"""Install the DeploymentParameters CRD when it is missing or out of date, and wait until
it is served.

A cluster set up with the deploy kit already has it; the demo and the tests start from an
empty control plane, and `conductor run` should work there out of the box. An installed
CRD from an older release would silently prune fields this release reads (`spec.suspend`,
`spec.ignore`), so the CRD carries a digest of its spec (`conductor.io/crd-digest`) and a
different one is re-applied (when RBAC allows; otherwise the kit's is trusted).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import yaml

from controller import assets
from controller.adapters.kube import Kube, KubeError, UnknownKindError

log = logging.getLogger(__name__)

# Package data (controller/assets): an installed wheel carries it, as a checkout does.
CRD_FILE = assets.CRD


DIGEST_ANNOTATION = "conductor.io/crd-digest"


def load_crd(path: Path = CRD_FILE) -> dict[str, Any]:
    """The CRD as shipped, stamped with the digest of its spec."""
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    digest = hashlib.sha256(json.dumps(doc["spec"], sort_keys=True).encode()).hexdigest()
    doc.setdefault("metadata", {}).setdefault("annotations", {})[DIGEST_ANNOTATION] = \
        digest[:16]
    return doc


def ensure_crd(kube: Kube, path: Path = CRD_FILE, timeout: float = 30.0) -> dict[str, Any]:
    """Apply the CRD unless it is already served; return it once the API serves the kind."""
    crd = load_crd(path)
    spec = crd["spec"]
    versions = [v["name"] for v in spec["versions"] if v.get("served")]
    api_versions = [f"{spec['group']}/{v}" for v in versions]
    kind = spec["names"]["kind"]
    try:
        for api_version in api_versions:
            kube.resource(api_version, kind)
        _upgrade(kube, crd)
        return crd
    except UnknownKindError:
        pass
    kube.apply(crd)
    deadline = time.monotonic() + timeout
    for api_version in api_versions:
        while True:
            kube.forget(api_version)
            try:
                kube.resource(api_version, kind)
                break
            except UnknownKindError:
                if time.monotonic() > deadline:
                    raise KubeError(f"CRD {crd['metadata']['name']} not served after "
                                    f"{timeout:.0f}s", reason="Timeout") from None
                time.sleep(0.1)
    return crd


def _upgrade(kube: Kube, crd: dict[str, Any]) -> None:
    """Re-apply a served CRD whose digest is not ours (an older or hand-made one)."""
    name = crd["metadata"]["name"]
    installed = kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", name)
    annotations = ((installed or {}).get("metadata") or {}).get("annotations") or {}
    wanted = crd["metadata"]["annotations"][DIGEST_ANNOTATION]
    if installed is None or annotations.get(DIGEST_ANNOTATION) == wanted:
        return
    try:
        kube.apply(crd)
        log.info("CRD %s updated to this release's (digest %s)", name, wanted)
    except KubeError as e:
        if e.status != 403:
            raise
        log.warning("CRD %s differs from this release's and this account may not update "
                    "it: apply config/crd/deploymentparameters.yaml", name)
