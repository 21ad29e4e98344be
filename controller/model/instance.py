"""The DeploymentParameters object as data: one app instance's home in the cluster.

Whatever the parameter source, this object is where an instance lives: its annotations say
which services are down on purpose and where its parameters come from, and its status
holds the inventory of what the instance applied (so a restarted controller prunes exactly
what it owns), the per-service states and the kstatus conditions. Before this module the
rules were spread over the engine (status composition as private functions), planning (the
inventory format) and two inventory parsers; the engine, the health monitor and the
adapter that reads and writes the object (adapters/sources/resource.py) now share these.

Pure: no I/O, no clock (the caller passes the time a condition changes).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from controller.errors import ConductorError, ValidationError
from controller.model.health import DOWN, HEALTHY, SUSPENDED, UNHEALTHY, ServiceHealth
from controller.model.objects import Body, ObjectKey

log = logging.getLogger(__name__)

GROUP = "conductor.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "DeploymentParameters"
SEED_FILE = "parameters.yaml"  # the app's defaults, beside the manifests
# Services marked down on purpose (a JSON list): persisted, shared by replicas.
ANNOTATION_DOWN = "conductor.io/services-down"
# Where the object's parameters come from ("resource" or "git"), set when it is created.
# Not to be confused with objects.ANNOTATION_SOURCE (`conductor.io/source`), the template
# file a *rendered* object came from.
ANNOTATION_PARAMETER_SOURCE = "conductor.io/parameter-source"
# A wake-up recorded on the object (as Flux's reconcile.fluxcd.io/requestedAt): a replica
# that received a webhook for an instance it does not own writes the time here; the owner's
# watch of the object sees the change and runs a pass that fetches Git anew.
ANNOTATION_REQUESTED = "conductor.io/requested-reconcile-at"
# up/update/down a replica accepted for the instance's owner to run (runtime/requests.py):
# work for the owner, not a change of the instance, so it wakes no pass (`wakes_mark`).
ANNOTATION_REQUESTS = "conductor.io/requests"
# Where an instance following the controller's repository finds its parameters file.
INSTANCE_PARAMS = "instances/{namespace}/{name}.yaml"
_DEFAULT_PORTS = {"http": "80", "https": "443", "ssh": "22", "git": "9418"}

CONDITION_TYPES = ("Ready", "Reconciling", "Stalled")


def wakes_mark(meta: Mapping[str, Any]) -> str:
    """The object's annotations that wake a pass when they change, as one string to
    compare (the requests annotation is left out: its owner handles it, not a pass)."""
    shown = {k: v for k, v in (meta.get("annotations") or {}).items()
             if k != ANNOTATION_REQUESTS}
    return json.dumps(shown, sort_keys=True)
# Conditions as (status, reason, message) by type, in kstatus order.
Verdict = dict[str, tuple[str, str, str]]
# Service states that ask nothing more of anyone: down and suspended on purpose.
_SETTLED = frozenset({HEALTHY, SUSPENDED, DOWN})
# Status fields that change at every pass: a status differing only there is not rewritten.
_VOLATILE = ("lastPassTime", "lastPassDuration")


# -- metadata -------------------------------------------------------------------------------


def generation(obj: Body) -> int:
    return int((obj.get("metadata") or {}).get("generation") or 0)


def is_suspended(obj: Body) -> bool:
    """`spec.suspend: true` on the DeploymentParameters object."""
    return (obj.get("spec") or {}).get("suspend") is True


def down_services(obj: Body) -> frozenset[str]:
    """The services marked down (the annotation; empty when absent or malformed)."""
    raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_DOWN, "[]")
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        log.warning("ignoring malformed annotation %s=%r", ANNOTATION_DOWN, raw)
        return frozenset()
    return frozenset(str(v) for v in value) if isinstance(value, list) else frozenset()


def down_annotation(services: Iterable[str]) -> dict[str, str]:
    """The annotation that marks exactly `services` down (for a merge patch)."""
    return {ANNOTATION_DOWN: json.dumps(sorted(services))}


def new_object(name: str, namespace: str, spec: Mapping[str, Any], source: str) -> Body:
    """A DeploymentParameters object to create."""
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": name, "namespace": namespace,
                         "annotations": {ANNOTATION_PARAMETER_SOURCE: source}},
            "spec": dict(spec)}


# -- where the parameters come from ---------------------------------------------------------


@dataclass(frozen=True)
class SourceSpec:
    """An instance's parameters in Git: `url` "" is the controller's repository, `ref` ""
    the controller's ref; `path` is the parameters file inside the repository."""

    url: str
    ref: str
    path: str


def instance_params_path(namespace: str, name: str) -> str:
    """The instance's parameters file in the controller's repository."""
    return INSTANCE_PARAMS.format(namespace=namespace, name=name)


def source_spec(obj: Body) -> SourceSpec | None:
    """Where the object says its parameters come from: None for its own spec; a Git file
    when it has `spec.source` ({url, ref, path}, each optional) or the annotation
    `conductor.io/parameter-source: git` (its file in the controller's repository).
    ValidationError names a malformed `spec.source` (it is this instance's fault only)."""
    meta = obj.get("metadata") or {}
    raw = (obj.get("spec") or {}).get("source")
    annotated = (meta.get("annotations") or {}).get(ANNOTATION_PARAMETER_SOURCE) == "git"
    if raw is None and not annotated:
        return None
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ValidationError("spec.source must be a mapping {url, ref, path}",
                              {"field": "spec.source"})
    fields: dict[str, str] = {}
    for name in ("url", "ref", "path"):
        value = raw.get(name, "")
        if not isinstance(value, str):
            raise ValidationError(f"spec.source.{name} must be a string",
                                  {"field": f"spec.source.{name}"})
        fields[name] = value.strip()
    unknown = sorted(set(raw) - {"url", "ref", "path"})
    if unknown:
        raise ValidationError(f"spec.source has unknown field(s) {', '.join(unknown)}",
                              {"field": "spec.source", "unknown": unknown})
    path = fields["path"] or instance_params_path(str(meta.get("namespace") or ""),
                                                  str(meta.get("name") or ""))
    parts = path.split("/")
    if path.startswith("/") or ".." in parts or not path.endswith((".yaml", ".yml")):
        raise ValidationError(
            f"spec.source.path {path!r} must be a relative .yaml file inside the repository",
            {"field": "spec.source.path", "path": path})
    return SourceSpec(fields["url"], fields["ref"], path)


def requested_at(obj: Body) -> str:
    """The last wake-up recorded on the object ("" when none)."""
    return str(((obj.get("metadata") or {}).get("annotations") or {})
               .get(ANNOTATION_REQUESTED) or "")


def request_annotation(at: str) -> dict[str, str]:
    """The annotation that asks the owner for a pass (for a merge patch)."""
    return {ANNOTATION_REQUESTED: at}


def repository_id(url: str) -> str:
    """A repository's URL reduced to what names it, so that the forms a webhook sends
    (https clone URL, ssh URL, scp-like `git@host:owner/repo`) compare equal with the
    configured one: host (and a non-default port), then the path without `.git`, lower
    case, no user or password. A local path stays a path."""
    text = url.strip()
    if "://" not in text:
        host, sep, path = text.partition(":")
        if sep and "/" not in host:  # scp-like: [user@]host:path
            return f"{host.rpartition('@')[2]}/{_repo_tail(path)}".lower()
        return f"file/{_repo_tail(text)}".lower()
    parts = urlsplit(text)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None and str(port) != _DEFAULT_PORTS.get(parts.scheme.lower()):
        host = f"{host}:{port}"
    if parts.scheme.lower() == "file":
        host = "file"
    return f"{host}/{_repo_tail(parts.path)}".lower()


def _repo_tail(path: str) -> str:
    return path.strip("/").removesuffix(".git").strip("/")


def ref_name(ref: str) -> str:
    """A ref as configured or pushed (`refs/heads/main`, `refs/tags/v1`) as its short name."""
    return ref.removeprefix("refs/heads/").removeprefix("refs/tags/")


def object_ref(name: str, namespace: str) -> dict[str, str]:
    """The object as an Event's involvedObject names it."""
    return {"apiVersion": API_VERSION, "kind": KIND, "name": name, "namespace": namespace}


# -- the inventory ----------------------------------------------------------------------------


def _escape(part: str) -> str:
    # Only "%" and "/" are escaped: keys stay readable (names like "system:auth" included).
    return part.replace("%", "%25").replace("/", "%2F")


def key_to_str(key: ObjectKey) -> str:
    """`<group>/<Kind>/<namespace>/<name>`, "" for the core group or no namespace.

    Every part is escaped, so any key round-trips through `key_from_str`.
    """
    return "/".join(_escape(p) for p in (key.group, key.kind, key.namespace, key.name))


def key_from_str(text: str) -> ObjectKey:
    """Inverse of `key_to_str`; ValueError when `text` does not have four parts."""
    parts = text.split("/")
    if len(parts) != 4:
        raise ValueError(f"object key {text!r}: expected <group>/<Kind>/<namespace>/<name>")
    group, kind, namespace, name = (unquote(p) for p in parts)
    return ObjectKey(group, kind, namespace, name)


@dataclass(frozen=True)
class InventoryEntry:
    """What this instance last applied at one key (the key is the inventory's map key).

    `digest` is that of the applied body ("" when unknown, e.g. after a failed create);
    `fields` is `live_fingerprint` of the apply response ("" when unknown: the next pass then
    re-applies once to learn it).
    """

    service: str
    api_version: str
    digest: str
    fields: str

    def to_dict(self, key: ObjectKey) -> dict[str, str]:
        """Short field names: the status holds one of these per object."""
        return {"k": key_to_str(key), "v": self.api_version, "s": self.service,
                "d": self.digest, "f": self.fields}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> tuple[ObjectKey, InventoryEntry]:
        """Inverse of `to_dict`; KeyError, TypeError or ValueError when malformed."""
        values = {name: raw[name] for name in ("k", "v", "s")}
        values.update({name: raw.get(name, "") for name in ("d", "f")})
        for name, value in values.items():
            if not isinstance(value, str):
                raise TypeError(f"inventory field {name!r}: expected a string, got {value!r}")
        key = key_from_str(values["k"])
        if values["v"].rpartition("/")[0] != key.group:
            raise ValueError(f"inventory entry {values['k']!r}: apiVersion {values['v']!r} "
                             "is not in the key's group")
        return key, cls(values["s"], values["v"], values["d"], values["f"])


Inventory = dict[ObjectKey, InventoryEntry]


def inventory(obj: Body, *, warn: bool = False) -> Inventory:
    """The object's `status.inventory`; a malformed entry is skipped (logged when `warn`:
    the engine warns, the health monitor reading the same object stays quiet)."""
    out: Inventory = {}
    for raw in (obj.get("status") or {}).get("inventory") or []:
        try:
            key, entry = InventoryEntry.from_dict(raw)
        except (KeyError, ValueError, TypeError, AttributeError):
            if warn:
                log.warning("ignoring malformed inventory entry %r", raw)
            continue
        out[key] = entry
    return out


def encode_inventory(entries: Mapping[ObjectKey, InventoryEntry]) -> list[dict[str, str]]:
    """`status.inventory`, sorted by key (a stable status compares equal)."""
    return [e.to_dict(k) for k, e in sorted(entries.items())]


# -- status composition -----------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What status composition needs of a pass, as plain data."""

    revision: str = ""
    error: ConductorError | None = None
    # (service, error details) of each object that failed, in result order.
    failed: Sequence[tuple[str, Mapping[str, Any]]] = ()
    touched: frozenset[str] = frozenset()  # services with any object result
    services: Sequence[str] = ()  # the services an operation named ([]: all)
    applied: int = 0  # objects written


def service_states(outcome: Outcome, down: frozenset[str], known: Iterable[str],
                   old: Mapping[str, Any]) -> dict[str, Any]:
    """`status.services`: each known service's state after the pass."""
    out: dict[str, Any] = {}
    failed: dict[str, Mapping[str, Any]] = {}
    for service, details in outcome.failed:
        failed.setdefault(service, details)
    error = outcome.error
    for name in sorted(known):
        if name in down:
            out[name] = {"state": "down", "reason": "marked down"}
        elif name in failed:
            err = failed[name]
            out[name] = {"state": "failed",
                         "reason": f"{err.get('resource', '')}: {err.get('message', '')}"[:500]}
        # Git unreachable is not a service failure: its objects keep running as they were.
        elif error is not None and error.code != "source_error" and (
                not outcome.services or name in outcome.services):
            out[name] = {"state": "failed", "reason": error.message[:500]}
        elif name in outcome.touched:
            out[name] = {"state": "deployed", "reason": ""}
        else:
            out[name] = dict(old.get(name) or {"state": "deployed", "reason": ""})
    return out


def verdict(outcome: Outcome, health: Sequence[ServiceHealth] | None,
            warning: str = "", suspended: bool = False) -> Verdict:
    """kstatus conditions for a pass's outcome and the services' health.

    Stalled: the pass failed (render, validation, apply). Otherwise Ready only when every
    deployed service is healthy (or suspended, or down on purpose); an unhealthy one makes
    Ready=False `HealthCheckFailed` naming its failing objects; one still progressing (or
    not observed yet, or just applied: the watch may not have seen the new generation)
    makes Ready=False and Reconciling=True `Progressing`. A suspended instance is
    Ready=False `Suspended`: nothing it renders is applied. Without a health view, Ready
    means applied.
    """
    if outcome.error is not None:
        code, message = outcome.error.code, outcome.error.message
        return {"Ready": ("False", code, message), "Reconciling": ("False", code, ""),
                "Stalled": ("True", code, message)}
    if outcome.failed:
        first = outcome.failed[0][1]
        msg = f"{len(outcome.failed)} object(s) failed; first: " \
              f"{first.get('resource')}: {first.get('message')}"
        return {"Ready": ("False", "ApplyFailed", msg),
                "Reconciling": ("False", "ApplyFailed", ""),
                "Stalled": ("True", "ApplyFailed", msg)}
    suffix = f"; warning: {warning}" if warning else ""
    applied = f"Applied revision {outcome.revision}"
    stalled = ("False", "Succeeded", "")
    if suspended:
        message = "suspended (spec.suspend): changes and drift are not applied until it " \
                  "is resumed"
        return {"Ready": ("False", "Suspended", message),
                "Reconciling": ("False", "Suspended", ""), "Stalled": stalled}
    if health is None:
        return {"Ready": ("True", "Succeeded", applied + suffix),
                "Reconciling": ("False", "Succeeded", ""), "Stalled": stalled}
    unhealthy = [h for h in health if h.status == UNHEALTHY]
    if unhealthy:
        message = "; ".join(_failing(h) for h in unhealthy)
        return {"Ready": ("False", "HealthCheckFailed", message + suffix),
                "Reconciling": ("False", "HealthCheckFailed", ""), "Stalled": stalled}
    waiting = [h for h in health if h.status not in _SETTLED]
    if outcome.applied or waiting:
        what = ", ".join(f"{h.name}: {h.reason or h.status}" for h in waiting) or \
            f"{outcome.applied} object(s) applied"
        message = f"{applied}; waiting for health: {what}"
        return {"Ready": ("False", "Progressing", message + suffix),
                "Reconciling": ("True", "Progressing", message), "Stalled": stalled}
    return {"Ready": ("True", "Succeeded", f"{applied}; every service healthy" + suffix),
            "Reconciling": ("False", "Succeeded", ""), "Stalled": stalled}


def _failing(h: ServiceHealth) -> str:
    """`default/Deployment/frontend: ImagePullBackOff` for each failing object (3 at most)."""
    objects = [(key, o) for key, o in h.failing if o.status == UNHEALTHY] or list(h.failing)
    names = ", ".join(f"{key}: {o.reason}" for key, o in objects[:3])
    more = f" (and {len(objects) - 3} more)" if len(objects) > 3 else ""
    return f"service {h.name}: {names or h.reason}{more}"


def previous_verdict(conditions: Sequence[Mapping[str, Any]]) -> Verdict:
    """The verdict the written conditions hold (types conductor writes only)."""
    return {str(c.get("type")): (str(c.get("status", "Unknown")), str(c.get("reason", "")),
                                 str(c.get("message", "")))
            for c in conditions if c.get("type") in CONDITION_TYPES}


def condition_list(verdict: Verdict, old: Sequence[Mapping[str, Any]], generation: int,
                   now: str) -> list[dict[str, Any]]:
    """The conditions in kstatus order; lastTransitionTime kept while a status holds
    (`now` when it changes)."""
    previous = {c.get("type"): c for c in old}
    out = []
    for kind in CONDITION_TYPES:
        status, reason, message = verdict.get(kind, ("Unknown", "", ""))
        before = previous.get(kind) or {}
        changed = before.get("status") != status
        out.append({"type": kind, "status": status, "reason": reason or "Unknown",
                    "message": message[:1000], "observedGeneration": generation,
                    "lastTransitionTime": now if changed or not before.get(
                        "lastTransitionTime") else before["lastTransitionTime"]})
    return out


def condition_states(conditions: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """type -> status."""
    return {str(c["type"]): str(c.get("status", "Unknown")) for c in conditions if "type" in c}


def comparable(status: Mapping[str, Any]) -> Any:
    """`status` without what changes at every pass (times): equal means no write needed."""
    out = {k: v for k, v in status.items() if k not in _VOLATILE}
    out["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                         for c in status.get("conditions") or []]
    return out


__all__ = ["ANNOTATION_DOWN", "ANNOTATION_PARAMETER_SOURCE", "ANNOTATION_REQUESTED",
           "API_VERSION", "CONDITION_TYPES", "GROUP", "INSTANCE_PARAMS", "KIND", "SEED_FILE",
           "VERSION", "Inventory", "InventoryEntry", "Outcome", "SourceSpec", "Verdict",
           "comparable", "condition_list", "condition_states", "down_annotation",
           "down_services", "encode_inventory", "generation", "instance_params_path", "inventory",
           "is_suspended", "key_from_str", "key_to_str", "new_object", "object_ref",
           "previous_verdict", "ref_name", "repository_id", "request_annotation",
           "requested_at", "service_states", "source_spec", "verdict"]
