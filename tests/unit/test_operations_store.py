"""Operation records on both databases: a round trip, retention, two processes writing at
once, a restart that finds them, and an owner that dies mid-operation (interrupted, never
dropped); then runtime/operations.py through the store, as the API uses it.

Every test that takes `store_settings` runs on a SQLite file and on a fresh database of a real
PostgreSQL server on loopback (tests/support/postgres.py).
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.adapters.store.operations import OperationStore
from controller.adapters.store.sql import Database, open_database
from controller.config import StoreSettings
from controller.errors import NotFoundError
from controller.model.redaction import REDACTED
from controller.reconcile.engine import Report
from controller.runtime.operations import Operations
from tests.support.postgres import (  # noqa: F401 (fixtures)
    postgres_fixture,
    postgres_server_fixture,
    store_settings_fixture,
)
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def opener(store_settings: StoreSettings, tmp_path: Path) -> Iterator[Callable[[], Database]]:
    """Opens the test's database (as a new process would); all closed after the test."""
    opened: list[Database] = []

    def open_one() -> Database:
        opened.append(open_database(store_settings, tmp_path / "unused.db"))
        return opened[-1]
    yield open_one
    for db in opened:
        db.close()


def child(code: str, settings: StoreSettings, *args: str) -> subprocess.Popen[str]:
    """Another process on the same store: argv[1], argv[2] are the settings."""
    prelude = """
        import sys, json
        from pathlib import Path
        from controller.adapters.store.operations import OperationStore
        from controller.adapters.store.sql import open_database
        from controller.config import StoreSettings
        db = open_database(StoreSettings(url=sys.argv[1], password_file=sys.argv[2]),
                           Path("unused.db"))
    """
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(prelude) + textwrap.dedent(code),
         settings.url, settings.password_file, *args],
        cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finished(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"child failed:\n{out}\n{err}"
    return out


# -- the store -------------------------------------------------------------------------------


def test_a_record_round_trip_with_the_report_redacted(opener: Callable[[], Database]) -> None:
    store = OperationStore(opener())
    store.join("boot1")
    made = store.create("boot1-aa", "default", "up", ["redis", "web"], "boot1")
    assert (made.state, made.services, made.result, made.finished_ms) == \
        ("running", ["redis", "web"], None, None)
    store.finish("boot1-aa", "succeeded",
                 {"result": "success", "objects": [{"password": "hunter2", "n": 1}]})
    got = store.get("boot1-aa")
    assert got is not None
    assert got.state == "succeeded" and got.finished_ms is not None
    assert got.finished_ms >= got.created_ms
    assert got.result == {"result": "success", "objects": [{"password": REDACTED, "n": 1}]}
    assert store.get("nope") is None
    with pytest.raises(ValueError):
        store.finish("boot1-aa", "running")


def test_retention_keeps_the_newest_and_every_running_one(
        opener: Callable[[], Database]) -> None:
    store = OperationStore(opener(), keep=5)
    store.join("b")
    for i in range(3):
        store.create(f"b-run{i}", "default", "up", [], "b")
    for i in range(12):
        store.create(f"b-{i:02}", "default", "update", [], "b")
        store.finish(f"b-{i:02}", "succeeded" if i % 2 else "failed")
    ids = [r.id for r in store.recent(limit=100)]
    assert ids == ["b-11", "b-10", "b-09", "b-08", "b-07", "b-run2", "b-run1", "b-run0"]
    assert store.count() == 8
    assert [r.id for r in store.recent("default", limit=2)] == ["b-11", "b-10"]
    assert store.recent("other") == []


def test_two_processes_writing_at_once_see_each_others_records(
        store_settings: StoreSettings, opener: Callable[[], Database]) -> None:
    store = OperationStore(opener())
    writer = child("""
        store = OperationStore(db)
        store.join("child")
        for i in range(40):
            store.create(f"child-{i}", "default", "up", ["a"], "child")
            store.finish(f"child-{i}", "succeeded", {"i": i})
        import time
        deadline = time.monotonic() + 60  # until the parent's 40 are there too
        while time.monotonic() < deadline:
            seen = sorted(r.id for r in store.recent(limit=1000))
            if sum(1 for i in seen if i.startswith("parent-")) == 40:
                break
            time.sleep(0.05)
        print(json.dumps(seen))
    """, store_settings)
    store.join("parent")
    for i in range(40):
        store.create(f"parent-{i}", "default", "down", ["b"], "parent")
        store.finish(f"parent-{i}", "failed", None, "no")
    both = {f"parent-{i}" for i in range(40)} | {f"child-{i}" for i in range(40)}
    assert set(json.loads(finished(writer))) == both
    assert {r.id for r in store.recent(limit=1000)} == both
    record = store.get("child-7")
    assert record is not None and record.result == {"i": 7} and record.owner == "child"


def test_a_restart_finds_the_records(store_settings: StoreSettings,
                                     opener: Callable[[], Database]) -> None:
    finished(child("""
        store = OperationStore(db)
        store.join("before")
        store.create("before-1", "default", "up", ["redis"], "before")
        store.finish("before-1", "succeeded", {"result": "success"})
        store.leave("before")
        db.close()
    """, store_settings))
    store = OperationStore(opener())  # the next process: a new pool, a new connection
    record = store.get("before-1")
    assert record is not None
    assert (record.state, record.services, record.result) == \
        ("succeeded", ["redis"], {"result": "success"})


def test_a_killed_owner_on_this_host_is_interrupted_when_the_next_process_joins(
        store_settings: StoreSettings, opener: Callable[[], Database]) -> None:
    proc = child("""
        import time
        store = OperationStore(db)
        store.join("doomed")
        store.create("doomed-1", "default", "up", ["redis"], "doomed")
        print("started", flush=True)
        time.sleep(600)
    """, store_settings)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "started"
    store = OperationStore(opener(), stale_after=3600)  # the heartbeat alone: an hour
    record = store.get("doomed-1")
    assert record is not None and record.state == "running"  # its owner is alive
    assert store.join("next") == 0
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert store.join("next") == 1  # its pid is gone from this host
    record = store.get("doomed-1")
    assert record is not None and record.state == "interrupted"
    assert "stopped before it finished" in record.error and "retry" in record.error


def test_an_owner_elsewhere_is_interrupted_when_its_heartbeat_stops(
        opener: Callable[[], Database]) -> None:
    store = OperationStore(opener(), stale_after=1.0)
    store.join("there", host="another-pod", pid=1)
    store.create("there-1", "default", "update", [], "there")
    store.join("here")
    live = store.get("there-1")
    assert live is not None and live.state == "running"

    def interrupted() -> bool:
        store.heartbeat("here")  # we keep beating; "there" does not
        record = store.get("there-1")
        return record is not None and record.state == "interrupted"
    wait_for(interrupted, timeout=15, message="the silent owner's operation interrupted")
    # The owner was only late: its real outcome wins over "interrupted".
    store.finish("there-1", "succeeded", {"result": "success"})
    late = store.get("there-1")
    assert late is not None and late.state == "succeeded"


def test_a_beating_owner_keeps_its_operation_running(opener: Callable[[], Database]) -> None:
    store = OperationStore(opener(), stale_after=1.0)
    store.join("there", host="another-pod", pid=1)
    store.create("there-1", "default", "up", [], "there")
    for _ in range(4):
        store.heartbeat("there", host="another-pod", pid=1)
        record = store.get("there-1")
        assert record is not None and record.state == "running"
        threading.Event().wait(0.4)  # spans more than stale_after in all


def test_todays_events_file_gains_the_operations_table(tmp_path: Path) -> None:
    # The default store is the events file: one written before this store existed (its
    # own table, its user_version) is adopted as it is, its rows untouched.
    path = tmp_path / "events.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, message TEXT)")
        conn.execute("INSERT INTO events (message) VALUES ('kept')")
        conn.execute("PRAGMA user_version=1")
    conn.close()
    db = open_database(StoreSettings(), path)
    try:
        store = OperationStore(db)
        store.join("b")
        store.create("b-1", "default", "up", [], "b")
        assert store.get("b-1") is not None
    finally:
        db.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT message FROM events").fetchall() == [("kept",)]
        assert conn.execute("PRAGMA user_version").fetchone() == (1,)
    conn.close()


# -- runtime/operations.py through the store -------------------------------------------------


def _report(ok: bool = True) -> Report:
    return Report("up", ["redis"], trigger="api")


def test_operations_are_recorded_and_found_by_the_next_process(
        opener: Callable[[], Database]) -> None:
    gate = threading.Event()

    def run() -> Report:
        gate.wait(30)
        return _report()

    first = Operations(store=OperationStore(opener()))
    op = first.start("up", ["redis"], "default", run)
    other = Operations(store=OperationStore(opener()))  # another replica, same store
    seen = other.get(op.id)
    assert seen is not None and seen.to_dict()["status"] == "running" and not seen.done
    gate.set()
    assert op.future.result(30).ok
    first.shutdown()

    def recorded() -> dict[str, object] | None:
        found = other.get(op.id)
        return found.to_dict() if found is not None and found.done else None
    body = wait_for(recorded, timeout=15, message="the outcome recorded")
    assert body["status"] == "succeeded"
    assert body["operation"] == "up" and body["services"] == ["redis"]
    assert body["links"] == {"self": f"/api/operations/{op.id}"}
    assert body["report"] == op.to_dict()["report"]  # the same answer from either
    with pytest.raises(NotFoundError):
        raise other.missing("deadbeef-0123456789ab")
    assert "kept in the store" in other.missing("deadbeef-0123456789ab").message
    other.shutdown()


def test_a_failing_run_is_recorded_as_failed(opener: Callable[[], Database]) -> None:
    def run() -> Report:
        raise RuntimeError("the API server went away")

    ops = Operations(store=OperationStore(opener()))
    op = ops.start("down", [], "default", run)
    with pytest.raises(RuntimeError):
        op.future.result(30)
    reader = OperationStore(opener())

    def failed() -> str:
        record = reader.get(op.id)
        return record.error if record is not None and record.state == "failed" else ""
    assert "went away" in wait_for(failed, timeout=15, message="the failure recorded")
    ops.shutdown()


def test_a_process_killed_mid_operation_leaves_it_interrupted(
        store_settings: StoreSettings, opener: Callable[[], Database]) -> None:
    proc = child("""
        import threading
        from controller.runtime.operations import Operations
        ops = Operations(store=OperationStore(db))
        op = ops.start("up", ["redis"], "default", lambda: threading.Event().wait(600))
        print(op.id, flush=True)
        threading.Event().wait(600)
    """, store_settings)
    assert proc.stdout is not None
    op_id = proc.stdout.readline().strip()
    assert op_id, proc.stderr.read() if proc.stderr else ""
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    after = Operations(store=OperationStore(opener()))  # the restarted controller
    op = after.get(op_id)
    assert op is not None
    body = op.to_dict()
    assert body["status"] == "interrupted" and "retry" in body["message"]
    after.shutdown()


def test_a_failing_store_does_not_stop_operations(tmp_path: Path) -> None:
    db = open_database(StoreSettings(), tmp_path / "events.db")
    ops = Operations(store=OperationStore(db))
    db.close()  # every store call fails from here on
    op = ops.start("up", ["redis"], "default", _report)
    assert op.future.result(30).ok
    found = ops.get(op.id)
    assert found is not None and found.to_dict()["status"] == "succeeded"
    assert ops.get("deadbeef-0123456789ab") is None
    ops.shutdown()


def test_without_a_store_operations_stay_in_memory_as_before() -> None:
    ops = Operations(boot="cafe0001")
    op = ops.start("up", ["redis"], "default", _report)
    assert op.future.result(30).ok
    found = ops.get(op.id)
    assert found is not None and found.to_dict()["status"] == "succeeded"
    lost = ops.missing("deadbeef-0123456789ab")
    assert lost.details["reason"] == "OperationLost"
    ops.shutdown()
