"""The reconcile loop: when to run a pass, never two at once.

A pass runs at start, then every interval plus random jitter (so replicas and apps do not
align), and at once when something wakes the loop: a change of the DeploymentParameters
object, a new Git revision, a webhook or an API call. A failed pass is retried with
exponential backoff, but any wake-up (e.g. a newer Git revision) runs a fresh pass right
away instead of waiting out the retry of the older one. Stopping lets the current pass
finish.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

from controller.config import LoopSettings
from controller.reconcile.engine import Engine, Report

log = logging.getLogger(__name__)


class Loop:
    def __init__(self, engine: Engine, settings: LoopSettings,
                 rng: random.Random | None = None,
                 on_report: Callable[[Report], None] | None = None,
                 may_run: Callable[[], bool] = lambda: True) -> None:
        self.engine = engine
        self.may_run = may_run  # leadership: only the leader runs passes
        self.settings = settings
        self.rng = rng or random.Random()
        self.on_report = on_report
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._reasons: list[str] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.failures = 0
        self.passes = 0

    def wake(self, reason: str) -> None:
        """Run a pass as soon as the current one (if any) ends."""
        with self._lock:
            if reason not in self._reasons:
                self._reasons.append(reason)
        self._wake.set()

    def start(self) -> Loop:
        self._thread = threading.Thread(target=self._run, name="reconcile-loop", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the current pass; wait for it up to `timeout`."""
        self._stop.set()
        self._wake.set()
        if self._thread and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def next_delay(self) -> float:
        s = self.settings
        if self.failures:
            return float(min(s.retry_backoff * 2 ** (self.failures - 1), s.retry_backoff_max,
                             s.interval))
        return s.interval * (1 + s.jitter * self.rng.random())

    def _run(self) -> None:
        trigger = "start"
        while not self._stop.is_set():
            if not self.may_run():
                # Followers wait to be woken (on becoming leader) or re-check each interval.
                self._wake.wait(self.settings.interval)
                with self._lock:
                    self._wake.clear()
                    self._reasons = []
                trigger = "leader"
                continue
            report = self.engine.reconcile(trigger)
            self.passes += 1
            self.failures = 0 if report.ok else self.failures + 1
            if self.on_report:
                try:
                    self.on_report(report)
                except Exception:
                    log.exception("report hook failed")
            if not report.ok:
                log.warning("pass failed (%d in a row): %s", self.failures,
                            report.error.message if report.error else
                            f"{len(report.results.failed)} object(s) failed")
            woken = self._wake.wait(self.next_delay())
            if self._stop.is_set():
                break
            with self._lock:
                self._wake.clear()
                reasons, self._reasons = self._reasons, []
            trigger = ",".join(reasons) if woken and reasons else (
                "retry" if self.failures else "interval")
