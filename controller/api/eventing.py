"""The events endpoints: filtered queries and a Server-Sent Events stream.

Every filter maps onto one bounded index query of the event store; the stream replays what
the client missed (Last-Event-ID) and then waits on the store's condition for new rows.
Agents poll the same queries (`?type=error&limit=10`) over and over: the answer of an
identical query is kept until the store commits a new event (`PageCache`).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import falcon

from controller.api.common import float_param, int_param, query_param
from controller.errors import RateLimitedError
from controller.events import MAX_OFFSET
from controller.main import Controller


def filters(req: falcon.Request) -> dict[str, Any]:
    out: dict[str, Any] = {
        "limit": int_param(req, "limit", 100, 1, 1000),
        "offset": int_param(req, "offset", 0, 0, MAX_OFFSET),
    }
    for name in ("type", "resource", "service", "since", "until"):
        value = query_param(req, name)  # given empty: a 400, as the document says
        if value is not None:
            out[name] = value
    return out


def _page(controller: Controller, **query: Any) -> dict[str, Any]:
    events = controller.events.query(**query)
    return {"events": [e.to_dict() for e in events], "count": len(events)}


def _json(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()  # as Falcon's own JSON handler


class PageCache:
    """Serialized answers of event queries, valid while the store's newest id is the same.

    Every commit (an add, a Kubernetes Event replacing its row) moves `last_id`, so a key
    that includes it can only serve what the store held then. Queries with `since`/`until`
    are not kept ("1h" moves with the clock). Retention deletes old events right after an
    add; an answer computed in between may show them until the next event. Bounded: at most
    `entries` answers of at most `max_body` bytes each.
    """

    def __init__(self, entries: int = 64, max_body: int = 64 * 1024) -> None:
        self.entries = entries
        self.max_body = max_body
        self._items: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def answer(self, version: int, query: dict[str, Any],
               build: Callable[[], Any]) -> bytes:
        if "since" in query or "until" in query:
            return _json(build())
        key = (version, *sorted(query.items()))
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found
        data = _json(build())
        if len(data) <= self.max_body:
            with self._lock:
                self._items[key] = data
                while len(self._items) > self.entries:
                    self._items.popitem(last=False)
        return data


class _Query:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.cache = PageCache()

    def respond(self, resp: falcon.Response, query: dict[str, Any]) -> None:
        store = self.controller.events
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self.cache.answer(store.last_id, query,
                                      lambda: _page(self.controller, **query))


class Events(_Query):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.respond(resp, filters(req))


class Errors(_Query):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = filters(req)
        query["type"] = "error"
        self.respond(resp, query)


class ForResource(_Query):
    """GET /api/events/{namespace}/{kind}/{name} ("-" for a cluster-scoped namespace)."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, namespace: str, kind: str,
               name: str) -> None:
        query = filters(req)
        query["resource"] = f"{namespace}/{kind}/{name}"
        self.respond(resp, query)


class Stream:
    """GET /api/events/stream: text/event-stream, oldest first, `id:` = event id.

    Without Last-Event-ID the stream starts with the `limit` newest matching events; with
    it, it resumes right after that id. `duration` bounds the connection (default 300 s);
    clients reconnect with Last-Event-ID, as EventSource does.
    """

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.max_streams = max(1, controller.cfg.api.threads // 2)
        self.slots = threading.BoundedSemaphore(self.max_streams)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = filters(req)
        query.pop("offset", None)
        limit = query.pop("limit")
        duration = float_param(req, "duration", 300.0, 0, 3600)
        last = req.get_header("Last-Event-ID") or req.get_param("lastEventId") or ""
        store = self.controller.events
        if last.isascii() and last.isdigit():  # "²".isdigit(), but int() refuses it
            after = int(last)
        else:
            # Validate the filters now (a bad one is a 400, not a broken stream) and start
            # with the newest `limit` matches.
            recent = store.query(**query, limit=limit)
            after = recent[-1].id - 1 if recent else store.last_id
        store.query(**query, limit=1, after_id=after)  # validation for the resume case too
        # Each open stream holds one of gunicorn's threads: leave the rest to other calls.
        if not self.slots.acquire(blocking=False):
            resp.set_header("Retry-After", "5")
            raise RateLimitedError("too many open event streams; retry later",
                                   {"retryAfter": 5, "maxStreams": self.max_streams})
        resp.content_type = "text/event-stream"
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("X-Accel-Buffering", "no")
        resp.stream = _Held(_sse(store, query, after, duration), self.slots)


PAGE = 100  # events per batch of the store's follow()


class _Held:
    """The stream as a WSGI iterable that gives its slot back on close(), which the server
    calls however the response ends (done, client gone, or never started)."""

    def __init__(self, stream: Iterator[bytes], slots: threading.BoundedSemaphore) -> None:
        self.stream = stream
        self.slots = slots
        self._closed = False

    def __iter__(self) -> _Held:
        return self

    def __next__(self) -> bytes:
        return next(self.stream)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            close = getattr(self.stream, "close", None)
            if close is not None:
                close()
            self.slots.release()


def _sse(store: Any, query: dict[str, Any], after: int, duration: float) -> Iterator[bytes]:
    """The stream: the backlog first (whatever `duration`: a client catching up with
    Last-Event-ID gets what it missed even with duration=0), then new events until
    `duration` has passed since it caught up."""
    stop = threading.Event()
    timer = threading.Timer(duration, stop.set)
    timer.daemon = True
    try:
        yield b": conductor event stream\nretry: 2000\n\n"
        for batch in store.follow(after_id=after, stop=stop, heartbeat=min(15.0, duration),
                                  batch=PAGE, **query):
            if not batch:
                yield b": keep-alive\n\n"
            for event in batch:
                yield (f"id: {event.id}\nevent: {event.type}\n"
                       f"data: {json.dumps(event.to_dict())}\n\n").encode()
            if len(batch) < PAGE and not timer.is_alive() and not stop.is_set():
                timer.start()  # caught up: the duration counts from here
            if stop.is_set():
                return
    finally:
        timer.cancel()
