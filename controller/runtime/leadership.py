"""Leader election on a coordination.k8s.io/v1 Lease: one replica writes, all serve reads.

The holder renews the lease every `retry_period`; a replica that finds it expired (renew
time + duration in the past) takes it over with an update guarded by resourceVersion, so
two candidates cannot both win. A leader that cannot renew within `renew_deadline` steps
down *before* the lease can expire elsewhere, and from that moment its Kubernetes writes
are refused (see `Kube.write_guard`), so a deposed leader never writes twice.

Lease requests are tried once, with a timeout well inside the renew deadline: the election
loop itself is the retry (every `retry_period`), so an API server that refuses or hangs
cannot keep a leader in a retry schedule past its deadline. `last_contact` is when the API
server last answered a lease request (any answer): what readiness is judged by.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from controller.adapters.kube import Body, Kube, KubeError
from controller.model.times import parse_rfc3339, rfc3339_micro

log = logging.getLogger(__name__)

API_VERSION = "coordination.k8s.io/v1"


def _now() -> datetime:
    return datetime.now(UTC)


def _parse(raw: str) -> datetime:
    """A renewTime; unreadable counts as long expired (the epoch)."""
    return parse_rfc3339(raw) or datetime.fromtimestamp(0, UTC)


def default_identity() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


class LeaderElector:
    def __init__(self, kube: Kube, namespace: str, name: str, identity: str | None = None,
                 lease_duration: float = 15.0, renew_deadline: float = 10.0,
                 retry_period: float = 2.0,
                 on_change: Callable[[bool], None] | None = None) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.on_change = on_change
        self.holder = ""
        self._leading = False
        self._last_renew = 0.0  # monotonic time of our last successful renew
        self.last_contact = 0.0  # monotonic time the API server last answered us
        # One try per request, answered or given up well before the renew deadline.
        self.request_timeout = max(0.5, min(renew_deadline / 3, retry_period * 2))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.tried = threading.Event()  # set once the first attempt has an answer

    @property
    def is_leader(self) -> bool:
        """True only while our last renew is younger than the renew deadline."""
        return self._leading and time.monotonic() - self._last_renew < self.renew_deadline

    def start(self) -> LeaderElector:
        self._thread = threading.Thread(target=self._run, name="leader-election", daemon=True)
        self._thread.start()
        return self

    def stop(self, release: bool = True) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(self.retry_period * 3)
        if release and self._leading:
            self._release()
        self._set(False)

    def _set(self, leading: bool) -> None:
        if leading != self._leading:
            self._leading = leading
            log.info("%s %s the lease %s/%s", self.identity,
                     "acquired" if leading else "lost", self.namespace, self.name)
            if self.on_change:
                self.on_change(leading)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._try()
            except KubeError as e:
                log.warning("lease %s: %s", self.name, e.message)
            finally:
                self.tried.set()
            if self._leading and not self.is_leader:
                self._set(False)  # could not renew in time: step down, stop writing
            self._stop.wait(self.retry_period)

    def _request(self, method: str, body: Body | None = None) -> Body | None:
        """One lease request, not retried, bounded; None for a lease that is not there."""
        res = self.kube.resource(API_VERSION, "Lease")
        path = res.path(self.namespace, "" if method == "POST" else self.name)
        try:
            answer = self.kube.request(method, path, body=body, retry=False,
                                       timeout=self.request_timeout, elect=True)
        except KubeError as e:
            if e.status:  # an answer, even a refusal, shows the API server is there
                self.last_contact = time.monotonic()
            if e.status == 404 and method == "GET":
                return None
            raise
        self.last_contact = time.monotonic()
        return answer

    def _try(self) -> None:
        now = _now()
        lease = self._request("GET")
        spec: Body = {"holderIdentity": self.identity,
                      "leaseDurationSeconds": int(self.lease_duration),
                      "renewTime": rfc3339_micro(now)}
        if lease is None:
            spec["acquireTime"] = rfc3339_micro(now)
            spec["leaseTransitions"] = 0
            self._request("POST", {"apiVersion": API_VERSION, "kind": "Lease",
                                   "metadata": {"name": self.name,
                                                "namespace": self.namespace},
                                   "spec": spec})
            self._renewed()
            return
        current = lease.get("spec") or {}
        self.holder = str(current.get("holderIdentity") or "")
        renewed = _parse(str(current.get("renewTime") or ""))
        duration = float(current.get("leaseDurationSeconds") or self.lease_duration)
        expired = (now - renewed).total_seconds() > duration
        if self.holder != self.identity and not expired and self.holder:
            self._set(False)
            return
        transitions = int(current.get("leaseTransitions") or 0)
        if self.holder != self.identity:
            spec["acquireTime"] = rfc3339_micro(now)
            transitions += 1
        else:
            spec["acquireTime"] = current.get("acquireTime") or rfc3339_micro(now)
        spec["leaseTransitions"] = transitions
        body = {"apiVersion": API_VERSION, "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace,
                             "resourceVersion": lease["metadata"]["resourceVersion"]},
                "spec": spec}
        try:
            self._request("PUT", body)  # a stale resourceVersion loses with 409
        except KubeError as e:
            if e.status == 409:
                self._set(False)
                return
            raise
        self._renewed()

    def _renewed(self) -> None:
        self._last_renew = time.monotonic()
        self.holder = self.identity
        self._set(True)

    def _release(self) -> None:
        try:
            lease = self.kube.get(API_VERSION, "Lease", self.name, self.namespace)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                spec = dict(lease["spec"])
                spec["renewTime"] = rfc3339_micro(datetime.fromtimestamp(0, UTC))
                spec["holderIdentity"] = ""
                lease["spec"] = spec
                self.kube.replace(lease, elect=True)
        except KubeError as e:
            log.info("could not release lease %s: %s", self.name, e.message)
