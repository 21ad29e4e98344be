"""The API's own behaviour over the in-memory service (tests/support/fakes.py): no cluster.

Every resource's happy path, the error envelope and its codes, authentication and scopes,
rate and body limits, and issue 15's additions: ETag on every parameters answer, If-Match
on writes, rollback and up/update/down (412 precondition_failed with details.current),
plans of drafts with a planId readable for a while, and an operationId on every operation.
What needs a real cluster (what gets applied, health, the real dry run) stays in the
end-to-end files beside this one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from falcon import testing

from controller.api.openapi import document
from controller.api.security import TokensFileError, load_tokens
from controller.config import ApiSettings
from controller.model.redaction import REDACTED
from controller.runtime.service import Caller
from tests.support.api import READ, WRITE, FakeApi, envelope

SECRET = b"hook-secret-0451"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _etag(result: object) -> str:
    tag = result.headers.get("etag", "")  # type: ignore[attr-defined]
    assert re.fullmatch(r'"[^"]+"', tag), tag
    return str(tag)


# -- probes, status, services ---------------------------------------------------------------


def test_probes_answer_and_readiness_follows_the_service(fake_api: FakeApi) -> None:
    assert fake_api.get("/healthz").json == {"status": "ok"}
    ready = fake_api.get("/readyz")
    assert ready.status_code == 200 and ready.json["status"] == "ready"
    fake_api.service.started = False
    starting = fake_api.get("/readyz")
    assert starting.status_code == 503 and starting.json["status"] == "starting"


def test_status_services_health_and_one_service(fake_api: FakeApi) -> None:
    assert fake_api.get("/api/status").json["instance"] == "default"
    listed = fake_api.get("/api/services").json["services"]
    assert [s["name"] for s in listed] == ["frontend", "postgres", "redis"]
    assert all(set(s) == {"name", "namespace", "deployed", "status", "lastChecked"}
               for s in listed)
    health = fake_api.get("/api/services/health").json["services"]
    assert {h["status"] for h in health} == {"healthy"}
    detail = fake_api.get("/api/services/redis").json
    assert detail["name"] == "redis" and detail["objects"][0]["kind"] == "Deployment"
    details = envelope(fake_api.get("/api/services/nope"), 404, "not_found")
    assert details["service"] == "nope"


def test_instances_are_checked_before_the_service_is_asked(fake_api: FakeApi) -> None:
    for query in ("instance=", "instance=Bad_Name", f"instance={'a' * 64}"):
        details = envelope(fake_api.get("/api/services", query_string=query), 400,
                           "invalid_request")
        assert details["field"] == "instance"
    details = envelope(fake_api.get("/api/services", query_string="instance=other"), 404,
                       "not_found")
    assert details["instance"] == "other"
    listed = fake_api.get("/api/parameters/instances").json["instances"]
    assert listed[0]["name"] == "default" and listed[0]["default"] is True


def test_metrics_count_requests_by_route_and_code(fake_api: FakeApi) -> None:
    fake_api.get("/api/services")
    fake_api.get("/api/services/nope")
    assert fake_api.registry.get_sample_value(
        "conductor_api_requests_total",
        {"route": "/api/services", "method": "GET", "code": "200"}) == 1
    assert fake_api.registry.get_sample_value(
        "conductor_api_requests_total",
        {"route": "/api/services/{name}", "method": "GET", "code": "404"}) == 1
    text = fake_api.get("/metrics").text
    assert "conductor_api_request_duration_seconds_bucket" in text
    for i in range(50):  # made-up methods: one label value, never one each
        assert fake_api.client.simulate_request(f"X{i}METHOD", "/api/services"
                                                ).status_code in (400, 405)
    lines = [line for line in fake_api.get("/metrics").text.splitlines()
             if line.startswith("conductor_api_requests_total{") and "METHOD" in line]
    assert lines == []
    assert sum(fake_api.registry.get_sample_value(
        "conductor_api_requests_total", {"route": route, "method": "other", "code": code})
        or 0 for route in ("/api/services", "unmatched") for code in ("400", "405")) == 50


def test_unknown_routes_and_methods_answer_in_the_envelope(fake_api: FakeApi) -> None:
    envelope(fake_api.get("/api/nothing-here"), 404, "not_found")
    envelope(fake_api.client.simulate_delete("/api/services"), 405, "method_not_allowed")
    assert fake_api.get("/api/cluster/requirements").json["ok"] is True
    assert fake_api.get("/api/parameters/schema").json["type"] == "object"


# -- deploying ----------------------------------------------------------------------------


def test_up_update_down_answer_the_contract_bodies(fake_api: FakeApi) -> None:
    down = fake_api.post("/api/down", {"services": ["redis"]})
    assert down.status_code == 200, down.text
    assert down.json["message"] == "Successfully removed all manifests"
    assert "redis" not in fake_api.service.instances_["default"].deployed
    up = fake_api.post("/api/up", {"services": ["redis"]})
    assert up.json["message"] == "Successfully deployed all manifests"
    assert up.json["operation"] and up.json["results"][0]["service"] == "redis"
    assert fake_api.post("/api/update").json["message"] == \
        "Successfully updated all manifests"
    request = fake_api.service.calls[-1][1]
    assert request.op == "update" and request.services == ()  # empty body: every service


@pytest.mark.parametrize("body", ['{"services": ""}', '{"services": null}',
                                  '{"services": false}', '{"service": ["redis"]}', "[]",
                                  '{"services": [""]}', "  ", "{nope"])
def test_a_malformed_selection_is_refused_before_the_service_is_asked(
        fake_api: FakeApi, body: str) -> None:
    envelope(fake_api.post("/api/down", body), 400, "invalid_request")
    assert fake_api.service.calls == []


@pytest.mark.parametrize("query", ["timeout=abc", "timeout=nan", "timeout=-1", "wait=maybe",
                                   "force=", "waitHealthy=2", "healthTimeout=1e999"])
def test_bad_deploy_parameters_are_400_and_nothing_runs(fake_api: FakeApi,
                                                        query: str) -> None:
    envelope(fake_api.post("/api/up", {}, query_string=query), 400, "invalid_request")
    assert fake_api.service.calls == []


def test_wait_false_answers_202_and_the_operation_can_be_followed(fake_api: FakeApi) -> None:
    result = fake_api.post("/api/up", {"services": ["redis"]}, query_string="wait=false")
    assert result.status_code == 202, result.text
    location = result.headers["location"]
    assert location == f"/api/operations/{result.json['id']}"
    assert fake_api.get(location).json["operation"] == "up"
    envelope(fake_api.get("/api/operations/nope"), 404, "not_found")


def test_unknown_services_and_suspension_are_refused(fake_api: FakeApi) -> None:
    details = envelope(fake_api.post("/api/up", {"services": ["nope"]}), 404, "not_found")
    assert details["services"] == ["nope"]
    assert fake_api.post("/api/suspend").json["changed"] is True
    assert fake_api.post("/api/suspend").json["changed"] is False  # idempotent
    envelope(fake_api.post("/api/up", {"services": ["redis"]}), 409, "conflict")
    assert fake_api.post("/api/up", {"services": ["redis"]},
                         query_string="force=true").status_code == 200
    assert fake_api.post("/api/resume", {}).json["suspended"] is False
    envelope(fake_api.post("/api/resume", {"now": True}), 400, "invalid_request")


# -- parameters, ETag and If-Match ------------------------------------------------------------


def test_every_parameters_answer_carries_its_version(fake_api: FakeApi) -> None:
    first = _etag(fake_api.get("/api/parameters"))
    assert _etag(fake_api.get("/api/parameters/redis")) == first
    written = fake_api.patch("/api/parameters", {"services": {"redis": {"replicas": 3}}})
    assert written.status_code == 200, written.text
    second = _etag(written)
    assert second != first
    assert _etag(fake_api.get("/api/parameters")) == second
    rolled = fake_api.post("/api/parameters/rollback", {"revision": "generation/1"})
    assert rolled.status_code == 200, rolled.text
    assert _etag(rolled) not in (first, second)
    assert _etag(fake_api.post("/api/parameters", {"services": {}})) != _etag(rolled)


def test_if_match_lets_exactly_one_of_two_writers_win(fake_api: FakeApi) -> None:
    tag = _etag(fake_api.get("/api/parameters"))

    async def race() -> list[int]:
        async with testing.ASGIConductor(fake_api.client.app) as conductor:
            calls = [conductor.simulate_post("/api/parameters", json={"services": {
                "redis": {"image": "redis:7.2", "replicas": n}}}, headers={"If-Match": tag})
                for n in (2, 3)]
            return sorted(r.status_code for r in await asyncio.gather(*calls))

    assert asyncio.run(race()) == [200, 412]


def test_a_stale_if_match_is_412_with_the_current_version_and_changes_nothing(
        fake_api: FakeApi) -> None:
    stale = _etag(fake_api.get("/api/parameters"))
    current = _etag(fake_api.patch("/api/parameters", {"global": {"environment": "prod"}}))
    before = fake_api.service.instances_["default"].spec
    for method, path, body in (
            ("post", "/api/parameters", {"services": {}}),
            ("patch", "/api/parameters", {"global": {"environment": "dev"}}),
            ("post", "/api/parameters/rollback", {"revision": "generation/1"}),
            ("post", "/api/up", {"services": ["redis"]}),
            ("post", "/api/update", {}),
            ("post", "/api/down", {"services": ["redis"]})):
        send = fake_api.patch if method == "patch" else fake_api.post
        details = envelope(send(path, body, headers={"If-Match": stale}), 412,
                           "precondition_failed")
        assert f'"{details["current"]}"' == current, (path, details)
    # An invalid body is a 400 whatever its If-Match says.
    envelope(fake_api.patch("/api/parameters", {"services": {"redis": [None]}},
                            headers={"If-Match": stale}), 400, "validation_error")
    assert fake_api.service.instances_["default"].spec == before
    assert fake_api.service.instances_["default"].deployed == {"frontend", "postgres",
                                                               "redis"}
    # The current version, or *, passes; without If-Match nothing is compared.
    assert fake_api.post("/api/down", {"services": ["redis"]},
                         headers={"If-Match": current}).status_code == 200
    assert fake_api.post("/api/up", {"services": ["redis"]},
                         headers={"If-Match": "*"}).status_code == 200
    assert fake_api.patch("/api/parameters", {"global": {"environment": "dev"}},
                          headers={"If-Match": current}).status_code == 200
    assert fake_api.patch("/api/parameters", {"global": {"environment": "qa"}}
                          ).status_code == 200


@pytest.mark.parametrize("header", ['W/"1"', '"1", "2"', ""])
def test_an_if_match_that_cannot_be_compared_is_400(fake_api: FakeApi, header: str) -> None:
    details = envelope(fake_api.patch("/api/parameters", {"global": {}},
                                      headers={"If-Match": header}), 400, "invalid_request")
    assert details["header"] == "If-Match"
    assert fake_api.service.calls == []


def test_invalid_parameters_are_refused_naming_the_path(fake_api: FakeApi) -> None:
    tag = _etag(fake_api.get("/api/parameters"))
    details = envelope(fake_api.patch("/api/parameters", {
        "services": {"redis": {"replicas": "three"}}}), 400, "validation_error")
    assert "spec.services.redis.replicas" in str(details)
    details = envelope(fake_api.post("/api/parameters", {"globals": {}}), 400,
                       "invalid_request")
    assert details["fields"] == ["globals"]
    envelope(fake_api.post("/api/parameters", [1]), 400, "invalid_request")
    assert _etag(fake_api.get("/api/parameters")) == tag


def test_secrets_are_redacted_for_readers_without_the_write_scope(
        make_fake_api: Callable[..., FakeApi], tokens_file: str) -> None:
    api = make_fake_api(ApiSettings(auth=True, tokens_file=tokens_file, rate_limit=0))
    read = api.get("/api/parameters", headers=_bearer(READ)).json
    assert read["services"]["postgres"]["password"] == REDACTED
    for path in ("/api/parameters/postgres", "/api/parameters/values",
                 "/api/parameters/history"):
        assert "s3cret-pw" not in api.get(path, headers=_bearer(READ)).text, path
    full = api.get("/api/parameters", headers=_bearer(WRITE)).json
    assert full["services"]["postgres"]["password"] == "s3cret-pw"


def test_values_history_and_rollback(fake_api: FakeApi) -> None:
    fake_api.patch("/api/parameters", {"services": {"redis": {"replicas": 4}}})
    values = fake_api.get("/api/parameters/values").json["services"]
    assert values["redis"]["replicas"] == 4 and values["redis"]["namespace"] == "shop"
    one = fake_api.get("/api/parameters/redis").json
    assert one["values"]["replicas"] == 4 and one["global"]["namespace"] == "shop"
    envelope(fake_api.get("/api/parameters/nope"), 404, "not_found")
    history = fake_api.get("/api/parameters/history", query_string="limit=1").json
    assert [h["revision"] for h in history["history"]] == ["generation/2"]
    rolled = fake_api.post("/api/parameters/rollback", {"revision": "generation/1"}).json
    assert rolled["rolledBackTo"] == "generation/1"
    assert rolled["parameters"]["services"]["redis"]["replicas"] == 1
    envelope(fake_api.post("/api/parameters/rollback", {"revision": "generation/99"}), 404,
             "not_found")
    envelope(fake_api.post("/api/parameters/rollback", {"revision": ""}), 400,
             "invalid_request")


# -- plans ------------------------------------------------------------------------------------


def test_a_plan_has_an_id_readable_until_it_expires(fake_api: FakeApi) -> None:
    tag = _etag(fake_api.get("/api/parameters"))
    plan = fake_api.post("/api/plan", {"services": ["redis"]}).json
    assert plan["planId"] and plan["basedOn"] == tag.strip('"')
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", plan["expiresAt"])
    assert "draft" not in plan and plan["changes"][0]["action"] == "unchanged"
    assert fake_api.get(f"/api/plans/{plan['planId']}").json == plan
    envelope(fake_api.get("/api/plans/nope"), 404, "not_found")
    fake_api.service.plans.clock = lambda: 10**10  # far beyond its expiry
    envelope(fake_api.get(f"/api/plans/{plan['planId']}"), 404, "not_found")


def test_a_draft_is_planned_and_never_written(fake_api: FakeApi) -> None:
    tag = _etag(fake_api.get("/api/parameters"))
    whole = fake_api.service.parameters(None, Caller(may_see_secrets=True)).body
    whole["services"]["redis"]["image"] = "redis:7.4"
    plan = fake_api.post("/api/plan", {"parameters": {"global": whole["global"],
                                                      "services": whole["services"]}}).json
    assert plan["draft"] is True and plan["basedOn"] == tag.strip('"')
    redis = next(c for c in plan["changes"] if c["service"] == "redis")
    assert redis["action"] == "update"
    assert "-image: redis:7.2" in redis["diff"] and "+image: redis:7.4" in redis["diff"]
    patched = fake_api.post("/api/plan", {"patch": {"services": {"redis": {
        "image": "redis:7.4"}}}, "services": ["redis", "postgres"]}).json
    assert patched["counts"] == {"update": 1, "unchanged": 1}
    assert patched["planId"] != plan["planId"]
    assert _etag(fake_api.get("/api/parameters")) == tag  # nothing written
    assert fake_api.get("/api/parameters").json["services"]["redis"]["image"] == "redis:7.2"


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"parameters": {}, "patch": {}}, 400, "invalid_request"),
    ({"parameters": []}, 400, "invalid_request"),
    ({"patch": {"globals": {}}}, 400, "invalid_request"),
    ({"ref": ""}, 400, "invalid_request"),
    ({"ref": "main"}, 400, "invalid_request"),  # a resource source has no refs
    ({"draft": {}}, 400, "invalid_request"),
    ({"patch": {"services": {"redis": {"replicas": -1}}}}, 400, "validation_error"),
])
def test_a_bad_draft_is_refused(fake_api: FakeApi, body: object, status: int,
                                code: str) -> None:
    envelope(fake_api.post("/api/plan", body), status, code)


def test_a_plan_never_shows_secret_values(fake_api: FakeApi) -> None:
    plan = fake_api.post("/api/plan", {"patch": {"services": {"postgres": {
        "password": "n3w-pw"}}}}).text
    assert "n3w-pw" not in plan and "s3cret-pw" not in plan


# -- events -------------------------------------------------------------------------------


def _events(fake_api: FakeApi) -> None:
    store = fake_api.service.store
    store.add("info", "pass started", reason="PassStarted")
    store.add("error", "redis failed", resource="shop/Deployment/redis", service="redis",
              reason="ApplyFailed")
    store.add("warning", "pull back-off", resource="shop/Pod/redis-0", service="redis",
              reason="BackOff")
    store.add("success", "pass done", reason="PassSucceeded")


def test_events_filter_and_page(fake_api: FakeApi) -> None:
    _events(fake_api)
    all_ = fake_api.get("/api/events").json
    assert all_["count"] == 4 and all_["events"][0]["message"] == "pass done"
    errors = fake_api.get("/api/events", query_string="type=error").json["events"]
    assert [e["reason"] for e in errors] == ["ApplyFailed"]
    both = fake_api.get("/api/events/errors").json["events"]
    assert {e["type"] for e in both} == {"error", "warning"}
    one = fake_api.get("/api/events/shop/Deployment/redis").json["events"]
    assert [e["reason"] for e in one] == ["ApplyFailed"]
    paged = fake_api.get("/api/events", query_string="limit=1&offset=1").json["events"]
    assert [e["reason"] for e in paged] == ["BackOff"]
    assert fake_api.get("/api/events", query_string="since=1h").json["count"] == 4


@pytest.mark.parametrize(("query", "code", "field"), [
    ("type=bogus", "validation_error", "type"),
    ("limit=0", "invalid_request", "limit"),
    ("limit=many", "invalid_request", "limit"),
    ("limit=", "invalid_request", "limit"),
    ("offset=-1", "invalid_request", "offset"),
    ("offset=10001", "invalid_request", "offset"),
    ("since=yesterday-ish", "validation_error", "since"),
    ("until=2024-13-45T00:00:00Z", "validation_error", "until"),
])
def test_invalid_event_filters_are_400_naming_the_field(fake_api: FakeApi, query: str,
                                                        code: str, field: str) -> None:
    for path in ("/api/events", "/api/events/errors", "/api/events/stream",
                 "/api/events/shop/Deployment/redis"):
        if path != "/api/events/errors" or not query.startswith("type"):
            details = envelope(fake_api.get(f"{path}?{query}"), 400, code)
            assert details["field"] == field, (path, details)


def test_the_stream_sends_ids_and_resumes_after_last_event_id(fake_api: FakeApi) -> None:
    _events(fake_api)
    first = fake_api.stream("/api/events/stream", {"duration": "0"})
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("text/event-stream")
    ids = re.findall(r"^id: (\d+)", first.text, re.M)
    assert len(ids) == 4
    resumed = fake_api.stream("/api/events/stream", {"duration": "0"},
                              {"Last-Event-ID": ids[1]})
    assert re.findall(r"^id: (\d+)", resumed.text, re.M) == ids[2:]


# -- security -----------------------------------------------------------------------------


def test_tokens_and_scopes(make_fake_api: Callable[..., FakeApi], tokens_file: str) -> None:
    api = make_fake_api(ApiSettings(auth=True, tokens_file=tokens_file, rate_limit=0))
    result = api.get("/api/services")
    envelope(result, 401, "unauthorized")
    assert result.headers["www-authenticate"] == 'Bearer realm="conductor"'
    envelope(api.get("/api/services", headers=_bearer("nope")), 401, "unauthorized")
    assert api.get("/api/services", headers=_bearer(READ)).status_code == 200
    details = envelope(api.post("/api/up", {}, headers=_bearer(READ)), 403, "forbidden")
    assert details["required"] == "write"
    assert api.post("/api/up", {}, headers=_bearer(WRITE)).status_code == 200
    assert api.get("/healthz").status_code == 200  # open paths need nothing
    assert api.get("/openapi.json").status_code == 200


def test_public_reads_and_no_tokens(make_fake_api: Callable[..., FakeApi],
                                    tokens_file: str) -> None:
    api = make_fake_api(ApiSettings(auth=True, tokens_file=tokens_file, public_reads=True))
    assert api.get("/api/services").status_code == 200
    envelope(api.post("/api/up", {}), 401, "unauthorized")
    closed = make_fake_api(ApiSettings(auth=True))
    details = envelope(closed.get("/api/services"), 401, "unauthorized")
    assert details["header"] == "Authorization: Bearer <token>"


def test_failed_authentication_is_throttled(make_fake_api: Callable[..., FakeApi],
                                            tokens_file: str) -> None:
    api = make_fake_api(ApiSettings(auth=True, tokens_file=tokens_file,
                                    auth_failure_burst=3, auth_failure_rate=0.01))
    for _ in range(3):
        envelope(api.get("/api/services", headers=_bearer("guess")), 401, "unauthorized")
    result = api.get("/api/services", headers=_bearer(READ))  # even a good one, for now
    envelope(result, 429, "rate_limited")
    assert int(result.headers["retry-after"]) >= 1


def test_mutating_calls_are_rate_limited(make_fake_api: Callable[..., FakeApi]) -> None:
    api = make_fake_api(ApiSettings(auth=False, rate_limit=0.01, rate_burst=2))
    assert api.post("/api/up", {}).status_code == 200
    assert api.post("/api/up", {}).status_code == 200
    result = api.post("/api/up", {})
    details = envelope(result, 429, "rate_limited")
    assert details["burst"] == 2 and int(result.headers["retry-after"]) >= 1
    assert api.get("/api/services").status_code == 200  # reads are not limited


def test_bodies_over_the_limit_are_413_before_the_service(
        make_fake_api: Callable[..., FakeApi]) -> None:
    api = make_fake_api(ApiSettings(auth=False, rate_limit=0, max_body_bytes=100))
    details = envelope(api.post("/api/parameters", {"global": {"x": "y" * 200}}), 413,
                       "payload_too_large")
    assert details["limit"] == 100
    assert api.service.calls == []


def test_cors_only_for_listed_origins(make_fake_api: Callable[..., FakeApi]) -> None:
    api = make_fake_api(ApiSettings(auth=False, cors_origins=("https://ok.example",)))
    ok = api.get("/api/services", headers={"Origin": "https://ok.example"})
    assert ok.headers.get("access-control-allow-origin") == "https://ok.example"
    other = api.get("/api/services", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


# -- webhooks -----------------------------------------------------------------------------


def _sign(body: bytes, key: bytes = SECRET) -> str:
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def test_a_signed_push_triggers_and_other_refs_are_ignored(
        make_fake_api: Callable[..., FakeApi]) -> None:
    api = make_fake_api(webhook_secret=SECRET)
    body = b'{"ref": "refs/heads/main"}'
    result = api.post("/api/webhooks/git", body, headers={"X-Hub-Signature-256":
                                                          _sign(body)})
    assert result.status_code == 202 and result.json["triggered"] is True
    assert result.json["provider"] == "github"
    other = b'{"ref": "refs/heads/feature"}'
    ignored = api.post("/api/webhooks/git", other, headers={"X-Gitlab-Token":
                                                            SECRET.decode()})
    assert ignored.status_code == 202 and ignored.json["triggered"] is False
    envelope(api.post("/api/webhooks/git", body, headers={"X-Hub-Signature-256":
                                                          _sign(body, b"x")}),
             401, "unauthorized")
    assert api.service.git_pushes == ["refs/heads/main"]
    off = make_fake_api()
    envelope(off.post("/api/webhooks/git", body), 403, "forbidden")


# -- the document ---------------------------------------------------------------------------


def test_every_operation_has_a_unique_camel_case_operation_id() -> None:
    ids = [(path, method, op.get("operationId"))
           for path, item in document()["paths"].items() for method, op in item.items()]
    missing = [(p, m) for p, m, i in ids if not i]
    assert not missing
    names = [i for _, _, i in ids]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[a-z][a-zA-Z]+", str(n)) for n in names)
    named = {(p, m): i for p, m, i in ids}
    assert named[("/api/parameters", "get")] == "getParameters"
    assert named[("/api/parameters", "patch")] == "patchParameters"
    assert named[("/api/plan", "post")] == "planChanges"
    assert named[("/api/parameters/rollback", "post")] == "rollbackParameters"
    assert named[("/api/events/stream", "get")] == "streamEvents"
    assert named[("/api/services/health", "get")] == "getServicesHealth"
    assert named[("/api/plans/{plan_id}", "get")] == "getPlan"


def test_versions_and_drafts_are_documented() -> None:
    paths = document()["paths"]
    assert "ETag" in paths["/api/parameters"]["get"]["responses"]["200"]["headers"]
    for path, method in (("/api/parameters", "post"), ("/api/parameters", "patch"),
                         ("/api/parameters/rollback", "post"), ("/api/up", "post"),
                         ("/api/update", "post"), ("/api/down", "post")):
        op = paths[path][method]
        assert "412" in op["responses"], path
        assert any(p["name"] == "If-Match" and p["in"] == "header"
                   for p in op["parameters"]), path
    schemas = document()["components"]["schemas"]
    assert {"parameters", "patch", "ref"} <= set(schemas["PlanRequest"]["properties"])
    assert {"planId", "expiresAt", "basedOn"} <= set(schemas["Plan"]["required"])


# -- instances and tokens scoped to them (issue 13) ------------------------------------------

TENANT = "tenant-3-token-0123456789"
LABELLED = "blue-team-token-0123456789"


@pytest.fixture
def tenants(make_fake_api: Callable[..., FakeApi], tmp_path: Path) -> FakeApi:
    """Three instances in three namespaces; a write token limited to namespace tenant-3,
    a read token limited by label team=blue, and the unlimited WRITE token."""
    path = tmp_path / "scoped-tokens.yaml"
    path.write_text(yaml.safe_dump({"tokens": [
        {"name": "ci", "token": WRITE, "scopes": ["write"]},
        {"name": "tenant-3", "token": TENANT, "scopes": ["write"],
         "instances": {"namespaces": ["tenant-3"]}},
        {"name": "blue", "token": LABELLED, "scopes": ["read"],
         "instances": {"labels": {"team": "blue"}}}]}))
    api = make_fake_api(ApiSettings(auth=True, tokens_file=str(path), rate_limit=0))
    api.service.add_instance("alpha", "tenant-1", {"team": "blue"})
    api.service.add_instance("beta", "tenant-2", {"team": "red"})
    api.service.add_instance("gamma", "tenant-3")
    return api


def test_instances_lists_each_instance_with_its_state(tenants: FakeApi) -> None:
    rows = tenants.get("/api/instances", headers=_bearer(WRITE)).json["instances"]
    assert {(r["namespace"], r["name"]) for r in rows} == {
        ("shop", "default"), ("tenant-1", "alpha"), ("tenant-2", "beta"),
        ("tenant-3", "gamma")}
    assert all({"ready", "lastPass", "health", "suspended", "lastAppliedRevision"} <= set(r)
               for r in rows)
    # ?namespace= with ?instance= picks one; a namespace alone is a clear 400.
    got = tenants.get("/api/parameters", params={"instance": "beta", "namespace": "tenant-2"},
                      headers=_bearer(WRITE))
    assert got.status_code == 200
    envelope(tenants.get("/api/parameters", params={"instance": "beta",
                                                    "namespace": "tenant-1"},
                         headers=_bearer(WRITE)), 404, "not_found")
    envelope(tenants.get("/api/parameters", params={"namespace": "tenant-2"},
                         headers=_bearer(WRITE)), 400, "invalid_request")


def test_a_token_limited_to_a_namespace_sees_and_changes_only_its_instance(
        tenants: FakeApi) -> None:
    mine = _bearer(TENANT)
    rows = tenants.get("/api/instances", headers=mine).json["instances"]
    assert [(r["namespace"], r["name"]) for r in rows] == [("tenant-3", "gamma")]
    assert tenants.get("/api/parameters/instances", headers=mine).json["instances"] == rows
    own = {"instance": "gamma"}
    assert tenants.get("/api/parameters", params=own, headers=mine).status_code == 200
    assert tenants.get("/api/services/health", params=own, headers=mine).status_code == 200
    assert tenants.post("/api/down", {"services": ["redis"]}, params=own,
                        headers=mine).status_code == 200
    before = [(n, dict(i.spec), set(i.deployed)) for n, i in
              tenants.service.instances_.items() if n != "gamma"]
    # Another's instance, or the controller's own (no ?instance=): 404, as if absent.
    unknown = envelope(tenants.get("/api/parameters", params={"instance": "nosuch"},
                                   headers=mine), 404, "not_found")
    for params in ({"instance": "beta"}, {"instance": "beta", "namespace": "tenant-2"}, {}):
        for method, path in (("GET", "/api/parameters"), ("GET", "/api/services/health"),
                             ("GET", "/api/services"), ("GET", "/api/parameters/history"),
                             ("POST", "/api/up"), ("POST", "/api/down"),
                             ("POST", "/api/suspend"), ("POST", "/api/plan"),
                             ("PATCH", "/api/parameters")):
            result = tenants.client.simulate_request(
                method, path, params=params, headers=mine,
                json={} if method != "GET" else None)
            body = envelope(result, 404, "not_found")
            assert set(body) == set(unknown), (method, path)  # no more said than for none
    after = [(n, dict(i.spec), set(i.deployed)) for n, i in
             tenants.service.instances_.items() if n != "gamma"]
    assert after == before  # nothing of theirs changed
    # The unlimited token still sees everything.
    assert tenants.get("/api/parameters", params={"instance": "beta"},
                       headers=_bearer(WRITE)).status_code == 200


def test_a_limited_tokens_events_are_its_instances_only(tenants: FakeApi) -> None:
    store = tenants.service.store
    store.add("info", "of gamma", reason="Test", instance="gamma", namespace="tenant-3")
    store.add("error", "of beta", reason="Test", instance="beta", namespace="tenant-2")
    store.add("info", "of the controller's own", reason="Test", instance="default",
              namespace="shop")
    # Another namespace's instance of the same name: another instance (issue 13).
    store.add("error", "of tenant-1's gamma", reason="Test", instance="gamma",
              namespace="tenant-1")
    mine = _bearer(TENANT)
    listed = tenants.get("/api/events", headers=mine).json["events"]
    assert [(e["message"], e["namespace"]) for e in listed] == [("of gamma", "tenant-3")]
    assert tenants.get("/api/events/errors", headers=mine).json["events"] == []
    assert [e["message"] for e in tenants.get(
        "/api/events", params={"instance": "gamma"}, headers=mine).json["events"]] == [
        "of gamma"]
    envelope(tenants.get("/api/events", params={"instance": "beta"}, headers=mine), 404,
             "not_found")
    envelope(tenants.get("/api/events", params={"instance": "gamma",
                                                "namespace": "tenant-1"}, headers=mine),
             404, "not_found")
    streamed = tenants.stream("/api/events/stream", {"duration": "0"}, mine)
    assert streamed.status_code == 200
    assert "of gamma" in streamed.text
    assert "of beta" not in streamed.text and "controller's own" not in streamed.text
    assert "tenant-1" not in streamed.text
    # An unlimited caller names the namespace to tell the two gammas apart.
    assert [e["message"] for e in tenants.get(
        "/api/events", params={"instance": "gamma", "namespace": "tenant-1"},
        headers=_bearer(WRITE)).json["events"]] == ["of tenant-1's gamma"]
    assert len(tenants.get("/api/events", params={"instance": "gamma"},
                           headers=_bearer(WRITE)).json["events"]) == 2
    envelope(tenants.get("/api/events/stream", params={"instance": "beta"}, headers=mine),
             404, "not_found")
    # Unlimited: every instance's events.
    assert len(tenants.get("/api/events", headers=_bearer(WRITE)).json["events"]) >= 3


def test_a_limited_token_gets_404_for_other_instances_operations_and_plans(
        tenants: FakeApi) -> None:
    """Things named by id: another instance's operation or plan answers exactly what an
    unknown id does, so its existence does not leak; the token's own answer as usual."""
    ci, mine = _bearer(WRITE), _bearer(TENANT)
    theirs = tenants.post("/api/up", {}, params={"instance": "beta"}, headers=ci)
    ours = tenants.post("/api/up", {}, params={"instance": "gamma"}, headers=mine)
    assert theirs.json["operation"] != ours.json["operation"]
    unknown_op = envelope(tenants.get("/api/operations/fake-999", headers=mine), 404,
                          "not_found")
    for op_id in (theirs.json["operation"], "fake-999"):
        body = envelope(tenants.get(f"/api/operations/{op_id}", headers=mine), 404,
                        "not_found")
        assert set(body) == set(unknown_op)  # no more said than for an unknown id
    got = tenants.get(f"/api/operations/{ours.json['operation']}", headers=mine).json
    assert (got["instance"], got["namespace"]) == ("gamma", "tenant-3")
    assert tenants.get(f"/api/operations/{theirs.json['operation']}",
                       headers=ci).status_code == 200
    their_plan = tenants.post("/api/plan", {}, params={"instance": "beta"}, headers=ci).json
    our_plan = tenants.post("/api/plan", {}, params={"instance": "gamma"}, headers=mine).json
    assert (our_plan["instance"], our_plan["namespace"]) == ("gamma", "tenant-3")
    unknown_plan = envelope(tenants.get("/api/plans/0123456789abcdef", headers=mine), 404,
                            "not_found")
    hidden = envelope(tenants.get(f"/api/plans/{their_plan['planId']}", headers=mine), 404,
                      "not_found")
    assert set(hidden) == set(unknown_plan)
    assert tenants.get(f"/api/plans/{our_plan['planId']}", headers=mine).json == our_plan
    assert tenants.get(f"/api/plans/{their_plan['planId']}", headers=ci).json == their_plan
    # By label: the plan of an instance without the label is hidden too.
    envelope(tenants.get(f"/api/plans/{our_plan['planId']}", headers=_bearer(LABELLED)),
             404, "not_found")


def test_status_shows_a_limited_token_only_what_is_controller_wide(
        tenants: FakeApi) -> None:
    """The controller's own instance (its source, passes, revision) is not a tenant's
    business: a limited token outside it gets the app, the time, leadership and its own
    instances; within it (or unlimited) the whole status."""
    full = tenants.get("/api/status", headers=_bearer(WRITE)).json
    assert {"instance", "namespace", "source", "loop"} <= set(full)
    limited = tenants.get("/api/status", headers=_bearer(TENANT)).json
    assert set(limited) == {"app", "time", "leader", "instances"}
    assert limited["leader"] == full["leader"] and limited["app"] == full["app"]
    assert limited["instances"] == [{"namespace": "tenant-3", "name": "gamma"}]
    assert tenants.get("/api/status", headers=_bearer(LABELLED)).json["instances"] == [
        {"namespace": "tenant-1", "name": "alpha"}]


def test_a_token_limited_by_label(tenants: FakeApi) -> None:
    blue = _bearer(LABELLED)
    rows = tenants.get("/api/instances", headers=blue).json["instances"]
    assert [r["name"] for r in rows] == ["alpha"]
    assert tenants.get("/api/parameters", params={"instance": "alpha"},
                       headers=blue).status_code == 200
    envelope(tenants.get("/api/parameters", params={"instance": "gamma"}, headers=blue),
             404, "not_found")
    # read only: its scope of operations still holds inside its instances.
    envelope(tenants.post("/api/up", {}, params={"instance": "alpha"}, headers=blue), 403,
             "forbidden")


def test_whoami_says_scopes_and_instance_restriction(tenants: FakeApi) -> None:
    assert tenants.get("/api/whoami", headers=_bearer(TENANT)).json == {
        "token": "tenant-3", "scopes": ["read", "write"],
        "instances": {"namespaces": ["tenant-3"], "names": [], "labels": {}}}
    assert tenants.get("/api/whoami", headers=_bearer(WRITE)).json == {
        "token": "ci", "scopes": ["read", "write"], "instances": None}
    envelope(tenants.get("/api/whoami"), 401, "unauthorized")


@pytest.mark.parametrize("instances", [
    {}, {"namespaces": "tenant-3"}, {"namespaces": ["Not_A_Namespace"]},
    {"labels": {"team": ["blue"]}}, {"teams": ["x"]}, ["tenant-3"]])
def test_a_bad_instances_restriction_is_refused_naming_the_file(
        tmp_path: Path, instances: object) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump({"tokens": [
        {"name": "t", "token": TENANT, "scopes": ["read"], "instances": instances}]}))
    with pytest.raises(TokensFileError, match=r"tokens\.yaml: token #0: instances"):
        load_tokens(str(path))
