"""Fixtures for the Git source: a real `git daemon` on loopback and "users" who push to it.

The daemon serves a bare repository seeded with a parameters file and a `manifests/` tree,
so the tests exercise the same fetch and push paths as a real remote (git:// protocol).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.config import GitSettings
from tests.support.gitrepo import GitServer, User, accepts, free_port, seed
from tests.support.waiting import wait_for


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[GitServer]:
    base = tmp_path / "served"
    base.mkdir()
    first, second = seed(base, tmp_path / "seed")
    log_path = tmp_path / "git-daemon.log"
    for _attempt in range(3):  # the free port may be taken between probe and bind
        port = free_port()
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                ["git", "daemon", "--reuseaddr", f"--base-path={base}", "--export-all",
                 "--enable=receive-pack", "--informative-errors", "--listen=127.0.0.1",
                 f"--port={port}", str(base)],
                stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL)
        wait_for(lambda: proc.poll() is not None or accepts(port),  # noqa: B023
                 timeout=20, message=f"git daemon on port {port}")
        if proc.poll() is None:
            break
    else:
        raise AssertionError(f"git daemon did not start: {log_path.read_text()}")
    try:
        yield GitServer(base, port, first, second)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def settings(git_server: GitServer, tmp_path: Path) -> GitSettings:
    return GitSettings(url=git_server.url, ref="main", cache_dir=tmp_path / "cache")


@pytest.fixture
def make_user(git_server: GitServer, tmp_path: Path) -> Callable[[str], User]:
    def make(name: str = "user") -> User:
        return User(git_server.url, tmp_path / "users" / name)

    (tmp_path / "users").mkdir()
    return make


@pytest.fixture
def user(make_user: Callable[[str], User]) -> User:
    return make_user("user")
