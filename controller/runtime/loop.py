"""The reconcile loop: when to run each instance's pass, never two of one at once.

Every instance (a DeploymentParameters object) has its own loop state. A pass runs at
start, then every interval plus random jitter (so replicas and apps do not align), and at
once when something wakes the instance: a change of its object, a new Git revision, a
webhook or an API call. A failed pass is retried with exponential backoff, but any
wake-up (e.g. a newer Git revision) runs a fresh pass right away instead of waiting out
the retry of the older one. Stopping lets the current passes finish.

The instances share one work queue (workqueue.py): passes of different instances run in
parallel up to `concurrency`, wake-ups of one instance coalesce, and one instance starts
at most once per `min_gap` seconds. Two hooks decide whether a pass may run: `may_run`
(for the whole loop) and `owns(key)` (per instance: the controller's `owns`, i.e. the
leader for its own instance, the holder of the instance's shard Lease for the others;
sharding.py). A refused instance is looked at again after an interval, or at once when
woken (e.g. on becoming leader, or on taking its shard).

A pass runs inside `acting_for(key)` (kube.py), so its writes are fenced by that
instance's ownership, and each pass that runs is logged as one line, "pass of <key> by
<identity> started <unix time> ended <unix time> ...": which replica ran it and when, so
ownership and non-overlap can be checked across replicas from their logs.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Protocol

from controller.adapters.kube import NotLeaderError, acting_for
from controller.config import LoopSettings
from controller.reconcile.engine import Report
from controller.runtime.workqueue import WorkQueue

log = logging.getLogger(__name__)


class Reconciler(Protocol):
    """What the loop runs for one instance (the engine, or the controller's wrapper)."""

    def reconcile(self, trigger: str = "interval") -> Report: ...


@dataclass
class LoopState:
    """One instance's loop state: what ran, how it went."""

    reconciler: Reconciler
    passes: int = 0
    failures: int = 0
    last: Report | None = field(default=None, repr=False)


class Loop:
    """The passes of every instance. Built with one `engine`, it is that engine's loop
    under `key` (the controller's own instance); `add` and `remove` manage the others."""

    def __init__(self, engine: Reconciler | None, settings: LoopSettings,
                 rng: random.Random | None = None,
                 on_report: Callable[[Report], None] | None = None,
                 may_run: Callable[[], bool] = lambda: True, *,
                 key: Hashable = "", concurrency: int = 1, min_gap: float = 0.0,
                 owns: Callable[[Hashable], bool] = lambda _key: True) -> None:
        self.may_run = may_run  # leadership: only the leader runs passes
        self.owns = owns  # per instance: sharding's "is this one mine?"
        self.identity = "self"  # this replica's, in the pass records
        self.settings = settings
        self.rng = rng or random.Random()
        self.on_report = on_report
        self.key = key
        self._lock = threading.Lock()
        self._states: dict[Hashable, LoopState] = {}
        self.queue: WorkQueue[Hashable] = WorkQueue(self._process, concurrency, min_gap,
                                                    name="reconcile")
        self._started = False
        if engine is not None:
            self._states[key] = LoopState(engine)

    # -- instances ----------------------------------------------------------------------

    def add(self, key: Hashable, reconciler: Reconciler, reason: str = "start") -> bool:
        """Reconcile `key` from now on (a first pass at once once started); False when it
        was known already (then it is only woken)."""
        with self._lock:
            known = key in self._states
            if not known:
                self._states[key] = LoopState(reconciler)
            started = self._started
        if started:
            self.queue.add(key, reason)
        return not known

    def remove(self, key: Hashable) -> None:
        """Forget `key`: no more passes (one in progress finishes)."""
        with self._lock:
            self._states.pop(key, None)
        self.queue.forget(key)

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._states)

    def state(self, key: Hashable | None = None) -> LoopState | None:
        with self._lock:
            return self._states.get(self.key if key is None else key)

    # -- the controller's own instance (and the loop's historical interface) -------------

    @property
    def passes(self) -> int:
        state = self.state()
        return state.passes if state else 0

    @property
    def failures(self) -> int:
        state = self.state()
        return state.failures if state else 0

    @property
    def _reasons(self) -> list[str]:
        """The wake-ups waiting for the own instance's next pass."""
        return self.queue.pending(self.key)

    # -- waking -------------------------------------------------------------------------

    def wake(self, reason: str, key: Hashable | None = None) -> None:
        """Run a pass of `key` (default: the own instance) as soon as its current one (if
        any) ends; reasons coalesce into the trigger."""
        key = self.key if key is None else key
        with self._lock:
            # Before the start, the first pass ("start") reads everything anyway.
            if key not in self._states or not self._started:
                return
        self.queue.add(key, reason)

    def wake_all(self, reason: str) -> None:
        with self._lock:
            keys = list(self._states) if self._started else []
        for key in keys:
            self.queue.add(key, reason)

    def start(self) -> Loop:
        with self._lock:
            self._started = True
            keys = list(self._states)
        for key in keys:
            self.queue.add(key, "start")
        self.queue.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the current passes; wait for them up to `timeout`."""
        self.queue.stop(timeout)

    def next_delay(self, key: Hashable | None = None) -> float:
        s = self.settings
        state = self.state(key)
        failures = state.failures if state else 0
        if failures:
            return float(min(s.retry_backoff * 2 ** (failures - 1), s.retry_backoff_max,
                             s.interval))
        return s.interval * (1 + s.jitter * self.rng.random())

    # -- one pass -----------------------------------------------------------------------

    def _process(self, key: Hashable, reasons: list[str]) -> float | None:
        state = self.state(key)
        if state is None:
            return None  # removed meanwhile
        if not self.may_run() or not self.owns(key):
            # Followers (and instances another replica owns) wait to be woken, or look
            # again each interval; the wake-ups meanwhile are dropped, not replayed.
            return self.settings.interval
        trigger = ",".join(reasons) if reasons else ("retry" if state.failures else
                                                     "interval")
        started = time.time()
        with acting_for(key):  # its writes are fenced by its owner (kube.py)
            report = state.reconciler.reconcile(trigger)
        ended = time.time()
        shown = "/".join(key) if isinstance(key, tuple) else str(key)
        refused = isinstance(report.error, NotLeaderError)  # ownership lapsed meanwhile
        log.info("pass of %s by %s started %.6f ended %.6f (%s, %s)", shown, self.identity,
                 started, ended, trigger,
                 "refused" if refused else "ok" if report.ok else "failed",
                 extra={"trigger": trigger, **({"namespace": key[0], "instance": key[1]}
                                               if isinstance(key, tuple) else {})})
        if refused:
            # Ownership lapsed during the pass: its writes stopped there, on purpose. Not a
            # failure to back off from: it runs again when this replica owns it again
            # (woken on taking the shard, or becoming leader), else at an interval.
            return self.settings.interval
        state.passes += 1
        state.failures = 0 if report.ok else state.failures + 1
        state.last = report
        if self.on_report:
            try:
                self.on_report(report)
            except Exception:
                log.exception("report hook failed")
        if not report.ok:
            log.warning("%s: pass failed (%d in a row): %s", report.instance or key,
                        state.failures, report.error.message if report.error else
                        f"{len(report.results.failed)} object(s) failed")
        if self.state(key) is not state:
            return None  # removed during the pass (finalised)
        return self.next_delay(key)
