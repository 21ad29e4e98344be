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
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from controller.errors import ConductorError
from controller.events import EngineRecorder, parse_time
from controller.kube import Body, Kube, KubeError
from controller.objects import ObjectKey
from controller.sources.resource import API_VERSION, KIND
from controller.watching import Reflector, Selector

log = logging.getLogger(__name__)

WORKLOADS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet",
                       "CronJob"})
# (namespace, kind, name, uid) -> our object and its service, or None (HealthMonitor's).
OwnerLookup = Callable[[str, str, str, str], "tuple[ObjectKey, str] | None"]


class KubeEvents:
    def __init__(self, kube: Kube, recorder: EngineRecorder, namespace: str,
                 instance: str) -> None:
        self.kube = kube
        self.recorder = recorder
        self.namespace = namespace
        self.instance = instance
        self._watches: dict[str, Reflector] = {}
        self._ours: dict[str, str] = {}  # resource key -> service
        # (namespace, name) -> (resource key, service)
        self._workloads: dict[tuple[str, str], tuple[str, str]] = {}
        self._lock = threading.Lock()
        self._last_posted: tuple[str, str] | None = None
        self.owner_of: OwnerLookup | None = None  # set by the controller (HealthMonitor)
        # Events a namespace's first list finds are news when seen after this (a first
        # deploy's Pod failures happen before its namespace's watch starts); older ones
        # are history (the store de-duplicates by uid either way).
        self._since_ms = int(datetime.now(UTC).timestamp() * 1000)

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
                self._watches[ns] = Reflector(self.kube, Selector("v1", "Event", ns),
                                              self._handler(), watch_timeout=120).start()

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
            for r in self._watches.values():
                r.stop()

    # -- outgoing -------------------------------------------------------------------------

    def post(self, type_: str, reason: str, message: str, details: Mapping[str, Any]) -> None:
        """An Event on our DeploymentParameters object, for changes and failures only."""
        counts = details.get("counts") or {}
        changed = any(counts.get(k) for k in ("applied", "deleted", "failed"))
        if reason == "PassStarted" or (type_ == "success" and not changed):
            return
        if (reason, message) == self._last_posted:
            return
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
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
