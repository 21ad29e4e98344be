"""Another instance's conditions follow its health between passes (issue 13), against the
local control plane: its Ready turns True when its Pods become ready, with no pass in
between (the loop's interval is an hour). Before the shared reporters
(runtime/reporting.py Reporters) only the controller's own instance had a reporter, and
another instance stayed Ready=False until its next pass (bench_scale: 100 instances Ready
a whole interval after start)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from controller.adapters.kube import Kube
from controller.adapters.sources.resource import API_VERSION, KIND
from controller.config import InstanceSettings, LoopSettings
from controller.runtime.controller import FINALIZER
from devcluster import kubelet
from tests.support.api import Api
from tests.support.waiting import wait_for


@pytest.fixture
def other(kube: Kube, namespace: str) -> Iterator[str]:
    """A second namespace holding the instance "beta" (finalizer stripped at the end)."""
    name = f"{namespace}-b"
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    kube.create({"apiVersion": API_VERSION, "kind": KIND,
                 "metadata": {"name": "beta", "namespace": name},
                 "spec": {"global": {"namespace": name}}})
    yield name
    for obj in kube.list(API_VERSION, KIND, name)[0]:
        kube.patch(API_VERSION, KIND, obj["metadata"]["name"],
                   {"metadata": {"finalizers": []}}, name)
    kube.delete("v1", "Namespace", name)


def _ready(obj: dict[str, Any] | None) -> str:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return str(c.get("status"))
    return ""


def test_another_instance_turns_ready_between_passes(
        kube: Kube, namespace: str, other: str, make_api: Callable[..., Api]) -> None:
    api = make_api(instances=InstanceSettings(namespaces=(namespace, other)),
                   loop=LoopSettings(interval=3600, jitter=0))
    controller = api.controller
    key = (other, "beta")
    queue = controller.loop.queue

    def settled() -> bool:
        """Its passes are done (the start pass, and the one its finalizer write woke)
        and nothing is queued for it but the hour's timer."""
        state = controller.loop_state(key)
        obj = kube.get(API_VERSION, KIND, "beta", other) or {}
        return state is not None and state.passes >= 1 and key not in queue.running() \
            and not queue.pending(key) and FINALIZER in (obj.get("metadata") or {}).get(
                "finalizers", []) and "lastAppliedRevision" in (obj.get("status") or {})

    wait_for(settled, timeout=120, message="beta's passes done")
    assert _ready(kube.get(API_VERSION, KIND, "beta", other)) == "False"  # Pods pending
    state = controller.loop_state(key)
    assert state is not None
    passes = state.passes

    def ready() -> bool:
        kubelet.settle(kube, other)  # what a kubelet does: Pods Running and Ready
        return _ready(kube.get(API_VERSION, KIND, "beta", other)) == "True"

    wait_for(ready, timeout=60, message="beta Ready without a pass")
    assert state.passes == passes
