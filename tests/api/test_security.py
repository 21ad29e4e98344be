"""Who may call the API, from where, how often and with how much (controller/api/security.py).

Every refusal is the contract's envelope: 401 unauthorized, 403 forbidden, 429 rate_limited
(with Retry-After), 413 payload_too_large. All of it is the API's own behaviour, so these
run over the in-memory service (tests/support/fakes.py, a real event store): no cluster.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from falcon import testing

from controller.config import ApiSettings
from tests.support.api import READ, WRITE, FakeApi, envelope
from tests.support.waiting import wait_for


@pytest.fixture
def make_api(make_fake_api: Callable[..., FakeApi]) -> Callable[..., FakeApi]:
    return make_fake_api


@pytest.fixture
def api(fake_api: FakeApi) -> FakeApi:
    return fake_api


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_tokens_and_scopes(make_api: Callable[..., FakeApi], tokens_file: str) -> None:
    api = make_api(ApiSettings(auth=True, tokens_file=tokens_file))
    details = envelope(api.get("/api/services"), 401, "unauthorized")
    assert details["header"] == "Authorization: Bearer <token>"
    envelope(api.get("/api/services", headers=_bearer("not-a-token")), 401, "unauthorized")
    envelope(api.get("/api/services", headers={"Authorization": f"Basic {READ}"}), 401,
             "unauthorized")
    assert api.get("/api/services", headers=_bearer(READ)).status_code == 200
    assert api.get("/api/services/health", headers=_bearer(WRITE)).status_code == 200

    details = envelope(api.post("/api/up", {"services": ["redis"]}, headers=_bearer(READ)),
                       403, "forbidden")
    assert details["required"] == "write" and details["scopes"] == ["read"]
    envelope(api.patch("/api/parameters", {}, headers=_bearer(READ)), 403, "forbidden")
    envelope(api.post("/api/up", {"services": ["redis"]}), 401, "unauthorized")
    result = api.post("/api/up", {"services": ["redis"]}, headers=_bearer(WRITE))
    assert result.status_code == 200, result.text
    assert result.json["message"] == "Successfully deployed all manifests"

    # Probes, the metrics scrape and the API description need no token; the webhook proves
    # itself with its own signature (none is configured here: forbidden, not unauthorized).
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert api.get(path).status_code == 200, path
    envelope(api.post("/api/webhooks/git", b"{}"), 403, "forbidden")


def test_without_a_tokens_file_every_call_is_refused(make_api: Callable[..., FakeApi]) -> None:
    api = make_api(ApiSettings(auth=True))
    details = envelope(api.get("/api/status"), 401, "unauthorized")
    assert details["header"].startswith("Authorization")
    envelope(api.get("/api/status", headers=_bearer("anything")), 401, "unauthorized")
    assert api.get("/healthz").status_code == 200


def test_public_reads(make_api: Callable[..., FakeApi], tokens_file: str) -> None:
    api = make_api(ApiSettings(auth=True, tokens_file=tokens_file, public_reads=True))
    assert api.get("/api/services/health").status_code == 200
    assert api.get("/api/events?limit=1").status_code == 200
    envelope(api.post("/api/plan", {}), 401, "unauthorized")
    envelope(api.post("/api/plan", {}, headers=_bearer(READ)), 403, "forbidden")
    assert api.post("/api/plan", {}, headers=_bearer(WRITE)).status_code == 200


def test_cors_allows_only_listed_origins(make_api: Callable[..., FakeApi],
                                         tokens_file: str) -> None:
    allowed = "https://dashboard.example"
    api = make_api(ApiSettings(auth=True, tokens_file=tokens_file,
                               cors_origins=(allowed, "https://ops.example")))
    result = api.get("/api/services", headers={**_bearer(READ), "Origin": allowed})
    assert result.status_code == 200
    assert result.headers["access-control-allow-origin"] == allowed
    other = api.get("/api/services", headers={**_bearer(READ),
                                              "Origin": "https://evil.example"})
    assert other.status_code == 200
    assert "access-control-allow-origin" not in other.headers
    # A preflight needs no token (browsers send none) and names the allowed method.
    preflight = api.client.simulate_options("/api/up", headers={
        "Origin": allowed, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Authorization, Content-Type"})
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["access-control-allow-origin"] == allowed
    assert "POST" in preflight.headers["access-control-allow-methods"]
    refused = api.client.simulate_options("/api/up", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in refused.headers
    # An error answer to an allowed origin still carries the header (the browser can read
    # the envelope).
    failed = api.get("/api/services", headers={"Origin": allowed})
    envelope(failed, 401, "unauthorized")
    assert failed.headers["access-control-allow-origin"] == allowed


def test_no_cors_headers_by_default(api: FakeApi) -> None:
    result = api.get("/api/services", headers={"Origin": "https://dashboard.example"})
    assert result.status_code == 200
    assert "access-control-allow-origin" not in result.headers


def test_mutating_calls_are_rate_limited(make_api: Callable[..., FakeApi]) -> None:
    api = make_api(ApiSettings(auth=False, rate_limit=0.2, rate_burst=3))
    # Invalid bodies: refused after the rate limiter, so the bucket drains cheaply.
    for _ in range(3):
        envelope(api.post("/api/up", "{"), 400, "invalid_request")
    result = api.post("/api/up", "{")
    details = envelope(result, 429, "rate_limited")
    assert result.headers["retry-after"] == str(details["retryAfter"])
    assert 1 <= details["retryAfter"] <= 5
    assert details["burst"] == 3
    # Reads are not limited; another client has its own bucket.
    for _ in range(5):
        assert api.get("/api/services").status_code == 200
    other = api.client.simulate_post("/api/up", body="{", remote_addr="127.0.0.2")
    envelope(other, 400, "invalid_request")


def test_bodies_over_the_limit_are_refused(make_api: Callable[..., FakeApi]) -> None:
    api = make_api(ApiSettings(auth=False, max_body_bytes=1024))
    big = {"services": {"redis": {"env": {f"K{i}": "v" * 40 for i in range(40)}}}}
    details = envelope(api.patch("/api/parameters", big), 413, "payload_too_large")
    assert details["limit"] == 1024 and details["length"] > 1024
    envelope(api.post("/api/up", "x" * 2000), 413, "payload_too_large")
    assert api.service.calls == []  # refused before the service was asked
    small = api.patch("/api/parameters", {"services": {"redis": {"env": {"K": "v"}}}})
    assert small.status_code == 200, small.text


def test_event_streams_are_capped_and_give_their_slot_back(
        make_api: Callable[..., FakeApi]) -> None:
    api = make_api(api=ApiSettings(auth=False, max_streams=1))

    async def scenario() -> None:
        async with testing.ASGIConductor(api.client.app) as conductor:
            async with conductor.simulate_get_stream(
                    "/api/events/stream", params={"duration": "60"}) as held:
                first = await held.stream.read()  # the stream's opening comment
                assert first.startswith(b": conductor event stream"), first
                refused = await conductor.simulate_get("/api/events/stream",
                                                       params={"duration": "0"})
                details = envelope(refused, 429, "rate_limited")
                assert details["maxStreams"] == 1
                assert refused.headers["Retry-After"] == "5"
            # The client went away: the stream ends at once and its slot is free again.
            again = await conductor.simulate_get("/api/events/stream",
                                                 params={"duration": "0"})
            assert again.status_code == 200, again.text

    asyncio.run(asyncio.wait_for(scenario(), timeout=30))
    # ...and the test client's streams (duration-bound) never leak a slot either.
    assert api.get("/api/events/stream", params={"duration": "0"}).status_code == 200
    assert api.get("/api/events/stream", params={"duration": "0"}).status_code == 200


def test_a_streams_duration_holds_whatever_its_backlog(api: FakeApi) -> None:
    store = api.service.store
    before = store.last_id
    store.add_many([{"type": "info", "message": f"backlog {i}", "service": "theta"}
                    for i in range(100)])  # exactly one page of the stream's queries
    started = time.monotonic()
    result = api.stream("/api/events/stream", params={"service": "theta", "duration": "1",
                                                      "lastEventId": str(before)})
    took = time.monotonic() - started
    assert result.status_code == 200
    assert result.text.count("event: info") == 100
    assert took < 3, took  # was duration + one heartbeat wait: twice the duration


def test_a_401_says_how_to_authenticate(make_api: Callable[..., FakeApi], tokens_file: str) -> None:
    api = make_api(ApiSettings(auth=True, tokens_file=tokens_file))
    for headers in ({}, _bearer("wrong"), {"Authorization": "Basic eDp5"}):
        result = api.get("/api/services", headers=headers)
        envelope(result, 401, "unauthorized")
        assert result.headers["www-authenticate"].startswith("Bearer"), result.headers


def test_failed_authentication_is_throttled_per_client(make_api: Callable[..., FakeApi],
                                                       tokens_file: str) -> None:
    api = make_api(ApiSettings(auth=True, tokens_file=tokens_file, auth_failure_burst=10,
                               auth_failure_rate=0.1))
    statuses = [api.get("/api/services", headers=_bearer(f"guess-{i}")).status_code
                for i in range(150)]
    assert statuses[:10] == [401] * 10, statuses[:12]
    assert set(statuses[10:]) == {429}, statuses
    refused = api.get("/api/services", headers=_bearer("guess-again"))
    details = envelope(refused, 429, "rate_limited")
    assert details["reason"] == "authentication_failures"
    assert int(refused.headers["retry-after"]) >= 1
    # Another address is not locked out; the probes need no token and stay open.
    other = api.client.simulate_get("/api/services", headers=_bearer(READ),
                                    remote_addr="127.0.0.2")
    assert other.status_code == 200, other.text
    assert api.get("/healthz").status_code == 200


def test_made_up_methods_do_not_grow_the_metrics(api: FakeApi) -> None:
    for i in range(200):
        result = api.client.simulate_request(f"X{i}METHOD", "/api/services")
        assert result.status_code in (400, 405), result.status
    text = api.get("/metrics").text
    assert "X1METHOD" not in text and "X199METHOD" not in text
    lines = [line for line in text.splitlines()
             if line.startswith("conductor_api_requests_total{")
             and 'method="other"' in line]
    assert lines and sum(float(line.rsplit(" ", 1)[1]) for line in lines) == 200, lines


def test_callers_scopes_are_known_to_the_resources(make_api: Callable[..., FakeApi],
                                                   tokens_file: str) -> None:
    from controller.api.security import AuthMiddleware, Token

    def scopes_of(settings: ApiSettings, headers: dict[str, str]) -> frozenset[str]:
        middleware = AuthMiddleware(settings, [Token("dashboard", READ, frozenset({"read"})),
                                               Token("ci", WRITE,
                                                     frozenset({"read", "write"}))])
        req = testing.create_req(path="/api/parameters", headers=headers)
        middleware.check(req, None)  # type: ignore[arg-type]
        scopes: frozenset[str] = req.context.scopes
        return scopes

    on = ApiSettings(auth=True)
    assert scopes_of(on, _bearer(READ)) == {"read"}
    assert scopes_of(on, _bearer(WRITE)) == {"read", "write"}
    assert scopes_of(ApiSettings(auth=False), {}) == {"read", "write"}
    assert scopes_of(ApiSettings(auth=True, public_reads=True), {}) == {"read"}


def test_a_rotated_token_works_without_a_restart(make_api: Callable[..., FakeApi],
                                                 tokens_file: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    api = make_api(ApiSettings(auth=True, tokens_file=tokens_file))
    assert api.get("/api/services", headers=_bearer(READ)).status_code == 200
    rotated = "read-token-rotated-5d21"
    # As a mounted Secret is updated: the new file replaces the old one in one rename.
    path = Path(tokens_file)
    new = path.with_name("tokens.new")
    new.write_text(yaml.safe_dump({"tokens": [
        {"name": "dashboard", "token": rotated, "scopes": ["read"]},
        {"name": "ci", "token": WRITE, "scopes": ["write"]}]}))
    new.replace(path)
    wait_for(lambda: api.get("/api/services", headers=_bearer(rotated)).status_code == 200,
             timeout=10, message="the rotated token to be accepted")
    envelope(api.get("/api/services", headers=_bearer(READ)), 401, "unauthorized")
    # A file that turns bad keeps the last good tokens in force (and says so in the log).
    path.write_text("tokens: [{name: broken")

    def broken_seen() -> bool:
        assert api.get("/api/services", headers=_bearer(rotated)).status_code == 200
        return "the previous tokens stay in force" in caplog.text

    with caplog.at_level("ERROR", logger="controller.api.security"):
        wait_for(broken_seen, timeout=10, message="the broken file to be noticed")
    assert api.get("/api/services", headers=_bearer(rotated)).status_code == 200
    path.write_text(yaml.safe_dump({"tokens": [
        {"name": "ci", "token": WRITE, "scopes": ["write"]}]}))
    wait_for(lambda: api.get("/api/services", headers=_bearer(rotated)).status_code == 401,
             timeout=10, message="the removed token to be refused")


def test_new_events_reach_open_streams_once_each_filtered_and_in_order(api: FakeApi) -> None:
    store = api.service.store
    stream = api.client.app._router.find("/api/events/stream")[0]
    wanted: list[int] = []

    def feed() -> None:
        wait_for(lambda: len(stream.fanout) >= 1, timeout=10, message="a subscriber")
        # One commit of more than a page (the shared read pages through it), two services.
        added = store.add_many([{"type": "warning" if i % 3 else "error",
                                 "message": f"new {i}", "service": ("iota", "kappa")[i % 2]}
                                for i in range(150)])
        wanted.extend(e.id for e in added if e.service == "iota" and e.type == "warning")

    feeder = threading.Thread(target=feed)
    feeder.start()
    result = api.stream("/api/events/stream", params={
        "service": "iota", "type": "warning", "duration": "3", "limit": "1"})
    feeder.join(10)
    ids = [int(line[4:]) for line in result.text.splitlines() if line.startswith("id: ")]
    assert wanted and ids == wanted, (len(ids), len(wanted))
