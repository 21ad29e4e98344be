"""Wire the controller together and run it: engine, loop, triggers, leadership, API.

`Controller` owns the long-lived pieces of one process (the Kubernetes connection, the
engine, the loop, the watch on the DeploymentParameters object, the Git poller, the lease,
the event store, the metrics registry) and is what the API serves from. `run` starts it
under gunicorn, in the single worker process, so the loop and the API share one memory
(and one Prometheus registry).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Any

from prometheus_client import CollectorRegistry

from controller.config import Config
from controller.crds import ensure_crd
from controller.engine import Engine, ParametersDeletedError, Report, now_rfc3339
from controller.events import EngineRecorder, EventStore
from controller.history import History
from controller.kube import Kube, KubeError, NotLeaderError
from controller.leadership import LeaderElector
from controller.loop import Loop
from controller.metrics import Metrics
from controller.observing import HealthMonitor
from controller.operations import Operations
from controller.recording import KubeEvents
from controller.sources import ParameterSource, Snapshot
from controller.sources.resource import ParametersResource, ResourceSource
from controller.watching import Reflector

log = logging.getLogger(__name__)


class GitParameters:
    """Adapts the Git source to the engine: parameters and manifests at one commit."""

    def __init__(self, cfg: Config, env: dict[str, str], metrics: Metrics | None = None) -> None:
        from controller.sources.git import GitSource

        self.cfg = cfg
        self.git = GitSource(cfg.git, env)
        self.metrics = metrics

    def snapshot(self, resource: dict[str, Any]) -> Snapshot:
        started = time.monotonic()
        try:
            snap = self.git.fetch()
        except Exception:
            if self.metrics:
                self.metrics.git_failures.labels(**self.metrics.labels).inc()
            raise
        finally:
            if self.metrics:
                self.metrics.git_fetch.labels(**self.metrics.labels).observe(
                    time.monotonic() - started)
        return Snapshot(spec=snap.params, revision=snap.sha,
                        manifest_root=snap.manifest_root or self.cfg.manifest_root,
                        source="git", committed_at=snap.committed_at,
                        details={"url": self.git.url, "ref": self.cfg.git.ref})


class Controller:
    """One app instance's controller: call `start()`, then serve; `stop()` at the end."""

    def __init__(self, cfg: Config, env: dict[str, str] | None = None,
                 kube: Kube | None = None, registry: CollectorRegistry | None = None) -> None:
        self.cfg = cfg
        self.registry = registry or CollectorRegistry()
        self.metrics = Metrics(self.registry, cfg.instance, cfg.namespace)
        self.kube = kube or Kube.connect(
            cfg, observer=self.metrics.observe_request,
            on_retry=lambda e: self.metrics.count_retry(str(e.details.get("method", "")),
                                                        e.status))
        self.source: ParameterSource = (GitParameters(cfg, env or {}, self.metrics)
                                        if cfg.source == "git" else ResourceSource(cfg))
        self.history = History(cfg.events.path)
        self.events = EventStore.from_settings(cfg.events)
        self.recorder = EngineRecorder(self.events)
        self.kube_events = KubeEvents(self.kube, self.recorder, cfg.namespace, cfg.instance)
        self.recorder.service_of = self.kube_events.service_of
        self.operations = Operations()
        self.engine = self._new_engine(cfg, self.source)
        self._engines: dict[str, Engine] = {cfg.instance: self.engine}
        self._engines_lock = threading.Lock()
        self.loop = Loop(self.engine, cfg.loop, may_run=self.is_leader)
        # Health from watched state (observing.py), on every replica: the API serves it.
        self.health = HealthMonitor(self.kube, cfg)
        self.elector: LeaderElector | None = None
        if cfg.leader.enabled:
            self.elector = LeaderElector(
                self.kube, cfg.namespace, f"conductor-{cfg.app_name}-{cfg.instance}",
                identity=cfg.leader.identity or None,
                lease_duration=cfg.leader.lease_duration,
                renew_deadline=cfg.leader.renew_deadline,
                retry_period=cfg.leader.retry_period, on_change=self._on_leader)
            elector = self.elector
            self.kube.write_guard = lambda: elector.is_leader
        self.reports: list[Report] = []
        self._watch: Reflector | None = None
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        self.started = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Controller:
        if self.elector:
            self.elector.start()
            # Know our role before the first pass (a single replica leads at once).
            self.elector.tried.wait(self.cfg.leader.retry_period * 2)
        if self.is_leader():
            self._prepare()
        self._watch = self.engine.resource.watch(lambda _obj: self.loop.wake("resource"))
        self.health.start()
        self.loop.start()
        if isinstance(self.source, GitParameters):
            self._poller = threading.Thread(target=self._poll_git, name="git-poller",
                                            daemon=True)
            self._poller.start()
        self.started.set()
        return self

    def _prepare(self) -> None:
        """Leader-only set-up: the CRD (when allowed) and the DeploymentParameters object."""
        try:
            ensure_crd(self.kube)
        except KubeError as e:  # e.g. 403: installed by the deploy kit, not by us
            if e.status != 403:
                raise
            log.info("not allowed to install the CRD; assuming it is installed")
        try:
            # Created from the defaults only on a first install, never after a deletion.
            self.engine.ensure_parameters()
        except ParametersDeletedError as e:  # the first pass reports it (event, status)
            log.warning("%s", e.message)

    def stop(self, timeout: float | None = 60.0) -> None:
        """Stop the triggers, let the current pass finish (up to `timeout`), release."""
        self._stop.set()
        if self._watch:
            self._watch.stop()
        self.loop.stop(timeout)
        self.health.stop()
        self.kube_events.stop()
        self.events.close()
        self.operations.shutdown()
        if self.elector:
            self.elector.stop(release=True)
        self.history.close()

    # -- leadership --------------------------------------------------------------------------

    def is_leader(self) -> bool:
        return self.elector.is_leader if self.elector else True

    def leader_identity(self) -> str:
        if self.elector is None:
            return "self"
        return self.elector.holder

    def _on_leader(self, leading: bool) -> None:
        self.metrics.set_leader(leading)
        if leading:
            try:
                self._prepare()
            except KubeError as e:
                log.warning("leader set-up failed: %s", e.message)
            self.loop.wake("leader")

    # -- instances and sources ---------------------------------------------------------------

    def _new_engine(self, cfg: Config, source: ParameterSource) -> Engine:
        return Engine(cfg, self.kube, source, on_event=self._event,
                      on_result=self.recorder.on_result, on_report=self._on_report)

    def engine_for(self, instance: str) -> Engine:
        """The engine of a DeploymentParameters object; others than ours use its spec.

        The loop reconciles the controller's own instance; other instances in the namespace
        are driven by API calls (up/update/down/plan) with their own inventory.
        """
        with self._engines_lock:
            engine = self._engines.get(instance)
            if engine is None:
                cfg = replace(self.cfg, instance=instance, source="resource")
                # Only for objects that exist: a name in a request must not grow memory.
                ParametersResource(self.kube, cfg).read()  # NotFoundError otherwise
                engine = self._new_engine(cfg, ResourceSource(cfg))
                self._engines[instance] = engine
            return engine

    def git_source(self) -> Any:
        return self.source.git if isinstance(self.source, GitParameters) else None

    # -- triggers ----------------------------------------------------------------------------

    def _poll_git(self) -> None:
        """Wake the loop when the ref moves past what the last pass read (cheap ls-remote)."""
        assert isinstance(self.source, GitParameters)
        woken = ""
        while not self._stop.wait(self.cfg.git.poll_interval):
            if not self.is_leader():
                continue
            try:
                sha = self.source.git.remote_sha()
            except Exception as e:  # reported, retried at the next poll
                log.warning("git poll failed: %s", e)
                continue
            seen = self.engine.last.revision if self.engine.last else ""
            if sha not in (seen, woken):
                woken = sha
                self.loop.wake("git")

    # -- observation ---------------------------------------------------------------------------

    def _on_report(self, report: Report) -> None:
        """After every pass and operation of any engine: observe, record, measure."""
        if report.instance != self.cfg.instance or isinstance(report.error, NotLeaderError):
            return  # another instance's, or a follower refusing to write: nothing happened
        self.reports = [*self.reports[-49:], report]
        self.kube_events.track((r.key, r.service) for r in report.results.items)
        # Health: watch what this pass planned; its 403s become RBAC problems.
        self.health.after_pass(report.plan.items if report.plan else (),
                               report.results.items, report.error)
        snap = report.snapshot
        if snap is not None:
            try:
                self.history.record(self.cfg.instance, snap.revision, snap.source, snap.spec)
            except Exception:
                log.exception("cannot record parameter history")
        committed = snap.committed_at.timestamp() if snap and snap.committed_at else None
        # One correction per object re-applied (the counter's unit), labelled by service.
        drifted = [r.service for r in report.results.items
                   if r.outcome == "applied" and r.reason == "drift"]
        self.metrics.observe_pass(report.operation, report.duration, report.ok,
                                  report.results.counts(), report.revision, drifted,
                                  committed)
        self.metrics.set_conditions({"Ready": "True" if report.ok else "False",
                                     "Stalled": "False" if report.ok else "True",
                                     "Reconciling": "False"})

    def _event(self, type_: str, reason: str, message: str, details: Any) -> None:
        level = logging.ERROR if type_ == "error" else logging.INFO
        log.log(level, "%s: %s", reason, message)
        self.recorder.on_event(type_, reason, message, details)
        if self.is_leader():
            self.kube_events.post(type_, reason, message, details)

    def refresh_gauges(self) -> None:
        """Gauges computed at scrape time from memory: leadership, service health, the event
        store."""
        if self.elector is not None:
            # From the lease's clock, not only on changes: a follower that never led says 0
            # (the alerts' leader filter relies on it), and a leader past its renew deadline
            # says 0 at once, even while its election thread still waits for the API server.
            self.metrics.set_leader(self.is_leader())
        states = {h.name: h.status for h in self.health.services()}
        self.metrics.set_service_health(states)
        worst = next((s for s in ("unhealthy", "progressing", "unknown") if s in
                      states.values()), "healthy")
        last = self.engine.last
        sync = "Unknown" if last is None else ("Synced" if last.ok else "OutOfSync")
        self.metrics.set_app(worst if states else "unknown", sync,
                             last.revision if last else "")
        self.metrics.events_stored.set(self.events.count())
        self.metrics.events_bytes.set(self.events.size_bytes())

    def status(self) -> dict[str, Any]:
        """What /api/status shows: role, source, last pass, services, recent errors."""
        last = self.engine.last
        source: dict[str, Any] = {"type": self.cfg.source}
        if self.cfg.source == "git":
            git = self.git_source()
            source.update(url=git.url if git else "", ref=self.cfg.git.ref)
        out: dict[str, Any] = {
            "instance": self.cfg.instance, "namespace": self.cfg.namespace,
            "app": self.cfg.app_name, "time": now_rfc3339(),
            "leader": {"isLeader": self.is_leader(), "identity": self.elector.identity
                       if self.elector else "self", "holder": self.leader_identity()},
            "source": {**source, "revision": last.revision if last else ""},
            "loop": {"interval": self.cfg.loop.interval, "passes": self.loop.passes,
                     "consecutiveFailures": self.loop.failures},
        }
        if last is not None:
            out["lastPass"] = {"operation": last.operation, "trigger": last.trigger,
                               "time": last.started, "duration": round(last.duration, 4),
                               "result": "success" if last.ok else "failed",
                               "counts": last.results.counts()}
            if last.error:
                out["lastPass"]["error"] = last.error.to_dict()
        return out


def run(cfg: Config) -> None:
    """Run the controller and its API under gunicorn until SIGTERM/SIGINT."""
    from controller.api.server import serve

    serve(cfg)


__all__ = ["Controller", "run"]
