"""A real Git remote for tests: a bare repository served by `git daemon` on loopback, and
"users" with their own clones who commit and push to it.

The seed has a parameters file and a `manifests/` tree, so tests exercise the same fetch
and push paths as a real remote (git:// protocol). `example_files` is the example app laid
out as a Git source.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.cluster import REPO
from tests.support.waiting import wait_for

SEED_PARAMS: dict[str, Any] = {"global": {"image_tag": "1.0"},
                               "services": {"web": {"replicas": 1}}}
MAIN_PARAMS: dict[str, Any] = {"global": {"image_tag": "2.0"},
                               "services": {"web": {"replicas": 2}}}
TEMPLATE = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n"


def run_git(cwd: Path, *args: str) -> str:
    """git for the test's own side (users, seeding): identity given, never prompting."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    done = subprocess.run(
        ["git", "-c", "user.name=A User", "-c", "user.email=user@example.com",
         "-c", "init.defaultBranch=main", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {done.stderr}")
    return done.stdout.strip()


class User:
    """Someone with their own clone of the served repository."""

    def __init__(self, url: str, path: Path) -> None:
        self.path = path
        run_git(path.parent, "clone", "--quiet", url, str(path))

    def git(self, *args: str) -> str:
        return run_git(self.path, *args)

    def commit(self, files: dict[str, str], message: str = "user change",
               branch: str = "main") -> str:
        self.git("checkout", "--quiet", branch)
        self.git("pull", "--quiet", "--ff-only", "origin", branch)
        for name, text in files.items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            self.git("add", name)
        self.git("commit", "--quiet", "-m", message)
        return self.git("rev-parse", "HEAD")

    def push(self, branch: str = "main") -> None:
        self.git("push", "--quiet", "origin", f"HEAD:refs/heads/{branch}")

    def commit_and_push(self, files: dict[str, str], message: str = "user change",
                        branch: str = "main") -> str:
        sha = self.commit(files, message, branch)
        self.push(branch)
        return sha

    def remote_head(self, branch: str = "main") -> str:
        out = self.git("ls-remote", "origin", f"refs/heads/{branch}")
        return out.split()[0]


@dataclass(frozen=True)
class GitServer:
    base: Path
    port: int
    first: str  # the seed commit: tagged v1, branch "release" points at it
    second: str  # main's tip after seeding (MAIN_PARAMS)

    @property
    def url(self) -> str:
        return f"git://127.0.0.1:{self.port}/repo.git"

    @property
    def bare(self) -> Path:
        return self.base / "repo.git"


def seed(base: Path, work: Path) -> tuple[str, str]:
    run_git(base, "init", "--quiet", "--bare", "repo.git")
    run_git(work.parent, "init", "--quiet", str(work))
    (work / "manifests" / "web").mkdir(parents=True)
    (work / "manifests" / "web" / "deployment.yaml.j2").write_text(TEMPLATE)
    (work / "parameters.yaml").write_text(yaml.safe_dump(SEED_PARAMS))
    run_git(work, "add", "-A")
    run_git(work, "commit", "--quiet", "-m", "seed")
    first = run_git(work, "rev-parse", "HEAD")
    run_git(work, "tag", "-a", "v1", "-m", "first release")
    run_git(work, "branch", "release")
    (work / "parameters.yaml").write_text(yaml.safe_dump(MAIN_PARAMS))
    run_git(work, "commit", "--quiet", "-am", "bump")
    second = run_git(work, "rev-parse", "HEAD")
    run_git(work, "push", "--quiet", str(base / "repo.git"), "main", "release", "v1")
    return first, second


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def example_files(namespace: str, redis_replicas: int = 1) -> dict[str, str]:
    files = {f"app/manifests/{p.relative_to(REPO / 'manifests')}": p.read_text()
             for p in (REPO / "manifests").rglob("*") if p.is_file()
             and p.name != "parameters.yaml"}
    files["app/parameters.yaml"] = example_params(namespace, redis_replicas)
    return files


def example_params(namespace: str, redis_replicas: Any) -> str:
    params = yaml.safe_load((REPO / "manifests" / "parameters.yaml").read_text())
    params["global"]["namespace"] = namespace
    params["services"]["redis"]["replicas"] = redis_replicas
    return yaml.safe_dump(params)




def publish(base: Path, name: str, files: dict[str, str]) -> str:
    """A new bare repository `<name>.git` under `base` whose main holds `files`; its
    first commit."""
    run_git(base, "init", "--quiet", "--bare", f"{name}.git")
    work = base / f".{name}-seed"
    run_git(base, "init", "--quiet", str(work))
    for rel, text in files.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(text)
    run_git(work, "add", "-A")
    run_git(work, "commit", "--quiet", "-m", f"seed {name}")
    run_git(work, "push", "--quiet", str(base / f"{name}.git"), "main")
    return run_git(work, "rev-parse", "HEAD")


@contextmanager
def git_daemon(base: Path, log_path: Path) -> Iterator[int]:
    """`git daemon` serving every repository under `base` on loopback (pushes allowed);
    yields its port, stops it after."""
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
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
