"""The parameter source of an instance other than the controller's own: its object, or Git.

Each pass reads the instance's DeploymentParameters object and decides from it
(`model.instance.source_spec`): without `spec.source` and without the annotation
`conductor.io/parameter-source: git`, the parameters are the object's spec (as before);
otherwise they are a file in Git — by default `instances/<namespace>/<name>.yaml` in the
controller's repository at the controller's ref, or wherever `spec.source` {url, ref, path}
points. The choice is the object's, never the presence of a file: a file deleted from Git
is an error on that instance (its last applied state stays), not a silent switch to an
empty spec that would prune the instance.

Git is read through the shared `Registry` (one clone and one fetch per repository). The
manifests are the controller's: the built-in folder, or the controller repository's
manifests folder — at the instance's own commit when it follows that repository (one
commit: parameters and templates that were pushed together render together), else at the
controller's ref. A fault of this instance's source (unreachable URL, missing file,
invalid YAML, malformed `spec.source`) is raised from `snapshot` and so reported on this
instance alone (its conditions, events and status), the other instances untouched.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any

from controller.adapters.sources import Snapshot
from controller.adapters.sources.registry import Registry
from controller.adapters.sources.resource import ResourceSource
from controller.config import Config
from controller.errors import SourceError
from controller.model import instance
from controller.model.times import parse_rfc3339


class InstanceSource:
    """`ParameterSource` of one instance; `cfg` is the instance's configuration (its
    manifests root and the controller's Git settings), `manifests_from_git` whether the
    controller renders from its repository's manifests folder."""

    def __init__(self, cfg: Config, key: Hashable, registry: Registry,
                 manifests_from_git: bool) -> None:
        self.cfg = cfg
        self.key = key
        self.registry = registry
        self.manifests_from_git = manifests_from_git
        self._resource = ResourceSource(cfg)
        self._requested: str | None = None  # the last wake-up seen on the object
        self.follows: instance.SourceSpec | None = None  # as of the last pass
        self.applied: str | None = None  # the commit applied last (None: not known yet)

    def snapshot(self, resource: dict[str, Any]) -> Snapshot:
        spec = instance.source_spec(resource)
        self.follows = spec
        if spec is None:
            self.registry.unfollow(self.key)
            return self._resource.snapshot(resource)
        if self.applied is None:  # after a restart: what the last controller applied
            self.applied = str((resource.get("status") or {}).get("lastAppliedRevision")
                               or "")
        url = spec.url or self.cfg.git.url
        if not url:
            raise SourceError(
                "this instance takes its parameters from the controller's Git repository, "
                "but the controller has none (set CONDUCTOR_GIT_URL, or spec.source.url)",
                {"field": "spec.source.url"})
        ref = spec.ref or self.cfg.git.ref or "main"
        repo = self.registry.repository(url)
        requested = instance.requested_at(resource)
        if self._requested is not None and requested != self._requested:
            # A webhook (maybe received by another replica) asked: fetch anew; the push
            # was seen when the webhook arrived.
            at = parse_rfc3339(requested)
            repo.want(at.timestamp() if at is not None else None)
        self._requested = requested
        repo.refresh()
        sha = repo.resolve(ref)
        # Followed before the file is read: a broken file is fixed by a push, which the
        # poller must see to wake this instance.
        self.registry.follow(self.key, url, ref, sha)
        params, version = repo.read_params(sha, spec.path)
        # `version`: the file's blob id, the parameters' ETag (as the own Git instance's).
        return Snapshot(spec=params, revision=sha, manifest_root=self._manifests(url, sha),
                        source="git", committed_at=repo.committed_at(sha),
                        details={"url": repo.url, "ref": ref, "path": spec.path,
                                 "version": version})

    def newly_applied(self, snap: Snapshot) -> float | None:
        """A pass applied `snap`: when its commit was first seen, once per new commit
        (None for the object's spec, or a commit applied before)."""
        if snap.source != "git" or snap.revision == self.applied or self.follows is None:
            return None
        self.applied = snap.revision
        return self.registry.repository(self.follows.url or self.cfg.git.url) \
            .first_seen(snap.revision)

    def _manifests(self, url: str, sha: str) -> Path:
        if not self.manifests_from_git:
            return self.cfg.manifest_root
        own = self.registry.repository()
        path = self.cfg.git.manifests_path
        if self.registry.is_own(url):
            return own.tree(sha, path)
        own.refresh()
        return own.tree(own.resolve(self.cfg.git.ref), path)


__all__ = ["InstanceSource"]
