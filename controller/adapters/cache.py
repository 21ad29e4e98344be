"""One live cache per process: every watched set of objects, shared by all who read it.

A pass plans against live state, the health monitor assesses it, event ingestion follows
Kubernetes Events, and the loop wakes when the DeploymentParameters object changes. Each
used to list or watch on its own, so a pass and the health view could disagree about the
same object, and every pass cost a LIST per kind and namespace. Here each set is watched
once (gitops-engine's cluster cache is the model): a `Watch` is a Reflector (list, then
watch, relist on 410) for one `Selector` — our labelled objects of a kind in a namespace,
the Pods, ReplicaSets or Events of a namespace, the DeploymentParameters objects — started
on first need (kinds are learned from what a pass renders and from the inventory) and then
kept. Readers `subscribe` (handlers get the current objects as ADDED, then SYNCED, then
every change, one at a time) or read a copy of the objects (`objects`, `get`).

**The rule (what makes a cached read as good as a LIST).** A cached set is trusted only
while it is *fresh*: listed, and its watch open and following the server. A set that is
starting, relisting after 410 Gone, or disconnected and not yet resumed is not fresh:
`objects` waits for it up to a deadline and answers None when it did not catch up (or its
list was refused), and the caller then LISTs directly (applying.py does). So a pass never
plans from a copy that stopped following the server; what a fresh copy may lack is only a
change still in flight on the open watch, exactly as a change landing just after a LIST.
Ownership is not decided here: a set holds what its label selector selects (an object
whose labels are edited away leaves it, as the API server says with DELETED), and the
planner checks each object's labels as it always did.

**Our own writes are read back.** `Kube` hands the answer of every write to `written`:
an answer newer than the cached copy (by resourceVersion) replaces it at once, and a watch
event older than the copy is not news. So the pass right after an apply plans from what it
applied, not from the pre-apply copy the watch has not replaced yet; an update that makes
an object leave a set's selector (orphaning) removes it. A write's answer can arrive after
the watch has already said DELETED (removing the last finalizer deletes the object, and
the watch may deliver that before our client has read the answer): each set remembers the
last version of the objects that left it (bounded), and an answer no later than that is
not news, so a deleted object is never brought back. Cached objects are shared: readers
must not modify them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from controller.adapters.kube import Body, Kube, KubeError
from controller.adapters.watching import Handler, Reflector, Selector
from controller.model.objects import ObjectKey

log = logging.getLogger(__name__)

# (error or None after a good list): how subscribers learn that a set's list is refused
# (403: health names the RBAC gap) and when it is allowed again.
ListHandler = Callable[[KubeError | None], None]
# How long a reader waits for a set that is not fresh before it lists directly.
SYNC_TIMEOUT = 10.0
# Statuses that will not change by waiting: a reader lists directly (and gets the error).
_PERMANENT = frozenset({400, 401, 403, 404, 405})
# Objects a set remembers having left it (their last version), for write answers that
# arrive after the DELETED: far more than can be deleted while one write is in flight.
GONE_KEPT = 1024


class Watch(Reflector):
    """One watched set in the cache: a Reflector whose events go to many subscribers, and
    whose copy takes our writes' answers (`take`)."""

    def __init__(self, kube: Kube, selector: Selector, watch_timeout: int) -> None:
        super().__init__(kube, selector, watch_timeout=watch_timeout)
        self.handler = self._fan_out
        self._subscribers: list[tuple[Handler, ListHandler | None]] = []
        self._match = _matcher(selector)
        self._gone: OrderedDict[ObjectKey, Body] = OrderedDict()  # left the set: last seen

    # -- subscribers ------------------------------------------------------------------------

    def subscribe(self, handler: Handler, on_list: ListHandler | None = None) -> None:
        """Add a subscriber; if the set is listed it gets the current objects (ADDED) and
        SYNCED first, in order with everything after. Must not be called while holding a
        lock the handler takes (it runs here, under the set's lock)."""
        with self.lock:
            self._subscribers.append((handler, on_list))
            if self.synced.is_set():
                for obj in list(self.items.values()):
                    _call(handler, "ADDED", obj, self.selector)
                _call(handler, "SYNCED", {}, self.selector)
            if on_list is not None and self.error is not None and self.error.status == 403:
                on_list(self.error)

    def unsubscribe(self, handler: Handler) -> None:
        with self.lock:
            self._subscribers = [s for s in self._subscribers if s[0] is not handler]

    def _fan_out(self, kind: str, obj: Body) -> None:
        if kind == "DELETED":  # every removal is emitted here, under the set's lock
            key = ObjectKey.of(obj)
            self._gone[key] = obj
            self._gone.move_to_end(key)
            if len(self._gone) > GONE_KEPT:
                self._gone.popitem(last=False)
        for handler, _ in self._subscribers:
            _call(handler, kind, obj, self.selector)

    def _relist(self) -> str:
        try:
            version = super()._relist()
        except KubeError as e:
            with self.lock:
                self.error = e
                if e.status == 403:
                    self._listed(e)
            raise
        with self.lock:
            self._listed(None)
        return version

    def _listed(self, error: KubeError | None) -> None:
        for _, on_list in self._subscribers:
            if on_list is not None:
                try:
                    on_list(error)
                except Exception:
                    log.exception("list handler failed for %s", self.selector.kind)

    # -- reading ----------------------------------------------------------------------------

    def wait_fresh(self, timeout: float) -> bool:
        """Whether the set follows the server, waiting up to `timeout`; False at once when
        its last list was refused for good (403, an unknown kind)."""
        deadline = time.monotonic() + timeout
        while not self.fresh.is_set():
            error = self.error
            if error is not None and error.status in _PERMANENT:
                return False
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.stopped:
                return False
            self.fresh.wait(min(remaining, 0.05))
        return True

    def snapshot(self) -> list[Body]:
        with self.lock:
            return list(self.items.values())

    # -- our writes ---------------------------------------------------------------------------

    def take(self, obj: Body) -> None:
        """An object as a write of ours answered it: newer than the copy, it replaces it;
        no longer selected (labels edited away), it leaves the set."""
        key = ObjectKey.of(obj)
        with self.lock:
            if not self.synced.is_set():
                return  # the list will bring it
            old = self.items.get(key)
            if not self._match(obj):
                if old is not None:
                    self.items.pop(key)
                    self._emit("DELETED", obj)
                return
            last = old if old is not None else self._gone.get(key)
            if last is not None and not _later(obj, last):
                return  # not news; or an answer that lost the race with its DELETED
            self._gone.pop(key, None)
            self.items[key] = obj
            self._emit("ADDED" if old is None else "MODIFIED", obj)

    def _stored(self, kind: str, obj: Body) -> bool:
        key = ObjectKey.of(obj)
        old = self.items.get(key)
        if kind != "DELETED" and old is not None and not _later(obj, old):
            return False  # our write's answer is already here, or newer
        return super()._stored(kind, obj)

    def _newer(self, obj: Body, old: Body) -> bool:
        return _later(obj, old)


class LiveCache:
    """Every watched set of one process, by selector; `stop()` at the end."""

    def __init__(self, kube: Kube, *, watch_timeout: int = 60,
                 sync_timeout: float = SYNC_TIMEOUT) -> None:
        self.kube = kube
        # A shorter watch than the API server's default lets a stopped cache's threads end
        # sooner (they notice stop() between events), for one cheap re-watch per minute.
        self.watch_timeout = watch_timeout
        self.sync_timeout = sync_timeout
        self._watches: dict[Selector, Watch] = {}
        self._lock = threading.Lock()
        self._stopped = False
        kube.on_written = self.written

    def watch(self, selector: Selector) -> Watch:
        """The set for `selector`, started now if it is new."""
        with self._lock:
            found = self._watches.get(selector)
            if found is None:
                found = Watch(self.kube, selector, self.watch_timeout)
                self._watches[selector] = found
                if not self._stopped:
                    found.start()
            return found

    def sets(self) -> list[Watch]:
        """Every set watched so far."""
        with self._lock:
            return list(self._watches.values())

    def subscribe(self, selector: Selector, handler: Handler,
                  on_list: ListHandler | None = None) -> Watch:
        watch = self.watch(selector)
        watch.subscribe(handler, on_list)
        return watch

    def objects(self, selector: Selector, timeout: float | None = None) -> list[Body] | None:
        """The set's objects once it is fresh; None when it did not catch up within
        `timeout` (or its list is refused): the caller must list directly."""
        watch = self.watch(selector)
        if not watch.wait_fresh(self.sync_timeout if timeout is None else timeout):
            return None
        return watch.snapshot()

    def get(self, selector: Selector, name: str, namespace: str = "",
            timeout: float | None = None) -> tuple[bool, Body | None]:
        """(True, the object or None when absent) from a fresh set; (False, None) when the
        set is not fresh in time: the caller must GET directly."""
        watch = self.watch(selector)
        if not watch.wait_fresh(self.sync_timeout if timeout is None else timeout):
            return False, None
        with watch.lock:
            for key, obj in watch.items.items():
                if key.name == name and key.namespace == namespace:
                    return True, obj
        return True, None

    def written(self, obj: Body) -> None:
        """A write's answer (from `Kube`): into every set that holds or selects it."""
        if not isinstance(obj.get("metadata"), dict) or not obj.get("kind"):
            return
        with self._lock:
            watches = [w for s, w in self._watches.items()
                       if s.api_version == obj.get("apiVersion") and s.kind == obj["kind"]
                       and s.namespace in ("", obj["metadata"].get("namespace") or "")]
        for watch in watches:
            watch.take(obj)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            watches = list(self._watches.values())
        for watch in watches:
            watch.stop()


def _call(handler: Handler, kind: str, obj: Body, selector: Selector) -> None:
    try:
        handler(kind, obj)
    except Exception:  # one subscriber's bug must not starve the others or kill the watch
        log.exception("watch handler failed for %s", selector.kind)


def _later(obj: Body, old: Body) -> bool:
    """Whether `obj` is a later version than `old`. resourceVersions are etcd revisions:
    compared as numbers when both are; anything else is taken as news."""
    new_v = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    old_v = str((old.get("metadata") or {}).get("resourceVersion") or "")
    if new_v.isdigit() and old_v.isdigit():
        return int(new_v) > int(old_v)
    return new_v != old_v


def _matcher(selector: Selector) -> Callable[[Body], bool]:
    """Whether an object is selected: equality-based label terms (`a=b,c=d`) and a
    `metadata.name=` / `metadata.namespace=` field selector, the forms conductor uses."""
    labels = [tuple(term.split("=", 1)) for term in selector.label_selector.split(",") if
              "=" in term]
    fields = [tuple(term.split("=", 1)) for term in selector.field_selector.split(",") if
              "=" in term]

    def match(obj: Body) -> bool:
        meta: dict[str, Any] = obj.get("metadata") or {}
        have = meta.get("labels") or {}
        if any(have.get(k) != v for k, v in labels):
            return False
        return all(str(meta.get(k.removeprefix("metadata."), "")) == v for k, v in fields)

    return match


__all__ = ["LiveCache", "Selector", "Watch"]
