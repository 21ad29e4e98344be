"""Turn a plan into API calls: normalize, observe live state, apply in order, prune.

This is where ordering, concurrency and the no-write guarantee live. Live state comes from
the process's live cache (adapters/cache.py): one watched set per (kind, namespace) with our
label selector, read only while it is fresh (listed, its watch open); a set that is not
fresh within the cache's deadline (starting, relisting after 410, disconnected) is LISTed
directly, so a pass never plans from a copy that stopped following the server. Without a
cache (a library user) every pass LISTs; never object by object. Only
objects the plan marks create/update are sent (server-side apply as our field manager),
phase by phase (CRDs, Namespaces, ... workloads, the rest), concurrently within a phase,
after a server-side dry-run of all of them has passed (one refusal applies nothing).
Deletions run in the reverse order. Every object gets a result: applied, unchanged,
deleted, kept or failed (with the API's reason), so a partial failure is never hidden.
Fields under an ignore rule that we still own are handed over before the apply that
leaves them out (planning.py says why); a dry run previews them at their live value.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from controller.adapters.cache import LiveCache
from controller.adapters.kube import Body, Kube, KubeError, UnknownKindError, carry_context
from controller.adapters.watching import Selector
from controller.config import Config
from controller.model.objects import (
    LABEL_APP,
    LABEL_INSTANCE,
    LABEL_INSTANCE_NAMESPACE,
    LABEL_MANAGED_BY,
    LABEL_SERVICE,
    Manifest,
    ObjectKey,
)
from controller.model.planning import (
    HANDOVER_SUFFIX,
    Plan,
    PlannedChange,
    handover_body,
    live_fingerprint,
    with_digest,
)

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_R = TypeVar("_R")

Outcome = Literal["applied", "unchanged", "deleted", "kept", "failed"]
CRD_KIND = "CustomResourceDefinition"


@dataclass(frozen=True)
class ObjectResult:
    """What happened to one object in one pass."""

    key: ObjectKey
    service: str
    outcome: Outcome
    action: str = ""  # the planned action: create, update, unchanged, prune, keep, delete
    reason: str = ""
    error: dict[str, Any] | None = None
    fields: str = ""  # fingerprint of the live values at our paths after an apply
    body: Body | None = field(default=None, compare=False, repr=False)  # dry-run answer

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"resource": str(self.key), "service": self.service,
                               "result": self.outcome}
        if self.action:
            out["action"] = self.action
        if self.reason:
            out["reason"] = self.reason
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class Results:
    items: list[ObjectResult] = field(default_factory=list)

    def add(self, result: ObjectResult) -> None:
        self.items.append(result)

    @property
    def failed(self) -> list[ObjectResult]:
        return [r for r in self.items if r.outcome == "failed"]

    def counts(self) -> dict[str, int]:
        out = {"applied": 0, "unchanged": 0, "deleted": 0, "kept": 0, "failed": 0}
        for r in self.items:
            out[r.outcome] += 1
        return out


# The labels that make an object ours (see objects.py); removed when we let one go.
OWNER_LABELS = (LABEL_APP, LABEL_INSTANCE, LABEL_INSTANCE_NAMESPACE, LABEL_SERVICE,
                LABEL_MANAGED_BY)


def selector(cfg: Config) -> str:
    """The label selector of everything this app instance owns."""
    return (f"{LABEL_APP}={cfg.app_name},{LABEL_INSTANCE}={cfg.instance},"
            f"{LABEL_INSTANCE_NAMESPACE}={cfg.namespace}")


class Applier:
    """Applies plans for one app instance through one `Kube` connection."""

    def __init__(self, kube: Kube, cfg: Config,
                 on_result: Callable[[ObjectResult], None] | None = None,
                 live: LiveCache | None = None, pool: Executor | None = None) -> None:
        self.kube = kube
        self.cfg = cfg
        self.on_result = on_result
        self.live = live
        # Threads for a phase's requests, shared by every instance's applier (the
        # controller's): a pool per phase started and ended up to 8 threads per phase, 5%
        # of a 1,000-instance cold start's CPU. None: a pool per call.
        self.pool = pool
        self._record_lock = threading.Lock()

    # -- before planning ----------------------------------------------------------------

    def normalize(self, manifests: Sequence[Manifest],
                  namespaces: Mapping[str, str] | None = None) -> list[Manifest]:
        """Set or drop metadata.namespace by the kind's scope, and stamp the digest.

        A namespaced object that names no namespace goes to its service's namespace
        (`namespaces[service]`) or the default one. A kind defined by a CRD in the same
        render takes its scope from that CRD, since the server does not know it yet.
        """
        crd_scopes = {
            (m.body["spec"]["group"], m.body["spec"]["names"]["kind"]):
                m.body["spec"].get("scope") == "Namespaced"
            for m in manifests if m.key.kind == CRD_KIND and m.key.group.startswith(
                "apiextensions.k8s.io")
        }
        out = []
        for m in manifests:
            namespaced = self._namespaced(m, crd_scopes)
            # Only metadata changes: new top and metadata maps, the rest shared with the
            # render (bodies are never modified in place after rendering; copy-on-write).
            meta = {**(m.body.get("metadata") or {})}
            meta["labels"] = {**(meta.get("labels") or {}),
                              LABEL_INSTANCE_NAMESPACE: self.cfg.namespace}
            body = {**m.body, "metadata": meta}
            if namespaced and not meta.get("namespace"):
                meta["namespace"] = (namespaces or {}).get(m.service) or \
                    self.cfg.default_namespace
            elif not namespaced:
                meta.pop("namespace", None)
            out.append(with_digest(Manifest(m.service, body, m.source, m.line)))
        return out

    def _namespaced(self, m: Manifest, crd_scopes: Mapping[tuple[str, str], bool]) -> bool:
        try:
            return self.kube.resource(m.api_version, m.key.kind).namespaced
        except UnknownKindError:
            scope = crd_scopes.get((m.key.group, m.key.kind))
            if scope is None:
                raise
            return scope

    def observe(self, desired: Iterable[Manifest],
                inventory_keys: Iterable[tuple[ObjectKey, str]]) -> dict[ObjectKey, Body]:
        """Live objects of each labelled (apiVersion, kind, namespace): from the live cache
        where its set is fresh (watches start here on first need), else one LIST each,
        concurrently. The objects are shared with the cache: read them, never change them.

        `inventory_keys` are (key, apiVersion) pairs of what we applied before, so that
        kinds no longer rendered are still listed (and can be pruned).
        """
        groups: set[tuple[str, str, str]] = set()
        for m in desired:
            groups.add((m.api_version, m.key.kind, m.key.namespace))
        for key, api_version in inventory_keys:
            groups.add((api_version, key.kind, key.namespace))
        sel = selector(self.cfg)
        selectors = [Selector(v, k, ns, sel) for v, k, ns in sorted(groups)]
        cached: list[list[Body] | None] = [None] * len(selectors)
        if self.live is not None:
            for s in selectors:  # start every new set first: they list side by side
                self.live.watch(s)
            cached = [self.live.objects(s) for s in selectors]

        def one(s: Selector) -> list[Body]:
            try:
                return self.kube.list(s.api_version, s.kind, s.namespace, sel)[0]
            except UnknownKindError:
                return []  # its CRD is not (yet, or any more) installed: nothing live
            except KubeError as e:
                if e.status == 404:  # e.g. the namespace does not exist yet
                    return []
                raise

        missing = [s for s, items in zip(selectors, cached, strict=True) if items is None]
        listed: list[list[Body]] = []
        if missing:
            listed = self._parallel(one, missing)
        live: dict[ObjectKey, Body] = {}
        for items in [*(c for c in cached if c is not None), *listed]:
            for item in items:
                live[ObjectKey.of(item)] = item
        return live

    def read_object(self, api_version: str, kind: str, name: str,
                    namespace: str = "") -> Body | None:
        """One object (None when absent) from its namespace's fresh cached set (all the
        kind's objects there, no label selector: e.g. the DeploymentParameters objects of
        every instance), else one GET."""
        if self.live is not None:
            found, obj = self.live.get(Selector(api_version, kind, namespace), name, namespace)
            if found:
                return obj
        return self.kube.get(api_version, kind, name, namespace)

    # -- applying -----------------------------------------------------------------------

    def apply(self, plan: Plan, results: Results, dry_run: bool = False) -> None:
        """Apply creates/updates phase by phase; unchanged objects only get a result."""
        for item in plan.items:
            if item.action == "unchanged":
                self._record(results, ObjectResult(item.key, item.service, "unchanged",
                                                   item.action, item.reason))
        for phase in plan.apply_phases():
            # Each result is recorded the moment it is known, not at the end of its phase:
            # a controller killed mid-phase still leaves an event per object it applied.
            outcomes = self._map(
                lambda c: self._record(results, self._apply_one(c, dry_run)), phase)
            crds = [c for c, r in zip(phase, outcomes, strict=True)
                    if c.key.kind == CRD_KIND and r.outcome == "applied"]
            if crds and not dry_run:
                self._wait_established(crds)

    def preflight(self, plan: Plan, results: Results) -> list[ObjectResult]:
        """Server-side dry-run (dryRun=All, the very apply body) of everything the plan
        would create or update, before the first write of a pass; records and returns the
        objects the API server refuses (empty: go ahead and apply).

        One refused object must stop the whole pass: otherwise the others roll out with
        values only half of the app accepted (a frontend pointing at a port its Service
        refused). Only planned changes are sent, so a pass that changes nothing makes no
        request here. Two refusals are not the object's fault and are left to the real
        apply: a kind whose CRD, or a namespace, this same pass creates first (the server
        cannot know them yet), a field conflict, which the conflict policy decides per
        object, and a request the server did not answer (transient, retried by the apply).
        """
        changes = [c for phase in plan.apply_phases() for c in phase]
        if not changes:
            return []
        new_kinds = {(c.manifest.body["spec"]["group"], c.manifest.body["spec"]["names"]["kind"])
                     for c in changes if c.key.kind == CRD_KIND and c.manifest is not None}
        new_namespaces = {c.key.name for c in changes
                          if c.key.kind == "Namespace" and c.key.group == ""}

        def one(change: PlannedChange) -> ObjectResult | None:
            assert change.manifest is not None
            try:
                self.kube.apply(_preview(change), dry_run=True,
                                force=self.cfg.apply.conflicts == "force")
            except UnknownKindError as e:
                if (change.key.group, change.key.kind) in new_kinds:
                    return None
                return self._refused(change, e)
            except KubeError as e:
                # Still unanswered after the retries (429, 5xx, no connection) is not a
                # refusal of the values: the real apply retries again and reports it.
                if e.status == 409 or e.transient or (
                        e.status == 404 and change.key.namespace in new_namespaces):
                    return None
                return self._refused(change, e)
            return None

        refused = [r for r in self._parallel(one, changes) if r is not None]
        return [self._record(results, r) for r in refused]

    @staticmethod
    def _refused(change: PlannedChange, e: KubeError) -> ObjectResult:
        return ObjectResult(change.key, change.service, "failed", change.action,
                            change.reason, {**_error(e, change.key), "dryRun": True})

    def _apply_one(self, change: PlannedChange, dry_run: bool) -> ObjectResult:
        assert change.manifest is not None
        try:
            if change.handover is not None and not dry_run:
                self._hand_over(change, change.handover)
            live = self.kube.apply(_preview(change) if dry_run else change.body or {},
                                   dry_run=dry_run,
                                   force=self.cfg.apply.conflicts == "force")
        except KubeError as e:
            return ObjectResult(change.key, change.service, "failed", change.action,
                                change.reason, _error(e, change.key))
        return ObjectResult(change.key, change.service, "applied", change.action,
                            change.reason, fields=live_fingerprint(live, change.manifest.body),
                            body=live if dry_run else None)

    def _hand_over(self, change: PlannedChange, body: Body, attempts: int = 5) -> None:
        """Give the ignored fields we still own to the handover manager, at their live
        value, before the apply that leaves them out (which would otherwise delete them).

        The body carries the live resourceVersion: if the object moved meanwhile (the
        other writer scaled again), the value is re-read rather than written back stale.
        Raises KubeError when it cannot be done: the object then fails, untouched."""
        manager = self.cfg.apply.field_manager
        res = self.kube.resource(change.api_version, change.key.kind)
        path = res.path(change.key.namespace, change.key.name)
        for attempt in range(attempts):
            try:
                self.kube.request("PATCH", path, body=body,
                                  query={"fieldManager": manager + HANDOVER_SUFFIX},
                                  content_type="application/apply-patch+yaml")
                return
            except KubeError as e:
                if e.status != 409 or attempt == attempts - 1:
                    raise
            live = self.kube.get(change.api_version, change.key.kind, change.key.name,
                                 change.key.namespace)
            fresh = handover_body(live, manager, change.ignored) if live else None
            if fresh is None:
                return  # gone, or someone else took the fields over: nothing to hand over
            body = fresh

    def _wait_established(self, crds: Sequence[PlannedChange], timeout: float = 30.0) -> None:
        """Custom resources can only be applied once their CRD is served."""
        deadline = time.monotonic() + timeout
        for change in crds:
            assert change.manifest is not None
            spec = change.manifest.body["spec"]
            for version in spec.get("versions", []):
                api_version = f"{spec['group']}/{version['name']}"
                while True:
                    self.kube.forget(api_version)
                    try:
                        self.kube.resource(api_version, spec["names"]["kind"])
                        break
                    except UnknownKindError:
                        if time.monotonic() > deadline:
                            log.warning("CRD %s not served after %.0fs", change.key.name,
                                        timeout)
                            return
                        time.sleep(0.1)

    # -- deleting -------------------------------------------------------------------------

    def prune(self, plan: Plan, results: Results, dry_run: bool = False) -> None:
        """Delete what the plan prunes (reverse phase order); record kept objects.

        Objects kept by policy (Namespaces, PVCs: they hold data) leave the inventory; they
        also lose our ownership labels here, once, so they are truly let go: no longer
        listed, counted in health or reported on every pass.
        """
        for item in plan.items:
            if item.action == "keep":
                if item.reason == "policy" and not dry_run:
                    self._record(results, self._orphan(item))
                else:
                    self._record(results, ObjectResult(item.key, item.service, "kept",
                                                       item.action, item.reason))
        for phase in plan.prune_phases():
            self._map(lambda c: self._record(results, self._delete_one(c, dry_run)), phase)

    def _orphan(self, change: PlannedChange) -> ObjectResult:
        # A merge patch, not an apply: an apply without our fields would remove them (and a
        # PVC's spec cannot change).
        patch = {"metadata": {"labels": dict.fromkeys(OWNER_LABELS)}}
        try:
            self.kube.patch(change.api_version, change.key.kind, change.key.name, patch,
                            change.key.namespace)
        except UnknownKindError:
            pass
        except KubeError as e:
            if e.status != 404:
                return ObjectResult(change.key, change.service, "failed", change.action,
                                    change.reason, _error(e, change.key))
        return ObjectResult(change.key, change.service, "kept", change.action,
                            "policy: orphaned")

    def _delete_one(self, change: PlannedChange, dry_run: bool) -> ObjectResult:
        if dry_run:
            return ObjectResult(change.key, change.service, "deleted", change.action,
                                change.reason)
        try:
            self.kube.delete(change.api_version, change.key.kind, change.key.name,
                             change.key.namespace)
        except UnknownKindError:
            pass  # its CRD is gone, and with it the object
        except KubeError as e:
            return ObjectResult(change.key, change.service, "failed", change.action,
                                change.reason, _error(e, change.key))
        return ObjectResult(change.key, change.service, "deleted", change.action,
                            change.reason)

    def wait_gone(self, changes: Sequence[PlannedChange], timeout: float) -> list[ObjectKey]:
        """Poll (the live cache, or one LIST per kind and namespace) until deleted objects
        are gone.

        Returns the keys still present at the deadline.
        """
        pending = {c.key: c.api_version for c in changes}
        deadline = time.monotonic() + timeout
        delay = 0.1
        while pending:
            groups = {(v, k.kind, k.namespace) for k, v in pending.items()}
            present: set[ObjectKey] = set()
            for api_version, kind, namespace in groups:
                sel = Selector(api_version, kind, namespace, selector(self.cfg))
                cached = self.live.objects(sel, timeout=delay) if self.live else None
                try:
                    items = cached if cached is not None else self.kube.list(
                        api_version, kind, namespace, sel.label_selector)[0]
                except KubeError:
                    continue
                present |= {ObjectKey.of(i) for i in items}
            pending = {k: v for k, v in pending.items() if k in present}
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
        return sorted(pending)

    # -- helpers --------------------------------------------------------------------------

    def _map(self, fn: Callable[[PlannedChange], ObjectResult],
             changes: Sequence[PlannedChange]) -> list[ObjectResult]:
        if len(changes) <= 1:
            return [fn(c) for c in changes]
        return self._parallel(carry_context(fn), changes)  # writes stay fenced

    def _parallel(self, fn: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
        """`fn` over `items`, results in order, at most `apply.concurrency` at a time (on
        the shared pool when there is one); the first failure is raised, as pool.map's."""
        limit = self.cfg.apply.concurrency
        if self.pool is None:
            with ThreadPoolExecutor(max_workers=limit) as pool:
                return list(pool.map(fn, items))
        results: list[Any] = [None] * len(items)
        running: dict[Future[_R], int] = {}
        queued = iter(enumerate(items))
        for index, item in queued:
            running[self.pool.submit(fn, item)] = index
            if len(running) >= limit:
                break
        try:
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    results[running.pop(future)] = future.result()
                    for index, item in queued:  # one more in its place
                        running[self.pool.submit(fn, item)] = index
                        break
        except BaseException:
            wait(running)  # as a pool of its own would: none still at work on return
            raise
        return results

    def _record(self, results: Results, result: ObjectResult) -> ObjectResult:
        # Called from the phase's worker threads: one at a time, so results and the
        # recorder see a consistent sequence.
        with self._record_lock:
            results.add(result)
            if self.on_result:
                self.on_result(result)
        return result


def _preview(change: PlannedChange) -> Body:
    """The body a dry run sends: as the real apply, but with the fields about to be handed
    over at their live value (the handover itself is a write), so the answer shows them
    kept rather than deleted."""
    body = change.body or {}
    if change.handover is None:
        return body
    preview: Body = _overlay(body, {k: v for k, v in change.handover.items()
                           if k not in ("apiVersion", "kind", "metadata")} | {
        "metadata": {k: v for k, v in change.handover["metadata"].items()
                     if k not in ("name", "namespace", "resourceVersion")}})
    return preview


def _overlay(base: Any, top: Any) -> Any:
    if isinstance(base, dict) and isinstance(top, dict):
        return {**base, **{k: _overlay(base.get(k), v) for k, v in top.items()}}
    if isinstance(base, list) and isinstance(top, list):
        # List elements met on the way are matched by name (containers, env, ports).
        out = list(base)
        for element in top:
            i = next((n for n, b in enumerate(out) if isinstance(b, dict) and isinstance(
                element, dict) and "name" in element and b.get("name") == element["name"]),
                None)
            if i is None:
                out.append(copy.deepcopy(element))
            else:
                out[i] = _overlay(out[i], element)
        return out
    return copy.deepcopy(top)


def _error(e: KubeError, key: ObjectKey) -> dict[str, Any]:
    out: dict[str, Any] = {"resource": str(key), "error": e.reason or "Error",
                           "message": e.message, "status": e.status}
    causes = e.details.get("causes")
    if causes:
        out["causes"] = causes
    return out
