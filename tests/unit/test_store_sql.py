"""sql.py on both databases: migrations (from empty, from an older version, a newer one
refused, two processes at once), transactions, placeholders, snapshots, the clock, the
shared pool, and the store settings' validation.

Every test that takes `store_settings` runs twice: on a SQLite file and on a fresh database of
a real PostgreSQL server on loopback (tests/support/postgres.py).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from controller.adapters.store.sql import (
    Database,
    Migration,
    PostgresDatabase,
    StoreError,
    display_url,
    open_database,
)
from controller.config import Config, ConfigError, StoreSettings, effective, validate
from tests.support.postgres import Database as PgDatabase
from tests.support.postgres import (  # noqa: F401 (fixtures)
    postgres_fixture,
    postgres_server_fixture,
    store_db_fixture,
    store_settings_fixture,
)

REPO = Path(__file__).resolve().parents[2]

V1 = Migration.same(1, "CREATE TABLE things (name TEXT PRIMARY KEY, size INTEGER NOT NULL)")
V2 = Migration(2, "ALTER TABLE things ADD COLUMN colour TEXT NOT NULL DEFAULT 'red'",
               "ALTER TABLE things ADD COLUMN colour TEXT NOT NULL DEFAULT 'red'")
SERIAL = Migration(1, "CREATE TABLE log (id INTEGER PRIMARY KEY AUTOINCREMENT, who TEXT)",
                   "CREATE TABLE log (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                   "who TEXT)")


def run_python(code: str, settings: StoreSettings, *args: str,
               timeout: float = 60) -> subprocess.Popen[str]:
    """Another process with the same store settings (argv[1], argv[2])."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), settings.url,
                             settings.password_file, *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"child failed:\n{out}\n{err}"
    return out


# -- migrations ------------------------------------------------------------------------------


def test_migrates_from_empty(db: Database) -> None:
    assert db.version("things") == 0
    assert db.migrate("things", [V2, V1]) == 2  # given in any order
    assert db.version("things") == 2
    with db.write() as tx:
        tx.execute("INSERT INTO things (name, size) VALUES (?, ?)", ("a", 1))
    with db.read() as tx:
        assert tx.all("SELECT name, size, colour FROM things") == [("a", 1, "red")]
    assert db.migrate("things", [V1, V2]) == 2  # again: nothing to do
    assert db.version("other") == 0  # a version per store


def test_migrates_from_an_older_version_keeping_rows(db: Database, store_settings: StoreSettings,
                                                    tmp_path: Path) -> None:
    db.migrate("things", [V1])
    with db.write() as tx:
        tx.execute("INSERT INTO things (name, size) VALUES (?, ?)", ("old", 7))
    db.close()
    newer = open_database(store_settings, tmp_path / "unused.db")  # a newer controller starts
    try:
        assert newer.version("things") == 1
        newer.migrate("things", [V1, V2])
        with newer.read() as tx:
            assert tx.all("SELECT name, size, colour FROM things") == [("old", 7, "red")]
    finally:
        newer.close()


def test_a_newer_schema_is_refused_and_left_alone(db: Database) -> None:
    db.migrate("things", [V1, V2])
    with pytest.raises(StoreError) as caught:
        db.migrate("things", [V1])  # an older controller
    assert "schema version 2" in caught.value.message
    assert caught.value.details["supported"] == 1
    assert db.version("things") == 2


def test_migrations_must_be_numbered_from_one(db: Database) -> None:
    with pytest.raises(ValueError, match="numbered"):
        db.migrate("things", [V2])
    assert db.version("things") == 0


MIGRATE_CHILD = """
    import sys
    from pathlib import Path
    from controller.adapters.store.sql import Migration, open_database
    from controller.config import StoreSettings
    settings = StoreSettings(url=sys.argv[1], password_file=sys.argv[2])
    steps = [Migration.same(1, "CREATE TABLE things (name TEXT PRIMARY KEY, size INTEGER)"),
             Migration.same(2, "CREATE TABLE more (name TEXT PRIMARY KEY)")]
    db = open_database(settings, Path("unused.db"))
    print(db.migrate("things", steps))
    db.close()
"""


def test_two_processes_migrating_at_once_both_succeed(store_settings: StoreSettings) -> None:
    procs = [run_python(MIGRATE_CHILD, store_settings) for _ in range(4)]
    assert [finish(p).strip() for p in procs] == ["2"] * 4


# -- transactions and SQL --------------------------------------------------------------------


def test_a_failed_transaction_writes_nothing(db: Database) -> None:
    db.migrate("things", [V1])
    with pytest.raises(RuntimeError), db.write() as tx:
        tx.execute("INSERT INTO things (name, size) VALUES (?, ?)", ("a", 1))
        raise RuntimeError("boom")
    with db.read() as tx:
        assert tx.all("SELECT name FROM things") == []
    with db.write() as tx:  # the connection is usable again
        tx.execute("INSERT INTO things (name, size) VALUES (?, ?)", ("b", 2))
    with db.read() as tx:
        assert tx.all("SELECT name FROM things") == [("b",)]


def test_placeholders_and_percent_signs(db: Database) -> None:
    db.migrate("things", [V1])
    with db.write() as tx:
        tx.many("INSERT INTO things (name, size) VALUES (?, ?)",
                [("100%?", 1), ("a'b", 2), ("plain", 3)])
        assert tx.execute("UPDATE things SET size = size + 10 WHERE name LIKE '%a%'") == 2
    with db.read() as tx:
        assert tx.one("SELECT size FROM things WHERE name = ?", ("100%?",)) == (1,)
        assert tx.all("SELECT name, size FROM things WHERE name LIKE ? ORDER BY name",
                      ("%a%",)) == [("a'b", 12), ("plain", 13)]


def test_identity_columns_count_up(db: Database) -> None:
    db.migrate("log", [SERIAL])
    with db.write() as tx:
        first = tx.one("INSERT INTO log (who) VALUES (?) RETURNING id", ("a",))
        second = tx.one("INSERT INTO log (who) VALUES (?) RETURNING id", ("b",))
    assert first is not None and second is not None and second[0] > first[0]


def test_a_read_is_one_snapshot(db: Database) -> None:
    db.migrate("things", [V1])
    with db.write() as tx:
        tx.execute("INSERT INTO things (name, size) VALUES (?, ?)", ("a", 1))
    with db.read() as tx:
        assert tx.one("SELECT count(*) FROM things") == (1,)

        def write() -> None:  # another thread, another connection, commits meanwhile
            with db.write() as other:
                other.execute("INSERT INTO things (name, size) VALUES (?, ?)", ("b", 2))
        writer = threading.Thread(target=write)
        writer.start()
        writer.join(30)
        assert not writer.is_alive(), "a reader blocked the writer"
        assert tx.one("SELECT count(*) FROM things") == (1,)
    with db.read() as tx:
        assert tx.one("SELECT count(*) FROM things") == (2,)


def test_now_is_the_database_clock_in_milliseconds(db: Database) -> None:
    with db.read() as tx:
        row = tx.one(f"SELECT {db.now_ms}")
    assert row is not None
    assert abs(int(row[0]) - time.time() * 1000) < 5000


def test_a_closed_database_says_so(store_settings: StoreSettings, tmp_path: Path) -> None:
    db = open_database(store_settings, tmp_path / "unused.db")
    db.close()
    with pytest.raises(StoreError, match="closed"), db.read():
        pass


def test_default_is_sqlite_in_the_events_file(tmp_path: Path) -> None:
    db = open_database(StoreSettings(), tmp_path / "events.db")
    try:
        assert db.dialect == "sqlite"
        db.migrate("things", [V1])
        assert (tmp_path / "events.db").is_file()
    finally:
        db.close()


# -- PostgreSQL only ---------------------------------------------------------------------------


def test_one_pool_per_process_shared_by_the_stores(postgres: PgDatabase,
                                                   tmp_path: Path) -> None:
    settings = StoreSettings(url=postgres.url, password_file=str(postgres.password_file),
                             pool_size=2)
    first = open_database(settings, tmp_path / "unused.db")
    second = open_database(settings, tmp_path / "unused.db")
    assert isinstance(first, PostgresDatabase) and isinstance(second, PostgresDatabase)
    assert first._pool is second._pool
    first.close()
    with second.read() as tx:  # the other store's handle still works
        assert tx.one("SELECT 1") == (1,)
    second.close()
    assert second._pool.closed


def test_a_wrong_password_is_a_clear_error_without_it(postgres: PgDatabase,
                                                      tmp_path: Path) -> None:
    wrong = tmp_path / "password"
    wrong.write_text("not-the-password\n")
    with pytest.raises(StoreError) as caught:
        open_database(StoreSettings(url=postgres.url, password_file=str(wrong),
                                    connect_timeout=3), tmp_path / "unused.db")
    assert "cannot connect to the store" in caught.value.message
    assert "not-the-password" not in caught.value.message


def test_an_unreachable_server_fails_within_the_timeout(tmp_path: Path) -> None:
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(StoreError, match="cannot connect"):
        open_database(StoreSettings(url=f"postgresql://u:secret@127.0.0.1:{port}/db",
                                    connect_timeout=2), tmp_path / "unused.db")
    assert time.monotonic() - started < 15


# -- settings ----------------------------------------------------------------------------------


def test_display_url_hides_the_password() -> None:
    assert display_url("postgresql://app:s3cret@db:5432/conductor") == \
        "postgresql://app:***@db:5432/conductor"
    assert display_url("postgresql://app@db/conductor") == "postgresql://app@db/conductor"


@pytest.mark.parametrize(("url", "problem"), [
    ("mysql://db/x", "expected sqlite:///path.db or postgresql://"),
    ("sqlite://relative.db", "absolute"),
    ("postgresql://db:99999/x", "CONDUCTOR_STORE_URL"),
    ("postgresql:///x", "names no host"),
    ("postgresql://db/x?password=hunter2", "CONDUCTOR_STORE_PASSWORD_FILE"),
])
def test_bad_store_urls_are_refused_at_start(tmp_path: Path, url: str, problem: str) -> None:
    cfg = Config.from_env({"CONDUCTOR_STORE_URL": url})
    with pytest.raises(ConfigError, match=problem) as caught:
        validate(cfg)
    assert "hunter2" not in str(caught.value)


def test_store_settings_from_the_environment_masked_when_shown(tmp_path: Path) -> None:
    password = tmp_path / "pw"
    password.write_text("s3cret\n")
    cfg = Config.from_env({"CONDUCTOR_STORE_URL": "postgresql://app@db:5432/conductor",
                           "CONDUCTOR_STORE_PASSWORD_FILE": str(password),
                           "CONDUCTOR_STORE_POOL_SIZE": "4"})
    validate(cfg)
    assert cfg.store.pool_size == 4
    shown = effective(replace(cfg, store=replace(
        cfg.store, url="postgresql://app:s3cret@db:5432/conductor", password_file="")))
    assert "s3cret" not in "\n".join(shown.values())
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        validate(replace(cfg, store=replace(cfg.store, password_file=str(empty))))
    with pytest.raises(ConfigError, match="one place"):
        validate(replace(cfg, store=replace(
            cfg.store, url="postgresql://app:pw@db/conductor")))
    with pytest.raises(ConfigError, match="CONDUCTOR_STORE_POOL_SIZE"):
        validate(replace(cfg, store=replace(cfg.store, pool_size=0)))
