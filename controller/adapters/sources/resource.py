"""The DeploymentParameters object in the cluster: the one adapter that reads, writes and
watches it (and the resource parameter source, whose parameters are its spec).

Whatever the parameter source, this object is the app instance's home in the cluster (its
annotations, status and inventory are described, as data, in controller/model/instance.py,
which also holds its apiVersion, kind and annotation names). With the resource source its
spec is also the parameters, and a change to it wakes the loop.
"""

from __future__ import annotations

import base64
import copy
import functools
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from controller.adapters.kube import Body, Kube, KubeError
from controller.adapters.sources import Snapshot
from controller.adapters.watching import Reflector, Selector
from controller.config import Config
from controller.errors import ConflictError, NotFoundError, ValidationError
from controller.model import instance
from controller.model.instance import API_VERSION, GROUP, KIND, SEED_FILE, VERSION

log = logging.getLogger(__name__)


class ParametersResource:
    """Reads and writes one DeploymentParameters object (namespace/instance)."""

    def __init__(self, kube: Kube, cfg: Config, instance: str | None = None) -> None:
        self.kube = kube
        self.cfg = cfg
        self.namespace = cfg.namespace
        self.name = instance or cfg.instance

    def get(self) -> Body | None:
        return self.kube.get(API_VERSION, KIND, self.name, self.namespace)

    def read(self) -> Body:
        obj = self.get()
        if obj is None:
            raise NotFoundError(f"DeploymentParameters {self.namespace}/{self.name} not found",
                                {"namespace": self.namespace, "instance": self.name})
        return obj

    def ensure(self, seed: Mapping[str, Any] | None = None) -> Body:
        """The object, created first (from `seed` or manifests/parameters.yaml) if absent."""
        obj = self.get()
        if obj is not None:
            return obj
        spec = dict(seed) if seed is not None else load_seed(self.cfg.manifest_root)
        body = instance.new_object(self.name, self.namespace, spec, self.cfg.source)
        try:
            return self.kube.create(body)
        except KubeError as e:
            if e.status == 409:  # another replica created it first
                return self.read()
            raise

    def replace_spec(self, spec: Mapping[str, Any], base: Body | None = None) -> Body:
        """Replace the whole spec of `base` (read now when not given): a merge patch that
        nulls every key no longer there, sent with `base`'s resourceVersion.

        The nulls are computed against `base`, so the write is only right if nobody wrote
        in between: the resourceVersion makes the API server refuse it otherwise (409),
        raised as `ConflictError` for the caller to retry on a fresh read or to report.
        """
        obj = base if base is not None else self.read()
        meta = obj.get("metadata") or {}
        patch = {"metadata": {"resourceVersion": str(meta.get("resourceVersion") or "")},
                 "spec": _replace(obj.get("spec") or {}, spec)}
        try:
            return self.kube.patch(API_VERSION, KIND, self.name, patch, self.namespace)
        except KubeError as e:
            if e.status == 409:
                raise ConflictError(
                    f"DeploymentParameters {self.namespace}/{self.name} changed while it was "
                    "being written", {"namespace": self.namespace, "instance": self.name,
                                      "resourceVersion": meta.get("resourceVersion"),
                                      "generation": meta.get("generation")}) from e
            if e.status == 404:
                raise NotFoundError(
                    f"DeploymentParameters {self.namespace}/{self.name} not found",
                    {"namespace": self.namespace, "instance": self.name}) from e
            raise

    def read_secret(self, name: str) -> dict[str, str] | None:
        """The decoded data of a Secret in this object's namespace (None when missing):
        where parameters' `secretKeyRef`s point. Used to render only, never to answer."""
        obj = self.kube.get("v1", "Secret", name, self.namespace)
        if obj is None:
            return None
        data = {str(k): base64.b64decode(str(v)).decode("utf-8", errors="replace")
                for k, v in (obj.get("data") or {}).items()}
        return data

    def down_services(self, obj: Body) -> frozenset[str]:
        return instance.down_services(obj)

    def set_down(self, services: frozenset[str]) -> Body:
        return self.kube.patch(API_VERSION, KIND, self.name,
                               {"metadata": {"annotations": instance.down_annotation(services)}},
                               self.namespace)

    def patch_status(self, status: Mapping[str, Any]) -> Body:
        return self.kube.patch(API_VERSION, KIND, self.name, {"status": dict(status)},
                               self.namespace, subresource="status")

    def watch(self, on_change: Callable[[Body], None]) -> Reflector:
        """Watch the object: `changes(on_change)` on a watch of its own."""
        return Reflector(self.kube, Selector(API_VERSION, KIND, self.namespace,
                                             field_selector=f"metadata.name={self.name}"),
                         self.changes(on_change)).start()

    def changes(self, on_change: Callable[[Body], None]) -> Callable[[str, Body], None]:
        """A watch handler (of this object, or of its namespace's set of them: others are
        skipped) that calls `on_change` when the object's spec or annotations change (not
        status), when it is deleted (at once: the pass must stop rather than wait for the
        interval) and when it is recreated (a new uid, even at the same generation)."""
        seen: dict[str, Any] = {}

        def handler(kind: str, obj: Body) -> None:
            if (obj.get("metadata") or {}).get("name") != self.name:
                return
            if kind == "DELETED":
                seen["mark"] = None  # not the first sight: its return must wake the loop
                on_change(obj)
                return
            if kind not in ("ADDED", "MODIFIED"):
                return
            meta = obj.get("metadata", {})
            mark = (meta.get("uid"), meta.get("generation"), instance.wakes_mark(meta))
            if seen.get("mark") != mark:
                first = "mark" not in seen
                seen["mark"] = mark
                if not first:
                    on_change(obj)

        return handler


class ResourceSource:
    """Parameters from the DeploymentParameters object's spec."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg

    def snapshot(self, resource: dict[str, Any]) -> Snapshot:
        generation = int(resource.get("metadata", {}).get("generation", 0))
        # The uid tells this object's generation/N from a deleted namesake's (history).
        uid = str(resource.get("metadata", {}).get("uid") or "")
        return Snapshot(spec=resource.get("spec") or {}, revision=f"generation/{generation}",
                        manifest_root=self.cfg.manifest_root, source="resource",
                        details={"uid": uid} if uid else {})


def load_seed(root: Path) -> dict[str, Any]:
    """The default parameters shipped beside the manifests ({} when there are none).

    Every pass of every instance reads them: the text is parsed once per content (a
    quarter of a no-op pass's CPU was this YAML parse, bench_scale), each caller gets
    its own copy."""
    path = root / SEED_FILE
    if not path.exists():
        return {}
    return copy.deepcopy(_parsed_seed(str(path), path.read_text()))


@functools.lru_cache(maxsize=64)
def _parsed_seed(path: str, text: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValidationError(f"{path}: not valid YAML: {e}", {"file": path}) from e
    if doc is not None and not isinstance(doc, dict):
        raise ValidationError(f"{path}: expected a mapping with global/services",
                              {"file": path})
    return doc or {}


__all__ = ["API_VERSION", "GROUP", "KIND", "SEED_FILE", "VERSION", "ParametersResource",
           "ResourceSource", "load_seed"]


def _replace(current: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch turning `current` into exactly `new` (nulls for removed keys)."""
    patch: dict[str, Any] = {}
    for key in current:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        old = current.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            patch[key] = _replace(old, value)
        else:
            patch[key] = value
    return patch
