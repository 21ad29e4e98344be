"""Shared pieces of the benchmarks: a control plane, generated apps, the example app's
controller (the real `conductor run`) with a filled event store."""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from controller.adapters.crds import ensure_crd
from controller.adapters.kube import Kube
from controller.adapters.store.events import EventInput, EventStore
from controller.config import Config
from devcluster import building, kubelet, running
from devcluster.running import free_port
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
SERVICES = ["frontend", "postgres", "redis"]
TYPES = ["info", "success", "warning", "error"]
TYPE_WEIGHTS = [55, 30, 10, 5]


@contextmanager
def control_plane() -> Iterator[running.ClusterState]:
    """A fresh local control plane for the run (or the one in CONDUCTOR_BENCH_STATE_DIR)."""
    reuse = os.environ.get("CONDUCTOR_BENCH_STATE_DIR")
    if reuse:
        state = running.ClusterState.load(Path(reuse))
        assert state is not None, f"no control plane in {reuse}"
        yield state
        return
    with tempfile.TemporaryDirectory(prefix="conductor-bench-") as tmp:
        state = running.up(Path(tmp), building.ensure_binaries())
        try:
            yield state
        finally:
            running.down(Path(tmp))


def write_app(root: Path, services: int, configmaps: int) -> int:
    """A generated app: per service a Deployment, a Service and N ConfigMaps. Services are
    headless: thousands of them must not exhaust a (shared) control plane's service IPs."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "parameters.yaml").write_text("global:\n  replicas: 1\n  image: nginx\n"
                                          "  tag: '1.25'\n")
    for i in range(services):
        d = root / f"svc{i:03d}"
        d.mkdir()
        (d / "workload.yaml").write_text("""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ name }}
spec:
  replicas: {{ service.replicas }}
  selector:
    matchLabels: {app: {{ name }}}
  template:
    metadata:
      labels: {app: {{ name }}}
    spec:
      containers:
      - name: main
        image: "{{ service.image }}:{{ service.tag }}"
        resources:
          requests: {cpu: 10m, memory: 16Mi}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ name }}
spec:
  clusterIP: None
  selector: {app: {{ name }}}
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP}
""")
        (d / "config.yaml").write_text(f"""\
{{% for n in range({configmaps}) %}}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{{{ name }}}}-config-{{{{ n }}}}
data:
  index: "{{{{ n }}}}"
  greeting: hello from {{{{ name }}}}
{{% endfor %}}
""")
    return services * (2 + configmaps)


def fill_events(path: Path, namespace: str, n: int) -> float:
    """n events of the example app's services, in one store file; returns seconds taken."""
    rng = random.Random(42)
    started = time.monotonic()
    with EventStore(path, max_count=n) as store:
        batch: list[EventInput] = []
        for i in range(n):
            service = SERVICES[i % len(SERVICES)]
            kind = ("Deployment", "Service", "Pod")[rng.randrange(3)]
            batch.append({"type": rng.choices(TYPES, TYPE_WEIGHTS)[0],
                          "message": f"{kind} {service} event {i}", "reason": "Bench",
                          "resource": f"{namespace}/{kind}/{service}", "service": service,
                          "details": {"i": i}})
            if len(batch) == 10_000:
                store.add_many(batch)
                batch = []
        store.add_many(batch)
    return time.monotonic() - started


def get_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return json.loads(resp.read())


@contextmanager
def controller(kubeconfig: str, root: Path, namespace: str, events: Path, port: int,
               log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    environ = {**os.environ, "CONDUCTOR_API_AUTH": "false",
               "CONDUCTOR_EVENTS_PATH": str(events), "CONDUCTOR_DEFAULT_NAMESPACE": namespace,
               **env}
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "controller", "run", "--kubeconfig", kubeconfig,
             "--manifests", str(root), "--namespace", namespace, "--port", str(port),
             "--interval", "3600"], stdout=out, stderr=subprocess.STDOUT, env=environ,
            start_new_session=True)
    try:
        yield proc
    finally:
        stop_group(proc, 60)


def stop_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Stop a controller started in its own session: SIGTERM to its group (gunicorn's
    master and worker), SIGKILL after `timeout` seconds."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


@contextmanager
def example_controller(prefix: str, events: int, env: dict[str, str]
                       ) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """The example app's controller (`conductor run`, gunicorn) on a loopback port, in a
    fresh namespace, its store holding `events` events, its services healthy (a simulated
    kubelet's status writes); yields the process (its own process group) and the port."""
    with control_plane() as state, tempfile.TemporaryDirectory(prefix=f"{prefix}-") as tmp:
        work = Path(tmp)
        kube = Kube.connect(Config(kubeconfig=state.kubeconfig))
        ensure_crd(kube)
        namespace = f"{prefix}-{secrets.token_hex(3)}"
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        root = work / "manifests"
        shutil.copytree(REPO / "manifests", root)
        params = yaml.safe_load((root / "parameters.yaml").read_text())
        params["global"]["namespace"] = namespace
        (root / "parameters.yaml").write_text(yaml.safe_dump(params))
        store = work / "events.db"
        took = fill_events(store, namespace, events)
        print(f"event store: {events} events written in {took:.1f}s "
              f"({store.stat().st_size / 2**20:.0f} MiB)")
        port = free_port()
        log = work / "controller.log"
        try:
            with controller(state.kubeconfig, root, namespace, store, port, log,
                            env) as proc:
                wait_for(lambda: get_json(port, "/healthz") == {"status": "ok"}, timeout=90,
                         message="the API")
                wait_for(lambda: "lastPass" in get_json(port, "/api/status"), timeout=90,
                         message="the first pass")

                def healthy() -> bool:
                    kubelet.settle(kube, namespace)
                    states = {s["status"] for s in get_json(port, "/api/services/health")
                              ["services"]}
                    return states == {"healthy"}

                wait_for(healthy, timeout=90, message="every service healthy")
                yield proc, port
        finally:
            kube.delete("v1", "Namespace", namespace)
            kube.close()


def post(port: int, path: str, body: bytes) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        resp.read()


def newest_event_id(port: int) -> int:
    events = get_json(port, "/api/events?limit=1")["events"]
    return int(events[0]["id"]) if events else 0


def event_ids_after(port: int, after: int) -> set[int]:
    """The ids of every event stored after id `after` (paged newest first)."""
    ids: set[int] = set()
    offset = 0
    while True:  # bounded: the store answers at most 10,000 deep, 1,000 a page
        page = get_json(port, f"/api/events?limit=1000&offset={offset}")["events"]
        fresh = [int(e["id"]) for e in page if int(e["id"]) > after]
        ids.update(fresh)
        if len(fresh) < len(page) or len(page) < 1000 or offset >= 9000:
            return ids
        offset += 1000


def wrk_options(p: argparse.ArgumentParser) -> None:
    """The options every wrk-driven benchmark of the real controller shares."""
    p.add_argument("--connections", type=int, default=16, help="wrk keep-alive connections")
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment of the controller (e.g. CONDUCTOR_API_THREADS=4)")


def controller_env(args: argparse.Namespace) -> dict[str, str] | None:
    """The controller's extra environment from --env; None (said on stderr) without wrk."""
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return None
    return dict(item.split("=", 1) for item in args.env)
