"""A work queue of keys for a fixed pool of workers: the reconcile loop's scheduler.

Why not a thread per instance: 1,000 instances would be 1,000 threads and 1,000 passes
at once after a burst. Here every key (an instance) is due at some time and holds the
reasons it was asked for; `concurrency` workers take due keys one at a time:

- de-duplication: a key is queued at most once; adding it again merges the reasons and
  keeps the earlier due time, so a burst of 1,000 changes to one key is one pass (two when
  the burst arrives while a pass runs: that pass cannot have seen the later changes);
- no overlap per key: a key being processed is never handed to a second worker; added
  meanwhile, it runs again once the first pass ends;
- per-key rate limit: a key starts at most once per `min_gap` seconds, however often it
  is woken (failure backoff is the caller's: `process` returns the next delay);
- a bound: never more than `concurrency` keys in process, whatever arrives at once;
- asked before timed: among due keys, those added with a reason (a change, a webhook, an
  API call, a start) go before those due by their timer only, so a change made while
  1,000 interval passes are due waits for a worker, not for the 1,000.

`process(key, reasons)` runs on a worker and returns the delay before the key's next
timed run (None: no timed run; it runs again only when added). The same semantics as
client-go's rate-limited work queue, in the small.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(self, process: Callable[[K, list[str]], float | None], concurrency: int = 4,
                 min_gap: float = 0.0, clock: Callable[[], float] = time.monotonic,
                 name: str = "work") -> None:
        self.process = process
        self.concurrency = max(1, concurrency)
        self.min_gap = min_gap
        self.clock = clock
        self.name = name
        self._cond = threading.Condition()
        self._due: dict[K, float] = {}  # queued keys and when they are due
        self._reasons: dict[K, list[str]] = {}
        # (due, seq, key), stale entries skipped; keys added with a reason, then the timed
        self._asked: list[tuple[float, int, K]] = []
        self._timed: list[tuple[float, int, K]] = []
        self._seq = itertools.count()
        self._running: set[K] = set()
        self._started: dict[K, float] = {}  # key -> when its last run started
        self._workers: list[threading.Thread] = []
        self._stopping = False
        self.processed = 0

    # -- adding and forgetting ----------------------------------------------------------

    def add(self, key: K, reason: str = "", delay: float = 0.0) -> None:
        """Queue `key` to run after `delay` seconds (sooner if it is queued sooner)."""
        with self._cond:
            if reason:
                reasons = self._reasons.setdefault(key, [])
                if reason not in reasons:
                    reasons.append(reason)
            self._schedule(key, self.clock() + max(0.0, delay), asked=bool(reason))
            self._cond.notify()

    def _schedule(self, key: K, due: float, asked: bool = False) -> None:
        current = self._due.get(key)
        if current is not None and current <= due:
            return
        self._due[key] = due
        heapq.heappush(self._asked if asked else self._timed, (due, next(self._seq), key))

    def forget(self, key: K) -> None:
        """Drop what is queued for `key` and its rate-limit memory (a run in progress
        finishes; its returned delay is then ignored unless the key is added again)."""
        with self._cond:
            self._due.pop(key, None)
            self._reasons.pop(key, None)
            self._started.pop(key, None)

    def pending(self, key: K) -> list[str]:
        """The reasons `key` is queued with (empty when queued by a timer, or not)."""
        with self._cond:
            return list(self._reasons.get(key, ()))

    def queued(self) -> int:
        with self._cond:
            return len(self._due)

    def running(self) -> set[K]:
        with self._cond:
            return set(self._running)

    # -- workers ------------------------------------------------------------------------

    def start(self) -> WorkQueue[K]:
        with self._cond:
            self._stopping = False
        self._workers = [threading.Thread(target=self._work, name=f"{self.name}-{i}",
                                          daemon=True) for i in range(self.concurrency)]
        for worker in self._workers:
            worker.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop taking keys; wait up to `timeout` for the runs in progress. What is queued
        stays queued (a later `start` takes it)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for worker in self._workers:
            if worker is threading.current_thread():
                continue
            worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _take(self) -> tuple[K, list[str]] | None:
        """The next due key not in process (waiting for one), or None when stopping."""
        with self._cond:
            while not self._stopping:
                now = self.clock()
                found, wait = self._due_in(self._asked, now)
                if found is None:
                    found, later = self._due_in(self._timed, now)
                    wait = later if wait is None else wait if later is None else \
                        min(wait, later)
                if found is not None:
                    del self._due[found]
                    self._running.add(found)
                    self._started[found] = now
                    return found, self._reasons.pop(found, [])
                self._cond.wait(wait)
            return None

    def _due_in(self, heap: list[tuple[float, int, K]],
                now: float) -> tuple[K | None, float | None]:
        """Pop the first due key of `heap` not in process (under the lock); else None and
        the seconds until its next one is due (None: nothing queued there)."""
        busy: list[tuple[float, int, K]] = []
        found: K | None = None
        wait: float | None = None
        while heap:
            due, seq, key = heap[0]
            if self._due.get(key) != due:
                heapq.heappop(heap)  # superseded by an earlier entry, or forgotten
                continue
            if key in self._running:
                busy.append(heapq.heappop(heap))  # its run ends first
                continue
            earliest = self._started.get(key, float("-inf")) + self.min_gap
            if earliest > due:  # rate limit: push the key back to its earliest start
                heapq.heappop(heap)
                self._due[key] = earliest
                heapq.heappush(heap, (earliest, seq, key))
                continue
            if due > now:
                wait = due - now
                break
            heapq.heappop(heap)
            found = key
            break
        for entry in busy:
            heapq.heappush(heap, entry)
        return found, wait

    def _work(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            key, reasons = taken
            delay: float | None = None
            try:
                delay = self.process(key, reasons)
            except Exception:  # a bug in one key's run must not stop the worker
                log.exception("%s: processing %r failed", self.name, key)
            with self._cond:
                self._running.discard(key)
                self.processed += 1
                if delay is not None and key in self._started:  # not forgotten meanwhile
                    self._schedule(key, self.clock() + max(0.0, delay))
                self._cond.notify_all()


__all__ = ["WorkQueue"]
