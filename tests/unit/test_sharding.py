"""Sharding's decisions without a cluster: the stable hash, fair shares, what a replica
takes and hands over, and three replicas' shard Leases on an in-memory Lease store with a
fake clock (join, handover after the last pass, death, expiry) — never two holders."""

from __future__ import annotations

import itertools
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from kubernetes import client as k8s

from controller.adapters.kube import (
    Body,
    Kube,
    KubeError,
    NotLeaderError,
    Resource,
    acting_for,
    carry_context,
    current_instance,
)
from controller.config import ApplySettings, Config, ConfigError, validate
from controller.runtime.leadership import API_VERSION, LeaseLock
from controller.runtime.sharding import ShardSet, ShardView, decide, fair_share, shard_of

SHARDS = 12
LEASE_DURATION = 15.0
RENEW_DEADLINE = 10.0
RETRY_PERIOD = 2.0
NAMESPACE = "conductor"


class Clock:
    """One fake time for the monotonic clock and the wall clock alike."""

    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.t, UTC)


class LeaseStore:
    """The API server's part for Leases: create, replace guarded by resourceVersion,
    delete, get and list by label; every write counted."""

    def __init__(self) -> None:
        self.leases: dict[str, Body] = {}
        self.rv = itertools.count(1)
        self.writes: Counter[str] = Counter()
        self.lease = Resource(API_VERSION, "Lease", "leases", True, frozenset())

    def resource(self, api_version: str, kind: str) -> Resource:
        return self.lease

    def request(self, method: str, path: str, *, body: Any = None,
                query: dict[str, str] | None = None, **_: Any) -> Body:
        if method == "GET" and path.endswith("/leases"):
            return {"items": self.list(API_VERSION, "Lease", NAMESPACE,
                                       (query or {}).get("labelSelector", ""))[0]}
        name = path.rsplit("/", 1)[1] if method != "POST" else body["metadata"]["name"]
        current = self.leases.get(name)
        if method == "GET":
            if current is None:
                raise KubeError("not found", status=404)
            return _copy(current)
        self.writes[method] += 1
        if method == "POST":
            if current is not None:
                raise KubeError("exists", status=409)
        elif current is None:
            raise KubeError("not found", status=404)
        if method == "DELETE":
            del self.leases[name]
            return {}
        if method == "PUT" and body["metadata"].get("resourceVersion") != \
                current["metadata"]["resourceVersion"]:  # type: ignore[index]
            raise KubeError("conflict", status=409)
        stored = _copy(body)
        stored["metadata"]["resourceVersion"] = str(next(self.rv))
        self.leases[name] = stored
        return _copy(stored)

    def list(self, api_version: str, kind: str, namespace: str,
             label_selector: str = "") -> tuple[list[Body], str]:
        key, _, value = label_selector.partition("=")
        return [_copy(v) for v in self.leases.values()
                if (v["metadata"].get("labels") or {}).get(key) == value], ""

    def get(self, api_version: str, kind: str, name: str, namespace: str) -> Body | None:
        found = self.leases.get(name)
        return _copy(found) if found else None

    def replace(self, body: Body, elect: bool = False) -> Body:
        return self.request("PUT", f"/x/{body['metadata']['name']}", body=body)


def _copy(body: Body) -> Body:
    return {k: (_copy(v) if isinstance(v, dict) else v) for k, v in body.items()}


def replica(store: LeaseStore, clock: Clock, identity: str,
            busy: set[int] | None = None) -> ShardSet:
    gained: list[int] = []
    shards = ShardSet(store, NAMESPACE, "conductor-app-default", identity,  # type: ignore[arg-type]
                      SHARDS, LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD,
                      on_gained=gained.append,
                      busy=lambda i: busy is not None and i in busy, clock=clock,
                      now=clock.now)
    shards.gained = gained  # type: ignore[attr-defined]
    return shards


def holders(replicas: list[ShardSet]) -> list[list[str]]:
    """Per shard, the replicas that own it now (the fence's answer)."""
    return [[r.identity for r in replicas if r.locks[i].held] for i in range(SHARDS)]


def run(replicas: list[ShardSet], clock: Clock, rounds: int) -> None:
    """Rounds of every replica in turn, one retry period apart; never two owners."""
    for _ in range(rounds):
        for r in replicas:
            r.round()
            assert all(len(h) <= 1 for h in holders(replicas)), holders(replicas)
        clock.t += RETRY_PERIOD


# -- the hash and the shares ------------------------------------------------------------------


def test_the_shard_of_an_instance_is_stable_and_spread() -> None:
    # The same everywhere and always (SHA-256 of "namespace/name", not Python's salted hash).
    assert shard_of(("tenant-1", "shop"), SHARDS) == shard_of(("tenant-1", "shop"), SHARDS)
    assert [shard_of(("ns", f"app-{i}"), SHARDS) for i in range(6)] == [
        shard_of(("ns", f"app-{i}"), SHARDS) for i in range(6)]
    assert shard_of(("a", "b"), SHARDS) == int.from_bytes(
        __import__("hashlib").sha256(b"a/b").digest()[:8], "big") % SHARDS
    counts = Counter(shard_of(("ns", f"app-{i}"), SHARDS) for i in range(1200))
    assert set(counts) == set(range(SHARDS))
    assert max(counts.values()) < 2 * min(counts.values())  # about 100 each
    assert shard_of(("ns", "x"), 1) == 0


def test_fair_shares_add_up_and_differ_by_one_at_most() -> None:
    assert [fair_share(m, "abc", 12) for m in "abc"] == [4, 4, 4]
    assert [fair_share(m, "abc", 10) for m in "abc"] == [4, 3, 3]
    assert fair_share("z", [], 12) == 12  # alone: everything
    assert fair_share("b", ["a"], 5) == 2  # itself counted even when not listed


# -- one round's decision ---------------------------------------------------------------------


def test_a_joining_replica_gets_its_share_handed_over() -> None:
    views = [ShardView("a", False)] * SHARDS
    # a holds all, b has joined: a hands over the six above its share (the highest).
    assert decide("a", ["a", "b"], views, range(SHARDS)) == ([], list(range(6, 12)))
    # b cannot take any while a's Leases are unexpired.
    assert decide("b", ["a", "b"], views, []) == ([], [])
    # Released (no holder): b takes exactly its share.
    released = views[:6] + [ShardView("", True)] * 6
    take, give = decide("b", ["a", "b"], released, [])
    assert sorted(take) == list(range(6, 12)) and give == []


def test_no_handover_when_no_other_member_wants_shards() -> None:
    views = [ShardView("a", False)] * SHARDS
    assert decide("a", ["a"], views, range(SHARDS)) == ([], [])
    # b is listed but already holds its share: a keeps its extra one (11 shards of 3).
    views = [ShardView("a", False)] * 6 + [ShardView("b", False)] * 5
    assert decide("a", ["a", "b"], views, range(6)) == ([], [])


def test_survivors_take_a_dead_replicas_expired_shards() -> None:
    views = ([ShardView("a", False)] * 4 + [ShardView("b", False)] * 4
             + [ShardView("c", True)] * 4)
    take_a, _ = decide("a", ["a", "b"], views, range(4))
    take_b, _ = decide("b", ["a", "b"], views, range(4, 8))
    assert len(take_a) == 2 and len(take_b) == 2
    assert set(take_a) | set(take_b) == {8, 9, 10, 11}  # different ones first, no race
    assert not set(take_a) & set(take_b)


def test_an_unexpired_shard_of_another_is_never_taken() -> None:
    views = [ShardView("gone", False)] * SHARDS  # its member Lease expired, not its shards
    assert decide("a", ["a"], views, []) == ([], [])


# -- three replicas on one Lease store --------------------------------------------------------


def test_three_replicas_split_the_shards_and_never_share_one() -> None:
    store, clock = LeaseStore(), Clock()
    replicas = [replica(store, clock, name) for name in ("r-a", "r-b", "r-c")]
    run(replicas, clock, 1)  # the first round only joins (member Leases)
    assert all(r.held() == [] for r in replicas)
    run(replicas, clock, 3)
    assert [len(r.held()) for r in replicas] == [4, 4, 4]
    assert all(len(h) == 1 for h in holders(replicas))
    assert all(sorted(r.gained) == r.held() for r in replicas)  # type: ignore[attr-defined]
    # Instances follow their shard: each is owned by exactly one replica.
    keys = [("ns", f"app-{i}") for i in range(30)]
    assert all(sum(r.owns(k) for r in replicas) == 1 for k in keys)
    assert {r.holder(keys[0]) for r in replicas} == {
        next(r.identity for r in replicas if r.owns(keys[0]))}

    # Steady state: one renew per held Lease and one member renew per replica per round.
    store.writes.clear()
    run(replicas, clock, 5)
    assert store.writes == Counter({"PUT": 5 * (SHARDS + 3)})


def test_a_joining_replica_takes_its_share_after_the_last_pass_ends() -> None:
    store, clock = LeaseStore(), Clock()
    busy: set[int] = set()
    first = replica(store, clock, "r-a", busy)
    run([first], clock, 2)
    assert first.held() == list(range(SHARDS))
    busy.update(range(SHARDS))  # a pass of every shard is running on r-a
    second = replica(store, clock, "r-b")
    replicas = [first, second]
    run(replicas, clock, 2)
    # r-a stopped owning its excess at once, but holds the Leases until its passes end.
    assert len(first.held()) == 6 and second.held() == []
    handed = [i for i in range(SHARDS) if i not in first.held()]
    assert all(store.leases[f"conductor-app-default-shard-{i}"]["spec"]["holderIdentity"]
               == "r-a" for i in handed)
    busy.clear()
    run(replicas, clock, 2)  # released at r-a's next round, taken at r-b's
    assert sorted(second.held()) == handed and len(first.held()) == 6
    assert all(len(h) == 1 for h in holders(replicas))


def test_a_dead_replicas_shards_move_within_lease_duration_and_one_retry_period() -> None:
    store, clock = LeaseStore(), Clock()
    replicas = [replica(store, clock, name) for name in ("r-a", "r-b", "r-c")]
    run(replicas, clock, 4)
    dead = replicas.pop(1)
    orphaned = dead.held()
    died = clock.t - RETRY_PERIOD  # its last round
    # Before its Leases expire nobody takes them; after, the survivors split them.
    while not all(any(r.locks[i].held for r in replicas) for i in orphaned):
        run(replicas, clock, 1)
        assert all(len(h) <= 1 for h in holders([*replicas, dead]))
        assert clock.t - died <= LEASE_DURATION + 2 * RETRY_PERIOD + RETRY_PERIOD
    taken_at = clock.t - RETRY_PERIOD  # the round that took the last one
    assert LEASE_DURATION < taken_at - died <= LEASE_DURATION + 2 * RETRY_PERIOD
    assert [len(r.held()) for r in replicas] == [6, 6]
    assert not any(lock.held for lock in dead.locks)  # past its renew deadline long ago
    # Its member Lease goes after ten lease durations.
    run(replicas, clock, int(10 * LEASE_DURATION / RETRY_PERIOD) + 1)
    assert dead.member.name not in store.leases
    assert all(r.member.name in store.leases for r in replicas)


def test_a_replica_that_cannot_renew_stops_owning_before_its_leases_expire() -> None:
    store, clock = LeaseStore(), Clock()
    alone = replica(store, clock, "r-a")
    run([alone], clock, 2)
    key = ("ns", "app")
    assert alone.owns(key)

    def refuse(*_args: Any, **_kw: Any) -> Any:
        raise KubeError("unavailable", status=503)

    store.request = refuse  # type: ignore[method-assign]
    clock.t += RENEW_DEADLINE - RETRY_PERIOD  # past the deadline since the last renew
    with pytest.raises(KubeError):
        alone.round()
    assert alone.owns(key) is False  # well before its Leases could expire elsewhere
    assert clock.t - RETRY_PERIOD < clock.t + LEASE_DURATION


# -- the setting --------------------------------------------------------------------------------


def test_the_shards_setting_is_read_checked_and_off_by_default() -> None:
    assert Config().leader.shards == 0  # one replica, no shard Leases: as before
    cfg = Config.from_env({"CONDUCTOR_LEADER_SHARDS": "12"})
    assert cfg.leader.shards == 12
    validate(cfg)
    with pytest.raises(ConfigError, match=r"CONDUCTOR_LEADER_SHARDS: 5000 is out of range"):
        validate(Config.from_env({"CONDUCTOR_LEADER_SHARDS": "5000"}))
    with pytest.raises(ConfigError, match="CONDUCTOR_LEADER_ENABLED=true"):
        validate(replace(cfg, leader=replace(cfg.leader, enabled=False)))


# -- the write fence ------------------------------------------------------------------------------


def test_writes_inside_acting_for_are_fenced_by_the_instance_owner() -> None:
    kube = Kube(k8s.ApiClient(), ApplySettings(attempts=1))
    sent: list[tuple[str, str]] = []
    kube._once = lambda method, path, *a: sent.append((method, path)) or {}  # type: ignore[method-assign]
    mine = ("ns", "mine")
    kube.write_guard = lambda: False  # not the leader
    kube.instance_guard = lambda key: key == mine  # type: ignore[assignment]

    with pytest.raises(NotLeaderError, match="not the leader"):
        kube.request("PATCH", "/api/v1/namespaces/ns/configmaps/x", body={})
    with acting_for(("ns", "theirs")):
        with pytest.raises(NotLeaderError, match="does not own instance ns/theirs"):
            kube.request("PATCH", "/api/v1/namespaces/ns/configmaps/x", body={})
        with pytest.raises(NotLeaderError):
            kube.check_may_write("up")
        kube.request("PATCH", "/p", body={}, query={"dryRun": "All"})  # plans are reads
        kube.request("GET", "/api/v1/namespaces/ns/configmaps/x")
    assert sent == [("PATCH", "/p"), ("GET", "/api/v1/namespaces/ns/configmaps/x")]
    sent.clear()
    with acting_for(mine):
        kube.check_may_write("up")
        kube.request("PATCH", "/mine", body={})  # its owner writes, leader or not
        # A pass's worker pool carries the instance: its writes stay fenced as the pass's.
        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(carry_context(lambda _: current_instance()), range(8))) \
                == [mine] * 8
            assert list(pool.map(lambda _: current_instance(), range(2))) == [None] * 2
    assert current_instance() is None
    assert sent == [("PATCH", "/mine")]


def test_a_renewal_answered_after_the_hold_ran_out_is_a_gain_again() -> None:
    # Writes were refused between the deadline and the answer: what they refused must be
    # woken again, as after any loss, though the Lease never left this replica.
    store, clock = LeaseStore(), Clock()
    changes: list[bool] = []
    lock = LeaseLock(store, NAMESPACE, "one", "r-a", LEASE_DURATION,  # type: ignore[arg-type]
                     RENEW_DEADLINE, RETRY_PERIOD, changes.append, clock=clock,
                     now=clock.now)
    lock.attempt()
    assert changes == [True] and lock.held
    sent = clock.t
    answer = store.request

    def late(method: str, path: str, **kw: Any) -> Body:
        result = answer(method, path, **kw)
        if method == "PUT":
            clock.t = sent + RENEW_DEADLINE + 0.5  # answered after the hold ran out
        return result

    store.request = late  # type: ignore[method-assign]
    clock.t = sent + RENEW_DEADLINE - 0.5  # sent in time
    lock.attempt()
    assert lock.held
    assert changes == [True, False, True]
