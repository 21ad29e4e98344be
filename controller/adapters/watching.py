"""Keep a local, always-current copy of a set of objects: list once, then watch.

The loop, the health view and the kubelet simulation all need "tell me when these objects
change" without polling the API server. A `Reflector` lists, then follows the watch from the
list's resourceVersion; when the watch ends it resumes, and when the version is too old
(410 Gone) it relists, so a consumer never misses a change for long. Handlers run on the
reflector's thread, one event at a time, and must be quick.

Two flags say how far the copy can be trusted: `synced` is set once the first list is in
(and stays set: health tells "not observed yet" from "absent" by it), `fresh` only while the
copy follows the server: set by each (re)list and each watch that opens, cleared the moment
a watch ends or fails, until the next one is open. Whoever must not act on a stale copy (a
pass planning from it, cache.py) waits for `fresh`. `error` keeps the last failure to list
or watch (None after a good list), so a waiter can stop early on a permanent refusal.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from controller.adapters.kube import Body, Kube, KubeError
from controller.model.objects import ObjectKey

log = logging.getLogger(__name__)

# (event type: ADDED | MODIFIED | DELETED | SYNCED, object). SYNCED follows each (re)list.
Handler = Callable[[str, Body], None]


@dataclass(frozen=True)
class Selector:
    api_version: str
    kind: str
    namespace: str = ""
    label_selector: str = ""
    field_selector: str = ""


class Reflector:
    """Mirrors the objects matching one selector into `self.items`, calling `handler`."""

    def __init__(self, kube: Kube, selector: Selector, handler: Handler | None = None,
                 backoff: float = 1.0, watch_timeout: int = 300) -> None:
        self.kube = kube
        self.selector = selector
        self.handler = handler
        self.backoff = backoff
        self.watch_timeout = watch_timeout
        self.items: dict[ObjectKey, Body] = {}
        # Guards `items` and orders handler calls: held while an event is stored and
        # handed out, so handlers see events one at a time and in store order.
        self.lock = threading.RLock()
        self.synced = threading.Event()  # listed at least once
        self.fresh = threading.Event()  # listed, and a watch is following the server now
        self.error: KubeError | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._response: Any = None  # the open watch, shut down by stop()

    def start(self) -> Reflector:
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"reflector-{self.selector.kind}")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop now: also ends a watch that is blocked waiting for the next event."""
        self._stop.set()
        self.fresh.clear()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def _emit(self, kind: str, obj: Body) -> None:
        if self.handler is None:
            return
        try:
            self.handler(kind, obj)
        except Exception:  # a handler bug must not kill the watch
            log.exception("watch handler failed for %s", self.selector.kind)

    def _opened(self, response: Any) -> None:
        self._response = response
        if self._stop.is_set():  # stopped while connecting
            with contextlib.suppress(Exception):
                response.shutdown()
            return
        self.fresh.set()  # following again from where the last list or watch ended

    def _stored(self, kind: str, obj: Body) -> bool:
        """Store one watch event under the lock; False when it is not news (a subclass may
        hold a newer copy)."""
        key = ObjectKey.of(obj)
        if kind == "DELETED":
            self.items.pop(key, None)
        else:
            self.items[key] = obj
        return True

    def _run(self) -> None:
        sel = self.selector
        version = ""
        delay = self.backoff
        while not self._stop.is_set():
            try:
                if not version:
                    version = self._relist()
                for kind, obj in self.kube.watch(
                        sel.api_version, sel.kind, sel.namespace, version,
                        sel.label_selector, self.watch_timeout, sel.field_selector,
                        on_open=self._opened):
                    if self._stop.is_set():
                        return
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if kind == "BOOKMARK":
                        continue
                    with self.lock:
                        if self._stored(kind, obj):
                            self._emit(kind, obj)
                self.fresh.clear()  # ended (its timeout): stale until the next one opens
                delay = self.backoff
            except KubeError as e:
                self.fresh.clear()
                if self._stop.is_set():
                    return
                self.error = e
                if e.status == 410:
                    version = ""  # too old: relist
                    continue
                # `backoff` is read at each failure (not only at start): a caller that
                # raises it (a test holding a set stale) is obeyed at the next retry.
                delay = max(delay, self.backoff)
                log.warning("watch %s failed: %s; retrying in %.1fs", sel.kind, e.message, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)
                version = ""

    def _relist(self) -> str:
        sel = self.selector
        items, version = self.kube.list(sel.api_version, sel.kind, sel.namespace,
                                        sel.label_selector, sel.field_selector)
        fresh = {ObjectKey.of(o): o for o in items}
        with self.lock:
            for key in set(self.items) - set(fresh):
                self._emit("DELETED", self.items.pop(key))
            for key, obj in fresh.items():
                old = self.items.get(key)
                if old is not None and not self._newer(obj, old):
                    continue
                self.items[key] = obj
                self._emit("ADDED" if old is None else "MODIFIED", obj)
            self.error = None
            self.synced.set()
            self.fresh.set()
            self._emit("SYNCED", {})
        return version

    def _newer(self, obj: Body, old: Body) -> bool:
        """Whether a listed `obj` is news against the stored `old` (another version)."""
        return bool(_version(old) != _version(obj))


def _version(obj: Body) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")
