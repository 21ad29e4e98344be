"""Who may call the API, from where, how often and with how much (controller/api/security.py).

Every refusal is the contract's envelope: 401 unauthorized, 403 forbidden, 429 rate_limited
(with Retry-After), 413 payload_too_large.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from falcon import testing

from controller.config import ApiSettings
from tests.api.conftest import Api, envelope

pytestmark = pytest.mark.cluster

READ = "read-token-7f3a"
WRITE = "write-token-91bc"


@pytest.fixture
def tokens_file(tmp_path: Path) -> str:
    path = tmp_path / "tokens.yaml"
    path.write_text(yaml.safe_dump({"tokens": [
        {"name": "dashboard", "token": READ, "scopes": ["read"]},
        {"name": "ci", "token": WRITE, "scopes": ["write"]}]}))
    return str(path)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_tokens_and_scopes(make_api: Callable[..., Api], tokens_file: str) -> None:
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


def test_without_a_tokens_file_every_call_is_refused(make_api: Callable[..., Api]) -> None:
    api = make_api(ApiSettings(auth=True))
    details = envelope(api.get("/api/status"), 401, "unauthorized")
    assert details["header"].startswith("Authorization")
    envelope(api.get("/api/status", headers=_bearer("anything")), 401, "unauthorized")
    assert api.get("/healthz").status_code == 200


def test_public_reads(make_api: Callable[..., Api], tokens_file: str) -> None:
    api = make_api(ApiSettings(auth=True, tokens_file=tokens_file, public_reads=True))
    assert api.get("/api/services/health").status_code == 200
    assert api.get("/api/events?limit=1").status_code == 200
    envelope(api.post("/api/plan", {}), 401, "unauthorized")
    envelope(api.post("/api/plan", {}, headers=_bearer(READ)), 403, "forbidden")
    assert api.post("/api/plan", {}, headers=_bearer(WRITE)).status_code == 200


def test_cors_allows_only_listed_origins(make_api: Callable[..., Api],
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


def test_no_cors_headers_by_default(api: Api) -> None:
    result = api.get("/api/services", headers={"Origin": "https://dashboard.example"})
    assert result.status_code == 200
    assert "access-control-allow-origin" not in result.headers


def test_mutating_calls_are_rate_limited(make_api: Callable[..., Api]) -> None:
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


def test_bodies_over_the_limit_are_refused(make_api: Callable[..., Api]) -> None:
    api = make_api(ApiSettings(auth=False, max_body_bytes=1024))
    big = {"services": {"redis": {"env": {f"K{i}": "v" * 40 for i in range(40)}}}}
    before = api.app.resource()["metadata"]["generation"]
    details = envelope(api.patch("/api/parameters", big), 413, "payload_too_large")
    assert details["limit"] == 1024 and details["length"] > 1024
    envelope(api.post("/api/up", "x" * 2000), 413, "payload_too_large")
    assert api.app.resource()["metadata"]["generation"] == before
    small = api.patch("/api/parameters", {"services": {"redis": {"env": {"K": "v"}}}})
    assert small.status_code == 200, small.text


def test_event_streams_are_capped_so_they_cannot_starve_the_threads(
        make_api: Callable[..., Api]) -> None:
    api = make_api(api=ApiSettings(auth=False, threads=2))  # room for one stream
    wsgi = api.client.app
    environ = testing.create_environ("/api/events/stream", query_string="duration=60")
    statuses: list[str] = []
    held = wsgi(environ, lambda status, headers, *_: statuses.append(status))
    assert statuses == ["200 OK"]
    refused = api.get("/api/events/stream", params={"duration": "0"})
    details = envelope(refused, 429, "rate_limited")
    assert details["maxStreams"] == 1 and refused.headers["Retry-After"] == "5"
    held.close()  # the server closes the iterable when the client goes: the slot frees
    assert api.get("/api/events/stream", params={"duration": "0"}).status_code == 200
    # ...and the test client closes it too, so streams never leak a slot.
    assert api.get("/api/events/stream", params={"duration": "0"}).status_code == 200
