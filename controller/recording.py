"""Kubernetes Events in and out: the cluster's Events about managed objects go into the
event store; the controller's own noteworthy outcomes become Events on its
DeploymentParameters object (what `kubectl describe` shows).

Incoming: one Event watch per namespace the app has objects in (namespaces are learned
from each pass); an Event is kept when it is about an object we applied, or about a Pod or
ReplicaSet named after one of our workloads (a kubelet's pull failures are about Pods).
Outgoing: only passes that changed or failed something post an Event, and a repeat of the
previous one is skipped, so a quiet pass still writes nothing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from controller.events import EngineRecorder
from controller.kube import Body, Kube, KubeError
from controller.objects import ObjectKey
from controller.sources.resource import API_VERSION, KIND
from controller.watching import Reflector, Selector

log = logging.getLogger(__name__)

WORKLOADS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet",
                       "CronJob"})


class KubeEvents:
    def __init__(self, kube: Kube, recorder: EngineRecorder, namespace: str,
                 instance: str) -> None:
        self.kube = kube
        self.recorder = recorder
        self.namespace = namespace
        self.instance = instance
        self._watches: dict[str, Reflector] = {}
        self._ours: dict[str, str] = {}  # resource key -> service
        self._workloads: dict[tuple[str, str], str] = {}  # (namespace, name) -> service
        self._lock = threading.Lock()
        self._last_posted: tuple[str, str] | None = None

    # -- incoming -------------------------------------------------------------------------

    def track(self, objects: Iterable[tuple[ObjectKey, str]]) -> None:
        """Learn our objects (key, service) and watch Events in their namespaces."""
        new_namespaces = set()
        with self._lock:
            for key, service in objects:
                self._ours[str(key)] = service
                if key.kind in WORKLOADS:
                    self._workloads[(key.namespace, key.name)] = service
                if key.namespace and key.namespace not in self._watches:
                    new_namespaces.add(key.namespace)
            for ns in new_namespaces:
                self._watches[ns] = Reflector(self.kube, Selector("v1", "Event", ns),
                                              self._handler(), watch_timeout=120).start()

    def service_of(self, resource: str) -> str:
        with self._lock:
            if resource in self._ours:
                return self._ours[resource]
            namespace, _, rest = resource.partition("/")
            kind, _, name = rest.partition("/")
            if kind in ("Pod", "ReplicaSet"):
                for (ns, workload), service in self._workloads.items():
                    if ns == namespace and name.startswith(workload + "-"):
                        return service
        return ""

    def _handler(self) -> Callable[[str, Body], None]:
        """One namespace's handler: what the first list finds is history, not news (a
        repeat of it arrives as MODIFIED with a higher count and is recorded then)."""
        synced = threading.Event()

        def on_event(kind: str, body: Body) -> None:
            if kind == "SYNCED":
                synced.set()
                return
            if kind not in ("ADDED", "MODIFIED") or (kind == "ADDED" and not synced.is_set()):
                return
            inv = body.get("involvedObject") or {}
            resource = (f"{inv.get('namespace') or '-'}/{inv.get('kind', '')}/"
                        f"{inv.get('name', '')}")
            if self.service_of(resource):
                self.recorder.on_kube_event(body)

        return on_event

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
