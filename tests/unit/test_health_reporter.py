"""One instance's health reporter (runtime/reporting.py HealthReporter): it rewrites the
conditions when the services' health changed since it last wrote them, or a pass wrote
status since (a poke). An evaluation can wait for the engine's lock while a pass runs: the
pass's final status and poke then land between the health it read and its own write, and
must not be forgotten (no cluster)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from controller.config import Config
from controller.model.health import HEALTHY, ServiceHealth
from controller.runtime.reporting import HealthReporter


class Monitor:
    synced = True

    def __init__(self) -> None:
        self.health = [ServiceHealth("redis", "default", HEALTHY, "2026-11-27T00:00:00Z")]

    def services(self) -> list[ServiceHealth]:
        return list(self.health)

    def nudge(self) -> None:
        pass


class Engine:
    """refresh_health as the engine's: under its lock, where a pass may have run first."""

    def __init__(self) -> None:
        self.cfg = Config()
        self.refreshed = 0
        self.meanwhile: Callable[[], None] = lambda: None  # what runs before it gets the lock

    def refresh_health(self) -> dict[str, str]:
        self.meanwhile()
        self.meanwhile = lambda: None
        self.refreshed += 1
        return {"Ready": "True"}


class Store:
    def add_many(self, events: Any) -> list[Any]:
        return []


def reporter() -> tuple[HealthReporter, Engine]:
    engine = Engine()
    return HealthReporter(Monitor(), engine, Store(),  # type: ignore[arg-type]
                          is_leader=lambda: True), engine


def test_an_unchanged_health_is_written_once() -> None:
    r, engine = reporter()
    r.evaluate()
    r.evaluate()
    assert engine.refreshed == 1
    r.poke()  # a pass wrote status: its conditions may assume a rollout
    r.evaluate()
    assert engine.refreshed == 2


def test_a_pass_that_ends_while_an_evaluation_waits_is_looked_at_again() -> None:
    """The evaluation read 'healthy' (before the change), then waited for the pass, which
    wrote Ready=False (rolling out) and poked: once the rollout is done the health reads
    'healthy' again, the same as the evaluation had read, and must still be written
    (CI: Ready stayed False after a change was applied)."""
    r, engine = reporter()
    r.evaluate()
    assert engine.refreshed == 1
    r.poke()  # a change: the pass starts, the health changes...
    engine.meanwhile = r.poke  # ...and the pass ends (and pokes) while this one waits
    r.evaluate()
    assert engine.refreshed == 2
    r.evaluate()  # healthy again, as read before the pass: the pass's write is not it
    assert engine.refreshed == 3
    r.evaluate()
    assert engine.refreshed == 3
