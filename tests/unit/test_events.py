"""The event store: filters against a brute-force oracle, plans, retention, redaction, dedup.

Each query is checked against a plain Python filter over every stored event, for every
combination of filters, so a fast plan can never be a wrong one; and each statement's
EXPLAIN QUERY PLAN must be an index search, which is what keeps "bounded" true as the
code changes.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import shutil
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.store import events as events_module
from controller.adapters.store.events import (
    Event,
    EventInput,
    EventStore,
    EventStoreError,
    StoreProblem,
    open_store,
    resource_key,
)
from controller.adapters.store.history import History
from controller.config import EventSettings, StoreSettings
from controller.errors import ValidationError
from controller.model.eventquery import MAX_LIMIT, MAX_OFFSET
from controller.model.objects import ObjectKey
from controller.model.redaction import REDACTED, redact
from controller.model.times import format_ms, parse_time
from controller.reconcile.applying import ObjectResult
from controller.reconcile.passes import (
    Notice,
    ObjectDone,
    Operation,
    Pass,
    PassFinished,
    PassStarted,
)
from controller.runtime.recording import EngineRecorder, PassRecorder
from tests.support.postgres import (  # noqa: F401 (fixtures)
    postgres_fixture,
    postgres_server_fixture,
    store_settings_fixture,
)
from tests.support.stores import Opener, event_stores
from tests.support.waiting import wait_for

BASE = datetime(2030, 1, 1, tzinfo=UTC)  # in the future: retention by age never applies
RESOURCES = ["default/Deployment/web", "default/Service/web", "prod/Deployment/api",
             "prod/Pod/api-7d9f", "-/Namespace/prod", "default/ConfigMap/web-config"]
SERVICES = ["web", "api", "_shared", ""]
TYPES = ["info", "success", "warning", "error"]
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def at(minute: int) -> str:
    return format_ms(int((BASE + timedelta(minutes=minute)).timestamp() * 1000))


@pytest.fixture
def opener(store_settings: StoreSettings, tmp_path: Path) -> Iterator[Opener]:
    """Opens the test's event store, on SQLite then on PostgreSQL (`store_settings`),
    with EventStore's keyword arguments; again for a restart. Closed after the test."""
    yield from event_stores(store_settings, tmp_path)


@pytest.fixture
def store(opener: Opener) -> EventStore:
    return opener()


@pytest.fixture
def filled(store: EventStore) -> list[Event]:
    """300 events a minute apart: every type, resource and service, mixed."""
    rng = random.Random(7)  # independent choices: every combination occurs
    batch: list[EventInput] = []
    for i in range(300):
        batch.append({"type": rng.choice(TYPES), "message": f"event {i}",
                      "resource": rng.choice(RESOURCES), "service": rng.choice(SERVICES),
                      "reason": f"R{i % 3}", "details": {"i": i}, "timestamp": at(i)})
    return store.add_many(batch)


def oracle(events: list[Event], type: Any = None, resource: str | None = None,
           service: str | None = None, since: str | None = None, until: str | None = None,
           limit: int = 100, offset: int = 0, after_id: int | None = None,
           before_id: int | None = None, oldest_first: bool = False) -> list[int]:
    types = [type] if isinstance(type, str) and "," not in type else \
        type.split(",") if isinstance(type, str) else type
    out = [e for e in events
           if (types is None or e.type in types)
           and (resource is None or e.resource == resource)
           and (service is None or e.service == service)
           and (since is None or e.timestamp >= since)
           and (until is None or e.timestamp <= until)
           and (after_id is None or e.id > after_id)
           and (before_id is None or e.id < before_id)]
    out.sort(key=lambda e: e.id, reverse=not oldest_first)
    return [e.id for e in out[offset:offset + limit]]


# -- the basics ---------------------------------------------------------------------------


def test_add_returns_the_stored_event(store: EventStore) -> None:
    e = store.add("error", "apply web failed", resource="default/Deployment/web",
                  service="web", reason="ApplyFailed", details={"status": 422})
    assert e.id == 1 and TIMESTAMP.match(e.timestamp)
    assert store.get(e.id) == e
    assert store.get(999) is None
    assert e.to_dict() == {"id": 1, "timestamp": e.timestamp, "type": "error",
                           "resource": "default/Deployment/web", "service": "web",
                           "message": "apply web failed", "reason": "ApplyFailed",
                           "details": {"status": 422}, "instance": "", "namespace": ""}
    assert list(e.to_dict()) == ["id", "timestamp", "type", "resource", "service",
                                 "message", "reason", "details", "instance", "namespace"]


def test_resource_key_matches_object_key() -> None:
    assert resource_key("", "Namespace", "prod") == str(ObjectKey("", "Namespace", "", "prod"))
    assert resource_key("default", "Deployment", "web") == \
        str(ObjectKey("apps", "Deployment", "default", "web"))


@pytest.mark.parametrize("bad", ["fatal", "Error", "", None, 3])
def test_invalid_type_is_a_validation_error_naming_the_field(store: EventStore,
                                                             bad: Any) -> None:
    with pytest.raises(ValidationError) as add:
        store.add(bad, "x")
    assert add.value.details["field"] == "type"
    assert add.value.details["allowed"] == ["error", "warning", "info", "success"]
    with pytest.raises(ValidationError) as query:
        store.query(type=["error", bad])
    assert query.value.details["field"] == "type"
    assert store.count() == 0


def test_add_many_is_one_transaction(store: EventStore) -> None:
    with pytest.raises(ValidationError):
        store.add_many([{"type": "info", "message": "ok"}, {"type": "nope", "message": "x"}])
    assert store.count() == 0
    out = store.add_many([{"type": "info", "message": "a"}, {"type": "error", "message": "b"}])
    assert [e.id for e in out] == [1, 2] and store.count() == 2
    assert store.add_many([]) == []


def test_timestamps_never_go_back_along_ids(store: EventStore) -> None:
    """What makes since/until id bounds: an earlier timestamp is raised to the newest."""
    late = store.add("info", "late", timestamp=at(10))
    early = store.add("info", "early", timestamp=at(5))
    assert early.id > late.id and early.timestamp == late.timestamp
    assert store.query(until=at(9)) == []
    now = store.add("info", "now")
    assert now.timestamp >= early.timestamp


# -- filters ------------------------------------------------------------------------------


def test_every_filter_combination_matches_the_oracle(store: EventStore,
                                                     filled: list[Event]) -> None:
    combos = itertools.product(
        [None, "error", ["warning", "info"], "success,error", "error,warning,info,success"],
        [None, RESOURCES[0], RESOURCES[4]],
        [None, "web", ""],
        [None, at(100)],
        [None, at(250)],
        [None, 50],
        [None, 280],
        [0, 7],
        [False, True])
    checked = 0
    for type_, resource, service, since, until, after_id, before_id, offset, asc in combos:
        kwargs: dict[str, Any] = dict(type=type_, resource=resource, service=service,
                                      since=since, until=until, after_id=after_id,
                                      before_id=before_id, offset=offset, limit=10,
                                      oldest_first=asc)
        got = [e.id for e in store.query(**kwargs)]
        assert got == oracle(filled, **kwargs), kwargs
        checked += 1
    assert checked == 5 * 3 * 3 * 2 * 2 * 2 * 2 * 2 * 2


def test_filters_return_the_right_rows(store: EventStore, filled: list[Event]) -> None:
    assert {e.type for e in store.query(type="error", limit=1000)} == {"error"}
    assert {e.resource for e in store.query(resource="-/Namespace/prod")} == \
        {"-/Namespace/prod"}
    assert {e.service for e in store.query(service="api")} == {"api"}
    got = store.query(type="warning", service="web", limit=1000)
    assert got and all(e.type == "warning" and e.service == "web" for e in got)
    window = store.query(since=at(10), until=at(19), limit=1000)
    assert [e.message for e in window] == [f"event {i}" for i in range(19, 9, -1)]
    assert store.query(since=at(1000)) == [] and store.query(until=at(-1)) == []
    assert store.query(since=at(20), until=at(10)) == []


def test_newest_first_and_oldest_first(store: EventStore, filled: list[Event]) -> None:
    ids = [e.id for e in store.query(limit=1000)]
    assert ids == sorted(ids, reverse=True) and len(ids) == 300
    assert [e.id for e in store.query(oldest_first=True, limit=5)] == [1, 2, 3, 4, 5]
    assert [e.id for e in store.query(after_id=295)] == [300, 299, 298, 297, 296]
    assert [e.id for e in store.query(before_id=4)] == [3, 2, 1]


def test_limit_is_clamped_and_offset_bounded(store: EventStore, filled: list[Event]) -> None:
    assert len(store.query(limit=0)) == 1
    assert len(store.query(limit=-5)) == 1
    store.add_many([{"type": "info", "message": "more"}] * 900)
    assert len(store.query(limit=5000)) == MAX_LIMIT
    assert [e.id for e in store.query(offset=3, limit=2)] == [1197, 1196]
    assert len(store.query(offset=MAX_OFFSET)) == 0
    for bad in (-1, MAX_OFFSET + 1, "x"):
        with pytest.raises(ValidationError) as info:
            store.query(offset=bad)  # type: ignore[arg-type]
        assert info.value.details["field"] == "offset"
    with pytest.raises(ValidationError) as limit:
        store.query(limit="ten")  # type: ignore[arg-type]
    assert limit.value.details["field"] == "limit"
    with pytest.raises(ValidationError):
        store.query(after_id=-1)


def test_offset_pages_through_merged_types(store: EventStore, filled: list[Event]) -> None:
    pages = [store.query(type="error,warning", offset=o, limit=10) for o in range(0, 200, 10)]
    ids = [e.id for page in pages for e in page]
    expected = oracle(filled, type=["error", "warning"], limit=1000)
    assert ids == expected[:len(ids)] and len(ids) == len(expected)


@pytest.mark.parametrize(("text", "expected"), [
    ("2030-01-01T00:05:00Z", at(5)),
    ("2030-01-01T00:05:00.000Z", at(5)),
    ("2030-01-01t00:05:00z", at(5)),
    ("2030-01-01T02:05:00+02:00", at(5)),
    ("2030-01-01T00:05:00", at(5)),  # naive: UTC
    ("2030-01-01 00:05:00Z", at(5)),
])
def test_since_until_accept_rfc3339(text: str, expected: str) -> None:
    assert format_ms(parse_time(text)) == expected


def test_since_until_accept_datetimes_and_durations(store: EventStore) -> None:
    store.add("info", "old", timestamp=datetime.now(UTC) - timedelta(hours=3))
    store.add("info", "new", timestamp=datetime.now(UTC) - timedelta(minutes=5))
    assert [e.message for e in store.query(since="1h")] == ["new"]
    assert [e.message for e in store.query(until="1h")] == ["old"]
    assert [e.message for e in store.query(since="4h")] == ["new", "old"]
    tz = timezone(timedelta(hours=5))
    assert [e.message for e in
            store.query(since=datetime.now(tz) - timedelta(hours=1))] == ["new"]
    naive = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)
    assert [e.message for e in store.query(since=naive)] == ["new"]


@pytest.mark.parametrize("bad", ["yesterday", "2030-13-01T00:00:00Z", "12", "", "1w", 5])
def test_bad_times_are_validation_errors(store: EventStore, bad: Any) -> None:
    for name in ("since", "until"):
        with pytest.raises(ValidationError) as info:
            store.query(**{name: bad})
        assert info.value.details["field"] == name
        assert "value" in info.value.details
    with pytest.raises(ValidationError) as add:
        store.add("info", "x", timestamp=bad)
    assert add.value.details["field"] == "timestamp"


@pytest.mark.parametrize("huge", ["99999999999999999999d", "1" + "0" * 400 + "d",
                                  "999999999h", "9" * 30 + "ms"])
def test_durations_beyond_the_calendar_are_validation_errors(store: EventStore,
                                                             huge: str) -> None:
    """Well-formed but before year 1 (or infinite as a float): once an OverflowError from
    int() or SQLite, a 500 on every events route; now a 400 naming the field."""
    store.add("info", "x")
    for name in ("since", "until"):
        with pytest.raises(ValidationError) as info:
            store.query(**{name: huge})
        assert info.value.details == {"field": name, "value": huge}
        with pytest.raises(ValidationError):
            next(store.follow(**{name: huge}))  # the stream's filters too
    # The largest duration that still names a day of the calendar is a valid filter.
    assert [e.message for e in store.query(since="700000d")] == ["x"]


# -- plans --------------------------------------------------------------------------------


SEARCH = re.compile(r"^SEARCH events USING (COVERING INDEX events_\w+|INDEX events_\w+|"
                    r"INTEGER PRIMARY KEY) \(")
MERGE_STEPS = {"MERGE (UNION ALL)", "LEFT", "RIGHT"}


def test_every_filter_query_is_an_index_search(store: EventStore,
                                               filled: list[Event]) -> None:
    """No statement of any filter combination scans the table or sorts in a temp tree.

    PostgreSQL plans by statistics: on 300 rows a scan of the whole (tiny) table is its
    best plan, so there the store holds 20,000 more events, analyzed, and no statement
    may scan the table, sort or read a bitmap of every match (each is an index scan that
    stops after offset + limit rows; which index is the planner's choice)."""
    if store.db.dialect == "postgresql":
        rng = random.Random(3)
        for _ in range(20):
            store.add_many([{"type": rng.choice(TYPES), "message": "noise",
                             "resource": rng.choice(RESOURCES),
                             "service": rng.choice(SERVICES),
                             "instance": rng.choice(["default", "other"])}
                            for _ in range(1000)])
        with store.db.write() as tx:
            tx.execute("ANALYZE events")
    combos = itertools.product(
        [None, "error", "warning,info"], [None, RESOURCES[0]], [None, "web"],
        [None, at(100)], [None, at(250)], [None, 50], [0, 500], [False, True],
        [None, "default"])
    for type_, resource, service, since, until, after_id, offset, asc, inst in combos:
        kwargs = dict(type=type_, resource=resource, service=service, since=since,
                      until=until, after_id=after_id, offset=offset, oldest_first=asc,
                      instance=inst)
        plan = store.explain(**kwargs)  # type: ignore[arg-type]
        assert plan, kwargs
        if store.db.dialect == "postgresql":
            assert not [line for line in plan if "Seq Scan" in line or "Bitmap" in line
                        or line.endswith("Sort")], (kwargs, plan)
            assert any("Index" in line for line in plan), (kwargs, plan)
            if type_ == "warning,info":
                assert "->  Merge Append" in plan, (kwargs, plan)
            continue
        for line in plan:
            # Several types: a lazy merge of index ranges (MERGE, LEFT, RIGHT steps).
            assert SEARCH.match(line) or line in MERGE_STEPS, (kwargs, plan)
            assert "TEMP B-TREE" not in line, (kwargs, plan)
        if type_ == "warning,info":
            assert "MERGE (UNION ALL)" in plan
    if store.db.dialect == "postgresql":
        return
    assert any("events_resource_type" in line
               for line in store.explain(type="error", resource=RESOURCES[0]))
    assert any("events_service_type" in line
               for line in store.explain(type="error", service="web"))
    assert any("events_ts" in line for line in store.explain(since=at(3)))
    assert any("events_instance_type" in line
               for line in store.explain(type="error", instance="default"))
    assert any("events_instance " in line for line in store.explain(instance="default"))


# -- serialized once, at write --------------------------------------------------------------


def test_a_page_is_the_stored_json_joined(store: EventStore, filled: list[Event]) -> None:
    """`page` answers with the bytes the API would have made from `query` (json.dumps of
    the events' dicts, non-ASCII kept), without decoding a row."""
    store.add("warning", "café ☕ \u2028 \"quoted\"", service="web",
              details={"nested": {"ü": [1, 2.5, None, True]}}, instance="other")
    for query in ({}, {"service": "web", "limit": 50, "since": "3650d"},
                  {"type": "error,warning", "oldest_first": True, "limit": 7},
                  {"instance": "other"}, {"resource": "nowhere"}):
        events = store.query(**query)
        expected = json.dumps({"events": [e.to_dict() for e in events],
                               "count": len(events)}, ensure_ascii=False).encode()
        assert store.page(**query) == expected, query
    assert store.query(instance="other")[0].details == {"nested": {"ü": [1, 2.5, None, True]}}


def test_events_carry_their_instance(store: EventStore) -> None:
    store.add_many([{"type": "info", "message": "a", "instance": "default", "service": "web"},
                    {"type": "error", "message": "b", "instance": "other", "service": "web"},
                    {"type": "error", "message": "c", "service": "web"}])
    assert [e.message for e in store.query(instance="other")] == ["b"]
    assert [e.message for e in store.query(instance="default", service="web")] == ["a"]
    assert [e.message for e in store.query(instance="", type="error")] == ["c"]
    assert [e.instance for e in store.query()] == ["", "other", "default"]
    with pytest.raises(ValidationError) as info:
        store.query(instance=5)  # type: ignore[arg-type]
    assert info.value.details["field"] == "instance"


_V1_SCHEMA = """
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts_ms INTEGER NOT NULL,
    type TEXT NOT NULL CHECK (type IN ('error', 'warning', 'info', 'success')),
    resource TEXT NOT NULL DEFAULT '', service TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '', message TEXT NOT NULL DEFAULT '',
    details TEXT NOT NULL DEFAULT '{}', kube_uid TEXT);
CREATE INDEX events_type ON events (type, id);
CREATE INDEX events_service ON events (service, id);
CREATE INDEX events_ts ON events (ts_ms, id);
CREATE UNIQUE INDEX events_kube_uid ON events (kube_uid) WHERE kube_uid IS NOT NULL;
CREATE TABLE parameter_history (id INTEGER PRIMARY KEY, note TEXT);
INSERT INTO parameter_history VALUES (1, 'another store in the same file');
PRAGMA user_version=1;
"""


def test_a_schema_1_file_is_migrated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file written before events were serialized at write: every row is kept (ids,
    times, fields, the Kubernetes uid that de-duplicates), re-encoded in bounded chunks,
    the instance taken from a health event's details; ids are still never reused."""
    monkeypatch.setattr(events_module, "MIGRATE_CHUNK", 3)  # several chunks
    path = tmp_path / "events.db"
    db = sqlite3.connect(path)
    db.executescript(_V1_SCHEMA)
    base = int(BASE.timestamp() * 1000)
    rows = [(i, base + i * 1000, TYPES[i % 4], f"default/Deployment/w{i}", "web",
             f"Reason{i}", f"message {i} ☕",
             json.dumps({"n": i, **({"instance": "other"} if i == 4 else {})}),
             "uid-7" if i == 7 else None) for i in range(1, 11)]
    db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.execute("UPDATE sqlite_sequence SET seq = 15 WHERE name = 'events'")  # 11-15 pruned
    db.commit()
    db.close()
    with EventStore(path, max_count=1000) as s:
        got = list(reversed(s.query(limit=100)))
        assert [e.id for e in got] == list(range(1, 11))
        first = got[0]
        assert (first.timestamp, first.type, first.resource, first.service, first.reason,
                first.message, first.details, first.instance) == (
            format_ms(base + 1000), "success", "default/Deployment/w1", "web", "Reason1",
            "message 1 ☕", {"n": 1}, "")
        assert [e.id for e in s.query(instance="other")] == [4]
        assert s.explain(type="error", service="web")  # the new indexes exist
        # The Kubernetes Event still de-duplicates by its uid.
        assert s.add("info", "next").id == 16
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT note FROM parameter_history").fetchone() == (
        "another store in the same file",)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == events_module.SCHEMA_VERSION
    assert raw.execute("SELECT count(*) FROM events WHERE kube_uid = 'uid-7'").fetchone() == (1,)
    raw.close()
    with EventStore(path) as s:  # opened again: nothing left to migrate
        assert s.count() == 11


# -- retention and restarts ----------------------------------------------------------------


def test_retention_by_age(opener: Opener) -> None:
    now = datetime.now(UTC)
    with opener(max_age_days=14) as s:
        s.add_many([{"type": "info", "message": f"old {i}",
                     "timestamp": now - timedelta(days=20, minutes=-i)} for i in range(30)])
        s.add_many([{"type": "info", "message": f"new {i}",
                     "timestamp": now - timedelta(days=1, minutes=-i)} for i in range(5)])
        assert s.prune() == 30
        assert s.count() == 5
        assert all(e.message.startswith("new") for e in s.query())
        assert s.prune() == 0


def test_retention_by_count_keeps_the_newest(opener: Opener,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_module, "PRUNE_CHUNK", 7)  # several delete transactions
    with opener(max_count=50) as s:
        s.add_many([{"type": "info", "message": str(i)} for i in range(120)])
        assert s.prune() == 70
        assert s.count() == 50
        assert [e.message for e in s.query(limit=1)] == ["119"]
        assert [e.message for e in s.query(oldest_first=True, limit=1)] == ["70"]


def test_retention_runs_after_enough_inserts(opener: Opener,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_module, "PRUNE_EVERY", 10)
    with opener(max_count=5) as s:
        for i in range(9):
            s.add("info", str(i))
        assert s.count() == 9  # not due yet
        s.add("info", "9")
        assert s.count() == 5


def test_events_survive_a_restart(opener: Opener) -> None:
    with opener() as s:
        first = s.add("error", "boom", resource="default/Deployment/web", service="web",
                      details={"nested": {"a": [1, 2]}})
        s.add("info", "later")
    with opener() as s:
        assert s.get(first.id) == first
        assert s.count() == 2 and s.last_id == 2
        assert s.add("info", "after restart").id == 3
        if s.path is not None:  # SQLite: a WAL file, and the version older controllers read
            journal = sqlite3.connect(s.path).execute("PRAGMA journal_mode").fetchone()[0]
            assert journal == "wal"
            assert sqlite3.connect(s.path).execute("PRAGMA user_version").fetchone()[0] == \
                events_module.SCHEMA_VERSION


def test_ids_are_never_reused(opener: Opener) -> None:
    """A stream resuming from Last-Event-ID must not take a new event for an old one."""
    with opener(max_count=1) as s:
        s.add("info", "a")
        s.add("info", "b")
        s.prune()
        assert [e.id for e in s.query()] == [2]
        with s.db.write() as tx:
            tx.execute("DELETE FROM events")
    with opener() as s:
        assert s.add("info", "c").id == 3


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    con = sqlite3.connect(path)
    con.execute("PRAGMA user_version=99")
    con.close()
    with pytest.raises(EventStoreError) as info:
        EventStore(path)
    assert info.value.details["version"] == 99


def test_the_file_can_hold_other_tables(tmp_path: Path) -> None:
    """Parameter history shares the file: its table must not confuse the schema check."""
    path = tmp_path / "e.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE parameter_history (id INTEGER PRIMARY KEY)")
    con.close()
    with EventStore(path) as s:
        assert s.add("info", "x").id == 1


def test_closed_store_refuses_and_followers_end(opener: Opener) -> None:
    s = opener()
    s.add("info", "x")
    s.close()
    assert s.closed
    with pytest.raises(EventStoreError):
        s.query()
    with pytest.raises(EventStoreError):
        s.add("info", "y")
    assert s.wait_for_new(0, 0.01) is False
    s.close()  # twice is fine


# -- secrets ------------------------------------------------------------------------------


def test_redaction_of_secret_keys_at_any_depth() -> None:
    details = {
        "password": "hunter2", "db": {"PASSWORD": "x", "user": "app",
                                      "auth": {"api_key": "k1", "apiKey": "k2"}},
        "list": [{"token": "t"}, {"clientKey": "ck", "privateKey": "pk"}, "plain"],
        "headers": {"Authorization": "Bearer abcdefghijk", "Accept": "json"},
        "tls.key": "----", "secretName": "db-creds", "tokenFile": "/var/run/token",
        "passwordRef": {"name": "db"}, "count": 3, "empty_token": "",
        "kubeconfig": "apiVersion: v1...",
    }
    out = redact(details)
    assert out["password"] == REDACTED
    assert out["db"]["PASSWORD"] == REDACTED and out["db"]["user"] == "app"
    assert out["db"]["auth"] == REDACTED  # "auth" itself is secret-looking
    assert out["list"][0]["token"] == REDACTED
    assert out["list"][1] == {"clientKey": REDACTED, "privateKey": REDACTED}
    assert out["list"][2] == "plain"
    assert out["headers"] == {"Authorization": REDACTED, "Accept": "json"}
    assert out["tls.key"] == REDACTED and out["kubeconfig"] == REDACTED
    # Names of secrets are not secret: they are what an agent needs to fix a reference.
    assert out["secretName"] == "db-creds" and out["tokenFile"] == "/var/run/token"
    assert out["passwordRef"] == {"name": "db"} and out["count"] == 3
    assert details["password"] == "hunter2"  # the input is not modified


def test_redaction_of_secret_objects_and_text() -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {
        "name": "db", "annotations": {
            "kubectl.kubernetes.io/last-applied-configuration": '{"data":{"pw":"c2VjcmV0"}}'}},
        "data": {"pw": "c2VjcmV0"}, "stringData": {"url": "postgres://u:p@db/x"},
        "type": "Opaque"}
    out = redact({"object": secret, "objects": [secret]})
    for obj in (out["object"], out["objects"][0]):
        assert obj["data"] == {"pw": REDACTED}
        assert obj["stringData"] == {"url": REDACTED}
        assert obj["metadata"]["annotations"][
            "kubectl.kubernetes.io/last-applied-configuration"] == REDACTED
        assert obj["type"] == "Opaque" and obj["metadata"]["name"] == "db"
    text = redact({"m": "clone https://x-access-token:ghp_abcdefghijklmnopqrstuvwxyz12@github"
                        ".com/o/r failed; password=hunter2 and Authorization: Basic dXNlcjpw "
                        "token: abc.def"})["m"]
    assert "ghp_" not in text and "x-access-token" not in text and "hunter2" not in text
    assert "dXNlcjpw" not in text and "abc.def" not in text
    assert "https://***REDACTED***@github.com/o/r failed" in text
    assert redact({"m": 'secret "db-creds" not found'})["m"] == 'secret "db-creds" not found'


def test_redaction_is_json_safe_and_bounded() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(40):
        node["n"] = {}
        node = node["n"]
    odd: dict[Any, Any] = {"deep": deep, "set": {3}, "tuple": (1, "a"),
                           "nan": float("nan"), "obj": object(), 5: "int key"}
    out = redact(odd)
    assert out["set"] == [3] and out["tuple"] == [1, "a"] and out["nan"] == "nan"
    assert out["5"] == "int key" and isinstance(out["obj"], str)
    assert "...(truncated)" in repr(out["deep"])
    assert redact(None) == {} and redact({}) == {}


def test_secrets_never_reach_the_file(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    with EventStore(path) as s:
        s.add("error", "git fetch https://bob:s3cr3t-T0KEN@git.local/x failed",
              reason="SourceFailed",
              details={"password": "s3cr3t-T0KEN", "env": [{"name": "X", "value": "ok"}],
                       "secret": {"kind": "Secret", "data": {"k": "s3cr3t-T0KEN"}}})
        assert "s3cr3t" not in repr(s.query())
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert b"s3cr3t-T0KEN" not in raw


def test_huge_details_are_cut(store: EventStore) -> None:
    e = store.add("info", "x" * 10_000, details={"blob": "y" * 100_000, "a": 1})
    assert len(e.message) == events_module.MAX_MESSAGE
    assert e.details == {"truncated": True, "size": e.details["size"], "keys": ["a", "blob"]}


# -- Kubernetes Events --------------------------------------------------------------------


def kube_event(count: int = 1, last: str = "2030-01-01T00:00:10Z", uid: str = "u-1",
               type: str = "Warning", reason: str = "Failed") -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "web-7d9f.17a", "namespace": "default", "uid": uid},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": "default",
                           "name": "web-7d9f", "uid": "pod-1",
                           "fieldPath": "spec.containers{main}"},
        "type": type, "reason": reason,
        "message": 'Failed to pull image "registry.local/web:1.2": not found',
        "count": count, "firstTimestamp": "2030-01-01T00:00:00Z", "lastTimestamp": last,
        "source": {"component": "kubelet", "host": "node-1"},
    }


def test_kube_event_is_mapped(store: EventStore) -> None:
    e = store.record_kube_event(kube_event(), service="web")
    assert e is not None
    assert (e.type, e.reason, e.resource, e.service) == \
        ("warning", "Failed", "default/Pod/web-7d9f", "web")
    # Last seen in 2030 by a skewed clock: held at now, or later events would be held back.
    assert e.timestamp <= format_ms(time.time_ns() // 1_000_000)
    assert e.details["count"] == 1 and e.details["component"] == "kubelet"
    assert e.details["involvedObject"]["fieldPath"] == "spec.containers{main}"
    normal = store.record_kube_event(kube_event(uid="u-2", type="Normal", reason="Pulled"))
    assert normal is not None and normal.type == "info"
    node = kube_event(uid="u-3")
    node["involvedObject"] = {"kind": "Node", "name": "node-1"}
    recorded = store.record_kube_event(node)
    assert recorded is not None and recorded.resource == "-/Node/node-1"


def test_kube_event_dedup_by_uid(store: EventStore) -> None:
    first = store.record_kube_event(kube_event(count=1, last="2020-01-01T00:00:10Z"))
    assert first is not None
    store.add("info", "something else")
    assert store.record_kube_event(kube_event(count=1, last="2020-01-01T00:00:10Z")) is None
    again = store.record_kube_event(kube_event(count=5, last="2020-01-01T00:05:00Z"))
    assert again is not None and again.id > first.id
    assert again.details["count"] == 5
    assert again.details["lastTimestamp"] == "2020-01-01T00:05:00Z"
    rows = store.query(resource="default/Pod/web-7d9f")
    assert [e.id for e in rows] == [again.id]  # one row per Kubernetes Event
    assert store.get(first.id) is None and store.count() == 2
    assert store.record_kube_event(  # an older update, delivered late
        kube_event(count=3, last="2020-01-01T00:01:00Z")) is None


def test_kube_event_of_events_k8s_io(store: EventStore) -> None:
    body = {"apiVersion": "events.k8s.io/v1", "kind": "Event",
            "metadata": {"name": "x.1", "namespace": "prod", "uid": "u-9"},
            "regarding": {"kind": "Deployment", "namespace": "prod", "name": "api"},
            "type": "Warning", "reason": "FailedCreate", "note": "quota exceeded",
            "eventTime": "2020-01-01T00:00:00.000000Z", "reportingController": "rs-ctrl",
            "series": {"count": 4, "lastObservedTime": "2020-01-01T00:03:00.000000Z"}}
    e = store.record_kube_event(body)
    assert e is not None and e.resource == "prod/Deployment/api"
    assert e.message == "quota exceeded" and e.details["count"] == 4
    assert e.details["component"] == "rs-ctrl"
    with pytest.raises(ValidationError):
        store.record_kube_event({"involvedObject": {}})


# -- concurrency and following ------------------------------------------------------------


def test_concurrent_writers_and_readers(store: EventStore) -> None:
    errors: list[BaseException] = []
    done = threading.Event()

    def write(n: int) -> None:
        try:
            for i in range(150):
                if i % 10 == 0:
                    store.add_many([{"type": "info", "message": f"w{n} batch {i}",
                                     "service": f"s{n}"}] * 5)
                else:
                    store.add("error" if i % 3 else "info", f"w{n} {i}", service=f"s{n}",
                              resource=f"ns/Pod/p{i % 7}")
        except BaseException as e:
            errors.append(e)

    def read() -> None:
        try:
            while not done.is_set():
                for page in (store.query(type="error", limit=50), store.query(service="s1"),
                             store.query(resource="ns/Pod/p3", type="error,info")):
                    ids = [e.id for e in page]
                    assert ids == sorted(ids, reverse=True)
                store.count()
        except BaseException as e:
            errors.append(e)

    writers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    readers = [threading.Thread(target=read) for _ in range(4)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    for t in readers:
        t.join()
    assert errors == []
    expected = 4 * (135 + 15 * 5)
    assert store.count() == expected
    ids = [e.id for e in store.query(limit=1000)]
    assert ids == list(range(expected, 0, -1))


def test_wait_for_new_wakes_on_add(store: EventStore) -> None:
    store.add("info", "before")
    assert store.wait_for_new(0, 0) is True  # already there
    assert store.wait_for_new(1, 0.05) is False  # nothing new: times out
    woke: list[tuple[bool, float]] = []

    def wait() -> None:
        started = time.monotonic()
        woke.append((store.wait_for_new(1, 10), time.monotonic() - started))

    t = threading.Thread(target=wait)
    t.start()
    wait_for(lambda: _waiting(store), message="the waiter to wait")
    store.add("info", "after")
    t.join(5)
    assert woke and woke[0][0] is True and woke[0][1] < 2


def _waiting(store: EventStore) -> bool:
    """A thread is blocked in wait_for_new (the condition's waiter list is not empty)."""
    return bool(store._changed._waiters)  # type: ignore[attr-defined]


def test_close_wakes_waiters(opener: Opener) -> None:
    s = opener()
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(s.wait_for_new(0, 10)))
    t.start()
    wait_for(lambda: _waiting(s), message="the waiter to wait")
    s.close()
    t.join(5)
    assert result == [False]


def test_follow_streams_matching_events_and_resumes(store: EventStore) -> None:
    store.add("info", "old")
    store.add("error", "old error")
    stop = threading.Event()
    got: list[list[Event]] = []

    def consume() -> None:
        for batch in store.follow(after_id=1, type="error", heartbeat=0.05, stop=stop):
            got.append(batch)
            if sum(len(b) for b in got) >= 3:
                return

    t = threading.Thread(target=consume)
    t.start()
    wait_for(lambda: [] in got, message="a heartbeat while nothing matched")
    store.add("info", "skipped")
    store.add("error", "e1")
    store.add_many([{"type": "warning", "message": "w"}, {"type": "error", "message": "e2"}])
    t.join(5)
    stop.set()
    messages = [e.message for batch in got for e in batch]
    assert messages == ["old error", "e1", "e2"]
    assert [] in got  # heartbeats while nothing matched


# -- the engine's hooks -------------------------------------------------------------------


KEY = ObjectKey("apps", "Deployment", "default", "web")


def _pass(operation: Operation = "reconcile", trigger: str = "interval",
          services: tuple[str, ...] = (), instance: str = "default", number: int = 1) -> Pass:
    return Pass(instance, "default", operation, trigger, services, number)


def test_engine_recorder_records_passes_and_changes(store: EventStore) -> None:
    sink = PassRecorder(EngineRecorder(store))
    p = _pass()
    sink(PassStarted(p, "abc"))
    sink(ObjectDone(p, ObjectResult(KEY, "web", "unchanged", "unchanged")))
    sink(ObjectDone(p, ObjectResult(KEY, "web", "kept", "keep", "prune disabled")))
    sink(ObjectDone(p, ObjectResult(KEY, "web", "applied", "update", "spec changed")))
    sink(ObjectDone(p, ObjectResult(ObjectKey("", "ConfigMap", "default", "old"), "web",
                                    "deleted", "prune", "no longer rendered")))
    error = {"resource": str(KEY), "error": "Invalid", "status": 422,
             "message": 'Deployment.apps "web" is invalid: spec.replicas: Invalid value',
             "causes": [{"reason": "FieldValueInvalid", "field": "spec.replicas"}]}
    sink(ObjectDone(p, ObjectResult(KEY, "web", "failed", "update", "spec changed", error)))
    sink(PassFinished(p, "abc", 0.5, {"applied": 1, "unchanged": 1, "deleted": 1, "kept": 1,
                                      "failed": 1}))
    got = list(reversed(store.query()))
    assert [(e.type, e.reason) for e in got] == [
        ("info", "PassStarted"), ("success", "Updated"), ("success", "Pruned"),
        ("error", "ApplyFailed"), ("error", "ReconcileFailed")]
    assert got[0].message == "reconcile started (interval)"
    assert got[0].details["revision"] == "abc"
    failed = got[3]
    assert failed.resource == "default/Deployment/web" and failed.service == "web"
    assert failed.details["error"] == error and failed.details["action"] == "update"
    assert "spec.replicas: Invalid value" in failed.message
    assert got[4].details["counts"]["failed"] == 1
    assert got[4].message == "reconcile: 1 object(s) failed"
    assert {e.instance for e in got} == {"default"}
    assert store.query(type="error", resource="default/Deployment/web") == [failed]


def test_engine_recorder_skips_dry_runs_and_names_the_service(store: EventStore) -> None:
    sink = PassRecorder(EngineRecorder(store))
    plan = _pass("plan", "api", ("web",))
    sink(PassStarted(plan, "r1"))
    sink(ObjectDone(plan, ObjectResult(KEY, "web", "applied", "update",
                                       body={"kind": "Deployment"})))
    sink(ObjectDone(plan, ObjectResult(KEY, "web", "deleted", "prune")))
    sink(PassFinished(plan, "r1", 0.1, {}))
    assert [(e.reason, e.service) for e in store.query()] == \
        [("PlanSucceeded", "web"), ("PassStarted", "web")]
    up = _pass("up", "api", ("api", "web"), number=2)
    sink(PassStarted(up, "r1"))
    sink(ObjectDone(up, ObjectResult(KEY, "web", "applied", "create")))
    assert [(e.reason, e.service) for e in store.query(limit=2)] == \
        [("Created", "web"), ("PassStarted", "")]
    sink(PassFinished(up, "r1", 1.0, {}))
    down = _pass("down", "api", ("web",), number=3)
    sink(PassStarted(down, "r1"))
    sink(ObjectDone(down, ObjectResult(KEY, "web", "deleted", "prune")))
    assert [(e.reason, e.message) for e in store.query(limit=1)] == \
        [("Deleted", "Deployment web deleted")]


def test_interleaved_passes_are_recorded_by_their_own_operation(store: EventStore) -> None:
    """An operation runs beside the loop, and another instance's beside ours: their events
    interleave on the sinks. Each is recorded as its own pass says, never by whatever
    pass started last (the recorder keeps no 'current pass')."""
    sink = PassRecorder(EngineRecorder(store))
    loop = _pass("reconcile", "interval", number=7)
    plan = _pass("plan", "api", ("web",), number=8)
    down = _pass("down", "api", ("web",), instance="other", number=1)
    sink(PassStarted(loop, "r1"))
    sink(PassStarted(plan, "r1"))  # a dry run starts in the middle of the loop's pass
    sink(PassStarted(down, "g/3"))
    # The loop's prune, after the plan started: still a prune of a reconcile.
    sink(ObjectDone(loop, ObjectResult(KEY, "web", "deleted", "prune", "removed")))
    # The plan's dry-run answer, after the loop's result: never recorded as applied.
    sink(ObjectDone(plan, ObjectResult(KEY, "web", "applied", "update")))
    sink(ObjectDone(down, ObjectResult(KEY, "web", "deleted", "prune", "down")))
    sink(PassFinished(loop, "r1", 0.2, {"deleted": 1}))
    sink(ObjectDone(plan, ObjectResult(ObjectKey("", "ConfigMap", "default", "c"), "web",
                                       "applied", "create")))
    sink(PassFinished(plan, "r1", 0.3, {"applied": 2}))
    sink(PassFinished(down, "g/3", 0.4, {"deleted": 1}))
    got = [(e.instance, e.reason, e.service) for e in reversed(store.query())]
    assert got == [("default", "PassStarted", ""), ("default", "PassStarted", "web"),
                   ("other", "PassStarted", "web"), ("default", "Pruned", "web"),
                   ("other", "Deleted", "web"), ("default", "ReconcileSucceeded", ""),
                   ("default", "PlanSucceeded", "web"), ("other", "DownSucceeded", "web")]
    assert [e.reason for e in store.query(instance="other")] == \
        ["DownSucceeded", "Deleted", "PassStarted"]
    assert store.query(instance="other", service="web", type="success")[0].reason == \
        "DownSucceeded"


def test_pass_recorder_posts_on_the_passes_own_instance(store: EventStore) -> None:
    """Only the end of a pass that changed or failed something, and notices, are posted;
    each on the DeploymentParameters object of the pass's instance, on the leader only."""
    posted: list[tuple[str, str, str | None]] = []
    leader = [True]

    class Poster:
        def post(self, type_: str, reason: str, message: str, details: Any, *,
                 instance: str | None = None, namespace: str | None = None) -> None:
            posted.append((reason, f"{namespace}/{instance}", type_))

    sink = PassRecorder(EngineRecorder(store), Poster(), lambda: leader[0])  # type: ignore[arg-type]
    other = _pass("up", "api", ("web",), instance="other")
    sink(PassStarted(other, "g/1"))
    sink(ObjectDone(other, ObjectResult(KEY, "web", "applied", "create")))
    sink(PassFinished(other, "g/1", 0.1, {"applied": 1}))
    sink(PassFinished(_pass(), "g/1", 0.1, {"unchanged": 3}))  # nothing changed: quiet
    sink(PassFinished(_pass("plan"), "g/1", 0.1, {"applied": 3}))  # a dry run: quiet
    sink(Notice(_pass(), "warning", "ParametersDeleted", "gone", {}))
    leader[0] = False
    sink(PassFinished(other, "g/1", 0.1, {"failed": 1}))  # a follower posts nothing
    assert posted == [("UpSucceeded", "default/other", "success"),
                      ("ParametersDeleted", "default/default", "warning")]
    assert len(store.query()) == 7  # stored on every replica, posted or not


def test_engine_recorder_kube_events_and_failures(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "e.db")
    rec = EngineRecorder(store, service_of=lambda key: "web" if "web" in key else "")
    sink = PassRecorder(rec)
    e = rec.on_kube_event(kube_event(), instance="default")
    assert e is not None and e.service == "web" and e.instance == "default"
    assert rec.on_kube_event({"bad": True}) is None  # logged, not raised
    sink(Notice(_pass(), "info", "X", "y", None))  # type: ignore[arg-type]
    store.close()
    sink(PassStarted(_pass(), "r"))  # logged, not raised
    sink(ObjectDone(_pass(), ObjectResult(KEY, "web", "applied", "update")))
    assert rec.on_kube_event(kube_event(uid="u-5")) is None


# -- an unusable file at start (issue 9 #11) -----------------------------------------------


@contextmanager
def immutable(path: Path) -> Iterator[None]:
    """`chattr +i`: read-only even for root (tests run as root, where chmod does nothing)."""
    if shutil.which("chattr") is None or subprocess.run(
            ["chattr", "+i", str(path)], capture_output=True, check=False).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def _filled_file(path: Path, n: int = 3000) -> None:
    with EventStore(path) as s:
        s.add_many([{"type": "info", "message": f"event {i} " + "x" * 200}
                    for i in range(n)])
        s.add("info", "last")
    # Fold the write-ahead log into the file, so the file alone holds every page.
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()


def _opens_with_fallback(settings: EventSettings, hint: str) -> StoreProblem:
    """open_store gives a working store elsewhere, the problem naming the file and a fix,
    and one ERROR log line naming the file; the parameter history works there too."""
    store, problem = open_store(settings)
    try:
        assert problem is not None
        assert problem.path == str(settings.path)
        assert hint in problem.hint, problem
        assert store.path == Path(problem.fallback) != settings.path
        store.add("info", "still recording")
        assert [e.message for e in store.query()] == ["still recording"]
        history = History(store.path)
        history.record("default", "generation/1", "resource", {"global": {}})
        history.mark_applied("default", "generation/1")
        assert history.list("default")[0]["applied"] is True
        history.close()
    finally:
        store.close()
    return problem


def test_a_file_that_is_not_a_database_falls_back_loudly(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "events.db"
    path.write_bytes(b"this is not SQLite, just text that happens to be here\n" * 100)
    with caplog.at_level("ERROR", logger="controller.adapters.store.events"):
        problem = _opens_with_fallback(EventSettings(path=path), "move")
    assert "not a database" in problem.error
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and str(path) in errors[0] and problem.hint in errors[0]
    assert path.read_bytes().startswith(b"this is not SQLite")  # left for inspection


def test_a_file_damaged_past_its_schema_is_caught_at_start(tmp_path: Path) -> None:
    """The case that booted and then answered 500 from /api/parameters/history: the
    events open and query fine, the damage is in the history's pages, which only a check
    of every page finds at start."""
    path = tmp_path / "events.db"
    _filled_file(path, 50)
    history = History(path)
    for i in range(400):
        history.record("default", f"generation/{i}", "resource", {"v": "y" * 500})
    history.close()
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = sorted(r[0] for r in con.execute(
        "SELECT pageno FROM dbstat WHERE name = 'parameter_history'"))
    size = int(con.execute("PRAGMA page_size").fetchone()[0])
    con.close()
    data = bytearray(path.read_bytes())
    for page in pages[len(pages) // 2:len(pages) // 2 + 3]:  # three leaves in the middle
        start = (page - 1) * size
        data[start + 8:start + size] = bytes(size - 8)
    path.write_bytes(bytes(data))
    with EventStore(path) as opened:  # the events alone never notice
        assert opened.query(limit=1)[0].message == "last"
    problem = _opens_with_fallback(EventSettings(path=path), "move")
    assert "DatabaseError" in problem.error


def test_a_healthy_file_is_used_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    _filled_file(path, 10)
    store, problem = open_store(EventSettings(path=path))
    with store:
        assert problem is None and store.path == path
        assert store.query(limit=1)[0].message == "last"


def test_a_read_only_file_falls_back(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    _filled_file(path, 10)
    with immutable(path):
        problem = _opens_with_fallback(EventSettings(path=path), "writable")
    assert "readonly" in problem.error or "unable to open" in problem.error


def test_a_read_only_directory_falls_back(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    path = folder / "events.db"
    _filled_file(path, 10)
    with immutable(folder):
        _opens_with_fallback(EventSettings(path=path), "")
    with immutable(folder):  # and a file that is not there yet cannot be created
        problem = _opens_with_fallback(EventSettings(path=folder / "new.db"), "")
    assert "new.db" in problem.path


def test_a_path_that_is_a_directory_falls_back(tmp_path: Path) -> None:
    (tmp_path / "events.db").mkdir()
    problem = _opens_with_fallback(EventSettings(path=tmp_path / "events.db"),
                                   "is a directory")
    assert problem.error


def test_a_path_under_a_file_falls_back(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file where a directory should be")
    problem = _opens_with_fallback(EventSettings(path=tmp_path / "state" / "events.db"),
                                   "not a directory")
    assert "FileExistsError" in problem.error or "NotADirectoryError" in problem.error


def test_history_errors_name_the_file(tmp_path: Path) -> None:
    history = History(tmp_path / "h.db")
    history.record("default", "generation/1", "resource", {})
    with history.db.write() as tx:  # damage underneath it
        tx.execute("DROP TABLE parameter_history")
    with pytest.raises(EventStoreError) as caught:
        history.list("default")
    assert str(tmp_path / "h.db") in caught.value.message
    assert caught.value.details["path"] == str(tmp_path / "h.db")
    history.close()


def test_history_marks_what_applied(tmp_path: Path) -> None:
    history = History(tmp_path / "h.db")
    assert history.record("default", "sha-a", "git", {"global": {"v": 1}})
    history.mark_applied("default", "sha-a")
    assert history.record("default", "sha-b", "git", {"global": {"v": 2}})  # refused
    assert not history.record("default", "sha-b", "git", {"global": {"v": 2}})
    assert [(h["revision"], h["applied"]) for h in history.list("default")] == \
        [("sha-b", False), ("sha-a", True)]
    assert history.entry("default", "sha-b") == {"parameters": {"global": {"v": 2}},
                                                 "applied": False}
    assert history.get("default", "sha-a") == {"global": {"v": 1}}
    history.close()
    # A file from before the column: its rows say "unknown" (None), new ones are marked.
    old = tmp_path / "old.db"
    con = sqlite3.connect(old)
    con.executescript(  # the table as the first history had it
        "CREATE TABLE parameter_history (id INTEGER PRIMARY KEY AUTOINCREMENT, instance "
        "TEXT NOT NULL, revision TEXT NOT NULL, source TEXT NOT NULL, timestamp TEXT NOT "
        "NULL, spec TEXT NOT NULL, UNIQUE (instance, revision))")
    con.execute("INSERT INTO parameter_history (instance, revision, source, timestamp, "
                "spec) VALUES ('default', 'generation/1', 'resource', 'T', '{}')")
    con.commit()
    con.close()
    upgraded = History(old)
    assert upgraded.list("default")[0]["applied"] is None
    upgraded.close()


# -- Kubernetes Events out (KubeEvents.post) ---------------------------------------------


class _Posting:
    """The Kube calls KubeEvents makes: `create` fails while `failing`, else records
    the Event with the instance it was fenced for."""

    def __init__(self) -> None:
        self.failing = True
        self.created: list[tuple[object, dict[str, Any]]] = []
        self.on_written: Any = None

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        from controller.adapters.kube import KubeError, current_instance

        if self.failing:
            raise KubeError("refused", status=500)
        self.created.append((current_instance(), body))
        return body


def test_kube_events_are_posted_off_the_caller_fenced_and_a_failed_one_is_tried_again(
        tmp_path: Path) -> None:
    """A pass does not wait for its Event; the create runs as the instance's write (its
    owner's fence); one that failed is not taken for posted: the same Event next time is
    sent again (also past the message's 1,024 characters kept in the Event)."""
    from controller.runtime.recording import KubeEvents

    kube = _Posting()
    store = EventStore(tmp_path / "e.db")
    events = KubeEvents(kube, EngineRecorder(store), "ns", "own")  # type: ignore[arg-type]
    message = "m" * 2000
    try:
        events.post("error", "ReconcileFailed", message, {}, instance="i1", namespace="t1")
        wait_for(lambda: ("t1", "i1") not in events._last_posted,
                 message="the failed post tried and forgotten")
        kube.failing = False
        events.post("error", "ReconcileFailed", message, {}, instance="i1", namespace="t1")
        wait_for(lambda: kube.created, message="the Event posted")
        events.post("error", "ReconcileFailed", message, {}, instance="i1", namespace="t1")
    finally:
        events.stop()
        store.close()
    assert len(kube.created) == 1  # the repeat of a posted one is not sent
    fenced, body = kube.created[0]
    assert fenced == ("t1", "i1")
    assert body["involvedObject"]["name"] == "i1" and len(body["message"]) == 1024
