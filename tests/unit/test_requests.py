"""The protocol of writes from any replica (runtime/requests.py), without a cluster: the
request annotation and the outcomes in status as data, the answer a non-owner rebuilds
(the same as the owner's), and the board and handler of several "replicas" over one
in-memory DeploymentParameters object and one shared operation store (both databases):
a request runs once, and a request whose owner died is reported, not run again.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from controller.adapters.kube import Body, KubeError
from controller.adapters.store.operations import OperationStore
from controller.adapters.store.sql import Database, open_database
from controller.config import StoreSettings
from controller.errors import ConductorError, NotFoundError, RateLimitedError
from controller.model.objects import ObjectKey
from controller.reconcile.applying import ObjectResult, Results
from controller.reconcile.engine import Report
from controller.runtime import requests
from controller.runtime.controller_service import merge_patch, report_body
from controller.runtime.operations import Operations
from controller.runtime.requests import (
    ANNOTATION,
    Request,
    RequestBoard,
    RequestHandler,
    UnavailableError,
    answer,
    answer_outcome,
)
from tests.support.postgres import (  # noqa: F401 (fixtures)
    postgres_fixture,
    postgres_server_fixture,
    store_settings_fixture,
)
from tests.support.waiting import wait_for

KEY = ("team", "shop")
DEPLOY = ObjectKey("apps", "Deployment", "team", "redis")


class FakeObjects:
    """One DeploymentParameters object in memory, with the API server's resourceVersion
    precondition on merge patches (409 when stale)."""

    def __init__(self) -> None:
        self.obj: Body = {"metadata": {"name": "shop", "namespace": "team",
                                       "resourceVersion": "1", "annotations": {}},
                          "spec": {}, "status": {}}
        self.lock = threading.Lock()
        self.writes = 0

    def cached(self, key: tuple[str, str]) -> Body | None:
        with self.lock:
            copied: Body = json.loads(json.dumps(self.obj))
            return copied if key == KEY else None

    fresh = cached

    def patch(self, key: tuple[str, str], patch: Body, status: bool = False) -> Body:
        with self.lock:
            meta = dict(patch.get("metadata") or {})
            rv = meta.pop("resourceVersion", None)
            if rv is not None and rv != self.obj["metadata"]["resourceVersion"]:
                raise KubeError("conflict", status=409)
            if status:
                self.obj["status"] = merge_patch(self.obj["status"], patch.get("status") or {})
            else:
                self.obj["metadata"] = merge_patch(self.obj["metadata"], meta)
            self.obj["metadata"]["resourceVersion"] = \
                str(int(self.obj["metadata"]["resourceVersion"]) + 1)
            self.writes += 1
            copied: Body = json.loads(json.dumps(self.obj))
            return copied


class FakeEngine:
    """Counts what it was asked to run; `gate` holds an operation until set."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.fail = fail
        self.gate = threading.Event()
        self.gate.set()

    def _run(self, op: Literal["up", "update", "down"], services: list[str]) -> Report:
        self.calls.append((op, services))
        self.gate.wait(30)
        results = Results([ObjectResult(DEPLOY, "redis", "failed" if self.fail else "applied",
                                        "update", "drift",
                                        {"error": "ImagePullBackOff", "message": "no image"}
                                        if self.fail else None)])
        return Report(op, services or ["redis"], "api", instance="shop", revision="r1",
                      results=results)

    def up(self, services: list[str], force: bool = False) -> Report:
        return self._run("up", services)

    def update(self, services: list[str], force: bool = False) -> Report:
        return self._run("update", services)

    def down(self, services: list[str]) -> Report:
        return self._run("down", services)


@pytest.fixture
def database(store_settings: StoreSettings, tmp_path: Path) -> Iterator[Callable[[], Database]]:
    opened: list[Database] = []

    def open_one() -> Database:
        opened.append(open_database(store_settings, tmp_path / "ops.db"))
        return opened[-1]
    yield open_one
    for db in opened:
        db.close()


def replica(objects: FakeObjects, engine: FakeEngine, db: Database, owns: bool,
            stale_after: float = 30.0) -> RequestHandler:
    operations = Operations(store=OperationStore(db, stale_after=stale_after))
    return RequestHandler(objects, lambda: [KEY], lambda key: owns, operations,
                          lambda key: engine)  # type: ignore[arg-type,return-value]


def request(op: str = "update", services: tuple[str, ...] = ("redis",),
            rid: str = "abc-1") -> Request:
    return Request(rid, op, services, at="2026-01-01T00:00:00Z", by="b")


# --- the object as data ----------------------------------------------------------------------


def test_requests_queue_on_the_annotation_and_handled_ones_are_dropped() -> None:
    obj = FakeObjects().obj
    first = requests.with_request(obj, request(rid="one"))
    obj["metadata"]["annotations"][ANNOTATION] = json.dumps(first)
    second = requests.with_request(obj, request("down", (), rid="two"))
    assert [r["id"] for r in second] == ["one", "two"]
    obj["metadata"]["annotations"][ANNOTATION] = json.dumps(second)
    obj["status"]["handledRequests"] = [requests.outcome(request(rid="one"), "succeeded")]
    assert [r["id"] for r in requests.with_request(obj, request(rid="three"))] == \
        ["two", "three"]
    assert [r.id for r in requests.pending(obj)] == ["one", "two"]
    assert requests.outcome_of(obj, "one")["result"] == "succeeded"  # type: ignore[index]


def test_a_full_queue_is_a_retryable_refusal_and_garbage_is_ignored() -> None:
    obj = FakeObjects().obj
    queued = [request(rid=f"r{i}").to_dict() for i in range(requests.MAX_PENDING)]
    obj["metadata"]["annotations"][ANNOTATION] = json.dumps(queued)
    with pytest.raises(RateLimitedError) as refused:
        requests.with_request(obj, request(rid="late"))
    assert refused.value.details["retry"] is True
    obj["metadata"]["annotations"][ANNOTATION] = json.dumps(
        [{"id": 1}, {"id": "x", "op": "rm -rf"}, "text", request(rid="ok").to_dict()])
    assert [r.id for r in requests.pending(obj)] == ["ok"]
    obj["metadata"]["annotations"][ANNOTATION] = "{not json"
    assert requests.pending(obj) == []


@pytest.mark.parametrize("fail", [False, True])
def test_a_non_owner_answers_what_the_owner_answers(fail: bool) -> None:
    report = FakeEngine(fail)._run("update", ["redis"])
    stored = json.loads(json.dumps(report.to_dict()))  # as the operation store keeps it
    if not fail:
        assert answer("update", stored) == report_body(report, "update")
        return
    with pytest.raises(ConductorError) as owner:
        report_body(report, "update")
    with pytest.raises(ConductorError) as remote:
        answer("update", stored)
    assert remote.value.to_dict() == owner.value.to_dict()
    errored = Report("up", [], "api", error=NotFoundError("gone", {"instance": "shop"}))
    with pytest.raises(ConductorError) as again:
        answer("up", errored.to_dict())
    assert again.value.to_dict() == {"error": "not_found", "message": "gone",
                                     "details": {"instance": "shop"}}


# --- board and handler -----------------------------------------------------------------------


def test_a_request_accepted_anywhere_runs_once_on_the_owner(
        database: Callable[[], Database]) -> None:
    objects, engine = FakeObjects(), FakeEngine()
    owner = replica(objects, engine, database(), owns=True)
    other_owner = replica(objects, engine, database(), owns=True)  # e.g. during a handover
    bystander = replica(objects, engine, database(), owns=False)
    board = RequestBoard(objects, poll=0.01)
    board.submit(KEY, request())
    assert board.wait(KEY, "abc-1", 0) is None
    for handler in (bystander, owner, other_owner, owner):
        handler.scan()
    wait_for(lambda: owner.scan() or requests.outcome_of(objects.obj, "abc-1"),
             timeout=10, message="the outcome recorded")
    for handler in (other_owner, owner, bystander):
        handler.scan()
    assert engine.calls == [("update", ["redis"])]  # once, whoever saw it
    found = board.wait(KEY, "abc-1", 1)
    assert found is not None and found["result"] == "succeeded"
    body = answer_outcome(found, bystander.operations.get("abc-1"))  # the shared record
    assert body["message"] == "Successfully updated all manifests"
    assert body["results"][0]["resource"] == str(DEPLOY)
    assert len(objects.obj["status"]["handledRequests"]) == 1
    for handler in (owner, other_owner, bystander):
        handler.operations.shutdown()


def test_between_full_scans_only_objects_seen_carrying_requests_are_looked_at(
        database: Callable[[], Database]) -> None:
    objects, engine = FakeObjects(), FakeEngine()
    owner = replica(objects, engine, database(), owns=True)
    RequestBoard(objects, poll=0.01).submit(KEY, request())
    owner.scan(full=False)  # the watch has not shown it yet: not looked at
    assert engine.calls == []
    owner.on_watch("MODIFIED", objects.obj)  # now it has
    wait_for(lambda: owner.scan(full=False) or requests.outcome_of(objects.obj, "abc-1"),
             timeout=10, message="the outcome recorded from the flagged object")
    assert engine.calls == [("update", ["redis"])]
    # Without its annotation (or deleted) it is no longer flagged; a full scan still
    # looks at every instance (a request the watch never showed is not lost).
    plain = copy.deepcopy(objects.obj)
    plain["metadata"]["annotations"].pop(ANNOTATION)
    owner.on_watch("MODIFIED", plain)
    RequestBoard(objects, poll=0.01).submit(KEY, request(rid="abc-2"))
    owner.scan(full=False)
    assert len(engine.calls) == 1
    wait_for(lambda: owner.scan() or requests.outcome_of(objects.obj, "abc-2"),
             timeout=10, message="the outcome of the request found by a full scan")
    assert len(engine.calls) == 2
    owner.operations.shutdown()


def test_an_operation_whose_owner_died_is_reported_to_retry_not_run_again(
        database: Callable[[], Database]) -> None:
    objects, engine = FakeObjects(), FakeEngine()
    board = RequestBoard(objects, poll=0.01)
    board.submit(KEY, request("up"))
    # The old owner claimed it and died: its record runs, its heartbeat stops.
    dead = OperationStore(database(), stale_after=0.2)
    dead.join("deadbeef", host="elsewhere", pid=1)
    dead.create("abc-1", "shop", "up", ["redis"], "deadbeef")
    new_owner = replica(objects, engine, database(), owns=True, stale_after=0.2)
    new_owner.scan()
    assert engine.calls == [] and requests.outcome_of(objects.obj, "abc-1") is None
    wait_for(lambda: new_owner.scan() or requests.outcome_of(objects.obj, "abc-1"),
             timeout=10, message="the interrupted outcome")
    assert engine.calls == []  # not run a second time
    found = board.wait(KEY, "abc-1", 0)
    assert found is not None and found["result"] == "interrupted"
    with pytest.raises(UnavailableError) as retry:
        answer_outcome(found, new_owner.operations.get("abc-1"))
    assert retry.value.to_dict()["error"] == "unavailable"
    assert retry.value.details["retry"] is True
    new_owner.operations.shutdown()


def test_a_failed_or_refused_request_answers_the_owners_error(
        database: Callable[[], Database]) -> None:
    objects = FakeObjects()
    failing = replica(objects, FakeEngine(fail=True), database(), owns=True)
    board = RequestBoard(objects, poll=0.01)
    board.submit(KEY, request(rid="bad"))
    wait_for(lambda: failing.scan() or requests.outcome_of(objects.obj, "bad"),
             timeout=10, message="the failed outcome")
    found = board.wait(KEY, "bad", 0)
    assert found is not None and found["result"] == "failed"
    with pytest.raises(ConductorError) as failed:
        answer_outcome(found, failing.operations.get("bad"))
    assert failed.value.code == "reconciliation_error"
    assert failed.value.details["error"] == "ImagePullBackOff"
    # An owner that cannot run it (the instance is gone there) says why, once.
    gone = RequestHandler(objects, lambda: [KEY], lambda key: True, failing.operations,
                          _missing)
    board.submit(KEY, request(rid="gone"))
    gone.scan()
    found = board.wait(KEY, "gone", 0)
    assert found is not None and found["result"] == "refused"
    with pytest.raises(ConductorError) as refused:
        answer_outcome(found, None)
    assert refused.value.code == "not_found"
    failing.operations.shutdown()


def test_concurrent_submissions_lose_no_request() -> None:
    objects = FakeObjects()
    board = RequestBoard(objects)
    threads = [threading.Thread(target=board.submit, args=(KEY, request(rid=f"r{i}")))
               for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.id for r in requests.pending(objects.obj)) == [f"r{i}" for i in range(6)]


def test_unavailable_is_a_documented_retryable_503() -> None:
    from controller.agents.client import HINTS, RETRYABLE
    from controller.api.errors import STATUS

    code = UnavailableError.code
    assert STATUS[code] == 503 and code in RETRYABLE and "retry" in HINTS[code]


def _missing(key: tuple[str, str]) -> Any:
    raise NotFoundError("DeploymentParameters team/shop not found", {"instance": "shop"})
