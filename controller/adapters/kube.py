"""The only module that talks to the Kubernetes API.

Objects stay plain dicts, with our own discovery (one request per group-version, cached),
so custom resources and cluster-scoped kinds work like any other and nothing is decoded
into typed models. Requests go over our own kept-alive connections (connections.py: the
kubeconfig's TLS settings on `http.client`, 0.4 ms of CPU a request less than urllib3), or
the client's urllib3 pool where the kubeconfig asks for a proxy, with the client's headers
and bearer token, the body serialized once (json) and the answer read raw (orjson): the
generated client's per-request machinery (`sanitize_for_serialization` walking every
body, query and header, the kubeconfig's token hook re-run on every request) cost about
1 ms of CPU per request, as much as the rest of the request on a loaded 2-core machine,
where the API server needs that CPU. The token hook still runs (an expiring or rotated
token is refreshed), at most once per `_AUTH_REFRESH` seconds. Every
request runs under one retry policy (tenacity): transient failures (429, 5xx, timeouts,
dropped connections) are retried with exponential backoff and jitter; permanent ones
(400, 403, 404, 409, 422, unknown kind) are raised at once as `KubeError`. A write whose
answer timed out is not re-sent (`WriteTimeout`): the server has it, and may be busy with it.

Writes are fenced. `write_guard` answers for writes tied to no instance (the leader's:
the CRD, the parameters object the API writes); a pass or operation of one
instance runs inside `acting_for(key)`, and its writes ask `instance_guard(key)` instead
(sharding: only the replica holding the instance's shard Lease writes for it). The key
travels in a context variable, so it follows the pass through its calls without every
signature naming it; worker pools started inside a pass carry it with `carry_context`.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, copy_context
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import orjson
import tenacity
import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from controller.adapters.connections import Connections, ReadTimeout
from controller.config import ApplySettings, Config
from controller.errors import KubernetesError

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_R = TypeVar("_R")
# What a failed exchange raises, from either transport: a connection error (transient).
_CONNECTION_ERRORS = (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)
# The instance the current pass or operation works for (None: no instance's work).
_ACTING_FOR: ContextVar[Hashable | None] = ContextVar("conductor_acting_for", default=None)


@contextmanager
def acting_for(key: Hashable) -> Iterator[None]:
    """Writes inside are this instance's: fenced by `Kube.instance_guard(key)`."""
    token = _ACTING_FOR.set(key)
    try:
        yield
    finally:
        _ACTING_FOR.reset(token)


def current_instance() -> Hashable | None:
    return _ACTING_FOR.get()


def carry_context(fn: Callable[[_T], _R]) -> Callable[[_T], _R]:
    """`fn` run on another thread (a pool's) with the caller's context, so its writes
    stay fenced as the caller's: threads start with an empty context."""
    context = copy_context()
    return lambda item: context.copy().run(fn, item)  # a copy per call: runs in parallel

Body = dict[str, Any]
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Older API servers answer 500 when an apply body cannot be typed (e.g. a keyed list item
# without its key field): the same body fails the same way every time.
_PERMANENT_500 = "failed to create typed patch object"
# Observer of every attempt: (verb, status code or 0 for a connection failure, seconds).
RequestObserver = Callable[[str, int, float], None]
# The kubeconfig's (or in-cluster) token hook re-reads credentials that expire or rotate;
# they are refreshed minutes ahead of expiry, so once a second is as good as every request.
_AUTH_REFRESH = 1.0


class KubeError(KubernetesError):
    """An API request failed; `status` is the HTTP status (0 when no answer came)."""

    def __init__(self, message: str, *, status: int = 0, reason: str = "",
                 details: Mapping[str, Any] | None = None) -> None:
        super().__init__(message, {"status": status, "reason": reason, **(details or {})})
        self.status = status
        self.reason = reason

    @property
    def transient(self) -> bool:
        if self.reason in ("NotLeader", "WriteTimeout"):
            return False
        if self.status == 500 and _PERMANENT_500 in self.message:
            return False
        return self.status == 0 or self.status in TRANSIENT_STATUS


class NotLeaderError(KubeError):
    """A write refused locally: this replica does not hold the leader lease."""

    code = "not_leader"


class UnknownKindError(KubeError):
    """The API server serves no resource for this apiVersion and kind (permanent)."""


@dataclass(frozen=True)
class Resource:
    """How to reach one kind: its REST path pieces and whether it is namespaced."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool
    verbs: frozenset[str]

    def path(self, namespace: str = "", name: str = "", subresource: str = "") -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if subresource:
            base += f"/{subresource}"
        return base


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, KubeError) and exc.transient


def default_retry(settings: ApplySettings,
                  on_retry: Callable[[KubeError], None] | None = None) -> tenacity.Retrying:
    """The retry policy; tests may pass another (it is a plain tenacity object)."""
    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.info("retrying after %s (attempt %d)", exc, state.attempt_number)
        if on_retry and isinstance(exc, KubeError):
            on_retry(exc)

    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        wait=tenacity.wait_exponential_jitter(multiplier=settings.backoff_initial,
                                              max=settings.backoff_max,
                                              jitter=settings.backoff_initial),
        stop=tenacity.stop_after_attempt(settings.attempts),
        reraise=True,
        before_sleep=before_sleep,
    )


class Kube:
    """A connection to one API server: discovery, CRUD on plain dicts, apply, watch."""

    def __init__(self, api: k8s.ApiClient, settings: ApplySettings,
                 retry: tenacity.Retrying | None = None,
                 observer: RequestObserver | None = None) -> None:
        self.api = api
        # None: the client's urllib3 pool (a proxy, or another need connections.py skips).
        self.connections = Connections.for_configuration(
            api.configuration, api.configuration.connection_pool_maxsize or 16)
        self.settings = settings
        self.retry = retry or default_retry(settings)
        self.observer = observer
        self._resources: dict[str, dict[str, Resource]] = {}
        self._lock = threading.Lock()
        self._auth_lock = threading.Lock()
        self._auth: dict[str, str] = {}
        self._auth_at = -_AUTH_REFRESH
        self._timeout = urllib3.Timeout(total=settings.request_timeout)
        # Consulted before every write: a replica that is not (or no longer) the leader
        # must not write. Lease requests themselves pass `elect=True` to bypass it.
        self.write_guard: Callable[[], bool] = lambda: True
        # Consulted instead inside `acting_for(key)`: whether this replica may write for
        # that instance now (None: the instance's writes follow `write_guard` too).
        self.instance_guard: Callable[[Hashable], bool] | None = None
        # Given the answer of every write that succeeded (not dry runs, not deletes): the
        # live cache (cache.py) reads our own writes back without waiting for the watch.
        self.on_written: Callable[[Body], None] | None = None

    @classmethod
    def connect(cls, cfg: Config, observer: RequestObserver | None = None,
                on_retry: Callable[[KubeError], None] | None = None) -> Kube:
        """Connect with the kubeconfig (or the in-cluster service account)."""
        conf = k8s.Configuration()
        try:
            if cfg.kubeconfig or not _in_cluster():
                k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=cfg.kubeconfig or None, context=cfg.context or None,
                    client_configuration=conf)
            else:
                k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=conf)
        except (k8s_config.ConfigException, OSError) as e:
            raise KubeError(f"cannot load Kubernetes credentials: {e}") from e
        # One retry policy (ours): urllib3 must not retry underneath it.
        conf.retries = False
        # Apply workers, watches and API threads share the pool: room for every apply
        # thread (Controller.apply_pool) and a few more, or past it each request's
        # connection is dropped after use and the next one pays a TLS handshake.
        conf.connection_pool_maxsize = max(16, cfg.apply_threads + 8)
        return cls(k8s.ApiClient(conf), cfg.apply, retry=default_retry(cfg.apply, on_retry),
                   observer=observer)

    def close(self) -> None:
        """Close the idle connections; requests after it open new ones."""
        if self.connections is not None:
            self.connections.clear()
        self.api.close()  # type: ignore[no-untyped-call]

    # -- raw requests -------------------------------------------------------------------

    def _refusal(self) -> str | None:
        """Why this replica may not write now (None: it may): the fence of the instance
        being worked for, else the leader's."""
        key = _ACTING_FOR.get()
        if key is not None and self.instance_guard is not None:
            if self.instance_guard(key):
                return None
            shown = "/".join(key) if isinstance(key, tuple) else str(key)
            return (f"this replica does not own instance {shown} (its shard Lease is "
                    "held elsewhere, or no longer renewed here)")
        if self.write_guard():
            return None
        return "this replica is not the leader; writes go through the leader"

    def check_may_write(self, what: str) -> None:
        """Raise NotLeaderError now if this replica may not write: a pass that will write
        checks before its dry runs, which the guard lets through (plans are reads)."""
        refusal = self._refusal()
        if refusal is not None:
            raise NotLeaderError(f"{what}: {refusal}", status=0, reason="NotLeader",
                                 details={"operation": what})

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None,
                body: Any = None, content_type: str = "application/json",
                timeout: float | None = None, retry: bool = True, elect: bool = False) -> Body:
        """One API request with the retry policy; returns the decoded JSON answer."""
        if method in WRITES and not elect and not (query and query.get("dryRun")):
            refusal = self._refusal()
            if refusal is not None:
                raise NotLeaderError(f"{method} {path}: {refusal}", status=0,
                                     reason="NotLeader", details={"method": method})

        def attempt() -> Body:
            return self._once(method, path, query, body, content_type, timeout)

        try:
            result = attempt()
        except KubeError as e:
            if not retry or not is_transient(e):
                raise
            # The policy from its first attempt on: this failure is replayed as it (no
            # request), so attempts, backoff and on_retry are as if tenacity made it.
            # Most requests succeed at once and skip tenacity's per-call machinery (0.15
            # ms of CPU each: 24,000 requests in a cold start of 1,000 instances).
            failed: list[KubeError] = [e]

            def again() -> Body:
                if failed:
                    raise failed.pop()
                return attempt()

            result = self.retry(again)
        if self.on_written is not None and method in ("POST", "PUT", "PATCH") and not (
                query and query.get("dryRun")):
            try:
                self.on_written(result)
            except Exception:  # the cache is an optimisation: never fail the write for it
                log.exception("write observer failed for %s %s", method, path)
        return result

    def _once(self, method: str, path: str, query: Mapping[str, Any] | None, body: Any,
              content_type: str, timeout: float | None) -> Body:
        started = time.monotonic()
        status = 0
        try:
            resp = self._send(method, path, query, body, content_type,
                              timeout or self.settings.request_timeout)
            status = int(resp.status)
            try:
                raw = resp.data
            finally:
                resp.release_conn()
        except (urllib3.exceptions.ReadTimeoutError, ReadTimeout) as e:
            # The server has the body and no answer came: it may be working on it (a body
            # that makes it spin) or have applied it; re-sending a write is not safe, a read is.
            raise KubeError(f"{method} {path}: no answer in time: {e}", status=0,
                            reason="WriteTimeout" if method in WRITES else "ConnectionError",
                            details={"method": method, "path": path}) from e
        except _CONNECTION_ERRORS as e:
            raise KubeError(f"{method} {path}: {type(e).__name__}: {e}", status=0,
                            reason="ConnectionError",
                            details={"method": method, "path": path}) from e
        finally:
            if self.observer:
                self.observer(method, status, time.monotonic() - started)
        if not 200 <= status < 300:
            raise _api_error(status, raw, resp.headers, method, path)
        return orjson.loads(raw) if raw else {}

    def _send(self, method: str, path: str, query: Mapping[str, Any] | None, body: Any,
              content_type: str, timeout: float | tuple[float, float]) -> Any:
        """One HTTP exchange (auth, TLS, proxy); no status check. Returns the response
        (`status`, `headers`, `data`, `stream`, `release_conn`, `shutdown`), its body not
        read yet."""
        conf = self.api.configuration
        target = path
        if query:
            target += "?" + "&".join(f"{quote(str(k))}={quote(_query_value(v))}"
                                     for k, v in query.items())
        headers = {**self.api.default_headers, **self._auth_header(),
                   "Content-Type": content_type, "Accept": "application/json"}
        if self.api.cookie:
            headers["Cookie"] = self.api.cookie
        # json, not orjson (which decodes the answers): a body carries the caller's values,
        # which orjson refuses (integers past 64 bits, lone surrogates: a TypeError where
        # the API server gives a clear 4xx) or changes (NaN becomes null).
        data = body if body is None or isinstance(body, bytes) else \
            json.dumps(body, separators=(",", ":")).encode()
        if self.connections is not None:
            return self.connections.request(method, target, data, headers, timeout)
        if isinstance(timeout, tuple):
            limit = urllib3.Timeout(connect=timeout[0], read=timeout[1])
        else:
            limit = self._timeout if timeout == self.settings.request_timeout else \
                urllib3.Timeout(total=timeout)
        return self.api.rest_client.pool_manager.request(
            method, conf.host + target, body=data, headers=headers, timeout=limit,
            preload_content=False, retries=False)

    def _auth_header(self) -> dict[str, str]:
        """The Authorization header, as the client's auth settings give it, with the
        token hook run at most once per _AUTH_REFRESH seconds (see the docstring)."""
        now = time.monotonic()
        if now - self._auth_at < _AUTH_REFRESH:
            return self._auth
        with self._auth_lock:
            if now - self._auth_at >= _AUTH_REFRESH:
                setting = self.api.configuration.auth_settings().get("BearerToken")
                value = setting.get("value") if setting else None
                self._auth = {"Authorization": str(value)} if value else {}
                self._auth_at = now
        return self._auth

    # -- discovery ------------------------------------------------------------------------

    def resource(self, api_version: str, kind: str) -> Resource:
        """The REST resource for a kind, discovered once per group-version."""
        found = self._resources.get(api_version, {}).get(kind)
        if found:
            return found
        with self._lock:
            self._resources[api_version] = self._discover(api_version)
        found = self._resources[api_version].get(kind)
        if not found:
            raise UnknownKindError(f"the server has no resource for {api_version} {kind}",
                                   status=404, reason="UnknownKind",
                                   details={"apiVersion": api_version, "kind": kind})
        return found

    def forget(self, api_version: str) -> None:
        """Drop a cached group-version (after a CRD change)."""
        with self._lock:
            self._resources.pop(api_version, None)

    def _discover(self, api_version: str) -> dict[str, Resource]:
        path = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        try:
            doc = self.request("GET", path)
        except KubeError as e:
            if e.status == 404:
                return {}
            raise
        out = {}
        for r in doc.get("resources", []):
            if "/" in r["name"]:  # subresources
                continue
            out[r["kind"]] = Resource(api_version, r["kind"], r["name"], bool(r["namespaced"]),
                                      frozenset(r.get("verbs", [])))
        return out

    # -- object operations -----------------------------------------------------------------

    def get(self, api_version: str, kind: str, name: str, namespace: str = "") -> Body | None:
        res = self.resource(api_version, kind)
        try:
            return self.request("GET", res.path(namespace, name))
        except KubeError as e:
            if e.status == 404:
                return None
            raise

    def list(self, api_version: str, kind: str, namespace: str = "",
             label_selector: str = "", field_selector: str = "") -> tuple[list[Body], str]:
        """Items (with apiVersion/kind filled in) and the list's resourceVersion."""
        res = self.resource(api_version, kind)
        query = {"labelSelector": label_selector} if label_selector else {}
        if field_selector:
            query["fieldSelector"] = field_selector
        doc = self.request("GET", res.path(namespace), query=query)
        items = doc.get("items") or []
        for item in items:
            item.setdefault("apiVersion", api_version)
            item.setdefault("kind", kind)
        return items, str(doc.get("metadata", {}).get("resourceVersion", ""))

    def apply(self, body: Body, *, force: bool | None = None, dry_run: bool = False) -> Body:
        """Server-side apply one object as our field manager."""
        meta = body["metadata"]
        res = self.resource(body["apiVersion"], body["kind"])
        query: dict[str, Any] = {"fieldManager": self.settings.field_manager}
        if (self.settings.conflicts == "force") if force is None else force:
            query["force"] = "true"
        if dry_run:
            query["dryRun"] = "All"
        path = res.path(meta.get("namespace", ""), meta["name"])
        return self.request("PATCH", path, query=query, body=body,
                            content_type="application/apply-patch+yaml")

    def delete(self, api_version: str, kind: str, name: str, namespace: str = "",
               propagation: str = "Background") -> bool:
        """Delete; False when it was already gone."""
        res = self.resource(api_version, kind)
        try:
            self.request("DELETE", res.path(namespace, name),
                         body={"propagationPolicy": propagation})
        except KubeError as e:
            if e.status == 404:
                return False
            raise
        return True

    def patch(self, api_version: str, kind: str, name: str, patch: Body, namespace: str = "",
              subresource: str = "") -> Body:
        """JSON merge patch (e.g. a resource's status subresource)."""
        res = self.resource(api_version, kind)
        return self.request("PATCH", res.path(namespace, name, subresource), body=patch,
                            content_type="application/merge-patch+json")

    def create(self, body: Body, elect: bool = False) -> Body:
        meta = body["metadata"]
        res = self.resource(body["apiVersion"], body["kind"])
        return self.request("POST", res.path(meta.get("namespace", "")), body=body,
                            elect=elect)

    def replace(self, body: Body, elect: bool = False) -> Body:
        """PUT: an update guarded by metadata.resourceVersion (409 when stale)."""
        meta = body["metadata"]
        res = self.resource(body["apiVersion"], body["kind"])
        return self.request("PUT", res.path(meta.get("namespace", ""), meta["name"]),
                            body=body, elect=elect)

    def watch(self, api_version: str, kind: str, namespace: str = "",
              resource_version: str = "", label_selector: str = "",
              timeout_seconds: int = 300, field_selector: str = "",
              on_open: Callable[[Any], None] | None = None) -> Iterator[tuple[str, Body]]:
        """Stream (type, object) events until the server closes the watch.

        Raises KubeError(status=410) when the resourceVersion is too old: relist then.
        `on_open` receives the open response, so its owner can shut it down to end a
        watch that is blocked waiting for the next event.
        """
        res = self.resource(api_version, kind)
        query: dict[str, Any] = {"watch": "true", "timeoutSeconds": timeout_seconds,
                                 "allowWatchBookmarks": "true"}
        if resource_version:
            query["resourceVersion"] = resource_version
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        path = res.path(namespace)
        try:
            resp = self._send("GET", path, query, None, "application/json",
                              (self.settings.request_timeout, timeout_seconds + 30))
        except _CONNECTION_ERRORS as e:
            raise KubeError(f"watch {path}: {e}", reason="ConnectionError") from e
        if resp.status != 200:
            try:
                raise _api_error(int(resp.status), resp.data, resp.headers, "WATCH", path)
            finally:
                resp.release_conn()
        if on_open is not None:
            on_open(resp)
        try:
            for line in _lines(resp):
                try:
                    event = orjson.loads(line)
                except ValueError as e:  # a last line cut short: the stream ended mid-event
                    raise KubeError(f"watch {path} dropped mid-event: {e}",
                                    reason="ConnectionError") from e
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    raise KubeError(obj.get("message", "watch error"),
                                    status=int(obj.get("code", 0)), reason=obj.get("reason", ""))
                obj.setdefault("apiVersion", api_version)
                obj.setdefault("kind", kind)
                yield str(event.get("type")), obj
        except _CONNECTION_ERRORS as e:
            raise KubeError(f"watch {path} dropped: {e}",
                            reason="ConnectionError") from e
        finally:
            resp.release_conn()


def _lines(resp: Any) -> Iterator[bytes]:
    buf = b""
    for chunk in resp.stream(amt=65536, decode_content=False):
        buf += chunk
        *lines, buf = buf.split(b"\n")
        yield from (line for line in lines if line.strip())
    if buf.strip():
        yield buf


def _api_error(status: int, raw: bytes | None, headers: Any, method: str,
               path: str) -> KubeError:
    """A KubeError from a Status answer, keeping its reason, message and causes."""
    reason, message = "", ""
    details: dict[str, Any] = {}
    try:
        doc = orjson.loads(raw or b"{}")
        reason = str(doc.get("reason") or "")
        message = str(doc.get("message") or "")
        details = doc.get("details") or {}
    except (ValueError, TypeError, AttributeError):
        message = (raw or b"")[:500].decode(errors="replace")
    extra: dict[str, Any] = {"method": method, "path": path}
    if details.get("causes"):
        extra["causes"] = details["causes"]
    retry_after = headers.get("Retry-After") if headers else None
    if retry_after:
        extra["retryAfter"] = retry_after
    return KubeError(message or f"{method} {path}: HTTP {status} {reason}", status=status,
                     reason=reason, details=extra)


def _query_value(value: Any) -> str:
    """A query value as the generated client wrote it (booleans in lower case)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _in_cluster() -> bool:
    import os

    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
