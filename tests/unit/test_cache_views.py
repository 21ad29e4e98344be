"""The live cache's views (issue 13): one watched set per kind and namespace serves every
instance, each reader seeing exactly what its own selector selects, against a fake API
server that evaluates label selectors as the real one does (no cluster)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from controller.adapters.cache import LiveCache
from controller.adapters.kube import Body
from controller.adapters.watching import Selector
from controller.model.objects import LABEL_APP, LABEL_INSTANCE, LABEL_INSTANCE_NAMESPACE
from tests.support.waiting import wait_for

_END = object()


def ours(instance: str, namespace: str = "ns") -> str:
    return (f"{LABEL_APP}=conductor,{LABEL_INSTANCE}={instance},"
            f"{LABEL_INSTANCE_NAMESPACE}={namespace}")


def cm(name: str, version: int, instance: str, namespace: str = "ns") -> Body:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace,
                         "resourceVersion": str(version),
                         "labels": {LABEL_APP: "conductor", LABEL_INSTANCE: instance,
                                    LABEL_INSTANCE_NAMESPACE: namespace}}}


def dp(name: str, version: int, namespace: str = "ns", **labels: str) -> Body:
    return {"apiVersion": "conductor.io/v1alpha1", "kind": "DeploymentParameters",
            "metadata": {"name": name, "namespace": namespace,
                         "resourceVersion": str(version), "labels": labels}}


def selected(obj: Body, namespace: str, label_selector: str) -> bool:
    meta = obj["metadata"]
    labels = meta.get("labels") or {}
    terms = [t.split("=", 1) for t in label_selector.split(",") if t]
    return (not namespace or meta["namespace"] == namespace) and \
        all(labels.get(k) == v for k, v in terms)


class SelectingKube:
    """Lists and watches evaluate namespace and label selector; records each list's."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], Body] = {}
        self.lists: list[tuple[str, str, str]] = []  # (kind, namespace, label selector)
        self.on_written: Callable[[Body], None] | None = None
        self._open: list[tuple[str, str, str, queue.Queue[Any]]] = []
        self._lock = threading.Lock()

    def list(self, api_version: str, kind: str, namespace: str = "",
             label_selector: str = "", field_selector: str = "") -> tuple[list[Body], str]:
        self.lists.append((kind, namespace, label_selector))
        return [o for (k, _, _), o in self.objects.items()
                if k == kind and selected(o, namespace, label_selector)], "1"

    def watch(self, api_version: str, kind: str, namespace: str = "",
              resource_version: str = "", label_selector: str = "",
              timeout_seconds: int = 300, field_selector: str = "",
              on_open: Callable[[Any], None] | None = None) -> Iterator[tuple[str, Body]]:
        stream: queue.Queue[Any] = queue.Queue()
        with self._lock:
            self._open.append((kind, namespace, label_selector, stream))
        if on_open is not None:
            on_open(None)
        while (item := stream.get()) is not _END:
            yield item

    def send(self, kind: str, obj: Body) -> None:
        meta = obj["metadata"]
        key = (obj["kind"], meta["namespace"], meta["name"])
        old = self.objects.get(key)
        if kind == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        with self._lock:
            streams = list(self._open)
        for k, ns, sel, stream in streams:
            if k != obj["kind"]:
                continue
            now = kind != "DELETED" and selected(obj, ns, sel)
            before = old is not None and selected(old, ns, sel)
            if now:
                stream.put(("ADDED" if not before else kind, obj))
            elif before:
                stream.put(("DELETED", obj))

    def end(self) -> None:
        with self._lock:
            streams, self._open = self._open, []
        for *_, stream in streams:
            stream.put(_END)


@pytest.fixture
def kube() -> SelectingKube:
    return SelectingKube()


@pytest.fixture
def live(kube: SelectingKube) -> Iterator[LiveCache]:
    cache = LiveCache(kube, sync_timeout=5.0)  # type: ignore[arg-type]
    yield cache
    cache.stop()
    kube.end()


def names(items: list[Body] | None) -> set[str]:
    assert items is not None
    return {o["metadata"]["name"] for o in items}


def test_every_instance_of_a_namespace_shares_one_set_per_kind(
        kube: SelectingKube, live: LiveCache) -> None:
    """1,000 instances in a namespace must not be 1,000 watches per kind: the set is
    listed (and watched) with the app's label only; each instance still reads its own."""
    for i in range(3):
        kube.send("ADDED", cm(f"a{i}", 10 + i, "a"))
        kube.send("ADDED", cm(f"b{i}", 20 + i, "b"))
    a, b = (Selector("v1", "ConfigMap", "ns", ours(x)) for x in "ab")
    assert names(live.objects(a)) == {"a0", "a1", "a2"}
    assert names(live.objects(b)) == {"b0", "b1", "b2"}
    assert len(live.sets()) == 1
    assert kube.lists == [("ConfigMap", "ns", f"{LABEL_APP}=conductor")]
    assert live.get(a, "a1", "ns") == (True, cm("a1", 11, "a"))
    assert live.get(a, "b1", "ns") == (True, None)  # there, but not this instance's


def test_a_view_hears_only_its_instance_and_a_label_edited_away_is_a_deletion(
        kube: SelectingKube, live: LiveCache) -> None:
    heard: dict[str, list[tuple[str, str]]] = {"a": [], "b": []}
    def hearer(x: str) -> Callable[[str, Body], None]:
        return lambda kind, obj: heard[x].append((kind, obj.get("metadata", {}).get("name",
                                                                                     "")))

    for x in "ab":
        live.subscribe(Selector("v1", "ConfigMap", "ns", ours(x)), hearer(x))
    kube.send("ADDED", cm("a0", 10, "a"))
    kube.send("ADDED", cm("b0", 11, "b"))
    kube.send("MODIFIED", cm("a0", 12, "b"))  # its instance label edited: now b's
    kube.send("DELETED", cm("a0", 13, "b"))
    wait_for(lambda: len(heard["b"]) == 4)
    assert heard["a"] == [("SYNCED", ""), ("ADDED", "a0"), ("DELETED", "a0")]
    assert heard["b"] == [("SYNCED", ""), ("ADDED", "b0"), ("ADDED", "a0"),
                          ("DELETED", "a0")]


def test_the_instance_selector_and_a_pass_read_the_same_copy(
        kube: SelectingKube, live: LiveCache) -> None:
    """The loop learns of a change from the labelled instances' set and the pass reads
    the object through the namespace's set: one set, so the pass reads what woke it (with
    two watches a change could wake a pass that read the older copy, and no pass followed:
    changes were lost in bench_scale)."""
    kube.send("ADDED", dp("x", 10, team="blue"))
    read: list[str] = []
    plain = Selector("conductor.io/v1alpha1", "DeploymentParameters", "ns")
    labelled = Selector("conductor.io/v1alpha1", "DeploymentParameters", "ns", "team=blue")

    def woken(kind: str, obj: Body) -> None:
        if kind == "MODIFIED":
            found, current = live.get(plain, "x", "ns")
            assert found and current is not None
            read.append(current["metadata"]["resourceVersion"])

    live.subscribe(labelled, woken)
    assert names(live.objects(plain)) == {"x"}
    for version in range(11, 31):
        kube.send("MODIFIED", dp("x", version, team="blue"))
    wait_for(lambda: len(read) == 20)
    assert read == [str(v) for v in range(11, 31)]
    assert len(live.sets()) == 1
    kube.send("ADDED", dp("y", 40, team="red"))  # not selected by the labelled view
    wait_for(lambda: "y" in names(live.objects(plain)))
    assert names(live.objects(labelled)) == {"x"}


def test_a_namespace_is_served_by_the_cluster_wide_set_once_there(
        kube: SelectingKube, live: LiveCache) -> None:
    kube.send("ADDED", dp("x", 10, namespace="one"))
    kube.send("ADDED", dp("y", 11, namespace="two"))
    everywhere = Selector("conductor.io/v1alpha1", "DeploymentParameters", "")
    one = Selector("conductor.io/v1alpha1", "DeploymentParameters", "one")
    assert names(live.objects(everywhere)) == {"x", "y"}
    assert names(live.objects(one)) == {"x"}
    assert live.get(one, "y", "two") == (True, None)
    assert len(live.sets()) == 1
