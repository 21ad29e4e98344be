"""A write whose answer never comes is not re-sent: the request itself may be the problem.

Issue 9, finding 9: a deeply nested parameters PATCH made kube-apiserver spin, and the retry
policy re-sent it 5 times (30 s each) before answering 502. A client-side read timeout on a
write means the server has the body and may be working on it (or have applied it):
sending it again multiplies the load and cannot be known safe. Reads still retry.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from kubernetes import client as k8s

from controller.adapters.kube import Kube, KubeError
from controller.config import ApplySettings


class SilentServer:
    """A real TCP server that reads each request and never answers; counts requests."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        buf = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while b"\r\n\r\n" in buf:  # one request's headers (bodies here are small)
                _, buf = buf.split(b"\r\n\r\n", 1)
                with self.lock:
                    self.requests += 1

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def _kube(port: int) -> Kube:
    conf = k8s.Configuration()
    conf.host = f"http://127.0.0.1:{port}"
    conf.retries = False
    settings = ApplySettings(attempts=3, backoff_initial=0.01, backoff_max=0.02,
                             request_timeout=0.3)
    return Kube(k8s.ApiClient(conf), settings)


def test_a_write_that_times_out_is_sent_once(silent: SilentServer) -> None:
    kube = _kube(silent.port)
    with pytest.raises(KubeError) as err:
        kube.request("PATCH", "/api/v1/namespaces/x/configmaps/y", body={"data": {"a": "b"}},
                     content_type="application/merge-patch+json")
    assert not err.value.transient
    assert err.value.reason == "WriteTimeout"
    assert silent.requests == 1


def test_a_read_that_times_out_is_retried(silent: SilentServer) -> None:
    kube = _kube(silent.port)
    with pytest.raises(KubeError) as err:
        kube.request("GET", "/api/v1/namespaces/x/configmaps/y")
    assert err.value.transient
    assert silent.requests == 3
