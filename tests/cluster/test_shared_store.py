"""Two controllers (two replicas) sharing one PostgreSQL store see the same parameter
history, the same operations and the same events, and a restart loses none (issue 14).

Each controller has its own Kubernetes connection and its own events file setting; only
the store URL is shared, as in the deploy kit's config/postgres overlay (with it, the
events go to PostgreSQL too, and the file is not used).
"""

from __future__ import annotations

import json
import re
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

    # The events the first replica wrote about the update, through the second: the same
    # ids and bodies, and its event stream replays them with Last-Event-ID, in order.
    path = f"/api/events/{first.namespace}/Deployment/redis?limit=100"
    written = first.get(path).json["events"]
    assert written, "the update recorded no event for the redis Deployment"
    ids = sorted(e["id"] for e in written)
    by_id = {e["id"]: e for e in second.get(path).json["events"]}
    assert all(by_id.get(e["id"]) == e for e in written), (written, by_id)
    streamed = second.stream("/api/events/stream", {
        "duration": "0", "resource": f"{first.namespace}/Deployment/redis"},
        {"Last-Event-ID": str(ids[0] - 1)})
    frames = [int(i) for i in re.findall(r"^id: (\d+)$", streamed.text, re.M)]
    assert frames[:len(ids)] == ids and frames == sorted(set(frames)), (frames, ids)
    again = second.stream("/api/events/stream", {
        "duration": "0", "resource": f"{first.namespace}/Deployment/redis"},
        {"Last-Event-ID": str(ids[-1])})
    assert all(int(json.loads(d)["id"]) > ids[-1]
               for d in re.findall(r"^data: (.*)$", again.text, re.M))
