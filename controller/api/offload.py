"""Run the API's synchronous resources on a bounded thread pool, off the event loop, unless
they can answer at once from memory.

The resources do blocking work (the Kubernetes API, the stores, Git, waiting for a pass)
and are plain `on_get`/`on_post` methods, easy to read and to test. The ASGI app must not
block its loop, so each responder is wrapped here: the request is complete when the
wrapper runs (the body was read on the loop by the body-limit middleware), and only then
does the work take one of the pool's threads. Slow or idle clients therefore never hold a
thread.

The hop is not free. Measured with py-spy on the 2-core machine (issue 10), handing a
health read to a pool thread and back cost more than the read itself: besides the
future's bookkeeping, the pool thread and the loop's thread take turns on the GIL, and a
thread that wants it back may wait for the other's switch interval (5 ms): the tail of
every pooled request (p99 43-113 ms at load 1-4, for 0.5-1.5 ms of CPU per request;
on the loop, health and a kept event answer take half that CPU). So a resource
may also define `on_<method>_now(req, resp, **params) -> bool`, tried first, on the loop:
True means it answered; False means it could not without waiting, and the pool runs
`on_<method>` as before. What may answer there, and why it cannot stall the loop:

- what is already in memory and taken without waiting: the health monitor's published
  view (runtime/observing.py: an immutable snapshot read without its lock), an event
  query's kept answer (api/eventing.PageCache: a dict behind a lock held only for a lookup);
- an event query on a local SQLite store (`EventSource.local`) whose page is small
  (eventing.LOOP_ROWS): WAL readers never wait for the writer, the query is one index
  range that stops after offset + limit rows (0.1-0.2 ms of CPU for 50 rows, less than
  the hop); what could make a SQLite reader wait (recovery of a crashed writer's WAL) is
  a start-up matter, not a steady-state one;
- never anything that may wait on the network (the API server, PostgreSQL, Git), on a
  lock another thread holds for long (a pass, the monitor's computation), or on time.

`inline` is for the few responders that only read memory (probes, the dashboard's files):
they answer on the loop itself, so a pool busy with long operations can never make the
liveness probe fail.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

METHODS = ("get", "head", "post", "put", "patch", "delete", "options")


class Offloaded:
    """A resource whose responders are coroutines: `on_<method>_now` on the loop if the
    resource has one and it answers, else the original `on_<method>` on `pool`."""

    def __init__(self, resource: object, pool: ThreadPoolExecutor | None) -> None:
        self.resource = resource
        for method in METHODS:
            responder = getattr(resource, f"on_{method}", None)
            if responder is not None:
                now = getattr(resource, f"on_{method}_now", None)
                setattr(self, f"on_{method}", _wrap(responder, pool, now))


def _wrap(responder: Callable[..., Any], pool: ThreadPoolExecutor | None,
          now: Callable[..., bool] | None = None) -> Callable[..., Any]:
    if asyncio.iscoroutinefunction(responder):
        return responder

    if pool is None:
        @functools.wraps(responder)
        async def inline(req: Any, resp: Any, **params: Any) -> None:
            responder(req, resp, **params)
        return inline

    @functools.wraps(responder)
    async def offloaded(req: Any, resp: Any, **params: Any) -> None:
        if now is not None and now(req, resp, **params):
            return
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(pool, functools.partial(responder, req, resp, **params))
    return offloaded


def offload(resource: object, pool: ThreadPoolExecutor) -> Offloaded:
    return Offloaded(resource, pool)


def inline(resource: object) -> Offloaded:
    return Offloaded(resource, None)
