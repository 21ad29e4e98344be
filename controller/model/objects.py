"""Plain data about Kubernetes objects, shared by rendering, planning and applying.

Objects stay plain dicts (no typed decoding by kind) so that custom resources and any kind
the API server knows are handled alike; this module only names them and says how they are
labelled as ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Body = dict[str, Any]

# Ownership marks put on every applied object; the selector lists what we own.
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "conductor"
LABEL_APP = "conductor.io/app"
LABEL_INSTANCE = "conductor.io/instance"
LABEL_SERVICE = "conductor.io/service"
# Instances are DeploymentParameters objects, named per namespace: "default" in two
# namespaces are two instances, so the namespace is part of the ownership selector.
LABEL_INSTANCE_NAMESPACE = "conductor.io/instance-namespace"
ANNOTATION_SOURCE = "conductor.io/source"
# `conductor.io/prune: disabled` on a live or rendered object keeps it when it stops rendering.
ANNOTATION_PRUNE = "conductor.io/prune"
PRUNE_DISABLED = "disabled"

# Objects outside any service folder (manifests/_shared/) belong to this pseudo-service.
SHARED_SERVICE = "_shared"


@dataclass(frozen=True, order=True)
class ObjectKey:
    """Identity of one object: group, kind, namespace ("" when cluster-scoped) and name."""

    group: str
    kind: str
    namespace: str
    name: str

    @classmethod
    def of(cls, body: Body) -> ObjectKey:
        api_version = str(body.get("apiVersion", ""))
        group = api_version.rpartition("/")[0]
        meta = body.get("metadata") or {}
        return cls(group, str(body.get("kind", "")), str(meta.get("namespace") or ""),
                   str(meta.get("name", "")))

    def __str__(self) -> str:
        """`namespace/Kind/name`, the resource key the API and events use."""
        return f"{self.namespace or '-'}/{self.kind}/{self.name}"


@dataclass(frozen=True)
class Manifest:
    """One rendered object, with where it came from (for errors, events and pruning)."""

    service: str
    body: Body
    source: str = ""  # template path relative to the manifests root
    line: int = 0  # 1-based line of the document's start in the rendered file
    key: ObjectKey = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", ObjectKey.of(self.body))

    @property
    def api_version(self) -> str:
        return str(self.body["apiVersion"])
