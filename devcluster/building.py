"""Prepare the control-plane binaries once, from Debian packages only, and cache them.

Debian ships no kube-apiserver binary, but its `kubernetes` source package holds the whole
upstream tree with `vendor/`, which builds offline with Debian's Go 1.19. The result is
cached per version outside the repository; a file lock makes two concurrent runs safe (the
second waits and then finds the cache ready), and the finished binaries are moved into place
with one rename, so a crash never leaves a half-written cache that looks complete.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

KUBE_VERSION = "v1.20.2"
DEBIAN_SOURCE = "kubernetes=1.20.5+really1.20.2-1.1+deb12u1"
_KEYRING = "[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]"
DEBIAN_SOURCES_LIST = (
    f"deb-src {_KEYRING} http://deb.debian.org/debian bookworm main\n"
    f"deb-src {_KEYRING} http://deb.debian.org/debian-security bookworm-security main\n"
)
GOROOT = Path("/usr/lib/go-1.19")
# Debian's reflect2 1.0.2; the vendored 1.0.1 makes the API server crash under Go >= 1.18.
REFLECT2_FIXED = Path("/usr/share/gocode/src/github.com/modern-go/reflect2")
BINARIES = ("kube-apiserver", "kube-controller-manager")
# Debian packages each step needs, named in the error when one is missing.
REQUIRED = {
    "go": (GOROOT / "bin" / "go", "golang-1.19-go"),
    "rsync": (Path("/usr/bin/rsync"), "rsync"),
    "reflect2": (REFLECT2_FIXED, "golang-github-modern-go-reflect2-dev"),
    "apt-get": (Path("/usr/bin/apt-get"), "apt"),
}

Progress = Callable[[str], None]


class BuildError(Exception):
    """A preparation step failed; names the step and the log that says why."""

    def __init__(self, step: str, message: str, log: Path | None = None) -> None:
        where = f" (log: {log})" if log else ""
        super().__init__(f"step '{step}' failed: {message}{where}")
        self.step = step
        self.log = log


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "conductor" / "kubernetes"


@dataclass(frozen=True)
class Binaries:
    bin_dir: Path

    @property
    def apiserver(self) -> Path:
        return self.bin_dir / "kube-apiserver"

    @property
    def controller_manager(self) -> Path:
        return self.bin_dir / "kube-controller-manager"


def cached(cache_dir: Path | None = None) -> Binaries | None:
    """The cached binaries when a complete build is there, else None."""
    bins = Binaries((cache_dir or default_cache_dir()) / KUBE_VERSION / "bin")
    if all((bins.bin_dir / name).is_file() for name in BINARIES):
        return bins
    return None


def ensure_binaries(cache_dir: Path | None = None, progress: Progress | None = None) -> Binaries:
    """Return the cached binaries, building them first if needed (about 5-10 min once)."""
    cache_dir = cache_dir or default_cache_dir()
    say = progress or _stderr
    found = cached(cache_dir)
    if found:
        return found
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir / f"{KUBE_VERSION}.lock", say):
        found = cached(cache_dir)  # another process may have finished while we waited
        if found:
            return found
        return _build(cache_dir, say)


def _build(cache_dir: Path, say: Progress) -> Binaries:
    for what, (path, package) in REQUIRED.items():
        if not path.exists():
            raise BuildError("check tools",
                             f"{what} not found at {path}; apt-get install {package}")
    logs = cache_dir / "logs"
    logs.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"build-{KUBE_VERSION}-", dir=cache_dir))
    try:
        steps = _Steps(logs, say, total=3 + len(BINARIES))
        src = work / "src"
        src.mkdir()
        apt = _private_apt(work)
        steps.run("update source lists", ["apt-get", *apt, "update"], cwd=work)
        steps.run("download source", ["apt-get", *apt, "source", "--download-only", DEBIAN_SOURCE],
                  cwd=src)
        tarballs = sorted(src.glob("*.orig.tar.*"))
        if not tarballs:
            raise BuildError("download source", "no .orig tarball was downloaded",
                             logs / "download-source.log")
        tree_parent = work / "tree"
        tree_parent.mkdir()
        steps.run("unpack source", ["tar", "-xf", str(tarballs[0]), "-C", str(tree_parent)],
                  cwd=work)
        tree = next(p for p in tree_parent.iterdir() if p.is_dir())
        vendored = tree / "vendor" / "github.com" / "modern-go" / "reflect2"
        shutil.rmtree(vendored)
        shutil.copytree(REFLECT2_FIXED, vendored)
        env = _go_env()
        for name in BINARIES:
            steps.run(f"build {name}", ["make", f"WHAT=cmd/{name}"], cwd=tree, env=env)
        out = tree / "_output" / "bin"
        staged = work / "bin"
        staged.mkdir()
        for name in BINARIES:
            shutil.copy2(out / name, staged / name)
        final = cache_dir / KUBE_VERSION / "bin"
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():  # an incomplete earlier attempt
            shutil.rmtree(final)
        staged.rename(final)  # atomic: the cache is complete or absent
        say(f"control-plane binaries ready in {final}")
        return Binaries(final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _private_apt(work: Path) -> list[str]:
    """apt options that use our own deb-src list and state, leaving the system's untouched."""
    (work / "sources.list").write_text(DEBIAN_SOURCES_LIST)
    (work / "lists" / "partial").mkdir(parents=True)
    (work / "apt-cache" / "archives" / "partial").mkdir(parents=True)
    return [
        "-q",
        "-o", f"Dir::Etc::SourceList={work / 'sources.list'}",
        "-o", "Dir::Etc::SourceParts=/nonexistent",
        "-o", f"Dir::State::Lists={work / 'lists'}",
        "-o", f"Dir::Cache={work / 'apt-cache'}",
        "-o", "APT::Sandbox::User=root",
    ]


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GOROOT=str(GOROOT),
        PATH=f"{GOROOT / 'bin'}:{env.get('PATH', '')}",
        GOPROXY="off",
        GOFLAGS="-mod=vendor",
        CGO_ENABLED="0",
        KUBE_GIT_VERSION=KUBE_VERSION,
        KUBE_GIT_MAJOR="1",
        KUBE_GIT_MINOR="20",
        KUBE_GIT_TREE_STATE="clean",
    )
    return env


class _Steps:
    """Runs numbered steps, each logged to its own file, and reports progress."""

    def __init__(self, logs: Path, say: Progress, total: int) -> None:
        self.logs, self.say, self.total, self.done = logs, say, total, 0

    def run(self, step: str, argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.done += 1
        log = self.logs / (step.replace(" ", "-") + ".log")
        self.say(f"[{self.done}/{self.total}] {step} ... (log: {log})")
        started = time.monotonic()
        with log.open("wb") as out:
            try:
                proc = subprocess.run(argv, cwd=cwd, env=env, stdout=out,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      check=False)
            except OSError as e:
                raise BuildError(step, str(e), log) from e
        if proc.returncode != 0:
            raise BuildError(step, f"exit code {proc.returncode}", log)
        self.say(f"[{self.done}/{self.total}] {step}: done in {time.monotonic() - started:.0f}s")


@contextmanager
def _locked(path: Path, say: Progress) -> Iterator[None]:
    with path.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"another process is preparing the binaries; waiting for {path}")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
