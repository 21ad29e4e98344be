"""Instances sharded across replicas on coordination.k8s.io/v1 Leases.

With several replicas every instance (a DeploymentParameters object other than the
controller's own) is reconciled by exactly one of them at a time. The instances are
spread over a fixed number of shards (CONDUCTOR_LEADER_SHARDS): instance -> shard by a
stable hash of "namespace/name" (SHA-256, so every replica and every restart agrees; not
Python's `hash`, which is salted per process). Each shard is one Lease,
`<prefix>-shard-<i>`, held by one replica through the same acquire/renew/step-down code
as the leader lease (leadership.LeaseLock): the holder reconciles the shard's instances
and is the only replica whose writes for them pass the fence (`Kube.instance_guard`); a
holder that cannot renew within the renew deadline stops writing before the Lease can
expire elsewhere. The controller's own instance stays with the leader, with the other
cluster-wide duties (CRD, Git poller, notifier cursors).

Balancing. Every replica also holds a member Lease, `<prefix>-member-<hash of identity>`,
renewed on the same round: the live members are the unexpired member Leases. Why member
Leases rather than counting shard holders: a replica that has just joined holds no shard,
so counting holders would never see it and nobody would hand it any. With R live members
sorted by identity, member k's fair share is N // R, plus one for the first N % R: every
replica computes the same targets from the same LIST. Each round (every retry period) a
replica

- takes free shards (no holder, released, or expired) up to its fair share, starting at
  its own offset k * F / R in the F free ones, so that replicas taking together try
  different ones (a race is settled by the resourceVersion guard: the loser gets 409 and
  looks again next round);
- hands over shards above its fair share while another live member is below its own:
  it stops owning them at once (its loop refuses their passes, the fence their writes),
  then releases each Lease (holder cleared) as soon as no pass of that shard is running,
  so the newcomer takes it at its next round. A pass still running is never cut short by
  a handover; if it outlasts the renew deadline the Lease simply expires instead;
- never takes a shard another replica holds unexpired.

A replica that joins writes its member Lease on its first round and takes shards from
its second, so replicas starting together split the shards instead of the first taking
all and handing most back. When a replica dies its member and shard Leases expire
together (renewed on one round); at the next round after that the survivors' fair shares
grow and they take its shards: rebalanced within lease duration + one retry period. Member
Leases of replicas gone for ten lease durations are deleted by whoever sees them.

A round is one LIST of the group's Leases by label, then every renewal and acquisition at
once on a small pool: each request bounded (well inside the renew deadline) and not
retried, the next round being the retry, so a slow API server costs a round two
requests' time, not one per Lease.

Lease traffic is bounded by the number of shards and replicas, never by instances: per
retry period each replica sends one LIST (a read) and one renew (PUT) per Lease it holds.
Writes per second = (N shard Leases + R member Leases + 1 leader Lease) / retry period,
plus rare acquisitions and releases on membership changes; reads: R LISTs and R GETs of
the leader lease per retry period. At 1,000 instances, 3 replicas, N = 12 shards and the
default 2 s retry period: (12 + 3 + 1) / 2 = 8 writes/s and 3 reads/s in all (the same at
100,000 instances); without sharding it is 0.5 writes/s. A round lasts its retry period
plus its requests, so the measured rate is lower: 5.3-7.4 writes/s against the formula's
9.0 in tests/cluster/test_sharding.py (6 shards, 2 replicas, 1 s, load 9-12).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from controller.adapters.kube import Body, Kube, KubeError
from controller.runtime.leadership import (
    API_VERSION,
    LeaseLock,
    Rounds,
    _now,
    _parse,
    lease_state,
)

log = logging.getLogger(__name__)

LABEL_GROUP = "conductor.io/lease-group"  # every Lease of one sharded controller
LABEL_ROLE = "conductor.io/lease-role"  # "shard" or "member"
LABEL_SHARD = "conductor.io/shard"
MEMBER_GC = 10  # lease durations after which a dead member's Lease is deleted


def shard_of(key: Hashable, shards: int) -> int:
    """The shard of an instance (namespace, name): stable across processes and restarts."""
    text = "/".join(key) if isinstance(key, tuple) else str(key)
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") % max(1, shards)


def _short(text: str, size: int = 10) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:size]


@dataclass(frozen=True)
class ShardView:
    """One shard Lease as listed: who holds it, and whether that has lapsed."""

    holder: str = ""
    expired: bool = True


def fair_share(identity: str, members: Iterable[str], shards: int) -> int:
    """How many of `shards` the member `identity` should hold among `members`."""
    ordered = sorted(set(members) | {identity})
    base, extra = divmod(shards, len(ordered))
    return base + (1 if ordered.index(identity) < extra else 0)


def decide(identity: str, members: Iterable[str], views: Sequence[ShardView],
           mine: Iterable[int]) -> tuple[list[int], list[int]]:
    """(shards to take, shards to hand over) for one round; pure, so it is unit-tested.

    `members`: the live replicas (this one included or not); `views`: every shard as
    listed; `mine`: the shards this replica holds now."""
    live = sorted(set(members) | {identity})
    shards = len(views)
    held = sorted(set(mine))
    target = fair_share(identity, live, shards)
    if len(held) > target:
        counts = {m: 0 for m in live}
        for view in views:
            if not view.expired and view.holder in counts:
                counts[view.holder] += 1
        counts[identity] = len(held)
        wanted = sum(max(0, fair_share(m, live, shards) - counts[m])
                     for m in live if m != identity)
        excess = min(len(held) - target, wanted)
        return [], held[len(held) - excess:] if excess else []
    free = [i for i, v in enumerate(views) if v.expired and i not in held]
    start = live.index(identity) * len(free) // len(live)  # replicas try different ones
    return (free[start:] + free[:start])[:max(0, target - len(held))], []


class ShardSet:
    """The shard Leases of one replica: its round thread, and `owns(key)` for the rest."""

    def __init__(self, kube: Kube, namespace: str, prefix: str, identity: str, shards: int,
                 lease_duration: float = 15.0, renew_deadline: float = 10.0,
                 retry_period: float = 2.0,
                 on_gained: Callable[[int], None] | None = None,
                 busy: Callable[[int], bool] = lambda _shard: False,
                 clock: Callable[[], float] = time.monotonic,
                 now: Callable[[], datetime] = _now) -> None:
        self.kube = kube
        self.namespace = namespace
        self.prefix = prefix
        self.identity = identity
        self.count = shards
        self.lease_duration = lease_duration
        self.retry_period = retry_period
        self.on_gained = on_gained
        self.busy = busy  # whether a pass of an instance of this shard is running here
        self.clock = clock
        self.now = now
        # A label value is at most 63 characters: the prefix is hashed into it.
        self.group = f"{prefix[:40]}-{_short(prefix)}".strip("-.")

        def lock(name: str, labels: dict[str, str],
                 on_change: Callable[[bool], None] | None = None) -> LeaseLock:
            return LeaseLock(kube, namespace, name, identity, lease_duration,
                             renew_deadline, retry_period, on_change,
                             {LABEL_GROUP: self.group, **labels}, clock, now)

        self.locks = [lock(f"{prefix}-shard-{i}", {LABEL_ROLE: "shard", LABEL_SHARD: str(i)},
                           lambda held, i=i: self._changed(i, held))  # type: ignore[misc]
                      for i in range(shards)]
        self.member = lock(f"{prefix}-member-{_short(identity)}", {LABEL_ROLE: "member"})
        self._lock = threading.Lock()
        self.views: list[ShardView] = [ShardView() for _ in range(shards)]
        self.members: list[str] = []
        self._handing_over: set[int] = set()
        self._round_count = 0
        self._runner = Rounds(self._safe_round, retry_period, "shards")
        self._pool = ThreadPoolExecutor(max_workers=min(16, shards + 1),
                                        thread_name_prefix="shard-lease")

    # -- the questions ---------------------------------------------------------------------

    def shard(self, key: Hashable) -> int:
        return shard_of(key, self.count)

    def owns(self, key: Hashable) -> bool:
        """Whether this replica holds the instance's shard now (renewed in time)."""
        return self.locks[self.shard(key)].held

    def holder(self, key: Hashable) -> str:
        """The identity holding the instance's shard ("" when none holds it now)."""
        i = self.shard(key)
        if self.locks[i].held:
            return self.identity
        view = self.views[i]
        return "" if view.expired else view.holder

    def held(self) -> list[int]:
        return [i for i, lock in enumerate(self.locks) if lock.held]

    @property
    def last_contact(self) -> float:
        return self.member.last_contact

    # -- the round -------------------------------------------------------------------------

    def start(self) -> ShardSet:
        self._runner.start()
        return self

    def stop(self, release: bool = True) -> None:
        """Stop the rounds; hand every held shard back (the caller's passes are over)."""
        self._runner.stop()
        self._pool.shutdown(wait=True)
        for lock in self.locks:
            if release and lock.held:
                lock.release()
            lock.step_down()
        if release:
            self._delete(self.member.name, "")

    def _safe_round(self) -> None:
        try:
            self.round()
        except KubeError as e:  # e.g. the API server is away: try again next round
            log.warning("shard round: %s", e.message)
        except Exception:  # a bug: logged, and the next round tries again
            log.exception("shard round failed")
        finally:
            for lock in self.locks:  # overdue renewals step down, listed or not
                lock.check_deadline()

    def round(self) -> None:
        """One round: list the Leases, renew membership, renew, take and hand over."""
        # Bounded and not retried, as every lease request: the next round is the retry.
        path = self.kube.resource(API_VERSION, "Lease").path(self.namespace)
        items = list(self.kube.request(
            "GET", path, query={"labelSelector": f"{LABEL_GROUP}={self.group}"},
            retry=False, timeout=self.member.request_timeout).get("items") or [])
        self.member.last_contact = self.clock()
        now = self.now()
        by_name = {str(item["metadata"]["name"]): item for item in items}
        members, stale = self._members(items, now)
        views = [ShardView(*lease_state(by_name.get(lock.name), now, self.lease_duration))
                 for lock in self.locks]
        with self._lock:
            self.views, self.members = views, members
        self._round_count += 1
        for lock in self.locks:
            lock.check_deadline()
        self._finish_handovers()
        mine = [i for i in self.held() if i not in self._handing_over]
        take, give = ([], []) if self._round_count < 2 else decide(self.identity, members,
                                                               views, mine)
        for i in give:
            log.info("%s hands shard %d over (fair share among %d replicas)",
                     self.identity, i, len(members))
            self.locks[i].step_down()  # owns() says no from now: no new pass, no write
            self._handing_over.add(i)
        # Membership, renewals and acquisitions at once: one request's time, not one per
        # Lease, however slow the API server answers (each is bounded, and not retried).
        locks = [self.member, *(self.locks[i] for i in mine if i not in give),
                 *(self.locks[i] for i in take)]
        list(self._pool.map(lambda lock: self._try(lock, by_name.get(lock.name)), locks))
        self._finish_handovers()
        for name, rv in stale:
            self._delete(name, rv)

    @staticmethod
    def _try(lock: LeaseLock, lease: Body | None) -> None:
        try:
            lock.attempt(lease, read=False)
        except KubeError as e:
            log.warning("lease %s: %s", lock.name, e.message)

    def _finish_handovers(self) -> None:
        """Release the handed-over shards whose last pass has ended."""
        for i in sorted(self._handing_over):
            if self.busy(i):
                continue  # released next round (or it expires: never both writing)
            self._handing_over.discard(i)
            self.locks[i].release()

    def _members(self, items: list[Body], now: datetime) -> tuple[list[str],
                                                                  list[tuple[str, str]]]:
        """The live members' identities, and the Leases of members long gone."""
        live = [self.identity]
        stale = []
        for item in items:
            meta = item.get("metadata") or {}
            if (meta.get("labels") or {}).get(LABEL_ROLE) != "member":
                continue
            holder, expired = lease_state(item, now, self.lease_duration)
            if not expired:
                live.append(holder)
                continue
            renewed = _parse(str((item.get("spec") or {}).get("renewTime") or ""))
            if (now - renewed).total_seconds() > MEMBER_GC * self.lease_duration:
                stale.append((str(meta["name"]), str(meta.get("resourceVersion") or "")))
        return sorted(set(live)), stale

    def _delete(self, name: str, resource_version: str) -> None:
        """Delete a member Lease (only at the version seen, when given)."""
        body: Body = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if resource_version:
            body["preconditions"] = {"resourceVersion": resource_version}
        path = self.kube.resource(API_VERSION, "Lease").path(self.namespace, name)
        try:
            self.kube.request("DELETE", path, body=body, retry=False, elect=True,
                              timeout=self.member.request_timeout)
        except KubeError as e:
            if e.status not in (404, 409):
                log.info("could not delete lease %s: %s", name, e.message)

    def _changed(self, i: int, held: bool) -> None:
        log.info("%s %s shard %d", self.identity, "holds" if held else "no longer holds", i)
        if held and self.on_gained is not None:
            try:
                self.on_gained(i)
            except Exception:
                log.exception("shard %d gained: hook failed", i)


__all__ = ["ShardSet", "ShardView", "decide", "fair_share", "shard_of"]
