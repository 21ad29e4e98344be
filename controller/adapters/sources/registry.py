"""One clone, one fetch and one poll per Git repository, however many instances use it.

Many instances may take their parameters from Git: files in the controller's repository
(`instances/<namespace>/<name>.yaml`) or each its own `spec.source`. A GitSource per
instance would clone the same repository N times and fetch it N times per push; this
registry keeps one `Repository` per remote (keyed by `repository_id`, so the https and ssh
spellings of one repository are one), and each Repository fetches at most once per
announced change: the passes a push wakes share the fetch the first of them makes (a
failure too, so an unreachable remote is tried once, not once per instance). Between
announcements a fetch is reused for up to the poll interval, so interval passes still see
a push nobody announced. Readers take commits from the object store (`read_params_at`,
`export`), never from a checkout, so instances at different revisions do not disturb each
other.

Only the controller's own repository gets the configured credentials: a URL an object
names (anyone who may edit a DeploymentParameters object may name any URL) is fetched
anonymously, so the controller's token is never sent to another host.

The registry also remembers which instance follows which (repository, ref) and the commit
it last read, so the poller asks each repository once (`remote_shas` of all its refs) and
wakes exactly the instances whose ref moved.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.config import GitSettings
from controller.errors import ValidationError
from controller.model.instance import ref_name, repository_id

if TYPE_CHECKING:  # gitpython is imported only when a repository is used
    from controller.adapters.sources.git import GitSource

log = logging.getLogger(__name__)

TREES_KEPT = 8  # exported manifest trees per repository (revisions recently rendered)


class Repository:
    """One remote: its GitSource (one clone in the cache) and when it was last fetched."""

    def __init__(self, source: GitSource, max_age: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._fetched: float | None = None  # when the last good fetch started
        self._wanted = float("-inf")  # when a change was last announced (webhook, poll)
        self._failed: tuple[float, Exception] | None = None
        self.fetches = 0  # fetches made (each an attempt), for tests and logs
        # What each ref named at the last fetch, and commit times: asked once per fetch
        # (per commit), not once per instance reading it (each answer is a git process).
        self._refs: dict[str, str] = {}
        self._times: dict[str, datetime] = {}
        self._files: dict[tuple[str, str], tuple[dict[str, Any], str]] = {}
        # When each commit was first seen (Unix time: a webhook's arrival, the poll or the
        # fetch that found it), for push-to-applied latency.
        self._seen: dict[str, float] = {}
        self._announced: float | None = None
        # (sha, path) -> (the exported folder, the manifests root inside it)
        self._trees: OrderedDict[tuple[str, str], tuple[Path, Path]] = OrderedDict()
        self._tree_lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.source.url  # credentials scrubbed

    def want(self, at: float | None = None) -> None:
        """A change was announced (at Unix time `at`, default now): the next refresh
        fetches, whatever its age."""
        self._wanted = self._clock()
        if self._announced is None:
            self._announced = time.time() if at is None else at

    def saw(self, sha: str, at: float | None = None) -> None:
        """`sha` was seen (a poll): the start of its push-to-applied latency."""
        if len(self._seen) > 1000:  # revisions long applied
            self._seen = {}
        self._seen.setdefault(sha, time.time() if at is None else at)

    def first_seen(self, sha: str) -> float | None:
        return self._seen.get(sha)

    def refresh(self) -> None:
        """Fetch unless a fetch that started after the last announcement, and less than
        `max_age` ago, already did (or failed: its error is raised again)."""
        with self._lock:
            now = self._clock()
            if self._failed is not None:
                started, error = self._failed
                if started > self._wanted and now - started < self.max_age:
                    raise error
            if self._fetched is not None and self._fetched > self._wanted and \
                    now - self._fetched < self.max_age:
                return
            self.fetches += 1
            try:
                self.source.update()
            except Exception as e:
                self._failed = (now, e)
                raise
            self._fetched, self._failed = now, None
            self._refs = {}

    def resolve(self, ref: str) -> str:
        """The commit `ref` names as of the last fetch."""
        refs = self._refs  # this fetch's: an answer racing a newer fetch is dropped with it
        found = refs.get(ref)
        if found is None:
            found = refs[ref] = self.source.resolve(ref)
            announced, self._announced = self._announced, None
            self.saw(found, min(t for t in (announced, time.time()) if t is not None))
        return found

    def committed_at(self, sha: str) -> datetime:
        found = self._times.get(sha)
        if found is None:
            if len(self._times) > 1000:  # commits long applied
                self._times = {}
            found = self._times[sha] = self.source.committed_at(sha)
        return found

    def read_params(self, sha: str, path: str) -> tuple[dict[str, Any], str]:
        """The parameters file at `path` in `sha` and its blob id; read once per commit
        (an interval pass at an unchanged commit starts no git process), a copy each time
        (a pass may not change what the next one reads)."""
        key = (sha, path)
        found = self._files.get(key)
        if found is None:
            if len(self._files) > 4096:  # commits long passed
                self._files = {}
            found = self._files[key] = self.source.read_params_at(sha, path)
        params, version = found
        return copy.deepcopy(params), version

    def tree(self, sha: str, path: str) -> Path:
        """The folder `path` of commit `sha`, exported once and kept for the last few
        revisions (a pass renders from it; an older one is removed)."""
        key = (sha, path)
        with self._tree_lock:
            found = self._trees.get(key)
            if found is not None and found[1].is_dir():  # (another process may prune it)
                self._trees.move_to_end(key)
                return found[1]
            digest = hashlib.sha256(f"{sha}\0{path}".encode()).hexdigest()[:16]
            dest = self.source.repo_dir.with_name(self.source.repo_dir.name + "-trees") / digest
            root = self.source.export(sha, path, dest)
            self._trees[key] = (dest, root)
            while len(self._trees) > TREES_KEPT:
                _old, (old_dest, _root) = self._trees.popitem(last=False)
                shutil.rmtree(old_dest, ignore_errors=True)
            return root


def _remote(url: str) -> bool:
    """A network URL (https, http, ssh, git, or scp-like `user@host:path`)."""
    scheme, sep, _rest = url.partition("://")
    if sep:
        return scheme.lower() in ("https", "http", "ssh", "git")
    host, colon, _path = url.partition(":")
    return bool(colon) and "/" not in host and "@" in host


@dataclass(frozen=True)
class Follow:
    """What one instance follows: a repository's ref, and the commit it read last."""

    repository: str  # repository_id
    ref: str
    sha: str


class Registry:
    """The shared repositories, and who follows what. Thread-safe."""

    def __init__(self, settings: GitSettings, env: Mapping[str, str],
                 factory: Callable[[GitSettings, Mapping[str, str]], GitSource] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 allow_local: bool = False) -> None:
        self.settings = settings  # the controller's repository, and the cache for all
        # Whether an object may name a local path or file:// URL (tests only): otherwise
        # anyone who may edit an object could make the controller read its own disk.
        self.allow_local = allow_local
        self._env = env
        self._factory = factory
        self._clock = clock
        self._lock = threading.Lock()
        self._repos: dict[str, Repository] = {}
        self._follows: dict[Hashable, Follow] = {}
        self._woken: dict[Hashable, str] = {}  # the commit each instance was last woken for

    def repository(self, url: str = "") -> Repository:
        """The one Repository of `url` ("" or the controller's URL: the controller's
        repository, with its credentials; any other: anonymous)."""
        own = not url or repository_id(url) == repository_id(self.settings.url)
        if not own and not self.allow_local and not _remote(url):
            raise ValidationError(
                f"spec.source.url {url!r}: only https, http, ssh and git URLs (or "
                "user@host:path) may be named by an object",
                {"field": "spec.source.url", "url": url})
        key = repository_id(self.settings.url if own else url)
        with self._lock:
            found = self._repos.get(key)
            if found is not None:
                return found
            settings = self.settings if own else replace(
                self.settings, url=url, token_file="", token_env="", ssh_key_file="",
                write=False)
            factory = self._factory
            if factory is None:
                from controller.adapters.sources.git import GitSource  # gitpython: only now

                factory = GitSource
            repo = self._repos[key] = Repository(
                factory(settings, self._env), max(self.settings.poll_interval, 1.0),
                self._clock)
            return repo

    def is_own(self, url: str) -> bool:
        return not url or repository_id(url) == repository_id(self.settings.url)

    # -- who follows what ------------------------------------------------------------------

    def follow(self, key: Hashable, url: str, ref: str, sha: str) -> None:
        rid = repository_id(url or self.settings.url)
        with self._lock:
            self._follows[key] = Follow(rid, ref_name(ref), sha)

    def unfollow(self, key: Hashable) -> None:
        with self._lock:
            self._follows.pop(key, None)
            self._woken.pop(key, None)

    def following(self) -> dict[str, dict[str, dict[Hashable, str]]]:
        """repository_id -> ref -> {instance: the commit it read last}."""
        out: dict[str, dict[str, dict[Hashable, str]]] = {}
        with self._lock:
            for key, f in self._follows.items():
                out.setdefault(f.repository, {}).setdefault(f.ref, {})[key] = f.sha
        return out

    def poll(self, owned: Callable[[Hashable], bool]) -> dict[Hashable, str]:
        """Ask each followed repository once for all its refs; the instances (that
        `owned` accepts) whose ref moved from the commit they read, with the new commit
        (each once per commit: a pass that keeps failing is not woken at every poll). A
        moved ref also marks its repository wanted, so their passes fetch (once)."""
        moved: dict[Hashable, str] = {}
        for rid, refs in self.following().items():
            with self._lock:
                repo = self._repos.get(rid)
            if repo is None:
                continue
            keys = {ref: {k: sha for k, sha in followers.items() if owned(k)}
                    for ref, followers in refs.items()}
            wanted = [ref for ref, followers in keys.items() if followers]
            if not wanted:
                continue
            try:
                shas = repo.source.remote_shas(wanted)
            except Exception as e:  # the passes it would wake report it; retried next poll
                log.warning("git poll of %s failed: %s", repo.url, e)
                continue
            for ref in wanted:
                sha = shas.get(ref)
                if not sha:
                    continue
                with self._lock:
                    stale = {k: sha for k, read in keys[ref].items()
                             if read != sha and self._woken.get(k) != sha}
                    self._woken.update(stale)
                if stale:
                    repo.saw(sha)
                    repo.want()
                    moved.update(stale)
        return moved


__all__ = ["TREES_KEPT", "Follow", "Registry", "Repository"]
