"""Benchmark: filtered event queries over 1,000,000 stored events (target p99 < 10 ms).

Run: .venv/bin/python -m bench.bench_events [--events N] [--queries N]
Fills a store in a temporary directory with a realistic mix (mostly info and success,
some warnings, few errors; ~200 resources in 10 services; timestamps spread over 14 days)
in large transactions, then times 2,000 queries per filter with limits of 10-100 and
prints p50/p99 and p99 over the 10 ms target, with the insert rate and the size on disk.
The point is the shape of the curve, not the absolute numbers: every filter should cost
about the same however many events are stored, since each is one bounded index range.

Both databases (issue 14): `--backend sqlite,postgresql` (the default) fills and times
SQLite, then PostgreSQL, and ends with their p99 side by side. PostgreSQL is a throwaway
server of Debian's binaries on loopback (tests/support/postgres.py; durability off, as in
the tests), or the database `--store-url` names (with `--password-file`). The fill is
followed by VACUUM ANALYZE (autovacuum does it in a real deployment). Besides the bulk fill, the
insert rate is also timed as the controller writes: one event per transaction. The load
average is printed at the start and the end (the machine may be shared).

A second table times the API's answer (the JSON bytes of `GET /api/events`), which is what
a request costs: `store.page` (each event's JSON was serialized once, at write, and is
joined here) against decoding the rows into `Event`s and encoding them again, as the API
did before (and as a store without `page`, an older checkout, still does).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from controller.adapters.store.events import MAX_OFFSET, EventInput, EventStore, format_ms
from controller.adapters.store.sql import Database, open_database
from controller.config import StoreSettings

TARGET_MS = 10.0
DAY_MS = 86_400_000
SERVICES = [f"svc{i:02d}" for i in range(10)]
KINDS = ["Deployment", "Service", "ConfigMap", "Pod"]
TYPES = ["info", "success", "warning", "error"]
TYPE_WEIGHTS = [55, 30, 10, 5]
CHUNK = 50_000
NAMESPACES = ("default", "prod", "staging")


def resources() -> list[tuple[str, str]]:
    """~200 (resource key, service) pairs: 20 objects per service, in three namespaces."""
    out = []
    for i, service in enumerate(SERVICES):
        namespace = ("default", "prod", "staging")[i % 3]
        for j in range(20):
            kind = KINDS[j % len(KINDS)]
            name = f"{service}-{j:02d}" if kind != "Pod" else f"{service}-7d9f-{j:03d}x"
            out.append((f"{namespace}/{kind}/{name}", service))
    return out


def generate(n: int, start_ms: int, span_ms: int,
             rng: random.Random) -> Iterator[list[EventInput]]:
    """Events in time order, in chunks of CHUNK."""
    keys = resources()
    batch: list[EventInput] = []
    for i in range(n):
        ts = format_ms(start_ms + i * span_ms // n)
        t = rng.choices(TYPES, TYPE_WEIGHTS)[0]
        # Instances: app0..app9 in each namespace (same names in several: issue 13).
        instance, namespace = f"app{rng.randrange(10)}", rng.choice(NAMESPACES)
        if rng.random() < 0.05:  # a pass started/finished: no resource
            batch.append({"type": "info" if t == "warning" else t, "timestamp": ts,
                          "message": "reconcile finished in 0.42s", "reason": "PassFinished",
                          "details": {"counts": {"applied": 1, "unchanged": 199, "failed": 0},
                                      "revision": "a1b2c3d"},
                          "instance": instance, "namespace": namespace})
        else:
            key, service = keys[rng.randrange(len(keys))]
            batch.append({**_object_event(t, key, service, ts, rng), "instance": instance,
                          "namespace": key.split("/")[0]})
        if len(batch) == CHUNK:
            yield batch
            batch = []
    if batch:
        yield batch


def _object_event(t: str, key: str, service: str, ts: str, rng: random.Random) -> EventInput:
    kind, name = key.split("/")[1:]
    if t == "error":
        return {"type": t, "resource": key, "service": service, "timestamp": ts,
                "reason": "ApplyFailed",
                "message": f"apply {kind} {name} failed: {kind} \"{name}\" is invalid: "
                           "spec.replicas: Invalid value: -1",
                "details": {"action": "update", "error": {
                    "resource": key, "error": "Invalid", "status": 422,
                    "message": "spec.replicas: Invalid value: -1: must be >= 0"}}}
    if t == "warning":
        return {"type": t, "resource": key, "service": service, "timestamp": ts,
                "reason": "Failed",
                "message": f"Failed to pull image \"registry.local/{service}:1.{rng.randrange(9)}"
                           "\": not found",
                "details": {"origin": "kubernetes", "count": rng.randrange(1, 50),
                            "component": "kubelet", "host": "node-1",
                            "involvedObject": {"apiVersion": "v1", "fieldPath":
                                               "spec.containers{main}"}}}
    return {"type": t, "resource": key, "service": service, "timestamp": ts,
            "reason": "Updated" if t == "success" else "Scheduled",
            "message": f"{kind} {name} {'updated' if t == 'success' else 'scheduled'}",
            "details": {"action": "update", "planReason": "spec changed"}}


def _instance(rng: random.Random) -> dict[str, Any]:
    return {"instance": f"app{rng.randrange(10)}", "namespace": rng.choice(NAMESPACES)}


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--backend", default="sqlite,postgresql",
                        help="comma-separated: sqlite, postgresql")
    parser.add_argument("--store-url", default="",
                        help="a PostgreSQL database to use (default: a throwaway server)")
    parser.add_argument("--password-file", default="")
    args = parser.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results: dict[str, dict[str, float]] = {}
    for backend in (b.strip() for b in args.backend.split(",")):
        with tempfile.TemporaryDirectory(prefix="conductor-events-") as tmp, \
                _database(backend, Path(tmp), args) as db:
            print(f"\n== {backend} ({db.display})")
            results[backend] = run(db, args)
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if len(results) > 1:
        names = list(results)
        print(f"\n{'p99 ms (inserts: events/s)':<30}" + "".join(f"{n:>12}" for n in names))
        for case in results[names[0]]:
            print(f"{case:<30}" + "".join(f"{results[n].get(case, 0):>12.3f}"
                                          for n in names))


@contextlib.contextmanager
def _database(backend: str, tmp: Path, args: argparse.Namespace) -> Iterator[Database]:
    if backend not in ("sqlite", "postgresql"):
        raise SystemExit(f"unknown backend {backend!r}: sqlite or postgresql")
    server = None
    if backend == "sqlite":
        settings = StoreSettings()
    elif args.store_url:
        settings = StoreSettings(url=args.store_url, password_file=args.password_file)
    else:
        from tests.support.postgres import Postgres, binaries  # a test helper: bench only

        bindir = binaries()
        if bindir is None:
            raise SystemExit("PostgreSQL is not installed: pass --store-url or "
                             "--backend sqlite")
        server = Postgres(bindir).start()
        target = server.database()
        settings = StoreSettings(url=target.url, password_file=str(target.password_file))
    args.pg_url, args.pg_password_file = settings.url, settings.password_file
    try:
        db = open_database(settings, tmp / "events.db")
        try:
            yield db
        finally:
            db.close()
    finally:
        if server is not None:
            server.stop()


def _vacuum(args: argparse.Namespace) -> None:
    """VACUUM ANALYZE (outside any transaction, so not through the store): statistics for
    the planner, and the visibility map that lets index-only scans skip the table, which
    autovacuum gives a real deployment's insert-only table soon after a fill."""
    import psycopg  # bench only: the controller reaches PostgreSQL through sql.py

    password = Path(args.pg_password_file).read_text().strip() \
        if args.pg_password_file else None
    with psycopg.connect(args.pg_url, password=password, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE events")


def run(db: Database, args: argparse.Namespace) -> dict[str, float]:
    """Fill `db`, time each filter and the API's answers: each filter's p99 (ms), and the
    insert rates (events/s)."""
    rng = random.Random(42)
    now = time.time_ns() // 1_000_000
    span = 14 * DAY_MS
    start = now - span
    out: dict[str, float] = {}
    # Retention above the fill: nothing may be deleted while we measure.
    store = EventStore(db, max_age_days=30, max_count=args.events * 2)
    began = time.perf_counter()
    for chunk in generate(args.events, start, span, rng):
        store.add_many(chunk)
    fill = time.perf_counter() - began
    print(f"inserted {args.events:,} events in {fill:.1f}s: "
          f"{args.events / fill:,.0f} events/s (chunks of {CHUNK:,}, one transaction each)")
    singles = 1000
    began = time.perf_counter()
    for i in range(singles):
        store.add("info", f"one at a time {i}", resource="default/Pod/single",
                  service="svc00")
    single_rate = singles / (time.perf_counter() - began)
    print(f"inserted {singles:,} events one per transaction: {single_rate:,.0f} events/s")
    out["inserts/s (bulk)"] = args.events / fill
    out["inserts/s (one per tx)"] = single_rate
    if db.dialect == "postgresql":
        _vacuum(args)
    print(f"store: {store.count():,} events, {store.size_bytes() / 2**20:.0f} MiB on disk")

    keys = resources()
    last = store.last_id

    def t() -> str:
        return rng.choice(TYPES)

    def ts() -> str:
        return format_ms(start + rng.randrange(span))

    cases: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("none", lambda: {}),
        ("type", lambda: {"type": t()}),
        ("type list (error,warning)", lambda: {"type": "error,warning"}),
        ("resource", lambda: {"resource": rng.choice(keys)[0]}),
        ("service", lambda: {"service": rng.choice(SERVICES)}),
        ("since", lambda: {"since": ts()}),
        ("type+service", lambda: {"type": t(), "service": rng.choice(SERVICES)}),
        ("resource+type", lambda: {"resource": rng.choice(keys)[0], "type": t()}),
        ("until+type", lambda: {"until": ts(), "type": t()}),
        ("since+until+service", lambda: _window(ts(), {"service": rng.choice(SERVICES)})),
        ("offset 500", lambda: {"offset": 500}),
        ("offset 500+type", lambda: {"offset": 500, "type": t()}),
        # The deepest offset allowed (MAX_OFFSET); deeper pages use before_id.
        ("offset 10,000+type", lambda: {"offset": MAX_OFFSET, "type": t()}),
        ("offset 10,000+type list", lambda: {"offset": MAX_OFFSET,
                                             "type": "error,warning"}),
        # A namespace-limited token's query: instance and namespace (issue 13).
        ("instance+namespace", lambda: _instance(rng)),
        ("instance+namespace+type", lambda: {**_instance(rng), "type": t()}),
        ("instance+namespace+service", lambda: {**_instance(rng),
                                                "service": rng.choice(SERVICES)}),
        ("after_id", lambda: {"after_id": rng.randrange(last)}),
        ("after_id oldest first (SSE)", lambda: {"after_id": rng.randrange(last),
                                                 "oldest_first": True}),
    ]
    print(f"\n{'filter':<30}{'p50 ms':>9}{'p99 ms':>9}{'p99/10ms':>10}{'rows':>7}")
    worst = 0.0
    for name, make in cases:
        samples: list[float] = []
        rows = 0
        for _ in range(args.queries):
            kwargs = make()
            kwargs["limit"] = rng.randint(10, 100)
            t0 = time.perf_counter()
            found = store.query(**kwargs)
            samples.append((time.perf_counter() - t0) * 1000)
            rows += len(found)
        p99 = percentile(samples, 0.99)
        worst = max(worst, p99)
        print(f"{name:<30}{statistics.median(samples):>9.3f}{p99:>9.3f}"
              f"{p99 / TARGET_MS:>10.3f}{rows / args.queries:>7.0f}")
        out[name] = p99
    print(f"\nworst p99 {worst:.3f} ms: {'meets' if worst < TARGET_MS else 'MISSES'} "
          f"the {TARGET_MS:.0f} ms target")
    _answers(store, rng, args.queries)
    store.close()
    return out


def _answers(store: EventStore, rng: random.Random, n: int) -> None:
    """The API's answer to GET /api/events (bytes), per way of making it."""
    cases: list[tuple[str, dict[str, Any]]] = [
        ("service=redis&limit=50&since=14d", {"service": "svc03", "limit": 50,
                                              "since": "14d"}),
        ("limit=100", {"limit": 100}),
        ("type=error&limit=1000", {"type": "error", "limit": 1000}),
    ]
    ways: list[tuple[str, Callable[[dict[str, Any]], bytes]]] = [
        ("decode + re-encode", lambda q: json.dumps(
            {"events": [e.to_dict() for e in store.query(**q)], "count": 0},
            ensure_ascii=False).encode())]
    if hasattr(store, "page"):
        ways.append(("stored JSON joined (page)", lambda q: store.page(**q)))
    print(f"\n{'API answer':<36}{'way':<28}{'p50 ms':>9}{'p99 ms':>9}{'req/s 1 core':>14}")
    for name, query in cases:
        for way, make in ways:
            samples = []
            for _ in range(max(1, n // 4)):
                t0 = time.perf_counter()
                make(query)
                samples.append((time.perf_counter() - t0) * 1000)
            print(f"{name:<36}{way:<28}{statistics.median(samples):>9.3f}"
                  f"{percentile(samples, 0.99):>9.3f}"
                  f"{1000 / statistics.mean(samples):>14,.0f}")


def _window(since: str, extra: dict[str, Any]) -> dict[str, Any]:
    """A one-day window starting at `since`."""
    from controller.adapters.store.events import parse_time

    return {"since": since, "until": format_ms(parse_time(since) + DAY_MS), **extra}


if __name__ == "__main__":
    main()
