"""The endpoints' own behaviour over the in-memory service (tests/support/fakes.py): no
cluster. Moved from test_endpoints.py (now test_e2e_endpoints.py), assertion for assertion,
where what a test checks is the API's (request parsing, the envelope and its codes,
selections, operations' 202, the event queries and stream over the real event store,
parameters validation, webhooks, the document); what needs the real cluster (what gets
applied, health, dry runs, passes) stays there, end to end.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controller.runtime.service import Caller
from tests.support.api import SERVICES, FakeApi, envelope

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def _deployed(api: FakeApi) -> set[str]:
    return set(api.service.instances_["default"].deployed)


def _full_spec(api: FakeApi) -> dict[str, Any]:
    spec: dict[str, Any] = api.service.parameters(None, Caller(may_see_secrets=True)).body
    return spec


def _asked(api: FakeApi, *names: str) -> list[Any]:
    """The calls the API made of the service, of these kinds."""
    return [call for call in api.service.calls if call[0] in names]


# --- requests and the envelope -------------------------------------------------------------


def test_a_malformed_instance_name_is_an_invalid_request(fake_api: FakeApi) -> None:
    for method, path in [("GET", "/api/parameters"), ("GET", "/api/parameters/values"),
                         ("GET", "/api/parameters/redis"), ("GET", "/api/parameters/history"),
                         ("PATCH", "/api/parameters"), ("POST", "/api/up"),
                         ("POST", "/api/plan")]:
        result = fake_api.client.simulate_request(method, path,
                                                  params={"instance": "Not/A Name"}, json={})
        details = envelope(result, 400, "invalid_request")
        assert details["field"] == "instance", (method, path)
    # A well-formed name of no object is not found (reads) — never a 5xx.
    details = envelope(fake_api.get("/api/parameters?instance=nope"), 404, "not_found")
    assert details["instance"] == "nope"


def test_unknown_routes_and_methods_answer_in_the_envelope(fake_api: FakeApi) -> None:
    details = envelope(fake_api.get("/api/nothing-here"), 404, "not_found")
    assert details["path"] == "/api/nothing-here"
    envelope(fake_api.client.simulate_delete("/api/up"), 405, "method_not_allowed")
    envelope(fake_api.client.simulate_get("/api/up"), 405, "method_not_allowed")


def test_openapi_document_is_served(fake_api: FakeApi) -> None:
    doc = fake_api.get("/openapi.json").json
    assert doc["openapi"].startswith("3.")
    assert {"/api/up", "/api/services/health", "/api/events/stream"} <= set(doc["paths"])
    error = doc["components"]["schemas"]["Error"]
    assert error["required"] == ["error", "message", "details"]


# --- deploying -----------------------------------------------------------------------------


def test_unknown_service_is_not_found_and_nothing_is_applied(fake_api: FakeApi) -> None:
    before = _deployed(fake_api)
    details = envelope(fake_api.post("/api/up", {"services": ["frontend", "redis-master"]}),
                       404, "not_found")
    assert details["services"] == ["redis-master"]
    assert details["available"] == SERVICES
    for op in ("update", "down"):
        envelope(fake_api.post(f"/api/{op}", {"services": ["redis-master"]}), 404,
                 "not_found")
    assert _deployed(fake_api) == before
    assert fake_api.service.operations == {}  # no operation ran


def test_body_without_content_type_is_read_as_json(fake_api: FakeApi) -> None:
    # As `curl -d` sends it: no header at all, or labelled form-urlencoded. Read as a form,
    # the selection would be empty, i.e. every service.
    for headers in ({}, {"Content-Type": "application/x-www-form-urlencoded"}):
        result = fake_api.client.simulate_post("/api/down", body='{"services": ["redis"]}',
                                               headers=headers)
        assert result.status_code == 200, result.text
        assert result.json["services"] == ["redis"]
        assert "frontend" in _deployed(fake_api)
    assert "redis" not in _deployed(fake_api)
    assert [call[1].services for call in _asked(fake_api, "deploy")] == [("redis",)] * 2


@pytest.mark.parametrize(("body", "field"), [
    ("{not json", None),
    ('["redis"]', None),
    ('{"services": "redis"}', "services"),
    ('{"services": [1, 2]}', "services"),
])
def test_invalid_deploy_bodies_are_invalid_requests(fake_api: FakeApi, body: str,
                                                    field: str | None) -> None:
    details = envelope(fake_api.post("/api/up", body), 400, "invalid_request")
    if field:
        assert details["field"] == field
    assert _asked(fake_api, "deploy") == []


def test_wait_false_answers_202_and_the_operation_can_be_followed(fake_api: FakeApi) -> None:
    result = fake_api.post("/api/update?wait=false", {"services": ["frontend"]})
    assert result.status_code == 202, result.text
    op = result.json
    assert op["operation"] == "update" and op["services"] == ["frontend"]
    assert result.headers["location"] == f"/api/operations/{op['id']}"
    assert op["links"]["self"] == result.headers["location"]
    assert fake_api.get(result.headers["location"]).json["id"] == op["id"]

    details = envelope(fake_api.get("/api/operations/0000"), 404, "not_found")
    assert details["operation"] == "0000"
    envelope(fake_api.post("/api/up?wait=maybe", {}), 400, "invalid_request")
    envelope(fake_api.post("/api/up?timeout=-1", {}), 400, "invalid_request")


# --- events (the real event store, behind the fake service) --------------------------------


def _seed(api: FakeApi, service: str, n: int, type_: str = "error",
          kind: str = "Deployment", **extra: Any) -> list[dict[str, Any]]:
    store = api.service.store
    return [store.add(type_, f"{service} event {i}", resource=f"{api.service.namespace}/"
                      f"{kind}/{service}", service=service, reason=f"Seeded{i}",
                      **extra).to_dict()
            for i in range(n)]


def _ids(result: Any) -> list[int]:
    assert result.status_code == 200, result.text
    return [e["id"] for e in result.json["events"]]


def test_events_filter_by_type_limit_offset_resource_and_service(fake_api: FakeApi) -> None:
    api = fake_api
    errors = _seed(api, "alpha", 5)
    infos = _seed(api, "alpha", 3, "info", kind="Service")
    beta = _seed(api, "beta", 2, "warning")
    newest_first = [e["id"] for e in reversed(errors + infos)]

    body = api.get("/api/events?type=error&limit=10").json
    assert body["count"] == len(body["events"]) <= 10
    assert {e["type"] for e in body["events"]} == {"error"}
    assert [e["id"] for e in body["events"]][:5] == [e["id"] for e in reversed(errors)]
    event = body["events"][0]
    assert set(event) >= {"id", "timestamp", "type", "resource", "service", "message",
                          "reason", "details"}
    assert RFC3339.match(event["timestamp"])

    assert _ids(api.get("/api/events?service=alpha")) == newest_first
    assert _ids(api.get("/api/events?service=alpha&limit=3")) == newest_first[:3]
    assert _ids(api.get("/api/events?service=alpha&limit=3&offset=3")) == newest_first[3:6]
    assert _ids(api.get("/api/events?service=alpha&type=info")) == newest_first[:3]
    assert _ids(api.get("/api/events?service=alpha&type=error,info&limit=100")) \
        == newest_first
    assert _ids(api.get("/api/events?type=warning&service=beta")) \
        == [e["id"] for e in reversed(beta)]
    resource = f"{api.service.namespace}/Service/alpha"
    assert _ids(api.get("/api/events", params={"resource": resource})) \
        == [e["id"] for e in reversed(infos)]
    assert _ids(api.get("/api/events?service=nobody")) == []


def test_repeated_queries_see_every_new_event(fake_api: FakeApi) -> None:
    # Answers of identical queries are kept until the store commits a new event.
    api = fake_api
    paths = ("/api/events?service=theta&limit=5", "/api/events/errors?service=theta",
             f"/api/events/{api.service.namespace}/Deployment/theta")
    for path in paths:
        assert _ids(api.get(path)) == []
    seen: list[int] = []
    for _ in range(3):
        seen.insert(0, _seed(api, "theta", 1)[0]["id"])
        for path in paths:
            assert _ids(api.get(path)) == seen, path
            assert _ids(api.get(path)) == seen, path
    assert _ids(api.get("/api/events?service=theta&limit=2")) == seen[:2]


def test_events_since_and_until(fake_api: FakeApi) -> None:
    api = fake_api
    early = _seed(api, "gamma", 2)
    # Later events: a timestamp a minute on (timestamps never go back along ids).
    later_at = datetime.now(UTC) + timedelta(minutes=1)
    late = _seed(api, "gamma", 2, timestamp=later_at)
    cut = early[-1]["timestamp"]
    assert late[0]["timestamp"] > cut
    assert _ids(api.get("/api/events", params={"service": "gamma", "until": cut})) \
        == [e["id"] for e in reversed(early)]
    assert _ids(api.get("/api/events", params={"service": "gamma",
                                               "since": late[0]["timestamp"]})) \
        == [e["id"] for e in reversed(late)]
    same_ms = [e["id"] for e in reversed(early) if e["timestamp"] == cut]
    assert _ids(api.get("/api/events", params={"service": "gamma", "since": cut,
                                               "until": cut})) == same_ms
    assert _ids(api.get("/api/events?service=gamma&since=1h")) \
        == [e["id"] for e in reversed(early + late)]


def test_recent_errors(fake_api: FakeApi) -> None:
    """The seeded half of test_e2e_endpoints' errors test (the applied objects' own events
    stay there, end to end)."""
    api = fake_api
    errors = _seed(api, "delta", 3)
    _seed(api, "delta", 2, "success")
    body = api.get("/api/events/errors?limit=20").json
    assert {e["type"] for e in body["events"]} == {"error"}
    assert [e["id"] for e in body["events"]][:3] == [e["id"] for e in reversed(errors)]
    assert _ids(api.get("/api/events/errors?limit=2")) == [errors[2]["id"], errors[1]["id"]]
    assert _ids(api.get("/api/events/other/Deployment/delta?limit=10")) == []


def _sse(text: str) -> list[dict[str, Any]]:
    """The events of an SSE body: id, event and parsed data of each message."""
    out = []
    for block in text.split("\n\n"):
        fields: dict[str, Any] = {}
        for line in block.splitlines():
            name, _, value = line.partition(": ")
            if name in ("id", "event", "data"):
                fields[name] = value
        if "id" in fields:
            fields["data"] = json.loads(fields["data"])
            out.append(fields)
    return out


def test_event_stream_sends_ids_and_resumes_after_last_event_id(fake_api: FakeApi) -> None:
    api = fake_api
    seeded = _seed(api, "epsilon", 5, "warning")
    result = api.stream("/api/events/stream?service=epsilon&limit=3&duration=0.3")
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("text/event-stream")
    assert result.headers["cache-control"] == "no-cache"
    assert "retry: 2000" in result.text
    first = _sse(result.text)
    assert [int(m["id"]) for m in first] == [e["id"] for e in seeded[2:]]  # oldest first
    assert all(m["event"] == "warning" and m["data"]["service"] == "epsilon" for m in first)
    assert first[-1]["data"] == seeded[-1]

    newer = _seed(api, "epsilon", 2, "error")
    _seed(api, "zeta", 1, "error")  # another service: filtered out
    resumed = api.stream("/api/events/stream?service=epsilon&duration=0.3",
                         headers={"Last-Event-ID": first[-1]["id"]})
    assert [int(m["id"]) for m in _sse(resumed.text)] == [e["id"] for e in newer]
    # The query parameter works the same for clients that cannot set headers.
    again = api.stream(f"/api/events/stream?service=epsilon&duration=0.3&type=error"
                       f"&lastEventId={first[-1]['id']}")
    assert [int(m["id"]) for m in _sse(again.text)] == [e["id"] for e in newer]
    nothing = api.stream("/api/events/stream?service=epsilon&duration=0",
                         headers={"Last-Event-ID": str(newer[-1]["id"])})
    assert _sse(nothing.text) == []
    # Not an id (a digit to str.isdigit, not to int): ignored, as any other non-id.
    odd = api.stream("/api/events/stream?service=epsilon&duration=0&limit=1",
                     headers={"Last-Event-ID": "\u00b2"})
    assert odd.status_code == 200, odd.text
    assert [int(m["id"]) for m in _sse(odd.text)] == [newer[-1]["id"]]


# --- parameters ----------------------------------------------------------------------------


def test_invalid_parameters_are_rejected_before_anything_changes(fake_api: FakeApi) -> None:
    api = fake_api
    spec = _full_spec(api)
    bad = json.loads(json.dumps(spec))
    bad["services"]["redis"]["replicas"] = "many"
    details = envelope(api.post("/api/parameters", bad), 400, "validation_error")
    assert details["path"] == "spec.services.redis.replicas"
    details = envelope(api.patch("/api/parameters", {"services": {"redis": {"replicas": -1}}}),
                       400, "validation_error")
    assert details["path"] == "spec.services.redis.replicas"

    details = envelope(api.post("/api/parameters", {**spec, "extra": {}}), 400,
                       "invalid_request")
    assert details["fields"] == ["extra"]
    envelope(api.post("/api/parameters", "[1, 2]"), 400, "invalid_request")
    envelope(api.post("/api/parameters", "{broken"), 400, "invalid_request")
    envelope(api.post("/api/parameters", ""), 400, "invalid_request")
    inst = api.service.instances_["default"]
    assert (inst.generation, inst.version) == (1, 1)


def test_history_and_rollback_refusals(fake_api: FakeApi) -> None:
    """The refusals of test_e2e_endpoints' history and rollback test (what a pass records and
    a rollback applies stays there, end to end)."""
    api = fake_api
    details = envelope(api.post("/api/parameters/rollback", {"revision": "generation/99"}),
                       404, "not_found")
    assert details["revision"] == "generation/99"
    details = envelope(api.post("/api/parameters/rollback", {}), 400, "invalid_request")
    assert details["field"] == "revision"
    envelope(api.get("/api/parameters/history?limit=0"), 400, "invalid_request")
    assert api.service.instances_["default"].version == 1  # nothing written


# --- webhooks ------------------------------------------------------------------------------


SECRET = "webhook-secret-42"


def _sign(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


@pytest.fixture
def hooked(make_fake_api: Any) -> FakeApi:
    api: FakeApi = make_fake_api(webhook_secret=SECRET.encode())
    return api


def _triggers(api: FakeApi, result: Any) -> Any:
    """The call was accepted as a trigger (the caller counts the pushes the service was
    asked for; test_e2e_endpoints' github test checks end to end that one runs a pass)."""
    assert result.status_code == 202, result.text
    assert result.json["triggered"] is True
    return result


def test_gitlab_gitea_and_generic_webhooks(hooked: FakeApi) -> None:
    body = b'{"ref": "refs/heads/main"}'
    pushes = hooked.service.git_pushes
    result = _triggers(hooked, hooked.post("/api/webhooks/git", body,
                                           headers={"X-Gitlab-Token": SECRET}))
    assert result.json["provider"] == "gitlab" and len(pushes) == 1
    envelope(hooked.post("/api/webhooks/git", body, headers={"X-Gitlab-Token": "wrong"}),
             401, "unauthorized")
    assert hooked.post("/api/webhooks/git", body, headers={
        "X-Gitea-Signature": _sign(body).removeprefix("sha256=")}).json["provider"] == "gitea"
    assert hooked.post("/api/webhooks/git", body, headers={
        "X-Conductor-Signature": _sign(body)}).status_code == 202
    assert len(pushes) == 3
    result = _triggers(hooked, hooked.post("/api/webhooks/git", b"",
                                           headers={"Authorization": f"Bearer {SECRET}"}))
    assert result.json["provider"] == "generic" and len(pushes) == 4
    envelope(hooked.post("/api/webhooks/git", b"", headers={"Authorization": "Bearer nope"}),
             401, "unauthorized")
    envelope(hooked.post("/api/webhooks/git", body), 401, "unauthorized")
    assert len(pushes) == 4  # the refused calls asked for nothing


def test_webhooks_without_a_secret_are_forbidden(fake_api: FakeApi) -> None:
    body = b'{"ref": "refs/heads/main"}'
    details = envelope(fake_api.post("/api/webhooks/git", body,
                                     headers={"X-Hub-Signature-256": "sha256=00"}),
                       403, "forbidden")
    assert "hint" in details
    assert fake_api.service.git_pushes == []
