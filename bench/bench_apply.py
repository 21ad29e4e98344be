"""Benchmark: first apply of 500 objects against a floor and kubectl; a no-op pass.

Run: .venv/bin/python -m bench.bench_apply [--rounds N]
(CONDUCTOR_BENCH_STATE_DIR=<state dir> reuses a running control plane.)

First apply: the same 500 rendered objects, each run into a fresh namespace, in
interleaved rounds (floor, conductor, kubectl, floor, ...) so that load on the machine
hits all three alike; medians are reported:
- the floor: a minimal parallel server-side-apply client (8 threads, raw HTTPS with the
  kubeconfig's CA and token, one PATCH per object, no dry run, no ordering): what the API
  server needs to take these objects;
- the floor with a dry run: the same client doing what conductor must do before its first
  write (a server-side dry run of every object, so that one refusal applies nothing), then
  the apply: the least any client with that guarantee can take;
- conductor: `Engine.up()` (normalize, plan, server-side dry run of all, apply in phases);
- `kubectl apply --server-side`.
No-op pass: over 1,000 managed objects, with the live cache warm (as in the controller),
its wall time (5 passes) and the requests the API server received during one, counted by
a proxy that sees only conductor's requests (target: 0, not only 0 writes).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import secrets
import shutil
import ssl
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from bench.common import control_plane, write_app
from controller.adapters.cache import LiveCache
from controller.adapters.crds import ensure_crd
from controller.adapters.kube import Kube
from controller.adapters.sources.resource import ResourceSource, load_seed
from controller.config import Config, LoopSettings
from controller.model import rendering
from controller.model.parameters import Parameters
from controller.reconcile.engine import Engine
from tests.support.proxy import ApiProxy

Body = dict[str, Any]


def _namespace(kube: Kube, name: str) -> None:
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


class Floor:
    """Server-side apply, nothing else: 8 threads, each with one kept-alive HTTPS
    connection, taking objects from a shared list."""

    def __init__(self, kubeconfig: str, workdir: Path, threads: int = 8) -> None:
        conf = yaml.safe_load(Path(kubeconfig).read_text())
        cluster = conf["clusters"][0]["cluster"]
        self.server = urlsplit(cluster["server"])
        ca = workdir / "floor-ca.crt"
        ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
        self.context = ssl.create_default_context(cafile=str(ca))
        self.token = conf["users"][0]["user"]["token"]
        self.threads = threads

    def apply(self, objects: Sequence[Body], plurals: dict[tuple[str, str], str],
              dry_run: bool = False) -> float:
        todo = list(objects)
        extra = "&dryRun=All" if dry_run else ""
        lock = threading.Lock()
        errors: list[str] = []

        def worker() -> None:
            conn = http.client.HTTPSConnection(self.server.hostname or "127.0.0.1",
                                               self.server.port, context=self.context)
            while True:
                with lock:
                    if not todo:
                        break
                    obj = todo.pop()
                meta = obj["metadata"]
                api = obj["apiVersion"]
                base = "/api/v1" if api == "v1" else f"/apis/{api}"
                path = (f"{base}/namespaces/{meta['namespace']}/"
                        f"{plurals[(api, obj['kind'])]}/{meta['name']}"
                        f"?fieldManager=floor&force=true{extra}")
                conn.request("PATCH", path, body=json.dumps(obj),
                             headers={"Authorization": f"Bearer {self.token}",
                                      "Content-Type": "application/apply-patch+yaml",
                                      "Accept": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                if resp.status >= 300:
                    errors.append(f"{resp.status} {data[:200]!r}")
            conn.close()

        started = time.perf_counter()
        workers = [threading.Thread(target=worker) for _ in range(self.threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - started
        assert not errors, errors[:3]
        return elapsed


def _in(objects: Sequence[Body], namespace: str) -> list[Body]:
    return [{**o, "metadata": {**o["metadata"], "namespace": namespace}} for o in objects]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of the first-apply comparison (default 3)")
    parser.add_argument("--skip-noop", action="store_true",
                        help="only the first-apply comparison (no 1,000-object no-op pass)")
    args = parser.parse_args()
    times: dict[str, list[float]] = {"floor": [], "floor+dry": [], "conductor": [],
                                     "kubectl": []}
    print(f"load average at the start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
          flush=True)
    with control_plane() as state, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = Config(kubeconfig=state.kubeconfig, loop=LoopSettings(interval=3600))
        kube = Kube.connect(base)
        ensure_crd(kube)
        run = secrets.token_hex(3)  # fresh namespaces even on a reused control plane
        created: list[str] = []

        def fresh(what: str) -> str:
            ns = f"bench-{what}-{run}-{len(created)}"
            _namespace(kube, ns)
            created.append(ns)
            return ns

        # -- first apply of 500 objects --------------------------------------------------
        root = work / "app500"
        count = write_app(root, services=50, configmaps=8)
        assert count == 500
        tree = rendering.load_tree(root)
        objects = [m.body for m in rendering.render(tree, Parameters.from_spec(load_seed(root)))]
        plurals = {(o["apiVersion"], o["kind"]): kube.resource(o["apiVersion"],
                                                                 o["kind"]).plural
                   for o in objects}
        try:
            _first_apply(args.rounds, times, state.kubeconfig, work, kube, base, root,
                         objects, plurals, fresh)
            noop = None if args.skip_noop else _noop(state.kubeconfig, work, kube, base,
                                                     fresh)
        finally:
            for ns in created:
                kube.delete("v1", "Namespace", ns)
            kube.close()
    _print(args.rounds, times, noop)
    shutil.rmtree(work, ignore_errors=True)


def _first_apply(rounds: int, times: dict[str, list[float]], kubeconfig: str, work: Path,
                 kube: Kube, base: Config, root: Path, objects: list[Body],
                 plurals: dict[tuple[str, str], str], fresh: Callable[[str], str]) -> None:
    floor = Floor(kubeconfig, work)
    workloads = sum(1 for o in objects if o["kind"] == "Deployment")

    for _ in range(rounds):
        ns = fresh("floor")
        times["floor"].append(floor.apply(_in(objects, ns), plurals))
        _settle(kube, ns, workloads)

        ns = fresh("floordry")
        mine = _in(objects, ns)
        times["floor+dry"].append(floor.apply(mine, plurals, dry_run=True) +
                                  floor.apply(mine, plurals))
        _settle(kube, ns, workloads)

        ns = fresh("conductor")
        cfg = replace(base, namespace=ns, default_namespace=ns, manifest_root=root)
        engine = Engine(cfg, kube, ResourceSource(cfg))
        engine.resource.ensure()
        started = time.perf_counter()
        report = engine.up()
        times["conductor"].append(time.perf_counter() - started)
        assert report.ok, report.to_dict()
        assert report.results.counts()["applied"] == 500
        _settle(kube, ns, workloads)

        ns = fresh("kubectl")
        rendered = work / "rendered.yaml"
        rendered.write_text(yaml.safe_dump_all(_in(objects, ns)))
        started = time.perf_counter()
        done = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "apply",
                               "--server-side", "--field-manager=bench", "-f",
                               str(rendered)], capture_output=True, text=True, check=False)
        times["kubectl"].append(time.perf_counter() - started)
        assert done.returncode == 0, done.stderr[-2000:]
        _settle(kube, ns, workloads)


def _settle(kube: Kube, namespace: str, workloads: int, timeout: float = 120.0) -> None:
    """Wait, untimed, until the cluster is done with a run's Deployments: each has its Pod
    and no Pod changed for a second (the controller manager's ReplicaSets and Pods, a
    simulated kubelet's status writes). Otherwise that work lands in the next timed run,
    always the same one in the interleaving (it made conductor, which runs after the
    floor with a dry run, look 2.7x the floor instead of 1.5x)."""
    deadline = time.monotonic() + timeout
    seen: list[tuple[str, str]] = []
    since = time.monotonic()
    while time.monotonic() < deadline:
        pods = kube.list("v1", "Pod", namespace)[0]
        now = [(p["metadata"]["name"], p["metadata"].get("resourceVersion", ""))
               for p in pods]
        if sorted(now) != seen:
            seen, since = sorted(now), time.monotonic()
        elif len(pods) >= workloads and time.monotonic() - since >= 1.0:
            return
        time.sleep(0.2)


def _noop(kubeconfig: str, work: Path, kube: Kube, base: Config,
          fresh: Callable[[str], str]) -> tuple[list[float], int, int, list[Any]]:
    """A no-op pass over 1,000 managed objects, the cache warm: wall times of 5 passes,
    and the requests (and writes) the API server received during one."""
    root1k = work / "app1000"
    write_app(root1k, services=100, configmaps=8)
    ns = fresh("noop")
    cfg1k = replace(base, namespace=ns, default_namespace=ns, manifest_root=root1k)
    live = LiveCache(kube)
    engine1k = Engine(cfg1k, kube, ResourceSource(cfg1k), live=live)
    assert engine1k.up().ok
    engine1k.reconcile()  # the loop's first pass starts the watches
    noop_times = []
    for _ in range(5):
        started = time.perf_counter()
        noop = engine1k.reconcile()
        noop_times.append(time.perf_counter() - started)
        assert noop.ok and noop.results.counts()["applied"] == 0, noop.to_dict()
    live.stop()
    # Requests are counted by a proxy that sees only ours (the API server's own counter
    # also counts the controller manager's work on the new Deployments).
    with ApiProxy(kubeconfig, work) as proxy:
        counted = Kube.connect(replace(cfg1k, kubeconfig=str(proxy.kubeconfig)))
        counted_live = LiveCache(counted)
        counted_engine = Engine(cfg1k, counted, ResourceSource(cfg1k), live=counted_live)
        assert counted_engine.reconcile().ok  # warms the cache: lists, opens watches
        proxy.stats.reset()
        assert counted_engine.reconcile().ok
        log = list(proxy.stats.log)
        writes = proxy.stats.writes
        requests = sum(proxy.stats.requests.values())
        counted_live.stop()
        counted.close()
    return noop_times, requests, writes, log


def _print(rounds: int, times: dict[str, list[float]],
           noop: tuple[list[float], int, int, list[Any]] | None) -> None:
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"first apply, 500 objects, median of {rounds} interleaved rounds: "
          f"floor {med['floor']:.2f}s, conductor {med['conductor']:.2f}s "
          f"({med['conductor'] / med['floor']:.2f}x the floor, target <= 1.15x), kubectl "
          f"apply --server-side {med['kubectl']:.2f}s ({med['kubectl'] / med['floor']:.2f}x)")
    print(f"  the floor with a dry run of all first {med['floor+dry']:.2f}s "
          f"({med['floor+dry'] / med['floor']:.2f}x the floor); conductor is "
          f"{med['conductor'] / med['floor+dry']:.2f}x that")
    print("  runs: " + "; ".join(f"{k} " + " ".join(f"{t:.2f}" for t in v)
                                  for k, v in times.items()))
    print(f"  load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if noop is None:
        return
    noop_times, requests, writes, log = noop
    noop_best, noop_median = min(noop_times), statistics.median(noop_times)
    print(f"no-op pass, 1000 managed objects, cache warm: median {noop_median:.3f}s, best "
          f"{noop_best:.3f}s over 5 passes; {requests} requests ({writes} writes) to the API "
          "server during one (target: 0)" + (f": {log}" if log else ""))


if __name__ == "__main__":
    main()
