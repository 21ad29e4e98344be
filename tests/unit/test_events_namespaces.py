"""An instance is (namespace, name) in every store (issue 13): two DeploymentParameters
objects of one name in two namespaces keep their events, parameter history and operation
records apart, on SQLite and on PostgreSQL, and rows written before the stores knew the
namespace are given one where it can be told (else none, which no namespaced filter
matches: hidden, never shown to the wrong instance).
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.adapters.store.events import Event, EventStore, migrations
from controller.adapters.store.history import History
from controller.adapters.store.history import migrations as history_migrations
from controller.adapters.store.operations import MIGRATIONS as operation_migrations
from controller.adapters.store.operations import OperationStore
from controller.adapters.store.sql import Database, open_database
from controller.config import StoreSettings
from controller.errors import ValidationError
from controller.model.objects import ObjectKey
from controller.reconcile.applying import ObjectResult
from controller.reconcile.passes import ObjectDone, Pass, PassFinished, PassStarted
from controller.runtime.recording import EngineRecorder, PassRecorder
from tests.support.postgres import (  # noqa: F401 (fixtures)
    postgres_fixture,
    postgres_server_fixture,
    store_settings_fixture,
)
from tests.support.stores import Opener, event_stores

TYPES = ["info", "success", "warning", "error"]


@pytest.fixture
def opener(store_settings: StoreSettings, tmp_path: Path) -> Iterator[Opener]:
    yield from event_stores(store_settings, tmp_path)


@pytest.fixture
def store(opener: Opener) -> EventStore:
    return opener()


@pytest.fixture
def database(store_settings: StoreSettings, tmp_path: Path) -> Iterator[Database]:
    db = open_database(store_settings, tmp_path / "events.db")
    yield db
    db.close()


def _pair(store: EventStore) -> None:
    """Events of `web` in team-a and in team-b, and of an instance without one."""
    for i in range(6):
        ns = "team-a" if i % 2 == 0 else "team-b"
        store.add(TYPES[i % 4], f"{ns} {i}", instance="web", namespace=ns,
                  resource=f"{ns}/Deployment/web", service="web")
    store.add("error", "old, unknown namespace", instance="web", service="web")


def test_same_named_instances_in_two_namespaces_have_their_own_events(
        store: EventStore) -> None:
    _pair(store)
    a = store.query(instance="web", namespace="team-a")
    assert [e.message for e in a] == ["team-a 4", "team-a 2", "team-a 0"]
    assert {(e.instance, e.namespace) for e in a} == {("web", "team-a")}
    assert [e.message for e in store.query(instance="web", namespace="team-b",
                                           type="warning,success")] == ["team-b 5",
                                                                        "team-b 1"]
    # With a service or a resource, the namespace is checked on that range's rows.
    assert [e.message for e in store.query(instance="web", namespace="team-a",
                                           service="web", limit=1)] == ["team-a 4"]
    assert store.query(instance="web", namespace="team-a",
                       resource="team-b/Deployment/web") == []
    # By name alone (an unlimited caller): every instance of that name, as before.
    assert len(store.query(instance="web")) == 7
    # The stored JSON, as the API sends it, names the namespace.
    page = json.loads(store.page(instance="web", namespace="team-b"))
    assert {e["namespace"] for e in page["events"]} == {"team-b"} and page["count"] == 3
    with pytest.raises(ValidationError) as info:
        store.query(namespace="team-a")  # a namespace alone names no instance
    assert info.value.details["field"] == "namespace"


def test_a_follower_of_one_namespace_gets_only_its_events(store: EventStore) -> None:
    _pair(store)
    follower = store.follow(instance="web", namespace="team-b", heartbeat=0.05)
    assert [e.message for e in next(follower)] == ["team-b 1", "team-b 3", "team-b 5"]
    store.add("info", "a again", instance="web", namespace="team-a")
    store.add("info", "b again", instance="web", namespace="team-b")
    assert [e.message for e in next(follower)] == ["b again"]


def test_the_namespaced_filter_is_an_index_range(store: EventStore) -> None:
    """Every statement of a query by instance and namespace (with any other filter) is an
    index search, on both databases (the 1M-row bound: bench_events measures it)."""
    rng = random.Random(5)
    rows = 20 if store.db.dialect == "postgresql" else 1
    for _ in range(rows):  # PostgreSQL plans by statistics: give it some
        store.add_many([{"type": rng.choice(TYPES), "message": "noise",
                         "service": rng.choice(["web", "api"]),
                         "resource": rng.choice(["team-a/Deployment/web", "x/Service/y"]),
                         "instance": rng.choice(["web", "api"]),
                         "namespace": rng.choice(["team-a", "team-b"])}
                        for _ in range(1000)])
    if store.db.dialect == "postgresql":
        with store.db.write() as tx:
            tx.execute("ANALYZE events")
    for type_, service, resource, since, asc in itertools.product(
            [None, "error", "warning,info"], [None, "web"], [None, "team-a/Deployment/web"],
            [None, "3650d"], [False, True]):
        kwargs = dict(type=type_, service=service, resource=resource, since=since,
                      oldest_first=asc, instance="web", namespace="team-a")
        plan = store.explain(**kwargs)  # type: ignore[arg-type]
        if store.db.dialect == "postgresql":
            assert not [line for line in plan if "Seq Scan" in line or "Bitmap" in line
                        or line.endswith("Sort")], (kwargs, plan)
            continue
        assert all(line.startswith("SEARCH ") or line in ("MERGE (UNION ALL)", "LEFT",
                                                          "RIGHT") for line in plan), plan
        assert not [line for line in plan if "TEMP B-TREE" in line], (kwargs, plan)
        if resource is None:  # one instance's range, of its service when one is asked
            index = "events_instance_ns" + ("_service" if service else "") + \
                ("_type" if type_ else " ")
            assert any(index in line for line in plan), (kwargs, plan)


def test_the_recorder_stores_each_pass_under_its_namespace(store: EventStore) -> None:
    sink = PassRecorder(EngineRecorder(store))
    key = ObjectKey("apps", "Deployment", "team-a", "web")
    for ns in ("team-a", "team-b"):
        p = Pass("web", ns, "up", "api", ("web",), 1)
        sink(PassStarted(p, "g/1"))
        sink(ObjectDone(p, ObjectResult(key, "web", "applied", "create")))
        sink(PassFinished(p, "g/1", 0.1, {"applied": 1}))
    got = store.query(instance="web", namespace="team-b")
    assert [(e.reason, e.namespace) for e in got] == [
        ("UpSucceeded", "team-b"), ("Created", "team-b"), ("PassStarted", "team-b")]
    rec = EngineRecorder(store)
    rec.note("warning", "RefNotDescendant", "moved", {}, "web", "team-a")
    assert store.query(instance="web", namespace="team-a", limit=1)[0].reason == \
        "RefNotDescendant"


def test_events_from_before_the_namespace_are_given_one_where_it_can_be_told(
        database: Database) -> None:
    """Schema 1 rows: the own instance's get its namespace, another instance's the
    namespace of the object it is about, a pass event of another instance none."""
    database.migrate("events", migrations()[:1])
    rows = [(1, "default", "apps/Deployment/web", "PassStarted"),  # own: its namespace
            (2, "default", "", "PassStarted"),
            (3, "other", "team-b/Deployment/web", "Created"),  # the object's namespace
            (4, "other", "", "PassStarted"),  # cannot be told: none
            (5, "", "apps/Pod/x", "Pulled")]  # no instance: none
    with database.write() as tx:
        for id_, instance, resource, reason in rows:
            event = Event(id_, "2030-01-01T00:00:00.000Z", "info", resource, "", "m",
                          reason, {}, instance)
            tx.execute("INSERT INTO events (id, ts_ms, type, resource, service, instance, "
                       "json) VALUES (?, ?, 'info', ?, '', ?, ?)",
                       (id_, 1_900_000_000_000 + id_, resource, instance,
                        json.dumps({k: v for k, v in event.to_dict().items()
                                    if k != "namespace"})))
        if database.dialect == "postgresql":
            tx.execute("SELECT setval('events_ids', 5)")
    with EventStore(database, home=("conductor", "default"), own_db=False) as s:
        got = {e.id: (e.instance, e.namespace) for e in s.query(limit=10)}
        assert got == {1: ("default", "conductor"), 2: ("default", "conductor"),
                       3: ("other", "team-b"), 4: ("other", ""), 5: ("", "")}
        assert [e.id for e in s.query(instance="default", namespace="conductor")] == [2, 1]
        assert json.loads(s.page(instance="other", namespace="team-b"))["events"][0][
            "namespace"] == "team-b"
        assert s.add("info", "new", instance="x", namespace="y").id == 6
    assert database.version("events") == 3


def test_history_of_same_named_instances_is_kept_apart(database: Database) -> None:
    history = History(database, keep=2)
    history.record("web", "generation/1", "resource", {"v": "a1"}, "uid-a", namespace="a")
    history.record("web", "generation/1", "resource", {"v": "b1"}, "uid-b", namespace="b")
    history.mark_applied("web", "generation/1", namespace="b")
    assert history.entry("web", "generation/1", namespace="a") == {
        "parameters": {"v": "a1"}, "applied": False}
    assert history.entry("web", "generation/1", namespace="b") == {
        "parameters": {"v": "b1"}, "applied": True}
    for g in (2, 3):  # retention counts per instance: b keeps its revision
        history.record("web", f"generation/{g}", "resource", {"v": g}, "uid-a",
                       namespace="a")
    assert [r["revision"] for r in history.list("web", namespace="a")] == [
        "generation/3", "generation/2"]
    assert [r["revision"] for r in history.list("web", namespace="b")] == ["generation/1"]
    assert history.list("web", namespace="c") == []
    assert history.list("web") == []  # "" is no instance of today's


def test_history_from_before_the_namespace_goes_to_the_own_instance(
        database: Database) -> None:
    database.migrate("history", history_migrations()[:1])
    with database.write() as tx:
        for instance in ("default", "other"):
            tx.execute("INSERT INTO parameter_history (instance, revision, source, "
                       "timestamp, spec, applied) VALUES (?, 'generation/1', 'resource', "
                       "'2030-01-01T00:00:00Z', '{}', 1)", (instance,))
    history = History(database, home=("conductor", "default"))
    assert history.entry("default", "generation/1", namespace="conductor") is not None
    assert history.entry("other", "generation/1", namespace="") is not None  # hidden
    # The unique key is per namespace now: the same revision of another namespace's web.
    assert history.record("default", "generation/1", "resource", {}, namespace="team-b")
    assert database.version("history") == 2


def test_operation_records_name_their_namespace(database: Database) -> None:
    database.migrate("operations", operation_migrations[:1])
    with database.write() as tx:  # a record from before: no namespace, none is told
        tx.execute("INSERT INTO operations (id, instance, op, services, state, owner, "
                   "created_ms) VALUES ('op-old', 'web', 'up', '[]', 'succeeded', 'x', 1)")
    store = OperationStore(database)
    old = store.get("op-old")
    assert old is not None and old.namespace == ""
    store.create("op-a", "web", "up", ["web"], "me", namespace="team-a")
    store.create("op-b", "web", "up", ["web"], "me", namespace="team-b")
    record = store.get("op-b")
    assert record is not None and (record.instance, record.namespace) == ("web", "team-b")
    assert [r.id for r in store.recent("web", namespace="team-a")] == ["op-a"]
    assert [r.id for r in store.recent("web")] == ["op-b", "op-a", "op-old"]


def test_health_events_name_their_instances_namespace(store: EventStore) -> None:
    """The health reporter's events (unhealthy, recovered) are stored under the instance's
    namespace and name, and posted on that namespace's object."""
    from types import SimpleNamespace
    from typing import Any

    from controller.model.health import ObjectHealth, ServiceHealth
    from controller.runtime.reporting import HealthReporter

    posted: list[tuple[str | None, str | None]] = []

    def post(type_: str, reason: str, message: str, details: Any, *,
             instance: str | None = None, namespace: str | None = None) -> None:
        posted.append((namespace, instance))

    engine = SimpleNamespace(cfg=SimpleNamespace(instance="web", namespace="team-b"))
    reporter = HealthReporter(SimpleNamespace(), engine, store,  # type: ignore[arg-type]
                              is_leader=lambda: True, post=post)
    pod = ObjectHealth("unhealthy", "ImagePullBackOff", "no such tag")
    reporter._record([ServiceHealth("redis", "team-b", "unhealthy", "2030-01-01T00:00:00Z",
                                    failing=(("team-b/Pod/redis-0", pod),))])
    reporter._record([ServiceHealth("redis", "team-b", "healthy", "2030-01-01T00:00:00Z")])
    got = store.query(instance="web", namespace="team-b")
    assert [e.reason for e in got] == ["Recovered", "ImagePullBackOff"]
    assert store.query(instance="web", namespace="team-a") == []
    assert posted == [("team-b", "web")]
