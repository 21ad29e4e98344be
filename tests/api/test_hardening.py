"""Hostile input against the API (issue 9, findings 2, 12, 14, 15, 16, 25), in-process over
the in-memory service (tests/support/fakes.py, no cluster): every malformed request is a 400
(or 401) in the contract's envelope, every answer is strict JSON, and nothing was applied,
deleted or written before the refusal (the fake records every call the API makes and holds
what is deployed, so "nothing" is checked where the refusal happens: before the service).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from falcon import testing

from controller.api import webhooks
from controller.api.app import Settings
from controller.api.common import MAX_JSON_DEPTH
from controller.api.openapi import document
from controller.config import ApiSettings, Config, ConfigError, GitSettings, validate
from tests.support.api import SERVICES, FakeApi, envelope

DEPLOYS = ("/api/up", "/api/update", "/api/down", "/api/plan")
# Many refused requests in a row, from one client: the rate limit is not under test here.
UNLIMITED = ApiSettings(auth=False, rate_limit=0)


@pytest.fixture
def api(make_fake_api: Callable[..., FakeApi]) -> FakeApi:
    return make_fake_api(api=UNLIMITED)


def _strict(result: testing.Result) -> Any:
    """The answer parsed as strict JSON: NaN/Infinity (which Python writes by default) fail."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in an answer: not JSON: {result.text[:300]}")

    return json.loads(result.text, parse_constant=refuse)


def _refused(result: testing.Result, status: int = 400,
             code: str = "invalid_request") -> dict[str, Any]:
    details = envelope(result, status, code)
    _strict(result)
    return details


def _deployments(api: FakeApi) -> set[str]:
    return set(api.service.instances_["default"].deployed)


def _generation(api: FakeApi) -> int:
    return api.service.instances_["default"].generation


def _versions(api: FakeApi) -> tuple[Any, ...]:
    """Everything a deploy or a write would change: what is deployed, the parameters'
    version, the operations started, and whether the service was asked to deploy or plan."""
    inst = api.service.instances_["default"]
    asked = [name for name, _ in api.service.calls if name in ("deploy", "plan")]
    return (sorted(inst.deployed), inst.version, len(api.service.operations), asked)


# --- finding 2: only an absent selection (or []) means every service ---------------------

FALSY_OR_WRONG = ['""', "false", "0", "null", "{}", "true", '"redis"', '[""]', "[1]",
                  '["redis", null]', '[["redis"]]']


def test_a_falsy_or_malformed_selection_is_refused_not_every_service(api: FakeApi) -> None:
    before = _versions(api)
    for path in DEPLOYS:
        for value in FALSY_OR_WRONG:
            details = _refused(api.post(path, f'{{"services": {value}}}'))
            assert details["field"] == "services", (path, value, details)
        # A misspelt key would otherwise select nothing, i.e. everything.
        details = _refused(api.post(path, '{"service": ["redis"]}'))
        assert details["fields"] == ["service"], (path, details)
        _refused(api.post(path, "null"))  # a JSON null is no selection object either
        _refused(api.post(path, "\n"))  # nor is whitespace: only no body at all is none
    assert _versions(api) == before  # nothing deleted, nothing re-applied
    assert _deployments(api) >= {"frontend", "redis"}


def test_an_absent_or_empty_selection_still_means_every_service(api: FakeApi) -> None:
    for body in ("{}", '{"services": []}', ""):
        result = api.post("/api/plan", body)
        assert result.status_code == 200, result.text
        assert {c["service"] for c in result.json["changes"]} >= set(SERVICES), body


# --- finding 12: every parameter is checked before anything runs --------------------------


@pytest.mark.parametrize(("query", "field"), [
    ("waitHealthy=true&healthTimeout=-1", "healthTimeout"),
    ("waitHealthy=true&healthTimeout=nan", "healthTimeout"),
    ("healthTimeout=", "healthTimeout"),
    ("waitHealthy=maybe", "waitHealthy"),
    ("timeout=-1", "timeout"),
    ("wait=perhaps", "wait"),
    ("instance=", "instance"),
])
def test_a_bad_query_parameter_is_refused_before_anything_is_applied(
        api: FakeApi, query: str, field: str) -> None:
    assert api.post("/api/down", {"services": ["redis"]}).status_code == 200
    for op in ("up", "update"):
        details = _refused(api.post(f"/api/{op}?{query}", {"services": ["redis"]}))
        assert details["field"] == field, (op, details)
    assert "redis" not in _deployments(api)  # not re-created, then refused
    details = _refused(api.post(f"/api/down?{query}", {"services": ["frontend"]}))
    assert details["field"] == field
    assert "frontend" in _deployments(api)


# --- findings 14 and 15: bodies that are not strict JSON -----------------------------------


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


NOT_STRICT_JSON: list[tuple[str, bytes]] = [
    ("escaped lone surrogate", b'{"services": ["r\\ud800"]}'),
    ("UTF-8-encoded surrogate", b'{"services": ["r\xed\xa0\x80"]}'),
    ("surrogate in a key", b'{"global": {"\\udfff": 1}}'),
    ("NaN", b'{"services": NaN}'),
    ("Infinity", b'{"global": {"replicas": Infinity}}'),
    ("-Infinity", b'{"global": {"replicas": -Infinity}}'),
    ("overflowing float", b'{"global": {"replicas": 1e309}}'),
    ("not UTF-8", b'{"services": ["\xff"]}'),
    ("nesting past the limit", ('{"services": ' + _nested(MAX_JSON_DEPTH) + "}").encode()),
    ("nesting of 950", _nested(950).encode()),
    ("nesting of 100000", _nested(100_000).encode()),
]
JSON_ROUTES = [("POST", "/api/up"), ("POST", "/api/down"), ("POST", "/api/plan"),
               ("POST", "/api/parameters"), ("PATCH", "/api/parameters"),
               ("POST", "/api/parameters/rollback")]


def test_bodies_that_are_not_strict_json_are_400_and_change_nothing(api: FakeApi) -> None:
    before, generation = _versions(api), _generation(api)
    for method, path in JSON_ROUTES:
        for name, body in NOT_STRICT_JSON:
            result = api.client.simulate_request(method, path, body=body)
            assert result.status_code == 400, (method, path, name, result.text[:200])
            _refused(result)  # was 500 with an empty body (surrogate, nesting) or NaN text
    assert _versions(api) == before
    assert _generation(api) == generation


def test_the_depth_limit_leaves_room_for_every_real_document(api: FakeApi) -> None:
    # Just under the limit, the body is parsed and judged on its content (a list of
    # names), not refused as unreadable.
    details = _refused(api.post("/api/plan", '{"services": '
                                + _nested(MAX_JSON_DEPTH - 1) + "}"))
    assert details["field"] == "services"


# --- finding 15: non-finite numbers in query parameters ------------------------------------

NOT_FINITE = ["nan", "NaN", "inf", "-inf", "Infinity", "1e309", "-1e309", "1_0", "0x10", " "]


def test_numbers_in_query_parameters_are_finite_decimals(api: FakeApi) -> None:
    routes = [("POST", "/api/up", "timeout"), ("POST", "/api/up", "healthTimeout"),
              ("GET", "/api/events", "limit"), ("GET", "/api/events", "offset"),
              ("GET", "/api/events/stream", "duration"),
              ("GET", "/api/parameters/history", "limit")]
    for method, path, name in routes:
        for value in NOT_FINITE:
            result = api.client.simulate_request(method, path, params={name: value},
                                                 json={"services": ["redis"]})
            details = _refused(result)  # was {"value": NaN}: not JSON
            assert details["field"] == name, (path, name, value, details)
            assert isinstance(details["value"], str), details


# --- finding 25: an empty query value is invalid wherever it is documented -----------------

PATH_VALUES = {"name": "redis", "service": "redis", "op_id": "0-0", "kind": "Deployment",
               "namespace": "NAMESPACE"}


def _documented_query_parameters() -> list[tuple[str, str, str]]:
    out = []
    for path, item in document()["paths"].items():
        for method, op in item.items():
            for p in op.get("parameters", []):
                if p["in"] == "query":
                    out.append((method.upper(), path, p["name"]))
    return out


def test_an_empty_query_value_is_400_on_every_documented_parameter(api: FakeApi) -> None:
    checked = 0
    generation = _generation(api)
    spec = api.get("/api/parameters").json
    # Bodies that would be accepted: only the empty parameter is wrong (and were it read
    # as absent, the write would change nothing).
    bodies: dict[tuple[str, str], Any] = {("POST", "/api/parameters"): spec,
                                          ("PATCH", "/api/parameters"): {},
                                          ("POST", "/api/parameters/rollback"): {
                                              "revision": "generation/1"},
                                          ("POST", "/api/suspend"): {},
                                          ("POST", "/api/resume"): {}}
    for method, path, name in _documented_query_parameters():
        concrete = path
        for field, value in PATH_VALUES.items():
            concrete = concrete.replace(f"{{{field}}}", value.replace(
                "NAMESPACE", api.service.namespace))
        body = bodies.get((method, path), {"services": ["redis"]})
        result = api.client.simulate_request(method, concrete, query_string=f"{name}=",
                                             json=body if method != "GET" else None)
        details = _refused(result)  # `?instance=`, `?until=` were read as absent
        assert details["field"] == name, (method, path, name, details)
        checked += 1
    assert checked >= 30  # every query parameter of every operation
    assert _generation(api) == generation


def test_rollback_to_an_empty_revision_is_refused_as_documented(api: FakeApi) -> None:
    schema = document()["paths"]["/api/parameters/rollback"]["post"]["requestBody"]
    revision = schema["content"]["application/json"]["schema"]["properties"]["revision"]
    assert revision["minLength"] == 1
    for body in ('{"revision": ""}', '{"revision": 7}', "{}", '{"revision": null}'):
        details = _refused(api.post("/api/parameters/rollback", body))
        assert details["field"] == "revision", body


# --- findings 14 and 16: the webhook -------------------------------------------------------

SECRET = "hardening-webhook-secret"


def _sign(body: bytes, key: bytes = SECRET.encode()) -> str:
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def _secret_file(tmp_path: Path) -> Path:
    secret = tmp_path / "webhook-secret"
    secret.write_text(SECRET + "\n")
    return secret


@pytest.fixture
def hooked(make_fake_api: Callable[..., FakeApi], tmp_path: Path) -> FakeApi:
    # The secret as the app gets it at start: read from its file by Settings.from_config.
    settings = Settings.from_config(Config(git=GitSettings(
        webhook_secret_file=str(_secret_file(tmp_path)))))
    return make_fake_api(api=UNLIMITED, webhook_secret=settings.webhook_secret)


def _woken_by_webhook(api: FakeApi) -> bool:
    """Whether a webhook call asked the service for a pass (a push it acted on)."""
    return bool(api.service.git_pushes)


def test_a_signed_webhook_body_that_cannot_be_read_is_400_unsigned_401(hooked: FakeApi) -> None:
    for body in (_nested(950).encode(), _nested(100_000).encode(),
                 b'{"ref": "refs/heads/\\ud800"}'):
        _refused(hooked.post("/api/webhooks/git", body,
                             headers={"X-Hub-Signature-256": _sign(body)}))
        _refused(hooked.post("/api/webhooks/git", body,
                             headers={"X-Hub-Signature-256": _sign(b"")}), 401, "unauthorized")
    assert not _woken_by_webhook(hooked)


def test_non_ascii_or_empty_webhook_credentials_are_401(hooked: FakeApi) -> None:
    body = b'{"ref": "refs/heads/main"}'
    attempts = [
        ("github", {"X-Hub-Signature-256": "sha256=\u00e9" + "0" * 63}),
        ("gitea", {"X-Gitea-Signature": "\u00ff" * 64}),
        ("generic", {"X-Conductor-Signature": "sha256=caf\u00e9"}),
        ("gitlab", {"X-Gitlab-Token": SECRET[:-1] + "\u00e9"}),
        ("generic", {"Authorization": "Bearer \u00e9"}),
        # What an empty secret file used to accept:
        ("gitlab", {"X-Gitlab-Token": ""}),
        ("generic", {"Authorization": "Bearer "}),
        ("github", {"X-Hub-Signature-256": _sign(body, b"")}),
    ]
    for provider, headers in attempts:
        details = _refused(hooked.post("/api/webhooks/git", body, headers=headers),
                           401, "unauthorized")  # was 500 TypeError for non-ASCII
        assert details["provider"] == provider, headers
    assert not _woken_by_webhook(hooked)
    # The same call, correctly signed, does wake it (the check above can fail).
    assert hooked.post("/api/webhooks/git", body, headers={
        "X-Hub-Signature-256": _sign(body)}).status_code == 202
    assert _woken_by_webhook(hooked)


# The API's settings are read before anything starts (serving, and the tests' make_api,
# build them with Settings.from_config before the controller): a bad secret file stops it.
@pytest.mark.parametrize("content", ["", "   \n\t"])
def test_an_empty_webhook_secret_stops_the_start(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty-secret"
    path.write_text(content)
    with pytest.raises(ValueError, match=f"{re.escape(str(path))} is empty"):
        Settings.from_config(Config(git=GitSettings(webhook_secret_file=str(path))))


def test_a_missing_webhook_secret_file_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "no-such-secret"
    with pytest.raises(ValueError, match=re.escape(str(path))):  # was a 500 on every call
        Settings.from_config(Config(git=GitSettings(webhook_secret_file=str(path))))


def test_the_webhook_secret_is_read_once(hooked: FakeApi, tmp_path: Path) -> None:
    # Rotated or removed after the start, the file no longer matters: every call is
    # answered with the secret the app was built with (no read, no 500 per call).
    _secret_file(tmp_path).unlink()
    body = b'{"ref": "refs/heads/main"}'
    result = hooked.post("/api/webhooks/git", body, headers={"X-Hub-Signature-256":
                                                             _sign(body)})
    assert result.status_code == 202, result.text
    assert webhooks.load_secret(GitSettings()) is None  # no file configured: webhooks off


def test_an_empty_webhook_secret_is_refused_before_anything_starts(tmp_path: Path) -> None:
    # `conductor run` validates its configuration before it takes the lease or starts a
    # pass: an empty secret stops it there, with one line naming the variable and file.
    path = tmp_path / "empty-secret"
    path.write_text(" \n")
    cfg = Config(git=GitSettings(webhook_secret_file=str(path)))
    with pytest.raises(ConfigError, match=rf"WEBHOOK_SECRET_FILE: {re.escape(str(path))} "
                                          "is empty"):
        validate(cfg)
    path.write_text("s3cret\n")
    validate(cfg)
