"""Wire the controller together and run it: engine, loop, triggers, leadership, API.

`Controller` owns the long-lived pieces of one process (the Kubernetes connection, the
live cache every reader shares, the engines, the loop, the Git poller, the lease, the event
store, the metrics registry) and is what the API serves from.

Instances: every DeploymentParameters object in the watched namespaces (`cfg.instances`:
the controller's own namespace by default, a list, or all; optionally a label selector) is
reconciled, each with its own engine, health monitor and loop state, through one work
queue (loop.py). They are found from the live cache's watch of DeploymentParameters
objects: a new one is queued at once, a change wakes only its own instance. Conductor
puts a finalizer on the objects it reconciles; a deleted one is finalised (its objects
pruned per the prune policy, or orphaned when it carries `conductor.io/prune: disabled`),
then the finalizer is removed and the instance forgotten. The controller's own instance
(`--instance`) keeps its protection instead: a deleted own object stops its passes and
keeps the app running until it is recreated (re-creating it from the defaults could
reset a running app), so it gets no finalizer.
`controller.serving.serve` starts it under gunicorn, in the single worker process, so
the loop and the API share one memory (and one Prometheus registry); nothing here imports
the API (it sits above this module).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry

from controller.adapters.cache import LiveCache
from controller.adapters.crds import ensure_crd
from controller.adapters.kube import Body, Kube, KubeError, NotLeaderError
from controller.adapters.metrics import InstanceState, LiveState, Metrics, register_runtime
from controller.adapters.sources import ParameterSource, Snapshot
from controller.adapters.sources.instances import InstanceSource
from controller.adapters.sources.registry import Registry
from controller.adapters.sources.resource import (
    API_VERSION,
    KIND,
    ResourceSource,
)
from controller.adapters.store.events import open_store
from controller.adapters.store.history import History
from controller.adapters.store.operations import OperationStore
from controller.adapters.watching import Handler, Selector
from controller.config import Config
from controller.errors import (
    ConductorError,
    InvalidRequestError,
    InvalidYAMLError,
    KubernetesError,
    NotFoundError,
    ValidationError,
)
from controller.model import instance as instance_model
from controller.model.objects import ANNOTATION_PRUNE, ObjectKey
from controller.model.times import now, now_rfc3339, parse_rfc3339, rfc3339_micro
from controller.reconcile.engine import Engine, ParametersDeletedError, Report
from controller.runtime.leadership import LeaderElector
from controller.runtime.loop import Loop, LoopState
from controller.runtime.notifying import Notifier
from controller.runtime.observing import HealthMonitor
from controller.runtime.operations import Operations
from controller.runtime.recording import EngineRecorder, KubeEvents, PassRecorder
from controller.runtime.reporting import HealthReporter, Reporters
from controller.runtime.requests import KubeObjects, RequestHandler, unguarded
from controller.runtime.sharding import ShardSet

if TYPE_CHECKING:  # gitpython is imported only when a repository is used
    from controller.adapters.sources.git import GitSource

log = logging.getLogger(__name__)

FINALIZER = "conductor.io/finalizer"
Key = tuple[str, str]  # an instance: (namespace, name) of its DeploymentParameters object


class Instance:
    """One reconciled instance: its engine and health monitor, and what the loop runs for
    it (a pass, or the finalisation of its deleted object)."""

    def __init__(self, controller: Controller, key: Key, engine: Engine,
                 health: HealthMonitor, own: bool = False) -> None:
        self.controller = controller
        self.key = key
        self.engine = engine
        self.health = health
        self.own = own  # the controller's own instance: no finalizer (see the module doc)

    def reconcile(self, trigger: str = "interval") -> Report:
        if self.own:
            return self.engine.reconcile(trigger)
        name = self.key[1]
        try:
            obj = self.controller.instance_object(self.key)  # the watched copy: no request
            if obj is None:  # gone without us (finalised elsewhere, or never ours)
                self.controller.forget(self.key)
                return Report("reconcile", [], trigger, instance=name)
            meta = obj.get("metadata") or {}
            if meta.get("deletionTimestamp"):
                return self._finalise(obj, trigger)
            if self.controller.cfg.instances.finalize and \
                    FINALIZER not in (meta.get("finalizers") or []):
                self._set_finalizers(obj, [*(meta.get("finalizers") or []), FINALIZER])
        except ConductorError as e:
            return Report("reconcile", [], trigger, instance=name, error=e)
        return self.engine.reconcile(trigger)

    def _finalise(self, obj: Body, trigger: str) -> Report:
        """The object is being deleted: prune what this instance applied (unless it says
        `conductor.io/prune: disabled`), then take conductor's finalizer off.

        It is forgotten by the pass that its watch's DELETED wakes (`reconcile` finds no
        object): not before, or a request naming it would take it in again from the
        cache, and not while another finalizer still holds it. (The cache once put the
        object back when our finalizer write's answer arrived after the DELETED, so the
        instance was never forgotten; cache.py now keeps what left a set.)"""
        fresh = self.engine.resource.get()  # the cached copy may be a finalisation behind
        done = Report("reconcile", [], f"{trigger},finalize", instance=self.key[1])
        if fresh is None:  # gone: its DELETED, on its way, wakes the pass that forgets it
            return done
        obj = fresh
        meta = obj.get("metadata") or {}
        finalizers = list(meta.get("finalizers") or [])
        if FINALIZER not in finalizers:  # finalised already; another finalizer holds it
            return done
        orphan = (meta.get("annotations") or {}).get(ANNOTATION_PRUNE) == "disabled"
        if not orphan:
            report = self.engine.down()
            report.trigger = f"{trigger},finalize"
            if not report.ok:
                return report  # retried with backoff; the object stays until it works
            obj = self.engine.resource.get() or obj  # down wrote its status and annotations
        else:
            report = done
        current = (obj.get("metadata") or {}).get("finalizers") or []
        if FINALIZER in current:
            self._set_finalizers(obj, [f for f in current if f != FINALIZER])
        log.info("instance %s/%s deleted: its objects %s", *self.key,
                 "orphaned" if orphan else "pruned")
        return report

    def _set_finalizers(self, obj: Body, finalizers: list[str]) -> None:
        """Write the finalizer list on the version read (another writer's finalizer is
        never lost: a conflict is retried by the next pass)."""
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        namespace, name = self.key
        try:
            self.engine.kube.patch(API_VERSION, KIND, name, {"metadata": {
                "finalizers": finalizers, "resourceVersion": rv}}, namespace)
        except KubeError as e:
            if e.status != 404:
                raise


class GitParameters:
    """Adapts the Git source to the engine: parameters and manifests at one commit.

    It also keeps what the controller knows about the repository between passes: when each
    revision was first seen (a webhook, a poll or a fetch, for push-to-applied latency),
    the revision applied last (the base of the force-push check), and the last failure to
    reach Git (counted, and shown in /api/status until the next success).
    """

    def __init__(self, cfg: Config, git: GitSource, metrics: Metrics | None = None) -> None:
        self.cfg = cfg
        self.git = git  # the registry's GitSource of the controller's repository
        self.metrics = metrics
        # Set by the controller: warnings (a ref that moved to a non-descendant) as events.
        self.on_event: Callable[[str, str, str, dict[str, Any]], None] | None = None
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}  # sha -> Unix time first seen
        self._announced: float | None = None  # a webhook's time, until a fetch follows it
        # The revision applied last; None until the first snapshot reads it from status.
        self.applied: str | None = None
        self.error: dict[str, Any] | None = None  # the last failure to reach Git, if any
        self._warned: set[tuple[str, str]] = set()
        self._requested: str | None = None  # the last wake-up seen on the object

    # -- what was seen when --------------------------------------------------------------

    def announced(self, at: float | None = None) -> None:
        """A push was announced (webhook): its revision was seen now (or `at`, when a
        webhook received by another replica recorded it), whatever it is."""
        with self._lock:
            if self._announced is None:
                self._announced = time.time() if at is None else at

    def polled(self, sha: str) -> bool:
        """The poller saw the ref at `sha`; True when Git was failing until now."""
        with self._lock:
            self._seen.setdefault(sha, time.time())
            recovered, self.error = self.error is not None, None
        return recovered

    def failed(self, e: Exception, step: str) -> bool:
        """Reaching Git failed (poll or fetch): count it, keep it for /api/status; True
        when this starts an outage (the previous attempt worked)."""
        if self.metrics:
            self.metrics.git_failures.labels(**self.metrics.labels).inc()
        error = e.to_dict() if isinstance(e, ConductorError) else {
            "error": "source_error", "message": str(e), "details": {}}
        with self._lock:
            started = self.error is None
            self.error = {**error, "step": step, "time": now_rfc3339()}
        return started

    def first_seen(self, sha: str) -> float | None:
        with self._lock:
            return self._seen.get(sha)

    # -- the engine's source -------------------------------------------------------------

    def snapshot(self, resource: dict[str, Any]) -> Snapshot:
        if self.applied is None:  # after a restart: what the last controller applied
            self.applied = str((resource.get("status") or {}).get("lastAppliedRevision")
                               or "")
        requested = instance_model.requested_at(resource)
        if self._requested is not None and requested != self._requested:
            # A webhook another replica received: push-to-applied starts when it arrived.
            at = parse_rfc3339(requested)
            self.announced(at.timestamp() if at is not None else None)
        self._requested = requested
        started, fetch_started = time.monotonic(), time.time()
        try:
            snap = self.git.fetch(since=self.applied)
        except (InvalidYAMLError, ValidationError):
            with self._lock:
                self.error = None  # Git answered: the content is wrong, not the source
            raise
        except Exception as e:
            self.failed(e, "fetch")
            raise
        finally:
            if self.metrics:
                self.metrics.git_fetch.labels(**self.metrics.labels).observe(
                    time.monotonic() - started)
        with self._lock:
            self.error = None
            announced, self._announced = self._announced, None
            seen = min(t for t in (announced, fetch_started) if t is not None)
            self._seen.setdefault(snap.sha, seen)
            if len(self._seen) > 1000:  # revisions long applied: drop the oldest
                for old in sorted(self._seen, key=self._seen.__getitem__)[:500]:
                    del self._seen[old]
        details: dict[str, Any] = {"url": self.git.url, "ref": self.cfg.git.ref}
        if snap.replaced:
            details["warning"] = (
                f"the ref {self.cfg.git.ref} moved to {snap.sha[:12]}, which does not "
                f"descend from the applied {snap.replaced[:12]} (a force-push or reset "
                "dropped commits)")
            self._warn_replaced(snap.replaced, snap.sha, details["warning"])
        return Snapshot(spec=snap.params, revision=snap.sha,
                        manifest_root=snap.manifest_root or self.cfg.manifest_root,
                        source="git", committed_at=snap.committed_at, details=details)

    def _warn_replaced(self, old: str, new: str, message: str) -> None:
        """One event per move (retries of a failing pass at the same commits are quiet)."""
        with self._lock:
            if (old, new) in self._warned:
                return
            self._warned.add((old, new))
        if self.on_event is not None:
            self.on_event("warning", "RefNotDescendant", message,
                          {"ref": self.cfg.git.ref, "previous": old, "revision": new,
                           "url": self.git.url})


class Controller:
    """One app instance's controller: call `start()`, then serve; `stop()` at the end."""

    def __init__(self, cfg: Config, env: dict[str, str] | None = None,
                 kube: Kube | None = None, registry: CollectorRegistry | None = None) -> None:
        self.cfg = cfg
        if registry is None:  # ours: with the standard process and Python series
            registry = CollectorRegistry()
            register_runtime(registry)
        self.registry = registry
        self.metrics = Metrics(self.registry, cfg.instance, cfg.namespace)
        self.kube = kube or Kube.connect(
            cfg, observer=self.metrics.observe_request,
            on_retry=lambda e: self.metrics.count_retry(str(e.details.get("method", "")),
                                                        e.status))
        # One watch-based cache of live state for the whole process (cache.py): passes plan
        # from it, health and incoming Events follow it, its DeploymentParameters set wakes
        # the loop; each set is watched once.
        self.live = LiveCache(self.kube)
        # One clone, fetch and poll per Git repository, shared by every instance using it.
        self.repositories = Registry(cfg.git, env or {})
        self.source: ParameterSource = (
            GitParameters(cfg, self.repositories.repository().source, self.metrics)
            if cfg.source == "git" else ResourceSource(cfg))
        # An unusable events file degrades to a temporary one (logged, metric, status,
        # event): reconciling matters more than the record of it.
        # Events, history and operation records: the events file (one replica) or the
        # database CONDUCTOR_STORE_URL names, shared by every replica (issue 14).
        # An instance is (namespace, name) in every store; rows from before that are
        # the own instance's when they carry its name (`home`).
        home = (cfg.namespace, cfg.instance)
        self.events, self.event_store_problem = open_store(cfg.events, cfg.store,
                                                           own_db=False, home=home)
        self.database = self.events.db
        self.history = History(self.database, home=home)
        if isinstance(self.source, GitParameters):
            self.source.on_event = self._event
        # The revision the last successful pass or operation applied: what /api/status and
        # conductor_app_info show, also while later passes fail (a Git outage).
        self.applied_revision = ""
        self._store_reported = False
        # Readiness's evidence that the API server answers when no lease request shows it.
        self._probe_lock = threading.Lock()
        self._prober: threading.Thread | None = None
        self._probe_contact = float("-inf")
        self._probe_timeout = max(0.5, min(2.0, cfg.leader.retry_period))
        self.recorder = EngineRecorder(self.events)
        self.kube_events = KubeEvents(self.kube, self.recorder, cfg.namespace, cfg.instance,
                                      live=self.live)
        self.recorder.service_of = self.kube_events.service_of
        self.operations = Operations(store=OperationStore(self.database))
        # up/update/down other replicas accepted for the instances this one owns.
        self.requests = RequestHandler(KubeObjects(self.kube, self.instance_object),
                                       self.instance_keys, self.owns, self.operations,
                                       self.engine_for)
        self.own_key: Key = (cfg.namespace, cfg.instance)
        # The apply phases' request threads of every engine.
        self.apply_pool = ThreadPoolExecutor(max_workers=cfg.apply_threads,
                                             thread_name_prefix="apply")
        # Health from watched state (observing.py), on every replica: the API serves it.
        self.health = HealthMonitor(self.kube, cfg, live=self.live)
        self.engine = self._new_engine(cfg, self.source, self.own_key)
        self._instances_lock = threading.Lock()
        self._known: dict[Key, Instance] = {
            self.own_key: Instance(self, self.own_key, self.engine, self.health, own=True)}
        self._marks: dict[Key, Any] = {}  # what of each object last woke its instance
        # Who runs a pass is `owns(key)`: the leader for the own instance, the shard's
        # holder for the others (the same answer as the write fence's).
        self.loop = Loop(self._known[self.own_key], cfg.loop, owns=self.owns,  # type: ignore[arg-type]
                         key=self.own_key, concurrency=cfg.instances.concurrency,
                         min_gap=cfg.instances.min_gap)
        # A Pod's Kubernetes Events belong to the Deployment (and service) that owns it.
        self.kube_events.owner_of = self._managed_owner
        # Conditions and health events follow the watched health between passes.
        self.reporters = Reporters()  # every other instance's (added as each is taken in)
        self.reporter = HealthReporter(self.health, self.engine, self.events,
                                       is_leader=self.is_leader, post=self.kube_events.post,
                                       on_conditions=self.metrics.set_conditions)
        # Notifications out follow the event store (a bad receivers file stops the start).
        self.notifier = Notifier.from_settings(cfg.notify, self.events,
                                               instance=cfg.instance, is_leader=self.is_leader)
        self.elector: LeaderElector | None = None
        if cfg.leader.enabled:
            self.elector = LeaderElector(
                self.kube, cfg.namespace, f"conductor-{cfg.app_name}-{cfg.instance}",
                identity=cfg.leader.identity or None,
                lease_duration=cfg.leader.lease_duration,
                renew_deadline=cfg.leader.renew_deadline,
                retry_period=cfg.leader.retry_period, on_change=self._on_leader)
            elector = self.elector
            self.kube.write_guard = lambda: elector.is_leader
            self.loop.identity = elector.identity
        self._leading = threading.Lock()  # held by the leader's set-up (_lead)
        # The other instances spread over shard Leases across the replicas (sharding.py).
        self.shards: ShardSet | None = None
        if self.elector is not None and cfg.leader.shards > 0:
            self.shards = ShardSet(
                self.kube, cfg.namespace, f"conductor-{cfg.app_name}-{cfg.instance}",
                self.elector.identity, cfg.leader.shards,
                lease_duration=cfg.leader.lease_duration,
                renew_deadline=cfg.leader.renew_deadline,
                retry_period=cfg.leader.retry_period, on_gained=self._on_shard,
                busy=self._shard_busy)
        # A pass's or operation's writes for an instance (inside kube.acting_for) pass
        # only while this replica owns that instance.
        self.kube.instance_guard = self.owns  # type: ignore[assignment]
        self.reports: list[Report] = []
        self._wake: Handler | None = None  # subscribed to the DeploymentParameters set
        self._discover: Handler | None = None  # subscribed to every watched instance set
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        self.started = threading.Event()
        self.metrics.read_live(self.live_state)  # everything it reads exists from here on

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Controller:
        if self.elector:
            self.elector.start()
            # Know our role before the first pass (a single replica leads at once).
            self.elector.tried.wait(self.cfg.leader.retry_period * 2)
        if self.shards is not None:
            self.shards.start()
        if self.is_leader():
            try:
                self._prepare()
            except NotLeaderError as e:  # the lease lapsed meanwhile (a slow API server):
                # whoever leads next prepares, as _on_leader does here when we lead again
                log.warning("leader set-up stopped: %s", e.message)
        # Every other instance: found, woken and forgotten from the watched sets. First:
        # with all namespaces watched, the cluster-wide set then serves every namespace's
        # reads too (cache.py), so a pass reads the very copy that woke it.
        self._discover = self._on_instance
        for selector in self.instance_selectors():
            self.live.subscribe(selector, self._discover)
        # The cache's own set wakes the loop: the pass it wakes reads what woke it.
        self._wake = self.engine.resource.changes(lambda _obj: self.loop.wake("resource"))
        self.live.subscribe(self._instances(), self._wake)
        for selector in (self._instances(), *self.instance_selectors()):
            self.live.subscribe(selector, self.requests.on_watch)
        self.requests.start()
        self.health.start()
        self.reporter.start()
        self.reporters.start()
        self.notifier.start()
        self.loop.start()
        # Always: any instance may name a repository in its spec.source.
        self._poller = threading.Thread(target=self._poll_git, name="git-poller",
                                        daemon=True)
        self._poller.start()
        self.started.set()
        return self

    def _prepare(self) -> None:
        """Leader-only set-up: the CRD (when allowed) and the DeploymentParameters object."""
        try:
            ensure_crd(self.kube)
        except KubeError as e:  # e.g. 403: installed by the deploy kit, not by us
            if e.status != 403:
                raise
            log.info("not allowed to install the CRD; assuming it is installed")
        try:
            # Created from the defaults only on a first install, never after a deletion.
            self.engine.ensure_parameters()
        except ParametersDeletedError as e:  # the first pass reports it (event, status)
            log.warning("%s", e.message)

    def stop(self, timeout: float | None = 60.0) -> None:
        """Stop the triggers, let the current pass finish (up to `timeout`), release."""
        self._stop.set()
        if self._wake:
            self.live.watch(self._instances()).unsubscribe(self._wake)
        if self._discover:
            for selector in self.instance_selectors():
                self.live.watch(selector).unsubscribe(self._discover)
        for selector in (self._instances(), *self.instance_selectors()):
            self.live.watch(selector).unsubscribe(self.requests.on_watch)
        self.requests.stop()
        self.loop.stop(timeout)
        self.reporter.stop()
        self.reporters.stop()
        self.health.stop()
        with self._instances_lock:
            others = [i for k, i in self._known.items() if k != self.own_key]
        for other in others:
            other.health.stop()
        self.kube_events.stop()
        self.notifier.stop()
        self.events.close()
        self.operations.shutdown()
        self.apply_pool.shutdown(wait=False)  # the passes are over (loop.stop)
        if self.shards is not None:  # the passes are over: hand the shards back at once
            self.shards.stop(release=True)
        if self.elector:
            self.elector.stop(release=True)
        self.history.close()
        self.database.close()
        self.live.stop()

    def _instances(self) -> Selector:
        return Selector(API_VERSION, KIND, self.cfg.namespace)

    def watched_namespaces(self) -> tuple[str, ...]:
        """The namespaces whose instances are reconciled ("" alone: all of them)."""
        names = self.cfg.instances.namespaces
        if "*" in names:
            return ("",)
        return names or (self.cfg.namespace,)

    def instance_selectors(self) -> list[Selector]:
        label = self.cfg.instances.selector
        return [Selector(API_VERSION, KIND, ns, label) for ns in self.watched_namespaces()]

    def watches(self, namespace: str) -> bool:
        spaces = self.watched_namespaces()
        return spaces == ("",) or namespace in spaces

    def _selector_of(self, key: Key) -> Selector:
        """The watched set that holds an instance's object (no new watch for a read)."""
        if key == self.own_key:
            return self._instances()
        everywhere = self.watched_namespaces() == ("",)
        return Selector(API_VERSION, KIND, "" if everywhere else key[0],
                        self.cfg.instances.selector)

    # -- leadership --------------------------------------------------------------------------

    def is_leader(self) -> bool:
        return self.elector.is_leader if self.elector else True

    def leader_identity(self) -> str:
        if self.elector is None:
            return "self"
        return self.elector.holder

    def owns(self, key: Key) -> bool:
        """Whether this replica reconciles (and may write for) the instance `key`.

        The one question the loop, the write fence and the API ask about ownership: the
        leader owns the controller's own instance (and, without sharding, every
        instance); with CONDUCTOR_LEADER_SHARDS, another instance is owned by the holder
        of its shard Lease (sharding.py), renewed within the renew deadline.
        """
        if self.shards is None or key == self.own_key:
            return self.is_leader()
        return self.shards.owns(key)

    def owner_identity(self, key: Key) -> str:
        """The identity of the replica that owns `key` ("" when none holds it now)."""
        if self.shards is None or key == self.own_key:
            return self.leader_identity()
        return self.shards.holder(key)

    def _on_leader(self, leading: bool) -> None:
        if leading:
            # Not on the election thread: the set-up's requests (retried, up to the request
            # timeout each) would keep it from renewing, and a slow API server would then
            # depose every new leader in turn before it renews once.
            threading.Thread(target=self._lead, name="leader-setup", daemon=True).start()

    def _lead(self) -> None:
        with self._leading:  # one set-up at a time, however often leadership flaps
            if not self.is_leader():
                return
            try:
                self._prepare()
            except KubeError as e:
                log.warning("leader set-up failed: %s", e.message)
        if self.shards is None:
            self.loop.wake_all("leader")
        else:  # the leader's own instance only; the others follow their shards
            self.loop.wake("leader")

    def _on_shard(self, shard: int) -> None:
        """This replica took a shard: its instances' passes run now, not at an interval."""
        assert self.shards is not None
        for key in self.instance_keys():
            if key != self.own_key and self.shards.shard(key) == shard:
                self.loop.wake("shard", key)

    def _shard_busy(self, shard: int) -> bool:
        """Whether a pass of an instance of `shard` runs here (its handover waits)."""
        assert self.shards is not None
        return any(key != self.own_key and self.shards.shard(key) == shard
                   for key in self.loop.queue.running())

    # -- instances and sources ---------------------------------------------------------------

    def _new_engine(self, cfg: Config, source: ParameterSource, key: Key) -> Engine:
        # Ready means applied *and* healthy: the conditions read the watched health.
        # Its own sink: events stored under this instance, posted on this instance's object.
        return Engine(cfg, self.kube, source,
                      sink=PassRecorder(self.recorder, self.kube_events,
                                        lambda: self.owns(key)),
                      on_report=lambda report: self._on_report(report, key),
                      health=lambda: self.health_for(key).services(), live=self.live,
                      pool=self.apply_pool)

    def _on_instance(self, kind: str, obj: Body) -> None:
        """A watched DeploymentParameters object changed: start, wake or forget its
        instance. Only spec, annotations and deletion wake it (not the status its own
        passes write, nor the finalizer its first pass adds: that would be a second pass
        per new instance; a removed one is put back by the next pass); once deleting,
        any change of its finalizers too."""
        meta = obj.get("metadata") or {}
        if kind not in ("ADDED", "MODIFIED", "DELETED") or not meta.get("name"):
            return
        key: Key = (str(meta.get("namespace") or ""), str(meta["name"]))
        if key == self.own_key:
            return  # the own instance has its own handler (self._wake)
        if kind == "DELETED":
            # Its next pass finds it gone and forgets it, on a worker: this handler runs
            # under the watch's lock, where stopping its monitor could deadlock.
            self.loop.wake("deleted", key)
            return
        deleting = meta.get("deletionTimestamp")
        mark = (meta.get("uid"), meta.get("generation"), deleting,
                instance_model.wakes_mark(meta),
                tuple(meta.get("finalizers") or ()) if deleting else ())
        with self._instances_lock:
            changed = self._marks.get(key) != mark
            self._marks[key] = mark
            known = key in self._known
        if not known:
            self._add(key)
        elif changed:
            self.loop.wake("resource", key)

    def _add(self, key: Key) -> Instance:
        """Start reconciling another instance (its first pass is queued at once)."""
        namespace, name = key
        # Its objects go to its own namespace (the own namespace keeps the configured one).
        cfg = replace(self.cfg, instance=name, namespace=namespace, source="resource",
                      default_namespace=self.cfg.default_namespace
                      if namespace == self.cfg.namespace else namespace)
        with self._instances_lock:
            found = self._known.get(key)
            if found is not None:
                return found
            health = HealthMonitor(self.kube, cfg, live=self.live)
            # Its object's spec, or Git when the object says so (sources/instances.py).
            source = InstanceSource(cfg, key, self.repositories, manifests_from_git=(
                self.cfg.source == "git" and bool(self.cfg.git.manifests_path)))
            engine = self._new_engine(cfg, source, key)
            instance = self._known[key] = Instance(self, key, engine, health)
        health.start()
        # Its conditions follow its health between passes, on the one shared thread.
        self.reporters.add(key, HealthReporter(health, engine, self.events,
                                               is_leader=lambda: self.owns(key),
                                               post=self.kube_events.post))
        self.loop.add(key, instance)
        log.info("instance %s/%s taken in", *key)
        return instance

    def forget(self, key: Key) -> None:
        """Stop reconciling an instance and drop its state (engine, monitor, loop)."""
        if key == self.own_key:
            return
        with self._instances_lock:
            instance = self._known.pop(key, None)
            self._marks.pop(key, None)
        self.loop.remove(key)
        self.reporters.remove(key)
        self.repositories.unfollow(key)
        self.kube_events.forget(key)
        self.metrics.forget(key[1], key[0])  # its series go with it
        if instance is not None:
            instance.health.stop()
            log.info("instance %s/%s forgotten", *key)

    def _managed_owner(self, namespace: str, kind: str, name: str,
                       uid: str = "") -> tuple[ObjectKey, str] | None:
        """The managed object, of whichever instance, that an object is or belongs to
        (whom its Kubernetes Events are filed under): asked of the monitors of the
        instances whose objects may live in that namespace."""
        with self._instances_lock:
            monitors = [i.health for k, i in self._known.items()
                        if k[0] == namespace or k == self.own_key]
        for monitor in monitors:
            found = monitor.managed_owner(namespace, kind, name, uid)
            if found is not None:
                return found
        return None

    def instance_keys(self) -> list[Key]:
        with self._instances_lock:
            return list(self._known)

    def loop_state(self, key: Key) -> LoopState | None:
        return self.loop.state(key)

    def resolve(self, instance: str | None) -> Key:
        """The instance a request names: none (the own one), `name` (in the controller's
        namespace, else the only one of that name) or `namespace/name`; NotFoundError for
        an instance this controller does not reconcile."""
        if instance is None:
            return self.own_key
        namespace, _, name = instance.rpartition("/")
        with self._instances_lock:
            if namespace:
                candidates = [(namespace, name)] if (namespace, name) in self._known else []
            elif (self.cfg.namespace, name) in self._known:
                candidates = [(self.cfg.namespace, name)]
            else:
                candidates = [k for k in self._known if k[1] == name]
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            raise InvalidRequestError(
                f"instance {name} exists in several namespaces: add ?namespace=",
                {"instance": name, "namespaces": sorted(k[0] for k in candidates)})
        # Not found yet: an object created a moment ago may not have reached the cache.
        ns = namespace or self.cfg.namespace
        if self.watches(ns) and self.live.get(self._selector_of((ns, name)), name, ns,
                                              timeout=2.0)[1] is not None:
            return self._add((ns, name)).key
        raise NotFoundError(f"DeploymentParameters {ns}/{name} not found",
                            {"namespace": ns, "instance": name})

    def instance_object(self, key: Key) -> Body | None:
        """An instance's DeploymentParameters object, from the live cache (a GET when the
        cache is not fresh)."""
        namespace, name = key
        fresh, obj = self.live.get(self._selector_of(key), name, namespace, timeout=1.0)
        if not fresh:
            return self.kube.get(API_VERSION, KIND, name, namespace)
        return obj

    def instance(self, key: Key) -> Instance:
        with self._instances_lock:
            found = self._known.get(key)
        if found is None:
            raise NotFoundError(f"DeploymentParameters {key[0]}/{key[1]} not found",
                                {"namespace": key[0], "instance": key[1]})
        return found

    def engine_for(self, key: Key | str) -> Engine:
        """The engine of a reconciled instance (NotFoundError for any other); a name
        is resolved as the API's `?instance=`."""
        return self.instance(self.resolve(key) if isinstance(key, str) else key).engine

    def health_for(self, key: Key | str) -> HealthMonitor:
        """The watched health of a reconciled instance."""
        monitor = self.instance(self.resolve(key) if isinstance(key, str) else key).health
        monitor.wait_synced(timeout=5.0)  # its object listed: it knows its services
        return monitor

    def git_source(self) -> Any:
        return self.source.git if isinstance(self.source, GitParameters) else None

    # -- triggers ----------------------------------------------------------------------------

    def _poll_git(self) -> None:
        """Wake instances when a ref they follow moves past what they read (cheap
        ls-remote: the controller's own ref, then each other repository once for all its
        followed refs, through the registry).

        A failed poll of the own repository is counted (conductor_git_fetch_failures_total)
        and shown in /api/status at once; the first failure of an outage also wakes one
        pass, so the conditions say Stalled with Git's error between interval passes.
        """
        woken = ""
        while not self._stop.wait(self.cfg.git.poll_interval):
            if isinstance(self.source, GitParameters) and self.owns(self.own_key):
                woken = self._poll_own(self.source, woken)
            try:
                moved = self.repositories.poll(
                    lambda key: isinstance(key, tuple) and self.owns(key))
            except Exception as e:  # never let the poller die; retried at the next poll
                log.warning("git poll failed: %s", e)
                continue
            for key in moved:
                self.loop.wake("git", key)

    def _poll_own(self, source: GitParameters, woken: str) -> str:
        try:
            sha = source.git.remote_sha()
        except Exception as e:  # reported, retried at the next poll
            log.warning("git poll failed: %s", e)
            if source.failed(e, "poll"):
                self.loop.wake("git-error")
            return woken
        recovered = source.polled(sha)
        if sha not in (source.applied, woken) or recovered:
            self.loop.wake("git")
            return sha
        return woken

    def git_followers(self, ref: str, repositories: Sequence[str] = ()) -> list[Key]:
        """The instances that take their parameters from `ref` ("" = any) of one of
        `repositories` (URLs as a webhook names them; none = the controller's own
        repository), decided from their objects: the same answer on every replica,
        whether or not it owns them or has run their passes."""
        named = {instance_model.repository_id(u) for u in repositories if u}
        own_url = self.cfg.git.url
        wanted = named or ({instance_model.repository_id(own_url)} if own_url else set())
        name = instance_model.ref_name(ref)
        own_ref = self.cfg.git.ref or "main"
        found: list[Key] = []
        for key in self.instance_keys():
            if key == self.own_key:
                # The own instance as before: a push to the configured ref wakes it (with
                # the resource source too: a pass that changes nothing is harmless).
                url, followed = own_url, own_ref
                if not named and (not name or instance_model.ref_name(followed) == name):
                    found.append(key)
                    continue
            else:
                obj = self.instance_object(key)
                try:
                    spec = instance_model.source_spec(obj) if obj is not None else None
                except ConductorError:
                    spec = None  # its pass reports the malformed spec.source
                if spec is None:
                    continue
                url, followed = spec.url or own_url, spec.ref or own_ref
            if url and instance_model.repository_id(url) in wanted and \
                    (not name or instance_model.ref_name(followed) == name):
                found.append(key)
        return found

    def git_push_announced(self, ref: str = "",
                           repositories: Sequence[str] = ()) -> dict[str, list[Key]]:
        """A webhook announced a push: every instance following that repository and ref
        runs a pass that fetches anew — at once when this replica owns it; otherwise the
        wake-up is recorded on its object (annotation conductor.io/requested-reconcile-at,
        as Flux's requestedAt), which the owner's watch sees. Returns the instances
        woken here and those asked of their owner; a recording that fails raises (the
        webhook's caller must hear that its push was not passed on)."""
        keys = self.git_followers(ref, repositories)
        woken: list[Key] = []
        asked: list[Key] = []
        failed: dict[str, str] = {}
        at = rfc3339_micro(now())
        for key in keys:
            if self.owns(key):
                self._announce(key)
                self.loop.wake("webhook", key)
                woken.append(key)
                continue
            try:
                self._request_pass(key, at)
                asked.append(key)
            except KubeError as e:
                if e.status != 404:  # a deleted instance has nothing left to wake
                    failed["/".join(key)] = e.message
        if failed:
            raise KubernetesError(
                "the push could not be passed on to the replica that owns "
                f"{', '.join(sorted(failed))}; send the webhook again",
                {"failed": failed, "woken": ["/".join(k) for k in woken + asked]})
        return {"woken": woken, "asked": asked}

    def _announce(self, key: Key) -> None:
        """The owner's side of a webhook: the instance's next fetch must not reuse one
        made before the push."""
        if key == self.own_key:
            if isinstance(self.source, GitParameters):
                self.source.announced()
            return
        try:
            source = self.instance(key).engine.source
        except NotFoundError:
            return
        if isinstance(source, InstanceSource) and source.follows is not None:
            self.repositories.repository(source.follows.url).want()

    def _request_pass(self, key: Key, at: str) -> None:
        """Record a wake-up on the instance's object for its owner. Not a reconcile
        write: like a user's request it goes out without the leadership fence, which
        guards what passes apply, so that a non-owner can hand the wake-up over."""
        namespace, name = key
        unguarded(self.kube).patch(API_VERSION, KIND, name, {"metadata": {
            "annotations": instance_model.request_annotation(at)}}, namespace)

    # -- observation ---------------------------------------------------------------------------

    def _on_report(self, report: Report, key: Key) -> None:
        """After every pass and operation of any engine: observe, record, measure."""
        if isinstance(report.error, NotLeaderError):
            return  # a follower refusing to write: nothing happened
        if key != self.own_key:
            self._on_other_report(report, key)
            return
        self.reports = [*self.reports[-49:], report]
        if report.skipped:  # the last full pass's plan and snapshot: all known already
            self.metrics.observe_pass(report.operation, report.duration, report.ok,
                                      report.results.counts(), report.revision, [])
            return
        self.kube_events.track((r.key, r.service) for r in report.results.items)
        # Health: watch what this pass planned; its 403s become RBAC problems.
        self.health.after_pass(report.plan.items if report.plan else (),
                               report.results.items, report.error)
        snap = report.snapshot
        # A suspended pass applied nothing: its revision is seen, not applied.
        applied = snap is not None and report.ok and report.operation != "plan" \
            and not report.suspended
        if snap is not None:
            try:
                self.history.record(self.cfg.instance, snap.revision, snap.source, snap.spec,
                                    origin=str(snap.details.get("uid", "")),
                                    namespace=self.cfg.namespace)
                if applied:
                    self.history.mark_applied(self.cfg.instance, snap.revision,
                                              namespace=self.cfg.namespace)
            except Exception as e:  # the event store must never break a pass
                log.warning("cannot record parameter history: %s", e)
        if applied and snap is not None:
            self._applied(snap)
        # One correction per object re-applied (the counter's unit), labelled by service.
        drifted = [r.service for r in report.results.items
                   if r.outcome == "applied" and r.reason == "drift"]
        self.metrics.observe_pass(report.operation, report.duration, report.ok,
                                  report.results.counts(), report.revision, drifted)
        # The conditions the pass wrote (health included); the reporter follows them up.
        self.metrics.set_conditions(self.engine.conditions or {
            "Ready": "True" if report.ok else "False",
            "Stalled": "False" if report.ok else "True", "Reconciling": "False"})
        self.reporter.poke()
        self._report_event_store()

    def _on_other_report(self, report: Report, key: Key) -> None:
        """Another instance's pass: its health follows what it planned, its history and
        metrics (labelled with its name and namespace) are kept."""
        if report.skipped:
            # The last full pass's plan and snapshot again: its health tracking, Events
            # attribution and history are as that pass left them. Only the pass counts.
            self.metrics.of(key[1], key[0]).observe_pass(
                report.operation, report.duration, report.ok, report.results.counts(),
                report.revision, [])
            return
        try:
            monitor = self.instance(key).health
        except NotFoundError:
            return  # forgotten (finalised) meanwhile
        monitor.after_pass(report.plan.items if report.plan else (), report.results.items,
                           report.error)
        # Its objects' Kubernetes Events are stored under it (namespace and name).
        self.kube_events.track(((r.key, r.service) for r in report.results.items), key)
        counts = report.results.counts()
        if counts.get("applied") or counts.get("deleted") or not report.ok:
            # The conditions it wrote may assume a rollout: followed up as it goes (a
            # no-op pass is no news: looking would cost a GET per instance and interval).
            self.reporters.poke(key)
        snap = report.snapshot
        if snap is not None:
            try:
                self.history.record(key[1], snap.revision, snap.source, snap.spec,
                                    origin=str(snap.details.get("uid", "")),
                                    namespace=key[0])
                if report.ok and report.operation != "plan" and not report.suspended:
                    self.history.mark_applied(key[1], snap.revision, namespace=key[0])
            except Exception as e:  # the event store must never break a pass
                log.warning("cannot record parameter history: %s", e)
        metrics = self.metrics.of(key[1], key[0])
        metrics.observe_pass(report.operation, report.duration, report.ok,
                             report.results.counts(), report.revision,
                             [r.service for r in report.results.items
                              if r.outcome == "applied" and r.reason == "drift"])
        if snap is not None and report.ok and report.operation != "plan" and \
                not report.suspended:
            self._other_applied(key, snap, metrics)

    def _other_applied(self, key: Key, snap: Snapshot, metrics: Metrics) -> None:
        """Another instance applied `snap`: with Git, once per new commit, its latency from
        when the commit was first seen (webhook, poll or fetch) and from its commit time."""
        try:
            source = self.instance(key).engine.source
        except NotFoundError:
            return  # forgotten meanwhile
        seen = source.newly_applied(snap) if isinstance(source, InstanceSource) else None
        if seen is not None:
            metrics.observe_applied(seen, snap.committed_at.timestamp()
                                    if snap.committed_at else None)

    def _applied(self, snap: Snapshot) -> None:
        """A pass applied `snap`: with Git, once per new revision, its latency from when
        the revision was first seen (and from its commit time)."""
        self.applied_revision = snap.revision
        source = self.source
        if not isinstance(source, GitParameters) or snap.source != "git" or \
                snap.revision == source.applied:
            return  # passes that re-apply (or change nothing at) the same revision
        source.applied = snap.revision
        seen = source.first_seen(snap.revision)
        if seen is not None:
            committed = snap.committed_at.timestamp() if snap.committed_at else None
            self.metrics.observe_applied(seen, committed)

    def revision(self) -> str:
        """The revision applied last (after a restart, before a pass: the status's)."""
        if not self.applied_revision and isinstance(self.source, GitParameters):
            return self.source.applied or ""
        return self.applied_revision

    def _report_event_store(self) -> None:
        """An unusable events file is said once more where operators look: a Warning
        Event on the DeploymentParameters object (once this replica leads)."""
        problem = self.event_store_problem
        if problem is None or self._store_reported or not self.is_leader():
            return
        self._store_reported = True
        self._event("warning", "EventStoreUnusable",
                    f"event store {problem.path} is unusable ({problem.error}); "
                    f"{problem.hint}. Events are kept in a temporary file until restart",
                    problem.to_dict())

    def _event(self, type_: str, reason: str, message: str, details: Any) -> None:
        level = logging.ERROR if type_ == "error" else logging.INFO
        fields = details if isinstance(details, dict) else {}
        log.log(level, "%s: %s", reason, message, extra={
            "reason": reason, **{k: fields[k] for k in ("operation", "trigger", "revision",
                                                         "service", "object") if k in fields}})
        self.recorder.note(type_, reason, message, fields, self.cfg.instance,
                           self.cfg.namespace)
        if self.is_leader():
            self.kube_events.post(type_, reason, message, details)

    def live_state(self) -> LiveState:
        """What the scrape-time gauges show, from memory: read by the registry's
        `LiveGauges` collector at every scrape, whoever collects."""
        try:
            stored: int | None = self.events.count()
        except Exception as e:  # a scrape must not fail because of the event store
            log.warning("cannot count stored events: %s", e)
            stored = None
        last = self.engine.last
        return LiveState(
            services={h.name: h.status for h in self.health.services()},
            sync="Unknown" if last is None else ("Synced" if last.ok else "OutOfSync"),
            revision=self.revision(),
            # From the lease's clock at each scrape: a follower that never led says 0 (the
            # alerts' leader filter relies on it), and a leader past its renew deadline says
            # 0 at once, even while its election thread still waits for the API server.
            leader=self.is_leader() if self.elector is not None else None,
            events_stored=stored, events_bytes=self.events.size_bytes(),
            events_degraded=self.event_store_problem is not None,
            instances=self._instances_state())

    def _instances_state(self) -> dict[Key, InstanceState]:
        """Every other instance's scrape-time state: its watched health and last pass."""
        with self._instances_lock:
            others = [(k, i) for k, i in self._known.items() if k != self.own_key]
        out: dict[Key, InstanceState] = {}
        for key, instance in others:
            last = instance.engine.last
            out[key] = InstanceState(
                services={h.name: h.status for h in instance.health.services()},
                sync="Unknown" if last is None else ("Synced" if last.ok else "OutOfSync"),
                revision=last.revision if last is not None and last.ok else "")
        return out

    def api_server(self) -> dict[str, Any]:
        """Whether the API server answered lately, for readiness; never blocks (/readyz is
        answered on the event loop).

        The evidence is the lease requests (every retry period, on every replica); when
        they are not fresh, or without leader election, a background probe (one bounded,
        unretried GET /version per retry period) supplies it. Reachable means an answer
        within two retry periods plus one request's timeout.
        """
        period = self.cfg.leader.retry_period
        with self._probe_lock:
            if self._prober is None and not self._stop.is_set():
                self._prober = threading.Thread(target=self._probe_api_server,
                                                name="apiserver-probe", daemon=True)
                self._prober.start()
        last = max(self._probe_contact,
                   self.elector.last_contact if self.elector is not None else float("-inf"))
        age = time.monotonic() - last
        return {"reachable": age < period * 2 + self._probe_timeout,
                "lastAnswerSecondsAgo": round(age, 3) if age != float("inf") else None}

    def _probe_api_server(self) -> None:
        period = self.cfg.leader.retry_period
        while True:
            fresh = self.elector is not None and \
                time.monotonic() - self.elector.last_contact < period
            if not fresh:
                try:
                    self.kube.request("GET", "/version", retry=False,
                                      timeout=self._probe_timeout)
                    self._probe_contact = time.monotonic()
                except KubeError as e:
                    if e.status and e.status < 500:  # answered, if only with a refusal
                        self._probe_contact = time.monotonic()
            if self._stop.wait(period):
                return

    def status(self) -> dict[str, Any]:
        """What /api/status shows: role, source, last pass, services, recent errors."""
        last = self.engine.last
        source: dict[str, Any] = {"type": self.cfg.source}
        if isinstance(self.source, GitParameters):
            source.update(url=self.source.git.url, ref=self.cfg.git.ref)
            if self.source.error is not None:  # Git unreachable now (poll or fetch)
                source["error"] = self.source.error
            snap = last.snapshot if last else None
            if snap is not None and snap.details.get("warning"):
                source["warning"] = snap.details["warning"]
        out: dict[str, Any] = {
            "instance": self.cfg.instance, "namespace": self.cfg.namespace,
            "app": self.cfg.app_name, "time": now_rfc3339(),
            "leader": {"isLeader": self.is_leader(), "identity": self.elector.identity
                       if self.elector else "self", "holder": self.leader_identity()},
            # The revision applied last, kept while later passes fail (a Git outage).
            "source": {**source, "revision": self.revision()},
            "eventStore": {**store_location(self.cfg, self.database.dialect), "status": "ok"}
            if self.event_store_problem is None else
            {"status": "degraded", **self.event_store_problem.to_dict()},
            "loop": {"interval": self.cfg.loop.interval, "passes": self.loop.passes,
                     "consecutiveFailures": self.loop.failures},
        }
        if self.shards is not None:  # which shard Leases this replica holds, and for whom
            out["shards"] = {"count": self.cfg.leader.shards, "held": self.shards.held(),
                             "instances": sum(1 for k in self.instance_keys()
                                              if k != self.own_key and self.shards.owns(k))}
        if last is not None:
            out["lastPass"] = {"operation": last.operation, "trigger": last.trigger,
                               "time": last.started, "duration": round(last.duration, 4),
                               "result": "success" if last.ok else "failed",
                               "revision": last.revision, "counts": last.results.counts()}
            if last.suspended:  # what waits for a resume, drift included
                out["lastPass"].update(suspended=True, pending=last.pending())
            if last.error:
                out["lastPass"]["error"] = last.error.to_dict()
        return out


def store_location(cfg: Config, kind: str) -> dict[str, Any]:
    """Where the events, history and operations are kept, as /api/status shows it: the
    SQLite file, or the shared database's URL without credentials."""
    url = cfg.store.url
    if kind == "sqlite":
        return {"kind": kind, "path": url.removeprefix("sqlite://") if url
                else str(cfg.events.path)}
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = (f"{parts.username}@" if parts.username else "") + \
        (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return {"kind": kind, "url": urlunsplit((parts.scheme, netloc, parts.path, "", ""))}


__all__ = ["Controller"]
