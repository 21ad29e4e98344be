"""The gunicorn worker that serves the API: gunicorn's own asyncio (ASGI) worker, two changes.

Why an asynchronous worker: with a thread per connection (gthread), eight clients that
send half a request line and stop held all eight threads, and `/healthz` stopped
answering. On an event loop a connection that is still sending costs a few hundred bytes,
not a thread; the resources' blocking work runs on a bounded pool only once a request has
fully arrived (`controller.api.offload`), and long event streams cost no thread at all.

What this subclass adds to gunicorn's `ASGIWorker`:
- Errors gunicorn answers itself, before the app sees a request (a request line over
  4094 bytes: 414, headers over their limit: 431, a malformed request: 400), leave in the
  API's JSON envelope, like every other error, instead of gunicorn's text/plain.
- On SIGTERM/SIGINT the app is told at once (`on_draining`): open event streams end, so a
  graceful stop is not held up by subscribers until the graceful timeout.
- gunicorn's C HTTP parser (gunicorn_h1c) is used, as gunicorn would without the subclass
  (with uvloop, a third of the API's CPU per request; tests/api/test_worker.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from gunicorn.asgi.protocol import ASGIProtocol
from gunicorn.workers import gasgi

# gunicorn's own errors, by status, in the API's vocabulary (see api/errors.py).
_CODES = {400: "invalid_request", 408: "invalid_request", 413: "payload_too_large",
          414: "invalid_request", 431: "invalid_request", 501: "invalid_request"}
_MESSAGES = {414: "request line too long", 431: "request header fields too large"}


def error_body(status: int, detail: str) -> bytes:
    """The envelope of an error gunicorn's parser answers (no route, no app involved)."""
    code = _CODES.get(status, "invalid_request" if status < 500 else "internal_error")
    message = _MESSAGES.get(status, "malformed HTTP request")
    return json.dumps({"error": code, "message": message,
                       "details": {"status": status, "reason": detail[:200]}}).encode()


class EnvelopeProtocol(ASGIProtocol):  # type: ignore[misc]
    """gunicorn's HTTP protocol, its own error answers in the API's envelope."""

    def _send_error_response(self, status: int, message: str,
                             extra_headers: Any = ()) -> None:
        body = error_body(status, str(message))
        extra = "".join(f"{name}: {value}\r\n" for name, value in extra_headers)
        reason = self._get_reason_phrase(status)
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n")
        self._safe_write(head.encode("latin-1"))
        self._safe_write(body)


class Worker(gasgi.ASGIWorker):  # type: ignore[misc]
    """gunicorn's ASGI worker with the envelope protocol and a draining signal."""

    def init_process(self) -> None:
        # ASGIWorker._serve builds its connections from the module's `ASGIProtocol`; this
        # process serves only this app, so pointing that name at our subclass is local to
        # it. tests/api/test_e2e_server.py fails if a gunicorn release changes the hook.
        gasgi.ASGIProtocol = EnvelopeProtocol
        # gunicorn caches whether its C parser (gunicorn_h1c) is there on the class that
        # asks, but reads the answer from ASGIProtocol itself: asked only through a
        # subclass, the base never learns it and every connection falls back to the pure
        # Python parser. Asking the base once fixes that.
        ASGIProtocol._check_h1c_protocol_available()
        super().init_process()

    def _draining(self) -> None:
        hook: Callable[[], None] | None = getattr(self.app, "on_draining", None)
        if hook is not None:
            try:
                hook()
            except Exception:  # a stop must go on whatever the hook does
                self.log.exception("draining hook failed")

    def handle_exit_signal(self) -> None:
        super().handle_exit_signal()
        self._draining()

    def handle_quit_signal(self) -> None:
        super().handle_quit_signal()
        self._draining()
