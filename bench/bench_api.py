"""Benchmark: API reads under load, the real `conductor run` (gunicorn) with 100k events.

Run: .venv/bin/python -m bench.bench_api [--duration S] [--connections N] [--events N]
Starts a local control plane (or reuses CONDUCTOR_BENCH_STATE_DIR's), fills the event
store with ~100,000 events (the EventStore on the controller's database file, before it
starts), starts `python -m controller run` on a loopback port with the example app, makes
its pods ready (a simulated kubelet's status writes), then loads it from another process:
`wrk` with N keep-alive connections, DURATION seconds per endpoint. Prints requests/s and
latency percentiles per endpoint, and the ratios against the targets for in-memory reads:
>= 1,000 requests/s and p99 < 20 ms. With N connections always busy, latency is about
N / throughput: the p99 target needs N well under 20 ms x the rate (16 by default).
It also prints the controller's CPU time per request (its processes' user + system time
over the run, divided by the requests served) and the load average: on a machine shared
with other work, req/s and latency follow the load, the CPU per request much less.

`--streams N` (default 200) then loads the first two endpoints again while N Server-Sent
Events subscribers hold streams open and a pass every 2 s (POST /api/update) wakes them
all, and prints the ratios against the run without subscribers (the reference, same
process, same server): the API must keep its latency with that many streams open, and
every subscriber must receive every event stored meanwhile (counted by the SSE ids each
one was sent, against the store's ids after the streams opened).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import selectors
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    controller_env,
    event_ids_after,
    example_controller,
    get_json,
    newest_event_id,
    post,
    wrk_options,
)
from controller.config import ApiSettings
from tests.support.waiting import wait_for

TARGET_RPS = 1000.0
TARGET_P99_MS = 20.0
# The last one is the uncached path: identical event queries are answered from a cache
# until the next event is stored, except those with since/until.
ENDPOINTS = ["/api/services/health", "/api/events?type=error&limit=10",
             "/api/events?service=redis&limit=50", "/api/events?service=redis&limit=50&since=14d"]


@dataclass
class Load:
    path: str
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # non-2xx answers and socket errors
    cpu_ms: float = math.nan  # the controller's CPU time per request (all its processes)


def _ms(value: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", value)
    if not match:
        raise ValueError(f"not a wrk duration: {value!r}")
    return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0,
                                    "m": 60_000.0}[match.group(2)]


def parse_wrk(path: str, out: str) -> Load:
    """The figures of `wrk --latency` output.

    wrk leaves out its latency lines when no request completed in time (a server
    overwhelmed by the streams round, every request timed out): the percentiles are then
    infinite, a target missed, not a crash of the whole benchmark."""
    percent = dict(re.findall(r"^[ \t]+([0-9.]+)%[ \t]+(\S+)[ \t]*$", out, re.M))
    percent = {k.split(".")[0]: v for k, v in percent.items()}  # "99.000%" as well as "99%"
    total = re.search(r"(\d+) requests in ([0-9.]+)(\w+),", out)
    rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    latency = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out)
    if not (total and rps):
        raise ValueError(f"cannot read wrk's output:\n{out}")
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    for n in re.findall(r"Socket errors: (.*)", out):
        errors += sum(int(x) for x in re.findall(r"\d+", n))

    def ms(value: str | None) -> float:
        return _ms(value) if value is not None else math.inf

    requests = int(total.group(1))
    if not requests:  # wrk prints zeros for the latencies of nothing
        percent, latency = {}, None
    return Load(path, requests, _ms(total.group(2) + total.group(3)) / 1000,
                float(rps.group(1)), ms(percent.get("50")), ms(percent.get("99")),
                ms(latency.group(1) if latency else None), errors)


def access_log(env: dict[str, str]) -> str:
    """Which access log the controller writes (a line costs a share of a short read's
    CPU: the figures depend on it)."""
    mode = env.get("CONDUCTOR_API_ACCESS_LOG")
    return f"access log {mode}" if mode else \
        f"access log {ApiSettings().access_log} (the default)"


def cpu_seconds(group: int) -> float:
    """User + system CPU time of every process in process group `group` (the controller
    runs in its own session: the gunicorn master and its worker)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[2]) == group:  # fields after "(comm)": state, ppid, pgrp, ...
            total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def wrk(port: int, path: str, seconds: int, connections: int, threads: int,
        group: int = 0) -> Load:
    """One wrk run; with `group`, also the controller's CPU time per request: a figure
    that other work on a shared machine moves far less than req/s and latency."""
    url = f"http://127.0.0.1:{port}{path}"
    before = cpu_seconds(group) if group else 0.0
    done = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s",
                           "--timeout", "5s", "--latency", url],
                          capture_output=True, text=True, timeout=seconds + 60, check=True)
    load = parse_wrk(path, done.stdout)
    if group and load.requests:
        load.cpu_ms = (cpu_seconds(group) - before) * 1000 / load.requests
    return load


@dataclass
class Subscribers:
    """What the streams received so far: how many are still open, bytes, and per stream
    the ids of the events it was sent (SSE `id:` lines)."""

    open: int
    bytes: int
    ids: list[set[int]]


_ID_LINE = re.compile(rb"^id: (\d+)\r?$", re.M)


@contextmanager
def subscribers(port: int, n: int, after: int) -> Iterator[Callable[[], Subscribers]]:
    """N event streams held open (and read) by one thread, each resuming after event id
    `after` (Last-Event-ID); yields a probe of what they received. Every socket is closed
    at the end."""
    selector = selectors.DefaultSelector()
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /api/events/stream?duration=3600 HTTP/1.1\r\nHost: b\r\n"
                  b"Last-Event-ID: %d\r\n\r\n" % after)
        socks.append(s)
    received = [0]
    open_ = set(socks)
    ids: dict[socket.socket, set[int]] = {s: set() for s in socks}
    tails: dict[socket.socket, bytes] = {s: b"" for s in socks}  # an unfinished line
    lock = threading.Lock()
    stop = threading.Event()

    def read() -> None:
        for s in socks:
            s.setblocking(False)
            selector.register(s, selectors.EVENT_READ)
        while not stop.is_set():
            for key, _ in selector.select(timeout=0.2):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    selector.unregister(sock)
                    open_.discard(sock)
                # Each event leaves the server in one chunk: its lines are whole but for
                # a read that ends inside one, kept for the next read.
                text = tails[sock] + data
                cut = text.rfind(b"\n") + 1
                tails[sock] = text[cut:]
                with lock:
                    received[0] += len(data)
                    ids[sock].update(int(i) for i in _ID_LINE.findall(text[:cut]))

    def probe() -> Subscribers:
        with lock:
            return Subscribers(len(open_), received[0], [set(ids[s]) for s in socks])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        yield probe
    finally:
        stop.set()
        reader.join(5)
        for s in socks:
            s.close()


def with_streams(port: int, paths: list[str], n: int, seconds: int, connections: int,
                 threads: int, reference: dict[str, Load], group: int = 0) -> bool:
    """The same loads with N streams open and a pass every 2 s; ratios to `reference`."""
    stop = threading.Event()

    def passes() -> None:  # bounded: one every 2 s while the loads run
        while not stop.wait(2.0):
            post(port, "/api/update?wait=false", b"{}")

    start = newest_event_id(port)
    with subscribers(port, n, start) as probe:
        wait_for(lambda: probe().bytes > 0, timeout=30, message="the streams to start")
        driver = threading.Thread(target=passes, daemon=True)
        driver.start()
        loads = []
        try:
            for path in paths:
                loads.append(wrk(port, path, seconds, connections, threads, group))
        finally:
            stop.set()
            driver.join(35)
        # Every event stored since the streams opened must reach every stream (the
        # passes have stopped: give the last ones a moment to arrive).
        stored = event_ids_after(port, start)
        with contextlib.suppress(AssertionError):  # a timeout is reported below
            wait_for(lambda: all(stored <= got for got in probe().ids), timeout=30,
                     message="every stream to receive every event")
        seen = probe()
    complete = sum(stored <= got for got in seen.ids)
    print(f"\nwith {n} event streams open ({seen.open} still open at the end, "
          f"{seen.bytes / 1024:.0f} KiB read) and a pass every 2 s: {len(stored)} events "
          f"stored meanwhile, {complete} of {n} streams received every one of them "
          f"(fewest received: {min((len(stored & got) for got in seen.ids), default=0)})")
    print(f"{'endpoint':50} {'req/s':>9} {'p99 ms':>8}  req/s/reference  p99/reference")
    for x in loads:
        ref = reference[x.path]
        print(f"{x.path:50} {x.rps:9.0f} {x.p99_ms:8.2f}  {x.rps / ref.rps:15.2f}  "
              f"{x.p99_ms / ref.p99_ms:13.2f}")
    return seen.open == n and complete == n and bool(stored) and all(
        x.rps >= TARGET_RPS and x.p99_ms < TARGET_P99_MS and not x.errors for x in loads)


def report(loads: list[Load]) -> None:
    print(f"\n{'endpoint':50} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'errors':>6} {'CPU ms/req':>10}  req/s/target  p99/target")
    for x in loads:
        print(f"{x.path:50} {x.rps:9.0f} {x.p50_ms:8.2f} {x.p99_ms:8.2f} {x.max_ms:8.1f} "
              f"{x.errors:6d} {x.cpu_ms:10.3f}  {x.rps / TARGET_RPS:12.2f}  "
              f"{x.p99_ms / TARGET_P99_MS:10.2f}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (1 min), "
          f"{os.getloadavg()[1]:.2f} (5 min), on {os.cpu_count()} CPUs")
    ok = all(x.rps >= TARGET_RPS and x.p99_ms < TARGET_P99_MS and not x.errors for x in loads)
    print(f"\ntargets: >= {TARGET_RPS:.0f} req/s and p99 < {TARGET_P99_MS:.0f} ms per endpoint "
          f"(ratios: req/s over the target >= 1, p99 over the target < 1): "
          f"{'met' if ok else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_api", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=10, help="seconds per endpoint")
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--streams", type=int, default=200,
                   help="event-stream subscribers of the second round (0: skip it)")
    wrk_options(p)
    args = p.parse_args(argv)
    extra = controller_env(args)
    if extra is None:
        return 2
    with example_controller("bench-api", args.events, extra) as (proc, port):
        stored = get_json(port, "/api/events?limit=1")["events"][0]["id"]
        print(f"controller on 127.0.0.1:{port}, services healthy, newest event id "
              f"{stored}; wrk: {args.connections} connections, {args.duration}s each; "
              f"{access_log(extra)}")
        loads = []
        for path in ENDPOINTS:
            wrk(port, path, 1, args.connections, args.wrk_threads)  # warm-up
            loads.append(wrk(port, path, args.duration, args.connections,
                             args.wrk_threads, proc.pid))
            print(f"  {path}: {loads[-1].rps:.0f} req/s, p99 "
                  f"{loads[-1].p99_ms:.2f} ms, "
                  f"{loads[-1].cpu_ms:.3f} ms CPU/request", flush=True)
        report(loads)
        if args.streams:
            ok = with_streams(port, ENDPOINTS[:2], args.streams, args.duration,
                              args.connections, args.wrk_threads,
                              {x.path: x for x in loads}, proc.pid)
            print(f"targets with {args.streams} streams open: "
                  f"{'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
