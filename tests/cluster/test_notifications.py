"""Notifications out from the real controller on the real control plane: a pod that cannot
pull its image is one message, its recovery another (a local HTTP receiver on loopback)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from controller.config import NotificationSettings
from controller.runtime.controller import Controller
from devcluster import kubelet
from tests.support.cluster import App, wait_pods
from tests.support.inbox import Inbox
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    box = Inbox()
    yield box
    box.down()


def test_an_unhealthy_service_is_one_message_and_its_recovery_another(
        app: App, inbox: Inbox, tmp_path: Path) -> None:
    (tmp_path / "url").write_text(inbox.url)
    (tmp_path / "key").write_text("cluster-test-key")
    (tmp_path / "receivers.yaml").write_text(
        f"receivers:\n  - {{name: ops, type: webhook, urlFile: {tmp_path / 'url'}, "
        f"secretFile: {tmp_path / 'key'}, kinds: [unhealthy, recovered]}}\n")
    cfg = replace(app.cfg, notify=NotificationSettings(
        receivers_file=str(tmp_path / "receivers.yaml"), backoff_initial=0.1,
        backoff_max=1.0))
    controller = Controller(cfg).start()
    try:
        wait_for(lambda: controller.engine.last is not None and controller.engine.last.ok,
                 timeout=60, message="the first pass")
        for name, count in (("frontend", 2), ("redis", 1), ("postgres", 1)):
            for pod in wait_pods(app, name, count):
                kubelet.mark_ready(app.kube, pod)
        (pod,) = wait_pods(app, "redis", 1)
        kubelet.mark_waiting(app.kube, pod, "ImagePullBackOff", "Back-off pulling image")
        wait_for(lambda: inbox.kinds() == ["unhealthy"], timeout=30,
                 message=f"the unhealthy message, got {inbox.kinds()}")
        message = inbox.messages()[0]
        assert (message["instance"], message["service"]) == ("default", "redis")
        assert "ImagePullBackOff" in message["message"]
        # Passes go on while it is unhealthy: still one message.
        assert controller.engine.reconcile().ok
        kubelet.mark_ready(app.kube, pod)
        wait_for(lambda: inbox.kinds() == ["unhealthy", "recovered"], timeout=30,
                 message=f"the recovery message, got {inbox.kinds()}")
        # Everything stored so far has been looked at: no other message follows.
        wait_for(lambda: (c := controller.notifier.cursors and
                          controller.notifier.cursors.load("ops")) and
                 c[0] >= controller.events.last_id, timeout=10, message="cursor caught up")
        assert inbox.kinds() == ["unhealthy", "recovered"]
    finally:
        controller.stop()
