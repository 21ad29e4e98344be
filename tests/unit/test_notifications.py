"""Notifications out, driven by a real event store and received by a real HTTP server on
127.0.0.1: one message per state change, signed, filtered, retried, never lost.

Events are added in the shapes the controller records them (the HealthReporter's health
transitions, the engine's pass events); tests/cluster/test_notifications.py has the
controller itself make them."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from controller.adapters.store.events import EventStore
from controller.config import NotificationSettings
from controller.runtime.notifying import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    Notifier,
    NotifyConfigError,
    Receiver,
    load_receivers,
)
from tests.support.inbox import FAST, Inbox, inbox_fixture  # noqa: F401 (fixture)
from tests.support.waiting import wait_for

KEY = "hmac-key-for-tests"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    with EventStore(tmp_path / "events.db") as s:
        yield s


@pytest.fixture
def receiver(inbox: Inbox, tmp_path: Path) -> Receiver:
    (tmp_path / "url").write_text(inbox.url + "\n")
    (tmp_path / "key").write_text(KEY)
    return Receiver("ops", "webhook", tmp_path / "url", tmp_path / "key",
                    rate_per_minute=6000)


@pytest.fixture
def notifier(store: EventStore,
             receiver: Receiver) -> Iterator[Callable[..., Notifier]]:
    started: list[Notifier] = []

    def start(*receivers: Receiver, settings: NotificationSettings = FAST) -> Notifier:
        n = Notifier(settings, store, list(receivers) or [receiver], instance="default")
        started.append(n.start())
        # Its cursor is written once it has looked at the store: events after that count.
        wait_for(lambda: all(n.cursors and n.cursors.load(r.name) for r in n.receivers),
                 timeout=10, message="the notifier's cursors")
        return n

    yield start
    for n in started:
        n.stop()


# -- the events as the controller records them ------------------------------------------


def unhealthy(store: EventStore, service: str, obj: str, reason: str = "ImagePullBackOff",
              instance: str = "default") -> None:
    key = f"ns/Deployment/{obj}"
    store.add("error", f"service {service} unhealthy: {key}: {reason}", reason=reason,
              resource=key, service=service,
              details={"object": key, "service": service, "instance": instance,
                       "namespace": "ns", "status": "unhealthy", "hint": "check the tag"})


def recovered(store: EventStore, service: str, obj: str, instance: str = "default") -> None:
    key = f"ns/Deployment/{obj}"
    store.add("success", f"service {service} is healthy again: {key} recovered",
              reason="Recovered", resource=key, service=service,
              details={"object": key, "service": service, "instance": instance,
                       "status": "healthy", "was": []})


def passed(store: EventStore, revision: str) -> None:
    store.add("info", "reconcile started (loop)", reason="PassStarted",
              details={"operation": "reconcile", "revision": revision, "services": []})
    store.add("success", "reconcile finished in 0.10s", reason="ReconcileSucceeded",
              details={"counts": {"applied": 1}, "revision": revision})


def failed(store: EventStore, revision: str) -> None:
    store.add("error", "reconcile failed: the API server refused 1 object(s)",
              reason="ReconcileFailed",
              details={"error": "validation_error", "message": "refused", "details": {},
                       "revision": revision})


def settle(inbox: Inbox, count: int, n: Notifier, timeout: float = 15.0) -> list[str]:
    """The kinds received once every receiver of `n` is done with every stored event (its
    cursor is saved only after the receiver took the message): exactly `count` of them."""
    def done() -> bool:
        return all((c := n.cursors and n.cursors.load(r.name)) and c[0] >= n.store.last_id
                   for r in n.receivers)

    wait_for(done, timeout=timeout, message=f"the notifier done, got {inbox.kinds()}")
    assert len(inbox.received) == count, inbox.kinds()
    return inbox.kinds()


# -- tests ------------------------------------------------------------------------------


def test_unhealthy_is_one_signed_message_and_recovery_another(
        store: EventStore, inbox: Inbox, notifier: Callable[..., Notifier]) -> None:
    passed(store, "generation/1")  # applied before the notifier started: no news
    n = notifier()
    unhealthy(store, "redis", "redis")
    unhealthy(store, "redis", "redis-sentinel", "CrashLoopBackOff")  # same spell
    passed(store, "generation/1")  # passes go on while it is unhealthy: no news
    passed(store, "generation/1")
    assert settle(inbox, 1, n) == ["unhealthy"]
    recovered(store, "redis", "redis")
    recovered(store, "redis", "redis-sentinel")  # the same recovery, per object
    assert settle(inbox, 2, n) == ["unhealthy", "recovered"]

    first, second = inbox.messages()
    assert first["title"] == "default/redis is unhealthy"
    assert (first["instance"], first["service"], first["severity"]) == \
        ("default", "redis", "error")
    assert "ImagePullBackOff" in first["message"]
    assert first["event"]["details"]["hint"] == "check the tag"
    assert (second["title"], second["severity"]) == ("default/redis recovered", "info")
    for headers, body in inbox.received:
        expected = "sha256=" + hmac.new(KEY.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers[SIGNATURE_HEADER.lower()], expected)
        assert headers[DELIVERY_HEADER.lower()] == json.loads(body)["id"]
    # A new spell is news again.
    unhealthy(store, "redis", "redis")
    assert settle(inbox, 3, n)[-1] == "unhealthy"


def test_a_failing_pass_is_one_message_its_recovery_another_and_a_new_revision_one(
        store: EventStore, inbox: Inbox, notifier: Callable[..., Notifier]) -> None:
    passed(store, "generation/1")  # before the notifier: seeds its state, no message
    n = notifier()
    passed(store, "generation/1")
    for _ in range(5):  # retried passes: one failure
        failed(store, "generation/2")
    assert settle(inbox, 1, n) == ["pass_failed"]
    passed(store, "generation/2")  # the fix: recovery, and a revision applied
    passed(store, "generation/2")
    assert settle(inbox, 3, n) == ["pass_failed", "pass_recovered", "revision_applied"]
    assert inbox.messages()[2]["revision"] == "generation/2"
    assert inbox.messages()[2]["title"] == "default: revision generation/2 applied"


def test_a_receiver_down_for_20_seconds_gets_everything_after_it_returns(
        store: EventStore, inbox: Inbox, notifier: Callable[..., Notifier]) -> None:
    n = notifier()
    inbox.down()
    down_at = time.monotonic()
    unhealthy(store, "web", "frontend")
    failed(store, "generation/3")
    recovered(store, "web", "frontend")
    # Refused connections for 20 s: nothing can arrive, the worker keeps retrying.
    wait_for(lambda: time.monotonic() - down_at >= 20, timeout=25, interval=0.5,
             message="20 s down")
    assert inbox.received == []
    inbox.up()
    assert settle(inbox, 3, n) == ["unhealthy", "pass_failed", "recovered"]


def test_a_restart_resumes_from_the_cursor_without_repeats(
        store: EventStore, inbox: Inbox, receiver: Receiver,
        notifier: Callable[..., Notifier]) -> None:
    first = notifier()
    unhealthy(store, "web", "frontend")
    assert settle(inbox, 1, first) == ["unhealthy"]
    first.stop()
    inbox.down()
    # While the controller is down, more happens (its store survives the restart).
    failed(store, "generation/4")
    recovered(store, "web", "frontend")
    inbox.up()
    n = notifier()
    # Resumed from the cursor: the two new ones, not the first again; the state survived
    # (the recovery is news because the unhealthy state was kept).
    assert settle(inbox, 3, n) == ["unhealthy", "pass_failed", "recovered"]


def test_5xx_is_retried_and_a_4xx_is_skipped_without_blocking_the_rest(
        store: EventStore, inbox: Inbox, notifier: Callable[..., Notifier]) -> None:
    n = notifier()
    inbox.statuses = [503, 502, 400]  # two transient, then a permanent refusal
    unhealthy(store, "web", "frontend")  # 503, 502, then 400: skipped (logged)
    unhealthy(store, "db", "postgres")
    assert settle(inbox, 1, n) == ["unhealthy"]
    assert inbox.messages()[0]["service"] == "db"


def test_filters_and_the_slack_format(store: EventStore, inbox: Inbox, tmp_path: Path,
                                      notifier: Callable[..., Notifier]) -> None:
    chat = Inbox()
    try:
        (tmp_path / "chat-url").write_text(chat.url)
        (tmp_path / "hook-url").write_text(inbox.url)
        (tmp_path / "receivers.yaml").write_text(
            "receivers:\n"
            "  - {name: chat, type: slack, urlFile: " + str(tmp_path / "chat-url") +
            ", severity: error, instances: [default]}\n"
            "  - {name: hook, type: webhook, urlFile: " + str(tmp_path / "hook-url") +
            ", kinds: [recovered], ratePerMinute: 600}\n")
        notifier(*load_receivers(str(tmp_path / "receivers.yaml")))
        unhealthy(store, "web", "frontend", instance="other")  # not this chat's instance
        unhealthy(store, "web", "frontend")
        recovered(store, "web", "frontend")  # info: below the chat's severity
        wait_for(lambda: len(chat.received) == 1 and len(inbox.received) == 1, timeout=15,
                 message="one message each")
        headers, body = chat.received[0]
        text = json.loads(body)["text"]
        assert "default/web is unhealthy" in text and SIGNATURE_HEADER.lower() not in headers
        assert inbox.kinds() == ["recovered"]
    finally:
        chat.down()


@pytest.mark.parametrize(("text", "problem"), [
    ("receivers:\n  - {name: a, type: webhook, url: 'http://x'}\n", "a URL is a secret"),
    ("receivers:\n  - {name: a, type: webhook, urlFile: /u, colour: red}\n",
     "unknown field(s) colour"),
    ("receivers:\n  - {name: a, type: email, urlFile: /u}\n", "type must be one of"),
    ("receivers:\n  - {name: a, type: slack, urlFile: /u, severity: loud}\n",
     "severity must be one of"),
    ("receivers:\n  - {name: a, type: slack, urlFile: /u, kinds: [sunrise]}\n",
     "unknown kind(s) sunrise"),
    ("receivers:\n  - {name: a, type: slack, urlFile: /u}\n  - {name: a, type: slack, "
     "urlFile: /v}\n", "used twice"),
    ("receivers: {}\n", "expected 'receivers:"),
    ("receivers: [\n", "not valid YAML"),
])
def test_a_bad_receivers_file_is_one_clear_line(tmp_path: Path, text: str,
                                                problem: str) -> None:
    path = tmp_path / "receivers.yaml"
    path.write_text(text)
    with pytest.raises(NotifyConfigError) as caught:
        load_receivers(str(path))
    message = caught.value.message
    assert problem in message and str(path) in message and "\n" not in message
    assert "http://x" not in message


def test_same_named_instances_of_two_namespaces_keep_their_own_state() -> None:
    """`web` failing in team-a and passing in team-b: team-b's success is no recovery of
    team-a's failure; a receiver may name an instance by `namespace/name`."""
    from controller.adapters.store.events import Event
    from controller.runtime.notifying import classify

    def pass_event(id_: int, ok: bool, namespace: str) -> Event:
        return Event(id_, "2030-01-01T00:00:00.000Z", "success" if ok else "error", "", "",
                     "m", "ReconcileSucceeded" if ok else "ReconcileFailed",
                     {"revision": ""}, "web", namespace)

    state: dict[str, str] = {}
    assert [n.kind for n in classify(state, pass_event(1, True, "team-a"), "x")] == []
    assert [n.kind for n in classify(state, pass_event(2, True, "team-b"), "x")] == []
    failed_a = classify(state, pass_event(3, False, "team-a"), "x")
    assert [(n.kind, n.namespace) for n in failed_a] == [("pass_failed", "team-a")]
    assert classify(state, pass_event(4, True, "team-b"), "x") == []  # not a recovery
    recovered = classify(state, pass_event(5, True, "team-a"), "x")
    assert [(n.kind, n.namespace) for n in recovered] == [("pass_recovered", "team-a")]
    assert recovered[0].to_dict()["namespace"] == "team-a"
    only_a = Receiver("a", "webhook", Path("/dev/null"), instances=frozenset({"team-a/web"}))
    by_name = Receiver("n", "webhook", Path("/dev/null"), instances=frozenset({"web"}))
    b_note = replace(recovered[0], namespace="team-b")
    assert only_a.wants(recovered[0]) and not only_a.wants(b_note)
    assert by_name.wants(recovered[0]) and by_name.wants(b_note)
