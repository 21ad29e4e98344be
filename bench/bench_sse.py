"""Benchmark: the health endpoint's latency with 200 event-stream subscribers open.

Run: .venv/bin/python -m bench.bench_sse [--duration S] [--subscribers N] [--connections N]
Starts the real `conductor run` (gunicorn) once on the example app (bench/common.py), then
two rounds of DURATION seconds (30 by default) of `wrk` on /api/services/health:

- A: nothing else open (the reference);
- B: N Server-Sent Events subscribers (200 by default) hold /api/events/stream open, read
  by one thread, while a pass every `--every` seconds (POST /api/update) publishes events.

It prints req/s and p99 of both rounds and their ratio (target: p99 < 50 ms with the
subscribers), the events stored during round B against the ones each subscriber received
(counted by SSE id: every subscriber must receive every one), and the controller's resident
memory (the gunicorn master and its worker, VmRSS from /proc) before and during round B,
with the load average at the start and end of each round: req/s and latency follow the
machine's other work.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

from bench.bench_api import Load, access_log, subscribers, wrk
from bench.common import (
    controller_env,
    event_ids_after,
    example_controller,
    newest_event_id,
    post,
    wrk_options,
)
from tests.support.waiting import wait_for

PATH = "/api/services/health"
TARGET_P99_MS = 50.0


def rss_mib(group: int) -> float:
    """Resident memory of every process in process group `group` (the controller runs in
    its own session: the gunicorn master and its worker), in MiB."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
            pgrp = int(Path(status.parent, "stat").read_text().rpartition(")")[2].split()[2])
        except (OSError, ValueError):  # the process ended meanwhile
            continue
        if pgrp != group:
            continue
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])  # kB
    return total / 1024


def profile(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling the controller and its worker (without pausing them) for the round:
    where the worker's time goes when the subscribers slow the health endpoint."""
    spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen([str(spy), "record", "--subprocesses", "--nonblocking",
                             "--format", "raw", "--rate", "50", "--duration", str(seconds),
                             "--pid", str(pid), "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def loadavg() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f} (1/5 min, {os.cpu_count()} CPUs)"


def line(name: str, x: Load) -> str:
    return (f"{name:28} {x.rps:8.0f} {x.p50_ms:8.2f} {x.p99_ms:8.2f} {x.max_ms:8.1f} "
            f"{x.errors:6d} {x.cpu_ms:10.3f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_sse", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=30, help="seconds per round")
    p.add_argument("--subscribers", type=int, default=200)
    p.add_argument("--every", type=float, default=2.0, help="seconds between passes")
    p.add_argument("--events", type=int, default=10_000, help="events stored beforehand")
    p.add_argument("--profile", type=Path, metavar="FILE",
                   help="py-spy's collapsed stacks of the controller during round B")
    wrk_options(p)
    args = p.parse_args(argv)
    extra = controller_env(args)
    if extra is None:
        return 2
    with example_controller("bench-sse", args.events, extra) as (proc, port):
        group = proc.pid
        print(f"controller on 127.0.0.1:{port}; wrk {args.connections} connections, "
              f"{args.duration}s per round on {PATH}; {access_log(extra)}")
        wrk(port, PATH, 2, args.connections, args.wrk_threads)  # warm-up
        rss_idle = rss_mib(group)
        print(f"A (no subscribers): start {loadavg()}", flush=True)
        alone = wrk(port, PATH, args.duration, args.connections, args.wrk_threads, group)
        print(f"A: end {loadavg()}", flush=True)

        stop = threading.Event()
        passes = [0]

        def publish() -> None:  # bounded: one pass every `every` s while round B runs
            while not stop.wait(args.every):
                post(port, "/api/update?wait=false", b"{}")
                passes[0] += 1

        start = newest_event_id(port)
        with subscribers(port, args.subscribers, start) as probe:
            wait_for(lambda: probe().bytes > 0, timeout=60, message="the streams to start")
            rss_open = rss_mib(group)
            driver = threading.Thread(target=publish, daemon=True)
            print(f"B ({args.subscribers} subscribers): start {loadavg()}", flush=True)
            driver.start()
            peak = [rss_open]

            def sample() -> None:  # bounded by the round: one RSS reading a second
                while not stop.wait(1.0):
                    peak[0] = max(peak[0], rss_mib(group))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            profiler = profile(group, args.duration, args.profile) if args.profile else None
            try:
                streamed = wrk(port, PATH, args.duration, args.connections,
                               args.wrk_threads, group)
            finally:
                stop.set()
                driver.join(35)
                sampler.join(5)
                if profiler:
                    profiler.wait(args.duration + 60)
            print(f"B: end {loadavg()}", flush=True)
            # The passes have stopped: every event stored since the streams opened must
            # reach every subscriber (the last ones get a moment to arrive).
            stored = event_ids_after(port, start)
            with contextlib.suppress(AssertionError):  # a miss is reported below
                wait_for(lambda: all(stored <= got for got in probe().ids), timeout=30,
                         message="every subscriber to receive every event")
            seen = probe()
        received = [len(stored & got) for got in seen.ids]
        complete = sum(n == len(stored) for n in received)

    print(f"\n{'round':28} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'errors':>6} {'CPU ms/req':>10}")
    print(line("A: no subscribers", alone))
    print(line(f"B: {args.subscribers} subscribers", streamed))
    print(f"ratio B/A: req/s {streamed.rps / alone.rps:.2f}, "
          f"p99 {streamed.p99_ms / alone.p99_ms:.2f}")
    print(f"events: {passes[0]} passes published {len(stored)} events during round B; "
          f"{complete} of {args.subscribers} subscribers received all of them (fewest "
          f"{min(received, default=0)}, most {max(received, default=0)}); "
          f"{seen.open} streams still open at the end, {seen.bytes / 1024:.0f} KiB read")
    print(f"controller RSS (master + worker): {rss_idle:.1f} MiB before, "
          f"{rss_open:.1f} MiB with the streams open, {peak[0]:.1f} MiB at most during B")
    ok = (streamed.p99_ms < TARGET_P99_MS and not streamed.errors and bool(stored)
          and complete == args.subscribers and seen.open == args.subscribers)
    print(f"target p99 < {TARGET_P99_MS:.0f} ms with {args.subscribers} subscribers, every "
          f"event to every subscriber: {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
