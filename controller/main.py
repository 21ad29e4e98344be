"""Wire the controller together and run it: engine, loop, triggers, API server.

`Controller` owns the long-lived pieces of one process (the Kubernetes connection, the
engine, the loop, the watch on the DeploymentParameters object, the Git poller) and is what
the API serves from. `run` starts it under gunicorn, in the single worker process, so the
loop and the API share one memory (and one Prometheus registry).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from controller.config import Config
from controller.crds import ensure_crd
from controller.engine import Engine, Report
from controller.kube import Kube, KubeError
from controller.loop import Loop
from controller.sources import ParameterSource, Snapshot
from controller.sources.resource import ResourceSource
from controller.watching import Reflector

log = logging.getLogger(__name__)


class GitParameters:
    """Adapts the Git source to the engine: parameters and manifests at one commit."""

    def __init__(self, cfg: Config, env: dict[str, str]) -> None:
        from controller.sources.git import GitSource

        self.cfg = cfg
        self.git = GitSource(cfg.git, env)

    def snapshot(self, resource: dict[str, Any]) -> Snapshot:
        snap = self.git.fetch()
        return Snapshot(spec=snap.params, revision=snap.sha,
                        manifest_root=snap.manifest_root or self.cfg.manifest_root,
                        source="git", committed_at=snap.committed_at,
                        details={"url": self.git.url, "ref": self.cfg.git.ref})


class Controller:
    """One app instance's controller: call `start()`, then serve; `stop()` at the end."""

    def __init__(self, cfg: Config, env: dict[str, str] | None = None,
                 kube: Kube | None = None) -> None:
        self.cfg = cfg
        self.kube = kube or Kube.connect(cfg)
        self.source: ParameterSource = (GitParameters(cfg, env or {}) if cfg.source == "git"
                                        else ResourceSource(cfg))
        self.engine = Engine(cfg, self.kube, self.source, on_event=self._event)
        self.loop = Loop(self.engine, cfg.loop, on_report=self._on_report)
        self.reports: list[Report] = []
        self._watch: Reflector | None = None
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        self.started = threading.Event()

    def start(self) -> Controller:
        try:
            ensure_crd(self.kube)
        except KubeError as e:  # e.g. 403: installed by the deploy kit, not by us
            if e.status != 403:
                raise
            log.info("not allowed to install the CRD; assuming it is installed")
        self.engine.resource.ensure()
        self._watch = self.engine.resource.watch(lambda _obj: self.loop.wake("resource"))
        self.loop.start()
        if isinstance(self.source, GitParameters):
            self._poller = threading.Thread(target=self._poll_git, name="git-poller",
                                            daemon=True)
            self._poller.start()
        self.started.set()
        return self

    def stop(self, timeout: float | None = 60.0) -> None:
        """Stop the triggers, then let the current pass finish (up to `timeout`)."""
        self._stop.set()
        if self._watch:
            self._watch.stop()
        self.loop.stop(timeout)

    def _poll_git(self) -> None:
        """Wake the loop when the ref moves past what the last pass read (cheap ls-remote)."""
        assert isinstance(self.source, GitParameters)
        woken = ""
        while not self._stop.wait(self.cfg.git.poll_interval):
            try:
                sha = self.source.git.remote_sha()
            except Exception as e:  # reported, retried at the next poll
                log.warning("git poll failed: %s", e)
                continue
            seen = self.engine.last.revision if self.engine.last else ""
            if sha not in (seen, woken):
                woken = sha
                self.loop.wake("git")

    def _on_report(self, report: Report) -> None:
        self.reports = [*self.reports[-49:], report]

    def _event(self, type_: str, reason: str, message: str, details: Any) -> None:
        level = logging.ERROR if type_ == "error" else logging.INFO
        log.log(level, "%s: %s", reason, message)


def run(cfg: Config) -> None:
    """Run the controller and its API under gunicorn until SIGTERM/SIGINT."""
    from controller.api.server import serve

    serve(cfg)


__all__ = ["Controller", "run"]
