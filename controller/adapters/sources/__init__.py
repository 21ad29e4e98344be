"""Where parameters (and manifests) come from: the DeploymentParameters resource or Git.

Both produce a `Snapshot`: the parameters spec, the revision it came from, and the
manifests root to render. The engine does not care which source made it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class Snapshot:
    spec: dict[str, Any]  # {"global": {...}, "services": {...}}
    revision: str  # a Git commit SHA, or "generation/N" of the resource
    manifest_root: Path
    source: str  # "resource" or "git"
    committed_at: datetime | None = None  # Git commit time, for push-to-applied latency
    details: dict[str, Any] = field(default_factory=dict)


class ParameterSource(Protocol):
    def snapshot(self, resource: dict[str, Any]) -> Snapshot:
        """Parameters as of now; `resource` is the DeploymentParameters object just read."""
        ...
