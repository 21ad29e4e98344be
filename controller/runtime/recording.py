"""What the engines report, and Kubernetes Events in and out.

Each engine has its own sink of typed pass events (reconcile/passes.py); `PassRecorder` is
that sink: it stores each event in the event store under the event's instance (its
namespace and name: two instances of one name in two namespaces are two) and, on the
leader, posts the noteworthy ones as Kubernetes Events on *that instance's*
DeploymentParameters object (what `kubectl describe` shows). Every event names its pass, so
nothing here tracks a "current pass": passes of one engine, or of several instances, may
interleave. `describe` is the one mapping from a pass event to what is stored and shown.

Incoming: one Event watch per namespace the app has objects in (namespaces are learned
from each pass); an Event is kept when it is about an object we applied, or about one of
its children: a kubelet's pull failures are about Pods, a Deployment's rollout about
ReplicaSets. A child's Event is stored under the managed object that owns it (followed
through ownerReferences in the health monitor's watched state: Pod -> ReplicaSet ->
Deployment, a Job's Pod -> Job), with the child named in its details, so the events of
`Deployment/frontend` show why its Pods fail. A child the watched state does not know yet
(its Event can arrive first) is matched by name to a workload of ours. Objects are
tracked per instance, so an Event is stored under the instance whose object it concerns.
Outgoing: only passes that changed or failed something post an Event, and a repeat of the
previous one (per instance) is skipped, so a quiet pass still writes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controller.adapters.cache import LiveCache
from controller.adapters.kube import Body, Kube, KubeError, acting_for
from controller.adapters.store.events import STORE_ERRORS, Event, EventStore, resource_key
from controller.adapters.watching import Selector
from controller.errors import ConductorError
from controller.model.instance import object_ref
from controller.model.objects import ObjectKey
from controller.model.times import now_ms, now_rfc3339, parse_time
from controller.reconcile.passes import (
    Notice,
    ObjectDone,
    Pass,
    PassEvent,
    PassFinished,
    PassStarted,
)

log = logging.getLogger(__name__)

# Events waiting to be posted at most; past it the newest are dropped (logged): Events are
# for `kubectl describe`, the event store keeps the record.
OUTBOX = 1000
WORKLOADS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet",
                       "CronJob"})
# (namespace, kind, name, uid) -> our object and its service, or None (HealthMonitor's).
OwnerLookup = Callable[[str, str, str, str], "tuple[ObjectKey, str] | None"]


@dataclass(frozen=True)
class Described:
    """A pass event as the event store keeps it (and a Kubernetes Event shows it)."""

    type: str  # info | success | warning | error
    reason: str
    message: str
    instance: str
    resource: str = ""
    service: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)
    post: bool = False  # worth a Kubernetes Event: a pass's end that changed or failed
    namespace: str = ""  # the instance's namespace


def _pass_service(p: Pass) -> str:
    """An operation on one named service files its pass events under that service."""
    return p.services[0] if len(p.services) == 1 else ""


def describe(event: PassEvent) -> Described | None:
    """What is stored for `event`; None for what is not worth keeping.

    Unchanged and kept objects are not recorded: every pass reports them, and they would
    soon be all the store holds. Dry runs (`plan`) record their start and end but no object
    results, since nothing was applied.
    """
    p = event.pass_
    if isinstance(event, PassStarted):
        return Described("info", "PassStarted", f"{p.operation} started ({p.trigger})",
                         p.instance, service=_pass_service(p),
                         details={"operation": p.operation, "trigger": p.trigger,
                                  "revision": event.revision, "services": list(p.services)},
                         namespace=p.namespace)
    if isinstance(event, PassFinished):
        return _finished(event)
    if isinstance(event, Notice):
        return Described(event.type, event.reason, event.message, p.instance,
                         details=dict(event.details), post=True, namespace=p.namespace)
    return _object(event)


def _finished(event: PassFinished) -> Described:
    p, counts = event.pass_, dict(event.counts)
    fields = {"operation": p.operation, "trigger": p.trigger, "revision": event.revision}
    name = p.operation.capitalize()
    service = _pass_service(p)
    changed = any(counts.get(k) for k in ("applied", "deleted", "failed"))
    if event.error is not None:
        return Described("error", f"{name}Failed",
                         f"{p.operation} failed: {event.error.message}", p.instance,
                         service=service, details={**event.error.to_dict(), **fields},
                         post=True, namespace=p.namespace)
    if counts.get("failed"):
        return Described("error", f"{name}Failed",
                         f"{p.operation}: {counts['failed']} object(s) failed", p.instance,
                         service=service, details={"counts": counts, **fields}, post=True,
                         namespace=p.namespace)
    return Described("success", f"{name}Succeeded",
                     f"{p.operation} finished in {event.duration:.2f}s", p.instance,
                     service=service, details={"counts": counts, **fields},
                     post=changed and p.operation != "plan", namespace=p.namespace)


def _object(event: ObjectDone) -> Described | None:
    p, result = event.pass_, event.result
    if result.outcome in ("unchanged", "kept") or p.operation == "plan" or \
            result.body is not None:
        return None  # a body is only kept on a dry-run answer
    resource = str(result.key)
    details: dict[str, Any] = {"action": result.action, "operation": p.operation}
    if result.reason:
        details["planReason"] = result.reason
    what = f"{result.key.kind} {result.key.name}"
    if result.outcome == "failed":
        err = result.error or {}
        details["error"] = err
        deleting = result.action in ("prune", "delete")
        return Described("error", "DeleteFailed" if deleting else "ApplyFailed",
                         f"{'delete' if deleting else 'apply'} {what} failed: "
                         f"{err.get('message', 'unknown error')}", p.instance,
                         resource, result.service, details, namespace=p.namespace)
    if result.outcome == "applied":
        reason = {"create": "Created", "update": "Updated"}.get(result.action, "Applied")
        return Described("success", reason, f"{what} {reason.lower()}", p.instance,
                         resource, result.service, details, namespace=p.namespace)
    if result.outcome == "deleted":
        # `down` deletes on request; any other pass prunes what is no longer rendered.
        reason = "Pruned" if result.action == "prune" and p.operation != "down" else "Deleted"
        return Described("success", reason, f"{what} {reason.lower()}", p.instance,
                         resource, result.service, details, namespace=p.namespace)
    return None


class EngineRecorder:
    """Writes what the engines and the cluster report into the event store.

    A failure to record is logged, never raised: the event store must not break a
    reconcile pass.
    """

    def __init__(self, store: EventStore,
                 service_of: Callable[[str], str] | None = None) -> None:
        self.store = store
        self.service_of = service_of  # resource key -> service, when an event names none

    def record(self, event: Described) -> None:
        try:
            service = event.service or (self._service(event.resource) if event.resource
                                        else "")
            self.store.add(event.type, event.message, reason=event.reason,
                           resource=event.resource, service=service,
                           instance=event.instance, namespace=event.namespace,
                           details=event.details)
        except Exception as e:
            self._failed(f"event {event.reason}", e)

    def note(self, type_: str, reason: str, message: str, details: Mapping[str, Any],
             instance: str, namespace: str = "") -> None:
        """An event from outside any pass (a Git warning, an unusable event store)."""
        self.record(Described(type_, reason, message, instance,
                              details=details if isinstance(details, Mapping) else {},
                              namespace=namespace))

    def on_kube_event(self, body: Mapping[str, Any], *, resource: str | None = None,
                      service: str | None = None, instance: str = "",
                      namespace: str = "") -> Event | None:
        """A watched Kubernetes Event (ADDED or MODIFIED) of a managed object, or of a
        child filed under the managed `resource` that owns it; None when it was already
        stored, or could not be (logged)."""
        try:
            inv = body.get("involvedObject") or body.get("regarding") or {}
            key = resource or resource_key(str(inv.get("namespace") or ""),
                                           str(inv.get("kind") or ""),
                                           str(inv.get("name") or ""))
            return self.store.record_kube_event(
                body, service=self._service(key) if service is None else service,
                resource=key, instance=instance, namespace=namespace)
        except Exception as e:
            self._failed("a Kubernetes Event", e)
            return None

    def _service(self, resource: str) -> str:
        if self.service_of is None:
            return ""
        try:
            return self.service_of(resource) or ""
        except Exception as e:  # a lookup bug must not lose the event
            log.warning("service_of(%s) failed: %s", resource, e)
            return ""

    @staticmethod
    def _failed(what: str, e: Exception) -> None:
        expected = isinstance(e, (ConductorError, *STORE_ERRORS))  # closed, invalid, disk
        log.warning("cannot record %s: %s", what, e, exc_info=not expected)


class PassRecorder:
    """One engine's sink (reconcile/passes.py): logs, stores and, on the leader, posts
    its pass events on that engine's own DeploymentParameters object."""

    def __init__(self, recorder: EngineRecorder, kube_events: KubeEvents | None = None,
                 is_leader: Callable[[], bool] = lambda: True) -> None:
        self.recorder = recorder
        self.kube_events = kube_events
        self.is_leader = is_leader

    def __call__(self, event: PassEvent) -> None:
        try:
            described = describe(event)
        except Exception:  # a mapping bug must not break a pass
            log.exception("cannot describe %r", event)
            return
        if described is None:
            return
        if not isinstance(event, ObjectDone):
            p = event.pass_
            log.log(logging.ERROR if described.type == "error" else logging.INFO, "%s: %s",
                    described.reason, described.message,
                    extra={"reason": described.reason, "operation": p.operation,
                           "trigger": p.trigger, "instance": p.instance,
                           **({"revision": event.revision}
                              if isinstance(event, PassStarted | PassFinished) else {})})
        self.recorder.record(described)
        if described.post and self.kube_events is not None and self.is_leader():
            self.kube_events.post(described.type, described.reason, described.message,
                                  described.details, instance=event.pass_.instance,
                                  namespace=event.pass_.namespace)


class KubeEvents:
    """The cluster's Events about one instance's objects in, Events about any instance's
    DeploymentParameters object out."""

    def __init__(self, kube: Kube, recorder: EngineRecorder, namespace: str,
                 instance: str, live: LiveCache | None = None) -> None:
        self.kube = kube
        self.recorder = recorder
        self.namespace = namespace
        self.instance = instance
        # Events come from the process's live cache (one watch per namespace, shared).
        self._own_cache = live is None
        self.live = live or LiveCache(kube)
        self._watches: dict[str, Callable[[str, Body], None]] = {}  # namespace -> handler
        # resource key -> (service, the instance it is of: (namespace, name))
        self._ours: dict[str, tuple[str, tuple[str, str]]] = {}
        # (namespace, name) -> (resource key, service)
        self._workloads: dict[tuple[str, str], tuple[str, str]] = {}
        self._lock = threading.Lock()
        # (namespace, instance) -> the last (reason, message) posted on that object
        self._last_posted: dict[tuple[str, str], tuple[str, str]] = {}
        # Posted by one thread of their own (started with the first): a pass does not wait
        # for its Event's round trip (1,000 instances' first passes: 1,000 of them).
        self._outbox: queue.Queue[tuple[tuple[str, str], tuple[str, str], Body] | None] = \
            queue.Queue(OUTBOX)
        self._poster: threading.Thread | None = None
        self.owner_of: OwnerLookup | None = None  # set by the controller (HealthMonitor)
        # Events a namespace's first list finds are news when seen after this (a first
        # deploy's Pod failures happen before its namespace's watch starts); older ones
        # are history (the store de-duplicates by uid either way).
        self._since_ms = now_ms()

    # -- incoming -------------------------------------------------------------------------

    def track(self, objects: Iterable[tuple[ObjectKey, str]],
              instance: tuple[str, str] | None = None) -> None:
        """Learn an instance's objects (key, service), by default this controller's own
        instance's, and watch Events in their namespaces."""
        of = instance or (self.namespace, self.instance)
        new_namespaces = set()
        with self._lock:
            for key, service in objects:
                self._ours[str(key)] = (service, of)
                if key.kind in WORKLOADS:
                    self._workloads[(key.namespace, key.name)] = (str(key), service)
                if key.namespace and key.namespace not in self._watches:
                    new_namespaces.add(key.namespace)
            for ns in new_namespaces:
                self._watches[ns] = self._handler()
            handlers = {ns: self._watches[ns] for ns in new_namespaces}
        # Outside the lock: the set hands over its Events (under its own lock) to a handler
        # that takes ours.
        for ns, handler in handlers.items():
            self.live.subscribe(Selector("v1", "Event", ns), handler)

    def service_of(self, resource: str) -> str:
        found = self.attribute(resource)
        return found[1] if found else ""

    def attribute(self, resource: str, uid: str = "") -> tuple[str, str] | None:
        """The managed object (resource key) and service an Event about `resource`
        (`namespace/Kind/name`) belongs to: the object itself when it is ours, else the
        object of ours that owns it; None when it is not ours."""
        namespace, _, rest = resource.partition("/")
        kind, _, name = rest.partition("/")
        with self._lock:
            if resource in self._ours:
                return resource, self._ours[resource][0]
        owner = self.owner_of(namespace, kind, name, uid) if self.owner_of else None
        if owner is not None:
            return str(owner[0]), owner[1]
        if kind not in ("Pod", "ReplicaSet"):
            return None
        with self._lock:  # not watched (yet): a workload's children carry its name
            found = [(len(workload), hit) for (ns, workload), hit in self._workloads.items()
                     if ns == namespace and name.startswith(workload + "-")]
        return max(found)[1] if found else None

    def forget(self, instance: tuple[str, str]) -> None:
        """A forgotten instance's objects are no longer ours (their namespaces' watches
        stay: other instances may live there, and a watch is one per namespace)."""
        with self._lock:
            gone = {k for k, (_, of) in self._ours.items() if of == instance}
            for key in gone:
                del self._ours[key]
            self._workloads = {k: v for k, v in self._workloads.items() if v[0] not in gone}

    def instance_of(self, resource: str) -> tuple[str, str]:
        """(namespace, name) of the instance whose object `resource` is (this
        controller's own for an object no instance tracks)."""
        with self._lock:
            found = self._ours.get(resource)
        return found[1] if found else (self.namespace, self.instance)

    def _handler(self) -> Callable[[str, Body], None]:
        """One namespace's handler: what the first list finds is history, not news (a
        repeat of it arrives as MODIFIED with a higher count and is recorded then)."""
        synced = threading.Event()

        def on_event(kind: str, body: Body) -> None:
            if kind == "SYNCED":
                synced.set()
                return
            if kind not in ("ADDED", "MODIFIED"):
                return
            if kind == "ADDED" and not synced.is_set() and not self._recent(body):
                return
            inv = body.get("involvedObject") or {}
            resource = (f"{inv.get('namespace') or '-'}/{inv.get('kind', '')}/"
                        f"{inv.get('name', '')}")
            found = self.attribute(resource, str(inv.get("uid") or ""))
            if found:
                namespace, instance = self.instance_of(found[0])
                self.recorder.on_kube_event(body, resource=found[0], service=found[1],
                                            instance=instance, namespace=namespace)

        return on_event

    def _recent(self, body: Body) -> bool:
        last = body.get("lastTimestamp") or body.get("eventTime") or \
            (body.get("metadata") or {}).get("creationTimestamp")
        try:
            return isinstance(last, str) and parse_time(last) >= self._since_ms
        except ConductorError:  # unreadable: not news
            return False

    def stop(self, timeout: float = 5.0) -> None:
        """Stop following Events; post those still waiting (up to `timeout`)."""
        with self._lock:
            poster, self._poster = self._poster, None
        if poster is not None:
            with contextlib.suppress(queue.Full):  # stuck: the thread is a daemon
                self._outbox.put(None, timeout=timeout)
            poster.join(timeout)
        with self._lock:
            watches = dict(self._watches)
        for ns, handler in watches.items():
            self.live.watch(Selector("v1", "Event", ns)).unsubscribe(handler)
        if self._own_cache:
            self.live.stop()

    # -- outgoing -------------------------------------------------------------------------

    def post(self, type_: str, reason: str, message: str, details: Mapping[str, Any], *,
             instance: str | None = None, namespace: str | None = None) -> None:
        """An Event on the DeploymentParameters object `namespace/instance` (this
        controller's own by default), for changes and failures only."""
        counts = details.get("counts") or {}
        changed = any(counts.get(k) for k in ("applied", "deleted", "failed"))
        if reason == "PassStarted" or (type_ == "success" and not changed):
            return
        name = instance or self.instance
        ns = namespace or self.namespace
        if self._last_posted.get((ns, name)) == (reason, message):
            return
        now = now_rfc3339()
        obj = {"apiVersion": "v1", "kind": "Event",
               "metadata": {"generateName": f"{name}.", "namespace": ns},
               "involvedObject": object_ref(name, ns),
               "type": "Warning" if type_ in ("error", "warning") else "Normal",
               "reason": reason, "message": message[:1024],
               "source": {"component": "conductor"}, "firstTimestamp": now,
               "lastTimestamp": now, "count": 1}
        self._last_posted[(ns, name)] = (reason, message)
        with self._lock:
            if self._poster is None:
                self._poster = threading.Thread(target=self._post_all, name="kube-events",
                                                daemon=True)
                self._poster.start()
        try:
            self._outbox.put_nowait(((ns, name), (reason, message), obj))
        except queue.Full:
            self._last_posted.pop((ns, name), None)
            log.warning("cannot post Event %s on %s/%s: %d Events are waiting already",
                        reason, ns, name, OUTBOX)

    def _post_all(self) -> None:
        while (item := self._outbox.get()) is not None:
            key, posted, obj = item
            # The instance's write, fenced as its passes' are: only its owner posts it.
            try:
                with acting_for(key):
                    self.kube.create(obj)
            except KubeError as e:
                if self._last_posted.get(key) == posted:
                    self._last_posted.pop(key, None)  # the next one like it may try again
                log.info("cannot post Event %s: %s", obj["reason"], e.message)
            except Exception:  # never end the thread: the next Event tries again
                log.exception("cannot post Event %s", obj["reason"])


__all__ = ["Described", "EngineRecorder", "KubeEvents", "PassRecorder", "describe"]
