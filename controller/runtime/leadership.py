"""Leases on coordination.k8s.io/v1: one replica writes, all serve reads.

`LeaseLock` is one Lease held by one replica at a time: the holder renews it every
`retry_period`; a replica that finds it expired (renew time + duration in the past) or
released (no holder) takes it over with an update guarded by resourceVersion, so two
candidates cannot both win. A holder that cannot renew within `renew_deadline` steps
down *before* the lease can expire elsewhere, and from that moment its Kubernetes writes
are refused (see `Kube.write_guard`), so a deposed holder never writes twice.
`LeaderElector` runs one such lock on its own thread (the leader lease: cluster-wide
duties); sharding.py runs one per shard Lease from its own loop, on the same code.

Lease requests are tried once, with a timeout well inside the renew deadline: the election
loop itself is the retry (every `retry_period`), so an API server that refuses or hangs
cannot keep a holder in a retry schedule past its deadline. `last_contact` is when the API
server last answered a lease request (any answer): what readiness is judged by.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from controller.adapters.kube import Body, Kube, KubeError
from controller.model.times import parse_rfc3339, rfc3339_micro

log = logging.getLogger(__name__)

API_VERSION = "coordination.k8s.io/v1"
EPOCH = datetime.fromtimestamp(0, UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _parse(raw: str) -> datetime:
    """A renewTime; unreadable counts as long expired (the epoch)."""
    return parse_rfc3339(raw) or EPOCH


def default_identity() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


def lease_state(lease: Body | None, now: datetime,
                default_duration: float) -> tuple[str, bool]:
    """(holder, expired) of a Lease as read: no lease, no holder or a renew time older
    than its duration count as expired (free to take)."""
    spec = (lease or {}).get("spec") or {}
    holder = str(spec.get("holderIdentity") or "")
    renewed = _parse(str(spec.get("renewTime") or ""))
    duration = float(spec.get("leaseDurationSeconds") or default_duration)
    return holder, not holder or (now - renewed).total_seconds() > duration


class LeaseLock:
    """One Lease: acquire it when free or expired, renew it while held, step down when
    a renewal is overdue, release it on request. Not a thread: `attempt()` is one round."""

    def __init__(self, kube: Kube, namespace: str, name: str, identity: str | None = None,
                 lease_duration: float = 15.0, renew_deadline: float = 10.0,
                 retry_period: float = 2.0,
                 on_change: Callable[[bool], None] | None = None,
                 labels: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = _now) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity or default_identity()
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.on_change = on_change
        self.labels = dict(labels or {})  # on a Lease we create (sharding lists by them)
        self.clock = clock
        self.now = now
        self.holder = ""
        self._leading = False
        self._last_renew = float("-inf")  # clock time of our last successful renew
        self.last_contact = 0.0  # clock time the API server last answered us
        # One try per request, answered or given up well before the renew deadline.
        self.request_timeout = max(0.5, min(renew_deadline / 3, retry_period * 2))

    @property
    def held(self) -> bool:
        """True only while our last renew is younger than the renew deadline."""
        return self._leading and self.clock() - self._last_renew < self.renew_deadline

    def _set(self, leading: bool) -> None:
        if leading != self._leading:
            self._leading = leading
            log.info("%s %s the lease %s/%s", self.identity,
                     "acquired" if leading else "lost", self.namespace, self.name)
            if self.on_change:
                self.on_change(leading)

    def check_deadline(self) -> None:
        """Step down when the last renewal is older than the renew deadline."""
        if self._leading and not self.held:
            log.warning("%s: lease %s not renewed for %.1f s (deadline %.1f s): stepping "
                        "down", self.identity, self.name, self.clock() - self._last_renew,
                        self.renew_deadline)
            self._set(False)  # could not renew in time: step down, stop writing

    def _request(self, method: str, body: Body | None = None) -> Body | None:
        """One lease request, not retried, bounded; None for a lease that is not there."""
        res = self.kube.resource(API_VERSION, "Lease")
        path = res.path(self.namespace, "" if method == "POST" else self.name)
        try:
            answer = self.kube.request(method, path, body=body, retry=False,
                                       timeout=self.request_timeout, elect=True)
        except KubeError as e:
            if e.status:  # an answer, even a refusal, shows the API server is there
                self.last_contact = self.clock()
            if e.status == 404 and method == "GET":
                return None
            raise
        self.last_contact = self.clock()
        return answer

    def attempt(self, lease: Body | None = None, read: bool = True) -> None:
        """One round: acquire or renew the lease (as read now, or as given when `read` is
        False: e.g. from a LIST of every lease), or note that another replica holds it."""
        # The renewTime we write is now: our deadline counts from here, not from the
        # answer, so a slow answer cannot stretch our hold past what others see.
        now, sent = self.now(), self.clock()
        # A hold that lapsed since (a slow round) is lost first, so that renewing it is a
        # gain again: its holder's on_change wakes what the lapse refused.
        self.check_deadline()
        if read:
            lease = self._request("GET")
        spec: Body = {"holderIdentity": self.identity,
                      "leaseDurationSeconds": int(self.lease_duration),
                      "renewTime": rfc3339_micro(now)}
        if lease is None:
            spec["acquireTime"] = rfc3339_micro(now)
            spec["leaseTransitions"] = 0
            metadata: Body = {"name": self.name, "namespace": self.namespace}
            if self.labels:
                metadata["labels"] = self.labels
            try:
                self._request("POST", {"apiVersion": API_VERSION, "kind": "Lease",
                                       "metadata": metadata, "spec": spec})
            except KubeError as e:
                if e.status == 409:  # another replica created it first
                    self._set(False)
                    return
                raise
            self._renewed(sent)
            return
        current = lease.get("spec") or {}
        self.holder, expired = lease_state(lease, now, self.lease_duration)
        if self.holder != self.identity and not expired:
            self._set(False)
            return
        transitions = int(current.get("leaseTransitions") or 0)
        if self.holder != self.identity:
            spec["acquireTime"] = rfc3339_micro(now)
            transitions += 1
        else:
            spec["acquireTime"] = current.get("acquireTime") or rfc3339_micro(now)
        spec["leaseTransitions"] = transitions
        metadata = {"name": self.name, "namespace": self.namespace,
                    "resourceVersion": lease["metadata"]["resourceVersion"]}
        labels = (lease.get("metadata") or {}).get("labels") or self.labels
        if labels:
            metadata["labels"] = labels
        body = {"apiVersion": API_VERSION, "kind": "Lease", "metadata": metadata,
                "spec": spec}
        try:
            self._request("PUT", body)  # a stale resourceVersion loses with 409
        except KubeError as e:
            if e.status == 409:
                self._set(False)
                return
            raise
        self._renewed(sent)

    def _renewed(self, sent: float) -> None:
        if self._leading and self.clock() - self._last_renew >= self.renew_deadline:
            # The answer came after the previous hold ran out: writes were refused for a
            # moment, so this is a loss and a gain (what the gap refused is woken again).
            log.warning("%s: lease %s lapsed before its renewal was answered", self.identity,
                        self.name)
            self._set(False)
        self._last_renew = sent
        self.holder = self.identity
        self._set(True)

    def step_down(self) -> None:
        """Stop holding now (writes refused from here), without touching the Lease."""
        self._last_renew = float("-inf")
        self._set(False)

    def release(self) -> None:
        """Hand the lease back at once (holder cleared, renew time the epoch), if still
        ours: another replica takes it at its next round instead of waiting it out. Two
        bounded, unretried requests (a handover must not hold up the round that renews
        the other Leases); if they fail, the Lease simply expires."""
        self.step_down()
        try:
            lease = self._request("GET")
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                spec = dict(lease["spec"])
                spec["renewTime"] = rfc3339_micro(EPOCH)
                spec["holderIdentity"] = ""
                lease["spec"] = spec
                self._request("PUT", lease)  # at the version read: never over a new holder
        except KubeError as e:
            log.info("could not release lease %s: %s", self.name, e.message)


class Rounds:
    """`round()` on its own daemon thread every `period` seconds until stopped: the
    election loop of the leader lease and of the shard Leases alike."""

    def __init__(self, round_: Callable[[], None], period: float, name: str) -> None:
        self.round = round_
        self.period = period
        self.name = name
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """No more rounds; waits (bounded) for the current one."""
        self.stopping.set()
        if self._thread:
            self._thread.join(self.period * 3)

    def _run(self) -> None:
        while not self.stopping.is_set():
            self.round()
            self.stopping.wait(self.period)


class LeaderElector(LeaseLock):
    """The leader lease, on its own thread: one round every `retry_period`."""

    def __init__(self, kube: Kube, namespace: str, name: str, identity: str | None = None,
                 lease_duration: float = 15.0, renew_deadline: float = 10.0,
                 retry_period: float = 2.0,
                 on_change: Callable[[bool], None] | None = None) -> None:
        super().__init__(kube, namespace, name, identity, lease_duration, renew_deadline,
                         retry_period, on_change)
        self._rounds = Rounds(self._round, retry_period, "leader-election")
        self.tried = threading.Event()  # set once the first attempt has an answer

    @property
    def is_leader(self) -> bool:
        return self.held

    def start(self) -> LeaderElector:
        self._rounds.start()
        return self

    def stop(self, release: bool = True) -> None:
        self._rounds.stop()
        if release and self._leading:
            self.release()
        self._set(False)

    def _round(self) -> None:
        try:
            self.attempt()
        except KubeError as e:
            log.warning("lease %s: %s", self.name, e.message)
        finally:
            self.tried.set()
        self.check_deadline()
