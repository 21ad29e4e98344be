"""The health monitor's published view (runtime/observing.py): what the API's event loop
reads without a lock. It must never be stale: after any change it is either the new health
or None ("ask services()"), and a change is published by the thread that made it, without
a reader, at most once per gap. Driven through the monitor's own subscription to the
instances' set, with an in-memory stand-in for the live cache (no cluster)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from controller.adapters.kube import Body
from controller.adapters.watching import Selector
from controller.config import Config
from controller.runtime import observing
from controller.runtime.observing import HealthMonitor

Handler = Callable[[str, Body], None]


class FakeLive:
    """The live cache as the monitor uses it: subscriptions by set, nothing watched."""

    def __init__(self) -> None:
        self.handlers: dict[Selector, Handler] = {}

    def subscribe(self, selector: Selector, handler: Handler,
                  on_list: Callable[..., None] | None = None) -> None:
        self.handlers[selector] = handler

    def watch(self, selector: Selector) -> Any:
        return self

    def unsubscribe(self, handler: Handler) -> None:
        pass


def instance(cfg: Config, services: list[str]) -> Body:
    return {"apiVersion": "conductor.io/v1alpha1", "kind": "DeploymentParameters",
            "metadata": {"name": cfg.instance, "namespace": cfg.namespace},
            "status": {"services": {name: {} for name in services}}}


def monitor(publish_gap: float) -> tuple[HealthMonitor, Handler, Config]:
    cfg = Config()
    live = FakeLive()
    m = HealthMonitor(None, cfg, live=live, publish_gap=publish_gap)  # type: ignore[arg-type]
    m.start()
    (send,) = live.handlers.values()
    return m, send, cfg


def names(listing: Any) -> list[str]:
    return [h.name for h in listing]


def test_nothing_is_published_before_the_instance_is_listed() -> None:
    m, send, cfg = monitor(publish_gap=0)
    assert m.services_now() is None
    send("ADDED", instance(cfg, ["redis"]))
    assert m.services_now() is None  # not listed yet: services() waits or says NotObserved
    send("SYNCED", {})
    assert names(m.services_now() or ()) == ["redis"]


def test_each_change_is_published_by_the_thread_that_made_it() -> None:
    m, send, cfg = monitor(publish_gap=0)
    assert m.services_now() is None  # an event loop reads this monitor from now on
    send("SYNCED", {})
    send("ADDED", instance(cfg, ["redis"]))
    assert names(m.services_now() or ()) == ["redis"]  # no reader computed it
    send("MODIFIED", instance(cfg, ["postgres", "redis"]))
    published = m.services_now()
    assert published is not None and names(published) == ["postgres", "redis"]
    assert list(published) == m.services()


def test_a_monitor_no_event_loop_reads_computes_only_when_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    computed: list[str] = []
    real = observing.aggregate

    def counting(name: str, *args: Any, **kwargs: Any) -> Any:
        computed.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(observing, "aggregate", counting)
    m, send, cfg = monitor(publish_gap=0)
    send("SYNCED", {})
    for services in (["redis"], ["postgres", "redis"], ["frontend", "postgres", "redis"]):
        send("MODIFIED", instance(cfg, services))
    assert computed == []  # three changes, no reader: nothing computed
    assert names(m.services()) == ["frontend", "postgres", "redis"]
    assert sorted(computed) == ["_shared", "frontend", "postgres", "redis"]


def test_a_burst_is_never_served_stale_only_unpublished_until_a_reader_computes_it() -> None:
    m, send, cfg = monitor(publish_gap=3600)  # only the first change publishes itself
    assert m.services_now() is None
    send("SYNCED", {})
    send("ADDED", instance(cfg, ["redis"]))
    assert m.services_now() is None  # a change since the published view: not served
    assert names(m.services()) == ["redis"]  # the reader on the pool computes it...
    assert names(m.services_now() or ()) == ["redis"]  # ...and the loop has it
    send("MODIFIED", instance(cfg, ["frontend", "redis"]))
    assert m.services_now() is None
    assert names(m.services()) == ["frontend", "redis"]
    assert names(m.services_now() or ()) == ["frontend", "redis"]


def test_a_stopped_monitor_publishes_nothing_more() -> None:
    m, send, cfg = monitor(publish_gap=0)
    assert m.services_now() is None
    send("SYNCED", {})
    send("ADDED", instance(cfg, ["redis"]))
    m.stop()
    send("MODIFIED", instance(cfg, ["postgres", "redis"]))
    assert m.services_now() is None or names(m.services_now() or ()) == ["redis"]
