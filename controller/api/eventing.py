"""The events endpoints: filtered queries and a Server-Sent Events stream.

Every filter maps onto one bounded index query of the event store; the stream replays what
the client missed (Last-Event-ID) and then waits for new rows: one thread (`Fanout`) waits
on the store's commits and wakes the streams, which are coroutines on the event loop.
Agents poll the same queries (`?type=error&limit=10`) over and over: the answer of an
identical query is kept until the store commits a new event (`PageCache`).

Each event is serialized once, when the store writes it: a query's answer is the store's
`page()` (the stored JSON of each event, joined) and a stream sends the stored JSON as it
is; nothing here decodes an event to encode it again.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor
from typing import Any

import falcon
from falcon.asgi import SSEvent

from controller.adapters.store.events import Event, EventStoreError
from controller.api.common import float_param, instance_param, int_param, query_param
from controller.api.security import namespace_param
from controller.errors import RateLimitedError
from controller.model.eventquery import MAX_OFFSET
from controller.runtime.service import EventSource


def filters(req: falcon.Request) -> dict[str, Any]:
    out: dict[str, Any] = {
        "limit": int_param(req, "limit", 100, 1, 1000),
        "offset": int_param(req, "offset", 0, 0, MAX_OFFSET),
    }
    for name in ("type", "resource", "service", "since", "until"):
        value = query_param(req, name)  # given empty: a 400, as the document says
        if value is not None:
            out[name] = value
    instance, namespace = instance_param(req), namespace_param(req)
    if instance is not None and "/" in instance:  # resolved within the caller's scope
        namespace, _, instance = instance.rpartition("/")
    if instance is not None:
        out["instance"] = instance
    if namespace is not None:  # an instance is (namespace, name): the store needs both
        out["namespace"] = namespace
    return out


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

    def kept(self, version: int, query: dict[str, Any]) -> bytes | None:
        """The kept answer to `query` at store version `version`, if there is one."""
        if "since" in query or "until" in query:
            return None
        key = (version, *sorted(query.items()))
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def answer(self, version: int, query: dict[str, Any],
               build: Callable[[], bytes]) -> bytes:
        if "since" in query or "until" in query:
            return build()
        found = self.kept(version, query)
        if found is not None:
            return found
        key = (version, *sorted(query.items()))
        data = build()
        if len(data) <= self.max_body:
            with self._lock:
                self._items[key] = data
                while len(self._items) > self.entries:
                    self._items.popitem(last=False)
        return data


# The deepest page (offset + limit) queried on the event loop from a local store (see
# api/offload.py): one index range of at most this many rows, a fraction of a millisecond.
LOOP_ROWS = 100


class _Query:
    """An event query: `on_get_now` answers on the event loop when the answer is kept, or
    when the store is a local file and the page small; `on_get` answers on the pool."""

    def __init__(self, store: EventSource) -> None:
        self.store = store
        self.cache = PageCache()

    def query(self, req: falcon.Request) -> dict[str, Any]:
        return filters(req)

    def on_get_now(self, req: falcon.Request, resp: falcon.Response, **params: str) -> bool:
        query = self.query(req, **params)
        store = self.store
        if self.cache.kept(store.last_id, query) is None and not (
                store.local and query["limit"] + query["offset"] <= LOOP_ROWS):
            return False
        self.respond(resp, query)
        return True

    def on_get(self, req: falcon.Request, resp: falcon.Response, **params: str) -> None:
        self.respond(resp, self.query(req, **params))

    def respond(self, resp: falcon.Response, query: dict[str, Any]) -> None:
        store = self.store
        resp.content_type = falcon.MEDIA_JSON
        # The store's own bytes: each event's JSON as written, joined, never re-encoded.
        resp.data = self.cache.answer(store.last_id, query, lambda: store.page(**query))


class Events(_Query):
    """GET /api/events."""


# What is wrong, for GET /api/events/errors: the controller's errors and the warnings
# beside them (Kubernetes Warning events about our objects and their Pods, the
# controller's own warnings). `?type=error` on /api/events stays errors only.
ERROR_TYPES = ("error", "warning")


class Errors(_Query):
    """GET /api/events/errors."""

    def query(self, req: falcon.Request) -> dict[str, Any]:
        query = filters(req)
        query["type"] = ",".join(ERROR_TYPES)
        return query


class ForResource(_Query):
    """GET /api/events/{namespace}/{kind}/{name} ("-" for a cluster-scoped namespace)."""

    def query(self, req: falcon.Request, *, namespace: str = "", kind: str = "",
              name: str = "") -> dict[str, Any]:
        query = filters(req)
        query["resource"] = f"{namespace}/{kind}/{name}"
        return query


class Waiters:
    """asyncio.Events of any loops, set from any thread: how a thread wakes coroutines.
    `sticky`: once set, every later waiter starts set (a one-way switch)."""

    def __init__(self, sticky: bool = False) -> None:
        self.sticky = sticky
        self._set = False
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    def __len__(self) -> int:
        with self._lock:
            return len(self._waiters)

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        with self._lock:
            self._set = self.sticky
            waiters = list(self._waiters)
        # One call per loop, not per waiter: each call_soon_threadsafe writes to the loop's
        # wake-up pipe, and a commit wakes hundreds of streams on the same loop.
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Event]] = {}
        for loop, event in waiters:
            by_loop.setdefault(loop, []).append(event)
        for loop, events in by_loop.items():
            with contextlib.suppress(RuntimeError):  # its loop is closed: nothing waits
                loop.call_soon_threadsafe(_set_all, events)

    @contextlib.contextmanager
    def wait(self, event: asyncio.Event | None = None) -> Iterator[asyncio.Event]:
        """An asyncio.Event of the running loop (`event`, or a new one), set by the next
        `set()`."""
        event = event or asyncio.Event()
        key = (asyncio.get_running_loop(), event)
        with self._lock:
            self._waiters.add(key)
            if self._set:
                event.set()
        try:
            yield event
        finally:
            with self._lock:
                self._waiters.discard(key)


def _set_all(events: list[asyncio.Event]) -> None:
    for event in events:
        event.set()


class Gone:
    """Whether a stream's client went away (set on the loop by App.__call__ when the
    connection says so), and the events that wake its stream then (`wake`)."""

    def __init__(self) -> None:
        self._set = False
        self.wake: list[asyncio.Event] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        for event in self.wake:
            event.set()


class Draining(Waiters):
    """Set once when the server stops: open event streams end at once instead of holding
    the graceful stop until their `duration`."""

    def __init__(self) -> None:
        super().__init__(sticky=True)


class Fanout:
    """One thread follows the event store's commits, reads each new event once, and wakes
    every subscribed stream.

    A stream is a coroutine waiting on an asyncio.Event: hundreds of subscribers cost no
    thread each. The new events are kept in a bounded window, each serialized once, so a
    commit costs one query however many streams are open; a stream filters the window in
    memory (`since` answers what it holds after an id, or None when the stream fell behind
    it and must query the store). The thread starts with the first subscriber and ends
    with the store."""

    WINDOW = 4096  # events kept in memory (trimmed to this when twice as many)

    def __init__(self, store: EventSource) -> None:
        self.store = store
        self.waiters = Waiters()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._ids: list[int] = []
        self._window: list[tuple[Event, str]] = []
        self._covered = 0  # every event with an id above this is in the window

    def __len__(self) -> int:
        return len(self.waiters)

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Event]:
        with self.waiters.wait() as event:
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._covered = self.store.last_id
                    self._ids, self._window = [], []
                    self._thread = threading.Thread(target=self._run, name="event-fanout",
                                                    daemon=True)
                    self._thread.start()
            yield event

    def since(self, after: int) -> list[tuple[Event, str]] | None:
        """The window's events after id `after` (with their SSE data), oldest first; None
        when the window does not reach back to `after`."""
        with self._lock:
            if after < self._covered:
                return None
            return self._window[bisect.bisect_right(self._ids, after):]

    def _run(self) -> None:
        last = self._covered
        while not self.store.closed:
            if not self.store.wait_for_new(last, 1.0):
                continue
            try:
                while True:  # every new event, once
                    page = stored(self.store.query_json(after_id=last, limit=PAGE,
                                                        oldest_first=True))
                    if page:
                        self._add(page)
                        last = page[-1][0].id
                    if len(page) < PAGE:
                        break
            except EventStoreError:  # closed underneath: the loop condition ends us
                continue
            self.waiters.set()

    def _add(self, page: list[tuple[Event, str]]) -> None:
        with self._lock:
            self._window += page
            self._ids += [e.id for e, _ in page]
            if len(self._window) > 2 * self.WINDOW:
                cut = len(self._window) - self.WINDOW
                self._covered = self._ids[cut - 1]
                del self._window[:cut], self._ids[:cut]


def stored(texts: list[str]) -> list[tuple[Event, str]]:
    """Each event's stored JSON beside the event it holds: the text is what a stream
    sends, as written (serialized once, at write); the event is read once, to route it
    (its id, type and filters), however many streams send it."""
    return [(Event.from_json(text), text) for text in texts]


def matcher(query: dict[str, Any]) -> Callable[[Event], bool] | None:
    """The stream's filters as a predicate on an event (already validated by a store
    query); None for time-bounded filters, which only the store answers."""
    if "since" in query or "until" in query:
        return None
    raw = query.get("type")
    types = {t.strip() for t in raw.split(",")} if isinstance(raw, str) else None
    resource, service = query.get("resource"), query.get("service")
    instance, namespace = query.get("instance"), query.get("namespace")
    return lambda e: ((types is None or e.type in types)
                      and (resource is None or e.resource == resource)
                      and (service is None or e.service == service)
                      and (instance is None or e.instance == instance)
                      and (namespace is None or e.namespace == namespace))


HEARTBEAT = 15.0  # seconds between keep-alive comments on a quiet stream
PAGE = 100  # events per query of a stream


class Stream:
    """GET /api/events/stream: text/event-stream, oldest first, `id:` = event id.

    Without Last-Event-ID the stream starts with the `limit` newest matching events; with
    it, it resumes right after that id. `duration` bounds the connection (default 300 s),
    counted from when the stream has caught up with its backlog; clients reconnect with
    Last-Event-ID, as EventSource does. A stream is a coroutine: it takes a thread only
    for its queries, ends as soon as its client goes away, and ends when the server stops.
    """

    def __init__(self, store: EventSource, pool: Executor, draining: Draining,
                 max_streams: int) -> None:
        self.store = store
        self.pool = pool
        self.draining = draining
        self.max_streams = max(1, max_streams)
        self.open = 0
        self.fanout = Fanout(store)

    async def _run(self, fn: Callable[..., Any], /, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            self.pool, functools.partial(fn, **kwargs))

    async def on_get(self, req: Any, resp: Any) -> None:
        query = filters(req)
        query.pop("offset", None)
        limit = query.pop("limit")
        duration = float_param(req, "duration", 300.0, 0, 3600)
        last = req.get_header("Last-Event-ID") or req.get_param("lastEventId") or ""
        store = self.store
        if last.isascii() and last.isdigit():  # "²".isdigit(), but int() refuses it
            after = int(last)
        else:
            # Validate the filters now (a bad one is a 400, not a broken stream) and start
            # with the newest `limit` matches.
            recent = await self._run(store.query, **query, limit=limit)
            after = recent[-1].id - 1 if recent else store.last_id
        # Validation for the resume case too.
        await self._run(store.query, **query, limit=1, after_id=after)
        if self.open >= self.max_streams:
            resp.set_header("Retry-After", "5")
            raise RateLimitedError("too many open event streams; retry later",
                                   {"retryAfter": 5, "maxStreams": self.max_streams})
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("X-Accel-Buffering", "no")
        # Falcon's SSE path reads the connection while streaming, so the app learns of a
        # disconnect (App.__call__ sets "conductor.gone") without waiting for a write.
        gone = req.scope.get("conductor.gone") or Gone()
        resp.sse = self._sse(query, after, duration, gone)

    async def _sse(self, query: dict[str, Any], after: int, duration: float,
                   gone: Gone) -> AsyncIterator[SSEvent]:
        """The backlog first (whatever `duration`: a client catching up with Last-Event-ID
        gets what it missed even with duration=0), then new events until `duration` has
        passed since it caught up, the client leaves or the server stops."""
        store = self.store
        loop = asyncio.get_running_loop()
        self.open += 1  # only the loop's thread counts: no lock needed
        try:
            # One event wakes the stream, whoever has news: the fan-out (new events),
            # the server stopping, the client leaving. Waiting on one event costs no task
            # (three events meant three tasks per stream at every commit).
            with self.fanout.subscribe() as woken, self.draining.wait(woken):
                gone.wake.append(woken)
                draining = self.draining
                yield SSEvent(comment="conductor event stream", retry=2000)
                last = after
                deadline: float | None = None  # set once the backlog is sent
                match = matcher(query)
                while not (gone.is_set() or draining.is_set() or store.closed):
                    woken.clear()
                    window = self.fanout.since(last) if deadline is not None \
                        and match is not None else None
                    if window is not None and match is not None:  # caught up: shared read
                        for e, data in window:
                            if match(e):
                                yield SSEvent(event=e.type, event_id=str(e.id), text=data)
                        if window:
                            last = window[-1][0].id
                        page = None
                    else:
                        mark = store.last_id  # read before the query: matches <= mark seen
                        page = stored(await self._run(store.query_json, **query, limit=PAGE,
                                                      after_id=last, oldest_first=True))
                    if page is None:
                        pass
                    elif page:
                        # A short page holds every match up to mark: skip the others.
                        newest = page[-1][0].id
                        last = newest if len(page) >= PAGE else max(newest, mark)
                        for e, data in page:
                            yield SSEvent(event=e.type, event_id=str(e.id), text=data)
                        if len(page) >= PAGE:
                            continue
                    else:
                        last = max(last, mark)
                    if deadline is None:  # caught up: the duration counts from here
                        deadline = loop.time() + duration
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        return
                    # Behind the store: query again (the window path waits for the
                    # fan-out instead, which wakes us once it has read the new events).
                    if window is None and store.last_id > last:
                        continue
                    quiet = not await _woken(woken, timeout=min(HEARTBEAT, remaining))
                    if quiet and loop.time() < deadline:
                        yield SSEvent(comment="keep-alive")
        finally:
            self.open -= 1


async def _woken(event: asyncio.Event, timeout: float) -> bool:
    """Wait until `event` is set (True) or `timeout` passes (False)."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
