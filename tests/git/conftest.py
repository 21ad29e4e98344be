"""Fixtures for the Git source: a real `git daemon` on loopback and "users" who push to it.

The daemon serves a bare repository seeded with a parameters file and a `manifests/` tree,
so the tests exercise the same fetch and push paths as a real remote (git:// protocol).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controller.config import GitSettings
from tests.support.gitrepo import GitServer, User, git_daemon, seed


@pytest.fixture
def git_server(tmp_path: Path) -> Iterator[GitServer]:
    base = tmp_path / "served"
    base.mkdir()
    first, second = seed(base, tmp_path / "seed")
    with git_daemon(base, tmp_path / "git-daemon.log") as port:
        yield GitServer(base, port, first, second)


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
