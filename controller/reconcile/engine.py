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
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from controller.adapters.cache import LiveCache
from controller.adapters.crds import CRD_FILE, ensure_crd, load_crd
from controller.adapters.kube import Body, Kube, KubeError, NotLeaderError, UnknownKindError
from controller.adapters.sources import ParameterSource, Snapshot
from controller.adapters.sources.resource import API_VERSION, KIND, ParametersResource, load_seed
from controller.config import Config
from controller.errors import (
    ConductorError,
    ConflictError,
    KubernetesError,
    NotFoundError,
    ReconciliationError,
    ValidationError,
)
from controller.model import planning, rendering
from controller.model.health import DOWN, HEALTHY, SUSPENDED, UNHEALTHY, ServiceHealth
from controller.model.objects import SHARED_SERVICE, Manifest
from controller.model.parameters import (
    Parameters,
    deep_merge,
    effective,
    load_schema,
    resolve_secret_refs,
    validate_spec,
)
from controller.model.times import now_rfc3339
from controller.reconcile.applying import Applier, ObjectResult, Results, selector

log = logging.getLogger(__name__)

Operation = Literal["reconcile", "up", "update", "down", "plan"]
# Event hook: (type: info|success|warning|error, reason, message, details).
EventSink = Callable[[str, str, str, Mapping[str, Any]], None]
# Every known service's health from watched state (the controller's HealthMonitor): what
# makes Ready mean "applied and working". Without one (the engine used as a library),
# Ready says only that the revision was applied.
HealthView = Callable[[], Sequence[ServiceHealth]]
# Conditions as (status, reason, message) by type, in kstatus order.
Verdict = dict[str, tuple[str, str, str]]
CONDITION_TYPES = ("Ready", "Reconciling", "Stalled")
# Service states that ask nothing more of anyone: down and suspended on purpose.
_SETTLED = frozenset({HEALTHY, SUSPENDED, DOWN})


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


def is_suspended(obj: Body) -> bool:
    """`spec.suspend: true` on the DeploymentParameters object."""
    return (obj.get("spec") or {}).get("suspend") is True


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

    @property
    def ok(self) -> bool:
        return self.error is None and not self.results.failed

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


class Engine:
    """Reconciles one app instance: the DeploymentParameters object `cfg.instance`."""

    def __init__(self, cfg: Config, kube: Kube, source: ParameterSource,
                 on_event: EventSink | None = None,
                 on_result: Callable[[ObjectResult], None] | None = None,
                 on_report: Callable[[Report], None] | None = None,
                 health: HealthView | None = None, live: LiveCache | None = None) -> None:
        self.cfg = cfg
        self.health = health
        self.kube = kube
        self.source = source
        self.resource = ParametersResource(kube, cfg)
        # Live state from the process's watch cache (cache.py's rule), else LISTs.
        self.applier = Applier(kube, cfg, on_result, live)
        self.on_event = on_event or (lambda *_: None)
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
        with self.lock:
            try:
                self._pass(report, services, force)
            except ConductorError as e:
                report.error = e
            except Exception as e:  # report, don't crash the loop; keep the traceback
                log.exception("%s failed", op)
                report.error = ReconciliationError(f"{op} failed: {e}",
                                                   {"exception": type(e).__name__})
            report.duration = time.monotonic() - started
            # A refusal (not leader, suspended) changed nothing: no failure to record.
            if report.error is not None and op != "plan" and \
                    not isinstance(report.error, NotLeaderError | SuspendedError):
                self._record_failure(report)
            self._passes += 1
            number = self._passes
        self._emit_finished(report)
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
        self.on_event("info", "PassStarted", f"{op} started ({report.trigger})",
                      {"operation": op, "revision": snap.revision,
                       "services": report.services})
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
        inventory = _inventory(obj)

        if op == "down":
            self._delete(report, named, inventory, obj)
            return
        # A full pass (reconcile, or a plan of everything) covers the whole app and prunes;
        # operations on named services touch only those services and the shared objects.
        whole = op == "reconcile" or (op == "plan" and not services)
        deployed = sorted((known if whole else named) - down)
        params = self.parameters(snap)
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
                self.on_event("warning", "ParametersDeleted", error.message, error.details)
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
        self.on_event("warning", "CRDReinstalled",
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
                inventory: Mapping[Any, planning.InventoryEntry], obj: Body) -> None:
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
                       inventory: Mapping[Any, planning.InventoryEntry]) -> Body:
        """Before changing anything, say so: new objects join the durable inventory, and
        `Reconciling=True` tells `kubectl wait` and kstatus readers that a pass is at work.

        If the process dies mid-pass, the next controller then knows every object this
        pass may have created, and prunes what is no longer rendered. A pass that changes
        nothing writes nothing here.
        """
        new = {c.key: planning.InventoryEntry(c.service, c.api_version, "", "")
               for c in plan.items if c.action in ("create", "update")
               and c.key not in inventory}
        changes = sum(1 for c in plan.items if c.action in ("create", "update", "prune"))
        if not changes:
            return obj
        status: dict[str, Any] = {}
        if new:
            merged = {**inventory, **new}
            status["inventory"] = [e.to_dict(k) for k, e in sorted(merged.items())]
        old = (obj.get("status") or {}).get("conditions") or []
        previous = {c.get("type"): c for c in old}
        verdict: Verdict = {t: (str(c.get("status", "Unknown")), str(c.get("reason", "")),
                                str(c.get("message", ""))) for t, c in previous.items()
                            if t in CONDITION_TYPES}
        verdict["Reconciling"] = ("True", "Progressing",
                                  f"applying {changes} change(s)")
        status["conditions"] = _condition_list(verdict, old, _generation(obj))
        if not new and _comparable({"conditions": status["conditions"]}) == \
                _comparable({"conditions": old}):
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
            self._write_status(obj, _inventory(obj), report, None, None)

    def _set_down(self, obj: Body, down: frozenset[str]) -> Body:
        if down == self.resource.down_services(obj):
            return obj
        return self.resource.set_down(down)

    def _write_status(self, obj: Body, inventory: Mapping[Any, planning.InventoryEntry],
                      report: Report, snap: Snapshot | None,
                      known: set[str] | None) -> None:
        """Write status only when something other than timestamps changed (no-op passes
        make no write request)."""
        old = obj.get("status") or {}
        new = dict(old)
        new["inventory"] = [e.to_dict(k) for k, e in sorted(inventory.items())]
        generation = _generation(obj)
        new["observedGeneration"] = generation
        if snap is not None and report.ok:
            new["lastAppliedRevision"] = snap.revision
        down = self.resource.down_services(obj)
        known = known if known is not None else set(old.get("services", {}))
        new["services"] = _service_states(report, down, known, old.get("services") or {})
        warning = report.snapshot.details.get("warning") if report.snapshot else None
        # The suspend pass marks its report (getattr: the field belongs to that feature).
        suspended = bool(getattr(report, "suspended", False))
        new["conditions"] = _condition_list(
            _verdict(report, self._health_view(), str(warning or ""), suspended),
            old.get("conditions") or [], generation)
        self.conditions = {c["type"]: c["status"] for c in new["conditions"]}
        if _comparable(new) == _comparable(old):
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
        or no health view. Raises NotLeaderError on a follower (Kube.write_guard).
        """
        if self.health is None:
            return None
        with self.lock:
            obj = self.resource.get()
            if obj is None:
                return None
            old = obj.get("status") or {}
            conditions = old.get("conditions") or []
            if any(c.get("type") == "Stalled" and c.get("status") == "True"
                   for c in conditions) or "lastAppliedRevision" not in old:
                return {c["type"]: c["status"] for c in conditions if "type" in c}
            report = Report("reconcile", [], instance=self.cfg.instance,
                            revision=str(old["lastAppliedRevision"]))
            ready: Mapping[str, Any] = next(
                (c for c in conditions if c.get("type") == "Ready"), {})
            _, _, warning = str(ready.get("message", "")).partition("; warning: ")
            suspended = (obj.get("spec") or {}).get("suspend") is True
            new = _condition_list(_verdict(report, self._health_view(), warning, suspended),
                                  conditions, int(old.get("observedGeneration") or 0))
            self.conditions = {c["type"]: c["status"] for c in new}
            if _comparable({"conditions": new}) != _comparable({"conditions": conditions}):
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

    def _emit_finished(self, report: Report) -> None:
        counts = report.results.counts()
        pass_fields = {"operation": report.operation, "trigger": report.trigger,
                       "revision": report.revision}
        if report.error:
            self.on_event("error", f"{report.operation.capitalize()}Failed",
                          f"{report.operation} failed: {report.error.message}",
                          {**report.error.to_dict(), **pass_fields})
        elif report.results.failed:
            self.on_event("error", f"{report.operation.capitalize()}Failed",
                          f"{report.operation}: {counts['failed']} object(s) failed",
                          {"counts": counts, **pass_fields})
        else:
            self.on_event("success", f"{report.operation.capitalize()}Succeeded",
                          f"{report.operation} finished in {report.duration:.2f}s",
                          {"counts": counts, **pass_fields})


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


def _inventory(obj: Body) -> dict[Any, planning.InventoryEntry]:
    out = {}
    for raw in (obj.get("status") or {}).get("inventory") or []:
        try:
            key, entry = planning.InventoryEntry.from_dict(raw)
        except (KeyError, ValueError, TypeError):
            log.warning("ignoring malformed inventory entry %r", raw)
            continue
        out[key] = entry
    return out


def _service_states(report: Report, down: frozenset[str], known: set[str],
                    old: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    failed: dict[str, ObjectResult] = {}
    touched = set()
    for r in report.results.items:
        touched.add(r.service)
        if r.outcome == "failed":
            failed.setdefault(r.service, r)
    for name in sorted(known):
        if name in down:
            out[name] = {"state": "down", "reason": "marked down"}
        elif name in failed:
            err = failed[name].error or {}
            out[name] = {"state": "failed",
                         "reason": f"{err.get('resource', '')}: {err.get('message', '')}"[:500]}
        # Git unreachable is not a service failure: its objects keep running as they were.
        elif report.error is not None and report.error.code != "source_error" and (
                not report.services or name in report.services):
            out[name] = {"state": "failed", "reason": report.error.message[:500]}
        elif name in touched:
            out[name] = {"state": "deployed", "reason": ""}
        else:
            out[name] = dict(old.get(name) or {"state": "deployed", "reason": ""})
    return out


def _verdict(report: Report, health: Sequence[ServiceHealth] | None,
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
    if report.error is not None:
        return {"Ready": ("False", report.error.code, report.error.message),
                "Reconciling": ("False", report.error.code, ""),
                "Stalled": ("True", report.error.code, report.error.message)}
    if report.results.failed:
        first = report.results.failed[0]
        msg = f"{len(report.results.failed)} object(s) failed; first: " \
              f"{(first.error or {}).get('resource')}: {(first.error or {}).get('message')}"
        return {"Ready": ("False", "ApplyFailed", msg),
                "Reconciling": ("False", "ApplyFailed", ""),
                "Stalled": ("True", "ApplyFailed", msg)}
    suffix = f"; warning: {warning}" if warning else ""
    applied = f"Applied revision {report.revision}"
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
    changed = report.results.counts().get("applied", 0)
    waiting = [h for h in health if h.status not in _SETTLED]
    if changed or waiting:
        what = ", ".join(f"{h.name}: {h.reason or h.status}" for h in waiting) or \
            f"{changed} object(s) applied"
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


def _condition_list(verdict: Verdict, old: Sequence[Mapping[str, Any]],
                    generation: int) -> list[dict[str, Any]]:
    """The conditions in kstatus order; lastTransitionTime kept while a status holds."""
    previous = {c.get("type"): c for c in old}
    out = []
    for kind in CONDITION_TYPES:
        status, reason, message = verdict.get(kind, ("Unknown", "", ""))
        before = previous.get(kind) or {}
        changed = before.get("status") != status
        out.append({"type": kind, "status": status, "reason": reason or "Unknown",
                    "message": message[:1000], "observedGeneration": generation,
                    "lastTransitionTime": now_rfc3339() if changed or not before.get(
                        "lastTransitionTime") else before["lastTransitionTime"]})
    return out


def _generation(obj: Body) -> int:
    return int((obj.get("metadata") or {}).get("generation") or 0)


def _comparable(status: Mapping[str, Any]) -> Any:
    out = {k: v for k, v in status.items() if k not in ("lastPassTime", "lastPassDuration")}
    out["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                         for c in status.get("conditions") or []]
    return out


__all__ = ["Engine", "Manifest", "Report"]
