"""One reconcile pass, and the up / update / down operations built from the same steps.

source -> validate -> render -> normalize -> observe -> plan -> dry-run -> apply -> prune
-> status. Any failure before applying (bad parameters, a template that does not render,
invalid YAML, an object the API server refuses in the dry-run) applies nothing: the error
is recorded and the last good state keeps running. A DeploymentParameters object that
disappears after we applied it (deleted, or with its CRD) stops the passes rather than
being re-created from the defaults. One lock makes passes and operations strictly
sequential. Operations on named services plan only those services (plus the shared
objects), so they never touch another service's objects. A suspended instance
(`spec.suspend: true`) still plans every pass, so drift is reported, but applies and prunes
nothing; up/update refuse it unless forced.

**A no-change pass (steady state).** After a successful full pass the engine keeps what it
saw: its object's uid, generation, spec, labels and annotations, the source's revision,
the manifests tree (each file's path, size and mtime: templates and default parameters),
and the live cache's stamp of the instance's objects (cache.py `changes`: any object of
the instance added, modified, deleted or relisted moves it). An *interval* pass that finds
all of it unchanged skips render, normalise, plan and apply: it writes nothing and records
no events (the loop logs it); its report repeats the last plan, every object unchanged. Every
other trigger (start, operations, wake-ups by a change, webhooks, retries), a failed or
suspended last pass, parameters with Secret references (a Secret is not watched), an engine
without a live cache, and a last full pass older than `loop.full_pass_every` run in full.
Health between passes is the reporters' (refresh_health): a change of an object's status
alone (a workload rolling out) does not move the stamp.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from typing import Any

from controller.adapters.cache import LiveCache
from controller.adapters.crds import CRD_FILE, ensure_crd, load_crd
from controller.adapters.kube import (
    Body,
    Kube,
    KubeError,
    NotLeaderError,
    UnknownKindError,
    acting_for,
)
from controller.adapters.sources import ParameterSource, Snapshot
from controller.adapters.sources.resource import ParametersResource, load_seed
from controller.config import Config
from controller.errors import (
    ConductorError,
    ConflictError,
    KubernetesError,
    NotFoundError,
    ReconciliationError,
    ValidationError,
)
from controller.model import instance, planning, rendering
from controller.model.health import ServiceHealth
from controller.model.instance import API_VERSION, KIND, Inventory, Outcome, is_suspended
from controller.model.objects import SHARED_SERVICE, Manifest
from controller.model.parameters import (
    SECRET_REF,
    Parameters,
    deep_merge,
    effective,
    load_schema,
    resolve_secret_refs,
    validate_spec,
)
from controller.model.times import now_rfc3339
from controller.reconcile.applying import Applier, ObjectResult, Results, selector
from controller.reconcile.passes import (
    Notice,
    NoticeType,
    ObjectDone,
    Operation,
    Pass,
    PassEvent,
    PassFinished,
    PassSink,
    PassStarted,
)

log = logging.getLogger(__name__)

# Every known service's health from watched state (the controller's HealthMonitor): what
# makes Ready mean "applied and working". Without one (the engine used as a library),
# Ready says only that the revision was applied.
HealthView = Callable[[], Sequence[ServiceHealth]]


# Kinds listed (across namespaces, with our labels) to find out whether this instance ever
# applied anything, besides the kinds the app renders: a missing DeploymentParameters
# object is only created from defaults when none of them carries our labels.
_EVIDENCE_KINDS = (("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "Service"),
                   ("apps/v1", "Deployment"), ("apps/v1", "StatefulSet"))


class ParametersDeletedError(NotFoundError):
    """The DeploymentParameters object is gone although this instance applied objects.

    Re-creating it from the shipped defaults would reset a running app (passwords, the
    services marked down, the inventory): passes stop until a person recreates it.
    """


class CRDMissingError(KubernetesError):
    """The DeploymentParameters CRD is not served and conductor may not install it."""


class SuspendedError(ConflictError):
    """up/update asked of a suspended instance without force: refused, nothing changed."""


@dataclass
class Report:
    """The outcome of one pass or operation, with a result per object."""

    operation: Operation
    services: list[str]
    trigger: str = ""
    instance: str = "default"
    started: str = field(default_factory=now_rfc3339)
    duration: float = 0.0
    revision: str = ""
    results: Results = field(default_factory=Results)
    error: ConductorError | None = None
    plan: planning.Plan | None = None
    live: dict[Any, Body] = field(default_factory=dict, repr=False)  # kept for `plan`
    snapshot: Snapshot | None = field(default=None, repr=False)
    # The instance was suspended: the plan was computed, nothing applied or pruned.
    suspended: bool = False
    # An interval pass that found nothing changed since the last full one (module doc).
    skipped: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and not self.results.failed

    def outcome(self) -> Outcome:
        """What status composition (model/instance.py) needs of this pass."""
        items = self.results.items
        return Outcome(
            revision=self.revision, error=self.error,
            failed=[(r.service, r.error or {"resource": str(r.key)}) for r in items
                    if r.outcome == "failed"],
            touched=frozenset(r.service for r in items), services=self.services,
            applied=sum(1 for r in items if r.outcome == "applied"))

    def summary(self) -> str:
        """One line: the error, or the failed objects, or the counts."""
        if self.error:
            return f"{self.operation}: {self.error.code}: {self.error.message} " \
                   f"{self.error.details}"
        failed = [f"{r.key}: {(r.error or {}).get('message')}" for r in self.results.failed]
        return f"{self.operation}: {self.results.counts()}" + (
            f"; failed: {failed}" if failed else "")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "operation": self.operation, "services": self.services, "trigger": self.trigger,
            "started": self.started, "duration": round(self.duration, 4),
            "revision": self.revision, "result": "success" if self.ok else "failed",
            "counts": self.results.counts(),
            "objects": [r.to_dict() for r in self.results.items],
        }
        if self.error:
            out["error"] = self.error.to_dict()
        if self.suspended:
            out["suspended"] = True
            out["pending"] = self.pending()
        return out

    def pending(self) -> list[dict[str, str]]:
        """What the plan would change (drift included) but a suspended pass left alone."""
        if self.plan is None or self.operation == "plan":
            return []
        return [{"resource": str(c.key), "service": c.service, "action": c.action,
                 "reason": c.reason} for c in self.plan.items
                if c.action in ("create", "update") or c.deletes]


@dataclass(frozen=True)
class _Steady:
    """The last successful full pass: what it saw, when, and what a skipped pass repeats."""

    fingerprint: tuple[Any, ...]
    at: float  # time.monotonic()
    plan: planning.Plan | None
    results: tuple[ObjectResult, ...]


class Engine:
    """Reconciles one app instance: the DeploymentParameters object `cfg.instance`."""

    def __init__(self, cfg: Config, kube: Kube, source: ParameterSource,
                 sink: PassSink | None = None,
                 on_report: Callable[[Report], None] | None = None,
                 health: HealthView | None = None, live: LiveCache | None = None,
                 pool: Executor | None = None) -> None:
        self.cfg = cfg
        self.health = health
        self.kube = kube
        self.source = source
        self.resource = ParametersResource(kube, cfg)
        # Live state from the process's watch cache (cache.py's rule), else LISTs.
        self.applier = Applier(kube, cfg, self._object_done, live, pool)
        self.live = live
        self._steady: _Steady | None = None  # the last successful full pass (module doc)
        self._fingerprint: tuple[Any, ...] | None = None  # the pass in progress's
        self._secret_refs = False  # whether the pass in progress rendered Secret references
        # This engine's own sink of typed pass events (recording.py: the event store and
        # the Kubernetes Events on this instance's object); see passes.py.
        self.sink = sink
        self._pass_of: Pass | None = None  # the pass under `lock`, for the applier's results
        self.on_report = on_report  # after every pass and operation, outside the lock
        self.schema = load_schema(CRD_FILE)
        self.lock = threading.Lock()
        # The newest finished pass, published once its hooks have run (recorded, measured,
        # history written): whoever sees it sees its consequences too.
        self.last: Report | None = None
        self._last_lock = threading.Lock()
        self._passes = 0  # passes started under `lock`, so a slow hook cannot publish back
        self._published = 0
        # Whether this instance's DeploymentParameters object existed before (its uid, or
        # why we know it did): a missing object is then a deletion, never a first install.
        self._seen = ""
        self._reported_deleted = False
        self.conditions: dict[str, str] = {}  # type -> status, as last computed

    # -- public operations ----------------------------------------------------------------

    def reconcile(self, trigger: str = "interval") -> Report:
        """A full pass over every deployed service; prunes what is no longer rendered."""
        return self._run("reconcile", None, trigger)

    def up(self, services: Iterable[str] = (), force: bool = False) -> Report:
        """Mark services deployed (all when none are named) and apply them now; on a
        suspended instance only with `force` (SuspendedError otherwise)."""
        return self._run("up", list(services), "api", force)

    def update(self, services: Iterable[str] = (), force: bool = False) -> Report:
        """Re-read parameters, re-render and apply these services (all deployed if none);
        on a suspended instance only with `force`."""
        return self._run("update", list(services), "api", force)

    def down(self, services: Iterable[str] = ()) -> Report:
        """Mark services not deployed and delete their objects (reverse order, waited)."""
        return self._run("down", list(services), "api")

    def plan(self, services: Iterable[str] = ()) -> Report:
        """What up/update would do, computed with server-side dry-run; changes nothing."""
        return self._run("plan", list(services), "api")

    def current(self, fresh: bool = False) -> Snapshot:
        """Parameters and manifests for readers (the API). A Git source answers with what the
        last pass fetched, so a GET does not cost a fetch; `fresh` fetches (for writes that
        build on the current file)."""
        last = self.last.snapshot if self.last else None
        if not fresh and last is not None and last.source == "git":
            return last
        return self.source.snapshot(self.resource.read())

    def parameters(self, snap: Snapshot) -> Parameters:
        """The values templates see: the app's defaults (`parameters.yaml` in the manifests
        root, as a chart's values file) overlaid with the validated spec."""
        validate_spec(snap.spec, self.schema)
        return Parameters.from_spec(deep_merge(load_seed(snap.manifest_root), snap.spec))

    def ensure_parameters(self) -> Body:
        """The DeploymentParameters object, created from the defaults only on a first
        install (see `_parameters_object`); raises ParametersDeletedError or
        CRDMissingError otherwise."""
        with self.lock:
            return self._parameters_object()

    # -- the pass -------------------------------------------------------------------------

    def _run(self, op: Operation, services: list[str] | None, trigger: str,
             force: bool = False) -> Report:
        report = Report(op, sorted(services or []), trigger, instance=self.cfg.instance)
        started = time.monotonic()
        # Its writes are this instance's: fenced by its owner (kube.py, sharding.py).
        with self.lock, acting_for((self.cfg.namespace, self.cfg.instance)):
            self._pass_of = Pass(self.cfg.instance, self.cfg.namespace, op, trigger,
                                 tuple(report.services), self._passes + 1)
            try:
                self._pass(report, services, force)
            except ConductorError as e:
                report.error = e
            except Exception as e:  # report, don't crash the loop; keep the traceback
                log.exception("%s failed", op)
                report.error = ReconciliationError(f"{op} failed: {e}",
                                                   {"exception": type(e).__name__})
            if op != "plan" and not report.skipped:
                self._steady = self._steady_after(report)
            report.duration = time.monotonic() - started
            # A refusal (not leader, suspended) changed nothing: no failure to record.
            if report.error is not None and op != "plan" and \
                    not isinstance(report.error, NotLeaderError | SuspendedError):
                self._record_failure(report)
            self._passes += 1
            number = self._passes
            this, self._pass_of = self._pass_of, None
        if not report.skipped:  # nothing happened: no events (1,000 instances: 2,000 a minute)
            self._emit(PassFinished(this, report.revision, report.duration,
                                    report.results.counts(), report.error))
        if self.on_report is not None:
            try:
                self.on_report(report)
            except Exception:
                log.exception("report hook failed")
        if op != "plan":
            with self._last_lock:
                if number > self._published:
                    self.last, self._published = report, number
        return report

    def _pass(self, report: Report, services: list[str] | None, force: bool = False) -> None:
        op = report.operation
        # Read first: a change of the instance's objects from here on moves it (module doc).
        stamp = self.live.changes(self.cfg.instance) if self.live is not None else None
        self._fingerprint, self._secret_refs = None, False
        # The loop's passes read the object from the live cache (woken by its watch, they
        # see what woke them); operations GET it: a caller's write just before is seen.
        obj = self._parameters_object(cached=op == "reconcile")
        report.suspended = is_suspended(obj)
        if report.suspended and op in ("up", "update") and not force:
            where = f"{self.resource.namespace}/{self.resource.name}"
            raise SuspendedError(
                f"DeploymentParameters {where} is suspended: nothing is applied until it is "
                "resumed (POST /api/resume, or spec.suspend: false); ?force=true applies "
                "this once anyway", {"reason": "Suspended", "instance": self.resource.name,
                                     "namespace": self.resource.namespace})
        down = self.resource.down_services(obj)
        snap = self.source.snapshot(obj)
        report.revision = snap.revision
        report.snapshot = snap
        if op == "reconcile" and stamp is not None:
            self._fingerprint = _fingerprint(obj, snap, stamp)
            if report.trigger == "interval" and self._unchanged(self._fingerprint):
                self._repeat(report)
                return
        self._emit(PassStarted(self._current(), snap.revision))
        tree = rendering.load_tree(snap.manifest_root)
        known = set(tree.names)
        unknown = sorted(set(services or []) - known)
        if unknown:
            raise NotFoundError(f"unknown service(s): {', '.join(unknown)}",
                                {"services": unknown, "available": sorted(known)})
        named = set(services) if services else set(known)
        if op == "up":
            down = down - named
            obj = self._set_down(obj, down)
        elif op == "down":
            down = down | named
            obj = self._set_down(obj, down)
        inventory = instance.inventory(obj, warn=True)

        if op == "down":
            self._delete(report, named, inventory, obj)
            return
        # A full pass (reconcile, or a plan of everything) covers the whole app and prunes;
        # operations on named services touch only those services and the shared objects.
        whole = op == "reconcile" or (op == "plan" and not services)
        deployed = sorted((known if whole else named) - down)
        params = self.parameters(snap)
        self._secret_refs = _has_secret_refs(snap)
        ignore = planning.parse_ignore_rules(snap.spec.get("ignore"))
        # Secret references are read only here, to render: never stored, never shown.
        desired = rendering.render(tree, resolve_secret_refs(params, self.resource.read_secret,
                                                             self.cfg.namespace),
                                   services=deployed, instance=self.cfg.instance,
                                   app=self.cfg.app_name) if deployed else []
        namespaces = {name: str(effective(params, name).get("namespace") or "")
                      for name in [*known, SHARED_SERVICE]}
        desired = self.applier.normalize(desired, namespaces)
        scope: set[str] | None = None if whole else {*deployed, SHARED_SERVICE}
        live = self.applier.observe(desired, ((k, e.api_version) for k, e in inventory.items()
                                              if scope is None or e.service in scope))
        settings = self.cfg.prune
        if whole and known and not deployed:
            # Every service is marked down on purpose: the one way to empty an instance. A
            # tree with no service at all (e.g. a Git push that removed every folder) is an
            # empty render, refused by the planner unless prune.allow_empty.
            settings = replace(settings, allow_empty=True)
        plan = planning.plan(desired, live, inventory, services=scope, settings=settings,
                             field_manager=self.cfg.apply.field_manager,
                             app=self.cfg.app_name, instance=self.cfg.instance,
                             ignore=ignore)
        report.plan = plan
        if report.suspended and op == "reconcile":
            # Drift and changes stay planned (shown in /api/status), nothing is written but
            # the status, which says Suspended; no snapshot: the revision is not applied.
            report.live = live
            self._write_status(obj, inventory, report, None, known)
            return
        dry_run = op == "plan"
        if dry_run:
            report.live = live
        if not dry_run:
            self.kube.check_may_write(op)  # before the dry runs: a follower sends nothing
            refused = self.applier.preflight(plan, report.results)
            if refused:
                # Status names each refusing service (the failure path alone knows only
                # the services status already listed).
                report.error = _refused_error(refused)
                self._write_status(obj, inventory, report, snap, known)
                raise report.error
            obj = self._record_intent(obj, plan, inventory)
        self.applier.apply(plan, report.results, dry_run=dry_run)
        if whole:
            self.applier.prune(plan, report.results, dry_run=dry_run)
        if dry_run:
            return
        self._finish(report, plan, obj, snap, known)

    # -- the no-change pass (module doc) ------------------------------------------------------

    def _unchanged(self, fingerprint: tuple[Any, ...]) -> bool:
        steady, every = self._steady, self.cfg.loop.full_pass_every
        return steady is not None and steady.fingerprint == fingerprint and \
            time.monotonic() - steady.at < every

    def _repeat(self, report: Report) -> None:
        """A skipped pass's report: the last full pass's plan, every object unchanged."""
        assert self._steady is not None
        report.skipped = True
        report.plan = self._steady.plan
        for result in self._steady.results:
            report.results.add(result)

    def _steady_after(self, report: Report) -> _Steady | None:
        """What the next interval pass compares with: only a successful full reconcile of
        an unsuspended instance without Secret references counts; anything else (an
        operation, a failure) makes the next interval pass a full one."""
        if report.operation != "reconcile" or not report.ok or report.suspended or \
                self._fingerprint is None or self._secret_refs:
            return None
        # Objects applied or kept are, as of now, what the next pass would find unchanged.
        results = tuple(replace(r, outcome="unchanged", action="unchanged", reason="",
                                body=None) if r.outcome == "applied" else r
                        for r in report.results.items if r.outcome != "deleted")
        return _Steady(self._fingerprint, time.monotonic(), report.plan, results)

    def _parameters_object(self, cached: bool = False) -> Body:
        """The DeploymentParameters object; created from the shipped defaults only when
        this instance never applied anything.

        A missing object is a first install, or a deletion (by a person, or with its CRD).
        After a deletion, defaults would silently replace the running app's parameters
        and bring back the services marked down, so the pass stops instead (nothing is
        applied or pruned, the objects keep running) until it is recreated. A deletion is
        told from a first install by what we know: this engine read the object before, or
        objects labelled with this instance exist.
        """
        try:
            obj = self.applier.read_object(API_VERSION, KIND, self.resource.name,
                                           self.resource.namespace) if cached \
                else self.resource.get()
        except UnknownKindError:  # the CRD is gone, and discovery knows it already
            obj = None
        if obj is not None:
            self._seen = str(obj.get("metadata", {}).get("uid", "")) or "seen"
            self._reported_deleted = False
            return obj
        self._check_crd()
        if not self._seen:
            evidence = self._applied_objects()
            if evidence:
                self._seen = "labelled objects"
        if self._seen:
            where = f"{self.resource.namespace}/{self.resource.name}"
            error = ParametersDeletedError(
                f"DeploymentParameters {where} was deleted after conductor applied it; "
                "nothing is applied or pruned until it is recreated (kubectl apply, or "
                "POST /api/parameters): re-creating it from the shipped defaults would "
                "reset the running app",
                {"reason": "ParametersDeleted", "namespace": self.resource.namespace,
                 "instance": self.resource.name})
            if not self._reported_deleted:
                self._reported_deleted = True
                self._notice("warning", "ParametersDeleted", error.message, error.details)
            raise error
        return self.resource.ensure()

    def _check_crd(self) -> None:
        """After a 404 on our object: is its kind still served? Reinstall the CRD when it
        was deleted (if RBAC allows), else say plainly that it is missing, rather than
        failing every pass with the API server's raw `404 page not found`."""
        self.kube.forget(API_VERSION)
        try:
            self.kube.resource(API_VERSION, KIND)
            return
        except UnknownKindError:
            pass
        name = load_crd()["metadata"]["name"]
        try:
            ensure_crd(self.kube)
        except KubeError as e:
            raise CRDMissingError(
                f"the CustomResourceDefinition {name} is not installed and conductor could "
                f"not install it ({e.status or ''} {e.reason or e.message}); install "
                "config/crd/deploymentparameters.yaml", {"reason": "CRDNotInstalled",
                                                         "crd": name, "status": e.status}
            ) from e
        log.warning("the CustomResourceDefinition %s was missing; reinstalled", name)
        self._notice("warning", "CRDReinstalled",
                     f"the CustomResourceDefinition {name} was missing and was reinstalled",
                     {"crd": name})

    def _applied_objects(self) -> list[str]:
        """Up to a few live objects (any namespace) labelled with this instance: kinds the
        app renders with its defaults, plus the common ones. Only asked when our object
        is missing, so it costs nothing on a normal pass."""
        kinds = set(_EVIDENCE_KINDS)
        try:
            snap = self.source.snapshot({})
            tree = rendering.load_tree(snap.manifest_root)
            params = self.parameters(snap)
            kinds |= {(m.api_version, m.key.kind) for m in rendering.render(
                tree, params, services=tree.names, instance=self.cfg.instance,
                app=self.cfg.app_name)}
        except Exception as e:  # an app that does not render still has the common kinds
            log.info("cannot render the defaults to list their kinds: %s", e)
        sel = selector(self.cfg)
        found: list[str] = []
        for api_version, kind in sorted(kinds):
            try:
                items = self.kube.list(api_version, kind, "", sel)[0]
            except KubeError:  # not served, or not listable cluster-wide: no evidence
                continue
            found += [f"{kind} {i['metadata'].get('namespace', '')}/{i['metadata']['name']}"
                      for i in items]
            if found:
                break
        return found[:5]

    def _delete(self, report: Report, services: set[str],
                inventory: Inventory, obj: Body) -> None:
        scope = set(services)
        live = self.applier.observe([], ((k, e.api_version) for k, e in inventory.items()
                                         if e.service in scope))
        plan = planning.plan_delete(scope, inventory, live, settings=self.cfg.prune,
                                    app=self.cfg.app_name, instance=self.cfg.instance)
        report.plan = plan
        self.applier.prune(plan, report.results)
        deleted = [c for c in plan.items if c.action == "prune"]
        still = set(self.applier.wait_gone(deleted, self.cfg.apply.delete_timeout))
        for key in still:
            report.results.add(ObjectResult(key, next(c.service for c in deleted
                                                      if c.key == key),
                                            "failed", "delete", "timeout",
                                            {"resource": str(key), "error": "Timeout",
                                             "message": "still present after "
                                             f"{self.cfg.apply.delete_timeout:.0f}s"}))
        done = {r.key for r in report.results.items if r.outcome in ("deleted", "kept")}
        new_inventory = plan.next_inventory({}, succeeded=done - still)
        self._write_status(obj, new_inventory, report, None, None)

    def _finish(self, report: Report, plan: planning.Plan, obj: Body, snap: Snapshot,
                known: set[str]) -> None:
        applied = {r.key: r.fields for r in report.results.items if r.outcome == "applied"}
        done = {r.key for r in report.results.items if r.outcome != "failed"}
        new_inventory = plan.next_inventory(applied, succeeded=done)
        self._write_status(obj, new_inventory, report, snap, known)

    # -- status -----------------------------------------------------------------------------

    def _record_intent(self, obj: Body, plan: planning.Plan,
                       inventory: Inventory) -> Body:
        """Before changing anything, say so: new objects join the durable inventory, and
        `Reconciling=True` tells `kubectl wait` and kstatus readers that a pass is at work.

        If the process dies mid-pass, the next controller then knows every object this
        pass may have created, and prunes what is no longer rendered. A pass that changes
        nothing writes nothing here.
        """
        new = {c.key: instance.InventoryEntry(c.service, c.api_version, "", "")
               for c in plan.items if c.action in ("create", "update")
               and c.key not in inventory}
        changes = sum(1 for c in plan.items if c.action in ("create", "update", "prune"))
        if not changes:
            return obj
        status: dict[str, Any] = {}
        if new:
            status["inventory"] = instance.encode_inventory({**inventory, **new})
        old = (obj.get("status") or {}).get("conditions") or []
        verdict = instance.previous_verdict(old)
        verdict["Reconciling"] = ("True", "Progressing",
                                  f"applying {changes} change(s)")
        status["conditions"] = instance.condition_list(verdict, old, instance.generation(obj),
                                                       now_rfc3339())
        if not new and instance.comparable({"conditions": status["conditions"]}) == \
                instance.comparable({"conditions": old}):
            return obj
        return self.resource.patch_status(status)

    def _record_failure(self, report: Report) -> None:
        """A pass that failed before applying: conditions say so, inventory unchanged."""
        try:
            obj = self.resource.get()
        except KubeError as e:
            log.warning("cannot read %s to record a failure: %s", self.cfg.instance, e.message)
            return
        if obj is not None:
            self._write_status(obj, instance.inventory(obj), report, None, None)

    def _set_down(self, obj: Body, down: frozenset[str]) -> Body:
        if down == self.resource.down_services(obj):
            return obj
        return self.resource.set_down(down)

    def _write_status(self, obj: Body, inventory: Inventory,
                      report: Report, snap: Snapshot | None,
                      known: set[str] | None) -> None:
        """Write status only when something other than timestamps changed (no-op passes
        make no write request)."""
        old = obj.get("status") or {}
        new = dict(old)
        new["inventory"] = instance.encode_inventory(inventory)
        generation = instance.generation(obj)
        new["observedGeneration"] = generation
        if snap is not None and report.ok:
            new["lastAppliedRevision"] = snap.revision
        down = instance.down_services(obj)
        known = known if known is not None else set(old.get("services", {}))
        outcome = report.outcome()
        new["services"] = instance.service_states(outcome, down, known,
                                                  old.get("services") or {})
        warning = report.snapshot.details.get("warning") if report.snapshot else None
        new["conditions"] = instance.condition_list(
            instance.verdict(outcome, self._health_view(), str(warning or ""),
                             report.suspended),
            old.get("conditions") or [], generation, now_rfc3339())
        self.conditions = instance.condition_states(new["conditions"])
        if instance.comparable(new) == instance.comparable(old):
            return
        new["lastPassTime"] = report.started
        new["lastPassDuration"] = f"{report.duration:.3f}s"
        try:
            self.resource.patch_status(new)
        except KubeError as e:
            log.warning("cannot write status: %s", e.message)
            if report.error is None:
                report.error = e

    def refresh_health(self) -> dict[str, str] | None:
        """Between passes: rewrite the conditions for the services' health as watched now.

        Written only when they change (one GET, and a PATCH only then), never over a failed
        pass's Stalled (the next pass decides), and at the generation the last pass
        observed. Returns the conditions (type -> status), or None when there is no object
        or no health view. Raises NotLeaderError on a replica that does not own the
        instance (its writes are the instance's, as a pass's: kube.acting_for).
        """
        if self.health is None:
            return None
        with self.lock, acting_for((self.cfg.namespace, self.cfg.instance)):
            # A GET, not the live cache: the conditions are compared with what the server
            # holds, so a copy lagging behind a writer cannot hide a needed write (a cached
            # read is the suspect of one CI run where Ready stayed False; one read per
            # health change is cheap).
            obj = self.resource.get()
            if obj is None:
                return None
            old = obj.get("status") or {}
            conditions = old.get("conditions") or []
            if any(c.get("type") == "Stalled" and c.get("status") == "True"
                   for c in conditions) or "lastAppliedRevision" not in old:
                return instance.condition_states(conditions)
            outcome = Outcome(revision=str(old["lastAppliedRevision"]))
            ready: Mapping[str, Any] = next(
                (c for c in conditions if c.get("type") == "Ready"), {})
            _, _, warning = str(ready.get("message", "")).partition("; warning: ")
            new = instance.condition_list(
                instance.verdict(outcome, self._health_view(), warning, is_suspended(obj)),
                conditions, int(old.get("observedGeneration") or 0), now_rfc3339())
            self.conditions = instance.condition_states(new)
            if instance.comparable({"conditions": new}) != \
                    instance.comparable({"conditions": conditions}):
                self.resource.patch_status({"conditions": new})
            return self.conditions

    def _health_view(self) -> Sequence[ServiceHealth] | None:
        if self.health is None:
            return None
        try:
            return self.health()
        except Exception as e:  # no health is no reason to fail a pass: say "not known"
            log.warning("cannot read service health: %s", e)
            return []

    # -- the sink -----------------------------------------------------------------------

    def _current(self) -> Pass:
        """The pass in progress (under `lock`); outside one (the leader's set-up calling
        `ensure_parameters`) a start-up pass."""
        return self._pass_of or Pass(self.cfg.instance, self.cfg.namespace, "reconcile",
                                     "startup")

    def _emit(self, event: PassEvent) -> None:
        if self.sink is None:
            return
        try:
            self.sink(event)
        except Exception:  # reporting must never break a pass
            log.exception("pass event sink failed")

    def _notice(self, type_: NoticeType, reason: str, message: str,
                details: Mapping[str, Any]) -> None:
        self._emit(Notice(self._current(), type_, reason, message, dict(details)))

    def _object_done(self, result: ObjectResult) -> None:
        """The applier's hook (maybe on one of its worker threads, always within a pass)."""
        this = self._pass_of
        if this is not None:
            self._emit(ObjectDone(this, result))


def _fingerprint(obj: Body, snap: Snapshot, stamp: int) -> tuple[Any, ...]:
    """What a pass reads, but the live objects' contents (the cache's `stamp` stands for
    them): equal fingerprints render and plan the same (module doc). resourceVersion is
    left out on purpose: every status write moves it."""
    meta = obj.get("metadata") or {}
    mine = json.dumps([obj.get("spec"), meta.get("labels"), meta.get("annotations")],
                      sort_keys=True, default=str)
    return (meta.get("uid"), meta.get("generation"), mine, snap.source, snap.revision,
            str(snap.manifest_root), _tree_stamp(snap.manifest_root),
            json.dumps(snap.details, sort_keys=True, default=str), stamp)


def _tree_stamp(root: Any) -> tuple[tuple[str, int, int], ...]:
    """Every file under the manifests root by path, size and mtime: a template or the
    default parameters edited in place (a mounted ConfigMap) is a change. Hidden folders
    are not read by rendering either (a checkout's .git would be thousands of files)."""
    found: list[tuple[str, int, int]] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = os.path.join(folder, name)
            try:
                st = os.stat(path)
            except OSError:
                continue  # gone meanwhile: the next walk says so
            found.append((path, st.st_size, st.st_mtime_ns))
    return tuple(found)


def _has_secret_refs(snap: Snapshot) -> bool:
    """Whether the spec or the default parameters reference a Secret (not watched: a
    pass that uses one always renders)."""
    needle = f'"{SECRET_REF}"'
    return needle in json.dumps(snap.spec, default=str) or \
        needle in json.dumps(load_seed(snap.manifest_root), default=str)


def _refused_error(refused: list[ObjectResult]) -> ConductorError:
    """Every object the dry-run refused, in one error: the pass applied nothing."""
    objects = [r.error or {"resource": str(r.key)} for r in refused]
    names = ", ".join(f"{o.get('resource')}: {o.get('message', '')}" for o in objects[:3])
    more = f" (and {len(objects) - 3} more)" if len(objects) > 3 else ""
    message = f"the API server refused {len(objects)} object(s) in a dry-run; nothing was " \
              f"applied: {names}{more}"
    details: dict[str, Any] = {"refused": objects, "applied": 0}
    # 400/422: the values are wrong (the caller's to fix); anything else is the cluster's.
    if all(o.get("status") in (400, 422) for o in objects):
        return ValidationError(message, details)
    return KubernetesError(message, details)


__all__ = ["Engine", "Manifest", "Report", "is_suspended"]
