"""Parameter history on both databases (adapters/store/history.py over sql.py): record,
list, apply, a recreated object's revisions, retention per instance, two processes at
once, a restart, and a SQLite file from before the version table.

Every test that takes `store_settings` runs on a SQLite file and on a fresh database of a
real PostgreSQL server on loopback (tests/support/postgres.py).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from controller.adapters.store.events import EventStoreError
from controller.adapters.store.history import History
from controller.adapters.store.sql import Database
from controller.config import StoreSettings
from tests.support.postgres import (  # noqa: F401 (fixtures)
    postgres_fixture,
    postgres_server_fixture,
    store_db_fixture,
    store_settings_fixture,
)

REPO = Path(__file__).resolve().parents[2]


def spawn(code: str, settings: StoreSettings) -> subprocess.Popen[str]:
    """Another process with a History on the same store (as `history`)."""
    prelude = """
        import sys, json
        from pathlib import Path
        from controller.adapters.store.history import History
        from controller.adapters.store.sql import open_database
        from controller.config import StoreSettings
        db = open_database(StoreSettings(url=sys.argv[1], password_file=sys.argv[2]),
                           Path("unused.db"))
        history = History(db)
    """
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(prelude) + textwrap.dedent(code),
         settings.url, settings.password_file], cwd=REPO, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def output(proc: subprocess.Popen[str]) -> str:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, f"child failed:\n{out}\n{err}"
    return out


def revisions(history: History, instance: str = "default") -> list[str]:
    return [e["revision"] for e in history.list(instance, limit=1000)]


def test_record_list_and_apply(db: Database) -> None:
    history = History(db)
    spec = {"global": {"image": "nginx:1.25", "ratio": 0.5}, "services": {}}
    assert history.record("default", "generation/1", "resource", spec, origin="uid-a")
    assert not history.record("default", "generation/1", "resource", {"other": 1},
                              origin="uid-a")  # once per revision: the first spec stays
    assert history.entry("default", "generation/1") == {"parameters": spec,
                                                        "applied": False}
    history.mark_applied("default", "generation/1")
    history.mark_applied("default", "generation/1")  # again: no change
    (entry,) = history.list("default")
    assert (entry["revision"], entry["source"], entry["applied"], entry["parameters"]) == \
        ("generation/1", "resource", True, spec)
    assert entry["timestamp"].endswith("Z")
    assert history.get("default", "missing") is None
    assert history.list("other") == []


def test_a_recreated_object_renames_the_old_revision(db: Database) -> None:
    history = History(db)
    for n, uid in enumerate(["uid-first-0000", "uid-second-111", "uid-third-2222"]):
        assert history.record("default", "generation/1", "resource", {"n": n}, origin=uid)
    # Each recreation renames the previous row; names are per origin, so all three stay.
    assert sorted(revisions(history)) == \
        ["generation/1", "generation/1@uid-firs", "generation/1@uid-seco"]
    assert history.get("default", "generation/1") == {"n": 2}
    assert history.get("default", "generation/1@uid-firs") == {"n": 0}
    # The first object comes back a second time: its old name is taken over, not doubled.
    assert history.record("default", "generation/1", "resource", {"n": 3},
                          origin="uid-first-0000")
    assert history.get("default", "generation/1@uid-thir") == {"n": 2}
    assert len(revisions(history)) == 4


def test_retention_is_per_instance(db: Database) -> None:
    history = History(db, keep=3)
    for i in range(7):
        history.record("default", f"sha{i}", "git", {"i": i})
    history.record("other", "sha0", "git", {"i": 0})
    assert revisions(history) == ["sha6", "sha5", "sha4"]
    assert revisions(history, "other") == ["sha0"]
    assert [e["revision"] for e in history.list("default", limit=2)] == ["sha6", "sha5"]


def test_two_processes_see_each_others_revisions_and_store_one_once(
        store_settings: StoreSettings, db: Database) -> None:
    history = History(db)
    child = spawn("""
        import time
        added = [history.record("default", f"child{i}", "git", {"i": i}) for i in range(30)]
        same = history.record("default", "shared", "git", {"by": "child"})
        deadline = time.monotonic() + 60  # until the parent's are there too
        while time.monotonic() < deadline:
            seen = [e["revision"] for e in history.list("default", limit=1000)]
            if sum(1 for r in seen if r.startswith("parent")) == 30:
                break
            time.sleep(0.05)
        print(json.dumps({"added": added, "same": same, "seen": seen}))
    """, store_settings)
    mine = [history.record("default", f"parent{i}", "git", {"i": i}) for i in range(30)]
    same = history.record("default", "shared", "git", {"by": "parent"})
    theirs = json.loads(output(child))
    assert all(mine) and all(theirs["added"])
    assert [same, theirs["same"]].count(True) == 1  # recorded once, whoever came first
    expected = {f"parent{i}" for i in range(30)} | {f"child{i}" for i in range(30)} | \
        {"shared"}
    assert set(theirs["seen"]) == expected == set(revisions(history))


def test_a_restart_finds_the_history(store_settings: StoreSettings, db: Database) -> None:
    output(spawn("""
        history.record("default", "generation/4", "resource", {"v": 4}, origin="u")
        history.mark_applied("default", "generation/4")
        db.close()
    """, store_settings))
    assert History(db).entry("default", "generation/4") == {"parameters": {"v": 4},
                                                           "applied": True}


def test_a_file_from_before_the_version_table_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with sqlite3.connect(path) as conn:  # the first schema: no applied, no origin
        conn.executescript("""
            CREATE TABLE parameter_history (
                id INTEGER PRIMARY KEY AUTOINCREMENT, instance TEXT NOT NULL,
                revision TEXT NOT NULL, source TEXT NOT NULL, timestamp TEXT NOT NULL,
                spec TEXT NOT NULL, UNIQUE (instance, revision));
            INSERT INTO parameter_history (instance, revision, source, timestamp, spec)
                VALUES ('default', 'abc', 'git', '2024-01-01T00:00:00.000000Z', '{"a": 1}');
        """)
    conn.close()
    history = History(path)
    try:
        assert history.entry("default", "abc") == {"parameters": {"a": 1}, "applied": None}
        history.mark_applied("default", "abc")
        assert history.list("default")[0]["applied"] is True
        assert history.record("default", "generation/1", "resource", {}, origin="u1")
        assert history.db.version("history") == 2  # 2: the namespace
    finally:
        history.close()


def test_a_failing_store_is_an_event_store_error_naming_it(db: Database) -> None:
    history = History(db)
    db.close()
    with pytest.raises(EventStoreError) as caught:
        history.list("default")
    assert db.display in caught.value.message
    with pytest.raises(EventStoreError):
        history.record("default", "x", "git", {})
