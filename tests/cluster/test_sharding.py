"""Instances sharded across three replicas on shard Leases (issue 13), on the local
control plane.

Three `conductor run` processes share 6 shard Leases (2 each once balanced), each behind
its own counting proxy (tests/support/proxy.py), so the test sees every write each
replica sends, and each logs one line per pass (who, which instance, start and end).
30 instances of a tiny app: every instance is reconciled by exactly one replica, the
holder of its shard; a change to every instance writes each object once, from its owner
only; SIGKILL one replica and its instances are reconciled by the two others within the
lease duration and one retry period, with nothing written again; and across all three
logs no instance ever has two passes overlapping.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.adapters.kube import Kube
from controller.adapters.sources.resource import API_VERSION, KIND
from controller.runtime.sharding import shard_of
from devcluster.running import free_port
from tests.support.cluster import LocalCluster, controller_process
from tests.support.proxy import ApiProxy
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

SHARDS = 6
INSTANCES = 30
LEASE_DURATION = 10.0
RENEW_DEADLINE = 7.0
RETRY_PERIOD = 1.0
PREFIX = "conductor-conductor-default"  # conductor-<app name>-<own instance>
PASS = re.compile(r"pass of (\S+) by (\S+) started ([\d.]+) ended ([\d.]+) "
                  r"\(\S+, (ok|failed|refused)\)")
SHARD = re.compile(r"^(\S+ \S+) INFO \S+: (\S+) (holds|no longer holds) shard (\d+)$", re.M)
WEB = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ instance }}-web
data:
  port: "{{ service.port }}"
---
apiVersion: v1
kind: Service
metadata:
  name: {{ instance }}-web
spec:
  clusterIP: None
  selector: {app: {{ instance }}-web}
  ports:
  - {name: http, port: {{ service.port }}, protocol: TCP}
"""


@dataclass
class Replica:
    identity: str
    proxy: ApiProxy
    proc: subprocess.Popen[bytes]
    log: Path
    port: int

    def shards(self) -> dict[str, Any]:
        """What its /api/status says it holds."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/status",
                                    timeout=10) as resp:
            shown: dict[str, Any] = json.loads(resp.read())["shards"]
        return shown

    def passes(self) -> list[tuple[str, str, float, float, str]]:
        """(instance, identity, start, end, outcome) of every pass this replica logged."""
        return [(m[1], m[2], float(m[3]), float(m[4]), m[5])
                for m in PASS.finditer(self.log.read_text(errors="replace"))]

    def holdings(self) -> dict[int, list[tuple[float, float]]]:
        """Per shard, the (from, to) Unix times this replica held it, from its log (a
        hold that has not ended runs to now)."""
        out: dict[int, list[tuple[float, float]]] = defaultdict(list)
        since: dict[int, float] = {}
        for m in SHARD.finditer(self.log.read_text(errors="replace")):
            when = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            shard = int(m[4])
            if m[3] == "holds":
                since[shard] = when
            elif shard in since:
                out[shard].append((since.pop(shard), when))
        for shard, start in since.items():
            out[shard].append((start, time.time() + 1))
        return out

    def problems(self, names: Iterable[str] = ()) -> list[str]:
        """Its warnings, errors and shard moves (the tail), and every line about the
        named instances, for a failure's message."""
        marks = tuple(f"/{n} " for n in names) + tuple(f" {n}:" for n in names)
        lines = self.log.read_text(errors="replace").splitlines()
        return [line[:300] for line in lines if " WARNING " in line or " ERROR " in line
                or "shard" in line or any(m in line for m in marks)][-40:]

    def lease_writes(self) -> int:
        with self.proxy.stats.lock:
            return sum(1 for method, path, _ in self.proxy.stats.log
                       if method in ("POST", "PUT", "PATCH", "DELETE") and "/leases" in path)

    def applies(self) -> Counter[str]:
        """Server-side applies (not dry runs) this replica sent, per object path."""
        with self.proxy.stats.lock:
            log = list(self.proxy.stats.log)
        return Counter(path.split("?")[0] for method, path, _ in log
                       if method == "PATCH" and "dryRun" not in path
                       and ("/configmaps/" in path or "/services/" in path))


@contextmanager
def replica(cluster: LocalCluster, root: Path, namespace: str, workdir: Path,
            identity: str) -> Iterator[Replica]:
    workdir.mkdir()
    with ApiProxy(cluster.kubeconfig, workdir) as proxy:
        log = workdir / "controller.log"  # its event store is workdir/ev.db: its own
        port = free_port()
        with controller_process(
                LocalCluster(str(proxy.kubeconfig), None), root, namespace, port, log,
                CONDUCTOR_LEADER_SHARDS=str(SHARDS),
                CONDUCTOR_LEADER_LEASE_DURATION=str(LEASE_DURATION),
                CONDUCTOR_LEADER_RENEW_DEADLINE=str(RENEW_DEADLINE),
                CONDUCTOR_LEADER_RETRY_PERIOD=str(RETRY_PERIOD),
                CONDUCTOR_LEADER_IDENTITY=identity,
                CONDUCTOR_INSTANCES_CONCURRENCY="8") as proc:
            yield Replica(identity, proxy, proc, log, port)


def check_owners(replicas: list[Replica], namespace: str, names: list[str]) -> None:
    """From every replica's log: each instance was reconciled, each of its passes ran on
    a replica that held its shard when the pass started (log times are to the
    millisecond), and no two passes of one instance overlapped, across replicas.

    A pass whose replica's hold lapsed meanwhile (an API server that did not answer a
    renewal in time) is refused at its next write and logged "refused": its writes
    stopped before the Lease could expire elsewhere, and it is not counted as a pass."""
    # The status is written inside the pass, its log line when the pass returns.
    wait_for(lambda: set(names) <= {p[0].split("/", 1)[1] for r in replicas
                                    for p in r.passes() if p[4] == "ok"},
             timeout=30, message="a successful pass of each instance logged")
    holds = {r.identity: r.holdings() for r in replicas}
    every = [p for r in replicas for p in r.passes()]
    for instance, identity, start, _, _ in every:
        ns, name = instance.split("/", 1)
        if name == "default":
            continue  # the own instance: the leader's
        shard = shard_of((ns, name), SHARDS)
        assert any(a - 0.002 <= start <= b for a, b in holds[identity].get(shard, [])), \
            (instance, identity, start, holds[identity].get(shard))
    counted = [p for p in every if p[4] != "refused"]
    assert overlapping(counted) == [], overlapping(counted)


def tiny_app(tmp_path: Path, namespace: str) -> Path:
    """One service of two objects (a ConfigMap, a headless Service) named after the
    instance, so 30 instances share one namespace."""
    root = tmp_path / "manifests"
    (root / "web").mkdir(parents=True)
    (root / "web" / "web.yaml").write_text(WEB)
    (root / "parameters.yaml").write_text(yaml.safe_dump(
        {"global": {"namespace": namespace}, "services": {"web": {"port": 80}}}))
    return root


def shard_holders(kube: Kube, namespace: str) -> dict[int, str]:
    out = {}
    for i in range(SHARDS):
        lease = kube.get("coordination.k8s.io/v1", "Lease", f"{PREFIX}-shard-{i}",
                         namespace) or {}
        out[i] = str((lease.get("spec") or {}).get("holderIdentity") or "")
    return out


def balanced(holders: dict[int, str], replicas: int) -> dict[int, str] | None:
    """The holders when every shard is held and each replica holds its fair share."""
    counts = Counter(holders.values())
    if "" in counts or len(counts) != replicas or \
            max(counts.values()) - min(counts.values()) > 1:
        return None
    return holders


LAGGING: list[str] = []  # the instances the last last_pass_ok found not done


def last_pass_ok(kube: Kube, namespace: str, names: list[str]) -> bool:
    """Every named instance's status says its generation was applied without failure."""
    objects = {o["metadata"]["name"]: o for o in kube.list(API_VERSION, KIND, namespace)[0]}
    lagging = []
    for name in names:
        obj = objects.get(name) or {"metadata": {}}
        status = obj.get("status") or {}
        conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
        if conditions.get("Stalled") != "False" or "lastAppliedRevision" not in status or \
                status.get("observedGeneration") != obj["metadata"].get("generation"):
            lagging.append(name)
    LAGGING[:] = lagging
    return not lagging


def waiting(replicas: list[Replica]) -> Callable[..., Any]:
    """wait_for, whose failure shows each replica's warnings and shard moves."""
    def wait(condition: Callable[[], Any], **kw: Any) -> Any:
        try:
            return wait_for(condition, **kw)
        except AssertionError as e:
            logs = "\n".join(f"--- {r.identity}\n" + "\n".join(r.problems(LAGGING[:3]))
                             for r in replicas)
            raise AssertionError(f"{e} (not done: {LAGGING})\n{logs}") from None
    return wait


def overlapping(passes: list[tuple[str, str, float, float, str]]) -> list[Any]:
    """Pairs of passes of one instance that overlap in time (any replicas)."""
    by_instance: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for instance, identity, start, end, _ in passes:
        by_instance[instance].append((start, end, identity))
    found = []
    for instance, runs in by_instance.items():
        runs.sort()
        for before, after in itertools.pairwise(runs):
            if after[0] < before[1]:
                found.append((instance, before, after))
    return found


def test_thirty_instances_on_three_replicas_one_owner_each_and_a_killed_one_moves(
        cluster: LocalCluster, kube: Kube, namespace: str, tmp_path: Path,
        crd: dict[str, Any]) -> None:
    root = tiny_app(tmp_path, namespace)
    names = [f"i-{n:02d}" for n in range(INSTANCES)]
    with ExitStack() as stack:
        replicas = [stack.enter_context(replica(cluster, root, namespace, tmp_path / name,
                                                name)) for name in ("r-a", "r-b", "r-c")]
        by_id = {r.identity: r for r in replicas}
        wait = waiting(replicas)
        # Balanced: two shards each (a replica joins, then takes up to its fair share).
        wait(lambda: balanced(shard_holders(kube, namespace), 3), timeout=90, interval=0.2,
             message="the shards balanced 2/2/2")

        # 30 instances: each reconciled by the holder of its shard, and only by it.
        for name in names:
            kube.create({"apiVersion": API_VERSION, "kind": KIND,
                         "metadata": {"name": name, "namespace": namespace},
                         "spec": {"global": {"namespace": namespace}}})
        wait(lambda: last_pass_ok(kube, namespace, names), timeout=120, interval=0.5,
             message="every instance's first pass")
        check_owners(replicas, namespace, names)
        # /api/status shows each replica's shards and how many instances they bring it.
        def status_balanced() -> list[dict[str, Any]] | None:
            shown = [r.shards() for r in replicas]
            held = sorted(i for s in shown for i in s["held"])
            return shown if held == list(range(SHARDS)) and \
                all(len(s["held"]) == 2 for s in shown) else None

        shown = wait(status_balanced, timeout=30,
                     message="every shard held once, two a replica, as /api/status says")
        assert all(s["count"] == SHARDS for s in shown), shown
        assert sum(s["instances"] for s in shown) == INSTANCES, shown
        # Each object written once (its creation), by the replica that owned it then.
        created = sum((r.applies() for r in replicas), Counter[str]())
        mine = [p for p in created if "/default-web" not in p]  # not the own instance's
        assert len(mine) == 2 * INSTANCES and {created[p] for p in mine} == {1}, created

        # One change to every instance: each object written once more, by one replica.
        for r in replicas:
            r.proxy.stats.reset()
        for name in names:
            kube.patch(API_VERSION, KIND, name, {"spec": {"services": {"web": {"port": 81}}}},
                       namespace)
        wait(lambda: last_pass_ok(kube, namespace, names), timeout=120, interval=0.5,
             message="every instance's change applied")
        written = sum((r.applies() for r in replicas), Counter[str]())
        written = Counter({p: n for p, n in written.items() if "/default-web" not in p})
        assert len(written) == 2 * INSTANCES and set(written.values()) == {1}, written
        check_owners(replicas, namespace, names)

        # SIGKILL one replica: the two others take its shards and reconcile its instances.
        holders = wait(lambda: balanced(shard_holders(kube, namespace), 3), timeout=30,
                       message="the shards balanced before the kill")
        victim = by_id[holders[0]]
        orphans = [n for n in names if holders[shard_of((namespace, n), SHARDS)]
                   == victim.identity]
        survivors = [r for r in replicas if r is not victim]
        for r in survivors:
            r.proxy.stats.reset()
        os.killpg(victim.proc.pid, signal.SIGKILL)
        killed = time.time()
        victim.proc.wait(30)

        def reconciled_after_kill() -> dict[str, float] | None:
            first: dict[str, float] = {}
            for r in survivors:
                for instance, _, start, _, outcome in r.passes():
                    name = instance.split("/", 1)[1]
                    if name in orphans and start > killed and outcome == "ok":
                        first[name] = min(first.get(name, start), start)
            return first if len(first) == len(orphans) else None

        first = wait(reconciled_after_kill, timeout=LEASE_DURATION * 4, interval=0.1,
                     message="the killed replica's instances reconciled by the others")
        latest = max(first.values()) - killed
        # The victim renewed at most a retry period before the kill; its Leases expire a
        # lease duration after that renew, the survivors see it at their next round (one
        # retry period) and wake the shard's instances at once. The margin covers one
        # round's two requests and a pass's start on this loaded machine.
        print(f"takeover: every orphaned instance's pass started within {latest:.2f} s "
              f"of SIGKILL (lease duration + retry period = "
              f"{LEASE_DURATION + RETRY_PERIOD} s)")
        assert latest <= LEASE_DURATION + RETRY_PERIOD + 3.0, latest
        after = wait(lambda: balanced(shard_holders(kube, namespace), 2), timeout=30,
                     message="the shards balanced 3/3 over the survivors")
        assert victim.identity not in after.values()
        # Nothing was written again: the takeover passes found everything applied (the
        # own instance is the leader's, not sharded: its first pass may come only now).
        assert [Counter({p: n for p, n in r.applies().items() if "/default-web" not in p})
                for r in survivors] == [Counter(), Counter()]
        check_owners(replicas, namespace, names)

        # Lease traffic: per retry period one renew per held Lease (6 shards, 2 member
        # Leases, the leader's), whatever the number of instances.
        for r in survivors:
            r.proxy.stats.reset()
        started = time.monotonic()
        expected = (SHARDS + len(survivors) + 1) / RETRY_PERIOD
        wait(lambda: sum(r.lease_writes() for r in survivors) >= 3 * expected, timeout=30,
             message="three retry periods of lease renewals")
        rate = sum(r.lease_writes() for r in survivors) / (time.monotonic() - started)
        print(f"lease writes: {rate:.1f}/s with {INSTANCES} instances, {SHARDS} shards, "
              f"{len(survivors)} replicas (formula: {expected:.1f}/s)")
        assert rate <= expected * 1.25, (rate, expected)
