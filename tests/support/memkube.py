"""An in-memory API server behind the part of `Kube` (controller/adapters/kube.py) that the
live cache and the engine use, for their cluster-free unit tests.

Why one: the cache's tests, its views' tests and the no-change pass's tests each grew a
fake of their own with the same watch plumbing (open streams, `on_open`, an end sentinel,
a change sent to the open watches), and each chose its own selection rules (one selected
nothing, one ignored namespaces). Here the rules are written once, as the API server has
them, so no test comes to lean on a fake more lenient than the server:

- Lists and watches select by kind, namespace, equality label terms (`a=b,c==d`) and
  `metadata.name=` / `metadata.namespace=` field terms; another form raises (add it here
  when a test needs it, rather than have it silently ignored).
- A watch hears a change as its selection sees it: ADDED when the object comes to match
  (created, or its labels edited in), DELETED when it stops matching (deleted, or its
  labels edited away), otherwise the event as sent.
- Objects are copied in and out: a reader cannot change the server's copy.
- resourceVersions are the test's (`send(cm("a", 12))`: the cache's tests send older
  versions on purpose), or stamped by the server from a counter with
  `MemoryKube(stamp_versions=True)` (a test that patches and compares what it sent).

What it does not do: a watch does not replay from its resourceVersion. It hears only what
is sent while it is open (a change sent between a list and its watch opening is not
heard), and `on_open` gets None, so stopping a cache does not end its watches: `end()`
does (`live_cache` does both).

The test's controls: `send` a change, `put` / `remove` one behind the watches' back (as
events compacted away), `end` every open watch (or fail it with a KubeError: 410, a
dropped connection), `fail_list` / `fail_watch`, and what was asked: `lists`,
`open_watches()`, `writes`.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from controller.adapters.cache import LiveCache
from controller.adapters.kube import Body, KubeError

Key = tuple[str, str, str]  # (kind, namespace, name)
_END = object()  # queued to a watch: it ends, as at its timeout


@dataclass(frozen=True)
class _Selection:
    """What one list or watch asked for, able to say whether it selects an object."""

    kind: str
    namespace: str
    labels: tuple[tuple[str, str], ...]
    fields: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, kind: str, namespace: str, label_selector: str,
           field_selector: str) -> _Selection:
        return cls(kind, namespace, _terms(label_selector, "label"),
                   _terms(field_selector, "field"))

    def selects(self, obj: Body) -> bool:
        meta = obj["metadata"]
        labels = meta.get("labels") or {}
        return obj["kind"] == self.kind \
            and (not self.namespace or meta.get("namespace", "") == self.namespace) \
            and all(labels.get(k) == v for k, v in self.labels) \
            and all(str(meta.get(k.removeprefix("metadata."), "")) == v
                    for k, v in self.fields)


def _terms(selector: str, what: str) -> tuple[tuple[str, str], ...]:
    terms: list[tuple[str, str]] = []
    for term in (t.strip() for t in selector.split(",")):
        if not term:
            continue
        key, eq, value = term.replace("==", "=").partition("=")
        if not eq or key.endswith("!") or " " in key or \
                (what == "field" and key not in ("metadata.name", "metadata.namespace")):
            raise ValueError(f"the in-memory API server cannot evaluate the {what} "
                             f"selector term {term!r}")
        terms.append((key, value))
    return tuple(terms)


@dataclass
class _Watch:
    selection: _Selection
    stream: queue.Queue[Any] = field(default_factory=queue.Queue)


class MemoryKube:
    """Objects by (kind, namespace, name); lists and watches over them (see the module
    docstring for the rules), merge patches and the write guard's no-ops."""

    def __init__(self, *, stamp_versions: bool = False) -> None:
        self.objects: dict[Key, Body] = {}
        self.stamp_versions = stamp_versions
        # The list's resourceVersion: the last one sent (or stamped).
        self.version = 100
        self.lists: list[tuple[str, str, str]] = []  # (kind, namespace, label selector)
        self.writes = 0
        self.fail_list: KubeError | None = None  # every list raises it while set
        self.fail_watch: KubeError | None = None  # the next watch raises it (once)
        self.on_written: Callable[[Body], None] | None = None  # the cache sets it
        self._open: list[_Watch] = []
        self._lock = threading.Lock()

    # -- what the cache and the engine ask ----------------------------------------------

    def list(self, api_version: str, kind: str, namespace: str = "",
             label_selector: str = "", field_selector: str = "") -> tuple[list[Body], str]:
        self.lists.append((kind, namespace, label_selector))  # a refused list counts too
        if self.fail_list is not None:
            raise self.fail_list
        selection = _Selection.of(kind, namespace, label_selector, field_selector)
        with self._lock:
            return ([copy.deepcopy(o) for o in self.objects.values() if selection.selects(o)],
                    str(self.version))

    def watch(self, api_version: str, kind: str, namespace: str = "",
              resource_version: str = "", label_selector: str = "",
              timeout_seconds: int = 300, field_selector: str = "",
              on_open: Callable[[Any], None] | None = None) -> Iterator[tuple[str, Body]]:
        if self.fail_watch is not None:
            error, self.fail_watch = self.fail_watch, None
            raise error
        watch = _Watch(_Selection.of(kind, namespace, label_selector, field_selector))
        with self._lock:
            self._open.append(watch)
        if on_open is not None:
            on_open(None)
        while (item := watch.stream.get()) is not _END:
            if isinstance(item, KubeError):
                raise item
            yield item

    def get(self, api_version: str, kind: str, name: str, namespace: str = "") -> Body | None:
        with self._lock:
            found = self.objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def patch(self, api_version: str, kind: str, name: str, patch: Body,
              namespace: str = "", **_: Any) -> Body:
        """A merge patch of status and metadata (one level deep), answered to `on_written`."""
        self.writes += 1
        obj = self.get(api_version, kind, name, namespace)
        assert obj is not None, (kind, name)
        for part in ("status", "metadata"):
            if part in patch:
                obj.setdefault(part, {}).update(patch[part])
        answer = self.send("MODIFIED", obj)
        if self.on_written is not None:
            self.on_written(answer)
        return answer

    def check_may_write(self, what: str) -> None:
        pass

    def forget(self, api_version: str) -> None:
        pass

    # -- what the test does -------------------------------------------------------------

    def send(self, event: str, obj: Body) -> Body:
        """A change on the server: stored (removed when DELETED), then streamed to every
        open watch whose selection it enters, stays in or leaves. Returns the stored copy."""
        obj = copy.deepcopy(obj)
        with self._lock:
            old = self._store(event, obj)
            heard: list[tuple[_Watch, str]] = []
            for watch in self._open:
                now = event != "DELETED" and watch.selection.selects(obj)
                before = old is not None and watch.selection.selects(old)
                if now:
                    heard.append((watch, event if before else "ADDED"))
                elif before:
                    heard.append((watch, "DELETED"))
        for watch, said in heard:
            watch.stream.put((said, copy.deepcopy(obj)))
        return copy.deepcopy(obj)

    def put(self, obj: Body) -> None:
        """Store an object as it is, telling no watch and moving no version: the state a
        test arranges before listing, or a change whose events were compacted away."""
        with self._lock:
            self.objects[_key(obj)] = copy.deepcopy(obj)

    def remove(self, obj: Body) -> None:
        """Remove an object telling no watch (see `put`)."""
        with self._lock:
            self.objects.pop(_key(obj), None)

    def end(self, error: KubeError | None = None) -> None:
        """Every open watch ends (its timeout), or fails with `error` (410, dropped)."""
        with self._lock:
            watches, self._open = self._open, []
        for watch in watches:
            watch.stream.put(error if error is not None else _END)

    def open_watches(self) -> int:
        with self._lock:
            return len(self._open)

    def _store(self, event: str, obj: Body) -> Body | None:
        """Keep `obj` (under the lock), its version stamped or taken; returns the copy it
        replaced."""
        meta = obj["metadata"]
        if self.stamp_versions:
            self.version += 1
            meta["resourceVersion"] = str(self.version)
        elif str(meta.get("resourceVersion", "")).isdigit():
            self.version = int(meta["resourceVersion"])
        key = _key(obj)
        old = self.objects.pop(key, None) if event == "DELETED" else self.objects.get(key)
        if event != "DELETED":
            self.objects[key] = obj
        return old


def _key(obj: Body) -> Key:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta["name"]


@contextmanager
def live_cache(kube: MemoryKube, *, sync_timeout: float = 5.0,
               ours_grace: float = 0.05) -> Iterator[LiveCache]:
    """A LiveCache over `kube`, stopped at the end and then every watch ended: the fake's
    watches wait on their queues, so stopping the cache alone leaves its threads there.
    A change waits `ours_grace` for our write's answer (cache.OURS_GRACE), short here."""
    cache = LiveCache(kube, sync_timeout=sync_timeout,  # type: ignore[arg-type]
                      ours_grace=ours_grace)
    try:
        yield cache
    finally:
        cache.stop()
        kube.end()
