"""kube.py without a cluster: retries, error mapping and the request observer, against a
real HTTPS server on 127.0.0.1 that answers what each test scripts.

The client is the real one (Kube.connect with a kubeconfig: TLS verified against the
server's own CA, a bearer token), so what is tested is what the controller runs; only the
API server is a fake, answering scripted statuses and Status bodies in order.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.kube import Kube, KubeError, UnknownKindError, default_retry
from controller.config import Config
from tests.support.tls import https_server, self_signed

TOKEN = "t0ken-for-the-fake"
CORE = {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
    {"name": "configmaps", "kind": "ConfigMap", "namespaced": True,
     "verbs": ["get", "list", "create", "patch", "delete"]},
    {"name": "namespaces", "kind": "Namespace", "namespaced": False, "verbs": ["get"]}]}
CM_PATH = "/api/v1/namespaces/ns/configmaps/web"


@dataclass
class Answer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering


def status_body(status: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": status,
            "reason": reason, "message": message, **({"details": details} if details else {})}


class FakeAPIServer:
    """Answers each (method, path) from its script in order (the last answer repeats);
    discovery of v1 always answers; records every request (method, path, query, auth)."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.scripts: dict[tuple[str, str], deque[Answer]] = {}
        self.requests: list[tuple[str, str, str, str]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                path, _, query = self.path.partition("?")
                answer = server.answer(self.command, path, query,
                                       self.headers.get("Authorization", ""))
                if answer.delay:
                    time.sleep(answer.delay)
                data = json.dumps(answer.body).encode() if answer.body is not None else b""
                try:
                    self.send_response(answer.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in answer.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (a timeout test)
                    pass

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

        self.httpd = https_server(Handler, cert, key)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def script(self, method: str, path: str, *answers: Answer) -> None:
        with self.lock:
            self.scripts[(method, path)] = deque(answers)

    def answer(self, method: str, path: str, query: str, auth: str) -> Answer:
        with self.lock:
            self.requests.append((method, path, query, auth))
            if (method, path) == ("GET", "/api/v1"):
                return Answer(200, CORE)
            queue = self.scripts.get((method, path))
            if not queue:
                return Answer(404, status_body(404, "NotFound", f"{path} not found"))
            return queue.popleft() if len(queue) > 1 else queue[0]

    def calls(self, method: str, path: str) -> int:
        with self.lock:
            return sum(1 for m, p, _, _ in self.requests if (m, p) == (method, path))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the kubeconfig's CA is the cert itself)."""
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def server(tls: tuple[Path, Path]) -> Iterator[FakeAPIServer]:
    fake = FakeAPIServer(*tls)
    yield fake
    fake.close()


@pytest.fixture
def observed() -> list[tuple[str, int, float]]:
    return []


@pytest.fixture
def kube(server: FakeAPIServer, tls: tuple[Path, Path], tmp_path: Path,
         observed: list[tuple[str, int, float]]) -> Iterator[Kube]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {
            "server": f"https://127.0.0.1:{server.port}",
            "certificate-authority": str(tls[0])}}],
        "users": [{"name": "fake", "user": {"token": TOKEN}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}))
    cfg = Config.from_env({}, kubeconfig=str(kubeconfig))
    cfg = replace(cfg, apply=replace(cfg.apply, attempts=4, backoff_initial=0.01,
                                     backoff_max=0.02, request_timeout=1.0))
    client = Kube.connect(cfg, observer=lambda *a: observed.append(a))
    yield client
    client.close()


def test_requests_carry_the_token_over_verified_tls(kube: Kube, server: FakeAPIServer) -> None:
    server.script("GET", CM_PATH, Answer(200, {"kind": "ConfigMap", "data": {"a": "b"}}))
    assert kube.get("v1", "ConfigMap", "web", "ns") == {"kind": "ConfigMap",
                                                        "data": {"a": "b"}}
    assert {auth for *_, auth in server.requests} == {f"Bearer {TOKEN}"}


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_transient_answers_are_retried_until_one_succeeds(
        kube: Kube, server: FakeAPIServer, status: int) -> None:
    server.script("GET", CM_PATH, Answer(status, status_body(status, "Busy", "try later"),
                                         {"Retry-After": "1"}),
                  Answer(status, status_body(status, "Busy", "try later")),
                  Answer(200, {"kind": "ConfigMap"}))
    assert kube.get("v1", "ConfigMap", "web", "ns") == {"kind": "ConfigMap"}
    assert server.calls("GET", CM_PATH) == 3


def test_a_transient_failure_that_lasts_gives_up_after_the_attempts(
        kube: Kube, server: FakeAPIServer) -> None:
    server.script("PATCH", CM_PATH, Answer(503, status_body(503, "ServiceUnavailable",
                                                             "etcd is away")))
    with pytest.raises(KubeError) as err:
        kube.patch("v1", "ConfigMap", "web", {"data": {}}, "ns")
    assert (err.value.status, err.value.reason, err.value.transient) == \
        (503, "ServiceUnavailable", True)
    assert err.value.code == "kubernetes_error" and "etcd is away" in err.value.message
    assert server.calls("PATCH", CM_PATH) == 4  # attempts=4


def test_retries_are_reported_to_on_retry(server: FakeAPIServer, kube: Kube) -> None:
    retried: list[int] = []
    kube.retry = default_retry(kube.settings, on_retry=lambda e: retried.append(e.status))
    server.script("GET", CM_PATH, Answer(429, status_body(429, "TooManyRequests", "slow")),
                  Answer(200, {}))
    kube.get("v1", "ConfigMap", "web", "ns")
    assert retried == [429]


@pytest.mark.parametrize(("status", "reason"), [
    (409, "Conflict"), (422, "Invalid"), (403, "Forbidden"), (400, "BadRequest")])
def test_permanent_answers_are_raised_at_once_with_their_status_and_causes(
        kube: Kube, server: FakeAPIServer, status: int, reason: str) -> None:
    causes = [{"reason": "FieldValueInvalid", "message": "must be >= 0",
               "field": "data.replicas"}]
    server.script("PATCH", CM_PATH, Answer(status, status_body(
        status, reason, f'configmaps "web" {reason.lower()}', name="web", causes=causes)))
    with pytest.raises(KubeError) as err:
        kube.apply({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "web", "namespace": "ns"}})
    e = err.value
    assert (e.status, e.reason, e.transient) == (status, reason, False)
    assert e.code == "kubernetes_error"  # the vocabulary's code; the status says which
    assert e.message == f'configmaps "web" {reason.lower()}'
    assert e.details["causes"] == causes
    assert e.details["method"] == "PATCH" and e.details["path"] == CM_PATH
    assert server.calls("PATCH", CM_PATH) == 1  # never re-sent


def test_not_found_is_none_for_get_false_for_delete_and_unknown_kind_for_discovery(
        kube: Kube, server: FakeAPIServer) -> None:
    assert kube.get("v1", "ConfigMap", "web", "ns") is None
    assert kube.delete("v1", "ConfigMap", "web", "ns") is False
    server.script("DELETE", CM_PATH, Answer(200, {"kind": "Status", "status": "Success"}))
    assert kube.delete("v1", "ConfigMap", "web", "ns") is True
    with pytest.raises(UnknownKindError) as err:
        kube.get("example.com/v1", "Widget", "w", "ns")  # /apis/example.com/v1 is a 404
    assert (err.value.status, err.value.reason) == (404, "UnknownKind")
    with pytest.raises(UnknownKindError):
        kube.get("v1", "Widget", "w", "ns")  # a group-version served, without this kind
    server.script("GET", CM_PATH, Answer(404, status_body(404, "NotFound", "gone")))
    with pytest.raises(KubeError) as raw:
        kube.request("GET", CM_PATH)
    assert (raw.value.status, raw.value.transient) == (404, False)


def test_a_body_any_json_can_carry_reaches_the_server(kube: Kube,
                                                       server: FakeAPIServer) -> None:
    """A caller's values that some encoders refuse (an integer past 64 bits, a lone
    surrogate) are sent: the API server's answer (here a refusal) is the caller's error,
    not a TypeError of ours (the fuzzed API got a 500 that way)."""
    server.script("PATCH", CM_PATH, Answer(422, status_body(422, "Invalid", "bad value")))
    with pytest.raises(KubeError) as caught:
        kube.patch("v1", "ConfigMap", "web", {"data": {"a": 2**70, "b": "\ud800"}}, "ns")
    assert caught.value.status == 422
    assert server.calls("PATCH", CM_PATH) == 1


def test_a_body_that_is_not_a_status_still_makes_a_clear_error(
        kube: Kube, server: FakeAPIServer) -> None:
    server.script("GET", CM_PATH, Answer(403, ["not", "a", "status"]))
    with pytest.raises(KubeError) as err:
        kube.get("v1", "ConfigMap", "web", "ns")
    assert err.value.status == 403 and not err.value.transient


def test_a_write_that_times_out_is_not_resent_and_a_read_is(
        kube: Kube, server: FakeAPIServer) -> None:
    server.script("PATCH", CM_PATH, Answer(200, {}, delay=2.0))  # beyond request_timeout
    with pytest.raises(KubeError) as err:
        kube.patch("v1", "ConfigMap", "web", {"data": {}}, "ns")
    assert (err.value.reason, err.value.transient) == ("WriteTimeout", False)
    assert server.calls("PATCH", CM_PATH) == 1
    server.script("GET", CM_PATH, Answer(200, {}, delay=2.0), Answer(200, {"kind": "ok"}))
    assert kube.get("v1", "ConfigMap", "web", "ns") == {"kind": "ok"}
    assert server.calls("GET", CM_PATH) == 2


def test_the_observer_sees_every_attempt(kube: Kube, server: FakeAPIServer,
                                         observed: list[tuple[str, int, float]]) -> None:
    server.script("GET", CM_PATH, Answer(500, status_body(500, "InternalError", "x")),
                  Answer(200, {}))
    server.script("PATCH", CM_PATH, Answer(422, status_body(422, "Invalid", "bad")))
    kube.get("v1", "ConfigMap", "web", "ns")
    with pytest.raises(KubeError):
        kube.patch("v1", "ConfigMap", "web", {}, "ns")
    assert [(verb, code) for verb, code, _ in observed] == [
        ("GET", 200), ("GET", 500), ("GET", 200), ("PATCH", 422)]  # discovery first
    assert all(seconds >= 0 for *_, seconds in observed)


def test_a_server_that_is_gone_is_a_connection_error_retried(
        kube: Kube, server: FakeAPIServer, observed: list[tuple[str, int, float]]) -> None:
    kube.resource("v1", "ConfigMap")  # discovered while it was up
    server.close()
    kube.close()  # kept-alive connections go with the server
    kube.retry = default_retry(replace(kube.settings, attempts=2))
    observed.clear()
    with pytest.raises(KubeError) as err:
        kube.get("v1", "ConfigMap", "web", "ns")
    assert (err.value.status, err.value.reason, err.value.transient) == \
        (0, "ConnectionError", True)
    assert [(verb, code) for verb, code, _ in observed] == [("GET", 0), ("GET", 0)]
