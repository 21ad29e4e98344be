"""Benchmark: what a write costs when the replica that takes it does not own the instance.

Run: .venv/bin/python -m bench.bench_replicas [--calls N]
(CONDUCTOR_BENCH_STATE_DIR=/path reuses a running control plane, as the other benchmarks.)

Starts two real `conductor run` processes (gunicorn) of the example app, sharing one
PostgreSQL on loopback (tests/support/postgres.py), with leader election; once one leads,
it sends N (50 by default) `POST /api/update {"services": ["redis"]}` to the owner and N
to the other replica, interleaved so both meet the same machine load. On the owner the
call runs the operation in process; on the other it is recorded on the
DeploymentParameters object, run by the owner, and its outcome read back from status
(runtime/requests.py). Then the same for `PATCH /api/parameters`, which any replica
writes itself (no hand-over: the ratio should be about 1).

Prints p50 and p99 of each, the non-owner's extra latency and the ratio, and the load
average at the start and the end (the machine's other work moves every figure).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml

from bench.common import REPO, control_plane, controller, get_json
from controller.adapters.crds import ensure_crd
from controller.adapters.kube import Kube
from controller.config import Config
from devcluster import kubelet
from devcluster.running import free_port
from tests.support.waiting import wait_for

LEASE = {"CONDUCTOR_LEADER_LEASE_DURATION": "15", "CONDUCTOR_LEADER_RENEW_DEADLINE": "10",
         "CONDUCTOR_LEADER_RETRY_PERIOD": "2"}


def call(port: int, method: str, path: str, body: Any) -> float:
    """One call; its wall time in milliseconds (it must answer 200)."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as resp:
        resp.read()
        assert resp.status == 200, resp.status
    return (time.perf_counter() - started) * 1000


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextmanager
def postgres() -> Iterator[tuple[str, str]]:
    from tests.support.postgres import Postgres, binaries  # a test helper: bench only

    bindir = binaries()
    if bindir is None:
        raise SystemExit("PostgreSQL is not installed (Debian's postgresql package)")
    server = Postgres(bindir).start()
    try:
        db = server.database()
        yield db.url, str(db.password_file)
    finally:
        server.stop()


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50, help="calls per replica and write")
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        state = stack.enter_context(control_plane())
        url, password_file = stack.enter_context(postgres())
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-replicas-")))
        kube = Kube.connect(Config(kubeconfig=state.kubeconfig))
        ensure_crd(kube)
        namespace = f"bench-replicas-{secrets.token_hex(3)}"
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        stack.callback(kube.delete, "v1", "Namespace", namespace)
        root = work / "manifests"
        shutil.copytree(REPO / "manifests", root)
        params = yaml.safe_load((root / "parameters.yaml").read_text())
        params["global"]["namespace"] = namespace
        (root / "parameters.yaml").write_text(yaml.safe_dump(params))
        ports = {}
        for name in ("a", "b"):
            ports[name] = free_port()
            stack.enter_context(controller(
                state.kubeconfig, root, namespace, work / f"{name}-events.db", ports[name],
                work / f"{name}.log", {"CONDUCTOR_STORE_URL": url,
                                       "CONDUCTOR_STORE_PASSWORD_FILE": password_file,
                                       "CONDUCTOR_LEADER_IDENTITY": name, **LEASE}))

        def leader() -> str | None:
            roles = {n: get_json(p, "/readyz") for n, p in ports.items()}
            leading = [n for n, r in roles.items() if r.get("leader")]
            ready = all(r.get("status") == "ready" for r in roles.values())
            return leading[0] if ready and len(leading) == 1 else None

        owner = wait_for(leader, timeout=120, interval=0.5, message="one leader")
        other = next(n for n in ports if n != owner)
        wait_for(lambda: "lastPass" in get_json(ports[owner], "/api/status"), timeout=120,
                 message="the first pass")
        kubelet.settle(kube, namespace)
        writes = [("update", "POST", "/api/update", {"services": ["redis"]}),
                  ("parameters", "PATCH", "/api/parameters",
                   {"services": {"redis": {"replicas": 1}}})]
        for _label, method, path, body in writes:  # warm both paths once
            call(ports[owner], method, path, body)
            call(ports[other], method, path, body)
        print(f"owner {owner}, other {other}; {args.calls} calls each; load at start: {load()}")
        for label, method, path, body in writes:
            times: dict[str, list[float]] = {owner: [], other: []}
            for _ in range(args.calls):
                for name in (owner, other):
                    times[name].append(call(ports[name], method, path, body))
            p50 = {n: statistics.median(t) for n, t in times.items()}
            p99 = {n: percentile(t, 0.99) for n, t in times.items()}
            print(f"{label:>10}: owner p50 {p50[owner]:7.1f} ms p99 {p99[owner]:7.1f} ms | "
                  f"non-owner p50 {p50[other]:7.1f} ms p99 {p99[other]:7.1f} ms | extra p50 "
                  f"{p50[other] - p50[owner]:+7.1f} ms, p99 {p99[other] - p99[owner]:+7.1f} "
                  f"ms | ratio p50 {p50[other] / p50[owner]:.2f}, p99 "
                  f"{p99[other] / p99[owner]:.2f}")
            if leader() != owner:
                print("  (the leader changed during the run: these figures mix both paths)")
        print(f"load at end: {load()}")
        kube.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
