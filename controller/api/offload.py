"""Run the API's synchronous resources on a bounded thread pool, off the event loop.

The resources do blocking work (the Kubernetes API, SQLite, Git, waiting for a pass) and
are plain `on_get`/`on_post` methods, easy to read and to test. The ASGI app must not block
its loop, so each responder is wrapped here: the request is complete when the wrapper runs
(the body was read on the loop by the body-limit middleware), and only then does the work
take one of the pool's threads. Slow or idle clients therefore never hold a thread.

`inline` is for the few responders that only read memory (probes): they answer on the loop
itself, so a pool busy with long operations can never make the liveness probe fail.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

METHODS = ("get", "head", "post", "put", "patch", "delete", "options")


class Offloaded:
    """A resource whose responders are coroutines running the originals on `pool`."""

    def __init__(self, resource: object, pool: ThreadPoolExecutor | None) -> None:
        self.resource = resource
        for method in METHODS:
            responder = getattr(resource, f"on_{method}", None)
            if responder is not None:
                setattr(self, f"on_{method}", _wrap(responder, pool))


def _wrap(responder: Callable[..., Any], pool: ThreadPoolExecutor | None
          ) -> Callable[..., Any]:
    if asyncio.iscoroutinefunction(responder):
        return responder

    if pool is None:
        @functools.wraps(responder)
        async def inline(req: Any, resp: Any, **params: Any) -> None:
            responder(req, resp, **params)
        return inline

    @functools.wraps(responder)
    async def offloaded(req: Any, resp: Any, **params: Any) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(pool, functools.partial(responder, req, resp, **params))
    return offloaded


def offload(resource: object, pool: ThreadPoolExecutor) -> Offloaded:
    return Offloaded(resource, pool)


def inline(resource: object) -> Offloaded:
    return Offloaded(resource, None)
