"""Health between passes: conditions that follow the services, and events at each turn.

A pass happens every minute at best; a Pod that cannot pull its image fails seconds after
it. `HealthReporter` follows one instance's `HealthMonitor` (event-driven: it wakes on
every watched change, then waits `delay` seconds so a burst of watch events costs one
evaluation) and

- rewrites the DeploymentParameters object's conditions (`Engine.refresh_health`) when the
  services' health changed since it last looked or a pass ran: only then, and only on the
  leader (a follower's write is refused by Kube.write_guard; it does not try);
- records health transitions in the event store, on every replica (each serves its own
  API): an object that turns unhealthy is an `error` event (reason, message, hint, object,
  service, instance), a service healthy again a `success` event (`Recovered`) for each
  object that had failed. An error is recorded once per (object, reason) for as long as
  its service stays unhealthy; the leader also posts it as a Warning Event on the
  DeploymentParameters object, for `kubectl describe`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from controller.adapters.kube import KubeError, NotLeaderError
from controller.adapters.store.events import EventInput, EventStore
from controller.model.health import DOWN, HEALTHY, SUSPENDED, UNHEALTHY, UNKNOWN, ServiceHealth
from controller.reconcile.engine import Engine
from controller.runtime.observing import HealthMonitor

log = logging.getLogger(__name__)

DELAY = 1.0  # seconds from a watched change to the evaluation (a burst costs one)
SAFETY = 30.0  # seconds between evaluations when nothing wakes the reporter
_RECOVERED = frozenset({HEALTHY, SUSPENDED, DOWN})


class Poster(Protocol):
    """KubeEvents.post: a Kubernetes Event on the DeploymentParameters object
    `namespace/instance`."""

    def __call__(self, type_: str, reason: str, message: str, details: Mapping[str, Any], *,
                 instance: str | None = None, namespace: str | None = None) -> None: ...


class HealthReporter:
    """Follows `monitor`; writes conditions through `engine`, events into `store`."""

    def __init__(self, monitor: HealthMonitor, engine: Engine, store: EventStore, *,
                 is_leader: Callable[[], bool],
                 post: Poster | None = None,
                 on_conditions: Callable[[dict[str, str]], None] | None = None,
                 delay: float = DELAY) -> None:
        self.monitor = monitor
        self.engine = engine
        self.store = store
        self.is_leader = is_leader
        self.post = post
        self.on_conditions = on_conditions
        self.delay = delay
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._written: Any = None  # the health signature the conditions were written for
        # Moves on every poke: an evaluation that saw it move (a pass wrote status while
        # it waited for the engine's lock) has not written for what it read.
        self._pokes = 0
        self._pokes_lock = threading.Lock()
        # service -> {(resource, reason): message} recorded during its unhealthy spell
        self._failing: dict[str, dict[tuple[str, str], str]] = {}

    def start(self) -> HealthReporter:
        self._thread = threading.Thread(target=self._run, name="health-reporter",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.monitor.nudge()
        if self._thread is not None:
            self._thread.join(timeout)

    def poke(self) -> None:
        """A pass wrote status: look again (its conditions may assume a rollout)."""
        with self._pokes_lock:
            self._pokes += 1
            self._written = None
        self.monitor.nudge()

    def _run(self) -> None:
        version = 0
        while not self._stop.is_set():
            # A poke nudges the monitor, so it wakes this wait too.
            if self.monitor.wait_changed(version, SAFETY) != version and \
                    self._stop.wait(self.delay):  # the rest of a burst lands meanwhile
                return
            version = self.monitor.wait_changed(-1, 0)  # the version evaluated below
            try:
                self.evaluate()
            except Exception:  # never end the thread: the next change tries again
                log.exception("health reporter failed")

    def evaluate(self) -> None:
        """Record transitions and, on the leader, rewrite changed conditions."""
        if not self.monitor.synced:
            return
        pokes = self._pokes
        services = self.monitor.services()
        self._record(services)
        signature = tuple((h.name, h.status, h.reason, tuple(
            (k, o.status, o.reason) for k, o in h.failing)) for h in services)
        if signature == self._written or not self.is_leader():
            return
        try:
            conditions = self.engine.refresh_health()
        except NotLeaderError:
            return
        except KubeError as e:  # retried at the next change (or the safety wake-up)
            log.warning("cannot write health conditions: %s", e.message)
            return
        with self._pokes_lock:
            # A pass that ended while refresh_health waited for its lock wrote conditions
            # for a later health than `services`: remembering `signature` would skip the
            # write when the health comes back to it (Ready left False after a rollout).
            if self._pokes == pokes:
                self._written = signature
        if conditions and self.on_conditions is not None:
            self.on_conditions(conditions)

    def _record(self, services: list[ServiceHealth]) -> None:
        instance = self.engine.cfg.instance
        namespace = self.engine.cfg.namespace  # an instance is (namespace, name)
        events: list[EventInput] = []
        for h in services:
            if h.status == UNKNOWN:
                continue  # not observed (yet): no news either way
            spell = self._failing.get(h.name)
            if h.status == UNHEALTHY:
                spell = self._failing.setdefault(h.name, {})
                for key, o in h.failing:
                    if o.status != UNHEALTHY or (key, o.reason) in spell:
                        continue
                    message = f"{key}: {o.reason}: {o.message}" if o.message else \
                        f"{key}: {o.reason}"
                    spell[(key, o.reason)] = message
                    events.append({
                        "type": "error", "reason": o.reason or "Unhealthy",
                        "message": f"service {h.name} unhealthy: {message}",
                        "resource": key, "service": h.name, "instance": instance,
                        "namespace": namespace,
                        "details": {"object": key, "service": h.name, "instance": instance,
                                    "namespace": h.namespace, "status": o.status,
                                    "hint": o.hint, **({"cause": o.details} if o.details
                                                       else {})}})
            elif spell is not None and h.status in _RECOVERED:
                del self._failing[h.name]
                for key in sorted({k for k, _ in spell}):
                    events.append({
                        "type": "success", "reason": "Recovered",
                        "message": f"service {h.name} is {h.status} again: {key} recovered",
                        "resource": key, "service": h.name, "instance": instance,
                        "namespace": namespace,
                        "details": {"object": key, "service": h.name, "instance": instance,
                                    "status": h.status,
                                    "was": sorted(m for m in spell.values()
                                                  if m.startswith(key + ":"))}})
        if not events:
            return
        try:
            self.store.add_many(events)
        except Exception as error:  # the event store must never stop the reporter
            log.warning("cannot record health events: %s", error)
        if self.post is not None and self.is_leader():
            for event in events:
                if event["type"] == "error":
                    self.post("error", str(event.get("reason", "")), event["message"],
                              event.get("details") or {}, instance=instance,
                              namespace=namespace)


class Reporters:
    """The health reporters of every other instance, evaluated on one thread.

    A reporter thread per instance is 1,000 threads for 1,000 instances; without any,
    another instance's conditions only followed its health at its next pass, so a fresh
    instance stayed Ready=False for a whole interval after its Deployment became available
    (bench_scale: 100 instances Ready 60 s after start, their passes done in 20). Here one
    thread looks at every monitor's version each `delay` seconds (a counter read under its
    lock) and evaluates the reporters whose monitor changed, or every `SAFETY` seconds,
    as each HealthReporter's own thread would (a burst of changes within `delay` costs one
    evaluation). An evaluation is a GET (and a PATCH when the conditions change), so up
    to `workers` run side by side; an instance whose pass or operation is running is left
    for a later round (its evaluation would wait for the engine's lock, and the pass
    writes its conditions and pokes when it ends): evaluated one by one, 500 instances'
    reporters took minutes to catch up with their passes (bench_scale)."""

    def __init__(self, delay: float = DELAY, workers: int = 4) -> None:
        self.delay = delay
        self.workers = workers
        self._lock = threading.Lock()
        # key -> (reporter, monitor version evaluated, monotonic time of that evaluation)
        self._reporters: dict[Any, tuple[HealthReporter, int, float]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Kept across rounds: one started every second would start `workers` threads each.
        self._pool: ThreadPoolExecutor | None = None

    def add(self, key: Any, reporter: HealthReporter) -> None:
        with self._lock:
            self._reporters[key] = (reporter, 0, 0.0)

    def remove(self, key: Any) -> None:
        with self._lock:
            self._reporters.pop(key, None)

    def poke(self, key: Any) -> None:
        """A pass of `key` wrote status: look again at the next round."""
        with self._lock:
            found = self._reporters.get(key)
        if found is not None:
            found[0].poke()

    def start(self) -> Reporters:
        self._thread = threading.Thread(target=self._run, name="health-reporters",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def _run(self) -> None:
        while not self._stop.wait(self.delay):
            self.round(time.monotonic())

    def round(self, now: float) -> int:
        """Evaluate every reporter whose monitor changed (or whose SAFETY is up), but for
        those whose engine is busy; returns how many."""
        with self._lock:
            items = list(self._reporters.items())
        due = []
        for key, (reporter, seen, at) in items:
            version = reporter.monitor.wait_changed(-1, 0)  # the current one, no wait
            if (version != seen or now - at >= SAFETY) and not reporter.engine.lock.locked():
                due.append((key, reporter, version))

        def evaluate(item: tuple[Any, HealthReporter, int]) -> None:
            key, reporter, version = item
            if self._stop.is_set():
                return
            try:
                reporter.evaluate()
            except Exception:  # one instance's failure must not starve the others
                log.exception("health reporter of %s failed", key)
            with self._lock:
                if key in self._reporters:
                    self._reporters[key] = (reporter, version, now)

        if len(due) > 1 and self.workers > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.workers,
                                                thread_name_prefix="health-reporter")
            list(self._pool.map(evaluate, due))
        else:
            for item in due:
                evaluate(item)
        return len(due)


__all__ = ["HealthReporter", "Reporters"]
