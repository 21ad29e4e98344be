"""Two controllers (two replicas) sharing one PostgreSQL store see the same parameter
history and the same operations, and a restart loses neither (issue 14).

Each controller has its own Kubernetes connection and its own events file; only the store
URL is shared, as in the deploy kit's config/postgres overlay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from controller.config import StoreSettings
from tests.support.api import Api
from tests.support.postgres import (  # noqa: F401 (fixtures)
    Database,
    postgres_fixture,
    postgres_server_fixture,
)
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster


def test_replicas_share_history_and_operations_through_postgresql(
        make_api: Callable[..., Api], postgres: Database, tmp_path: Any) -> None:
    store = StoreSettings(url=postgres.url, password_file=str(postgres.password_file))
    first = make_api(store=store)
    written = first.patch("/api/parameters", {"services": {"redis": {"replicas": 2}}})
    assert written.status_code == 200, written.text
    started = first.post("/api/update?wait=false", {"services": ["redis"]})
    assert started.status_code == 202, started.text
    op_id = started.json["id"]
    wait_for(lambda: first.get(f"/api/operations/{op_id}").json["status"] != "running",
             timeout=60, message="the operation to finish on the first replica")
    revisions = [h["revision"] for h in first.get("/api/parameters/history").json["history"]]
    assert len(revisions) >= 2, revisions

    # The second replica (its own events file, the same store) answers the same.
    second = make_api(store=store, events=type(first.app.cfg.events)(
        path=tmp_path / "second-events.db"), first_pass=False)
    seen = second.get(f"/api/operations/{op_id}")
    assert seen.status_code == 200, seen.text
    assert seen.json["status"] == "succeeded" and seen.json["operation"] == "update"
    assert [h["revision"] for h in second.get("/api/parameters/history").json["history"]] \
        == revisions
