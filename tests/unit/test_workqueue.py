"""The work queue's rules without a cluster: de-duplication, no overlap per key, the
concurrency bound, the per-key rate limit, timed re-runs, asked before timed and
forgetting."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator

import pytest

from controller.config import LoopSettings
from controller.errors import ReconciliationError
from controller.reconcile.applying import Results
from controller.reconcile.engine import Report
from controller.runtime.loop import Loop
from controller.runtime.workqueue import WorkQueue
from tests.support.waiting import wait_for


class Recorder:
    """Records runs (key, reasons, start, end); holds them open while `gate` is clear."""

    def __init__(self, hold: float = 0.0, delay: float | None = None) -> None:
        self.runs: list[tuple[str, list[str], float, float]] = []
        self.hold = hold
        self.delay = delay
        self.gate = threading.Event()
        self.gate.set()
        self.running: dict[str, int] = {}
        self.now = 0
        self.peak = 0
        self.overlap = False
        self._lock = threading.Lock()

    def __call__(self, key: str, reasons: list[str]) -> float | None:
        with self._lock:
            self.running[key] = self.running.get(key, 0) + 1
            self.overlap |= self.running[key] > 1
            self.now += 1
            self.peak = max(self.peak, self.now)
        start = time.monotonic()
        self.gate.wait(10)
        if self.hold:
            time.sleep(self.hold)  # a pass takes time (not a test waiting)
        with self._lock:
            self.running[key] -= 1
            self.now -= 1
            self.runs.append((key, reasons, start, time.monotonic()))
        return self.delay

    def of(self, key: str) -> list[tuple[str, list[str], float, float]]:
        with self._lock:
            return [r for r in self.runs if r[0] == key]


@pytest.fixture
def queues() -> Iterator[list[WorkQueue[str]]]:
    made: list[WorkQueue[str]] = []
    yield made
    for q in made:
        q.stop(5)


def test_a_burst_of_changes_to_one_key_is_one_or_two_runs(queues: list[WorkQueue[str]]
                                                          ) -> None:
    rec = Recorder()
    q = WorkQueue(rec, concurrency=4)
    queues.append(q)
    rec.gate.clear()
    q.start()
    q.add("a", "first")
    wait_for(lambda: rec.now == 1, message="the first run in progress")
    for i in range(1000):  # while it runs: all of them are one more run
        q.add("a", f"change-{i % 3}")
    rec.gate.set()
    wait_for(lambda: len(rec.of("a")) == 2 and q.queued() == 0 and not q.running(),
             message="two runs")
    assert [r[1] for r in rec.runs] == [["first"], ["change-0", "change-1", "change-2"]]
    assert not rec.overlap

    q2 = WorkQueue(rec, concurrency=4)  # a burst before any run starts: one run
    queues.append(q2)
    for _ in range(1000):
        q2.add("b", "change")
    q2.start()
    wait_for(lambda: len(rec.of("b")) == 1 and q2.queued() == 0 and not q2.running(),
             message="one run")
    assert q2.processed == 1


def test_a_thousand_keys_at_once_never_exceed_the_concurrency(queues: list[WorkQueue[str]]
                                                              ) -> None:
    rec = Recorder(hold=0.002)
    q = WorkQueue(rec, concurrency=4)
    queues.append(q)
    q.start()
    for i in range(1000):
        q.add(f"k{i}", "changed")
    wait_for(lambda: len(rec.runs) == 1000, timeout=60, message="every key run")
    assert rec.peak == 4  # in parallel, and never more
    assert not rec.overlap
    assert {r[0] for r in rec.runs} == {f"k{i}" for i in range(1000)}


def test_one_key_starts_at_most_once_per_min_gap(queues: list[WorkQueue[str]]) -> None:
    rec = Recorder()
    q = WorkQueue(rec, concurrency=2, min_gap=0.3)
    queues.append(q)
    q.start()
    started = time.monotonic()
    while time.monotonic() - started < 1.0:  # wake it continuously for a second
        q.add("a", "poke")
        time.sleep(0.01)  # the caller's pace, not a test waiting for a condition
    wait_for(lambda: q.queued() == 0 and not q.running(), message="drained")
    starts = [r[2] for r in rec.of("a")]
    assert 2 <= len(starts) <= 5
    assert all(b - a >= 0.29 for a, b in itertools.pairwise(starts))


def test_the_returned_delay_schedules_the_next_run_and_a_wake_comes_sooner(
        queues: list[WorkQueue[str]]) -> None:
    rec = Recorder(delay=3600)
    q = WorkQueue(rec, concurrency=1)
    queues.append(q)
    q.start()
    q.add("a", "start")
    wait_for(lambda: len(rec.runs) == 1 and q.queued() == 1, message="the first run")
    assert q.pending("a") == []  # queued by its timer, an hour away
    q.add("a", "woken")
    wait_for(lambda: len(rec.runs) == 2, message="the woken run, long before the timer")
    assert rec.runs[1][1] == ["woken"]


def test_a_key_asked_for_goes_before_keys_due_by_their_timer(
        queues: list[WorkQueue[str]]) -> None:
    """A change made while many interval passes are due waits for a worker, not for them."""
    rec = Recorder(delay=0.0)  # each run is due again at once, by its timer
    q = WorkQueue(rec, concurrency=1)
    queues.append(q)
    keys = [f"k{i}" for i in range(10)]
    q.start()
    for key in keys:
        q.add(key, "start")
    wait_for(lambda: all(rec.of(k) for k in keys), message="every key's first run")
    rec.gate.clear()  # the next run holds the worker; the other keys are due meanwhile
    wait_for(lambda: rec.now == 1, message="a run holding the only worker")
    q.add("changed", "resource")
    done = len(rec.runs)
    rec.gate.set()
    wait_for(lambda: len(rec.runs) >= done + 2, message="two more runs")
    assert rec.runs[done + 1][0] == "changed", [r[0] for r in rec.runs[done:done + 5]]
    q.stop(5)


def test_a_forgotten_key_does_not_run_again(queues: list[WorkQueue[str]]) -> None:
    rec = Recorder(delay=0.05)
    q = WorkQueue(rec, concurrency=1)
    queues.append(q)
    rec.gate.clear()
    q.start()
    q.add("a", "start")
    wait_for(lambda: rec.now == 1, message="a run in progress")
    q.forget("a")  # e.g. its object was finalised during the pass
    rec.gate.set()
    wait_for(lambda: len(rec.runs) == 1 and not q.running(), message="the run finished")
    assert q.queued() == 0  # its returned delay was ignored


# -- the loop over the queue: one state per instance -------------------------------------------


class Instance:
    """A stand-in engine for one instance: records triggers, can fail."""

    def __init__(self, name: str, failing: bool = False) -> None:
        self.name = name
        self.failing = failing
        self.triggers: list[str] = []

    def reconcile(self, trigger: str = "interval") -> Report:
        self.triggers.append(trigger)
        report = Report("reconcile", [], trigger, instance=self.name, results=Results())
        if self.failing:
            report.error = ReconciliationError("boom")
        return report


def test_each_instance_has_its_own_loop_state_and_the_owns_hook_decides() -> None:
    mine, failing, theirs = Instance("a"), Instance("b", failing=True), Instance("c")
    loop = Loop(mine, LoopSettings(interval=3600, retry_backoff=600, retry_backoff_max=900),
                key="a", concurrency=2, owns=lambda key: key != "c")
    loop.add("b", failing)
    loop.add("c", theirs)
    loop.start()
    try:
        wait_for(lambda: mine.triggers == ["start"] and failing.triggers == ["start"],
                 message="both first passes")

        def ended(key: str) -> bool:  # a pass's outcome is recorded after reconcile returns
            state = loop.state(key)
            return state is not None and state.last is not None

        wait_for(lambda: ended("a") and ended("b"), message="both first passes recorded")
        state_a, state_b = loop.state("a"), loop.state("b")
        assert state_a is not None and state_b is not None
        assert (state_a.failures, state_b.failures) == (0, 1)
        assert loop.next_delay("b") == 600 and loop.next_delay("a") >= 3600
        loop.wake("api", "a")  # wakes only its own instance
        wait_for(lambda: mine.triggers == ["start", "api"], message="a woken")
        assert failing.triggers == ["start"]
        loop.add("d", Instance("d"))  # added while running: its first pass at once
        wait_for(lambda: (s := loop.state("d")) is not None and s.passes == 1,
                 message="d's first pass")
        loop.remove("b")
        loop.wake("api", "b")  # forgotten: nothing runs
        assert loop.state("b") is None
        assert theirs.triggers == []  # another replica's (owns says no): never run
    finally:
        loop.stop(5)
