"""Every other instance's health reporter on one thread (runtime/reporting.py Reporters):
a reporter is evaluated when its monitor changed, or once per SAFETY, never otherwise; one
failing reporter does not starve the others (no cluster)."""

from __future__ import annotations

import threading
from typing import Any

from controller.runtime.reporting import SAFETY, Reporters


class Monitor:
    def __init__(self) -> None:
        self.version = 1

    def wait_changed(self, version: int, timeout: float) -> int:
        return self.version


class Engine:
    def __init__(self) -> None:
        self.lock = threading.Lock()  # held while a pass or operation of it runs


class Reporter:
    def __init__(self, fail: bool = False) -> None:
        self.monitor = Monitor()
        self.engine = Engine()
        self.evaluated = 0
        self.fail = fail

    def evaluate(self) -> None:
        self.evaluated += 1
        if self.fail:
            raise RuntimeError("boom")

    def poke(self) -> None:
        self.monitor.version += 1  # as HealthReporter.poke nudges its monitor


def test_a_reporter_is_evaluated_when_its_monitor_changed_or_safety_is_up() -> None:
    pool = Reporters(workers=2)
    a, b, broken = Reporter(), Reporter(), Reporter(fail=True)
    reporters: dict[str, Any] = {"a": a, "b": b, "broken": broken}
    for key, reporter in reporters.items():
        pool.add(key, reporter)
    t = 1000.0
    assert pool.round(t) == 3  # new: each looked at once
    assert pool.round(t + 1) == 0  # nothing changed: no work per instance and second
    a.monitor.version += 1
    assert pool.round(t + 2) == 1 and a.evaluated == 2 and b.evaluated == 1
    pool.poke("b")  # a pass of b wrote status
    assert pool.round(t + 3) == 1 and b.evaluated == 2
    pool.remove("a")
    assert pool.round(t + SAFETY + 5) == 2  # the safety look, at every one still there
    assert a.evaluated == 2 and broken.evaluated == 2  # failed at t, looked at again


def test_an_instance_whose_pass_runs_is_left_for_a_later_round() -> None:
    """Its evaluation would wait for the engine's lock (the whole pass) and hold up the
    others; the pass writes its conditions itself and pokes when it ends."""
    pool = Reporters()
    busy, idle = Reporter(), Reporter()
    pool.add("busy", busy)  # type: ignore[arg-type]
    pool.add("idle", idle)  # type: ignore[arg-type]
    with busy.engine.lock:
        assert pool.round(1000.0) == 1 and (busy.evaluated, idle.evaluated) == (0, 1)
    assert pool.round(1001.0) == 1 and busy.evaluated == 1
