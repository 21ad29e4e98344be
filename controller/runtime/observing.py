"""The watched state of one app instance, and its services' health, answered from memory.

Health endpoints and waits must cost no API request per call and follow a change within
seconds, so the monitor follows everything health depends on through the process's live
cache (adapters/cache.py: the same watched sets a pass plans from, so the two never
disagree about an object) and computes health with the pure rules in `controller.model.health`:

- the DeploymentParameters object: its status inventory says which objects each service
  owns (and so which kinds and namespaces to watch), its annotation which services are down;
- our objects, one labelled watch per (apiVersion, kind, namespace) in the inventory, or
  passed to `track` by the controller after each pass;
- Pods and ReplicaSets in the namespaces our workloads live in: they carry none of our
  labels, so they are linked to their workload through ownerReferences (Pod -> ReplicaSet ->
  Deployment; Pod -> StatefulSet, DaemonSet or Job).

Forbidden (403) answers, to the engine's requests or to the cache's lists, are kept as
RBAC problems of the services they concern. One lock (a Condition, notified on every
change) guards all of it; `wait` sleeps on it rather than polling.

Readers do not compute: every change moves a version, and the health of every service at
that version is computed once into an immutable `_View` that readers take as it is,
without the lock, until the next change (or until an unschedulable pod passes its
threshold, the one change time alone makes). The monitor publishes the view itself when
something changes (`_publish`, in the thread that made the change), so the API's event
loop finds it current and answers from it without a lock or a thread (`services_now`);
at most one view per `PUBLISH_GAP` is computed that way, so a burst of watch events (the
first apply of hundreds of objects) costs a few computations, not one per event, and a
change the burst left unpublished is computed by the next reader that needs it
(`services`, on the API's pool). Only a monitor an event loop has read publishes: the
others' views are computed when read (their health reporter's round).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from controller.adapters.cache import LiveCache
from controller.adapters.kube import Body, Kube, KubeError
from controller.adapters.sources.resource import API_VERSION, KIND, ParametersResource
from controller.adapters.watching import Handler, Selector
from controller.config import Config
from controller.errors import NotFoundError
from controller.model import instance
from controller.model.health import (
    DEFAULT_PENDING_THRESHOLD,
    PROGRESSING,
    UNHEALTHY,
    UNKNOWN,
    ObjectHealth,
    ServiceHealth,
    aggregate,
    assess,
    parse_forbidden,
    rbac_problem,
    unschedulable_deadline,
)
from controller.model.instance import InventoryEntry
from controller.model.objects import LABEL_SERVICE, SHARED_SERVICE, ObjectKey
from controller.model.planning import PlannedChange
from controller.model.times import rfc3339
from controller.reconcile.applying import ObjectResult, selector

log = logging.getLogger(__name__)

# Kinds whose pods are watched for fail-fast reasons (ImagePullBackOff, ...).
WORKLOAD_KINDS = frozenset({("apps", "Deployment"), ("apps", "StatefulSet"),
                            ("apps", "DaemonSet"), ("apps", "ReplicaSet"), ("batch", "Job")})
REVISION = "deployment.kubernetes.io/revision"
# Server-side apply is a PATCH; pruning a DELETE (for a 403 whose message names no verb).
_VERBS = {"create": "patch", "update": "patch", "prune": "delete"}
_ENGINE = "engine"
# Seconds between two views published by the changing thread (see the module docstring).
PUBLISH_GAP = 0.05


@dataclass(frozen=True)
class _Watch:
    """One mirrored set: our labelled objects of a kind, or all Pods/ReplicaSets (`ours`
    False) of a namespace."""

    api_version: str
    kind: str
    namespace: str
    ours: bool


@dataclass(frozen=True)
class _Forbidden:
    where: str  # the resource key shown among the service's failing objects
    verb: str
    resource: str
    message: str
    service: str  # "" = every service with objects in `namespace` ("" = everywhere)
    namespace: str


@dataclass(frozen=True)
class _View:
    """Every known service's health as computed at one version: what readers take."""

    version: int
    until: datetime  # when time alone changes it (an unschedulable pod's threshold)
    synced: bool
    known: frozenset[str]
    services: Mapping[str, ServiceHealth]
    objects: Mapping[str, tuple[tuple[ObjectKey, ObjectHealth], ...]]
    listing: tuple[ServiceHealth, ...]  # `services()`: the known ones but shared, by name


class HealthMonitor:
    """Health of one app instance's services from watched state; `start()` it first."""

    def __init__(self, kube: Kube, cfg: Config, *,
                 pending_threshold: float = DEFAULT_PENDING_THRESHOLD,
                 clock: Callable[[], datetime] | None = None,
                 live: LiveCache | None = None, publish_gap: float = PUBLISH_GAP) -> None:
        self.kube = kube
        self.cfg = cfg
        # The process's cache (the controller's); a monitor used alone has its own.
        self._own_cache = live is None
        self._live = live or LiveCache(kube)
        self.pending_threshold = pending_threshold
        self._clock = clock or (lambda: datetime.now(UTC))
        self._selector = selector(cfg)
        self._resource = ParametersResource(kube, cfg)
        self._cond = threading.Condition()  # the one lock; notified on every change
        self._instance: Handler | None = None  # our subscription to the instances' set
        self._reflectors: dict[_Watch, Handler] = {}  # our subscription to each set
        self._listed: set[_Watch] = set()  # sets whose objects we have received
        self._ours: dict[ObjectKey, Body] = {}  # our labelled objects
        self._related: dict[ObjectKey, Body] = {}  # Pods and ReplicaSets
        self._by_uid: dict[str, Body] = {}  # both, to follow ownerReferences
        self._inventory: dict[ObjectKey, InventoryEntry] = {}
        self._down: frozenset[str] = frozenset()
        self._known: frozenset[str] = frozenset()
        self._instance_synced = False
        self._started = self._clock()
        self._changed: dict[str, datetime] = {}  # service -> last change of its inputs
        # service -> (result signature, input stamp it was computed at, its lastChecked)
        self._memo: dict[str, tuple[Any, datetime, datetime]] = {}
        self._forbidden: dict[str, list[_Forbidden]] = {}  # by origin
        self._stopped = False
        self._version = 0  # moves on every change: what `wait_changed` followers compare
        self._view: _View | None = None  # the health at a version, for readers (lock-free)
        self._publish_gap = publish_gap
        self._published = -publish_gap  # time.monotonic() of the last `_publish`
        # Whether an event loop reads this monitor (`services_now`): only then is a view
        # published on each change; the API's loop reads only the controller's own
        # instance, and computing 1,000 instances' views on every watch event was CPU
        # taken from their cold start (bench_scale).
        self._served = False

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> HealthMonitor:
        """Follow the DeploymentParameters object (the cache watches every instance's in
        the namespace once); object watches follow its inventory."""
        def on_instance(kind: str, obj: Body) -> None:
            if kind == "SYNCED" or (obj.get("metadata") or {}).get("name") == \
                    self.cfg.instance:
                self._on_instance(kind, obj)

        self._instance = on_instance
        self._live.subscribe(_instances(self.cfg), on_instance)
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            subscriptions = list(self._reflectors.items())
            self._notify()
        for watch, handler in subscriptions:
            self._live.watch(_selector(watch, self._selector)).unsubscribe(handler)
        if self._instance is not None:
            self._live.watch(_instances(self.cfg)).unsubscribe(self._instance)
        if self._own_cache:
            self._live.stop()

    def wait_synced(self, timeout: float) -> bool:
        """Block until the DeploymentParameters object has been listed (so its services are
        known); False at `timeout`. For a monitor started on demand, before its first answer."""
        with self._cond:
            return self._cond.wait_for(lambda: self._instance_synced or self._stopped, timeout)

    def track(self, keys: Iterable[tuple[ObjectKey, str]]) -> None:
        """Watch these objects' (apiVersion, kind, namespace), and their workloads' pods.

        `keys` are (key, apiVersion) pairs, e.g. from the inventory or a pass's plan. Only
        new pairs start a watch; existing ones keep running.
        """
        new: list[tuple[_Watch, Handler]] = []
        with self._cond:
            if self._stopped:
                return
            for watch in sorted(_watches(keys), key=str):
                if watch not in self._reflectors:
                    self._reflectors[watch] = self._handler(watch)
                    new.append((watch, self._reflectors[watch]))
        # Outside the lock: a subscription hands over the set's objects under the set's
        # lock, and the set's thread holds that lock while it waits for ours.
        for watch, handler in new:
            self._live.subscribe(_selector(watch, self._selector), handler,
                                 self._list_handler(watch))

    def after_pass(self, changes: Iterable[PlannedChange], results: Iterable[ObjectResult],
                   error: BaseException | None = None) -> None:
        """After a pass: watch what it planned; its 403s replace the previous pass's."""
        self.track((c.key, c.api_version) for c in changes)
        found = []
        for r in results:
            err = r.error or {}
            if r.outcome == "failed" and err.get("status") == 403:
                message = str(err.get("message", ""))
                verb, resource = parse_forbidden(message) or (
                    _VERBS.get(r.action, r.action or "patch"), r.key.kind)
                found.append(_Forbidden(str(r.key), verb, resource, message, r.service,
                                        r.key.namespace))
        if isinstance(error, KubeError) and error.status == 403:
            verb, resource = parse_forbidden(error.message) or ("access", "the API")
            found.append(_Forbidden(f"-/{resource}", verb, resource, error.message, "", ""))
        with self._cond:
            if self._forbidden.get(_ENGINE, []) == found:
                return  # a pass that changed nothing here is no news for lastChecked
            self._forbidden[_ENGINE] = found
            self._touch(self._known)
            self._notify()

    def record_forbidden(self, verb: str, resource: str, message: str, *, service: str = "",
                         namespace: str = "") -> None:
        """Report a 403 as an RBAC problem of `service` (or of every service with objects in
        `namespace`; "" for both means all). Kept until the next `after_pass`."""
        with self._cond:
            self._forbidden.setdefault(_ENGINE, []).append(
                _Forbidden(f"{namespace or '-'}/{resource}", verb, resource, message, service,
                           namespace))
            self._touch(self._known)
            self._notify()

    # -- reading ------------------------------------------------------------------------------

    def services(self) -> list[ServiceHealth]:
        """Every known service (shared objects excluded), by name."""
        return list(self._current().listing)

    def services_now(self) -> tuple[ServiceHealth, ...] | None:
        """`services()` as published, without the lock and without computing anything:
        what an event loop may call. None when the published view is not the current one
        (a change since that no one computed yet, or time made it stale) or the instance
        has not been listed yet: then ask `services()`, which may compute or wait."""
        self._served = True  # from now on, changes publish (the first answer may be None)
        view = self._view
        if view is None or not view.synced or view.version != self._version or \
                self._clock() >= view.until:
            return None
        return view.listing

    def service(self, name: str) -> ServiceHealth:
        """One service's health; NotFoundError for a service the instance does not have."""
        view = self._current()
        if name not in view.services:
            self._check_known(name, view)
            return self._not_observed(name)
        return view.services[name]

    def objects(self, service: str) -> list[tuple[ObjectKey, ObjectHealth]]:
        """The health of each of a service's objects (`_shared` for the shared ones)."""
        view = self._current()
        self._check_known(service, view)
        return list(view.objects.get(service, ()))

    def _current(self) -> _View:
        """The view of the current version: taken as it is when nothing changed since it
        was computed (no lock), else computed once, under the lock, for everyone."""
        view = self._view
        if view is not None and view.version == self._version and \
                self._clock() < view.until:
            return view
        with self._cond:
            view = self._view
            now = self._clock()
            if view is not None and view.version == self._version and now < view.until:
                return view
            children = self._children()
            known = self._known
            names = known | {SHARED_SERVICE}
            services = {n: self._health(n, now, children) for n in names}
            objects = {n: tuple(self._objects(n, now, children)) for n in names} \
                if self._instance_synced else {}
            listing = tuple(services[n] for n in sorted(known - {SHARED_SERVICE}))
            view = _View(self._version, now + timedelta(seconds=self._next_deadline(now)),
                         self._instance_synced, known, services, objects, listing)
            self._view = view
            return view

    @property
    def synced(self) -> bool:
        """Whether the DeploymentParameters object has been listed (services are known)."""
        return self._instance_synced

    def wait_changed(self, version: int, timeout: float) -> int:
        """Block until anything health depends on changed after `version` (or `timeout`,
        or the soonest time-based change, an unschedulable pod passing its threshold);
        returns the current version. Start with 0."""
        with self._cond:
            if self._version == version and not self._stopped:
                self._cond.wait(min(timeout, self._next_deadline(self._clock())))
            return self._version

    def nudge(self) -> None:
        """Wake `wait_changed` followers as if something changed (a pass wrote status)."""
        with self._cond:
            self._notify()

    def managed_owner(self, namespace: str, kind: str, name: str,
                      uid: str = "") -> tuple[ObjectKey, str] | None:
        """Our object that this object is, or that controls it (Pod -> ReplicaSet ->
        Deployment; a Job's, StatefulSet's or DaemonSet's Pod), with its service: whom a
        Kubernetes Event about a child belongs to. None when the watched state does not
        link it to one of ours."""
        with self._cond:
            obj = self._by_uid.get(uid) if uid else None
            if obj is None:
                for store in (self._ours, self._related):
                    obj = next((o for k, o in store.items() if k.namespace == namespace
                                and k.kind == kind and k.name == name), None)
                    if obj is not None:
                        break
            for _ in range(4):  # the object itself, then up to 3 owners
                if obj is None:
                    return None
                key = ObjectKey.of(obj)
                if key in self._ours:
                    service = _service_label(obj)
                    return (key, service) if service is not None else None
                obj = self._by_uid.get(_controller_uid(obj))
            return None

    def wait(self, services: Iterable[str] = (), timeout: float = 300.0, *,
             fail_fast: bool = True) -> dict[str, ServiceHealth]:
        """Block until the services (all deployed ones if none are named) are settled:
        healthy, or suspended (a paused Deployment does not change by waiting).

        Returns each one's health when they all are, at `timeout`, or — with `fail_fast` —
        as soon as one is unhealthy; callers read which are not healthy, and why, from the
        result. Wakes on every watched change, and when an unschedulable pod's threshold
        passes.
        """
        names = list(services)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now, children = self._clock(), self._children()
                wanted = names or sorted(self._known - self._down - {SHARED_SERVICE})
                for name in wanted:
                    self._check_known(name)
                result = {n: self._health(n, now, children) for n in wanted}
                if self._instance_synced and all(h.settled for h in result.values()):
                    return result
                if fail_fast and any(h.status == UNHEALTHY for h in result.values()):
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopped:
                    return result
                self._cond.wait(min(remaining, self._next_deadline(now)))

    # -- watch events (reflector threads) -------------------------------------------------------

    def _handler(self, watch: _Watch) -> Handler:
        return lambda kind, obj: self._on_object(watch, kind, obj)

    def _list_handler(self, watch: _Watch) -> Callable[[KubeError | None], None]:
        return lambda error: self._on_list(watch, error)

    def _on_instance(self, kind: str, obj: Body) -> None:
        if kind == "SYNCED":
            with self._cond:
                self._instance_synced = True
                self._touch(self._known)
                self._notify()
            return
        inventory: dict[ObjectKey, InventoryEntry] = {}
        down: frozenset[str] = frozenset()
        known: frozenset[str] = frozenset()
        if kind != "DELETED":
            inventory = instance.inventory(obj)  # model/instance.py: the one parser
            down = self._resource.down_services(obj)
            known = (frozenset((obj.get("status") or {}).get("services") or {})
                     | {e.service for e in inventory.values()} | down)
        with self._cond:
            before = {s: self._inputs(s, self._inventory, self._down)
                      for s in self._known | known}
            self._inventory, self._down, self._known = inventory, down, known
            self._touch({s for s, old in before.items()
                         if old != self._inputs(s, inventory, down)})
            self._notify()
        self.track((k, e.api_version) for k, e in inventory.items())

    def _on_object(self, watch: _Watch, kind: str, obj: Body) -> None:
        with self._cond:
            if self._stopped or watch not in self._reflectors:
                return
            if kind == "SYNCED":
                self._listed.add(watch)
                self._touch({e.service for k, e in self._inventory.items()
                             if not watch.namespace or k.namespace == watch.namespace})
            else:
                store = self._ours if watch.ours else self._related
                key = ObjectKey.of(obj)
                uid = str((obj.get("metadata") or {}).get("uid") or "")
                if kind == "DELETED":
                    store.pop(key, None)
                    if uid and key not in self._ours and key not in self._related:
                        self._by_uid.pop(uid, None)
                else:
                    store[key] = obj
                    if uid:
                        self._by_uid[uid] = obj
                service = _service_label(obj) if watch.ours else self._owner_service(obj)
                if service is not None:
                    self._touch({service})
                elif not watch.ours and kind != "DELETED":
                    # Another instance's Pod or ReplicaSet (the namespace's sets are shared):
                    # kept, should it turn out ours, but no news for this instance's health.
                    # With 10 instances a namespace, every Pod change recomputed 10 views.
                    # (A deletion still wakes: its owner may have gone first.)
                    return
            self._notify()

    def _on_list(self, watch: _Watch, error: KubeError | None) -> None:
        origin = f"watch:{watch}"
        with self._cond:
            had = bool(self._forbidden.get(origin))
            if error is None:
                self._forbidden.pop(origin, None)
            else:
                verb, resource = parse_forbidden(error.message) or ("list", watch.kind)
                self._forbidden[origin] = [_Forbidden(
                    f"{watch.namespace or '-'}/{watch.kind}", verb, resource, error.message,
                    "", watch.namespace)]
            if had or error is not None:
                self._touch(self._known)
                self._notify()

    # -- computing (under the lock) --------------------------------------------------------------

    def _health(self, name: str, now: datetime,
                children: Mapping[str, list[Body]]) -> ServiceHealth:
        if not self._instance_synced:
            return self._not_observed(name)
        keys = self._keys(name)
        pairs = [(str(k), h) for k, h in self._objects(name, now, children)]
        forbidden = self._forbidden_for(name, keys)
        pairs += [(f.where, rbac_problem(f.verb, f.resource, f.message)) for f in forbidden]
        # A service whose objects the API server refused to create (RBAC, before anything
        # was applied) is wanted, not "not deployed": its problems say why it is missing.
        deployed = name not in self._down and (bool(keys) or bool(forbidden))
        result = aggregate(name, _namespace(keys, self.cfg.default_namespace), pairs,
                           deployed=deployed, last_checked="")
        return replace(result, last_checked=rfc3339(self._last_checked(name, result, now)))

    def _objects(self, name: str, now: datetime,
                 children: Mapping[str, list[Body]]) -> list[tuple[ObjectKey, ObjectHealth]]:
        out = []
        for key in sorted(self._keys(name)):
            obj = self._ours.get(key)
            if obj is None:
                out.append((key, self._missing(key)))
            else:
                out.append((key, assess(obj, _pods_of(obj, children), now=now,
                                        pending_threshold=self.pending_threshold)))
        return out

    def _check_known(self, name: str, view: _View | None = None) -> None:
        """Unknown names are an error once the instance is seen (until then: unknown)."""
        synced, known = (view.synced, view.known) if view else (self._instance_synced,
                                                                self._known)
        if synced and name not in known:
            raise NotFoundError(f"unknown service: {name}",
                                {"service": name,
                                 "available": sorted(known - {SHARED_SERVICE})})

    def _not_observed(self, name: str) -> ServiceHealth:
        return ServiceHealth(name, self.cfg.default_namespace, UNKNOWN,
                             rfc3339(self._started), "NotObserved",
                             "the app instance has not been observed yet")

    def _keys(self, name: str) -> set[ObjectKey]:
        keys = {k for k, e in self._inventory.items() if e.service == name}
        keys |= {k for k, o in self._ours.items() if _service_label(o) == name}
        return keys

    def _missing(self, key: ObjectKey) -> ObjectHealth:
        entry = self._inventory.get(key)
        if entry is None or _Watch(entry.api_version, key.kind, key.namespace,
                                   True) not in self._listed:
            return ObjectHealth(UNKNOWN, "NotObserved", "not observed yet")
        return ObjectHealth(PROGRESSING, "NotFound",
                            "not in the cluster: not created yet, or deleted (the next pass "
                            "creates it)")

    def _forbidden_for(self, name: str, keys: set[ObjectKey]) -> list[_Forbidden]:
        namespaces = {k.namespace for k in keys}
        return [f for records in self._forbidden.values() for f in records
                if f.service in (name, SHARED_SERVICE)
                or (not f.service and (not f.namespace or f.namespace in namespaces))]

    def _last_checked(self, name: str, result: ServiceHealth, now: datetime) -> datetime:
        """When the service's inputs last changed; or, when its health changed with no event
        (a pending pod passed its threshold), when that was computed."""
        signature = (result.status, result.reason, result.message, result.hint,
                     tuple((k, h.status, h.reason, h.message) for k, h in result.failing))
        stamp = self._changed.get(name, self._started)
        memo = self._memo.get(name)
        if memo is None or memo[1] != stamp:
            checked = stamp
        elif memo[0] != signature:
            checked = now
        else:
            checked = memo[2]
        self._memo[name] = (signature, stamp, checked)
        return checked

    def _inputs(self, name: str, inventory: Mapping[ObjectKey, InventoryEntry],
                down: frozenset[str]) -> tuple[bool, frozenset[ObjectKey]]:
        return name in down, frozenset(k for k, e in inventory.items() if e.service == name)

    def _notify(self) -> None:
        """Under the lock: wake `wait` and `wait_changed`, publish the new view."""
        self._version += 1
        self._cond.notify_all()
        self._publish()

    def _publish(self) -> None:
        """Under the lock: compute the current view now, for readers that must not wait
        (`services_now`, once one has asked); at most once per PUBLISH_GAP (the module
        docstring says why)."""
        now = time.monotonic()
        if self._stopped or not self._served or now - self._published < self._publish_gap:
            return
        self._published = now
        self._current()

    def _touch(self, services: Iterable[str]) -> None:
        now = self._clock()
        for name in services:
            self._changed[name] = now

    def _owner_service(self, obj: Body) -> str | None:
        """The service of the object of ours that controls `obj` (up to 3 owners up)."""
        for _ in range(3):
            parent = self._by_uid.get(_controller_uid(obj))
            if parent is None:
                return None
            if ObjectKey.of(parent) in self._ours:
                return _service_label(parent)
            obj = parent
        return None

    def _children(self) -> dict[str, list[Body]]:
        """Pods and ReplicaSets by the uid of the object that controls them."""
        out: dict[str, list[Body]] = {}
        for obj in self._related.values():
            owner = _controller_uid(obj)
            if owner:
                out.setdefault(owner, []).append(obj)
        return out

    def _next_deadline(self, now: datetime) -> float:
        """Seconds until the next unschedulable pod turns unhealthy (an hour if none)."""
        soonest = 3600.0
        for obj in self._related.values():
            if obj.get("kind") == "Pod":
                deadline = unschedulable_deadline(obj, self.pending_threshold)
                if deadline is not None and deadline > now:
                    soonest = min(soonest, (deadline - now).total_seconds() + 0.05)
        return soonest


def _watches(keys: Iterable[tuple[ObjectKey, str]]) -> set[_Watch]:
    out = set()
    for key, api_version in keys:
        out.add(_Watch(api_version, key.kind, key.namespace, True))
        if key.namespace and (key.group, key.kind) in WORKLOAD_KINDS:
            out.add(_Watch("v1", "Pod", key.namespace, False))
        if key.namespace and (key.group, key.kind) == ("apps", "Deployment"):
            out.add(_Watch("apps/v1", "ReplicaSet", key.namespace, False))
    return out


def _selector(watch: _Watch, ours: str) -> Selector:
    """The cache's set for a watch: our labelled objects, or all Pods/ReplicaSets."""
    return Selector(watch.api_version, watch.kind, watch.namespace, ours if watch.ours else "")


def _instances(cfg: Config) -> Selector:
    """Every DeploymentParameters object of the namespace: one set for all instances."""
    return Selector(API_VERSION, KIND, cfg.namespace)


def _pods_of(obj: Body, children: Mapping[str, list[Body]]) -> list[Body]:
    """A workload's current pods: a Deployment's are those of its newest ReplicaSet, since
    an old revision's failing pods are what a rollout is replacing."""
    group = str(obj.get("apiVersion", "")).rpartition("/")[0]
    kind = str(obj.get("kind", ""))
    if (group, kind) not in WORKLOAD_KINDS:
        return []
    uid = str((obj.get("metadata") or {}).get("uid") or "")
    owned = children.get(uid, [])
    if kind != "Deployment":
        return [p for p in owned if p.get("kind") == "Pod"]
    revision = _annotations(obj).get(REVISION)
    current = [rs for rs in owned if rs.get("kind") == "ReplicaSet"
               and (revision is None or _annotations(rs).get(REVISION) == revision)]
    return [p for rs in current
            for p in children.get(str(rs["metadata"].get("uid") or ""), [])
            if p.get("kind") == "Pod"]


def _service_label(obj: Body) -> str | None:
    """Our service label (`_shared` for the empty one); None when the object has none."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    if LABEL_SERVICE not in labels:
        return None
    return str(labels[LABEL_SERVICE]) or SHARED_SERVICE


def _controller_uid(obj: Body) -> str:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid") or "")
    return ""


def _annotations(obj: Body) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def _namespace(keys: Iterable[ObjectKey], default: str) -> str:
    """Where a service lives: the namespace most of its namespaced objects are in."""
    counts = Counter(k.namespace for k in keys if k.namespace)
    return counts.most_common(1)[0][0] if counts else default


__all__ = ["HealthMonitor"]
