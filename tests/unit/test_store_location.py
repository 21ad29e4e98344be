"""/api/status names where durable state lives (runtime/controller.store_location): the
SQLite file, or on PostgreSQL the kind and a URL without credentials (it used to name the
unused events file even on PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

from controller.config import Config, EventSettings, StoreSettings
from controller.runtime.controller import store_location


def test_sqlite_names_its_file() -> None:
    cfg = Config(events=EventSettings(path=Path("/var/lib/conductor/events.db")))
    assert store_location(cfg, "sqlite") == {"kind": "sqlite",
                                             "path": "/var/lib/conductor/events.db"}
    url = Config(store=StoreSettings(url="sqlite:///data/shared.db"))
    assert store_location(url, "sqlite") == {"kind": "sqlite", "path": "/data/shared.db"}


def test_postgresql_shows_a_url_without_credentials() -> None:
    cfg = Config(store=StoreSettings(
        url="postgresql://conductor:s3cret@db.example:5432/conductor?sslmode=require"))
    shown = store_location(cfg, "postgresql")
    assert shown == {"kind": "postgresql",
                     "url": "postgresql://conductor@db.example:5432/conductor"}
    assert "s3cret" not in str(shown)
    v6 = Config(store=StoreSettings(url="postgresql://[::1]/db"))
    assert store_location(v6, "postgresql")["url"] == "postgresql://[::1]/db"
