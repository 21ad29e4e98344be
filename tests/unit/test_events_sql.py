"""The event store shared by replicas (issue 14): what one replica writes, another one's
followers, SSE streams and notifier see, in id order, with nothing skipped or repeated.

Every "replica" here is an `EventStore` of its own on one database: on PostgreSQL a fresh
database of a real server on loopback (tests/support/postgres.py), each store with its
own handle, watcher and LISTEN connection, as two controller processes would have. The
tests that need no second replica run on SQLite too (`store_settings`); tests/unit/
test_events.py runs the whole single-store suite on both databases.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from falcon import testing
from prometheus_client import CollectorRegistry

from controller.adapters.metrics import Metrics
from controller.adapters.store import events as events_module
from controller.adapters.store.events import Event, EventStore
from controller.adapters.store.sql import StoreError
from controller.api.app import Settings, create_app
from controller.config import ApiSettings, StoreSettings
from controller.runtime.notifying import Notifier, Receiver
from tests.support.api import FakeApi
from tests.support.fakes import FakeService
from tests.support.inbox import FAST, Inbox, inbox_fixture  # noqa: F401 (fixture)
from tests.support.postgres import (  # noqa: F401 (fixtures)
    Database,
    postgres_fixture,
    postgres_server_fixture,
    store_settings_fixture,
)
from tests.support.stores import Opener, event_stores
from tests.support.waiting import wait_for

Replica = Opener


@pytest.fixture
def pg_settings(postgres: Database) -> StoreSettings:
    return StoreSettings(url=postgres.url, password_file=str(postgres.password_file))


@pytest.fixture
def replica(pg_settings: StoreSettings, tmp_path: Path) -> Iterator[Replica]:
    """Opens another replica's event store on the test's PostgreSQL database."""
    yield from event_stores(pg_settings, tmp_path)


@pytest.fixture
def either(store_settings: StoreSettings, tmp_path: Path) -> Iterator[Replica]:
    """Opens an event store on SQLite, then on PostgreSQL."""
    yield from event_stores(store_settings, tmp_path)


def _waiting(store: EventStore) -> bool:
    return bool(store._changed._waiters)  # type: ignore[attr-defined]


# -- another replica's commits ------------------------------------------------------------


def test_a_commit_on_one_replica_wakes_the_other_by_notification(replica: Replica) -> None:
    """The poll is a minute away: only the notification can wake B within seconds."""
    a, b = replica(), replica(poll_interval=60)
    a.add("info", "before")
    wait_for(lambda: b.last_id == 1, timeout=5, message="B to learn of A's first event")
    woke: list[tuple[bool, float]] = []

    def wait() -> None:
        started = time.monotonic()
        woke.append((b.wait_for_new(1, 30), time.monotonic() - started))

    t = threading.Thread(target=wait)
    t.start()
    wait_for(lambda: _waiting(b), message="B's follower to wait")
    event = a.add("error", "from A", service="web")
    t.join(10)
    assert woke and woke[0][0] is True and woke[0][1] < 5, woke
    assert b.last_id == event.id and b.get(event.id) == event
    assert [e.message for e in b.query()] == ["from A", "before"]


def test_without_notifications_the_poll_still_wakes_followers(
        replica: Replica, monkeypatch: pytest.MonkeyPatch) -> None:
    a = replica()
    b = replica(poll_interval=0.2)

    def refuse(channel: str) -> None:
        raise StoreError("LISTEN refused (test)")

    monkeypatch.setattr(b.db, "listen", refuse)  # the watcher's next attempt fails
    wait_for(lambda: b.wait_for_new(0, 0) is False, message="B started")
    event = a.add("info", "polled")
    assert b.wait_for_new(0, 10) is True
    assert b.last_id == event.id


# -- the gap: ids committed out of order ---------------------------------------------------


def test_an_id_is_never_visible_before_a_lower_one(replica: Replica) -> None:
    """A's transaction holds id 1 uncommitted; B's insert must wait for it (else B's id 2
    would be read first and a follower resuming after 2 would never see 1)."""
    a, b = replica(), replica()
    follower = replica(poll_interval=0.1)
    done = threading.Event()
    b_event: list[Event] = []
    with a._writing() as tx:
        (first,) = events_module._insert(tx, [events_module._row("info", "A, slow", "",
                                                                 "", "", None, None)])
        def quick() -> None:
            b_event.append(b.add("info", "B, quick"))
            done.set()

        t = threading.Thread(target=quick)
        t.start()
        assert not done.wait(1.0), "B committed while A's lower id was still open"
        assert follower.query() == []  # nothing visible, nothing to skip past
    a._published(first.id)
    t.join(10)
    assert b_event and b_event[0].id > first.id
    assert b_event[0].timestamp >= first.timestamp
    wait_for(lambda: follower.last_id == b_event[0].id, message="the follower to see both")
    assert [e.id for e in follower.query(oldest_first=True)] == [first.id, b_event[0].id]


def test_concurrent_writers_on_every_replica_and_a_follower_miss_nothing(
        either: Replica) -> None:
    """Writers on several replicas (one store on SQLite) while a follower reads: it gets
    every event once, in id order, and the timestamps never go back along the ids."""
    first = either()
    shared = first.db.dialect != "sqlite"
    writers = [either() if shared else first for _ in range(3)]
    follower = either(poll_interval=0.2) if shared else first
    got: list[Event] = []
    stop = threading.Event()
    total = 3 * 2 * (20 + 40)  # per thread: 20 single adds, 20 pairs

    def follow() -> None:
        for batch in follower.follow(after_id=0, heartbeat=0.2, stop=stop):
            got.extend(batch)
            if len(got) >= total:
                return

    reader = threading.Thread(target=follow)
    reader.start()

    def write(store: EventStore, n: int) -> None:
        for i in range(40):
            if i % 2:
                store.add("info", f"w{n}-{i}")
            else:
                store.add_many([{"type": "info", "message": f"w{n}-{i}a"},
                                {"type": "info", "message": f"w{n}-{i}b"}])

    threads = [threading.Thread(target=write, args=(w, n)) for n, w in enumerate(writers)
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    reader.join(30)
    stop.set()
    ids = [e.id for e in got]
    stored = [e.id for e in first.query(limit=1000, oldest_first=True)]
    assert len(stored) == total and ids == stored, (len(ids), len(stored))
    times = [e.timestamp for e in got]
    assert times == sorted(times)


# -- Server-Sent Events from another replica ----------------------------------------------


def _api(store: EventStore, tmp_path: Path, name: str) -> tuple[FakeApi, Any]:
    """The API of one replica (the in-memory service) whose events are `store`."""
    service = FakeService(tmp_path / f"{name}.db")
    service.store.close()
    service.store = store
    registry = CollectorRegistry()
    app = create_app(service, registry, Settings(ApiSettings(auth=False, rate_limit=0)),
                     meters=Metrics(registry, "default", "shop"))
    return FakeApi(testing.TestClient(app), service, registry), app


def _frames(text: str) -> list[tuple[int, str]]:
    return [(int(i), json.loads(d)["message"])
            for i, d in re.findall(r"^id: (\d+)\ndata: (.*)$", text, re.M)]


def test_a_stream_on_one_replica_carries_the_other_replicas_events(
        replica: Replica, tmp_path: Path) -> None:
    a = replica()
    b = replica(poll_interval=60)  # woken by notifications only
    api, app = _api(b, tmp_path, "b")
    try:
        a.add_many([{"type": "info", "message": f"early {i}"} for i in range(3)])
        wait_for(lambda: b.last_id == 3, message="B to learn of A's events")
        streamed: list[str] = []
        reader = threading.Thread(target=lambda: streamed.append(api.stream(
            "/api/events/stream", {"duration": "4"}, {"Last-Event-ID": "0"}).text))
        reader.start()
        # B's fan-out follows its store once the stream has caught up: then A writes.
        wait_for(lambda: _waiting(b), message="B's stream to wait for new events")
        for i in range(4):
            a.add("error" if i % 2 else "info", f"live {i}")
        reader.join(30)
        assert streamed, "the stream did not end"
        frames = _frames(streamed[0])
        assert frames == [(i + 1, f"early {i}") for i in range(3)] + \
            [(i + 4, f"live {i}") for i in range(4)]

        # Reconnect after the 5th with Last-Event-ID: the rest, once each, and what A
        # wrote since.
        a.add("info", "while away")
        wait_for(lambda: b.last_id == 8, message="B to learn of it")
        again = api.stream("/api/events/stream", {"duration": "0"}, {"Last-Event-ID": "5"})
        assert _frames(again.text) == [(6, "live 2"), (7, "live 3"), (8, "while away")]
        tail = api.stream("/api/events/stream", {"duration": "0", "type": "error"},
                          {"Last-Event-ID": "8"})
        assert _frames(tail.text) == []
    finally:
        app.close()


# -- notifications: one leader, one cursor --------------------------------------------------




def test_the_notifier_cursor_survives_a_failover(replica: Replica, inbox: Inbox,
                                                 tmp_path: Path) -> None:
    """Replica A leads and sends; B follows and leaves the shared cursor alone; A goes,
    B leads: B sends what came next, and nothing A sent is sent again."""
    (tmp_path / "url").write_text(inbox.url + "\n")
    receiver = Receiver("ops", "webhook", tmp_path / "url", rate_per_minute=6000)
    leader = ["a"]
    a, b = replica(), replica(poll_interval=0.2)
    na = Notifier(FAST, a, [receiver], instance="default",
                  is_leader=lambda: leader[0] == "a").start()
    nb = Notifier(FAST, b, [receiver], instance="default",
                  is_leader=lambda: leader[0] == "b").start()
    try:
        assert na.cursors is not None and nb.cursors is not None
        wait_for(lambda: na.cursors is not None and na.cursors.load("ops") is not None,
                 message="the shared cursor")
        a.add("error", "pass failed", reason="ReconcileFailed", instance="default")
        wait_for(lambda: inbox.kinds() == ["pass_failed"], timeout=20,
                 message="A to send the failure")
        failed = a.last_id
        wait_for(lambda: nb.cursors is not None and
                 (nb.cursors.load("ops") or (0, {}))[0] >= failed,
                 message="A to move the shared cursor past it")
        na.stop()
        leader[0] = "b"
        b.add("success", "pass ok", reason="ReconcileSucceeded", instance="default")
        wait_for(lambda: len(inbox.kinds()) == 2, timeout=20,
                 message="B, now leading, to send the recovery")
        assert inbox.kinds() == ["pass_failed", "pass_recovered"]
        assert nb.delivered["ops"] == 1 and na.delivered["ops"] == 1
    finally:
        na.stop()
        nb.stop()
