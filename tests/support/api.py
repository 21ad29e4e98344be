"""Talking to the API in tests: the in-process client of a started controller (`Api`) or
of the in-memory service (`FakeApi`, no cluster), a minimal ASGI client for event streams,
the contract's error envelope, and raw HTTP to a real server on loopback (`request`, `get`).
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from falcon import testing
from prometheus_client import CollectorRegistry

from controller.runtime.controller import Controller
from tests.support.cluster import App
from tests.support.fakes import FakeService

SERVICES = ["frontend", "postgres", "redis"]
# The tokens of the `tokens_file` fixture (tests/conftest.py): one may read, one may write.
READ = "read-token-7f3a"
WRITE = "write-token-91bc"


class _Client:
    """Requests through a Falcon test client (JSON bodies, raw text or bytes)."""

    client: testing.TestClient

    def get(self, path: str, **kwargs: Any) -> testing.Result:
        return self.client.simulate_get(path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> testing.Result:
        """POST `body` as JSON (with the Content-Type header), or raw text/bytes as given."""
        if body is not None and not isinstance(body, str | bytes):
            kwargs["json"] = body
        elif body is not None:
            kwargs["body"] = body
        return self.client.simulate_post(path, **kwargs)

    def patch(self, path: str, body: Any, **kwargs: Any) -> testing.Result:
        return self.client.simulate_patch(path, json=body, **kwargs)

    def stream(self, path: str, params: dict[str, str] | None = None,
               headers: dict[str, str] | None = None, timeout: float = 60) -> Streamed:
        """GET an event stream and read it to its end, as a client that stays connected
        (the test client's one-shot requests disconnect at once, which ends a stream
        after its first event)."""
        return asyncio.run(asyncio.wait_for(
            read_stream(self.client.app, path, params or {}, headers or {}), timeout))



@dataclass
class Api(_Client):
    """A started controller, its Falcon app behind a test client, and the app it serves."""

    client: testing.TestClient
    controller: Controller
    app: App

    @property
    def namespace(self) -> str:
        return self.app.namespace

    def passes(self) -> int:
        return self.controller.loop.passes

    def stop_loop(self) -> None:
        """Let the current pass end and run no more: a drift the test makes stays put
        (its own status write, or a watch event, would otherwise wake one more pass)."""
        self.controller.loop.stop(timeout=60)


@dataclass
class FakeApi(_Client):
    """The API over the in-memory service (tests/support/fakes.py): no cluster."""

    client: testing.TestClient
    service: FakeService
    registry: CollectorRegistry


@dataclass
class Streamed:
    status_code: int
    headers: dict[str, str]
    text: str


async def read_stream(app: Any, path: str, params: dict[str, str],
                      headers: dict[str, str]) -> Streamed:
    """A minimal ASGI client: one GET, the whole response, disconnect only after it."""
    path, _, query = path.partition("?")
    query = "&".join(q for q in (query, urlencode(params)) if q)
    scope = testing.create_scope(path=path, query_string=query, headers=headers)
    finished = asyncio.Event()
    requested = False
    status = 0
    head: dict[str, str] = {}
    body: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            head.update((k.decode().lower(), v.decode()) for k, v in message["headers"])
        elif message["type"] == "http.response.body":
            body.append(message.get("body", b""))
            if not message.get("more_body"):
                finished.set()

    await app(scope, receive, send)
    return Streamed(status, head, b"".join(body).decode())


def envelope(result: testing.Result, status: int, code: str) -> dict[str, Any]:
    """The contract's error envelope with `status` and `code`; returns its details."""
    assert result.status_code == status, (result.status, result.text)
    assert result.headers.get("content-type", "").startswith("application/json"), \
        result.headers
    body = result.json
    assert isinstance(body, dict), body
    assert set(body) == {"error", "message", "details"}, body
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"], body
    assert isinstance(body["details"], dict), body
    details: dict[str, Any] = body["details"]
    return details


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def request(port: int, raw: bytes, timeout: float = 5.0) -> Reply:
    """Send `raw` on a new connection and read one whole response (Connection: close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip()
               for k, _, v in (line.partition(":") for line in lines[1:])}
    return Reply(int(lines[0].split()[1]), headers, body)


def get(port: int, path: str, timeout: float = 5.0) -> Reply:
    return request(port, f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
                   .encode(), timeout)


