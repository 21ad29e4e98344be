"""Benchmark: many instances (issue 13): 100, 500, 1,000 instances of a small app.

Run: .venv/bin/python -m bench.bench_scale [--instances 100,500,1000] [--quick]
     [--per-namespace 10] [--kubeconfig PATH] [--steady 60] [--changes 50]
Without --kubeconfig (or CONDUCTOR_BENCH_STATE_DIR) it starts a private local control
plane. Each size runs in fresh namespaces, one after the other, and prints:

- the floor: the same objects created by a minimal parallel server-side-apply client
  (bench_apply's: 8 threads of raw HTTPS PATCHes, no dry run, no ordering), untimed
  namespaces made first: what the API server needs to take them;
- the floor with a dry run: the same client, into other namespaces, sending first a
  server-side dry run of every object, then the applies (as bench_apply's floor+dry, and
  as Flux's ApplyAll): the least any client takes that changes nothing when one object is
  refused, which conductor does (the project's rule: bad input changes nothing);
- cold: the real `conductor run` (gunicorn, the controller in its worker) started on the
  DeploymentParameters objects, created beforehand: seconds from the process start until
  every instance's Ready condition is True (applied and healthy), its CPU seconds meanwhile
  and its peak RSS (VmHWM of its processes), against both floors (target: <= 2x);
- change -> applied: while all are managed, N changes (50) of one instance's parameter
  (a merge patch of spec.global.message), one at a time, each to another instance; the
  latency until the ConfigMap that carries it holds the new value, seen by a watch in this
  process (targets: p50 < 1 s, p99 < 3 s);
- steady state: the controller restarted behind a counting proxy (tests/support/proxy.py;
  not there during the cold run, where its per-request work would slow the controller),
  once its start passes are done: its CPU over STEADY seconds with nothing changing, as a
  share of one core (target <= 5%), and the requests and writes the API server received
  from it meanwhile (target: 0 writes), and its RSS.

The app (bench/scale_app, 8 objects per instance: a Deployment with 0 replicas, two
headless Services, four ConfigMaps, a Secret): object names start with the instance's
name, so `--per-namespace` instances share a namespace (10 by default: 1,000 instances in
100 namespaces). The Deployment has 0 replicas so that 1,000 instances cost the machine
no Pod work (no kubelet, simulated or not): its ReplicaSet and status still come from the
controller manager, and health still waits for them. Services are headless: no cluster IP.
The interval is the controller's default (60 s): steady state includes its timed no-op
passes. Load on a shared machine moves every figure: the load average is printed with
each. Every wait has a deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.bench_apply import Floor
from bench.common import control_plane, get_json, stop_group
from controller.adapters.crds import ensure_crd
from controller.adapters.kube import Body, Kube
from controller.adapters.sources.resource import API_VERSION, KIND, load_seed
from controller.adapters.watching import Reflector, Selector
from controller.config import Config
from controller.model import rendering
from controller.model.parameters import Parameters
from devcluster.running import free_port
from tests.support.proxy import ApiProxy
from tests.support.waiting import wait_for

APP = Path(__file__).resolve().parent / "scale_app"
OBJECTS_PER_INSTANCE = 8
CHANGED_CONFIGMAP = "{instance}-web-env"  # carries spec.global.message as MESSAGE
LEASES = "/apis/coordination.k8s.io/v1/"
TARGET_COLD_RATIO = 2.0
TARGET_STEADY_SHARE = 0.05
TARGET_P50, TARGET_P99 = 1.0, 3.0
TARGET_RSS_MIB = 400.0


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}/{fifteen:.1f} (1/5/15 min, {os.cpu_count()} CPUs)"


# -- the controller process ------------------------------------------------------------


def _stats() -> Iterator[tuple[Path, str, list[str]]]:
    """Every process: its /proc directory, command name and the stat fields after it."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, _, rest = stat.read_text().rpartition(")")
        except OSError:  # ended meanwhile
            continue
        yield stat.parent, head.partition("(")[2], rest.split()


def _cpu(fields: list[str]) -> float:
    """User + system CPU seconds from a process's stat fields."""
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _procs(group: int) -> Iterator[Path]:
    return (proc for proc, _, fields in _stats() if int(fields[2]) == group)


def cpu_seconds(group: int) -> float:
    """User + system CPU of every process in the group (gunicorn's master and worker)."""
    return sum(_cpu(fields) for _, _, fields in _stats() if int(fields[2]) == group)


CONTROL_PLANE = ("kube-apiserver", "etcd", "kube-controller")  # /proc comm (15 chars)


def control_plane_cpu() -> Counter[str]:
    """User + system CPU seconds of the control plane's processes (API server, etcd,
    controller manager) so far, by process: what each phase cost the server side, which
    shares the 2 cores with the client measured (a phase's wall time alone hides who was
    busy), and how much of it was the controller manager's rollout work."""
    out: Counter[str] = Counter()
    for _, name, fields in _stats():
        if name in CONTROL_PLANE:
            out[name] += _cpu(fields)
    return out


def cpu_spent(before: Counter[str]) -> tuple[float, str]:
    """The control plane's CPU seconds since `before`: in all, and by process."""
    after = control_plane_cpu()
    spent = {name: after[name] - before[name] for name in CONTROL_PLANE}
    return sum(spent.values()), ", ".join(f"{name} {spent[name]:.1f}s" for name in spent)


def machine_cpu() -> list[int]:
    """The machine's CPU time so far, in ticks: user, nice, system, idle, iowait, ..."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    return [int(v) for v in first[1:]]


def machine_split(before: list[int]) -> str:
    """How the machine's cores spent the time since `before`: busy, idle, waiting on the
    disk (a phase that leaves cores idle is held up by something else than CPU)."""
    spent = [b - a for a, b in zip(before, machine_cpu(), strict=True)]
    total = sum(spent) or 1
    idle, iowait = spent[3], spent[4]
    return (f"busy {100 * (total - idle - iowait) / total:.0f}%, idle "
            f"{100 * idle / total:.0f}%, iowait {100 * iowait / total:.0f}%")


def server_counts(kube: Kube) -> Counter[str]:
    """The API server's own counters (its /metrics) of requests by verb and resource
    (dry runs apart) and of watch events sent, by kind: diffed around a phase, what the
    control plane did for it, whoever asked (the controller manager's work included)."""
    resp = kube._send("GET", "/metrics", None, None, "text/plain", 30)  # text, not JSON
    text = resp.data.decode()
    resp.release_conn()
    out: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "apiserver_watch_events_total":
                out[f"watch events {labels.get('kind')}"] += int(sample.value)
            elif sample.name == "apiserver_request_total" and labels.get("verb") != "WATCH":
                sub = f"/{labels['subresource']}" if labels.get("subresource") else ""
                dry = " (dry run)" if labels.get("dry_run") else ""
                out[f"{labels.get('verb')} {labels.get('resource')}{sub}{dry}"] += \
                    int(sample.value)
    return out


def server_summary(before: Counter[str], after: Counter[str], top: int = 14) -> str:
    diff = after - before
    return ", ".join(f"{n} {what}" for what, n in diff.most_common(top))


def memory_mib(group: int, field_name: str) -> float:
    """The largest VmRSS or VmHWM (peak) of the group's processes (the worker's: the
    controller lives there), in MiB."""
    most = 0
    for proc in _procs(group):
        try:
            for line in (proc / "status").read_text().splitlines():
                if line.startswith(field_name + ":"):
                    most = max(most, int(line.split()[1]))
        except OSError:
            continue
    return most / 1024


@contextmanager
def conductor(kubeconfig: str, namespaces: Sequence[str], own: tuple[str, str], run: str,
              work: Path, env: dict[str, str], tag: str
              ) -> Iterator[tuple[subprocess.Popen[bytes], int, float]]:
    """`conductor run` reconciling every bench instance of `namespaces` (selected by the
    run's label); yields (the process, leading its own group; API port, start time)."""
    port = free_port()
    environ = {**os.environ, "CONDUCTOR_API_AUTH": "false",
               "CONDUCTOR_EVENTS_PATH": str(work / f"events-{tag}.db"),
               "CONDUCTOR_DEFAULT_NAMESPACE": own[0],
               "CONDUCTOR_INSTANCES_NAMESPACES": ",".join(namespaces),
               "CONDUCTOR_INSTANCES_SELECTOR": f"bench={run}", **env}
    log = work / f"controller-{tag}.log"
    with log.open("ab") as out:
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "controller", "run", "--kubeconfig", kubeconfig,
             "--manifests", str(APP), "--namespace", own[0], "--instance", own[1],
             "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=environ,
            start_new_session=True)
    try:
        yield proc, port, started
    finally:
        stop_group(proc, 120)  # a controller of 1,000 instances takes a while to stop
        if proc.returncode not in (0, -signal.SIGTERM):
            print(f"  controller exited {proc.returncode}; its log: {log}", flush=True)


def profile(group: int, where: Path | None, name: str) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the controller (its gunicorn master and worker) without pausing it,
    into WHERE/NAME.txt (collapsed stacks), until `stop_profile`: only the thread holding
    the GIL, so the stacks are where its Python CPU goes (threads waiting on a socket
    would otherwise fill them)."""
    if where is None:
        return None
    where.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen([str(spy), "record", "--subprocesses", "--nonblocking",
                             "--gil", "--format", "raw", "--rate", "50", "--pid", str(group),
                             "--output", str(where / f"{name}.txt")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_profile(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is None:
        return
    spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    try:
        spy.wait(60)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait(10)


# -- the cluster side --------------------------------------------------------------------


def names(count: int, per_namespace: int, run: str, what: str) -> list[tuple[str, str]]:
    """(namespace, instance) of `count` instances, `per_namespace` to a namespace."""
    return [(f"bs-{run}-{what}-{i // per_namespace:03d}", f"i{i:04d}") for i in range(count)]


def parallel(fn: Any, items: Sequence[Any], threads: int = 8) -> list[Any]:
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(fn, items))


def make_namespaces(kube: Kube, spaces: Sequence[str]) -> None:
    parallel(lambda ns: kube.apply({"apiVersion": "v1", "kind": "Namespace",
                                    "metadata": {"name": ns}}), sorted(set(spaces)))


def rendered(instances: Sequence[tuple[str, str]]) -> list[Body]:
    """Every instance's objects as conductor renders them (the floor applies these)."""
    tree = rendering.load_tree(APP)
    params = Parameters.from_spec(load_seed(APP))
    out = []
    for ns, name in instances:
        for m in rendering.render(tree, params, instance=name):
            out.append({**m.body, "metadata": {**m.body["metadata"], "namespace": ns}})
    return out


def create_parameters(kube: Kube, instances: Sequence[tuple[str, str]], run: str) -> None:
    def one(key: tuple[str, str]) -> None:
        kube.create({"apiVersion": API_VERSION, "kind": KIND,
                     "metadata": {"name": key[1], "namespace": key[0],
                                  "labels": {"bench": run}},
                     "spec": {"global": {"message": "hello"}}})
    parallel(one, instances)


def ready(obj: Body) -> bool:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return bool(c.get("status") == "True")
    return False


def count_ready(objects: Reflector) -> tuple[int, int]:
    """(applied, Ready) instances in a watched copy of the run's objects (applied: a pass
    recorded `lastAppliedRevision`): a LIST of 1,000 objects with their status every half
    second would load the API server and this process's share of the 2 cores, beside the
    controller it measures."""
    with objects.lock:
        items = list(objects.items.values())
    return (sum("lastAppliedRevision" in (o.get("status") or {}) for o in items),
            sum(ready(o) for o in items))


def release(kube: Kube, spaces: Sequence[str], run: str) -> None:
    """Drop conductor's finalizer from the run's objects (the controller is stopped), then
    delete the namespaces; not waited for here (the next run waits: earlier_runs_gone)."""
    def unfinalise(obj: Body) -> None:
        meta = obj["metadata"]
        if meta.get("finalizers"):
            try:
                kube.patch(API_VERSION, KIND, meta["name"], {"metadata": {"finalizers": None}},
                           meta["namespace"])
            except Exception as e:  # cleanup goes on: the namespace may still go
                print(f"  (cleanup: {meta['name']}: {e})")
    try:
        parallel(unfinalise, kube.list(API_VERSION, KIND, "", f"bench={run}")[0])
    finally:
        for ns in sorted(set(spaces)):
            try:
                kube.delete("v1", "Namespace", ns)
            except Exception as e:
                print(f"  (cleanup: namespace {ns}: {e})")


# -- figures ------------------------------------------------------------------------------


@dataclass
class Figures:
    instances: int
    namespaces: int
    floor: float = 0.0
    floor_dry: float = 0.0  # dry run of every object, then the applies
    # each until its Deployments were observed by the controller manager (untimed before)
    floor_observed: float = 0.0
    floor_dry_observed: float = 0.0
    # the control plane's CPU seconds during the floor, the dry-run floor, the cold start
    floor_server_cpu: float = 0.0
    floor_dry_server_cpu: float = 0.0
    cold_server_cpu: float = 0.0
    floor_split: str = ""  # the same by process (cpu_spent)
    floor_dry_split: str = ""
    cold_split: str = ""
    floor_machine: str = ""  # the machine's cores during each (machine_split)
    floor_dry_machine: str = ""
    cold_machine: str = ""
    # the API server's requests and watch events during each (server_counts), summed up
    floor_server: str = ""
    floor_dry_server: str = ""
    cold_server: str = ""
    cold: float = 0.0
    cold_cpu: float = 0.0
    cold_rss: float = 0.0  # peak, MiB
    cold_load: str = ""
    cold_marks: str = ""  # when 10/50/90/100% of the instances were applied, and Ready
    # verb -> (requests, mean seconds) to the API server, from the controller's metrics
    cold_requests: dict[str, tuple[int, float]] = field(default_factory=dict)
    changes: list[float] = field(default_factory=list)
    changes_load: str = ""
    restart: float = 0.0  # restart behind the proxy until every instance had a pass
    steady_seconds: float = 0.0
    steady_cpu: float = 0.0
    steady_requests: int = 0
    steady_writes: int = 0  # lease renewals left out
    steady_lease_writes: int = 0
    steady_log: list[tuple[str, str, int]] = field(default_factory=list)
    steady_reads: list[tuple[str, int]] = field(default_factory=list)  # top read shapes
    steady_rss: float = 0.0
    steady_load: str = ""


def kube_requests(port: int) -> dict[str, tuple[int, float]]:
    """The controller's requests to the API server so far, by verb, with their mean
    latency (its conductor_kube_request_duration_seconds histogram): where a cold start
    spends its time when the controller's CPU is not the limit."""
    counts: dict[str, float] = {}
    sums: dict[str, float] = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        match = re.match(r'conductor_kube_request_duration_seconds_(count|sum)\{(.*)\} (\S+)$',
                         line)
        if not match:
            continue
        verb = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2))).get("verb", "?")
        into = counts if match.group(1) == "count" else sums
        into[verb] = into.get(verb, 0.0) + float(match.group(3))
    return {v: (int(n), sums.get(v, 0.0) / n if n else 0.0) for v, n in sorted(counts.items())}


def shape(path: str) -> str:
    """A request path with its namespace and object names starred, whether it watches."""
    route, _, query = path.partition("?")
    parts = route.split("/")
    if "namespaces" in parts[:-1]:
        at = parts.index("namespaces")
        parts[at + 1] = "*"
        if len(parts) > at + 3:
            parts[at + 3] = "*"
    watch = " (watch)" if "watch=true" in query or "watch=1" in query else ""
    return "/".join(parts) + watch


def observed(kube: Kube, namespaces: set[str]) -> bool:
    """Whether every Deployment in `namespaces` has its generation observed."""
    items, _ = kube.list("apps/v1", "Deployment")
    return all(int((d.get("status") or {}).get("observedGeneration") or 0) >=
               int(d["metadata"].get("generation") or 0)
               for d in items if d["metadata"].get("namespace") in namespaces)


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def earlier_runs_gone(kube: Kube, timeout: float) -> None:
    """Wait (untimed) until no namespace of an earlier run is left: their deletion (the
    namespace controller removing 10,000 objects) would otherwise run during this run's
    floors and cold start, and load the 2 cores unevenly between them."""
    def left() -> int:
        return sum(1 for ns in kube.list("v1", "Namespace")[0]
                   if ns["metadata"]["name"].startswith("bs-"))
    if left():
        started = time.monotonic()
        print(f"waiting for {left()} namespaces of earlier runs to be deleted", flush=True)
        wait_for(lambda: not left(), timeout=timeout, interval=2.0,
                 message="earlier runs' namespaces deleted")
        print(f"  deleted after {time.monotonic() - started:.0f}s; {loadavg()}", flush=True)


def measure(kubeconfig: str, size: int, args: argparse.Namespace, work: Path) -> Figures:
    kube = Kube.connect(Config(kubeconfig=kubeconfig))
    ensure_crd(kube)
    earlier_runs_gone(kube, args.timeout)
    run = secrets.token_hex(3)
    instances = names(size, args.per_namespace, run, "c")
    spaces = sorted({ns for ns, _ in instances})
    floor_instances = names(size, args.per_namespace, run, "f")
    dry_instances = names(size, args.per_namespace, run, "d")
    figures = Figures(size, len(spaces))
    try:
        # -- the floor -------------------------------------------------------------------
        objects = rendered(floor_instances)
        plurals = {(o["apiVersion"], o["kind"]): kube.resource(o["apiVersion"],
                                                                 o["kind"]).plural
                   for o in objects}
        make_namespaces(kube, [ns for ns, _ in floor_instances])
        print(f"[{size}] floor: {len(objects)} objects in "
              f"{len({ns for ns, _ in floor_instances})} namespaces; {loadavg()}", flush=True)
        server, counts, machine = control_plane_cpu(), server_counts(kube), machine_cpu()
        figures.floor = Floor(kubeconfig, work).apply(objects, plurals)
        done = time.monotonic()
        figures.floor_server_cpu, figures.floor_split = cpu_spent(server)
        figures.floor_machine = machine_split(machine)
        figures.floor_server = server_summary(counts, server_counts(kube))
        print(f"[{size}] floor took {figures.floor:.1f}s (control plane CPU "
              f"{figures.floor_server_cpu:.1f}s)", flush=True)
        # Untimed: the controller manager's work on the floor's Deployments (a ReplicaSet
        # and an observed status each) would otherwise run during what comes next.
        floor_spaces = {ns for ns, _ in floor_instances}
        wait_for(lambda: observed(kube, floor_spaces), timeout=args.timeout, interval=1.0,
                 message="the floor's Deployments observed by the controller manager")
        # What Ready means for the floor: its objects taken, and its Deployments observed
        # (within the 1 s poll), as conductor's cold start is timed until Ready.
        figures.floor_observed = figures.floor + time.monotonic() - done
        dry_objects = rendered(dry_instances)
        make_namespaces(kube, [ns for ns, _ in dry_instances])
        floor = Floor(kubeconfig, work)
        server, counts, machine = control_plane_cpu(), server_counts(kube), machine_cpu()
        figures.floor_dry = floor.apply(dry_objects, plurals, dry_run=True) + \
            floor.apply(dry_objects, plurals)
        done = time.monotonic()
        figures.floor_dry_server_cpu, figures.floor_dry_split = cpu_spent(server)
        figures.floor_dry_machine = machine_split(machine)
        figures.floor_dry_server = server_summary(counts, server_counts(kube))
        print(f"[{size}] floor with a dry run took {figures.floor_dry:.1f}s (control plane "
              f"CPU {figures.floor_dry_server_cpu:.1f}s)", flush=True)
        dry_spaces = {ns for ns, _ in dry_instances}
        wait_for(lambda: observed(kube, dry_spaces), timeout=args.timeout, interval=1.0,
                 message="the dry-run floor's Deployments observed")
        figures.floor_dry_observed = figures.floor_dry + time.monotonic() - done

        # -- cold start -------------------------------------------------------------------
        make_namespaces(kube, spaces)
        create_parameters(kube, instances, run)
        watched = Reflector(kube, Selector(API_VERSION, KIND, "", f"bench={run}")).start()
        wait_for(watched.fresh.is_set, timeout=60, message="the instances' watch")
        print(f"[{size}] conductor cold start on {size} instances; {loadavg()}", flush=True)
        server, counts, machine = control_plane_cpu(), server_counts(kube), machine_cpu()
        with conductor(kubeconfig, spaces, instances[0], run, work, args.env_map,
                       "cold") as (proc, port, started):
            group = proc.pid
            spy = profile(group, args.profile, f"cold-{size}")
            deadline = started + args.timeout
            last = -1
            marks: dict[str, float] = {}  # "applied 50%" -> seconds since the start
            while True:  # bounded by the deadline
                applied, n = count_ready(watched)
                at = time.monotonic() - started
                for what, count in (("applied", applied), ("Ready", n)):
                    for share in (0.1, 0.5, 0.9, 1.0):
                        if count >= share * size:
                            marks.setdefault(f"{what} {share:.0%}", at)
                if n == size:
                    break
                if proc.poll() is not None:
                    raise RuntimeError(f"the controller exited ({proc.returncode})")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{n} of {size} instances Ready after "
                                       f"{args.timeout:.0f}s")
                if n != last and args.verbose:
                    print(f"    {applied} applied, {n} Ready at {at:.0f}s", flush=True)
                last = n
                time.sleep(0.5)
            figures.cold = time.monotonic() - started
            figures.cold_server_cpu, figures.cold_split = cpu_spent(server)
            figures.cold_machine = machine_split(machine)
            figures.cold_server = server_summary(counts, server_counts(kube))
            watched.stop()
            figures.cold_cpu = cpu_seconds(group)
            figures.cold_rss = memory_mib(group, "VmHWM")
            figures.cold_load = loadavg()
            stop_profile(spy)
            figures.cold_requests = kube_requests(port)
            figures.cold_marks = ", ".join(f"{k} {v:.0f}s" for k, v in marks.items())
            print(f"[{size}] all Ready after {figures.cold:.1f}s ({figures.cold_cpu:.1f} CPU s, "
                  f"peak RSS {figures.cold_rss:.0f} MiB; control plane CPU "
                  f"{figures.cold_server_cpu:.1f}s); {figures.cold_load}", flush=True)
            print(f"[{size}] timeline: {figures.cold_marks}", flush=True)
            figures.changes = changes(kube, instances, args.changes, args.change_timeout)
            figures.changes_load = loadavg()
            print(f"[{size}] {len(figures.changes)} changes: p50 "
                  f"{statistics.median(figures.changes):.2f}s p99 "
                  f"{pct(figures.changes, 0.99):.2f}s; {figures.changes_load}", flush=True)

        # -- steady state, behind a counting proxy -----------------------------------------
        if args.steady > 0:
            steady(kubeconfig, spaces, instances, run, work, args, figures)
    finally:
        try:
            release(kube, [ns for ns, _ in instances + floor_instances + dry_instances],
                    run)
        finally:
            kube.close()
    return figures


def changes(kube: Kube, instances: Sequence[tuple[str, str]], count: int,
            timeout: float) -> list[float]:
    """`count` parameter changes, one at a time, each to a random instance: seconds from
    the patch until its ConfigMap holds the value (a watch of the namespace's ConfigMaps
    in this process sees it); a change not applied within `timeout` counts as infinite
    (a lost wake-up: the next interval pass would apply it) and the next one goes on."""
    rng = random.Random(13)
    seen: dict[tuple[str, str], str] = {}
    arrived = threading.Condition()

    def on_event(kind: str, obj: Body) -> None:
        meta = obj.get("metadata") or {}
        if kind in ("ADDED", "MODIFIED"):
            with arrived:
                seen[(meta.get("namespace", ""), meta.get("name", ""))] = \
                    (obj.get("data") or {}).get("MESSAGE", "")
                arrived.notify_all()

    reflectors: dict[str, Reflector] = {}
    latencies = []
    try:
        for i in range(count):
            ns, name = instances[rng.randrange(len(instances))]
            if ns not in reflectors:
                reflectors[ns] = Reflector(kube, Selector("v1", "ConfigMap", ns),
                                           on_event).start()
                wait_for(reflectors[ns].fresh.is_set, timeout=30, message="the watch")
            value = f"change-{i}"
            target = (ns, CHANGED_CONFIGMAP.format(instance=name))
            started = time.monotonic()
            kube.patch(API_VERSION, KIND, name, {"spec": {"global": {"message": value}}}, ns)

            def applied(t: tuple[str, str] = target, v: str = value) -> bool:
                return seen.get(t) == v

            with arrived:
                ok = arrived.wait_for(applied, timeout=timeout)
            latencies.append(time.monotonic() - started if ok else float("inf"))
            if not ok:
                print(f"    change {i} of {ns}/{name} not applied in {timeout:.0f}s",
                      flush=True)
    finally:
        for r in reflectors.values():
            r.stop()
    return latencies


def steady(kubeconfig: str, spaces: Sequence[str], instances: Sequence[tuple[str, str]],
           run: str, work: Path, args: argparse.Namespace, figures: Figures) -> None:
    size = len(instances)
    with ApiProxy(kubeconfig, work) as proxy, conductor(
            str(proxy.kubeconfig), spaces, instances[0], run, work, args.env_map,
            "steady") as (proc, port, started):
        group = proc.pid
        deadline = started + args.timeout

        def passed() -> int:
            rows = get_json(port, "/api/instances")["instances"]
            return sum(1 for r in rows if r.get("lastPass"))

        while True:  # bounded by the deadline
            try:
                n = passed()
            except OSError:
                n = 0  # the API is not up yet
            if n >= size:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"the controller exited ({proc.returncode})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{n} of {size} instances passed after a restart")
            time.sleep(1.0)
        figures.restart = time.monotonic() - started
        print(f"[{size}] restarted behind the proxy: every instance passed after "
              f"{figures.restart:.1f}s ({sum(proxy.stats.requests.values())} requests, "
              f"{proxy.stats.writes} writes); {loadavg()}", flush=True)
        # What the start passes set off (status writes, the watches' first events) settles.
        time.sleep(args.settle)
        proxy.stats.reset()
        spy = profile(group, args.profile, f"steady-{size}")
        cpu0, t0 = cpu_seconds(group), time.monotonic()
        time.sleep(args.steady)  # the measurement: nothing changes meanwhile
        stop_profile(spy)
        figures.steady_seconds = time.monotonic() - t0
        figures.steady_cpu = cpu_seconds(group) - cpu0
        with proxy.stats.lock:
            figures.steady_requests = sum(proxy.stats.requests.values())
            writes = [e for e in proxy.stats.log if e[0] != "GET"]
            shapes = Counter(shape(e[1]) for e in proxy.stats.log if e[0] == "GET")
        # The leader's lease renewals are leadership, not reconciling: counted apart.
        figures.steady_lease_writes = sum(1 for e in writes if LEASES in e[1])
        figures.steady_writes = len(writes) - figures.steady_lease_writes
        figures.steady_log = [e for e in writes if LEASES not in e[1]][:10]
        figures.steady_reads = shapes.most_common(5)
        figures.steady_rss = memory_mib(group, "VmRSS")
        figures.steady_load = loadavg()


def report(all_figures: Sequence[Figures]) -> None:
    print("\n" + "=" * 100)
    for f in all_figures:
        nan = float("nan")
        ratio = f.cold / f.floor if f.floor else nan
        ratio_dry = f.cold / f.floor_dry if f.floor_dry else float("nan")
        share = f.steady_cpu / f.steady_seconds if f.steady_seconds else float("nan")
        print(f"{f.instances} instances ({f.instances * OBJECTS_PER_INSTANCE} objects, "
              f"{f.namespaces} namespaces)")
        cold_ok = "met" if ratio <= TARGET_COLD_RATIO else "NOT met"
        dry_ok = "met" if ratio_dry <= TARGET_COLD_RATIO else "NOT met"
        print(f"  cold to all Ready  {f.cold:8.1f}s  floor {f.floor:.1f}s  ratio {ratio:.2f}x "
              f"(target <= {TARGET_COLD_RATIO:.0f}x: {cold_ok}); floor with a dry run "
              f"{f.floor_dry:.1f}s, ratio {ratio_dry:.2f}x ({dry_ok}); control plane CPU "
              f"{f.cold_server_cpu:.1f}s (floor {f.floor_server_cpu:.1f}s, with a dry run "
              f"{f.floor_dry_server_cpu:.1f}s)"
              f"; controller CPU {f.cold_cpu:.1f}s, peak RSS {f.cold_rss:.0f} MiB "
              f"(target < {TARGET_RSS_MIB:.0f}: "
              f"{'met' if f.cold_rss < TARGET_RSS_MIB else 'NOT met'}); {f.cold_load}")
        print("  cold requests to the API server (floor: "
              f"{f.instances * OBJECTS_PER_INSTANCE} PATCH): " + ", ".join(
                  f"{verb} {n} (mean {mean * 1000:.0f} ms)"
                  for verb, (n, mean) in f.cold_requests.items()))
        print(f"  cold timeline: {f.cold_marks}")
        print(f"  the floors until their Deployments were observed (Ready, for them): "
              f"{f.floor_observed:.1f}s (cold {f.cold / (f.floor_observed or nan):.2f}x), "
              f"with a dry run {f.floor_dry_observed:.1f}s "
              f"({f.cold / (f.floor_dry_observed or nan):.2f}x)")
        print(f"  the machine's cores: floor {f.floor_machine}; with a dry run "
              f"{f.floor_dry_machine}; cold {f.cold_machine}")
        print(f"  control plane CPU by process: floor {f.floor_split}; with a dry run "
              f"{f.floor_dry_split}; cold {f.cold_split}")
        print(f"  the API server during the floor: {f.floor_server}")
        print(f"  during the floor with a dry run: {f.floor_dry_server}")
        print(f"  during the cold start: {f.cold_server}")
        if f.changes:
            p50, p99 = statistics.median(f.changes), pct(f.changes, 0.99)
            lost = sum(1 for c in f.changes if c == float("inf"))
            print(f"  change->applied    p50 {p50:.2f}s p99 {p99:.2f}s max {max(f.changes):.2f}s "
                  f"over {len(f.changes)}, {lost} lost (targets < {TARGET_P50:.0f}s / "
                  f"< {TARGET_P99:.0f}s: "
                  f"{'met' if p50 < TARGET_P50 and p99 < TARGET_P99 else 'NOT met'}); "
                  f"{f.changes_load}")
        if f.steady_seconds:
            print(f"  steady state       {f.steady_cpu:.2f} CPU s over {f.steady_seconds:.0f}s = "
                  f"{share:.1%} of one core ({f.steady_cpu * 60 / f.steady_seconds:.2f} CPU s/min;"
                  f" target <= {TARGET_STEADY_SHARE:.0%}: "
                  f"{'met' if share <= TARGET_STEADY_SHARE else 'NOT met'}); "
                  f"{f.steady_requests} requests, {f.steady_writes} writes (target 0: "
                  f"{'met' if not f.steady_writes else 'NOT met'}) and "
                  f"{f.steady_lease_writes} lease renewals"
                  + (f" e.g. {f.steady_log}" if f.steady_log else ""))
            print("  steady reads by shape: " + ", ".join(f"{n} {p}" for p, n in f.steady_reads)
                  + f"; RSS {f.steady_rss:.0f} MiB; restart to all passed {f.restart:.1f}s; "
                  f"{f.steady_load}")
        if f.changes:
            print("  changes (s): " + " ".join(f"{c:.2f}" for c in f.changes))
    hidden = ("changes", "steady_log", "steady_reads")
    print(json.dumps([{k: v for k, v in f.__dict__.items() if k not in hidden}
                      for f in all_figures], default=str))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--instances", default="100,500,1000",
                   help="comma-separated sizes, run one after the other")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 20 instances, 5 changes, 10 s of steady state")
    p.add_argument("--per-namespace", type=int, default=10,
                   help="instances sharing a namespace (default 10)")
    p.add_argument("--changes", type=int, default=50)
    p.add_argument("--steady", type=float, default=60.0,
                   help="seconds of steady state measured (0: skip the restart)")
    p.add_argument("--settle", type=float, default=15.0,
                   help="seconds after the restart's passes before steady state is measured")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="deadline of each wait for all instances (seconds)")
    p.add_argument("--kubeconfig", help="an existing control plane (default: a private one, "
                   "or CONDUCTOR_BENCH_STATE_DIR's)")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment of the controller (e.g. "
                   "CONDUCTOR_INSTANCES_CONCURRENCY=8)")
    p.add_argument("--change-timeout", type=float, default=15.0,
                   help="seconds a change may take before it counts as lost (infinite)")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="py-spy's collapsed stacks of the controller (cold start, steady "
                   "state) into DIR")
    p.add_argument("-v", "--verbose", action="store_true", help="progress while waiting")
    args = p.parse_args(argv)
    if args.quick:
        args.instances, args.changes, args.steady, args.settle = "20", 5, 10.0, 5.0
    args.env_map = dict(item.split("=", 1) for item in args.env)
    sizes = [int(s) for s in args.instances.split(",")]
    print(f"bench_scale: sizes {sizes}, {args.per_namespace} per namespace; {loadavg()}",
          flush=True)
    results = []
    # Kept after the run: the controllers' logs say where a slow run spent its time.
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    print(f"controller logs in {work}", flush=True)
    if args.kubeconfig:
        for size in sizes:
            results.append(measure(args.kubeconfig, size, args, work))
    else:
        with control_plane() as state:
            for size in sizes:
                results.append(measure(state.kubeconfig, size, args, work))
    report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
