"""Build and run the conductor image with Debian's buildah and podman, registry-free.

No container registry is reachable from the test machines, so `python:3.11-slim` cannot be
pulled. The base image is made here instead: `debootstrap` a minimal Debian bookworm with
Python (what the Dockerfile's stages need: `python -m venv`, `pip`, `apt-get`, `useradd`),
`podman import` it, and build the real Dockerfile with `--build-arg PYTHON_IMAGE=` naming it.
The default for users stays `python:3.11-slim`.

The debootstrapped tree costs a minute or two, so it is cached as a tarball under
~/.cache/conductor/images, keyed by everything that goes into it (suite, packages, the
machine's CA bundle); as in devcluster/building.py a file lock makes concurrent runs
wait for one build, and the finished tarball appears with one rename, so a crash never
leaves a half-written cache that looks complete. buildah's layer cache (`--layers`) makes
a rebuild with unchanged dependencies cost only the copy of the source; the image stays
tagged `localhost/conductor:test` for that (see `build`).

What this machine needs, found the hard way (see the README's deploy section):
- runc, not podman's default crun, which refuses hybrid cgroup layouts;
- explicit ulimits: the defaults are refused (`setrlimit RLIMIT_NOFILE`);
- the machine's CA bundle inside the base and `--network host`, for `pip install` during
  the build (and for the container to reach the local API server on 127.0.0.1).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
BASE_REPOSITORY = "localhost/conductor-test-base"
# The image under test; one tag, moved by each build (see `build`).
TEST_TAG = "localhost/conductor:test"
# Bump when the recipe changes in a way the key below cannot see.
RECIPE_VERSION = 1
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
TOOLS = {"debootstrap": "debootstrap", "buildah": "buildah", "podman": "podman",
         "runc": "runc"}


class ImageError(Exception):
    """A step failed; names the step, the command and its output."""


def missing_tools() -> list[str]:
    """Debian packages this module needs that are not installed (scripts/setup installs
    them)."""
    return [package for tool, package in TOOLS.items() if _which(tool) is None]


def _which(tool: str) -> str | None:
    # runc is in /usr/sbin, which a non-login PATH may lack.
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")


def runtime() -> str:
    path = _which("runc")
    if path is None:
        raise ImageError("runc is not installed (apt-get install runc)")
    return path


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "conductor" / "images"


def base_key() -> str:
    """What the base tarball is made of, hashed: a different CA bundle is another base."""
    recipe = json.dumps({"suite": SUITE, "mirror": MIRROR, "packages": PACKAGES,
                         "variant": "minbase", "version": RECIPE_VERSION}, sort_keys=True)
    digest = hashlib.sha256(recipe.encode())
    digest.update(HOST_CA.read_bytes() if HOST_CA.is_file() else b"")
    return digest.hexdigest()[:16]


def run(step: str, argv: Sequence[str], timeout: float = 900) -> str:
    """Run one command; raise `ImageError` with its output when it fails."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ImageError(f"{step}: {' '.join(argv)}: {e}") from e
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-4000:]
        raise ImageError(f"{step} failed (exit {proc.returncode}): {' '.join(argv)}\n{tail}")
    return proc.stdout


@dataclass(frozen=True)
class Timing:
    """Where the time of preparing an image went, in seconds (0 = cached)."""

    debootstrap: float = 0.0
    base_import: float = 0.0
    build: float = 0.0


def ensure_base_tarball(cache: Path | None = None) -> tuple[Path, float]:
    """The debootstrapped base as a tarball, built once per key; and the seconds spent."""
    cache = cache or cache_dir()
    key = base_key()
    final = cache / f"debian-{SUITE}-python-{key}.tar"
    if final.is_file():
        return final, 0.0
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / f"{key}.lock"):
        if final.is_file():  # another run finished it while we waited
            return final, 0.0
        started = time.monotonic()
        work = Path(tempfile.mkdtemp(prefix=f"base-{key}-", dir=cache))
        try:
            root = work / "root"
            run("debootstrap", ["debootstrap", "--variant=minbase",
                                f"--include={','.join(PACKAGES)}", SUITE, str(root), MIRROR],
                timeout=1800)
            if HOST_CA.is_file():
                # pip inside the build verifies TLS with the same roots as this machine.
                shutil.copy2(HOST_CA, root / "etc" / "ssl" / "certs" / "ca-certificates.crt")
            # Downloaded packages and indexes: 90 MB the image does not need.
            for junk in (root / "var" / "cache" / "apt" / "archives").glob("*.deb"):
                junk.unlink()
            shutil.rmtree(root / "var" / "lib" / "apt" / "lists", ignore_errors=True)
            (root / "var" / "lib" / "apt" / "lists" / "partial").mkdir(parents=True)
            staged = work / "base.tar"
            run("pack the base", ["tar", "--numeric-owner", "-C", str(root), "-cf",
                                  str(staged), "."])
            staged.rename(final)  # atomic: the cache is complete or absent
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return final, time.monotonic() - started


def image_exists(name: str) -> bool:
    return subprocess.run(["podman", "image", "exists", name], check=False,
                          stdin=subprocess.DEVNULL, capture_output=True).returncode == 0


def ensure_base_image(cache: Path | None = None) -> tuple[str, Timing]:
    """`localhost/conductor-test-base:<key>` in podman's store (shared with buildah)."""
    name = f"{BASE_REPOSITORY}:{base_key()}"
    if image_exists(name):
        return name, Timing()
    tarball, spent = ensure_base_tarball(cache)
    started = time.monotonic()
    with _locked((cache or cache_dir()) / f"{base_key()}.import.lock"):
        if not image_exists(name):
            run("podman import", ["podman", "import", str(tarball), name])
    return name, Timing(debootstrap=spent, base_import=time.monotonic() - started)


def build(context: Path, tag: str, base: str) -> tuple[str, float]:
    """Build the Dockerfile in `context` on `base`: the image's ID (a concurrent build may
    move the tag) and the seconds it took.

    The tag is kept afterwards, and should be: `podman rmi` of the last image built also
    deletes its intermediate layers, and with them buildah's cache of the final stage (a
    warm rebuild then took 37-45 s instead of 11).
    """
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="conductor-build-") as tmp:
        iidfile = Path(tmp) / "iid"
        run("buildah build", ["buildah", "build", "--layers", "--network", "host",
                              "--runtime", runtime(), *ULIMITS,
                              "--build-arg", f"PYTHON_IMAGE={base}", "--iidfile", str(iidfile),
                              "-t", tag, "-f", str(context / "Dockerfile"), str(context)],
            timeout=1800)
        image_id = iidfile.read_text().strip()
    return image_id, time.monotonic() - started


@contextmanager
def container(image: str, name: str, args: Sequence[str], env: dict[str, str],
              volumes: dict[Path, str]) -> Iterator[str]:
    """Run `image` detached as the Deployment would (read-only root, a tmpfs at /tmp,
    loopback through the host's network); removed afterwards, logs printed on failure."""
    argv = ["podman", "run", "--detach", "--name", name, "--runtime", runtime(),
            "--network", "host", "--read-only", "--tmpfs", "/tmp", *ULIMITS]
    for key, value in env.items():
        argv += ["--env", f"{key}={value}"]
    for source, target in volumes.items():
        argv += ["--volume", f"{source}:{target}:ro"]
    run("podman run", [*argv, image, *args], timeout=120)
    try:
        yield name
    finally:
        subprocess.run(["podman", "rm", "--force", "--time", "10", name], check=False,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=120)


def logs(name: str) -> str:
    proc = subprocess.run(["podman", "logs", name], capture_output=True, text=True,
                          check=False, stdin=subprocess.DEVNULL, timeout=60)
    return (proc.stdout + proc.stderr)[-6000:]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # waits for a concurrent build of the same key
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
