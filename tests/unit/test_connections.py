"""The API server's connections (adapters/connections.py) against a real HTTPS server on
127.0.0.1: kept alive and reused, never reused once the server closed them or their
answer was left unread, a watch ended from another thread, the kubeconfig's TLS settings
(CA, tls-server-name), and a timeout after sending told apart from a refused connection."""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from controller.adapters.connections import Connections, ReadTimeout
from tests.support.tls import https_server, self_signed
from tests.support.waiting import wait_for


class Server:
    """Answers GET /ok (kept alive), /close (then closes the connection), /slow (after a
    second), /watch (two lines, then holds the stream open until the test ends)."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.peers: list[int] = []  # the client port of each request: one per connection
        self.closed: list[int] = []  # the client port of each connection the client closed
        self.release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def finish(self) -> None:
                super().finish()
                server.closed.append(self.client_address[1])

            def do_GET(self) -> None:
                server.peers.append(self.client_address[1])
                if self.path == "/slow":
                    time.sleep(1.0)
                if self.path == "/watch":
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for line in (b'{"a": 1}\n', b'{"b": 2}\n'):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                    self.wfile.flush()
                    server.release.wait(30)
                    self.close_connection = True
                    return
                body = b'{"ok": true}'
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                if self.path == "/close":
                    self.close_connection = True  # closed without saying so beforehand

        self.httpd = https_server(Handler, cert, key)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def connections(self) -> int:
        return len(set(self.peers))

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def server(tls: tuple[Path, Path]) -> Iterator[Server]:
    fake = Server(*tls)
    yield fake
    fake.close()


def configuration(port: int, ca: Path, **settings: Any) -> k8s.Configuration:
    conf = k8s.Configuration()
    conf.host = f"https://127.0.0.1:{port}"
    conf.ssl_ca_cert = str(ca)
    for name, value in settings.items():
        setattr(conf, name, value)
    return conf


@pytest.fixture
def pool(server: Server, tls: tuple[Path, Path]) -> Iterator[Connections]:
    conns = Connections.for_configuration(configuration(server.port, tls[0]), maxsize=4)
    assert conns is not None
    yield conns
    conns.clear()


def get(pool: Connections, path: str, timeout: float = 5.0) -> bytes:
    resp = pool.request("GET", path, None, {}, timeout)
    try:
        return resp.data
    finally:
        resp.release_conn()


def test_a_kept_alive_connection_is_reused(pool: Connections, server: Server) -> None:
    assert [get(pool, "/ok") for _ in range(3)] == [b'{"ok": true}'] * 3
    assert server.connections() == 1


def test_a_connection_the_server_closed_is_not_reused(pool: Connections,
                                                      server: Server) -> None:
    assert get(pool, "/close") == b'{"ok": true}'
    # The server's close reaches the idle socket: the next request opens another one
    # instead of failing on it.
    assert get(pool, "/ok") == b'{"ok": true}'
    assert server.connections() == 2


def test_an_answer_left_unread_closes_its_connection(pool: Connections,
                                                     server: Server) -> None:
    resp = pool.request("GET", "/ok", None, {}, 5.0)
    assert resp.status == 200
    resp.release_conn()  # body not read: the connection cannot carry another answer
    first = server.peers[-1]
    wait_for(lambda: first in server.closed, timeout=10, message="the unread one closed")
    assert get(pool, "/ok") == b'{"ok": true}'
    assert server.connections() == 2


def test_a_watch_reads_as_it_arrives_and_shutdown_ends_it(pool: Connections) -> None:
    resp = pool.request("GET", "/watch", None, {}, (5.0, 30.0))
    received: list[bytes] = []
    ended = threading.Event()

    def read() -> None:
        try:
            for chunk in resp.stream(65536):
                received.append(chunk)
        except (OSError, http.client.HTTPException):
            pass  # shut down mid-read: how a stopped watch ends (kube.py: ConnectionError)
        finally:
            ended.set()

    threading.Thread(target=read, daemon=True).start()
    wait_for(lambda: b"".join(received) == b'{"a": 1}\n{"b": 2}\n', timeout=10,
             message="both lines, while the stream stays open")
    assert not ended.is_set()
    resp.shutdown()
    assert ended.wait(10), "shutdown did not end the blocked read"
    resp.release_conn()


def test_no_answer_in_time_is_a_read_timeout_a_refused_connection_is_not(
        pool: Connections, tls: tuple[Path, Path]) -> None:
    with pytest.raises(ReadTimeout):
        get(pool, "/slow", timeout=0.2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nobody listens there once closed
    refused = Connections.for_configuration(configuration(port, tls[0]), maxsize=1)
    assert refused is not None
    with pytest.raises(OSError) as err:
        get(refused, "/ok")
    assert not isinstance(err.value, ReadTimeout)


def test_tls_is_verified_and_tls_server_name_names_the_certificate(
        tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, san="DNS:kubernetes")  # not valid for 127.0.0.1
    named = Server(cert, key)
    try:
        plain = Connections.for_configuration(configuration(named.port, cert), maxsize=1)
        assert plain is not None
        with pytest.raises(ssl.SSLCertVerificationError):
            get(plain, "/ok")
        sni = Connections.for_configuration(
            configuration(named.port, cert, tls_server_name="kubernetes"), maxsize=1)
        assert sni is not None and get(sni, "/ok") == b'{"ok": true}'
        insecure = Connections.for_configuration(
            configuration(named.port, tmp_path / "missing-ca.pem", verify_ssl=False,
                          ssl_ca_cert=None), maxsize=1)
        assert insecure is not None and get(insecure, "/ok") == b'{"ok": true}'
    finally:
        named.close()


def test_what_it_does_not_do_is_left_to_urllib3(tls: tuple[Path, Path]) -> None:
    assert Connections.for_configuration(
        configuration(1, tls[0], proxy="http://127.0.0.1:3128"), maxsize=1) is None
    assert Connections.for_configuration(
        configuration(1, tls[0], assert_hostname="kubernetes"), maxsize=1) is None
