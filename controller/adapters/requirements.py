"""Does the cluster meet the app's needs? Checked against `requirements.yaml` in the root.

An agent about to deploy wants to know up front whether the cluster can run the app: the
Kubernetes version, ready nodes, a storage class, and allocatable CPU and memory. The file
is optional; without it only the facts are reported. Example:

    kubernetesVersion: ">=1.20"
    nodes: 1
    storageClass: true      # any default StorageClass, or a name
    cpu: "2"
    memory: 4Gi
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from controller.adapters.kube import Kube, KubeError
from controller.errors import ValidationError

FILE = "requirements.yaml"
_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
          "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
          "m": 10**-3, "": 1}


def quantity(raw: Any) -> float:
    """A Kubernetes quantity ("500m", "4Gi", 2) as a number."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(raw))
    if not match or match.group(2) not in _UNITS:
        raise ValidationError(f"not a quantity: {raw!r}", {"value": str(raw)})
    return float(match.group(1)) * _UNITS[match.group(2)]


def load(root: Path) -> dict[str, Any]:
    path = root / FILE
    if not path.exists():
        return {}
    doc = yaml.safe_load(path.read_text()) or {}
    if not isinstance(doc, dict):
        raise ValidationError(f"{FILE}: expected a mapping", {"file": FILE})
    return doc


def _version_ok(actual: str, wanted: str) -> bool:
    match = re.fullmatch(r"\s*(>=|>|==|<=|<)?\s*v?(\d+)\.(\d+)\s*", wanted)
    got = re.match(r"v?(\d+)\.(\d+)", actual)
    if not match or not got:
        raise ValidationError(f"kubernetesVersion: cannot compare {wanted!r}",
                              {"value": wanted})
    op = match.group(1) or ">="
    want = (int(match.group(2)), int(match.group(3)))
    have = (int(got.group(1)), int(got.group(2)))
    return {">=": have >= want, ">": have > want, "==": have == want, "<=": have <= want,
            "<": have < want}[op]


def check(kube: Kube, root: Path) -> dict[str, Any]:
    wanted = load(root)
    version = kube.request("GET", "/version")
    nodes = kube.list("v1", "Node")[0]
    ready = [n for n in nodes if any(c.get("type") == "Ready" and c.get("status") == "True"
                                     for c in (n.get("status") or {}).get("conditions", []))]
    cpu = sum(quantity((n.get("status") or {}).get("allocatable", {}).get("cpu", 0))
              for n in ready)
    memory = sum(quantity((n.get("status") or {}).get("allocatable", {}).get("memory", 0))
                 for n in ready)
    try:
        classes = kube.list("storage.k8s.io/v1", "StorageClass")[0]
    except KubeError:
        classes = []
    default = [c["metadata"]["name"] for c in classes
               if (c["metadata"].get("annotations") or {}).get(
                   "storageclass.kubernetes.io/is-default-class") == "true"]
    facts = {"kubernetesVersion": version.get("gitVersion", ""), "readyNodes": len(ready),
             "nodes": len(nodes), "storageClasses": [c["metadata"]["name"] for c in classes],
             "defaultStorageClass": default[0] if default else "",
             "allocatable": {"cpu": round(cpu, 3), "memory": int(memory)}}
    checks = []
    if "kubernetesVersion" in wanted:
        want = str(wanted["kubernetesVersion"])
        checks.append({"name": "kubernetesVersion", "required": want,
                       "actual": facts["kubernetesVersion"],
                       "ok": _version_ok(facts["kubernetesVersion"], want)})
    if "nodes" in wanted:
        checks.append({"name": "nodes", "required": int(wanted["nodes"]), "actual": len(ready),
                       "ok": len(ready) >= int(wanted["nodes"])})
    if "storageClass" in wanted:
        want_sc = wanted["storageClass"]
        ok = bool(default) if want_sc is True else (
            want_sc in facts["storageClasses"] if want_sc else True)
        checks.append({"name": "storageClass", "required": want_sc,
                       "actual": facts["defaultStorageClass"] if want_sc is True
                       else facts["storageClasses"], "ok": ok})
    for name, have in (("cpu", cpu), ("memory", memory)):
        if name in wanted:
            need = quantity(wanted[name])
            checks.append({"name": name, "required": str(wanted[name]),
                           "actual": facts["allocatable"][name], "ok": have >= need})
    for c in checks:
        if not c["ok"]:
            c["message"] = f"{c['name']}: need {c['required']}, have {c['actual']}"
    return {"ok": all(c["ok"] for c in checks), "file": FILE if wanted else "",
            "requirements": wanted, "facts": facts, "checks": checks}
