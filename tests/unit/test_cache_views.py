"""The live cache's views (issue 13): one watched set per kind and namespace serves every
instance, each reader seeing exactly what its own selector selects, against an in-memory
API server that evaluates label selectors as the real one does (tests/support/memkube.py,
no cluster)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from controller.adapters.cache import LiveCache
from controller.adapters.kube import Body
from controller.adapters.watching import Selector
from controller.model.objects import LABEL_APP, LABEL_INSTANCE, LABEL_INSTANCE_NAMESPACE
from tests.support.memkube import MemoryKube, live_cache
from tests.support.waiting import wait_for


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


@pytest.fixture
def kube() -> MemoryKube:
    return MemoryKube()


@pytest.fixture
def live(kube: MemoryKube) -> Iterator[LiveCache]:
    with live_cache(kube) as cache:
        yield cache


def names(items: list[Body] | None) -> set[str]:
    assert items is not None
    return {o["metadata"]["name"] for o in items}


def test_every_instance_of_a_namespace_shares_one_set_per_kind(
        kube: MemoryKube, live: LiveCache) -> None:
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
        kube: MemoryKube, live: LiveCache) -> None:
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
        kube: MemoryKube, live: LiveCache) -> None:
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
        kube: MemoryKube, live: LiveCache) -> None:
    kube.send("ADDED", dp("x", 10, namespace="one"))
    kube.send("ADDED", dp("y", 11, namespace="two"))
    everywhere = Selector("conductor.io/v1alpha1", "DeploymentParameters", "")
    one = Selector("conductor.io/v1alpha1", "DeploymentParameters", "one")
    assert names(live.objects(everywhere)) == {"x", "y"}
    assert names(live.objects(one)) == {"x"}
    assert live.get(one, "y", "two") == (True, None)
    assert len(live.sets()) == 1
