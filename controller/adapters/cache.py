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

**One set per kind and namespace, for every instance (issue 13).** A set is watched with
only the app's label (`conductor.io/app`); the rest of a reader's selector (the instance's
labels, the controller's instance selector on DeploymentParameters objects, another
namespace than a cluster-wide set's) is matched here, on a *view* of the set. So 1,000
instances in a namespace are one watch per kind there, not 1,000, and a reader that is
woken by one view and reads through another (the loop's discovery of an instance, then the
pass's read of its object) reads the very copy that woke it. A per-namespace selector is
served by the cluster-wide set of its kind once that exists. Views are exact: a view's
subscriber gets ADDED when an object comes to match it and DELETED when it stops matching
(its labels edited), as from a server-side label selector. The set's copy is indexed by
the instance label and by key, so a pass's read of its own objects, or of its
DeploymentParameters object, does not scan every instance's.

**What changed since (`changes`).** Every change to a cached object (added, modified by
anyone else, deleted, leaving a set, or found changed by a relist) stamps its instance
label with a new number, but our own writes (what a pass planned: their answers, and
their watch events when the answer follows within `OURS_GRACE`) and a change of its
status or of the controllers' bookkeeping alone (`_planned`): an engine that reads
the same stamp before and after knows none of its objects changed in the cache meanwhile
(its no-change pass; a change missed while a watch was disconnected is stamped when it
resumes). Only sets someone has read (`objects`, `get`: what a pass plans from) stamp,
from their first read on (after their first list): the Pods and ReplicaSets only health
subscribes to change all the time and say nothing about a plan (after a restart their
first lists made 1,000 instances' next interval pass a full one).
"""

from __future__ import annotations

import functools
import itertools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from controller.adapters.kube import Body, Kube, KubeError
from controller.adapters.watching import Handler, Reflector, Selector
from controller.model.objects import LABEL_APP, LABEL_INSTANCE, ObjectKey

log = logging.getLogger(__name__)

# (error or None after a good list): how subscribers learn that a set's list is refused
# (403: health names the RBAC gap) and when it is allowed again.
ListHandler = Callable[[KubeError | None], None]
# How long a reader waits for a set that is not fresh before it lists directly.
SYNC_TIMEOUT = 10.0
# Statuses that will not change by waiting: a reader lists directly (and gets the error).
_PERMANENT = frozenset({400, 401, 403, 404, 405})
# Seconds a watched change waits for the answer of a write of ours with its version (our
# write's event often comes first): until then the instance's stamp is unknown (`changes`
# answers a number never seen), after it the change is someone else's and stamps.
OURS_GRACE = 5.0
# Objects a set remembers having left it (their last version), for write answers that
# arrive after the DELETED: far more than can be deleted while one write is in flight.
GONE_KEPT = 1024


class _Items(dict[ObjectKey, Body]):
    """A set's objects by key, also indexed by their instance label; remembers the copy
    the last change replaced or removed (`replaced`: whose views must hear of it)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_instance: dict[str, dict[ObjectKey, Body]] = {}
        self.replaced: Body | None = None
        self.changed: Callable[[str], None] = lambda _instance: None  # the cache's stamp
        # A change that may be our own write's event, come before its answer (the cache's
        # `_maybe`), and that answer (`_ours`): (instance, key, resourceVersion).
        self.maybe: Callable[[str, ObjectKey, str], None] = lambda *_: None
        self.ours: Callable[[str, ObjectKey, str], None] = lambda *_: None
        self.quiet = False  # set while our own write's answer is stored: no stamp
        self.stamping = False  # set once read (`LiveCache._stamping`): before, nothing to do

    def __setitem__(self, key: ObjectKey, obj: Body) -> None:
        old = self.get(key)
        self._unindex(key, stamp=False)
        super().__setitem__(key, obj)
        self.by_instance.setdefault(_instance_of(obj), {})[key] = obj
        # A set only health reads (Pods, ReplicaSets: most of the events) compares nothing.
        if self.quiet or not self.stamping:
            return
        if old is not None and _instance_of(old) != _instance_of(obj):
            self.changed(_instance_of(old))
        if old is None or _instance_of(old) != _instance_of(obj) or \
                _planned(old) != _planned(obj):
            self.maybe(_instance_of(obj), key, _version(obj))

    def __delitem__(self, key: ObjectKey) -> None:
        self._unindex(key)
        super().__delitem__(key)

    def pop(self, key: ObjectKey, *default: Any) -> Any:
        if key in self:
            self._unindex(key)
        return super().pop(key, *default)

    def _unindex(self, key: ObjectKey, stamp: bool = True) -> None:
        old = self.replaced = self.get(key)
        if old is not None:
            if stamp:
                self.changed(_instance_of(old))
            index = self.by_instance.get(_instance_of(old))
            if index is not None:
                index.pop(key, None)
                if not index:
                    self.by_instance.pop(_instance_of(old), None)


class _View:
    """One subscriber of a set, seeing only what its own selector selects (None: all)."""

    def __init__(self, handler: Handler, on_list: ListHandler | None,
                 match: Callable[[Body], bool] | None, selector: Selector) -> None:
        self.handler = handler
        self.on_list = on_list
        self.match = match
        self.selector = selector
        self.seen: set[ObjectKey] = set()  # what it was told is there (filtered views)

    def deliver(self, kind: str, obj: Body) -> None:
        if self.match is None or kind == "SYNCED":
            _call(self.handler, kind, obj, self.selector)
            return
        key = ObjectKey.of(obj)
        if kind != "DELETED" and self.match(obj):
            told = "ADDED" if key not in self.seen else kind  # came to match: new here
            self.seen.add(key)
            _call(self.handler, told, obj, self.selector)
        elif key in self.seen:  # gone, or no longer selected (labels edited)
            self.seen.discard(key)
            _call(self.handler, "DELETED", obj, self.selector)


class Watch(Reflector):
    """One watched set in the cache: a Reflector whose events go to many subscribers (each
    through its view), and whose copy takes our writes' answers (`take`)."""

    def __init__(self, kube: Kube, selector: Selector, watch_timeout: int) -> None:
        super().__init__(kube, selector, watch_timeout=watch_timeout)
        self.handler = self._fan_out
        self.items: _Items = _Items()
        # Views of every instance, and those of one instance (by its label value): an
        # event goes to the views that can select it, not to every instance's.
        self._all: list[_View] = []
        self._by_instance: dict[str, list[_View]] = {}
        self._match = _matcher(selector)
        self._gone: OrderedDict[ObjectKey, Body] = OrderedDict()  # left the set: last seen

    # -- subscribers ------------------------------------------------------------------------

    def subscribe(self, handler: Handler, on_list: ListHandler | None = None,
                  view: Selector | None = None) -> None:
        """Add a subscriber, seeing what `view` selects (default: the whole set); if the
        set is listed it gets the current objects (ADDED) and SYNCED first, in order with
        everything after. Must not be called while holding a lock the handler takes (it
        runs here, under the set's lock)."""
        wanted = view if view is not None else self.selector
        sub = _View(handler, on_list, _view_matcher(self.selector, wanted), wanted)
        instance = _instance_term(wanted)
        with self.lock:
            if instance is None:
                self._all.append(sub)
            else:
                self._by_instance.setdefault(instance, []).append(sub)
            if self.synced.is_set():
                for obj in list(self._candidates(instance)):
                    sub.deliver("ADDED", obj)
                sub.deliver("SYNCED", {})
            if on_list is not None and self.error is not None and self.error.status == 403:
                on_list(self.error)

    def unsubscribe(self, handler: Handler) -> None:
        with self.lock:
            self._all = [s for s in self._all if s.handler is not handler]
            for instance, subs in list(self._by_instance.items()):
                kept = [s for s in subs if s.handler is not handler]
                if kept:
                    self._by_instance[instance] = kept
                else:
                    del self._by_instance[instance]

    def _views(self) -> list[_View]:
        return [*self._all, *(s for subs in self._by_instance.values() for s in subs)]

    def _candidates(self, instance: str | None) -> list[Body]:
        if instance is None:
            return list(self.items.values())
        return list(self.items.by_instance.get(instance, {}).values())

    def _fan_out(self, kind: str, obj: Body) -> None:
        if kind == "DELETED":  # every removal is emitted here, under the set's lock
            key = ObjectKey.of(obj)
            self._gone[key] = obj
            self._gone.move_to_end(key)
            if len(self._gone) > GONE_KEPT:
                self._gone.popitem(last=False)
        if kind == "SYNCED":
            subs = self._views()
        else:
            # The views of its instance now, and of the one it had (a label edited away).
            replaced, self.items.replaced = self.items.replaced, None
            instances = {_instance_of(obj)}
            if replaced is not None:
                instances.add(_instance_of(replaced))
            subs = [*self._all, *(s for i in instances for s in self._by_instance.get(i, ()))]
        for sub in subs:
            sub.deliver(kind, obj)

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
        for sub in self._views():
            if sub.on_list is not None:
                try:
                    sub.on_list(error)
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

    def snapshot(self, view: Selector | None = None) -> list[Body]:
        """A copy of the objects `view` selects (default: all)."""
        match = _view_matcher(self.selector, view) if view is not None else None
        with self.lock:
            found = self._candidates(_instance_term(view) if view is not None else None)
        return found if match is None else [o for o in found if match(o)]

    def find(self, view: Selector, name: str, namespace: str) -> Body | None:
        """The object of that name that `view` selects, by key (no scan)."""
        group = self.selector.api_version.rpartition("/")[0]
        key = ObjectKey(group, self.selector.kind, namespace, name)
        match = _view_matcher(self.selector, view)
        with self.lock:
            obj = self.items.get(key)
        return obj if obj is None or match is None or match(obj) else None

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
                if old is not None:  # our write's own event came first
                    self.items.ours(_instance_of(obj), key, _version(obj))
                return  # not news; or an answer that lost the race with its DELETED
            self._gone.pop(key, None)
            # What a pass wrote is what it planned: no reason for another full pass (the
            # watch's event of this version is no news after it). Another writer's change
            # still comes as a later version, and stamps.
            self.items.quiet = True
            try:
                self.items[key] = obj
            finally:
                self.items.quiet = False
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

    def __init__(self, kube: Kube, *, watch_timeout: int = 300,
                 sync_timeout: float = SYNC_TIMEOUT, ours_grace: float = OURS_GRACE) -> None:
        self.kube = kube
        self.ours_grace = ours_grace
        # Each set re-watches when its watch times out: with many namespaces that is many
        # sets (1,000 instances, 10 a namespace: 800), and a re-watch per set and minute was
        # a request and, past the client's connection pool, a TLS handshake each, in a
        # steady state that should cost nothing. stop() ends a waiting watch at once
        # (Reflector.stop), so a long one does not delay stopping.
        self.watch_timeout = watch_timeout
        self.sync_timeout = sync_timeout
        self._watches: dict[Selector, Watch] = {}
        # (apiVersion, kind) -> namespace -> its sets: a write's answer finds its sets
        # without scanning all of them (1,000 instances: 800 sets, 20,000 writes a start).
        self._by_kind: dict[tuple[str, str], dict[str, list[Watch]]] = {}
        self._lock = threading.Lock()
        self._stopped = False
        # Instance label -> the stamp of the last change to one of its objects (`changes`).
        self._stamps = itertools.count(1)
        self._changed: dict[str, int] = {}
        self._stamp_lock = threading.Lock()
        # instance -> {(key, resourceVersion): when seen} of changes that may be our writes'
        self._pending: dict[str, dict[tuple[ObjectKey, str], float]] = {}
        self._unknown = itertools.count(-1, -1)
        kube.on_written = self.written

    def watch(self, selector: Selector) -> Watch:
        """The set that serves `selector` (one per kind and namespace, see the module
        doc), started now if it is new. Read it through `selector` (`subscribe`,
        `objects`, `get` here do): the set itself may hold more."""
        base = _base(selector)
        with self._lock:
            found = self._watches.get(base)
            if found is None and base.namespace:
                found = self._watches.get(replace(base, namespace=""))
            if found is None:
                found = Watch(self.kube, base, self.watch_timeout)
                self._watches[base] = found
                self._by_kind.setdefault((base.api_version, base.kind), {}).setdefault(
                    base.namespace, []).append(found)
                if not self._stopped:
                    found.start()
            return found

    def changes(self, instance: str) -> int:
        """A stamp that moves whenever an object labelled with `instance` changes in any
        set (module doc): equal stamps, nothing of it changed in between. While a change
        may still be one of our writes (`OURS_GRACE`), a number never answered before."""
        with self._stamp_lock:
            pending = self._pending.get(instance)
            if pending:
                self._promote(instance, pending, time.monotonic())
                if pending:
                    return next(self._unknown)
                del self._pending[instance]
            return self._changed.get(instance, 0)

    def _promote(self, instance: str, pending: dict[tuple[ObjectKey, str], float],
                 now: float) -> None:
        """Changes no answer of ours claimed within the grace are someone else's: they
        stamp (under `_stamp_lock`)."""
        due = []
        for change, at in pending.items():  # in the order seen: the due ones come first
            if now - at < self.ours_grace:
                break
            due.append(change)
        for change in due:
            del pending[change]
        if due:
            self._changed[instance] = next(self._stamps)

    def _stamp(self, instance: str) -> None:
        with self._stamp_lock:  # sets of several kinds stamp one instance
            self._changed[instance] = next(self._stamps)

    def _maybe(self, instance: str, key: ObjectKey, version: str) -> None:
        now = time.monotonic()
        with self._stamp_lock:
            pending = self._pending.setdefault(instance, {})
            # Here too, not only when read: the objects of an instance no pass here reads
            # (another replica's shard, unlabelled kinds) would pile up otherwise.
            self._promote(instance, pending, now)
            # The first sighting (a version in two sets comes twice): `_promote`'s order.
            pending.setdefault((key, version), now)

    def _ours(self, instance: str, key: ObjectKey, version: str) -> None:
        """Our write's answer: the change its watch event brought first was ours."""
        with self._stamp_lock:
            pending = self._pending.get(instance)
            if pending is not None:
                pending.pop((key, version), None)

    def sets(self) -> list[Watch]:
        """Every set watched so far."""
        with self._lock:
            return list(self._watches.values())

    def subscribe(self, selector: Selector, handler: Handler,
                  on_list: ListHandler | None = None) -> Watch:
        watch = self.watch(selector)
        watch.subscribe(handler, on_list, selector)
        return watch

    def objects(self, selector: Selector, timeout: float | None = None) -> list[Body] | None:
        """The set's objects once it is fresh; None when it did not catch up within
        `timeout` (or its list is refused): the caller must list directly."""
        watch = self.watch(selector)
        if not watch.wait_fresh(self.sync_timeout if timeout is None else timeout):
            return None
        self._stamping(watch)
        return watch.snapshot(selector)

    def get(self, selector: Selector, name: str, namespace: str = "",
            timeout: float | None = None) -> tuple[bool, Body | None]:
        """(True, the object or None when absent) from a fresh set; (False, None) when the
        set is not fresh in time: the caller must GET directly."""
        watch = self.watch(selector)
        if not watch.wait_fresh(self.sync_timeout if timeout is None else timeout):
            return False, None
        self._stamping(watch)
        return True, watch.find(selector, name, namespace)

    def _stamping(self, watch: Watch) -> None:
        """From now on `watch` stamps its changes: set once it is fresh and before it is
        read, so what lands before the read is in it and what lands after moves the
        stamp. Its first list stamps nothing (no one read it before it was fresh): when a
        restart's passes overlapped their namespaces' first lists, 200 of 1,000 instances
        ran a second full pass."""
        watch.items.changed = self._stamp
        watch.items.maybe = self._maybe
        watch.items.ours = self._ours
        watch.items.stamping = True  # last: a change from here on finds every hook set

    def written(self, obj: Body) -> None:
        """A write's answer (from `Kube`): into every set that holds or selects it."""
        if not isinstance(obj.get("metadata"), dict) or not obj.get("kind"):
            return
        namespace = obj["metadata"].get("namespace") or ""
        with self._lock:
            spaces = self._by_kind.get((str(obj.get("apiVersion")), str(obj["kind"])), {})
            watches = [*spaces.get("", ()), *(spaces.get(namespace, ()) if namespace else ())]
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


def _version(obj: Body) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def _later(obj: Body, old: Body) -> bool:
    """Whether `obj` is a later version than `old`. resourceVersions are etcd revisions:
    compared as numbers when both are; anything else is taken as news."""
    new_v, old_v = _version(obj), _version(old)
    if new_v.isdigit() and old_v.isdigit():
        return int(new_v) > int(old_v)
    return new_v != old_v


# The selector helpers below are pure and called per cache lookup (every instance's
# request scan each second, every pass): cached, as the selectors in use are few.
@functools.lru_cache(maxsize=4096)
def _terms(label_selector: str) -> tuple[str, ...] | None:
    """The equality terms of a label selector; None when it has another form (!=, in,
    exists), which only the API server evaluates."""
    terms = [t.strip() for t in label_selector.split(",") if t.strip()]
    if any("=" not in t or "!" in t or " " in t for t in terms):
        return None
    return tuple(t.replace("==", "=") for t in terms)


@functools.lru_cache(maxsize=4096)
def _base(selector: Selector) -> Selector:
    """The set that serves `selector`: the same kind and namespace with only the app's
    label term (a selector of another form is watched as it is)."""
    terms = _terms(selector.label_selector)
    if terms is None:
        return selector
    kept = ",".join(t for t in terms if t.split("=", 1)[0] == LABEL_APP)
    return replace(selector, label_selector=kept)


def _instance_term(selector: Selector) -> str | None:
    """The instance label's value a selector requires (None: any)."""
    for term in _terms(selector.label_selector) or ():
        key, _, value = term.partition("=")
        if key == LABEL_INSTANCE:
            return value
    return None


# Annotations Kubernetes' own controllers write on the objects they run (the Deployment
# controller's revision): no manifest sets them, and they change as a rollout goes.
_BOOKKEEPING = ("deployment.kubernetes.io/",)
_BOOKKEEPING_FIELDS = tuple(f"f:{prefix}" for prefix in _BOOKKEEPING)


def _planned(obj: Body) -> tuple[Any, ...]:
    """What of an object a pass can plan from: all of it but its status and the
    bookkeeping of the server (its resourceVersion; managedFields without their times and
    status fields) and of Kubernetes' controllers (`_BOOKKEEPING` annotations). The
    controller manager rolling out a new Deployment (its status three times, its revision
    annotation) is no drift, and health follows it on its own (the reporters): it must
    not make the next interval pass a full one (1,000 new instances ran 700 full interval
    passes during their cold start for that)."""
    meta = obj.get("metadata") or {}
    managers = []
    for m in meta.get("managedFields") or ():
        # Before Kubernetes 1.22 one entry holds a manager's status and other fields.
        fields = {k: v for k, v in (m.get("fieldsV1") or {}).items() if k != "f:status"}
        written = (fields.get("f:metadata") or {}).get("f:annotations") or {}
        if any(k.startswith(_BOOKKEEPING_FIELDS) for k in written):
            kept = {k: v for k, v in written.items() if not k.startswith(_BOOKKEEPING_FIELDS)}
            fields = {**fields, "f:metadata": {**fields["f:metadata"], "f:annotations": kept}}
            if fields["f:metadata"] == {"f:annotations": {}}:
                del fields["f:metadata"]
        if fields:
            managers.append((m.get("manager"), m.get("operation"), m.get("apiVersion"),
                             fields))
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if not k.startswith(_BOOKKEEPING)}
    return ({k: v for k, v in obj.items() if k not in ("status", "metadata")},
            {k: v for k, v in meta.items()
             if k not in ("resourceVersion", "managedFields", "annotations")},
            annotations, managers)


def _instance_of(obj: Body) -> str:
    return str(((obj.get("metadata") or {}).get("labels") or {}).get(LABEL_INSTANCE, ""))


@functools.lru_cache(maxsize=4096)
def _view_matcher(base: Selector, view: Selector) -> Callable[[Body], bool] | None:
    """What a view of `base` must check on each object (None: nothing, it is the set)."""
    if _terms(base.label_selector) == _terms(view.label_selector) and \
            base.namespace == view.namespace and base.field_selector == view.field_selector:
        return None
    match = _matcher(view)
    if base.namespace == view.namespace:
        return match
    namespace = view.namespace  # a namespace's view of the cluster-wide set
    return lambda obj: ((obj.get("metadata") or {}).get("namespace") or "") == namespace \
        and match(obj)


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
