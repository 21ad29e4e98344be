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
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Final, Literal
from urllib.parse import unquote

from controller.config import PruneSettings
from controller.errors import ValidationError
from controller.objects import (
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


# -- the inventory --------------------------------------------------------------------------


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


# -- planning -------------------------------------------------------------------------------


def plan(desired: Sequence[Manifest], live: Mapping[ObjectKey, Body],
         inventory: Mapping[ObjectKey, InventoryEntry], *,
         services: AbstractSet[str] | None = None, settings: PruneSettings,
         field_manager: str, app: str, instance: str) -> Plan:
    """Plan a pass: classify every desired object, then decide what to prune.

    `live` holds the objects listed by our label selector plus any live object at a
    desired key; `services` None plans the whole app (every inventory entry not rendered is
    a prune candidate), a set plans only those services, and `desired` must then hold
    nothing else (ValueError). Raises ValidationError when a whole-app render is empty and
    would prune something, unless `settings.allow_empty`.
    """
    scope = None if services is None else frozenset(services)
    wanted = _by_key(desired, scope)
    items: list[PlannedChange] = []
    observed: dict[ObjectKey, InventoryEntry] = {}
    for key in sorted(wanted, key=lambda k: (phase_of(k), k)):
        manifest = wanted[key]
        body = live.get(key)
        items.append(_classify(with_digest(manifest), body, inventory.get(key), field_manager))
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
