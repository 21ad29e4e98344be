"""The events endpoints over the in-memory service (no cluster): answers are the store's
own JSON, serialized once at write, and `?instance=` selects one DeploymentParameters
object's events, in queries and in the stream alike."""

from __future__ import annotations

import json
import re

from tests.support.api import FakeApi, envelope


def _store_some(api: FakeApi) -> None:
    store = api.service.store
    store.add("info", "café ✓ applied", resource="shop/Deployment/redis", service="redis",
              instance="default", details={"note": "naïve"})
    store.add("error", "other failed", resource="shop/Deployment/redis", service="redis",
              instance="other")
    store.add("warning", "default warns", service="frontend", instance="default")


def test_a_query_answers_the_stored_json_of_each_event_as_written(fake_api: FakeApi) -> None:
    _store_some(fake_api)
    store = fake_api.service.store
    for path, query in [("/api/events", {}), ("/api/events?service=redis&limit=2",
                                              {"service": "redis", "limit": 2}),
                        ("/api/events?since=1h", {"since": "1h"})]:
        result = fake_api.get(path)
        assert result.status_code == 200
        # Byte for byte the store's page: no decode and re-encode on the way out
        # (non-ASCII text stays as written, not \\u-escaped by a second encoder).
        assert result.content == store.page(**query), path
        assert "café ✓" in result.content.decode() or "service=redis" in path


def test_instance_selects_one_objects_events(fake_api: FakeApi) -> None:
    _store_some(fake_api)
    other = fake_api.get("/api/events?instance=other").json
    assert [e["message"] for e in other["events"]] == ["other failed"]
    assert other["count"] == 1
    default = fake_api.get("/api/events?instance=default").json["events"]
    assert [e["message"] for e in default] == ["default warns", "café ✓ applied"]
    errors = fake_api.get("/api/events/errors?instance=default").json["events"]
    assert [e["message"] for e in errors] == ["default warns"]
    one = fake_api.get("/api/events/shop/Deployment/redis?instance=other").json["events"]
    assert [e["instance"] for e in one] == ["other"]
    everything = fake_api.get("/api/events").json["events"]
    assert {e["instance"] for e in everything} == {"default", "other"}


def test_a_malformed_instance_is_a_400_naming_it(fake_api: FakeApi) -> None:
    for path in ("/api/events", "/api/events/errors", "/api/events/stream",
                 "/api/events/shop/Deployment/redis"):
        for bad in ("", "Not_A_Name"):
            details = envelope(fake_api.get(f"{path}?instance={bad}"), 400, "invalid_request")
            assert details["field"] == "instance", (path, bad, details)


def test_the_stream_sends_the_stored_json_and_filters_by_instance(fake_api: FakeApi) -> None:
    _store_some(fake_api)
    stored = {json.loads(text)["id"]: text
              for text in fake_api.service.store.query_json(oldest_first=True)}
    streamed = fake_api.stream("/api/events/stream", {"duration": "0"})
    frames = re.findall(r"^id: (\d+)\ndata: (.*)$", streamed.text, re.M)
    assert len(frames) == 3
    assert all(data == stored[int(i)] for i, data in frames)
    only = fake_api.stream("/api/events/stream", {"duration": "0", "instance": "other"})
    assert [json.loads(d)["message"] for d in re.findall(r"^data: (.*)$", only.text, re.M)] \
        == ["other failed"]


def test_a_caught_up_stream_filters_new_events_by_instance_and_namespace() -> None:
    """A stream past its backlog takes new events from the shared window (`matcher`):
    `web` of team-a is not `web` of team-b there either (issue 13)."""
    from controller.adapters.store.events import Event
    from controller.api.eventing import matcher

    def event(namespace: str, type_: str = "info") -> Event:
        return Event(1, "2030-01-01T00:00:00.000Z", type_, "", "redis", "m", "R", {},
                     "web", namespace)

    match = matcher({"instance": "web", "namespace": "team-a", "type": "info,error"})
    assert match is not None
    assert match(event("team-a")) and match(event("team-a", "error"))
    assert not match(event("team-b")) and not match(event("team-a", "success"))
    by_name = matcher({"instance": "web"})
    assert by_name is not None and by_name(event("team-a")) and by_name(event("team-b"))
