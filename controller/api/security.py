"""Who may call the API, from where, how often and with how much: one middleware each.

Authentication is on unless configured off: bearer tokens from a file (or a mounted Secret)
with scopes `read` and `write`, compared in constant time. CORS uses Falcon's own
middleware with an allow-list (empty by default: no cross-origin access). Mutating calls
are rate-limited per client (token bucket, 429 with Retry-After), and request bodies are
capped. Errors leave in the common envelope via the error handlers.
"""

from __future__ import annotations

import hmac
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import falcon
import yaml

from controller.config import ApiSettings
from controller.errors import (
    ForbiddenError,
    PayloadTooLargeError,
    RateLimitedError,
    UnauthorizedError,
)

# Paths anyone may call: probes, the metrics scrape, the API description. The Git webhook
# proves itself with its own signature instead of a bearer token.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
SELF_AUTHENTICATED = frozenset({"/api/webhooks/git"})
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class Token:
    name: str
    secret: str
    scopes: frozenset[str]


def load_tokens(path: str) -> list[Token]:
    """Tokens from YAML: `tokens: [{name, token, scopes: [read, write]}]`."""
    doc = yaml.safe_load(Path(path).read_text()) or {}
    out = []
    for i, item in enumerate(doc.get("tokens") or []):
        scopes = frozenset(item.get("scopes") or ["read"])
        unknown = scopes - {"read", "write"}
        if unknown or not item.get("token"):
            raise ValueError(f"{path}: token #{i}: needs a token and scopes among read, write")
        # write implies read: a client that may deploy may also look.
        out.append(Token(str(item.get("name") or f"token-{i}"), str(item["token"]),
                         scopes | ({"read"} if "write" in scopes else set())))
    return out


class AuthMiddleware:
    def __init__(self, settings: ApiSettings, tokens: list[Token]) -> None:
        self.settings = settings
        self.tokens = tokens

    def _match(self, presented: str) -> Token | None:
        found = None
        for token in self.tokens:  # compare against all: timing says nothing about which
            if hmac.compare_digest(token.secret.encode(), presented.encode()):
                found = token
        return found

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.client = req.remote_addr or "unknown"
        if (not self.settings.auth or req.path in OPEN_PATHS
                or req.path in SELF_AUTHENTICATED or req.method == "OPTIONS"):
            return
        needed = "write" if req.method in MUTATING else "read"
        if needed == "read" and self.settings.public_reads:
            return
        header = req.get_header("Authorization") or ""
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            hint = "" if self.tokens else " (no API tokens are configured on the server)"
            raise UnauthorizedError("missing bearer token" + hint,
                                    {"header": "Authorization: Bearer <token>"})
        token = self._match(presented.strip())
        if token is None:
            raise UnauthorizedError("invalid token", {})
        if needed not in token.scopes:
            raise ForbiddenError(f"token '{token.name}' lacks the '{needed}' scope",
                                 {"required": needed, "scopes": sorted(token.scopes)})
        req.context.client = f"token:{token.name}"


class RateLimitMiddleware:
    """Token bucket per client for mutating requests."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.method not in MUTATING or self.rate <= 0:
            return
        client = str(getattr(req.context, "client", None) or req.remote_addr or "unknown")
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1:
                self._buckets[client] = (tokens, now)
                retry = max(1, math.ceil((1 - tokens) / self.rate))
                resp.set_header("Retry-After", str(retry))
                raise RateLimitedError(f"too many requests; retry after {retry}s",
                                       {"retryAfter": retry, "limit": self.rate,
                                        "burst": self.burst})
            self._buckets[client] = (tokens - 1, now)
            if len(self._buckets) > 10_000:  # forget idle clients; bounded memory
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}


class BodyLimitMiddleware:
    """Refuse bodies over the limit: by Content-Length, or (chunked, no length) by reading
    at most limit + 1 bytes. A chunked body is kept in `req.context.body`: Falcon's
    bounded stream reads nothing without a Content-Length, and an empty selection means
    *every* service (see `common.body_bytes`)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        length = req.content_length
        if length is not None and length > self.max_bytes:
            raise PayloadTooLargeError(f"request body over {self.max_bytes} bytes",
                                       {"limit": self.max_bytes, "length": length})
        if length is None and "chunked" in (req.get_header("Transfer-Encoding") or "").lower():
            body = req.stream.read(self.max_bytes + 1)
            if len(body) > self.max_bytes:
                raise PayloadTooLargeError(f"request body over {self.max_bytes} bytes",
                                           {"limit": self.max_bytes,
                                            "transferEncoding": "chunked"})
            req.context.body = body


def middleware(settings: ApiSettings) -> list[Any]:
    tokens = load_tokens(settings.tokens_file) if settings.tokens_file else []
    out: list[Any] = [BodyLimitMiddleware(settings.max_body_bytes),
                      AuthMiddleware(settings, tokens),
                      RateLimitMiddleware(settings.rate_limit, settings.rate_burst)]
    if settings.cors_origins:
        out.insert(0, falcon.CORSMiddleware(allow_origins=list(settings.cors_origins),
                                            allow_credentials=None))
    return out
