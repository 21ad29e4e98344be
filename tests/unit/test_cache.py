"""The live cache against an in-memory API server (tests/support/memkube.py, no cluster):
what a reader may trust and when, shared subscriptions, our own writes read back, and the
Applier's rule (plan from a fresh set, else LIST)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from controller.adapters.cache import LiveCache
from controller.adapters.kube import Body, KubeError
from controller.adapters.watching import Selector
from controller.config import Config
from controller.model.objects import LABEL_APP, LABEL_INSTANCE, LABEL_INSTANCE_NAMESPACE
from controller.reconcile.applying import Applier, selector
from tests.support.memkube import MemoryKube, live_cache
from tests.support.waiting import wait_for

CFG = Config(namespace="ns", default_namespace="ns")
OURS = {LABEL_APP: CFG.app_name, LABEL_INSTANCE: CFG.instance,
        LABEL_INSTANCE_NAMESPACE: CFG.namespace}
SEL = Selector("v1", "ConfigMap", "ns", selector(CFG))


def cm(name: str, version: int, labels: dict[str, str] | None = None, **data: str) -> Body:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": str(version),
                         "labels": dict(OURS if labels is None else labels)},
            "data": data}


@pytest.fixture
def kube() -> MemoryKube:
    return MemoryKube()


@pytest.fixture
def live(kube: MemoryKube) -> Iterator[LiveCache]:
    with live_cache(kube) as cache:
        yield cache


def names(items: list[Body] | None) -> dict[str, str]:
    assert items is not None
    return {o["metadata"]["name"]: o["metadata"]["resourceVersion"] for o in items}


def test_a_set_is_listed_once_then_follows_the_watch(kube: MemoryKube, live: LiveCache) -> None:
    kube.put(cm("a", 10))
    assert names(live.objects(SEL)) == {"a": "10"}
    kube.send("MODIFIED", cm("a", 11, x="1"))
    kube.send("ADDED", cm("b", 12))
    wait_for(lambda: names(live.objects(SEL)) == {"a": "11", "b": "12"})
    kube.send("DELETED", cm("a", 13))
    wait_for(lambda: names(live.objects(SEL)) == {"b": "12"})
    assert len(kube.lists) == 1  # every read after the first came from memory


def test_a_set_that_is_not_fresh_is_not_trusted(kube: MemoryKube) -> None:
    """Starting, relisting after 410, or disconnected: `objects` waits, then says None
    (the caller lists directly); it answers again once the set follows the server."""
    kube.fail_list = KubeError("connection refused", status=0, reason="ConnectionError")
    with live_cache(kube, sync_timeout=0.3) as live:
        assert live.objects(SEL) is None  # never listed: not trusted
        kube.fail_list = None
        kube.put(cm("a", 10))
        wait_for(lambda: live.objects(SEL) is not None, timeout=10)
        watch = live.watch(SEL)
        wait_for(lambda: kube.open_watches() == 1)
        # The watch drops and cannot resume: not fresh until it is back.
        kube.fail_watch = KubeError("dropped", status=0, reason="ConnectionError")
        kube.fail_list = KubeError("connection refused", status=0, reason="ConnectionError")
        kube.end(KubeError("dropped", status=0, reason="ConnectionError"))
        wait_for(lambda: not watch.fresh.is_set())
        assert live.objects(SEL, timeout=0.1) is None
        kube.put(cm("a", 20))  # changed while we were away
        kube.fail_list = None
        assert names(live.objects(SEL, timeout=10)) == {"a": "20"}


def test_410_relists_and_the_list_replaces_the_copy(kube: MemoryKube, live: LiveCache) -> None:
    kube.put(cm("a", 10))
    kube.put(cm("b", 11))
    assert names(live.objects(SEL)) == {"a": "10", "b": "11"}
    wait_for(lambda: kube.open_watches() == 1)
    # Behind the watch's back (events compacted away): a deleted, b changed.
    kube.remove(cm("a", 10))
    kube.put(cm("b", 30))
    kube.version = 30
    kube.end(KubeError("too old resource version", status=410, reason="Expired"))
    wait_for(lambda: len(kube.lists) == 2)
    assert names(live.objects(SEL)) == {"b": "30"}


def test_a_permanent_refusal_is_not_waited_for(kube: MemoryKube) -> None:
    kube.fail_list = KubeError("forbidden", status=403, reason="Forbidden")
    with live_cache(kube, sync_timeout=30.0) as live:
        watch = live.watch(SEL)
        wait_for(lambda: watch.error is not None)
        assert live.objects(SEL) is None  # at once, not after 30 s


def test_subscribers_share_one_watch_and_get_the_current_objects_first(
        kube: MemoryKube, live: LiveCache) -> None:
    kube.put(cm("a", 10))
    first: list[tuple[str, str]] = []
    second: list[tuple[str, str]] = []
    live.subscribe(SEL, lambda kind, obj: first.append(
        (kind, (obj.get("metadata") or {}).get("name", ""))))
    wait_for(lambda: ("SYNCED", "") in first)
    live.subscribe(SEL, lambda kind, obj: second.append(
        (kind, (obj.get("metadata") or {}).get("name", ""))))
    assert second == [("ADDED", "a"), ("SYNCED", "")]
    kube.send("ADDED", cm("b", 11))
    wait_for(lambda: ("ADDED", "b") in first and ("ADDED", "b") in second)
    assert len(kube.lists) == 1


def test_our_writes_are_read_back_and_older_events_are_not_news(
        kube: MemoryKube, live: LiveCache) -> None:
    kube.put(cm("a", 10))
    assert kube.on_written == live.written
    assert names(live.objects(SEL)) == {"a": "10"}
    live.written(cm("a", 15, x="applied"))  # the answer of our apply
    assert names(live.objects(SEL)) == {"a": "15"}
    kube.send("MODIFIED", cm("a", 12, x="older"))  # in flight before our write
    kube.send("ADDED", cm("z", 16))  # a later event, so we know the older one was seen
    wait_for(lambda: "z" in names(live.objects(SEL)))
    assert names(live.objects(SEL))["a"] == "15"
    # An update that takes our labels away (orphaning) makes it leave the set.
    live.written(cm("a", 17, labels={}))
    assert "a" not in names(live.objects(SEL))


def known_stamp(live: LiveCache, other_than: int) -> int:
    """The instance's stamp once it has moved from `other_than` and no change waits for
    an answer of ours any more (`changes` answers a fresh negative number until then,
    which no comparison could hold on to)."""
    def known() -> int | None:
        stamp = live.changes(CFG.instance)
        return stamp if stamp >= 0 and stamp != other_than else None
    found: int = wait_for(known, timeout=10, message="the stamp moved and known")
    return found


def test_our_writes_do_not_stamp_their_instance_and_another_writer_does(
        kube: MemoryKube, live: LiveCache) -> None:
    """What a pass wrote is what it planned: its answer (and the watch's event of the same
    version after it) is no reason for another full pass; a later version by someone
    else is, and so is an answer that takes the object out of our set."""
    kube.put(cm("a", 10))
    assert names(live.objects(SEL)) == {"a": "10"}
    before = live.changes(CFG.instance)
    live.written(cm("a", 15, x="applied"))  # the answer of our apply
    kube.send("MODIFIED", cm("a", 15, x="applied"))  # its watch event
    other = live.changes("other")
    kube.send("ADDED", cm("z", 16, labels={**OURS, LABEL_INSTANCE: "other"}))  # a barrier
    wait_for(lambda: live.changes("other") != other, timeout=10, message="the barrier")
    assert live.changes(CFG.instance) == before
    kube.send("MODIFIED", cm("a", 17, x="edited by hand"))
    stamped = known_stamp(live, before)  # another writer's change
    live.written(cm("a", 18, labels={}))  # orphaned by us: it leaves the set
    assert live.changes(CFG.instance) not in (stamped, before)
    assert live.changes(CFG.instance) >= 0  # at once: no answer of ours is awaited


def test_our_writes_event_before_its_answer_is_ours(kube: MemoryKube) -> None:
    """Our write's watch event often comes before its answer: until the answer (with its
    version) follows, the stamp is unknown (a number never answered before, so a pass
    reading it runs in full); with the answer, the change was ours and the stamp is as it
    was; without one (someone else's change) it moves, after `ours_grace`."""
    with live_cache(kube, ours_grace=1.0) as live:
        _event_before_answer(kube, live)


def _event_before_answer(kube: MemoryKube, live: LiveCache) -> None:
    kube.put(cm("a", 10))
    assert names(live.objects(SEL)) == {"a": "10"}
    before = live.changes(CFG.instance)
    kube.send("MODIFIED", cm("a", 12, x="applied"))  # our apply's event, first
    wait_for(lambda: names(live.objects(SEL))["a"] == "12", timeout=10, message="the event")
    unknown = live.changes(CFG.instance)
    assert unknown < 0 and live.changes(CFG.instance) not in (unknown, before)
    live.written(cm("a", 12, x="applied"))  # then its answer
    assert live.changes(CFG.instance) == before
    # Someone else's change: no answer of ours follows.
    kube.send("MODIFIED", cm("a", 13, x="scaled"))
    stamped = known_stamp(live, before)  # someone else's change, past the grace
    live.written(cm("a", 12, x="applied"))  # an older answer changes nothing
    assert live.changes(CFG.instance) == stamped


def test_changes_of_an_instance_no_one_reads_here_do_not_pile_up(kube: MemoryKube) -> None:
    """Another replica's instance: no pass here reads its stamp, so its changes waiting
    for an answer of ours are settled as its next ones come, past the grace; without that
    every change it ever had stays (as many waiting as were sent, forever)."""
    every = Selector("v1", "ConfigMap", "ns", f"{LABEL_APP}={CFG.app_name}")
    other = {**OURS, LABEL_INSTANCE: "elsewhere"}
    sent = 0
    with live_cache(kube, ours_grace=0.3) as live:
        assert live.objects(every) == []  # read: the set stamps from now on

        def waiting_fewer_than_sent() -> bool:
            nonlocal sent
            sent += 1
            version = str(20 + sent)
            kube.send("MODIFIED", cm("e", 20 + sent, labels=other, x=version))
            wait_for(lambda: names(live.objects(every)).get("e") == version, timeout=10,
                     interval=0.01, message="the other instance's change")
            return len(live._pending.get("elsewhere", {})) < sent

        wait_for(waiting_fewer_than_sent, timeout=10, interval=0.05,
                 message="changes past the grace settled")


def test_a_write_answer_that_loses_the_race_with_its_deleted_does_not_bring_it_back(
        kube: MemoryKube, live: LiveCache) -> None:
    """Removing the last finalizer deletes the object; the watch may say DELETED before
    our client has read the write's answer. That answer must not put the object back
    (it did, 13 of 30 times on the local control plane: the instance was never forgotten).
    A later version (the object recreated, or our labels put back) is news again."""
    kube.put(cm("a", 10))
    events: list[tuple[str, str]] = []
    live.subscribe(SEL, lambda kind, obj: events.append(
        (kind, obj.get("metadata", {}).get("resourceVersion", ""))))
    assert names(live.objects(SEL)) == {"a": "10"}
    kube.send("MODIFIED", cm("a", 11))  # deletionTimestamp set
    kube.send("DELETED", cm("a", 13))  # the finalizer removed: gone
    wait_for(lambda: "a" not in names(live.objects(SEL)))
    live.written(cm("a", 12))  # the removal's answer, read after the DELETED
    assert "a" not in names(live.objects(SEL))
    assert events == [("ADDED", "10"), ("SYNCED", ""), ("MODIFIED", "11"), ("DELETED", "13")]
    live.written(cm("a", 20))  # recreated by us: later than the deletion
    assert names(live.objects(SEL)) == {"a": "20"}
    # The same rule when our write made it leave the set (labels edited away).
    live.written(cm("a", 21, labels={}))
    live.written(cm("a", 21))  # an answer no later than its leaving
    assert "a" not in names(live.objects(SEL))
    live.written(cm("a", 22))  # our labels put back
    assert names(live.objects(SEL)) == {"a": "22"}


def test_the_applier_plans_from_a_fresh_set_and_lists_a_stale_one(kube: MemoryKube) -> None:
    from controller.model.objects import Manifest

    kube.put(cm("a", 10))
    desired = [Manifest("svc", cm("a", 0))]
    with live_cache(kube, sync_timeout=0.3) as live:
        applier = Applier(kube, CFG, live=live)  # type: ignore[arg-type]
        assert names(list(applier.observe(desired, []).values())) == {"a": "10"}
        lists = len(kube.lists)
        assert names(list(applier.observe(desired, []).values())) == {"a": "10"}
        assert len(kube.lists) == lists  # from the cache
        # Disconnected and not resumed: the plan lists directly and sees the change.
        watch = live.watch(SEL)
        kube.fail_watch = KubeError("dropped", status=0, reason="ConnectionError")
        kube.end(KubeError("dropped", status=0, reason="ConnectionError"))
        wait_for(lambda: not watch.fresh.is_set())
        kube.fail_list = KubeError("down", status=0, reason="ConnectionError")
        kube.put(cm("a", 40))

        def direct(*args: Any, **kwargs: Any) -> tuple[list[Body], str]:
            return [cm("a", 40)], "40"

        applier.kube = type("K", (), {"list": staticmethod(direct)})()
        assert names(list(applier.observe(desired, []).values())) == {"a": "40"}
