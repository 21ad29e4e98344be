"""The events endpoints: filtered queries and a Server-Sent Events stream.

Every filter maps onto one bounded index query of the event store; the stream replays what
the client missed (Last-Event-ID) and then waits on the store's condition for new rows.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import falcon

from controller.api.common import float_param, int_param
from controller.events import MAX_OFFSET
from controller.main import Controller


def filters(req: falcon.Request) -> dict[str, Any]:
    out: dict[str, Any] = {
        "limit": int_param(req, "limit", 100, 1, 1000),
        "offset": int_param(req, "offset", 0, 0, MAX_OFFSET),
    }
    for name in ("type", "resource", "service", "since", "until"):
        value = req.get_param(name)
        if value:
            out[name] = value
    return out


def _page(controller: Controller, **query: Any) -> dict[str, Any]:
    events = controller.events.query(**query)
    return {"events": [e.to_dict() for e in events], "count": len(events)}


class Events:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = _page(self.controller, **filters(req))


class Errors:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = filters(req)
        query["type"] = "error"
        resp.media = _page(self.controller, **query)


class ForResource:
    """GET /api/events/{namespace}/{kind}/{name} ("-" for a cluster-scoped namespace)."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def on_get(self, req: falcon.Request, resp: falcon.Response, namespace: str, kind: str,
               name: str) -> None:
        query = filters(req)
        query["resource"] = f"{namespace}/{kind}/{name}"
        resp.media = _page(self.controller, **query)


class Stream:
    """GET /api/events/stream: text/event-stream, oldest first, `id:` = event id.

    Without Last-Event-ID the stream starts with the `limit` newest matching events; with
    it, it resumes right after that id. `duration` bounds the connection (default 300 s);
    clients reconnect with Last-Event-ID, as EventSource does.
    """

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        query = filters(req)
        query.pop("offset", None)
        limit = query.pop("limit")
        duration = float_param(req, "duration", 300.0, 0, 3600)
        last = req.get_header("Last-Event-ID") or req.get_param("lastEventId") or ""
        store = self.controller.events
        if last.isdigit():
            after = int(last)
        else:
            # Validate the filters now (a bad one is a 400, not a broken stream) and start
            # with the newest `limit` matches.
            recent = store.query(**query, limit=limit)
            after = recent[-1].id - 1 if recent else store.last_id
        store.query(**query, limit=1, after_id=after)  # validation for the resume case too
        resp.content_type = "text/event-stream"
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("X-Accel-Buffering", "no")
        resp.stream = _sse(store, query, after, duration)


def _sse(store: Any, query: dict[str, Any], after: int, duration: float) -> Iterator[bytes]:
    stop = threading.Event()
    timer = threading.Timer(duration, stop.set)
    timer.daemon = True
    timer.start()
    try:
        yield b": conductor event stream\nretry: 2000\n\n"
        for batch in store.follow(after_id=after, stop=stop, heartbeat=min(15.0, duration),
                                  **query):
            if not batch:
                yield b": keep-alive\n\n"
            for event in batch:
                yield (f"id: {event.id}\nevent: {event.type}\n"
                       f"data: {json.dumps(event.to_dict())}\n\n").encode()
            if stop.is_set():
                return
    finally:
        timer.cancel()
