"""Deployment parameters: the values templates are rendered with, and their validation.

Parameters arrive as the `spec` of a DeploymentParameters resource (or the same shape from
Git): `{"global": {...}, "services": {"<name>": {...}}}`. A service sees the global values
overlaid with its own (`effective`), so common settings are written once. Validation uses the
CRD's own OpenAPI schema, so Git-sourced parameters are held to exactly the rules the API
server enforces on the resource, and errors name the offending path.

Before the schema, bodies are held to a nesting depth and a size (`check_limits`): a deeply
nested value is harmless to us but makes kube-apiserver spin for minutes, so it must never
reach it.

Secret values need not live in the spec at all: any value may be a reference
`{"secretKeyRef": {"name": ..., "key": ...}}` to a Secret in the DeploymentParameters
object's namespace, resolved only when templates are rendered (`resolve_secret_refs`), so
the spec, its history and every API answer hold the Secret's name, never its value. Values
that are secret anyway (schema `format: password` or `x-conductor-secret: true`, or a key
named like password/token/secret/key material) are masked by `redact` for readers that may
not write.

Pure apart from `load_schema`, which reads the CRD file.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from controller import assets
from controller.errors import SourceError, ValidationError
from controller.model.redaction import REDACTED, is_secret_key  # the one list of keys

DEFAULT_CRD = assets.CRD  # package data (controller/assets)
CRD_VERSION = "v1alpha1"

# Far deeper than any template needs, far below what makes the API server (or a recursive
# walk) struggle; 256 KiB keeps the object well under etcd's 1.5 MiB limit with its status.
MAX_DEPTH = 32
MAX_SPEC_BYTES = 256 * 1024

SECRET_REF = "secretKeyRef"
# A reference as conductor's own validator sees it (the CRD cannot say "string or this
# object" in a structural schema, so secret fields are untyped there).
_SECRET_REF_SCHEMA: dict[str, Any] = {
    "type": "object", "required": [SECRET_REF], "additionalProperties": False,
    "properties": {SECRET_REF: {
        "type": "object", "required": ["name", "key"], "additionalProperties": False,
        "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 253},
                       "key": {"type": "string", "minLength": 1, "maxLength": 253}}}}}


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
    """Read the CRD file and return the OpenAPI v3 schema of `spec` (stored version).

    Every engine (one per instance) asks for it: the text is parsed once per content, and
    each caller gets its own copy. Parsing it per engine was a third of the controller's
    CPU while 100 instances started (bench_scale)."""
    try:
        docs = _parsed_crd(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise SourceError(f"cannot read the CRD {path}: {e}", {"path": str(path)}) from e
    return copy.deepcopy(_spec_schema(path, docs))


@functools.lru_cache(maxsize=8)
def _parsed_crd(text: str) -> list[Any]:
    return [d for d in yaml.safe_load_all(text) if d]


def _spec_schema(path: Path, docs: list[Any]) -> dict[str, Any]:
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
    input always reports the same first error); `errors` holds all of them. Depth and size
    are checked first (`check_limits`), so a hostile body costs no schema walk.
    """
    check_limits(spec)
    validator = _Validator(_to_json_schema(schema))
    found = sorted(
        [*({"path": _path(e.absolute_path), "reason": e.message}
           for e in validator.iter_errors(spec)), *_bad_refs(spec, "spec")],
        key=lambda e: (e["path"], e["reason"]),
    )
    if not found:
        return
    first = found[0]
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    raise ValidationError(f"{first['path']}: {first['reason']}{more}",
                          {"path": first["path"], "reason": first["reason"], "errors": found})


def check_limits(value: Any, path: str = "spec") -> None:
    """Raise `ValidationError` when `value` nests deeper than MAX_DEPTH maps and lists, or
    its JSON exceeds MAX_SPEC_BYTES. Iterative: the value may be deeper than Python's stack."""
    stack: list[tuple[Any, int, str]] = [(value, 1, path)]
    while stack:
        node, depth, where = stack.pop()
        if not isinstance(node, Mapping | list):
            continue
        if depth > MAX_DEPTH:
            raise ValidationError(
                f"{where}: nested deeper than {MAX_DEPTH} levels",
                {"path": where, "reason": f"nested deeper than {MAX_DEPTH} levels",
                 "limit": MAX_DEPTH, "limitName": "maxDepth"})
        items = node.items() if isinstance(node, Mapping) else enumerate(node)
        for key, child in items:
            sub = f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}"
            stack.append((child, depth + 1, sub))
    try:
        size = len(json.dumps(value, separators=(",", ":"), default=str).encode())
    except ValueError:  # NaN and friends are the schema's to refuse, not a size problem
        return
    if size > MAX_SPEC_BYTES:
        raise ValidationError(
            f"{path}: {size} bytes of JSON, more than the limit of {MAX_SPEC_BYTES}",
            {"path": path, "reason": f"larger than {MAX_SPEC_BYTES} bytes", "size": size,
             "limit": MAX_SPEC_BYTES, "limitName": "maxBytes"})


def _bad_refs(value: Any, path: str) -> list[dict[str, str]]:
    """Malformed Secret references anywhere (free-form values included): a typo in one
    should be refused with the spec, not found at render time."""
    if isinstance(value, Mapping):
        if SECRET_REF in value:
            if jsonschema.Draft7Validator(_SECRET_REF_SCHEMA).is_valid(value):
                return []
            return [{"path": path, "reason": "a Secret reference is exactly "
                                             "{secretKeyRef: {name: ..., key: ...}}"}]
        return [e for k, v in value.items() for e in _bad_refs(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [e for i, v in enumerate(value) for e in _bad_refs(v, f"{path}[{i}]")]
    return []


def _is_integer(_checker: Any, value: Any) -> bool:
    # JSON Schema counts 1.0 as an integer; Kubernetes' int32 fields (and our templates,
    # which would print "1.0") do not.
    return isinstance(value, int) and not isinstance(value, bool)


_Validator: Any = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    jsonschema.Draft7Validator,
    type_checker=jsonschema.Draft7Validator.TYPE_CHECKER.redefine("integer", _is_integer))


# -- secrets ---------------------------------------------------------------------------------


def is_secret_ref(value: Any) -> bool:
    """`{"secretKeyRef": {...}}`: a value to be read from a Secret at render time."""
    return isinstance(value, Mapping) and set(value) == {SECRET_REF}


def is_secret_schema(node: Any) -> bool:
    return isinstance(node, Mapping) and (node.get("format") == "password"
                                          or node.get("x-conductor-secret") is True)


def section_schema(schema: Mapping[str, Any], section: str) -> Mapping[str, Any]:
    """The schema of `global` or of one service's values (`service`) within the spec's."""
    props = schema.get("properties") or {}
    if section == "global":
        return props.get("global") or {}
    return (props.get("services") or {}).get("additionalProperties") or {}


def redact(value: Any, schema: Mapping[str, Any] | None = None) -> Any:
    """A copy of `value` with secret values replaced by REDACTED.

    Secret: a value whose schema says `format: password` / `x-conductor-secret: true`, or
    whose key looks like secret material. References to Secrets stay (they name a Secret,
    and are what a reader needs to see where the value comes from); empty values stay (an
    unset password is worth knowing, and reveals nothing).
    """
    return _redact(value, schema or {}, secret=False)


def _redact(value: Any, node: Mapping[str, Any], secret: bool) -> Any:
    if secret or is_secret_schema(node):
        if value in (None, "") or is_secret_ref(value):
            return copy.deepcopy(value)
        return REDACTED
    if isinstance(value, Mapping):
        props = node.get("properties") or {}
        extra = node.get("additionalProperties")
        out = {}
        for key, child in value.items():
            sub = props.get(key) or (extra if isinstance(extra, Mapping) else {})
            out[key] = _redact(child, sub, is_secret_key(str(key)))
        return out
    if isinstance(value, list):
        items = node.get("items")
        return [_redact(v, items if isinstance(items, Mapping) else {}, False) for v in value]
    return value


# Reads a Secret's data (decoded) by name; None when there is no such Secret.
SecretReader = Callable[[str], Mapping[str, str] | None]


def resolve_secret_refs(params: Parameters, read: SecretReader,
                        namespace: str = "") -> Parameters:
    """`params` with every Secret reference replaced by the Secret's value.

    Called only to render: the result must not be stored or shown. Each Secret is read
    once. A missing Secret or key is a `validation_error` naming the parameter, the Secret
    and the key, so the pass applies nothing rather than render an empty password.
    """
    cache: dict[str, Mapping[str, str] | None] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, Mapping) and SECRET_REF in value:
            return lookup(value, path)
        if isinstance(value, Mapping):
            return {k: walk(v, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    def lookup(value: Mapping[str, Any], path: str) -> str:
        ref = value.get(SECRET_REF)
        name = ref.get("name") if isinstance(ref, Mapping) else None
        key = ref.get("key") if isinstance(ref, Mapping) else None
        if not is_secret_ref(value) or not isinstance(name, str) or not isinstance(key, str) \
                or not name or not key:
            raise ValidationError(f"{path}: a Secret reference is "
                                  "{\"secretKeyRef\": {\"name\": ..., \"key\": ...}}",
                                  {"path": path, "reason": "malformed secretKeyRef"})
        if name not in cache:
            cache[name] = read(name)
        data = cache[name]
        where = f"{namespace}/{name}" if namespace else name
        if data is None:
            raise ValidationError(f"{path}: Secret {where} not found",
                                  {"path": path, "reason": "Secret not found", "secret": name,
                                   "key": key, "namespace": namespace})
        if key not in data:
            raise ValidationError(f"{path}: Secret {where} has no key '{key}'",
                                  {"path": path, "reason": "key not in Secret", "secret": name,
                                   "key": key, "namespace": namespace,
                                   "available": sorted(data)})
        return data[key]

    return Parameters(walk(params.global_, "spec.global"),
                      {name: walk(values, f"spec.services.{name}")
                       for name, values in params.services.items()})


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
    if is_secret_schema(node):
        # A secret value is a string, or a reference to one in a Secret.
        plain = {k: v for k, v in node.items() if k not in ("format", "x-conductor-secret")}
        plain = _to_json_schema({"type": "string", **plain} if "type" not in plain else plain)
        plain.pop("x-kubernetes-preserve-unknown-fields", None)
        return {"anyOf": [plain, _SECRET_REF_SCHEMA]}
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
