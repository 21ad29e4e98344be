"""Kubernetes Events in and out: the cluster's Events about managed objects go into the
event store; the controller's own noteworthy outcomes become Events on its
DeploymentParameters object (what `kubectl describe` shows).

Incoming: one Event watch per namespace the app has objects in (namespaces are learned
from each pass); an Event is kept when it is about an object we applied, or about one of
its children: a kubelet's pull failures are about Pods, a Deployment's rollout about
ReplicaSets. A child's Event is stored under the managed object that owns it (followed
through ownerReferences in the health monitor's watched state: Pod -> ReplicaSet ->
Deployment, a Job's Pod -> Job), with the child named in its details, so the events of
`Deployment/frontend` show why its Pods fail. A child the watched state does not know yet
(its Event can arrive first) is matched by name to a workload of ours.
Outgoing: only passes that changed or failed something post an Event, and a repeat of the
previous one is skipped, so a quiet pass still writes nothing.
The engine's own reports (its `on_event`/`on_result` hooks) reach the event store through
`EngineRecorder`, which is also where the incoming Kubernetes Events are stored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from controller.adapters.cache import LiveCache
from controller.adapters.kube import Body, Kube, KubeError
from controller.adapters.sources.resource import API_VERSION, KIND
from controller.adapters.store.events import STORE_ERRORS, Event, EventStore, resource_key
from controller.adapters.watching import Selector
from controller.errors import ConductorError
from controller.model.objects import ObjectKey
from controller.model.times import now_ms, now_rfc3339, parse_time

if TYPE_CHECKING:  # applying imports the Kubernetes client for the engine, not for this
    from controller.reconcile.applying import ObjectResult

log = logging.getLogger(__name__)

WORKLOADS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet",
                       "CronJob"})
# (namespace, kind, name, uid) -> our object and its service, or None (HealthMonitor's).
OwnerLookup = Callable[[str, str, str, str], "tuple[ObjectKey, str] | None"]


class EngineRecorder:
    """Records what the engine reports (its `on_event` and `on_result` hooks) as events.

    Unchanged and kept objects are not recorded: every pass reports them, and they would
    soon be all the store holds. Dry runs (`plan`) record their start and end but no object
    results, since nothing was applied. A failure to record is logged, never raised: the
    event store must not break a reconcile pass.
    """

    def __init__(self, store: EventStore,
                 service_of: Callable[[str], str] | None = None) -> None:
        self.store = store
        self.service_of = service_of  # resource key -> service, when an event names none
        self._operation = ""  # of the pass in progress (passes are sequential)
        self._pass_service = ""

    def on_event(self, type: str, reason: str, message: str,
                 details: Mapping[str, Any]) -> None:
        try:
            self._on_event(type, reason, message, details)
        except Exception as e:
            self._failed(f"event {reason}", e)

    def on_result(self, result: ObjectResult) -> None:
        try:
            self._on_result(result)
        except Exception as e:
            self._failed(f"the result of {getattr(result, 'key', '?')}", e)

    def on_kube_event(self, body: Mapping[str, Any], *, resource: str | None = None,
                      service: str | None = None) -> Event | None:
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
                resource=key)
        except Exception as e:
            self._failed("a Kubernetes Event", e)
            return None

    def _on_event(self, type: str, reason: str, message: str,
                  details: Mapping[str, Any]) -> None:
        if reason == "PassStarted":
            # The engine names the operation only in its message ("plan started (api)").
            self._operation = message.split(" ", 1)[0]
            services = list(details.get("services") or [])
            self._pass_service = str(services[0]) if len(services) == 1 else ""
        service = self._pass_service
        if reason.endswith(("Succeeded", "Failed")):
            self._operation, self._pass_service = "", ""
        self.store.add(type, message, reason=reason, details=details, service=service)

    def _on_result(self, result: ObjectResult) -> None:
        if result.outcome in ("unchanged", "kept") or self._operation == "plan" or \
                getattr(result, "body", None) is not None:
            return  # a body is only kept on a dry-run answer
        resource = str(result.key)
        service = result.service or self._service(resource)
        details: dict[str, Any] = {"action": result.action}
        if result.reason:
            details["planReason"] = result.reason
        what = f"{result.key.kind} {result.key.name}"
        if result.outcome == "failed":
            err = result.error or {}
            details["error"] = err
            deleting = result.action in ("prune", "delete")
            self.store.add("error", f"{'delete' if deleting else 'apply'} {what} failed: "
                           f"{err.get('message', 'unknown error')}",
                           reason="DeleteFailed" if deleting else "ApplyFailed",
                           resource=resource, service=service, details=details)
        elif result.outcome == "applied":
            reason = {"create": "Created", "update": "Updated"}.get(result.action, "Applied")
            self.store.add("success", f"{what} {reason.lower()}", reason=reason,
                           resource=resource, service=service, details=details)
        elif result.outcome == "deleted":
            # `down` deletes on request; any other pass prunes what is no longer rendered.
            pruned = result.action == "prune" and self._operation != "down"
            reason = "Pruned" if pruned else "Deleted"
            self.store.add("success", f"{what} {reason.lower()}", reason=reason,
                           resource=resource, service=service, details=details)

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



class KubeEvents:
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
        self._ours: dict[str, str] = {}  # resource key -> service
        # (namespace, name) -> (resource key, service)
        self._workloads: dict[tuple[str, str], tuple[str, str]] = {}
        self._lock = threading.Lock()
        self._last_posted: tuple[str, str] | None = None
        self.owner_of: OwnerLookup | None = None  # set by the controller (HealthMonitor)
        # Events a namespace's first list finds are news when seen after this (a first
        # deploy's Pod failures happen before its namespace's watch starts); older ones
        # are history (the store de-duplicates by uid either way).
        self._since_ms = now_ms()

    # -- incoming -------------------------------------------------------------------------

    def track(self, objects: Iterable[tuple[ObjectKey, str]]) -> None:
        """Learn our objects (key, service) and watch Events in their namespaces."""
        new_namespaces = set()
        with self._lock:
            for key, service in objects:
                self._ours[str(key)] = service
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
                return resource, self._ours[resource]
        owner = self.owner_of(namespace, kind, name, uid) if self.owner_of else None
        if owner is not None:
            return str(owner[0]), owner[1]
        if kind not in ("Pod", "ReplicaSet"):
            return None
        with self._lock:  # not watched (yet): a workload's children carry its name
            found = [(len(workload), hit) for (ns, workload), hit in self._workloads.items()
                     if ns == namespace and name.startswith(workload + "-")]
        return max(found)[1] if found else None

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
                self.recorder.on_kube_event(body, resource=found[0], service=found[1])

        return on_event

    def _recent(self, body: Body) -> bool:
        last = body.get("lastTimestamp") or body.get("eventTime") or \
            (body.get("metadata") or {}).get("creationTimestamp")
        try:
            return isinstance(last, str) and parse_time(last) >= self._since_ms
        except ConductorError:  # unreadable: not news
            return False

    def stop(self) -> None:
        with self._lock:
            watches = dict(self._watches)
        for ns, handler in watches.items():
            self.live.watch(Selector("v1", "Event", ns)).unsubscribe(handler)
        if self._own_cache:
            self.live.stop()

    # -- outgoing -------------------------------------------------------------------------

    def post(self, type_: str, reason: str, message: str, details: Mapping[str, Any]) -> None:
        """An Event on our DeploymentParameters object, for changes and failures only."""
        counts = details.get("counts") or {}
        changed = any(counts.get(k) for k in ("applied", "deleted", "failed"))
        if reason == "PassStarted" or (type_ == "success" and not changed):
            return
        if (reason, message) == self._last_posted:
            return
        now = now_rfc3339()
        obj = {"apiVersion": "v1", "kind": "Event",
               "metadata": {"generateName": f"{self.instance}.", "namespace": self.namespace},
               "involvedObject": {"apiVersion": API_VERSION, "kind": KIND,
                                  "name": self.instance, "namespace": self.namespace},
               "type": "Warning" if type_ in ("error", "warning") else "Normal",
               "reason": reason, "message": message[:1024],
               "source": {"component": "conductor"}, "firstTimestamp": now,
               "lastTimestamp": now, "count": 1}
        try:
            self.kube.create(obj)
            self._last_posted = (reason, message)
        except KubeError as e:
            log.info("cannot post Event %s: %s", reason, e.message)
