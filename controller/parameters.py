"""Deployment parameters: the values templates are rendered with, and their validation.

Parameters arrive as the `spec` of a DeploymentParameters resource (or the same shape from
Git): `{"global": {...}, "services": {"<name>": {...}}}`. A service sees the global values
overlaid with its own (`effective`), so common settings are written once. Validation uses the
CRD's own OpenAPI schema, so Git-sourced parameters are held to exactly the rules the API
server enforces on the resource, and errors name the offending path.

Pure apart from `load_schema`, which reads the CRD file.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from controller.errors import SourceError, ValidationError

DEFAULT_CRD = (
    Path(__file__).resolve().parent.parent / "config" / "crd" / "deploymentparameters.yaml"
)
CRD_VERSION = "v1alpha1"


@dataclass(frozen=True)
class Parameters:
    """Global values plus per-service overrides; never shares mutable state with its input."""

    global_: dict[str, Any] = field(default_factory=dict)
    services: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> Parameters:
        """Read the resource's `spec` shape; both sections are optional (null = empty)."""
        spec = spec or {}
        if not isinstance(spec, Mapping):
            raise ValidationError("spec: must be a mapping",
                                  {"path": "spec", "reason": "must be a mapping"})
        global_ = spec.get("global") or {}
        if not isinstance(global_, Mapping):
            raise ValidationError("spec.global: must be a mapping",
                                  {"path": "spec.global", "reason": "must be a mapping"})
        services = spec.get("services") or {}
        if not isinstance(services, Mapping):
            raise ValidationError("spec.services: must be a mapping",
                                  {"path": "spec.services", "reason": "must be a mapping"})
        per_service: dict[str, dict[str, Any]] = {}
        for name, values in services.items():
            if not isinstance(values or {}, Mapping):
                path = f"spec.services.{name}"
                raise ValidationError(f"{path}: must be a mapping",
                                      {"path": path, "reason": "must be a mapping"})
            per_service[str(name)] = copy.deepcopy(dict(values or {}))
        return cls(copy.deepcopy(dict(global_)), per_service)

    def to_spec(self) -> dict[str, Any]:
        return {"global": copy.deepcopy(self.global_), "services": copy.deepcopy(self.services)}


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Overlay `override` on `base`: maps merge key by key, anything else is replaced whole.

    Lists replace rather than concatenate: a service that lists its own ports or args means
    exactly those, and there is no sound way to merge lists of unkeyed items. The result is a
    fresh deep copy, so neither input can be changed through it.
    """
    merged: dict[str, Any] = {k: copy.deepcopy(v) for k, v in base.items()}
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def effective(params: Parameters, service: str) -> dict[str, Any]:
    """The values one service is rendered with: global, overlaid with the service's own."""
    return deep_merge(params.global_, params.services.get(service) or {})


def load_schema(path: Path = DEFAULT_CRD) -> dict[str, Any]:
    """Read the CRD file and return the OpenAPI v3 schema of `spec` (stored version)."""
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    except (OSError, yaml.YAMLError) as e:
        raise SourceError(f"cannot read the CRD {path}: {e}", {"path": str(path)}) from e
    for doc in docs:
        if not isinstance(doc, dict) or doc.get("kind") != "CustomResourceDefinition":
            continue
        versions = doc.get("spec", {}).get("versions") or []
        # The stored version: the shape the controller reads back, whatever was written.
        chosen = next((v for v in versions if v.get("storage")), versions[0] if versions else None)
        try:
            schema = chosen["schema"]["openAPIV3Schema"]["properties"]["spec"]  # type: ignore[index]
        except (KeyError, TypeError) as e:
            raise ValidationError(f"{path}: the CRD has no openAPIV3Schema for spec",
                                  {"path": str(path)}) from e
        return dict(schema)
    raise ValidationError(f"{path}: no CustomResourceDefinition found", {"path": str(path)})


def validate_spec(spec: Any, schema: Mapping[str, Any]) -> None:
    """Raise `ValidationError` listing every way `spec` breaks the CRD's schema.

    The message and top-level details name the first failing path (sorted, so the same
    input always reports the same first error); `errors` holds all of them.
    """
    validator = jsonschema.Draft7Validator(_to_json_schema(schema))
    found = sorted(
        ({"path": _path(e.absolute_path), "reason": e.message}
         for e in validator.iter_errors(spec)),
        key=lambda e: (e["path"], e["reason"]),
    )
    if not found:
        return
    first = found[0]
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    raise ValidationError(f"{first['path']}: {first['reason']}{more}",
                          {"path": first["path"], "reason": first["reason"], "errors": found})


def _path(parts: Any) -> str:
    """`spec.services.redis.ports[0]`: how kubectl and the API server name fields."""
    out = "spec"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _to_json_schema(node: Any) -> Any:
    """Translate the OpenAPI dialect Kubernetes uses into what a JSON Schema validator means.

    `nullable` widens the type; `x-kubernetes-int-or-string` is a union; and an object that
    declares properties without preserving unknown fields rejects others, because the API
    server would silently drop them (a typo in a Git-sourced file should not vanish quietly).
    Other `x-kubernetes-*` keys do not constrain values and are left for the validator to
    ignore.
    """
    if not isinstance(node, Mapping):
        return node  # `additionalProperties: false` and the like
    out = dict(node)
    for key in ("properties", "patternProperties"):
        if isinstance(out.get(key), Mapping):
            out[key] = {name: _to_json_schema(sub) for name, sub in out[key].items()}
    for key in ("additionalProperties", "items", "not"):
        if key in out:
            out[key] = (_to_json_schema(out[key]) if not isinstance(out[key], list)
                        else [_to_json_schema(sub) for sub in out[key]])
    for key in ("allOf", "anyOf", "oneOf"):
        if isinstance(out.get(key), list):
            out[key] = [_to_json_schema(sub) for sub in out[key]]
    if out.pop("nullable", False):
        if "type" in out:
            types = out["type"] if isinstance(out["type"], list) else [out["type"]]
            out["type"] = [*types, "null"]
        if isinstance(out.get("enum"), list):
            out["enum"] = [*out["enum"], None]
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out
