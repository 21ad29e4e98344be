"""Decide what a pass must do: desired objects vs live objects vs the inventory.

Planning is pure so that every decision about writing or deleting can be tested on plain
dicts, and so that a pass with nothing to change provably plans no request at all. Change
detection reads only what the labelled LIST already returned:

- a digest of the rendered body, stamped on every applied object as an annotation, says
  whether the *repository* changed (the API server's defaulting and normalization, e.g.
  `cpu: 0.5` read back as `500m`, never touch the annotation);
- a fingerprint of the live values at the paths the rendered body sets, recorded from the
  apply response, says whether *someone else* changed one of our fields since (kubectl
  edit, scale, patch). It is taken from what the server returned, so its normalized values
  match later reads. (Ownership in `managedFields` would be neater, but a 1.20 API server
  does not move ownership on writes through the scale subresource, so it misses
  `kubectl scale`.)

What to prune comes from the inventory, the durable record of what this instance applied
(kept in the DeploymentParameters status), plus labelled leftovers of a crash between an
apply and the inventory write. Nothing is ever dropped from the inventory unless the object
is deleted, gone, or deliberately orphaned: a forgotten object could never be pruned.

Ignore rules (`spec.ignore`) name fields someone else owns (a Deployment's replicas under a
HorizontalPodAutoscaler, an annotation a mesh injects). Such a field is set from the render
on create only; after that it is left out of the applied body, the digest and the
fingerprint (so it is never drift), and our field manager gives up its ownership. Leaving a
field out of a server-side apply deletes it when we are its only owner, so a field we still
own is first handed over: applied once, at its live value and guarded by the live
resourceVersion, by a second field manager (`<manager>-handover`), as the Kubernetes
documentation advises for HPAs. The live value is never changed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Final, Literal

from controller.config import PruneSettings
from controller.errors import ValidationError
from controller.model.instance import InventoryEntry  # the inventory's home
from controller.model.objects import (
    ANNOTATION_PRUNE,
    LABEL_APP,
    LABEL_INSTANCE,
    LABEL_SERVICE,
    PRUNE_DISABLED,
    SHARED_SERVICE,
    Body,
    Manifest,
    ObjectKey,
)

# Stamped on every applied object: the digest of the rendered body it was applied from.
ANNOTATION_DIGEST = "conductor.io/digest"

Action = Literal["create", "update", "unchanged", "prune", "keep"]

# Reasons, per action (PlannedChange.reason).
MISSING = "missing"  # create: nothing live at the key
CHANGED = "changed"  # update: the rendered body differs from the one last applied
DRIFT = "drift"  # update: someone else took over a field we own
# update: our entry has no fingerprint yet (recorded as intent by a pass that did not finish,
# or an apply whose answer was lost): re-applied once to learn it. Not drift: nobody else
# changed anything we know of, so it must not count as a drift correction.
RESUMED = "resumed"
ADOPT = "adopt"  # update: live object matches but is not in our inventory yet
CURRENT = "current"  # unchanged
REMOVED = "removed"  # prune: in the inventory, no longer rendered
LEFTOVER = "leftover"  # prune: labelled ours, neither rendered nor in the inventory
DOWN = "down"  # prune: its service is being taken down
GONE = "gone"  # prune without a request: already absent from the cluster
ANNOTATION = "annotation"  # keep: `conductor.io/prune: disabled`
POLICY = "policy"  # keep: Namespaces / PVCs hold data (PruneSettings)
DISABLED = "disabled"  # keep: pruning is switched off

_HASH_CHARS = 16  # 64 bits: collisions between two renders of one object are not a concern

# Apply order by kind (lightkube's sort_objects): definitions and containers first, then
# what workloads reference, then workloads, then what refers to workloads.
_PHASE_KINDS: Final = (
    ("CustomResourceDefinition",),
    ("Namespace",),
    # Identity, RBAC, configuration and the policies admission checks pods against
    # (quotas, limits, priority, storage classes, network policies) before any pod exists.
    ("ServiceAccount", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding",
     "ConfigMap", "Secret", "PriorityClass", "StorageClass", "LimitRange", "ResourceQuota",
     "NetworkPolicy", "IngressClass", "RuntimeClass"),
    ("Service", "PersistentVolumeClaim", "PersistentVolume"),
    ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod",
     "ReplicationController"),
)
OTHER_PHASE: Final = len(_PHASE_KINDS)  # Ingress, HPA, PDB, custom resources, ...
PHASES: Final[Mapping[str, int]] = MappingProxyType(
    {kind: phase for phase, kinds in enumerate(_PHASE_KINDS) for kind in kinds})


def phase_of(key_or_kind: ObjectKey | str) -> int:
    """Apply phase of a kind (0 first); deletion walks the phases backwards."""
    kind = key_or_kind.kind if isinstance(key_or_kind, ObjectKey) else key_or_kind
    return PHASES.get(kind, OTHER_PHASE)


# -- fingerprints ---------------------------------------------------------------------------


def _hash(value: object) -> str:
    # default=str: YAML may yield dates; sort_keys makes the text independent of dict order.
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH_CHARS]


def _annotations(body: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = body.get("metadata") or {}
    return meta.get("annotations") or {}


def _labels(body: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = body.get("metadata") or {}
    return meta.get("labels") or {}


def digest(body: Mapping[str, Any]) -> str:
    """Stable hash of a rendered body, not counting the digest annotation itself.

    An empty annotations map counts as none, so that stamping and stripping the annotation
    never changes the digest: `digest(with_digest(m).body) == digest(m.body)`.
    """
    meta = dict(body.get("metadata") or {})
    annotations = {k: v for k, v in (meta.pop("annotations", None) or {}).items()
                   if k != ANNOTATION_DIGEST}
    if annotations:
        meta["annotations"] = annotations
    return _hash({**body, "metadata": meta})


def with_digest(manifest: Manifest) -> Manifest:
    """A copy of `manifest` whose body carries its digest annotation (input untouched)."""
    value = digest(manifest.body)
    if _annotations(manifest.body).get(ANNOTATION_DIGEST) == value:
        return manifest
    meta = dict(manifest.body.get("metadata") or {})
    meta["annotations"] = {**(meta.get("annotations") or {}), ANNOTATION_DIGEST: value}
    return replace(manifest, body={**manifest.body, "metadata": meta})


def live_fingerprint(live_body: Mapping[str, Any], desired_body: Mapping[str, Any]) -> str:
    """Fingerprint of the live values at the paths `desired_body` sets.

    Maps are followed key by key; a list of the same length element by element; any other
    value (or a list whose length changed) is taken whole. Fields the server or others
    add outside those paths (status, defaults, other annotations) do not count.
    """
    return _hash(_project(live_body, desired_body))


def _project(live: Any, desired: Any) -> Any:
    if isinstance(desired, Mapping) and isinstance(live, Mapping):
        return {k: _project(live[k], v) if k in live else None for k, v in desired.items()
                if k != "status"}
    if isinstance(desired, list) and isinstance(live, list) and len(desired) == len(live):
        return [_project(lv, dv) for lv, dv in zip(live, desired, strict=True)]
    return live


# -- the inventory: its format lives with the DeploymentParameters object (model/instance)


# -- the plan -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedChange:
    """One decision about one object.

    Reasons: create `missing`; update `changed`, `drift`, `resumed` or `adopt`; unchanged
    `current`; prune `removed`, `leftover`, `down` or `gone` (already absent: no request is
    made); keep `annotation`, `policy` or `disabled`. `manifest` is the body to apply
    (carrying its digest annotation) for create/update/unchanged, None otherwise.
    """

    action: Action
    key: ObjectKey
    service: str
    reason: str
    manifest: Manifest | None = None
    api_version: str = ""
    # Ignore rules: the JSON pointers ignored on this object; on create, the whole rendered
    # body (ignored fields set once; same digest annotation as `manifest`); on update, an
    # apply body handing the ignored fields we still own to HANDOVER_SUFFIX's manager.
    ignored: tuple[str, ...] = ()
    initial: Body | None = field(default=None, repr=False)
    handover: Body | None = field(default=None, repr=False)

    @property
    def body(self) -> Body | None:
        """The body to send: the full render on create, else the managed fields only."""
        if self.action == "create" and self.initial is not None:
            return self.initial
        return self.manifest.body if self.manifest is not None else None

    @property
    def deletes(self) -> bool:
        """True when this change sends a delete request."""
        return self.action == "prune" and self.reason != GONE


@dataclass(frozen=True)
class Plan:
    """Every decision of one pass, and the inventory that results from carrying it out.

    `services` is the scope planned (None: the whole app); `previous` the inventory planned
    against; `observed` what the live objects the plan touches look like now, as inventory
    entries (only objects labelled ours or already in the inventory), so that an object we
    failed to act on can still be recorded.
    """

    items: tuple[PlannedChange, ...]
    services: frozenset[str] | None = None
    previous: Mapping[ObjectKey, InventoryEntry] = field(default_factory=dict, repr=False)
    observed: Mapping[ObjectKey, InventoryEntry] = field(default_factory=dict, repr=False)

    def apply_phases(self) -> list[list[PlannedChange]]:
        """Creates and updates grouped by phase, in apply order; empty phases left out."""
        return _phases([c for c in self.items if c.action in ("create", "update")],
                       reverse=False)

    def prune_phases(self) -> list[list[PlannedChange]]:
        """Deletions grouped by phase, in reverse apply order (`gone` needs no request)."""
        return _phases([c for c in self.items if c.deletes], reverse=True)

    def counts(self) -> dict[str, int]:
        """Changes per action; `gone` prunes (no request) are counted apart as `gone`."""
        out = dict.fromkeys(("create", "update", "unchanged", "prune", "keep", "gone"), 0)
        for c in self.items:
            out[GONE if c.action == "prune" and not c.deletes else c.action] += 1
        return out

    @property
    def is_noop(self) -> bool:
        """True when carrying out the plan sends no apply and no delete request."""
        return not any(c.action in ("create", "update") or c.deletes for c in self.items)

    def next_inventory(self, applied_fields: Mapping[ObjectKey, str],
                       succeeded: Iterable[ObjectKey] | None = None,
                       ) -> dict[ObjectKey, InventoryEntry]:
        """The inventory after carrying out this plan, fully or in part.

        `applied_fields` maps each key applied this pass to `live_fingerprint` of the apply
        response; `succeeded` holds the keys whose request succeeded (applied or deleted;
        keys in `applied_fields` count too). None means every request succeeded.

        - entries of services outside the scope are carried over untouched;
        - a desired object that was applied or is unchanged gets a fresh entry (new digest,
          its fields from `applied_fields`, else from the old entry);
        - a failed apply keeps the old entry; without one it is still recorded (unknown
          digest and fields: the request may have reached the server), unless the object
          it tried to take over is live and not ours;
        - a deleted or `gone` object leaves the inventory; a failed or skipped delete keeps
          its entry (a leftover gets one from its live state), so a later pass retries;
        - kept by annotation or because pruning is disabled: the entry stays, so the object
          is pruned once the annotation is removed or pruning is enabled again;
        - kept by policy (Namespace, PVC): the entry is dropped, orphaning the object on
          purpose. It still carries our labels, so while its kind is listed it shows up as
          a leftover and is kept again; only enabling the policy would delete it.
        """
        done = {c.key for c in self.items} if succeeded is None else set(succeeded)
        done |= applied_fields.keys()
        out = {k: e for k, e in self.previous.items() if not self._in_scope(e.service)}
        for change in self.items:
            entry = self._entry_after(change, change.key in done,
                                      applied_fields.get(change.key))
            if entry is None:
                out.pop(change.key, None)
            else:
                out[change.key] = entry
        return out

    def _in_scope(self, service: str) -> bool:
        return self.services is None or service in self.services

    def _entry_after(self, change: PlannedChange, ok: bool,
                     fields: str | None) -> InventoryEntry | None:
        previous = self.previous.get(change.key)
        observed = self.observed.get(change.key)
        if change.manifest is not None:  # create, update, unchanged
            if ok:
                if fields is None:
                    # An unchanged object's fields are the recorded ones (else it would be
                    # drift); an apply whose fields were not reported is re-learned next pass.
                    fields = previous.fields if previous and change.action == "unchanged" \
                        else ""
                return InventoryEntry(change.service, change.api_version,
                                      digest(change.manifest.body), fields)
            if previous is not None:
                return previous
            if change.action == "create":
                return InventoryEntry(change.service, change.api_version, "", "")
            return observed  # None when the live object is not ours
        if change.action == "prune":
            if change.reason == GONE or ok:
                return None
            return previous or observed
        if change.reason == POLICY:
            return None
        return previous or observed


def _phases(changes: Sequence[PlannedChange], reverse: bool) -> list[list[PlannedChange]]:
    groups: dict[int, list[PlannedChange]] = {}
    for c in changes:
        groups.setdefault(phase_of(c.key), []).append(c)
    return [sorted(groups[p], key=lambda c: c.key) for p in sorted(groups, reverse=reverse)]


# -- ignore rules -------------------------------------------------------------------------

# The field manager that takes over an ignored field we still own, so that leaving it out
# of our apply keeps its value (see the module docstring).
HANDOVER_SUFFIX = "-handover"
_BAD_TILDE = re.compile(r"~(?![01])")


def parse_pointer(text: object) -> tuple[str, ...]:
    """An RFC 6901 JSON pointer as its unescaped segments; ValueError saying why not.

    Fields that make an object ours or name it (apiVersion, kind, metadata.name/namespace,
    whole label/annotation maps, `conductor.io/` keys) and status cannot be ignored.
    """
    if not isinstance(text, str) or not text.startswith("/") or len(text) < 2:
        raise ValueError("a JSON pointer starting with '/', e.g. /spec/replicas")
    raw = text[1:].split("/")
    if any(not p for p in raw):
        raise ValueError("empty segment (a doubled or trailing '/')")
    if any(_BAD_TILDE.search(p) for p in raw):
        raise ValueError("'~' must be written ~0, and '/' inside a key ~1")
    parts = tuple(p.replace("~1", "/").replace("~0", "~") for p in raw)
    if parts[0] in ("apiVersion", "kind", "status") or (
            parts[0] == "metadata" and (len(parts) < 3 or parts[1] not in (
                "labels", "annotations") or parts[2].startswith("conductor.io/"))):
        raise ValueError("names the object or conductor's own fields; only spec-like "
                         "fields and other labels or annotations can be ignored")
    return parts


@dataclass(frozen=True)
class IgnoreRule:
    """Fields left to someone else on the objects a rule selects.

    An empty selector field matches anything: `service` alone covers a service's objects,
    `kind` + `name` (and `namespace`) one object.
    """

    paths: tuple[str, ...]
    service: str = ""
    kind: str = ""
    name: str = ""
    namespace: str = ""

    def matches(self, manifest: Manifest) -> bool:
        key = manifest.key
        return all(not want or want == have for want, have in (
            (self.service, manifest.service), (self.kind, key.kind), (self.name, key.name),
            (self.namespace, key.namespace)))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in (("service", self.service), (
            "kind", self.kind), ("name", self.name), ("namespace", self.namespace)) if v}
        return {**out, "paths": list(self.paths)}


def parse_ignore_rules(raw: object, where: str = "spec.ignore") -> tuple[IgnoreRule, ...]:
    """`spec.ignore` as rules; ValidationError naming the first bad path (the CRD schema
    checks the shape too, but a Git source reaches us without the API server)."""
    if raw is None:
        return ()

    def bad(path: str, reason: str) -> ValidationError:
        return ValidationError(f"{path}: {reason}", {"path": path, "reason": reason})

    if not isinstance(raw, list):
        raise bad(where, "must be a list of {service, kind, name, namespace, paths}")
    out = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            raise bad(at, "must be a mapping")
        unknown = sorted(set(item) - {"service", "kind", "name", "namespace", "paths"})
        if unknown:
            raise bad(at, f"unknown field(s) {', '.join(map(str, unknown))}")
        for name in ("service", "kind", "name", "namespace"):
            if not isinstance(item.get(name, ""), str):
                raise bad(f"{at}.{name}", "must be a string")
        paths = item.get("paths")
        if not isinstance(paths, list) or not paths:
            raise bad(f"{at}.paths", "must be a non-empty list of JSON pointers")
        for j, path in enumerate(paths):
            try:
                parse_pointer(path)
            except ValueError as e:
                raise bad(f"{at}.paths[{j}]", f"{path!r}: {e}") from None
        out.append(IgnoreRule(tuple(paths), str(item.get("service", "")),
                              str(item.get("kind", "")), str(item.get("name", "")),
                              str(item.get("namespace", ""))))
    return tuple(out)


def _index(segment: str, node: list[Any]) -> int | None:
    return int(segment) if segment.isdigit() and int(segment) < len(node) else None


def _child(node: Any, segment: str) -> Any:
    if isinstance(node, Mapping):
        return node.get(segment)
    if isinstance(node, list):
        i = _index(segment, node)
        return None if i is None else node[i]
    return None


def strip_paths(body: Mapping[str, Any], pointers: Iterable[str],
                ) -> tuple[dict[str, Any], tuple[str, ...]]:
    """A copy of `body` without the fields at `pointers`, and the pointers it had.

    Maps that the removal leaves empty go too: an empty annotations map in an apply body
    would still claim the map."""
    out = copy.deepcopy(dict(body))
    removed = []
    for pointer in pointers:
        parts = parse_pointer(pointer)
        trail: list[tuple[Any, str]] = []
        node: Any = out
        for segment in parts[:-1]:
            trail.append((node, segment))
            node = _child(node, segment)
        if isinstance(node, dict) and parts[-1] in node:
            del node[parts[-1]]
        elif isinstance(node, list) and _index(parts[-1], node) is not None:
            del node[int(parts[-1])]
        else:
            continue
        removed.append(pointer)
        while trail and node == {}:
            parent, segment = trail.pop()
            if isinstance(parent, dict):
                del parent[segment]
            node = parent
    return out, tuple(removed)


def _list_key(fields: Mapping[str, Any], element: Any) -> str | None:
    """The managedFields key of a live list element: `k:{...}` whose key fields it has,
    or `v:<json>` of its value."""
    for name in fields:
        if name.startswith("k:") and isinstance(element, Mapping):
            try:
                wanted = json.loads(name[2:])
            except ValueError:
                continue
            if isinstance(wanted, dict) and all(element.get(k) == v for k, v in wanted.items()):
                return str(name)
        elif name.startswith("v:"):
            try:
                if json.loads(name[2:]) == element:
                    return str(name)
            except ValueError:
                continue
    return None


def _owned_route(fields: Any, live: Any, parts: Sequence[str]) -> list[Any] | None:
    """How `fields` (one manager's fieldsV1) reaches the live value at `parts`: per segment
    the map key, or the key fields of the list element; None when it does not own it."""
    route: list[Any] = []
    for segment in parts:
        if not isinstance(fields, Mapping):
            return None
        if isinstance(live, list):
            i = _index(segment, live)
            name = None if i is None else _list_key(fields, live[i])
            if i is None or name is None:
                return None
            route.append(json.loads(name[2:]) if name.startswith("k:") else None)
            fields, live = fields[name], live[i]
        else:
            if f"f:{segment}" not in fields or not isinstance(live, Mapping):
                return None
            route.append(segment)
            fields, live = fields[f"f:{segment}"], live.get(segment)
    return route if live is not None else None


def handover_body(live: Mapping[str, Any], field_manager: str,
                  pointers: Iterable[str]) -> Body | None:
    """An apply body setting the fields at `pointers` that `field_manager` owns (by an
    Apply) to their live values, guarded by the live resourceVersion; None when it owns
    none of them."""
    meta = live.get("metadata") or {}
    entries = [e.get("fieldsV1") or {} for e in meta.get("managedFields") or []
               if e.get("manager") == field_manager and e.get("operation") == "Apply"]
    out: Body = {"apiVersion": live.get("apiVersion"), "kind": live.get("kind"),
                 "metadata": {k: meta[k] for k in ("name", "namespace", "resourceVersion")
                              if meta.get(k)}}
    found = False
    for pointer in pointers:
        parts = parse_pointer(pointer)
        route = next((r for r in (_owned_route(f, live, parts) for f in entries)
                      if r is not None), None)
        if route is None:
            continue
        found = True
        node: Any = out
        value: Any = live
        for n, (segment, step) in enumerate(zip(parts, route, strict=True)):
            value = _child(value, segment)
            last = n == len(parts) - 1
            if isinstance(node, list):  # step: the element's key fields (None: a set value)
                if last or step is None:
                    node.append(copy.deepcopy(value))
                    break
                element = next((e for e in node if isinstance(e, dict)
                                and all(e.get(k) == v for k, v in step.items())), None)
                if element is None:
                    element = dict(step)
                    node.append(element)
                node = element
            elif last:
                node[segment] = copy.deepcopy(value)
            else:
                node = node.setdefault(segment, [] if isinstance(value, list) else {})
    return out if found else None


# -- planning -------------------------------------------------------------------------------


def plan(desired: Sequence[Manifest], live: Mapping[ObjectKey, Body],
         inventory: Mapping[ObjectKey, InventoryEntry], *,
         services: AbstractSet[str] | None = None, settings: PruneSettings,
         field_manager: str, app: str, instance: str,
         ignore: Sequence[IgnoreRule] = ()) -> Plan:
    """Plan a pass: classify every desired object, then decide what to prune.

    `live` holds the objects listed by our label selector plus any live object at a
    desired key; `services` None plans the whole app (every inventory entry not rendered is
    a prune candidate), a set plans only those services, and `desired` must then hold
    nothing else (ValueError). Raises ValidationError when a whole-app render is empty and
    would prune something, unless `settings.allow_empty`. `ignore` rules leave fields to
    others (module docstring).
    """
    scope = None if services is None else frozenset(services)
    wanted = _by_key(desired, scope)
    items: list[PlannedChange] = []
    observed: dict[ObjectKey, InventoryEntry] = {}
    for key in sorted(wanted, key=lambda k: (phase_of(k), k)):
        manifest = wanted[key]
        body = live.get(key)
        items.append(_with_ignored(manifest, body, inventory.get(key), field_manager,
                                   [p for r in ignore if r.matches(manifest)
                                    for p in r.paths]))
        if body is not None and _is_ours(body, app, instance):
            observed[key] = _entry_of(body, manifest.service, field_manager)

    removals = _candidates(wanted.keys(), live, inventory, scope, app, instance, REMOVED)
    for key, service, api_version, reason in removals:
        body = live.get(key)
        items.append(_removal(key, service, api_version, reason, body, settings,
                              honour_enabled=True))
        if body is not None:
            observed[key] = _entry_of(body, service, field_manager)

    would_prune = sum(1 for c in items if c.deletes)
    if scope is None and not desired and would_prune and not settings.allow_empty:
        raise ValidationError(
            f"render produced no objects; refusing to prune {would_prune} objects; "
            "set prune.allow_empty to allow", {"would_prune": would_prune})
    return Plan(tuple(items), scope, dict(inventory), observed)


def plan_delete(services: AbstractSet[str], inventory: Mapping[ObjectKey, InventoryEntry],
                live: Mapping[ObjectKey, Body], *, settings: PruneSettings, app: str,
                instance: str) -> Plan:
    """Plan `down` of `services`: delete every object they own (inventory and labelled).

    The annotation and Namespace/PVC policy still keep objects; `settings.enabled` and
    `allow_empty` do not apply, since deleting is what was asked for.
    """
    scope = frozenset(services)
    items: list[PlannedChange] = []
    observed: dict[ObjectKey, InventoryEntry] = {}
    for key, service, api_version, reason in _candidates(frozenset(), live, inventory, scope,
                                                          app, instance, DOWN):
        body = live.get(key)
        items.append(_removal(key, service, api_version, reason, body, settings,
                              honour_enabled=False))
        if body is not None:
            observed[key] = _entry_of(body, service, "")
    return Plan(tuple(items), scope, dict(inventory), observed)


def _by_key(desired: Sequence[Manifest], scope: frozenset[str] | None,
            ) -> dict[ObjectKey, Manifest]:
    outside = sorted(str(m.key) for m in desired if scope is not None
                     and m.service not in scope)
    if outside:  # a caller bug: a scoped operation must never see other services' objects
        raise ValueError(f"desired objects outside services {sorted(scope or ())}: "
                         f"{', '.join(outside)}")
    out: dict[ObjectKey, Manifest] = {}
    for m in desired:
        first = out.setdefault(m.key, m)
        if first is not m:
            raise ValidationError(
                f"object {m.key} is rendered twice ({_origin(first)}, {_origin(m)})",
                {"resource": str(m.key), "sources": [_origin(first), _origin(m)]})
    return out


def _origin(m: Manifest) -> str:
    return f"{m.source}:{m.line}" if m.source else m.service


def _with_ignored(manifest: Manifest, body: Body | None, entry: InventoryEntry | None,
                  field_manager: str, pointers: Sequence[str]) -> PlannedChange:
    """Classify the managed part of `manifest` (ignored fields left out); a create keeps
    the whole render to send, an update hands over ignored fields we still own."""
    if not pointers:
        return _classify(with_digest(manifest), body, entry, field_manager)
    ignored = tuple(dict.fromkeys(pointers))
    stripped, removed = strip_paths(manifest.body, ignored)
    managed = with_digest(replace(manifest, body=stripped))
    change = replace(_classify(managed, body, entry, field_manager), ignored=ignored)
    if change.action == "create" and removed:
        meta = dict(manifest.body.get("metadata") or {})
        meta["annotations"] = {**(meta.get("annotations") or {}),
                               ANNOTATION_DIGEST: digest(stripped)}
        return replace(change, initial={**manifest.body, "metadata": meta})
    if change.action == "update" and body is not None and removed:
        return replace(change, handover=handover_body(body, field_manager, removed))
    return change


def _classify(manifest: Manifest, body: Body | None, entry: InventoryEntry | None,
              field_manager: str) -> PlannedChange:
    def change(action: Action, reason: str) -> PlannedChange:
        return PlannedChange(action, manifest.key, manifest.service, reason, manifest,
                             manifest.api_version)

    if body is None:
        return change("create", MISSING)
    if _annotations(body).get(ANNOTATION_DIGEST) != digest(manifest.body):
        return change("update", CHANGED)
    if entry is None:
        return change("update", ADOPT)
    if not entry.fields:
        return change("update", RESUMED)
    if live_fingerprint(body, manifest.body) != entry.fields:
        return change("update", DRIFT)
    return change("unchanged", CURRENT)


def _candidates(desired: AbstractSet[ObjectKey], live: Mapping[ObjectKey, Body],
                inventory: Mapping[ObjectKey, InventoryEntry], scope: frozenset[str] | None,
                app: str, instance: str, reason: str,
                ) -> list[tuple[ObjectKey, str, str, str]]:
    """(key, service, apiVersion, reason) of everything in scope that is not desired.

    Sorted in deletion order (last phase first) so the plan reads as it will run.
    """
    out: list[tuple[ObjectKey, str, str, str]] = []
    for key, entry in inventory.items():
        if key not in desired and (scope is None or entry.service in scope):
            body = live.get(key)  # the version listed live is one the server serves now
            api_version = str(body.get("apiVersion") or "") if body else ""
            out.append((key, entry.service, api_version or entry.api_version, reason))
    for key, body in live.items():
        if key in desired or key in inventory or not _is_ours(body, app, instance):
            continue  # not ours: never pruned, whatever else it looks like
        # _shared objects carry an empty service label ("_shared" is no valid label value).
        service = str(_labels(body).get(LABEL_SERVICE) or SHARED_SERVICE)
        if scope is None or service in scope:
            out.append((key, service, str(body.get("apiVersion", "")),
                        LEFTOVER if reason == REMOVED else reason))
    return sorted(out, key=lambda c: (-phase_of(c[0]), c[0]))


def _removal(key: ObjectKey, service: str, api_version: str, reason: str, body: Body | None,
             settings: PruneSettings, honour_enabled: bool) -> PlannedChange:
    def change(action: Action, why: str) -> PlannedChange:
        return PlannedChange(action, key, service, why, None, api_version)

    if body is None:
        return change("prune", GONE)
    if honour_enabled and not settings.enabled:
        return change("keep", DISABLED)
    if _annotations(body).get(ANNOTATION_PRUNE) == PRUNE_DISABLED:
        return change("keep", ANNOTATION)
    if key.group == "" and (
            (key.kind == "Namespace" and not settings.namespaces)
            or (key.kind == "PersistentVolumeClaim" and not settings.persistent_volume_claims)):
        return change("keep", POLICY)
    return change("prune", reason)


def _is_ours(body: Mapping[str, Any], app: str, instance: str) -> bool:
    labels = _labels(body)
    return labels.get(LABEL_APP) == app and labels.get(LABEL_INSTANCE) == instance


def _entry_of(body: Mapping[str, Any], service: str, field_manager: str) -> InventoryEntry:
    """A live object as an inventory entry, for recording what we failed to act on."""
    return InventoryEntry(service or str(_labels(body).get(LABEL_SERVICE) or ""),
                          str(body.get("apiVersion", "")),
                          str(_annotations(body).get(ANNOTATION_DIGEST, "")),
                          "")  # re-learned from the next apply response
