"""Fixtures of the API tests: a real `Controller` on the local control plane, served in-process.

Each test gets the example app in its own namespace (the engine tests' `app` fixture) and
builds controllers with `make_api(...)`: a Controller with its own Kubernetes connection
(it guards its writes by leadership), started, its first pass awaited, and the Falcon app
of `create_app` driven through `falcon.testing.TestClient`. Controllers are stopped at
teardown. `envelope` checks the contract's error shape, which every error must have.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

import pytest
from falcon import testing

from controller.api.app import create_app
from controller.config import ApiSettings
from controller.runtime.controller import Controller
from tests.cluster import test_engine
from tests.cluster.test_engine import App
from tests.helpers import wait_for

app = test_engine.app  # the example app, copied into the test's namespace

SERVICES = ["frontend", "postgres", "redis"]


@dataclass
class Api:
    """A started controller, its Falcon app behind a test client, and the app it serves."""

    client: testing.TestClient
    controller: Controller
    app: App

    @property
    def namespace(self) -> str:
        return self.app.namespace

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

    def passes(self) -> int:
        return self.controller.loop.passes

    def stop_loop(self) -> None:
        """Let the current pass end and run no more: a drift the test makes stays put
        (its own status write, or a watch event, would otherwise wake one more pass)."""
        self.controller.loop.stop(timeout=60)


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


@pytest.fixture
def make_api(app: App) -> Iterator[Callable[..., Api]]:
    """Build and start a controller for the test's app: `make_api(api=ApiSettings(...),
    first_pass=True, pass_ok=True, **config_changes)`. Authentication is off unless `api`
    says otherwise; the first pass is awaited (and must succeed) unless told not to."""
    started: list[Controller] = []

    def make(api: ApiSettings | None = None, first_pass: bool = True, pass_ok: bool = True,
             **changes: Any) -> Api:
        cfg = replace(app.cfg, api=api or ApiSettings(auth=False), **changes)
        controller = Controller(cfg).start()  # its own connection: it guards writes
        started.append(controller)
        served = Api(testing.TestClient(create_app(controller)), controller, app)
        if first_pass:
            wait_for(lambda: controller.engine.last is not None, timeout=60,
                     message="the controller's first pass")
            last = controller.engine.last
            assert last is not None and (last.ok or not pass_ok), last.summary() if last \
                else None
        return served

    yield make
    for controller in reversed(started):
        controller.stop()


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    """The default: authentication off, the example app deployed by the first pass."""
    return make_api()
