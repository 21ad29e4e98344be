"""Any replica answers every call (issue 14): three `conductor run` processes share one
PostgreSQL and sit behind a round-robin load balancer (tests/support/proxy.RoundRobin), as
Pods behind a Service. The reference document's agent workflows (health, parameters, up,
update, down, events, errors) are replayed through it: every call answers as from a
single replica, and none answers 503 not_leader. Then the same with the leader SIGKILLed
in the middle of an `up`: every call completes or answers a documented retryable error
(502/503 unreachable from the balancer for a call in flight on the dead Pod, 503
unavailable, 202 with an operation that ends interrupted), the retries converge on the
requested state, and the events and parameter history seen through the balancer hold
every step once.

Each replica talks to the API server through its own ApiProxy, so the test sees which
replica wrote what, and can make the app's writes slow to kill the owner mid-operation.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.kube import Kube
from controller.adapters.sources.resource import API_VERSION, KIND
from devcluster import kubelet
from devcluster.running import free_port
from tests.support.cluster import App, LocalCluster, controller_process
from tests.support.postgres import (  # noqa: F401 (fixtures)
    Database,
    postgres_fixture,
    postgres_server_fixture,
)
from tests.support.proxy import ApiProxy, RoundRobin
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

LEASE = {"CONDUCTOR_LEADER_LEASE_DURATION": "12", "CONDUCTOR_LEADER_RENEW_DEADLINE": "9",
         "CONDUCTOR_LEADER_RETRY_PERIOD": "1.5"}  # tolerant of a loaded machine
BOOKKEEPING = ("deploymentparameters", "leases", "/events")
# What a client may be told while a replica dies: retry (the balancer's own 502/503 for a
# call in flight on the dead Pod, the controller's 503 unavailable, 429 rate_limited).
RETRYABLE = {(502, "unreachable"), (503, "unreachable"), (503, "unavailable"),
             (429, "rate_limited")}
WORKLOADS = (("apps/v1", "Deployment", "frontend"), ("apps/v1", "Deployment", "redis"),
             ("apps/v1", "StatefulSet", "postgres"))


@dataclass
class Replica:
    identity: str
    port: int
    proxy: ApiProxy
    proc: Any
    log: Path

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
            return json.loads(r.read())

    def app_writes(self) -> list[tuple[str, str, int]]:
        with self.proxy.stats.lock:
            return [e for e in self.proxy.stats.log
                    if e[0] in ("POST", "PUT", "PATCH", "DELETE") and "dryRun" not in e[1]
                    and not any(b in e[1] for b in BOOKKEEPING)]


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str]  # names in lower case

    @property
    def code(self) -> str:
        return str(self.body.get("error", "")) if isinstance(self.body, dict) else ""


@dataclass
class Client:
    """An agent calling through the balancer; every answer is kept."""

    url: str
    answers: list[tuple[str, str, Answer]] = field(default_factory=list)

    def call(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> Answer:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json",
                                              **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                raw, status, got = r.read(), r.status, dict(r.headers.items())
        except urllib.error.HTTPError as e:
            raw, status, got = e.read(), e.code, dict(e.headers.items())
        text = raw.decode()
        answer = Answer(status, json.loads(text) if text.startswith(("{", "[")) else text,
                        {k.lower(): v for k, v in got.items()})
        self.answers.append((method, path, answer))
        return answer

    def not_leader(self) -> list[tuple[str, str, Answer]]:
        return [a for a in self.answers if a[2].code == "not_leader" or
                (a[2].status == 503 and a[2].code not in ("unreachable", "unavailable"))]

    def _finished(self, link: str) -> Answer | None:
        found = self.call("GET", link)
        return found if found.status == 200 and found.body["status"] != "running" else None

    def deploy(self, op: str, services: list[str], deadline: float = 150.0
               ) -> tuple[Answer, list[Answer]]:
        """up/update/down as the reference's retry guidance says: retry what is retryable,
        follow a 202's operation, retry an operation that was interrupted."""
        tried: list[Answer] = []
        end = time.monotonic() + deadline
        idle = threading.Event()
        while time.monotonic() < end:
            answer = self.call("POST", f"/api/{op}", {"services": services})
            tried.append(answer)
            if answer.status == 202:
                link = answer.headers.get("location") or answer.body["links"]["self"]
                final: Answer = wait_for(partial(self._finished, link),
                                         timeout=end - time.monotonic(), interval=0.5,
                                         message=f"operation {link}")
                if final.body["status"] == "succeeded":
                    return final, tried
                tried.append(final)
                assert final.body["status"] == "interrupted", final.body
            elif answer.status == 200:
                return answer, tried
            else:
                assert (answer.status, answer.code) in RETRYABLE, answer
            idle.wait(0.5)  # the reference's backoff, short: a new owner is seconds away
        raise AssertionError(f"{op} did not converge: {[(a.status, a.body) for a in tried]}")


@contextmanager
def replica(cluster: LocalCluster, app: App, workdir: Path, identity: str, store: Database,
            slow: threading.Event) -> Iterator[Replica]:
    workdir.mkdir()

    def fault(method: str, path: str, n: int) -> float | None:
        app_write = method in ("POST", "PUT", "PATCH", "DELETE") and "dryRun" not in path \
            and not any(b in path for b in BOOKKEEPING)
        return 1.0 if slow.is_set() and app_write else None

    with ApiProxy(cluster.kubeconfig, workdir, fault) as proxy:
        port = free_port()
        log = workdir / "controller.log"
        with controller_process(
                LocalCluster(str(proxy.kubeconfig), None), app.root, app.namespace, port, log,
                CONDUCTOR_LEADER_IDENTITY=identity, CONDUCTOR_STORE_URL=store.url,
                CONDUCTOR_STORE_PASSWORD_FILE=str(store.password_file), **LEASE) as proc:
            yield Replica(identity, port, proxy, proc, log)


@dataclass
class Trio:
    replicas: list[Replica]
    lb: RoundRobin
    client: Client
    slow: threading.Event

    def leader(self) -> Replica:
        found: Replica = wait_for(lambda: next(
            (r for r in self.replicas if r.proc.poll() is None and _leads(r)), None),
            timeout=60, message="a leader")
        return found


def _leads(r: Replica) -> bool:
    try:
        return bool(r.get("/readyz").get("leader"))
    except (OSError, ValueError):
        return False


@pytest.fixture
def trio(cluster: LocalCluster, app: App, postgres: Database, tmp_path: Path,
         kube: Kube) -> Iterator[Trio]:
    slow = threading.Event()
    simulator = kubelet.Simulator(kube, set, app.namespace).start()
    try:
        with ExitStack() as stack:
            replicas = [stack.enter_context(replica(cluster, app, tmp_path / name, name,
                                                    postgres, slow))
                        for name in ("r0", "r1", "r2")]
            lb = stack.enter_context(RoundRobin([r.port for r in replicas]))
            wait_for(lambda: all(_ready(r) for r in replicas), timeout=90,
                     message=f"three replicas ready (logs: {tmp_path}/r*/controller.log)")
            trio = Trio(replicas, lb, Client(lb.url), slow)
            # The leader may change while a loaded machine starts three processes.
            wait_for(lambda: "lastPass" in trio.leader().get("/api/status") and all(
                kube.get(v, k, n, app.namespace) for v, k, n in WORKLOADS), timeout=120,
                message=f"the first pass applied (logs: {tmp_path}/r*/controller.log)")
            yield trio
    finally:
        simulator.stop()


def _ready(r: Replica) -> bool:
    try:
        return bool(r.get("/readyz").get("status") == "ready")
    except (OSError, ValueError):
        return False


def _ready_app(kube: Kube, app: App) -> bool:
    obj = kube.get(API_VERSION, KIND, "default", app.namespace) or {}
    status = obj.get("status") or {}
    return {c["type"]: c["status"] for c in status.get("conditions", [])}.get("Ready") \
        == "True"


def _replicas_of(kube: Kube, app: App, kind: str, name: str) -> int | None:
    found = kube.get("apps/v1", kind, name, app.namespace)
    return None if found is None else int(found["spec"].get("replicas") or 0)


def _same_from_every_replica(client: Client, path: str, rounds: int = 3,
                             timeout: float = 30.0) -> Any:
    """GET `path` `rounds` times through the balancer (so from each replica): one answer.

    Events still being recorded (a Pod turning ready, a health change) may change the
    answer between two calls, so the rounds are repeated until they agree; a replica
    that keeps answering differently fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        bodies = [client.call("GET", path) for _ in range(rounds)]
        assert all(b.status == 200 for b in bodies), [(b.status, b.body) for b in bodies]
        if all(b.body == bodies[0].body for b in bodies):
            return bodies[0].body
        assert time.monotonic() < deadline, [b.body for b in bodies]
        time.sleep(0.5)


def test_every_workflow_call_answers_from_any_replica(trio: Trio, kube: Kube,
                                                      app: App) -> None:
    c = trio.client
    leader = trio.leader()
    # Health, from each replica.
    for _ in range(3):
        assert c.call("GET", "/healthz").status == 200
    # Parameters: read, then write (whichever replica takes it), then read back anywhere.
    current = c.call("GET", "/api/parameters")
    assert current.status == 200 and current.headers.get("etag"), current
    spec = {k: v for k, v in current.body.items() if k in ("global", "services")}
    spec["services"]["redis"] = {**spec["services"].get("redis", {}), "replicas": 2}
    written = c.call("POST", "/api/parameters", spec)
    assert written.status == 200, written.body
    version = written.headers["etag"]
    assert all(c.call("GET", "/api/parameters").headers["etag"] == version for _ in range(3))
    # Deploy: update and up, three times each, so every replica takes one; each answers
    # the owner's body (per-object results) and the change is applied once.
    for op, message in (("update", "Successfully updated all manifests"),
                        ("up", "Successfully deployed all manifests")):
        for _ in range(3):
            done = c.call("POST", f"/api/{op}", {"services": ["redis"]})
            assert done.status == 200, done.body
            assert done.body["message"] == message and done.body["results"], done.body
            assert done.body["services"] == ["redis"]
            shown = _same_from_every_replica(c, f"/api/operations/{done.body['operation']}")
            assert shown["status"] == "succeeded" and shown["operation"] == op
    takers = {port for m, p, port, _ in trio.lb.log if m == "POST" and p.startswith("/api/up")}
    assert len(takers) == 3, takers
    assert _replicas_of(kube, app, "Deployment", "redis") == 2
    others = [r for r in trio.replicas if r is not leader]
    assert all(r.app_writes() == [] for r in others), [r.app_writes() for r in others]
    # Wait and check health (polling, as the reference says), then events.
    wait_for(lambda: all(s["status"] == "healthy" for s in
                         c.call("GET", "/api/services/health").body["services"]),
             timeout=60, message="every service healthy through the balancer")
    events = _same_from_every_replica(c, "/api/events?limit=50")["events"]
    assert any(e["reason"] in ("Updated", "Applied") for e in events), events
    _same_from_every_replica(c, "/api/events/errors?limit=20")
    _same_from_every_replica(c, f"/api/events/{app.namespace}/Deployment/redis?limit=10")
    # Down then up of one service, and wait for health on the answer (waitHealthy).
    gone = c.call("POST", "/api/down", {"services": ["frontend"]})
    assert gone.status == 200 and gone.body["message"] == "Successfully removed all manifests"
    assert _replicas_of(kube, app, "Deployment", "frontend") is None
    back = c.call("POST", "/api/up?waitHealthy=true&healthTimeout=60",
                  {"services": ["frontend"]})
    assert back.status == 200, back.body
    assert back.body["health"]["frontend"]["status"] == "healthy", back.body
    # Errors answer the same from every replica, and change nothing.
    for _ in range(3):
        bad = c.call("POST", "/api/parameters", {"services": {"redis": {"replicas": "many"}}})
        assert (bad.status, bad.code) == (400, "validation_error"), bad.body
        stale = c.call("PATCH", "/api/parameters", {"services": {"redis": {"replicas": 4}}},
                       {"If-Match": '"1-stale"'})
        assert (stale.status, stale.code) == (412, "precondition_failed"), stale.body
        missing = c.call("GET", "/api/operations/feedface-000000000000")
        assert (missing.status, missing.code) == (404, "not_found"), missing.body
    assert c.call("GET", "/api/parameters").headers["etag"] == version
    history = _same_from_every_replica(c, "/api/parameters/history")["history"]
    revisions = [h["revision"] for h in history]
    assert len(revisions) == len(set(revisions)) >= 2, revisions
    assert c.not_leader() == [], c.not_leader()


@pytest.mark.parametrize("taker", ["owner", "another"])
def test_a_leader_killed_in_the_middle_of_an_up_loses_no_call(
        trio: Trio, kube: Kube, app: App, taker: str) -> None:
    """`taker`: the replica the up lands on, the owner itself (killed with the call in
    flight: the balancer answers 502) or another one (it waits for the owner, which dies;
    the next owner reports the operation interrupted, never runs it again)."""
    c = trio.client
    leader = trio.leader()
    spec = {k: v for k, v in c.call("GET", "/api/parameters").body.items()
            if k in ("global", "services")}
    spec["services"]["redis"] = {**spec["services"].get("redis", {}), "replicas": 3}
    assert c.call("POST", "/api/parameters", spec).status == 200
    down, _ = c.deploy("down", [])
    assert down.body["message"] == "Successfully removed all manifests", down.body
    assert all(kube.get(v, k, n, app.namespace) is None for v, k, n in WORKLOADS)

    # The up runs slowly (each app write held 1 s) and its owner is killed once it
    # has started writing.
    for r in trio.replicas:
        r.proxy.stats.reset()
    trio.slow.set()
    while (trio.lb.peek() == leader.port) != (taker == "owner"):
        assert c.call("GET", "/healthz").status == 200  # the balancer's turn moves on
    result: dict[str, Any] = {}
    agent = threading.Thread(target=lambda: result.update(zip(
        ("final", "tried"), c.deploy("up", []), strict=True)), daemon=True)
    agent.start()
    wait_for(leader.app_writes, timeout=60, interval=0.05,
             message="the owner's up writing")
    os.killpg(leader.proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    leader.proc.wait(10)
    trio.slow.clear()
    agent.join(170)
    assert not agent.is_alive(), "the agent's up never converged"
    final, tried = result["final"], result["tried"]
    print(f"up after the kill: {[(a.status, a.code or a.body.get('status')) for a in tried]} "
          f"-> {final.status} in {time.monotonic() - killed:.1f} s")
    assert c.not_leader() == [], c.not_leader()
    first = tried[0]
    if taker == "owner":
        assert (first.status, first.code) == (502, "unreachable"), first
    else:  # told to retry (503), or to follow the operation, which was interrupted
        assert (first.status, first.code) == (503, "unavailable") or \
            (first.status == 202 and tried[1].body["status"] == "interrupted"), tried

    # The state is as requested, through the new leader.
    new = trio.leader()
    assert new is not leader
    assert all(kube.get(v, k, n, app.namespace) is not None for v, k, n in WORKLOADS)
    assert _replicas_of(kube, app, "Deployment", "redis") == 3
    wait_for(lambda: _ready_app(kube, app), timeout=90, message="Ready again")
    # Every step through the balancer, once: the parameter write in the history, the
    # down's deletions and the up's creations in the events, no id twice, the same from
    # every replica.
    history = _same_from_every_replica(c, "/api/parameters/history", 2)["history"]
    revisions = [h["revision"] for h in history]
    assert len(revisions) == len(set(revisions)), revisions
    assert history, [(r.identity, r.log.read_text()[-3000:]) for r in trio.replicas]
    assert history[0]["parameters"]["services"]["redis"]["replicas"] == 3
    events = _same_from_every_replica(c, "/api/events?limit=500", 2)["events"]
    ids = [e["id"] for e in events]
    assert len(ids) == len(set(ids)), "an event listed twice"
    redis = [e for e in events if (e.get("resource") or "").endswith("/Deployment/redis")]
    reasons = [e["reason"] for e in redis]
    assert "Deleted" in reasons and "Created" in reasons, reasons
