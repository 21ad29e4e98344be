"""Install the DeploymentParameters CRD when it is missing, and wait until it is served.

A cluster set up with the deploy kit already has it; the demo and the tests start from an
empty control plane, and `conductor run` should work there out of the box.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from controller.kube import Kube, KubeError, UnknownKindError

CRD_FILE = Path(__file__).resolve().parent.parent / "config" / "crd" / \
    "deploymentparameters.yaml"


def load_crd(path: Path = CRD_FILE) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
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
