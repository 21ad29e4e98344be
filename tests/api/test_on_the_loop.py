"""Which reads answer on the event loop and which take the pool (api/offload.py).

Health from the monitor's published view, kept event answers and small event pages of a
local (SQLite) store answer on the loop: no pool thread, so no hand-off, and no wait
behind the pool's long operations. Anything else (a view not yet computed, a deep page, a
store across the network) runs on a pool thread ("api_N"), as before. Observed by the
thread each service call runs on, and by answers while every pool thread is held.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from controller.adapters.store.events import EventStore
from tests.support.api import FakeApi
from tests.support.waiting import wait_for


def threads_of(monkeypatch: pytest.MonkeyPatch, obj: object, name: str) -> list[str]:
    """The names of the threads `obj.name` runs on from now on."""
    seen: list[str] = []
    original: Callable[..., Any] = getattr(obj, name)

    def recorded(*args: Any, **kwargs: Any) -> Any:
        seen.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, name, recorded)
    return seen


def on_pool(names: list[str]) -> bool:
    return bool(names) and all(n.startswith("api_") for n in names)


def on_loop(names: list[str]) -> bool:
    return bool(names) and not any(n.startswith("api_") for n in names)


@contextmanager
def pool_held(api: FakeApi) -> Iterator[None]:
    """Every thread of the API's pool busy until the block ends."""
    pool = api.client.app.pool
    release = threading.Event()
    started = threading.Semaphore(0)

    def hold() -> None:
        started.release()
        release.wait(60)

    futures = [pool.submit(hold) for _ in range(pool._max_workers)]
    for _ in futures:
        assert started.acquire(timeout=10)
    try:
        yield
    finally:
        release.set()
        for f in futures:
            f.result(10)


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


@pytest.mark.parametrize("path", ["/api/services/health", "/api/services"])
def test_health_answers_on_the_loop_from_the_published_view(
        fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    now = threads_of(monkeypatch, fake_api.service, "services_now")
    pooled = threads_of(monkeypatch, fake_api.service, "services")
    body = fake_api.get(path).json
    assert on_loop(now)
    assert pooled == [] or on_loop(pooled)  # the fake's services_now calls services
    assert [s["name"] for s in body["services"]] == ["frontend", "postgres", "redis"]


@pytest.mark.parametrize("path", ["/api/services/health", "/api/services"])
def test_health_not_yet_published_is_computed_on_the_pool_with_the_same_answer(
        fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    published = fake_api.get(path).json
    fake_api.service.health_published = False
    pooled = threads_of(monkeypatch, fake_api.service, "services")
    assert fake_api.get(path).json == published
    assert on_pool(pooled)


def test_health_answers_while_every_pool_thread_is_busy(fake_api: FakeApi) -> None:
    with pool_held(fake_api):
        thread, out = in_thread(lambda: fake_api.get("/api/services/health"))
        wait_for(lambda: bool(out), timeout=10, message="health while the pool is busy")
        assert out[0].status_code == 200
    thread.join(10)


def test_a_named_instance_takes_the_pool(fake_api: FakeApi,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    pooled = threads_of(monkeypatch, fake_api.service, "services")
    answer = fake_api.get("/api/services/health", params={"instance": "default"})
    assert answer.status_code == 200
    assert on_pool(pooled)  # resolving a name may wait for the cache: never on the loop


def test_small_event_pages_of_a_local_store_answer_on_the_loop(
        fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_api.service.store.add("error", "boom", service="redis")
    pages = threads_of(monkeypatch, fake_api.service.store, "page")
    since = fake_api.get("/api/events", params={"service": "redis", "since": "1h",
                                                "limit": "50"})
    assert since.json["count"] == 1 and on_loop(pages)
    pages.clear()
    deep = fake_api.get("/api/events", params={"limit": "1000"})
    assert deep.json["count"] == 1 and on_pool(pages)  # a big page: not on the loop
    pages.clear()
    with pool_held(fake_api):
        thread, out = in_thread(lambda: fake_api.get("/api/events/errors"))
        wait_for(lambda: bool(out), timeout=10, message="events while the pool is busy")
    thread.join(10)
    assert out[0].json["count"] == 1 and on_loop(pages)


def test_a_store_across_the_network_is_read_on_the_pool_unless_the_answer_is_kept(
        fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_api.service.store.add("error", "boom", service="redis")
    monkeypatch.setattr(EventStore, "local", property(lambda self: False))
    pages = threads_of(monkeypatch, fake_api.service.store, "page")
    first = fake_api.get("/api/events", params={"type": "error", "limit": "10"})
    assert first.json["count"] == 1 and on_pool(pages)
    pages.clear()
    with pool_held(fake_api):  # the same query again: its kept answer, on the loop
        thread, out = in_thread(
            lambda: fake_api.get("/api/events", params={"type": "error", "limit": "10"}))
        wait_for(lambda: bool(out), timeout=10, message="a kept answer while the pool "
                                                        "is busy")
    thread.join(10)
    assert out[0].json == first.json and pages == []


def test_a_bad_query_answers_the_same_envelope_on_the_loop_as_on_the_pool(
        fake_api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    on_the_loop = fake_api.get("/api/events", params={"since": "yesterday"})
    monkeypatch.setattr(EventStore, "local", property(lambda self: False))
    on_the_pool = fake_api.get("/api/events", params={"since": "yesterday"})
    assert on_the_loop.status_code == on_the_pool.status_code == 400
    assert on_the_loop.json == on_the_pool.json
    assert on_the_loop.json["error"] == "validation_error"
