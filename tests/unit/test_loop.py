"""The loop's timing rules, with a stand-in engine (the loop's own boundary)."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest

from controller.config import LoopSettings
from controller.errors import ReconciliationError
from controller.reconcile.applying import Results
from controller.reconcile.engine import Report
from controller.runtime.loop import Loop
from tests.support.waiting import wait_for


class FakeEngine:
    """Records triggers; fails while `failing` is set; can hold a pass open."""

    def __init__(self) -> None:
        self.triggers: list[str] = []
        self.failing = False
        self.running = 0
        self.max_running = 0
        self.release = threading.Event()
        self.release.set()
        self._lock = threading.Lock()

    def reconcile(self, trigger: str = "interval") -> Report:
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        self.release.wait(10)
        with self._lock:
            self.running -= 1
            self.triggers.append(trigger)
        report = Report("reconcile", [], trigger, results=Results())
        if self.failing:
            report.error = ReconciliationError("boom")
        return report


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def loop(engine: FakeEngine) -> Iterator[Loop]:
    lp = Loop(engine, LoopSettings(interval=3600, jitter=0.1, retry_backoff=600,
                                   retry_backoff_max=900),
              rng=random.Random(1))
    yield lp
    engine.release.set()
    lp.stop(5)


def test_first_pass_at_start_then_interval_with_jitter(loop: Loop, engine: FakeEngine) -> None:
    loop.start()
    wait_for(lambda: engine.triggers == ["start"], message="first pass")
    delays = {loop.next_delay() for _ in range(20)}
    assert all(3600 <= d <= 3960 for d in delays)
    assert len(delays) > 1  # jitter


def test_wake_runs_a_pass_at_once(loop: Loop, engine: FakeEngine) -> None:
    loop.start()
    wait_for(lambda: engine.triggers == ["start"], message="first pass")
    loop.wake("resource")
    wait_for(lambda: engine.triggers == ["start", "resource"], message="woken pass")


def test_a_new_trigger_replaces_the_backoff_of_a_failed_pass(loop: Loop,
                                                              engine: FakeEngine) -> None:
    engine.failing = True
    loop.start()
    wait_for(lambda: loop.failures == 1, message="a failed pass")
    assert loop.next_delay() == 600  # the backoff before a retry, not the interval
    engine.failing = False
    loop.wake("git")  # a newer revision: run now, not after the backoff
    wait_for(lambda: engine.triggers[-1:] == ["git"] and loop.failures == 0,
             message="the new revision's pass")


def test_passes_never_overlap_and_wakes_coalesce(loop: Loop, engine: FakeEngine) -> None:
    engine.release.clear()
    loop.start()
    wait_for(lambda: engine.running == 1, message="a pass in progress")
    for reason in ("resource", "api", "resource", "webhook"):
        loop.wake(reason)
    engine.release.set()
    wait_for(lambda: len(engine.triggers) == 2, message="one more pass for all wakes")
    assert engine.triggers[1] == "resource,api,webhook"
    assert engine.max_running == 1


def test_followers_do_not_run_passes(engine: FakeEngine) -> None:
    leading = threading.Event()
    lp = Loop(engine, LoopSettings(interval=3600), may_run=leading.is_set)
    lp.start()
    try:
        lp.wake("resource")
        assert not wait_for_quiet(engine)
        leading.set()
        lp.wake("leader")
        wait_for(lambda: engine.triggers == ["leader"], message="pass once leading")
    finally:
        lp.stop(5)


def wait_for_quiet(engine: FakeEngine) -> bool:
    """True if a pass started within a short observation window."""
    try:
        wait_for(lambda: engine.triggers, timeout=0.5, message="no pass")
    except AssertionError:
        return False
    return True
