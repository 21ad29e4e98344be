"""A webhook receiver for notification tests: a real HTTP server on loopback."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from controller.config import NotificationSettings

# Receivers that retry fast, for tests.
FAST = NotificationSettings(timeout=2.0, attempts=3, backoff_initial=0.1, backoff_max=1.0,
                            rate_per_minute=6000)


class Inbox:
    """A webhook receiver: a real HTTP server on loopback that records what it is sent and
    answers with the next queued status (200 when none). It can go down and come back on
    the same port."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        self.lock = threading.Lock()
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self.up()

    def up(self) -> None:
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with inbox.lock:
                    status = inbox.statuses.pop(0) if inbox.statuses else 200
                    if status == 200:
                        inbox.received.append(({k.lower(): v for k, v in
                                                self.headers.items()}, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def messages(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(body) for _h, body in self.received]

    def kinds(self) -> list[str]:
        return [m.get("kind", "") for m in self.messages()]


@pytest.fixture(name="inbox")
def inbox_fixture() -> Iterator[Inbox]:
    box = Inbox()
    yield box
    if box._server is not None:
        box.down()
