"""Proxies for tests (loopback only).

`ApiProxy`: a counting, fault-injecting HTTPS proxy in front of the real API server. Tests
point a kubeconfig at it to see what a client really sends (how many writes a pass makes)
and to make the API server look flaky: answer 503 or 429, drop the connection, or answer
late (a number of seconds), for chosen requests. It terminates TLS with its own throw-away
certificate and forwards to the API server over TLS, passing the client's Authorization
header through.

`RoundRobin`: a plain HTTP load balancer in front of several conductor replicas, as a
Kubernetes Service spreads calls over Pods: each request goes to the next backend in
turn. A backend that refuses the connection (a killed Pod) is skipped for the next one,
as haproxy's redispatch does; a backend that dies with the request in flight answers 502
with the API's envelope ({"error": "unreachable", ...}): what a client of a real load
balancer sees, and retries.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from tests.support.tls import https_server, self_signed

# fault(method, path, n) -> None (forward) | "503" | "429" | "drop" | seconds to wait
# before forwarding; n counts from 1.
Fault = Callable[[str, str, int], str | float | None]


def relay(handler: BaseHTTPRequestHandler, resp: http.client.HTTPResponse,
          streaming: bool) -> None:
    """Pass an upstream answer on to the handler's client: a stream chunk by chunk as it
    comes (a watch, an event stream), anything else whole with its length."""
    handler.send_response(resp.status)
    for k, v in resp.getheaders():
        if k.lower() not in ("transfer-encoding", "connection", "content-length"):
            handler.send_header(k, v)
    if streaming:
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        try:
            while chunk := resp.read1(65536):
                handler.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                handler.wfile.flush()
            handler.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client went away mid-stream (a killed replica): not an error
            handler.close_connection = True
    else:
        data = resp.read()
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


@dataclass
class ProxyStats:
    requests: Counter[str] = field(default_factory=Counter)  # by method
    faults: Counter[str] = field(default_factory=Counter)  # by kind
    log: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def writes(self) -> int:
        return sum(n for m, n in self.requests.items() if m in ("POST", "PUT", "PATCH",
                                                                  "DELETE"))

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.faults.clear()
            self.log.clear()


class ApiProxy:
    def __init__(self, kubeconfig: str, workdir: Path, fault: Fault | None = None) -> None:
        conf = yaml.safe_load(Path(kubeconfig).read_text())
        cluster = conf["clusters"][0]["cluster"]
        self.upstream = urlsplit(cluster["server"])
        self.upstream_ca = workdir / "upstream-ca.crt"
        self.upstream_ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
        self.token = conf["users"][0]["user"]["token"]
        self.fault = fault
        self.stats = ProxyStats()
        cert, _ = self_signed(workdir, "proxy")
        self.server = https_server(self._handler(), cert, workdir / "proxy.key")
        self.port = self.server.server_address[1]
        self.kubeconfig = workdir / "proxy-kubeconfig"
        conf["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{self.port}"
        conf["clusters"][0]["cluster"]["certificate-authority-data"] = base64.b64encode(
            cert.read_bytes()).decode()
        self.kubeconfig.write_text(yaml.safe_dump(conf))
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ApiProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy.stats.lock:
                    proxy.stats.requests[self.command] += 1
                    n = sum(proxy.stats.requests.values())
                fault = proxy.fault(self.command, self.path, n) if proxy.fault else None
                if isinstance(fault, float | int):
                    proxy.stats.faults["delay"] += 1
                    time.sleep(fault)
                    fault = None
                if fault == "drop":
                    proxy.stats.faults["drop"] += 1
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fault in ("503", "429"):
                    proxy.stats.faults[fault] += 1
                    payload = (b'{"kind":"Status","apiVersion":"v1","status":"Failure",'
                               b'"reason":"ServiceUnavailable","code":' + fault.encode() + b"}")
                    self.send_response(int(fault))
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    if fault == "429":
                        self.send_header("Retry-After", "0")
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                ctx = ssl.create_default_context(cafile=str(proxy.upstream_ca))
                # A watch may go quiet for its whole timeoutSeconds (300 s in conductor):
                # cutting it at 60 s would make every idle watch re-open each minute.
                streaming = "watch=true" in self.path
                conn = http.client.HTTPSConnection(proxy.upstream.hostname or "127.0.0.1",
                                                   proxy.upstream.port, context=ctx,
                                                   timeout=400 if streaming else 60)
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection", "accept-encoding")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                relay(self, resp, streaming=streaming)
                with proxy.stats.lock:
                    proxy.stats.log.append((self.command, self.path, resp.status))
                conn.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        return Handler


class RoundRobin:
    """A round-robin HTTP load balancer on 127.0.0.1 over `backends` (ports)."""

    def __init__(self, backends: list[int], timeout: float = 120.0) -> None:
        self.backends = list(backends)
        self.timeout = timeout
        self._turn = 0  # the next request's backend, round robin
        self.lock = threading.Lock()
        self.log: list[tuple[str, str, int, int]] = []  # (method, path, backend, status)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RoundRobin:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def peek(self) -> int:
        """The backend the next request goes to first (for a test that picks one)."""
        with self.lock:
            return self.backends[self._turn % len(self.backends)]

    def _connect(self) -> tuple[int, http.client.HTTPConnection] | None:
        """A connection to the next backend that accepts one (each tried once)."""
        with self.lock:
            start, self._turn = self._turn, self._turn + 1
        for i in range(len(self.backends)):
            port = self.backends[(start + i) % len(self.backends)]
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=self.timeout)
            try:
                conn.connect()
            except OSError:
                conn.close()
                continue
            return port, conn
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        lb = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, status: int, body: dict[str, object], port: int) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                with lb.lock:
                    lb.log.append((self.command, self.path, port, status))

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                found = lb._connect()
                if found is None:
                    self._answer(503, {"error": "unreachable", "message": "no replica "
                                       "accepts connections", "details": {"retry": True}}, 0)
                    return
                port, conn = found
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "connection")}
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    # No length: an event stream, passed on as it comes.
                    relay(self, resp, streaming=resp.getheader("Content-Length") is None)
                    with lb.lock:
                        lb.log.append((self.command, self.path, port, resp.status))
                except (TimeoutError, OSError, http.client.HTTPException) as e:
                    # The replica went away with the request in flight.
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self._answer(502, {"error": "unreachable", "message": f"the replica "
                                           f"at port {port} went away mid-request: {e}",
                                           "details": {"retry": True, "backend": port}}, port)
                finally:
                    conn.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        return Handler
