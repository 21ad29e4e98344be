"""A small fake conductor API on 127.0.0.1 serving the contract and issue 15's agreed
additions (ETag / If-Match / 412, plans of drafts with planId and basedOn).

The clients (CLI, MCP server) are tested against it where the real API does not yet have
an agreed piece; it keeps the parameters as a dict with a version bumped on every write,
so a test can play "someone else changed them" with `bump()`.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from controller.model import times
from controller.runtime.controller_service import merge_patch

SERVICES = ["frontend", "postgres", "redis"]


@dataclass
class State:
    spec: dict[str, Any] = field(default_factory=lambda: {
        "global": {"namespace": "default", "replicas": 1},
        "services": {"redis": {"replicas": 1}, "frontend": {"image": "nginx"}}})
    version: int = 1
    plans: dict[str, dict[str, Any]] = field(default_factory=dict)
    health: dict[str, str] = field(default_factory=lambda: dict.fromkeys(SERVICES, "healthy"))
    history: list[dict[str, Any]] = field(default_factory=list)
    suspended: bool = False
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    token: str = ""


class FakeConductor:
    def __init__(self, token: str = "") -> None:
        self.state = State(token=token)
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeConductor:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def bump(self, patch: dict[str, Any]) -> None:
        """Another writer changes the parameters."""
        with self.lock:
            self._write(merge_patch(self.state.spec, patch))

    def _write(self, spec: dict[str, Any]) -> None:
        self.state.history.insert(0, {"revision": f"generation/{self.state.version}",
                                      "parameters": self.state.spec, "applied": True,
                                      "recordedAt": times.now_rfc3339()})
        self.state.spec = spec
        self.state.version += 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any, etag: bool = False) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if etag:
                    self.send_header("ETag", f'"{fake.state.version}"')
                self.end_headers()
                self.wfile.write(data)

            def _error(self, status: int, code: str, message: str,
                       details: dict[str, Any] | None = None) -> None:
                self._send(status, {"error": code, "message": message,
                                    "details": details or {}})

            def _body(self) -> Any:
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n)) if n else {}

            def _stale(self) -> bool:
                given = self.headers.get("If-Match")
                if given is None or given == "*" or given.strip('"') == str(
                        fake.state.version):
                    return False
                self._error(412, "precondition_failed", "the parameters changed",
                            {"current": str(fake.state.version)})
                return True

            def _route(self, method: str) -> None:
                parts = urlsplit(self.path)
                path, query = parts.path, parse_qs(parts.query)
                fake.state.requests.append((method, self.path, dict(self.headers)))
                if fake.state.token and self.headers.get("Authorization") != \
                        f"Bearer {fake.state.token}":
                    self._error(401, "unauthorized", "missing or invalid token")
                    return
                with fake.lock:
                    self._dispatch(method, path, query)

            def _dispatch(self, method: str, path: str, query: dict[str, list[str]]) -> None:
                s = fake.state
                now = times.now_rfc3339()
                if (method, path) == ("GET", "/api/status"):
                    self._send(200, {"instance": "default", "namespace": "default",
                                     "leader": {"isLeader": True},
                                     "source": {"kind": "resource"},
                                     "lastPass": {"ok": True,
                                                  "revision": f"generation/{s.version}"}})
                elif (method, path) == ("GET", "/api/parameters/instances"):
                    self._send(200, {"instances": [{"name": "default", "namespace": "default",
                                                    "ready": "True", "default": True}]})
                elif (method, path) == ("GET", "/api/services"):
                    self._send(200, {"services": [{"name": n, "namespace": "default",
                                                   "deployed": True} for n in SERVICES]})
                elif (method, path) == ("GET", "/api/services/health"):
                    self._send(200, {"services": [self._health(n, now) for n in SERVICES]})
                elif method == "GET" and path.startswith("/api/services/"):
                    name = path.rsplit("/", 1)[1]
                    if name not in SERVICES:
                        self._error(404, "not_found", f"unknown service: {name}")
                        return
                    self._send(200, {"name": name, "health": self._health(name, now),
                                     "events": []})
                elif (method, path) == ("GET", "/api/parameters"):
                    self._send(200, s.spec, etag=True)
                elif (method, path) in (("POST", "/api/parameters"),
                                        ("PATCH", "/api/parameters")):
                    body = self._body()
                    if self._stale():
                        return
                    fake._write(body if method == "POST" else merge_patch(s.spec, body))
                    self._send(200, {"message": "Parameters updated", "parameters": s.spec,
                                     "revision": f"generation/{s.version}"}, etag=True)
                elif (method, path) == ("GET", "/api/parameters/history"):
                    self._send(200, {"history": s.history})
                elif (method, path) == ("POST", "/api/parameters/rollback"):
                    body = self._body()
                    entry = next((h for h in s.history if h["revision"] == body.get(
                        "revision")), None)
                    if entry is None:
                        self._error(404, "not_found", "no such revision")
                        return
                    if self._stale():
                        return
                    fake._write(entry["parameters"])
                    self._send(200, {"message": f"Parameters rolled back to "
                                                f"{entry['revision']}",
                                     "parameters": s.spec}, etag=True)
                elif (method, path) == ("POST", "/api/plan"):
                    body = self._body()
                    services = body.get("services") or SERVICES
                    draft = body.get("parameters") or (merge_patch(s.spec, body["patch"])
                                                       if "patch" in body else None)
                    changes = [{"resource": "default/Deployment/redis", "service": "redis",
                                "action": "update" if draft and draft != s.spec
                                else "unchanged", "reason": "changed",
                                "diff": "-  replicas: 1\n+  replicas: 5\n"}]
                    plan = {"services": services, "revision": f"generation/{s.version}",
                            "counts": {"update": 1}, "changes": changes,
                            "planId": uuid.uuid4().hex, "basedOn": str(s.version),
                            "expiresAt": times.rfc3339(times.now().replace(
                                year=times.now().year + 1))}
                    if draft is not None:
                        plan["draft"] = True
                    s.plans[plan["planId"]] = plan
                    self._send(200, plan)
                elif method == "GET" and path.startswith("/api/plans/"):
                    plan = s.plans.get(path.rsplit("/", 1)[1])
                    if plan is None:
                        self._error(404, "not_found", "no such plan")
                    else:
                        self._send(200, plan)
                elif method == "POST" and path in ("/api/up", "/api/update", "/api/down"):
                    body = self._body()
                    if self._stale():
                        return
                    op = path.rsplit("/", 1)[1]
                    bad = [n for n in body.get("services") or SERVICES
                           if s.health.get(n) == "unhealthy"]
                    if op != "down" and query.get("waitHealthy") == ["true"] and bad:
                        self._error(500, "reconciliation_error", "Deployment failed",
                                    {"resource": f"default/Deployment/{bad[0]}",
                                     "error": "ImagePullBackOff"})
                        return
                    self._send(200, {"message": {"up": "Successfully deployed all manifests",
                                                 "update": "Successfully updated all manifests",
                                                 "down": "Successfully removed all manifests"}[op],
                                     "services": body.get("services") or SERVICES,
                                     "counts": {"applied": 1}, "results": []})
                elif method == "POST" and path in ("/api/suspend", "/api/resume"):
                    s.suspended = path.endswith("suspend")
                    self._send(200, {"message": "ok", "instance": "default",
                                     "suspended": s.suspended})
                elif method == "GET" and path.startswith("/api/events"):
                    events = [{"id": 2, "timestamp": now, "type": "error",
                               "resource": "default/Deployment/redis", "service": "redis",
                               "reason": "ImagePullBackOff",
                               "message": "Back-off pulling image redis:nope"},
                              {"id": 1, "timestamp": now, "type": "info", "service": "redis",
                               "message": "applied"}]
                    kind = query.get("type", [None])[0]
                    if path == "/api/events/errors":
                        events = events[:1]
                    elif kind:
                        events = [e for e in events if e["type"] == kind]
                    if path == "/api/events/stream":
                        self._stream(events)
                        return
                    self._send(200, {"events": events, "count": len(events)})
                else:
                    self._error(404, "not_found", f"no route {method} {path}")

            def _health(self, name: str, now: str) -> dict[str, Any]:
                status = fake.state.health[name]
                out: dict[str, Any] = {"name": name, "namespace": "default",
                                       "status": status, "lastChecked": now}
                if status == "unhealthy":
                    out.update(reason="ImagePullBackOff", hint="check the image and tag",
                               objects=[{"resource": f"default/Deployment/{name}",
                                         "status": "unhealthy", "reason": "ImagePullBackOff",
                                         "message": "Back-off pulling image"}])
                return out

            def _stream(self, events: list[dict[str, Any]]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for e in reversed(events):
                    self.wfile.write(f": ping\n\nid: {e['id']}\nevent: {e['type']}\n"
                                     f"data: {json.dumps(e)}\n\n".encode())
                self.wfile.flush()
                self.close_connection = True

            def do_GET(self) -> None:
                self._route("GET")

            def do_POST(self) -> None:
                self._route("POST")

            def do_PATCH(self) -> None:
                self._route("PATCH")

        return Handler
