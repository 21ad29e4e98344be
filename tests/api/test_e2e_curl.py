"""The reference's curl examples, verbatim, against the real `conductor run` (gunicorn).

Each example is run by bash exactly as the agents' reference prints it, only
`localhost:8081` replaced by the test server's loopback address; curl's options for the
test (silent, the status and content type after the body) come from a curlrc, not from the
command. The reference's examples name a service `redis-master` that the example app does
not have: those answer the documented `not_found` envelope. Placeholders (`'{...}'`,
`[...]`) are sent verbatim too (an invalid_request), then with a real body.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.sources.resource import API_VERSION, KIND
from devcluster import kubelet
from devcluster.running import free_port
from tests.support.api import SERVICES
from tests.support.cluster import REPO, App, controller_process
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

REFERENCE = REPO.parent / "shared" / "reference" / "agents-api.txt"

# Every curl command of the reference, in its order, exactly as printed there.
EX2_UP = """curl -X POST http://localhost:8081/api/up \\
  -H "Content-Type: application/json" \\
  -d '{
    "services": ["frontend", "redis-master"]
  }'"""
EX3_HEALTH = "curl http://localhost:8081/api/services/health"
EX3_ERRORS = 'curl "http://localhost:8081/api/events?type=error&limit=10"'
EX4_GET = "curl http://localhost:8081/api/parameters"
EX4_POST = """curl -X POST http://localhost:8081/api/parameters \\
  -H "Content-Type: application/json" \\
  -d '{
    "global": {
      "namespace": "default",
      "replicas": 1
    },
    "services": {
      "redis": {
        "replicas": 5
      }
    }
  }'"""
EX4_UPDATE = """curl -X POST http://localhost:8081/api/update \\
  -H "Content-Type: application/json" \\
  -d '{"services": ["redis"]}'"""
EX5_ERRORS = 'curl "http://localhost:8081/api/events/errors?limit=20"'
EX5_RESOURCE = 'curl "http://localhost:8081/api/events/default/Deployment/frontend?limit=10"'
WF_HEALTHZ = "curl http://localhost:8081/healthz"
WF_PARAMS = "curl http://localhost:8081/api/parameters"
WF_POST_PARAMS = "curl -X POST http://localhost:8081/api/parameters -d '{...}'"
WF_UP = """curl -X POST http://localhost:8081/api/up -d '{"services": [...]}'"""
WF_HEALTH = "curl http://localhost:8081/api/services/health"
WF_EVENTS = "curl http://localhost:8081/api/events?limit=10"
EXAMPLES = [EX2_UP, EX3_HEALTH, EX3_ERRORS, EX4_GET, EX4_POST, EX4_UPDATE, EX5_ERRORS,
            EX5_RESOURCE, WF_HEALTHZ, WF_PARAMS, WF_POST_PARAMS, WF_UP, WF_HEALTH, WF_EVENTS]
ERROR_CODES = {"not_found", "validation_error", "invalid_yaml", "kubernetes_error",
               "reconciliation_error", "invalid_request"}


def reference_commands(text: str) -> list[str]:
    """The curl commands of the reference: continuation lines and multi-line quotes joined."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("curl "):
            command = lines[i]
            while command.endswith("\\") or command.count("'") % 2:
                i += 1
                command += "\n" + lines[i]
            out.append(command)
        i += 1
    return out


@pytest.mark.skipif(not REFERENCE.exists(), reason=f"{REFERENCE} is not beside the repo")
def test_the_examples_are_the_references_curl_commands() -> None:
    assert reference_commands(REFERENCE.read_text()) == EXAMPLES


@dataclass
class Answer:
    status: int
    content_type: str
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)


@dataclass
class Server:
    port: int
    home: Path  # holds the curlrc

    def curl(self, command: str) -> Answer:
        """Run a reference command with bash, only the address replaced."""
        assert command.startswith("curl ")
        command = command.replace("localhost:8081", f"127.0.0.1:{self.port}")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home),
               "CURL_HOME": str(self.home)}
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                              env=env, timeout=120, check=False)
        assert done.returncode == 0, (command, done.returncode, done.stderr)
        body, _, trailer = done.stdout.rpartition("\n")
        status, _, content_type = trailer.partition(" ")
        return Answer(int(status), content_type, body)

    def post(self, path: str, body: str) -> Answer:
        """curl -X POST ... -d BODY, the reference's own form (no Content-Type)."""
        return self.curl(f"curl -X POST http://localhost:8081{path} -d {shlex.quote(body)}")


def envelope(answer: Answer, status: int, code: str) -> dict[str, Any]:
    assert answer.status == status, (answer.status, answer.text)
    assert answer.content_type.startswith("application/json"), answer.content_type
    body = answer.json
    assert set(body) == {"error", "message", "details"}, body
    assert body["error"] == code and isinstance(body["message"], str) and body["message"]
    assert isinstance(body["details"], dict), body
    details: dict[str, Any] = body["details"]
    return details


def ok(answer: Answer) -> Any:
    assert answer.status == 200, (answer.status, answer.text)
    assert answer.content_type.startswith("application/json"), answer.content_type
    return answer.json


def ok_or_envelope(answer: Answer, message: str) -> Any:
    """The documented success message, or (the reference: every endpoint) an envelope."""
    if answer.status == 200:
        body = ok(answer)
        assert body["message"] == message, body
        return body
    body = answer.json
    assert body["error"] in ERROR_CODES, body
    envelope(answer, answer.status, body["error"])
    return body


def health_shape(answer: Answer, namespace: str) -> list[dict[str, Any]]:
    services: list[dict[str, Any]] = ok(answer)["services"]
    assert [s["name"] for s in services] == SERVICES
    for s in services:
        assert {"name", "namespace", "status", "lastChecked"} <= set(s), s
        assert s["namespace"] == namespace
        assert s["status"] in ("healthy", "progressing", "unhealthy", "unknown", "down")
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", s["lastChecked"])
    return services


def events_shape(answer: Answer, limit: int) -> list[dict[str, Any]]:
    body = ok(answer)
    events: list[dict[str, Any]] = body["events"]
    assert body["count"] == len(events) <= limit
    ids = [e["id"] for e in events]
    assert ids == sorted(ids, reverse=True), "newest first"
    for e in events:
        assert {"id", "timestamp", "type", "resource", "service", "message"} <= set(e)
    return events


@pytest.fixture
def server(app: App, tmp_path: Path) -> Iterator[Server]:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".curlrc").write_text('silent\nshow-error\nmax-time = 120\n'
                                  'write-out = "\\n%{http_code} %{content_type}"\n')
    port = free_port()
    log = tmp_path / "controller.log"
    with controller_process(app.cluster, app.root, app.namespace, port, log):
        wait_for(lambda: Server(port, home).curl(WF_HEALTHZ).status == 200, timeout=60,
                 message=f"the API to answer (log: {log})")
        served = Server(port, home)
        wait_for(lambda: "lastPass" in ok(served.curl("curl http://localhost:8081/api/status")),
                 timeout=60, message="the first pass")
        try:
            yield served
        finally:  # wherever the parameters sent the app, take it away again
            served.post("/api/down", "{}")


def test_the_references_curl_examples_verbatim(server: Server, app: App) -> None:
    ns = app.namespace
    before = app.versions()

    # Example 2: deploy frontend and redis-master. There is no redis-master: not_found, and
    # nothing is applied (frontend neither).
    details = envelope(server.curl(EX2_UP), 404, "not_found")
    assert details["services"] == ["redis-master"] and details["available"] == SERVICES
    assert app.versions() == before

    # Example 3: health, then error events.
    health_shape(server.curl(EX3_HEALTH), ns)
    errors = events_shape(server.curl(EX3_ERRORS), 10)
    assert all(e["type"] == "error" for e in errors)

    # Example 4: parameters, their update with the reference's body, a redeploy.
    current = ok(server.curl(EX4_GET))
    assert current == app.resource()["spec"]
    example = {"global": {"namespace": "default", "replicas": 1},
               "services": {"redis": {"replicas": 5}}}
    written = ok(server.curl(EX4_POST))
    assert written["message"] == "Parameters updated" and written["parameters"] == example
    assert app.resource()["spec"] == example
    ok_or_envelope(server.curl(EX4_UPDATE), "Successfully updated all manifests")

    # Example 5: recent errors, and the events of default/Deployment/frontend.
    errors = events_shape(server.curl(EX5_ERRORS), 20)
    assert all(e["type"] == "error" for e in errors)
    for e in events_shape(server.curl(EX5_RESOURCE), 10):
        assert e["resource"] == "default/Deployment/frontend"

    # The workflow: health, parameters, parameters written, deploy, health, events.
    assert ok(server.curl(WF_HEALTHZ)) == {"status": "ok"}
    assert ok(server.curl(WF_PARAMS)) == example
    details = envelope(server.curl(WF_POST_PARAMS), 400, "invalid_request")  # '{...}'
    assert details["content_type"] == "application/x-www-form-urlencoded"
    scaled = {**current, "services": {**current["services"],
                                      "redis": {**current["services"]["redis"],
                                                "replicas": 2}}}
    written = ok(server.post("/api/parameters", json.dumps(scaled)))
    assert written["parameters"] == scaled
    envelope(server.curl(WF_UP), 400, "invalid_request")  # '{"services": [...]}'
    deployed = ok(server.post("/api/up", json.dumps({"services": SERVICES})))
    assert deployed["message"] == "Successfully deployed all manifests"
    assert deployed["services"] == SERVICES
    dep = app.kube.get("apps/v1", "Deployment", "redis", ns)
    assert dep is not None and dep["spec"]["replicas"] == 2

    # Instead of `sleep 10`: make the pods ready (no kubelet here) and poll the health.
    def healthy() -> bool:
        kubelet.settle(app.kube, ns)
        services = health_shape(server.curl(WF_HEALTH), ns)
        return {s["status"] for s in services} == {"healthy"}

    wait_for(healthy, timeout=60, interval=0.5, message="every service healthy")
    events = events_shape(server.curl(WF_EVENTS), 10)
    assert len(events) == 10
    obj = app.kube.get(API_VERSION, KIND, "default", ns)
    assert obj is not None and obj["spec"] == scaled


def test_chunked_bodies_are_read_and_limited(server: Server, tmp_path: Path) -> None:
    # Without a Content-Length, Falcon's bounded stream reads nothing: a chunked selection
    # of one service must not become an empty selection (every service).
    chunked = '-H "Transfer-Encoding: chunked" '
    plan = ok(server.curl(f"curl -X POST http://localhost:8081/api/plan {chunked}"
                          """-d '{"services": ["redis"]}'"""))
    assert plan["services"] == ["redis"]
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"services": {"redis": {"env": {"X": "y" * 2_000_000}}}}))
    for extra in ("", chunked):
        answer = server.curl(f"curl -X POST http://localhost:8081/api/parameters {extra}"
                             f"-H 'Content-Type: application/json' --data-binary @{big}")
        details = envelope(answer, 413, "payload_too_large")
        assert details["limit"] == 1_048_576


def test_hostile_input_over_the_wire_is_400_in_strict_json(server: Server, app: App,
                                                            tmp_path: Path) -> None:
    """Issue 9 (findings 2, 14, 15) through the real server: curl's bytes, gunicorn's
    parsing. Each answer is the envelope in strict JSON, and the app keeps running."""

    def strict(answer: Answer) -> dict[str, Any]:
        details = envelope(answer, 400, "invalid_request")

        def refuse(name: str) -> None:
            raise AssertionError(f"{name} in an answer: {answer.text[:200]}")

        json.loads(answer.text, parse_constant=refuse)
        return details

    before = {d["metadata"]["name"] for d in
              app.kube.list("apps/v1", "Deployment", app.namespace)[0]}
    assert before == {"frontend", "redis"}
    for value in ('""', "false", "0", "null", "{}"):  # each took every service down
        assert strict(server.post("/api/down", f'{{"services": {value}}}'))["field"] \
            == "services"
    strict(server.post("/api/up", '{"services": NaN}'))
    strict(server.post("/api/up", '{"services": ["r\\ud800"]}'))  # was 500, empty body
    raw = tmp_path / "surrogate.json"
    raw.write_bytes(b'{"services": ["r\xed\xa0\x80"]}')
    strict(server.curl(f"curl -X POST http://localhost:8081/api/plan --data-binary @{raw}"))
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    strict(server.curl(f"curl -X POST http://localhost:8081/api/up --data-binary @{deep}"))
    for query in ("timeout=nan", "timeout=1e309", "healthTimeout=inf&waitHealthy=true",
                  "instance="):
        strict(server.curl(f"curl -X POST 'http://localhost:8081/api/up?{query}' "
                           """-d '{"services": ["redis"]}'"""))
    assert strict(server.curl("curl 'http://localhost:8081/api/events/stream?duration=nan'")
                  )["field"] == "duration"
    after = {d["metadata"]["name"] for d in
             app.kube.list("apps/v1", "Deployment", app.namespace)[0]}
    assert after == before
