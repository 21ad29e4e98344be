"""A real PostgreSQL server for tests: Debian's binaries, a throwaway cluster on loopback.

The stores must behave the same on SQLite and PostgreSQL, so their suites run against a
real server, not a fake: `initdb` into a temporary directory (as an unprivileged user:
PostgreSQL refuses to run as root, so when we are root it runs as `nobody`), listening on
127.0.0.1 only, on a free port, with password (SCRAM) authentication over TCP, so the
controller's password-file path is the one exercised. One server per test session, a
fresh database per test (`Postgres.database()`), stopped and deleted at the end.

Skipped, with the reason, only when the binaries are absent (scripts/setup installs
Debian's `postgresql` package, so CI has them).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from controller.adapters.store.sql import Database as StoreDatabase
from controller.adapters.store.sql import open_database
from controller.config import StoreSettings
from tests.support.waiting import wait_for

USER = "postgres"  # the superuser initdb creates


def binaries() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian keeps it off PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Database:
    """One test's database: its URL (no password in it) and the password file."""

    url: str
    password_file: Path
    name: str


class Postgres:
    """One running server; `database()` makes a fresh database on it."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="conductor-pg-"))
        self.password = secrets.token_urlsafe(16)
        self.password_file = self.dir / "password"
        self.password_file.write_text(self.password + "\n")
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._user: int | None = None
        if os.geteuid() == 0:  # initdb and postgres refuse root
            nobody = pwd.getpwnam("nobody")
            self._user = nobody.pw_uid
            os.chown(self.dir, nobody.pw_uid, nobody.pw_gid)
            os.chown(self.password_file, nobody.pw_uid, nobody.pw_gid)
        os.chmod(self.dir, 0o700)
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"

    def _run(self, *args: str) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:  # opened by us: the server inherits the fd
            return subprocess.Popen(args, user=self._user, cwd=self.dir,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)

    def start(self) -> Postgres:
        init = subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(self.data), "-U", USER, "-E", "UTF8",
             "--locale=C", "--no-sync", "--auth-local=trust", "--auth-host=scram-sha-256",
             f"--pwfile={self.password_file}"],
            user=self._user, cwd=self.dir, capture_output=True, text=True, timeout=120,
            check=False)
        assert init.returncode == 0, f"initdb failed:\n{init.stdout}\n{init.stderr}"
        for _attempt in range(3):  # a free port may be taken between probe and bind
            self.port = _free_port()
            # Durability off (a test server): fsync and full pages cost seconds per test.
            self._proc = self._run(
                str(self.bindir / "postgres"), "-D", str(self.data), "-h", "127.0.0.1",
                "-p", str(self.port), "-k", str(self.dir), "-c", "fsync=off",
                "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                "-c", "max_connections=200", "-c", "logging_collector=off")
            proc = self._proc
            wait_for(lambda p=proc: p.poll() is not None or self._ready(), timeout=60,
                     message="PostgreSQL to accept connections (or exit)")
            if proc.poll() is None:
                return self
        raise AssertionError(f"PostgreSQL did not start:\n{self.log.read_text()[-2000:]}")

    def _ready(self) -> bool:
        try:
            with psycopg.connect(self.admin_url("postgres"), password=self.password,
                                 connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def admin_url(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def database(self) -> Database:
        name = f"t_{secrets.token_hex(6)}"
        with psycopg.connect(self.admin_url("postgres"), password=self.password,
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return Database(self.admin_url(name), self.password_file, name)

    def drop(self, db: Database) -> None:
        with psycopg.connect(self.admin_url("postgres"), password=self.password,
                             autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')

    def _stop_process(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGINT)  # "fast" shutdown: disconnect, stop
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)

    def stop(self) -> None:
        self._stop_process()
        shutil.rmtree(self.dir, ignore_errors=True)


_server: Postgres | None = None


def server() -> Postgres:
    """The session's server, started on first use (test modules share it)."""
    global _server
    bindir = binaries()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (scripts/setup installs Debian's "
                    "`postgresql` package)")
    if _server is None:
        _server = Postgres(bindir).start()
    return _server


def stop() -> None:
    global _server
    if _server is not None:
        _server.stop()
        _server = None


# Fixtures, named apart from their functions so that a test module imports the function
# (`from tests.support.postgres import postgres_fixture`) and its tests take `postgres`.
@pytest.fixture(scope="session", name="postgres_server")
def postgres_server_fixture() -> Iterator[Postgres]:
    """The session's PostgreSQL."""
    try:
        yield server()
    finally:
        stop()  # session teardown: every test that used it is done


@pytest.fixture(name="postgres")
def postgres_fixture(postgres_server: Postgres) -> Iterator[Database]:
    """A fresh database on the session's server, dropped after the test."""
    db = postgres_server.database()
    try:
        yield db
    finally:
        postgres_server.drop(db)


@pytest.fixture(name="store_settings", params=["sqlite", "postgresql"])
def store_settings_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> StoreSettings:
    """The store settings of a suite that runs on both databases: a SQLite file, then a
    fresh database on the session's PostgreSQL (import the other two fixtures too)."""
    if request.param == "sqlite":
        return StoreSettings(url=f"sqlite://{tmp_path}/store.db")
    db: Database = request.getfixturevalue("postgres")
    return StoreSettings(url=db.url, password_file=str(db.password_file))


@pytest.fixture(name="db")
def store_db_fixture(store_settings: StoreSettings,
                     tmp_path: Path) -> Iterator[StoreDatabase]:
    """The test's store database, open on either backend (closed after the test)."""
    handle = open_database(store_settings, tmp_path / "unused.db")
    try:
        yield handle
    finally:
        handle.close()
