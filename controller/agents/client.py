"""A small typed HTTP client of the conductor REST API, for the CLI and the MCP server.

Standard library only (http.client): the API is a handful of JSON endpoints and one
Server-Sent Events stream, and a client that a script or an agent installs should pull in
nothing it does not need. Every request has a timeout. Every error, whether the server's
envelope ({"error", "message", "details"}) or a connection that failed, becomes one
`ApiError` carrying the HTTP status, the contract's code, the message, the details and the
retry guidance of the reference document (`retryable`, `hint`): transient codes may be
retried with backoff, the others need a change first.

Parameters answers carry an ETag (the version they were read at); writes take it back as
If-Match, so a writer that read a stale version gets `precondition_failed` (412) instead of
silently overwriting someone else's change.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from controller.config import CLIENT_TOKEN, CLIENT_URL

DEFAULT_URL = "http://127.0.0.1:8081"
DEFAULT_TIMEOUT = 30.0
# A deploy waits server-side (its own `timeout`, `healthTimeout`): the socket waits longer.
SLACK = 15.0
SETTLED = ("healthy", "suspended")

# The reference's retry guidance: these codes are transient (the same request may succeed
# later, with exponential backoff); every other one needs a change before a retry.
RETRYABLE = frozenset({"kubernetes_error", "rate_limited", "not_leader", "source_error",
                       "unreachable", "timeout", "unavailable"})
HINTS = {
    "not_found": "check the name (list it first); nothing was changed",
    "validation_error": "fix the value at the path in details, then send it again",
    "invalid_yaml": "fix the template or value named in details (file, line)",
    "invalid_request": "the request itself is malformed: see details",
    "unauthorized": "pass a token (--token or CONDUCTOR_TOKEN)",
    "forbidden": "the token lacks the scope for this call (reads vs writes)",
    "conflict": "someone changed it meanwhile, or the instance is suspended: read again, "
                "then decide",
    "precondition_failed": "the parameters changed since you read them: read them again "
                           "(and plan again) before writing",
    "rate_limited": "too many requests: retry after a pause",
    "payload_too_large": "the body is too large: send less",
    "method_not_allowed": "this endpoint does not take that method",
    "kubernetes_error": "transient Kubernetes API error: retry with exponential backoff",
    "not_leader": "this replica is not the leader: retry shortly (or ask the leader)",
    "unavailable": "the replica carrying the call out stopped before it finished: retry "
                   "(up/update/down are idempotent)",
    "source_error": "the parameters source (Git) failed: retry later, check the source",
    "reconciliation_error": "an object failed: see details.resource and details.error, "
                            "fix the cause (events of that resource), then update again",
    "internal_error": "the controller failed unexpectedly: see its logs",
    "unreachable": "the conductor API did not answer: check --url and that it runs",
    "timeout": "no answer in time: the server may still be working; check status before "
               "retrying a write",
}


class ApiError(Exception):
    """The contract's error envelope (or a failed connection), typed."""

    def __init__(self, status: int, code: str, message: str,
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    @property
    def retryable(self) -> bool:
        """Safe to send again unchanged, after a backoff (the reference's guidance)."""
        return self.code in RETRYABLE

    @property
    def hint(self) -> str:
        given = self.details.get("hint")
        return given if isinstance(given, str) and given else HINTS.get(self.code, "")

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "error": self.code, "message": self.message,
                "details": self.details, "retryable": self.retryable, "hint": self.hint}


@dataclass(frozen=True)
class Reply:
    """A successful answer: the HTTP status, the JSON body and the ETag, when sent."""

    status: int
    body: Any
    etag: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def version(self) -> str | None:
        """The ETag without its quotes: the parameters version."""
        return unquote_etag(self.etag) if self.etag else None


def quote_etag(version: str) -> str:
    return version if version == "*" or version.startswith(("\"", "W/")) else f'"{version}"'


def unquote_etag(etag: str) -> str:
    return etag.removeprefix("W/").strip('"')


@dataclass(frozen=True)
class ClientSettings:
    """Where the conductor API is and how to reach it (flags, else CONDUCTOR_URL /
    CONDUCTOR_TOKEN, assembled once by the command line)."""

    url: str = DEFAULT_URL
    token: str = ""
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def from_env(cls, env: Mapping[str, str], url: str | None = None,
                 token: str | None = None, timeout: float | None = None) -> ClientSettings:
        return cls(url=url or env.get(CLIENT_URL) or DEFAULT_URL,
                   token=token if token is not None else env.get(CLIENT_TOKEN, ""),
                   timeout=timeout if timeout is not None else DEFAULT_TIMEOUT)


Query = Mapping[str, str | int | float | bool | None]


class Client:
    """One method per endpoint of the contract (and the agreed additions)."""

    def __init__(self, settings: ClientSettings, instance: str | None = None) -> None:
        parts = urlsplit(settings.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ApiError(0, "invalid_request", f"not an http(s) URL: {settings.url!r}",
                           {"url": settings.url})
        self.settings = settings
        self.instance = instance
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")

    # -- transport ---------------------------------------------------------------------

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._scheme == "https":
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _path(self, path: str, query: Query | None, instance: bool) -> str:
        params = {k: _text(v) for k, v in (query or {}).items() if v is not None}
        if instance and self.instance:
            params.setdefault("instance", self.instance)
        return self._prefix + path + (f"?{urlencode(params)}" if params else "")

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        out = {"Accept": "application/json", "User-Agent": "conductor-client"}
        if self.settings.token:
            out["Authorization"] = f"Bearer {self.settings.token}"
        out.update(extra or {})
        return out

    def request(self, method: str, path: str, *, query: Query | None = None,
                body: Any = None, headers: Mapping[str, str] | None = None,
                timeout: float | None = None, instance: bool = True) -> Reply:
        """Send one request; a 2xx answer is a Reply, anything else raises ApiError."""
        wait = timeout if timeout is not None else self.settings.timeout
        data = None if body is None else json.dumps(body).encode()
        sent = self._headers(headers)
        if data is not None:
            sent["Content-Type"] = "application/json"
        conn = self._connection(wait)
        try:
            conn.request(method, self._path(path, query, instance), body=data, headers=sent)
            resp = conn.getresponse()
            raw = resp.read()
            head = {k.lower(): v for k, v in resp.getheaders()}
        except TimeoutError as e:
            raise ApiError(0, "timeout", f"{method} {path}: no answer within {wait:g}s",
                           {"url": self.settings.url}) from e
        except (OSError, http.client.HTTPException) as e:
            raise ApiError(0, "unreachable", f"{method} {path}: {e}",
                           {"url": self.settings.url}) from e
        finally:
            conn.close()
        payload = _json(raw)
        if resp.status >= 400:
            raise _error(resp.status, payload, raw)
        return Reply(resp.status, payload, head.get("etag"), head)

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Reply:
        return self.request("POST", path, body=body, **kwargs)

    # -- status and services -----------------------------------------------------------

    def healthz(self) -> Reply:
        return self.get("/healthz", instance=False)

    def readyz(self) -> Reply:
        return self.get("/readyz", instance=False)

    def status(self) -> Reply:
        return self.get("/api/status", instance=False)

    def instances(self) -> Reply:
        return self.get("/api/parameters/instances", instance=False)

    def services(self) -> Reply:
        return self.get("/api/services")

    def services_health(self) -> Reply:
        return self.get("/api/services/health")

    def service(self, name: str) -> Reply:
        return self.get(f"/api/services/{_seg(name)}")

    def requirements(self) -> Reply:
        return self.get("/api/cluster/requirements", instance=False)

    def openapi(self) -> Reply:
        return self.get("/openapi.json", instance=False)

    # -- deploying ---------------------------------------------------------------------

    def deploy(self, op: str, services: Sequence[str] = (), *, wait: bool = True,
               timeout: float | None = None, wait_healthy: bool = False,
               health_timeout: float | None = None, force: bool = False,
               if_match: str | None = None) -> Reply:
        """POST /api/up|update|down. A 202 (still running, or applied but not yet
        healthy) is a Reply too: look at `status`."""
        if op not in ("up", "update", "down"):
            raise ValueError(op)
        query: dict[str, str | int | float | bool | None] = {
            "wait": None if wait else False, "timeout": timeout,
            "waitHealthy": True if wait_healthy else None, "healthTimeout": health_timeout,
            "force": True if force else None}
        budget = self.settings.timeout + (timeout or 0) + (health_timeout or 0) + SLACK \
            if wait_healthy else self.settings.timeout + (timeout or 0) + SLACK
        return self.post(f"/api/{op}", {"services": list(services)}, query=query,
                         headers=_if_match(if_match), timeout=budget)

    def plan(self, services: Sequence[str] = (), *, parameters: Mapping[str, Any] | None = None,
             patch: Mapping[str, Any] | None = None, ref: str | None = None) -> Reply:
        """POST /api/plan: the current parameters, or a draft (whole spec, merge patch, Git
        ref). Writes nothing; answers the changes and a planId."""
        body: dict[str, Any] = {}
        if services:
            body["services"] = list(services)
        if parameters is not None:
            body["parameters"] = dict(parameters)
        if patch is not None:
            body["patch"] = dict(patch)
        if ref is not None:
            body["ref"] = ref
        return self.post("/api/plan", body, timeout=self.settings.timeout + SLACK)

    def get_plan(self, plan_id: str) -> Reply:
        return self.get(f"/api/plans/{_seg(plan_id)}", instance=False)

    def operation(self, op_id: str) -> Reply:
        return self.get(f"/api/operations/{_seg(op_id)}", instance=False)

    def suspend(self, if_match: str | None = None) -> Reply:
        return self.post("/api/suspend", headers=_if_match(if_match))

    def resume(self, if_match: str | None = None) -> Reply:
        return self.post("/api/resume", headers=_if_match(if_match))

    # -- events ------------------------------------------------------------------------

    def events(self, *, type: str | None = None, service: str | None = None,
               resource: str | None = None, since: str | None = None,
               until: str | None = None, limit: int | None = None,
               offset: int | None = None) -> Reply:
        return self.get("/api/events", instance=False, query={
            "type": type, "service": service, "resource": resource, "since": since,
            "until": until, "limit": limit, "offset": offset})

    def errors(self, *, service: str | None = None, since: str | None = None,
               limit: int | None = None) -> Reply:
        return self.get("/api/events/errors", instance=False,
                        query={"service": service, "since": since, "limit": limit})

    def resource_events(self, namespace: str, kind: str, name: str, *,
                        limit: int | None = None, since: str | None = None) -> Reply:
        return self.get(f"/api/events/{_seg(namespace)}/{_seg(kind)}/{_seg(name)}",
                        instance=False, query={"limit": limit, "since": since})

    def stream_events(self, *, type: str | None = None, service: str | None = None,
                      since: str | None = None, limit: int | None = None,
                      duration: float | None = None, last_event_id: str | None = None,
                      idle_timeout: float = 90.0) -> Iterator[dict[str, Any]]:
        """GET /api/events/stream: yields each event (the JSON of its `data`, with `id`)
        until the server ends the stream. `idle_timeout` bounds a silent connection."""
        query = {"type": type, "service": service, "since": since, "limit": limit,
                 "duration": duration}
        headers = self._headers({"Accept": "text/event-stream"})
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        conn = self._connection(idle_timeout)
        try:
            try:
                conn.request("GET", self._path("/api/events/stream", query, False),
                             headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                raise ApiError(0, "unreachable", f"GET /api/events/stream: {e}",
                               {"url": self.settings.url}) from e
            if resp.status >= 400:
                raw = resp.read()
                raise _error(resp.status, _json(raw), raw)
            yield from parse_sse(resp)
        finally:
            conn.close()

    # -- parameters --------------------------------------------------------------------

    def get_parameters(self, service: str | None = None) -> Reply:
        """The parameters in force (or one service's values); `Reply.version` is the
        version to send back as If-Match."""
        if service:
            return self.get(f"/api/parameters/{_seg(service)}")
        return self.get("/api/parameters")

    def set_parameters(self, spec: Mapping[str, Any], if_match: str | None = None) -> Reply:
        return self.post("/api/parameters", dict(spec), headers=_if_match(if_match))

    def patch_parameters(self, patch: Mapping[str, Any],
                         if_match: str | None = None) -> Reply:
        return self.request("PATCH", "/api/parameters", body=dict(patch),
                            headers=_if_match(if_match))

    def values(self) -> Reply:
        return self.get("/api/parameters/values")

    def schema(self) -> Reply:
        return self.get("/api/parameters/schema", instance=False)

    def history(self, limit: int | None = None) -> Reply:
        return self.get("/api/parameters/history", query={"limit": limit})

    def rollback(self, revision: str, if_match: str | None = None) -> Reply:
        return self.post("/api/parameters/rollback", {"revision": revision},
                         headers=_if_match(if_match))

    # -- waiting -----------------------------------------------------------------------

    def wait_healthy(self, services: Sequence[str] = (), timeout: float = 300.0,
                     interval: float = 2.0) -> tuple[bool, list[dict[str, Any]]]:
        """Poll /api/services/health until the named services (default: every deployed
        one) are healthy or suspended (True) or the deadline passes (False), with the last
        health rows. An unhealthy service may still recover (a rollout), so it waits on."""
        deadline = time.monotonic() + timeout
        while True:
            rows = [s for s in self.services_health().body.get("services", [])
                    if s.get("name") in services or (not services and s.get("status") != "down")]
            if rows and all(s.get("status") in SETTLED for s in rows):
                return True, rows
            if time.monotonic() >= deadline:
                return False, rows
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def parse_sse(resp: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
    """Server-Sent Events, one dict per message with JSON data (comments are pings)."""
    data: list[str] = []
    event_id = ""
    while True:
        line = resp.readline()
        if not line:
            return
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if not text:
            if data:
                message = _json("\n".join(data).encode())
                if isinstance(message, dict):
                    message.setdefault("id", event_id)
                    yield message
            data, event_id = [], ""
            continue
        name, _, value = text.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "id":
            event_id = value


def _error(status: int, payload: Any, raw: bytes) -> ApiError:
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        details = payload.get("details")
        return ApiError(status, payload["error"], str(payload.get("message") or ""),
                        details if isinstance(details, dict) else {})
    code = {404: "not_found", 412: "precondition_failed", 429: "rate_limited"}.get(
        status, "internal_error" if status >= 500 else "invalid_request")
    return ApiError(status, code, raw.decode("utf-8", "replace")[:200] or f"HTTP {status}")


def _json(raw: bytes) -> Any:
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return {"text": raw.decode("utf-8", "replace")}


def _if_match(version: str | None) -> dict[str, str]:
    return {"If-Match": quote_etag(version)} if version else {}


def _seg(value: str) -> str:
    return quote(value, safe="")


def _text(value: str | int | float | bool) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)
