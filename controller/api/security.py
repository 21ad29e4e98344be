"""Who may call the API, from where, how often and with how much: one middleware each.

Authentication is on unless configured off: bearer tokens from a file (or a mounted Secret)
with scopes `read` and `write`, compared in constant time; failed attempts are throttled
per client address, so tokens cannot be guessed at line rate. CORS uses Falcon's own
middleware with an allow-list (empty by default: no cross-origin access). Mutating calls
are rate-limited per client (token bucket, 429 with Retry-After), and request bodies are
capped and read whole, on the event loop, only after the caller is authenticated. Errors
leave in the common envelope via the error handlers.

A token may also be limited to instances (`instances:` in the tokens file: namespaces,
names and/or labels of DeploymentParameters objects). `ScopeMiddleware` resolves the
instance a request concerns (`?instance=`, `?namespace=`) once, within that limit, before
any resource runs: an instance outside it answers 404 exactly as one that does not exist,
and event queries and streams of a limited token carry only its instances' events (by
namespace and name: a same-named instance of another namespace is another instance).
Things named by id (an operation, a plan) and /api/status take the scope to the service,
which answers 404 for another instance's, and only the controller-wide part of the status.

Each middleware's logic is a plain method (`check`), called by the ASGI hook; the order
in `middleware()` is the order of the checks.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import falcon
import yaml

from controller.api.common import INSTANCE_NAME, instance_param, query_param
from controller.config import ApiSettings
from controller.errors import (
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    UnauthorizedError,
)
from controller.runtime.service import InstanceScope, Service

log = logging.getLogger(__name__)

# Paths anyone may call: probes, the metrics scrape, the API description. The Git webhook
# proves itself with its own signature instead of a bearer token.
# The dashboard's page and files (api/ui.py) hold no data: the page asks for a token and
# sends it with every API call it makes.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/ui"})
OPEN_PREFIXES = ("/ui/",)
SELF_AUTHENTICATED = frozenset({"/api/webhooks/git"})
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class Token:
    name: str
    secret: str
    scopes: frozenset[str]
    instances: InstanceScope | None = None  # None: every instance


class TokensFileError(ValueError):
    """The tokens file cannot be used; the message names the file and what is wrong."""


# A namespace, or a label key/value (Kubernetes' syntax, prefix included for keys).
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*"
                       r"[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


def _scope(raw: Any, where: str) -> InstanceScope | None:
    """A token's `instances`: {namespaces: [...], names: [...], labels: {k: v}}."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not set(raw) <= {"namespaces", "names", "labels"}:
        raise TokensFileError(f"{where}: instances must be a mapping of namespaces, names "
                              "and/or labels")
    lists: dict[str, frozenset[str]] = {}
    for field in ("namespaces", "names"):
        items = raw.get(field) or []
        pattern = DNS_LABEL if field == "namespaces" else INSTANCE_NAME
        if not isinstance(items, list) or not all(isinstance(x, str) and pattern.match(x)
                                                  for x in items):
            raise TokensFileError(f"{where}: instances.{field} must be a list of "
                                  f"{'namespace' if field == 'namespaces' else 'object'} "
                                  "names")
        lists[field] = frozenset(items)
    labels = raw.get("labels") or {}
    if not isinstance(labels, dict) or not all(
            isinstance(k, str) and LABEL_KEY.match(k) and isinstance(v, str)
            and LABEL_VALUE.match(v) for k, v in labels.items()):
        raise TokensFileError(f"{where}: instances.labels must map label keys to values")
    if not lists["namespaces"] and not lists["names"] and not labels:
        # An empty restriction would silently mean "everything": refuse it instead.
        raise TokensFileError(f"{where}: instances names no namespace, name or label (leave "
                              "it out for a token that sees every instance)")
    return InstanceScope(lists["namespaces"], lists["names"], tuple(sorted(labels.items())))


def load_tokens(path: str) -> list[Token]:
    """Tokens from YAML: `tokens: [{name, token, scopes: [read, write], instances:
    {namespaces: [...], names: [...], labels: {...}}}]` (`instances` optional: without
    it a token concerns every instance).

    Called once before anything starts (the server refuses to start on a bad file), so
    every problem is a `TokensFileError` with one line naming the file."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise TokensFileError(f"API tokens file {path}: cannot read it: "
                              f"{e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise TokensFileError(f"API tokens file {path}: not valid YAML: "
                              f"{str(e).splitlines()[0]}") from e
    if doc is None:
        doc = {}
    if not isinstance(doc, dict) or not isinstance(doc.get("tokens") or [], list):
        raise TokensFileError(f"API tokens file {path}: expected 'tokens: [{{name, token, "
                              f"scopes}}]'")
    out = []
    for i, item in enumerate(doc.get("tokens") or []):
        if not isinstance(item, dict):
            raise TokensFileError(f"API tokens file {path}: token #{i} is not a mapping")
        raw_scopes = item.get("scopes") or ["read"]
        if not isinstance(raw_scopes, list) or not all(isinstance(x, str)
                                                       for x in raw_scopes):
            raise TokensFileError(f"API tokens file {path}: token #{i}: scopes must be a "
                                  f"list among read, write")
        scopes = frozenset(raw_scopes)
        unknown = scopes - {"read", "write"}
        secret = item.get("token")
        if unknown or not isinstance(secret, str) or not secret.strip():
            raise TokensFileError(f"API tokens file {path}: token #{i}: needs a non-empty "
                                  f"token and scopes among read, write")
        # write implies read: a client that may deploy may also look.
        out.append(Token(str(item.get("name") or f"token-{i}"), str(item["token"]),
                         scopes | ({"read"} if "write" in scopes else set()),
                         _scope(item.get("instances"), f"API tokens file {path}: token #{i}")))
    return out


class TokenFile:
    """The tokens file, re-read when it changes: a mounted Secret is updated in place (its
    symlink swapped), so a rotated token works, and the old one stops working, without a
    restart. Checked at most every `interval` seconds (one stat); a file that turns bad is
    logged and the last good tokens stay in force (failing open or closed on a typo would
    both be worse than the last good state)."""

    def __init__(self, path: str, tokens: list[Token] | None = None,
                 interval: float = 1.0) -> None:
        self.path = path
        self.interval = interval
        self._lock = threading.Lock()
        self._key = self._stat()
        self._tokens = load_tokens(path) if tokens is None else tokens
        self._checked = time.monotonic()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def tokens(self) -> list[Token]:
        now = time.monotonic()
        if now - self._checked < self.interval:
            return self._tokens
        with self._lock:
            if now - self._checked < self.interval:
                return self._tokens
            self._checked = now
            key = self._stat()
            if key != self._key:
                self._key = key
                try:
                    self._tokens = load_tokens(self.path)
                    log.info("API tokens file %s changed: %d token(s) in force",
                             self.path, len(self._tokens))
                except TokensFileError as e:
                    log.error("%s; the previous tokens stay in force", e)
            return self._tokens


ALL_SCOPES = frozenset({"read", "write"})
BEARER_CHALLENGE = 'Bearer realm="conductor"'


class AuthMiddleware:
    """Sets `req.context.client` (who, for rate limits and logs) and `req.context.scopes`
    (what the caller may do: resources redact secrets for callers without `write`)."""

    def __init__(self, settings: ApiSettings, tokens: list[Token] | TokenFile,
                 failures: FailureThrottle | None = None) -> None:
        self.settings = settings
        self.source = tokens
        self.failures = failures or FailureThrottle(settings.auth_failure_rate,
                                                    settings.auth_failure_burst)

    @property
    def tokens(self) -> list[Token]:
        return self.source.tokens() if isinstance(self.source, TokenFile) else self.source

    def _match(self, presented: str) -> Token | None:
        found = None
        for token in self.tokens:  # compare against all: timing says nothing about which
            if hmac.compare_digest(token.secret.encode(), presented.encode()):
                found = token
        return found

    async def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.check(req, resp)

    def check(self, req: falcon.Request, resp: falcon.Response) -> None:
        address = req.remote_addr or "unknown"
        req.context.client = address
        # Without auth every caller may do everything; with auth, nothing until a token
        # says so (open paths carry no data a scope would guard).
        req.context.scopes = ALL_SCOPES if not self.settings.auth else frozenset()
        req.context.instance_scope = None  # every instance, unless a token says otherwise
        if (not self.settings.auth or req.path in OPEN_PATHS
                or req.path.startswith(OPEN_PREFIXES)
                or req.path in SELF_AUTHENTICATED or req.method == "OPTIONS"):
            return
        needed = "write" if req.method in MUTATING else "read"
        header = req.get_header("Authorization") or ""
        scheme, _, presented = header.partition(" ")
        if needed == "read" and self.settings.public_reads and not presented:
            req.context.scopes = frozenset({"read"})
            return
        # A client that keeps failing waits before it may try again (429 Retry-After).
        self.failures.check(address, resp)
        if scheme.lower() != "bearer" or not presented:
            self.failures.failed(address)
            hint = "" if self.tokens else " (no API tokens are configured on the server)"
            raise UnauthorizedError("missing bearer token" + hint,
                                    {"header": "Authorization: Bearer <token>"})
        token = self._match(presented.strip())
        if token is None:
            self.failures.failed(address)
            raise UnauthorizedError("invalid token", {})
        req.context.scopes = token.scopes
        req.context.instance_scope = token.instances
        if needed not in token.scopes:
            raise ForbiddenError(f"token '{token.name}' lacks the '{needed}' scope",
                                 {"required": needed, "scopes": sorted(token.scopes)})
        req.context.client = f"token:{token.name}"


class TokenBuckets:
    """One token bucket per client key: `take` spends one or says how long to wait.
    Bounded memory: idle clients are forgotten past 10,000 keys."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def wait(self, key: str, spend: bool) -> int:
        """Seconds to wait before `key` has a token (0: it has one, spent if `spend`)."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens < 1:
                self._buckets[key] = (tokens, now)
                return max(1, math.ceil((1 - tokens) / self.rate))
            self._buckets[key] = (tokens - 1 if spend else tokens, now)
            if len(self._buckets) > 10_000:
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
            return 0


class FailureThrottle:
    """Failed authentications per client address: `burst` tries, then `rate` per second.
    Only failures spend; a client that has run out is refused before its token is even
    compared, so guessing costs the guesser time, not us CPU."""

    def __init__(self, rate: float, burst: int) -> None:
        self.buckets = TokenBuckets(rate, burst) if rate > 0 else None

    def check(self, address: str, resp: falcon.Response) -> None:
        if self.buckets is None:
            return
        retry = self.buckets.wait(address, spend=False)
        if retry:
            resp.set_header("Retry-After", str(retry))
            raise RateLimitedError(f"too many failed authentications; retry after {retry}s",
                                   {"retryAfter": retry, "reason": "authentication_failures"})

    def failed(self, address: str) -> None:
        if self.buckets is not None:
            self.buckets.wait(address, spend=True)


class RateLimitMiddleware:
    """Token bucket per client for mutating requests."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self.buckets = TokenBuckets(rate, burst)

    async def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.check(req, resp)

    def check(self, req: falcon.Request, resp: falcon.Response) -> None:
        if req.method not in MUTATING or self.rate <= 0:
            return
        client = str(getattr(req.context, "client", None) or req.remote_addr or "unknown")
        retry = self.buckets.wait(client, spend=True)
        if retry:
            resp.set_header("Retry-After", str(retry))
            raise RateLimitedError(f"too many requests; retry after {retry}s",
                                   {"retryAfter": retry, "limit": self.rate,
                                    "burst": self.burst})


class BodyLimitMiddleware:
    """Read the whole request body into `req.context.body`, on the event loop, before a
    resource runs: refused over the limit by Content-Length, or (chunked, no length) by
    reading at most limit + 1 bytes. A resource on the thread pool therefore never waits
    for a slow client's bytes (see `common.body_bytes`)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes

    def check_length(self, req: falcon.Request) -> None:
        length = req.content_length
        if length is not None and length > self.max_bytes:
            raise PayloadTooLargeError(f"request body over {self.max_bytes} bytes",
                                       {"limit": self.max_bytes, "length": length})

    async def process_request(self, req: Any, resp: Any) -> None:
        self.check_length(req)
        length = req.content_length
        chunked = "chunked" in (req.get_header("Transfer-Encoding") or "").lower()
        body = b""
        if length or chunked:
            body = await req.stream.read(self.max_bytes + 1)
            if len(body) > self.max_bytes:
                raise PayloadTooLargeError(f"request body over {self.max_bytes} bytes",
                                           {"limit": self.max_bytes,
                                            "transferEncoding": "chunked"})
        req.context.body = body


# Endpoints that concern no one instance: the scope does not resolve one for them.
NOT_OF_AN_INSTANCE = frozenset({"/api/status", "/api/instances", "/api/whoami",
                                "/api/parameters/instances", "/api/parameters/schema",
                                "/api/cluster/requirements"})
NOT_OF_AN_INSTANCE_PREFIXES = ("/api/operations/", "/api/plans/")
EVENTS = "/api/events"


def scope_of(req: falcon.Request) -> InstanceScope | None:
    """The caller's instance restriction (None: every instance)."""
    scope = getattr(req.context, "instance_scope", None)
    return scope if isinstance(scope, InstanceScope) else None


def namespace_param(req: falcon.Request) -> str | None:
    raw = query_param(req, "namespace")
    if raw is not None and (len(raw) > 63 or not DNS_LABEL.match(raw)):
        raise InvalidRequestError("'namespace' must be a namespace name",
                                  {"field": "namespace", "value": raw[:100]})
    return raw


class ScopeMiddleware:
    """Resolves the instance a request concerns, within the caller's scope, into
    `req.context.instance` (`namespace/name`), which `common.instance_param` then answers
    (event queries split it into their instance and namespace filters). Only requests that name an
    instance or come with a limited token pay for it (one lookup, off the event loop)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    async def process_resource(self, req: falcon.Request, resp: falcon.Response,
                               resource: object, params: dict[str, Any]) -> None:
        # After routing: an unknown path or method keeps its own answer (404, 405).
        if resource is None or not hasattr(resource, f"on_{req.method.lower()}") \
                or not req.path.startswith("/api/") or req.path in SELF_AUTHENTICATED:
            return
        name, namespace, scope = instance_param(req), namespace_param(req), scope_of(req)
        events = req.path == EVENTS or req.path.startswith(EVENTS + "/")
        if (name is None and namespace is None and scope is None) \
                or req.path in NOT_OF_AN_INSTANCE \
                or req.path.startswith(NOT_OF_AN_INSTANCE_PREFIXES) \
                or (events and scope is None):
            # Events are stored by instance name and outlive it: an unlimited caller
            # may read a deleted instance's, so its name is not resolved.
            return
        loop = asyncio.get_running_loop()
        req.context.instance = await loop.run_in_executor(
            None, self.check, req.path, name, namespace, scope)

    def check(self, path: str, name: str | None, namespace: str | None,
              scope: InstanceScope | None) -> str:
        if namespace is not None and name is None:
            raise InvalidRequestError("'namespace' needs 'instance' (the DeploymentParameters "
                                      "object's name)", {"field": "instance"})
        events = path == EVENTS or path.startswith(EVENTS + "/")
        if events and name is None:
            # A limited token's events: its instance's (one), or it must say which.
            visible = self.service.instances(scope)
            if not visible:
                raise NotFoundError("this token sees no instance", {})
            if len(visible) > 1:
                raise InvalidRequestError(
                    "this token sees several instances: name one with ?instance=",
                    {"field": "instance", "instances": [
                        f"{i['namespace']}/{i['name']}" for i in visible[:50]]})
            return f"{visible[0]['namespace']}/{visible[0]['name']}"
        ref = None if name is None else f"{namespace}/{name}" if namespace else name
        return self.service.resolve(ref, scope)


def middleware(settings: ApiSettings, tokens: list[Token] | None = None,
               service: Service | None = None) -> list[Any]:
    """The checks in order: who (auth), which instances (scope), how often (rate), how
    much (body). `tokens` are the file's as loaded by the caller before anything started
    (default: read it now); the file is watched for changes from then on."""
    source: list[Token] | TokenFile = []
    if settings.tokens_file:
        source = TokenFile(settings.tokens_file, tokens)
    out: list[Any] = [AuthMiddleware(settings, source),
                      *([ScopeMiddleware(service)] if service is not None else []),
                      RateLimitMiddleware(settings.rate_limit, settings.rate_burst),
                      BodyLimitMiddleware(settings.max_body_bytes)]
    if settings.cors_origins:
        out.insert(0, falcon.CORSMiddleware(allow_origins=list(settings.cors_origins),
                                            allow_credentials=None))
    return out
