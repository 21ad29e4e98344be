"""Event stores for tests: open as many as a test needs on one store setting (SQLite or
PostgreSQL), each a "replica" or a restart, all closed at the end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from controller.adapters.store.events import EventStore
from controller.adapters.store.sql import open_database
from controller.config import StoreSettings

Opener = Callable[..., EventStore]


def event_stores(settings: StoreSettings, tmp_path: Path) -> Iterator[Opener]:
    """Yields `open_(**EventStore kwargs)`; closes every store it opened afterwards."""
    opened: list[EventStore] = []

    def open_(**kwargs: Any) -> EventStore:
        s = EventStore(open_database(settings, tmp_path / "events.db"), own_db=True,
                       **kwargs)
        opened.append(s)
        return s

    yield open_
    for s in opened:
        s.close()
