"""Kept-alive HTTPS connections to the API server, straight on the standard library.

Every request of a pass goes to one API server, over HTTP/1.1, one at a time per
connection: urllib3 (the Kubernetes client's transport) does that job with machinery we do
not use here (URL parsing and a pool lookup per request, header dictionaries, retries,
proxies), which cost 0.40 ms of CPU per request above `http.client` on the dev machine
(0.73 against 0.31 ms for a GET of a ConfigMap, one thread, same connection kept alive):
about 10 CPU seconds of the 24,000 requests of 1,000 instances' cold start, on 2 cores the
API server needs. `Connections` keeps idle connections in a bounded stack (the most recent
first, as urllib3 does), drops one the server has closed before reusing it (a readable
idle socket: urllib3's `is_connection_dropped`), and never reuses one whose answer was not
read to its end.

The TLS settings are the kubeconfig's as the Kubernetes client loaded them (CA file or
data, client certificate, `insecure-skip-tls-verify`, `tls-server-name`). What this does
not cover (a proxy, a hostname to assert other than the server's) `for_configuration`
answers None for, and kube.py keeps urllib3 for it.
"""

from __future__ import annotations

import contextlib
import http.client
import select
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit


class ReadTimeout(TimeoutError):
    """The request was sent and no answer came in time: the server may have it."""


class Response:
    """One answer: status and headers read, the body read by `data` or `stream`; the
    connection goes back to the pool with `release_conn` once the body was read."""

    def __init__(self, pool: Connections, conn: http.client.HTTPConnection,
                 raw: http.client.HTTPResponse) -> None:
        self._pool = pool
        self._conn: http.client.HTTPConnection | None = conn
        self._raw = raw
        self.status = raw.status
        self.headers = raw.headers  # case-insensitive `get`
        self._data: bytes | None = None

    @property
    def data(self) -> bytes:
        if self._data is None:
            try:
                self._data = self._raw.read()
            except TimeoutError as e:
                self._discard()
                raise ReadTimeout(str(e)) from e
            except BaseException:
                self._discard()
                raise
        return self._data

    def stream(self, amt: int = 65536, decode_content: bool = False) -> Iterator[bytes]:
        """The body as it arrives (a watch): chunks of at most `amt` bytes."""
        try:
            while chunk := self._raw.read1(amt):
                yield chunk
        except BaseException:
            self._discard()
            raise

    def release_conn(self) -> None:
        """Back to the pool if the answer was read to its end, else closed."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._raw.isclosed() and not self._raw.will_close:
            self._pool._put(conn)
        else:
            conn.close()

    def shutdown(self) -> None:
        """From another thread: end a read blocked on this answer (a watch being stopped)."""
        conn = self._conn
        sock = conn.sock if conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):  # closed meanwhile
                sock.shutdown(socket.SHUT_RDWR)

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class Connections:
    """Kept-alive connections to one HTTPS (or HTTP) server, for any number of threads."""

    def __init__(self, host: str, port: int, *, prefix: str = "",
                 context: ssl.SSLContext | None = None, server_hostname: str | None = None,
                 maxsize: int = 16) -> None:
        self.host = host
        self.port = port
        self.prefix = prefix  # a path the server is mounted under (`https://h/k8s/c1`)
        self.context = context  # None: plain HTTP
        self.server_hostname = server_hostname
        self.maxsize = maxsize
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    @classmethod
    def for_configuration(cls, conf: Any, maxsize: int) -> Connections | None:
        """Connections as the Kubernetes client's `Configuration` says, or None when it
        asks for what only urllib3 does here (a proxy, an asserted hostname)."""
        if getattr(conf, "proxy", None) or isinstance(getattr(conf, "assert_hostname", None),
                                                       str):
            return None
        url = urlsplit(conf.host)
        if url.scheme not in ("https", "http") or not url.hostname:
            return None
        prefix = url.path.rstrip("/")
        if url.scheme == "http":
            return cls(url.hostname, url.port or 80, prefix=prefix, maxsize=maxsize)
        ca_data = getattr(conf, "ca_cert_data", None)
        context = ssl.create_default_context(
            cafile=conf.ssl_ca_cert or None,
            cadata=ca_data.decode() if isinstance(ca_data, bytes) else ca_data or None)
        if conf.cert_file:
            context.load_cert_chain(conf.cert_file, conf.key_file or None)
        if not conf.verify_ssl:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif getattr(conf, "assert_hostname", None) is False:
            context.check_hostname = False
        return cls(url.hostname, url.port or 443, prefix=prefix, context=context,
                   server_hostname=getattr(conf, "tls_server_name", None) or None,
                   maxsize=maxsize)

    def request(self, method: str, target: str, body: bytes | None,
                headers: Mapping[str, str], timeout: float | tuple[float, float]) -> Response:
        """Send one request and read its status and headers. `timeout` is seconds for
        each blocking step, or (connect, read). Raises OSError or http.client's errors
        when the exchange fails, ReadTimeout when the request went out and no answer came
        in time."""
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        conn = self._take()
        if conn is not None:
            try:
                self._send(conn, method, target, body, headers, read)
            except (OSError, http.client.HTTPException):
                # The server closed it as we took it: nothing was answered, so sending
                # again on a new one is what urllib3 does too.
                conn = None
        if conn is None:
            conn = self._connect(connect)
            self._send(conn, method, target, body, headers, read)
        try:
            raw = conn.getresponse()
        except TimeoutError as e:
            conn.close()
            raise ReadTimeout(str(e)) from e
        except BaseException:
            conn.close()
            raise
        return Response(self, conn, raw)

    def _send(self, conn: http.client.HTTPConnection, method: str, target: str,
              body: bytes | None, headers: Mapping[str, str], read: float) -> None:
        """The request on `conn`, closed if it fails."""
        try:
            assert conn.sock is not None
            conn.sock.settimeout(read)
            conn.request(method, self.prefix + target, body=body, headers=headers)
        except BaseException:
            conn.close()
            raise

    def clear(self) -> None:
        """Close the idle connections (those in use close when released)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection
        if self.context is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            conn.connect()
        else:
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                               context=self.context)
            if self.server_hostname:
                # http.client sends the connection's host as SNI and checks it: wrap by hand.
                sock = socket.create_connection((self.host, self.port), timeout)
                try:
                    conn.sock = self.context.wrap_socket(
                        sock, server_hostname=self.server_hostname)
                except BaseException:
                    sock.close()
                    raise
            else:
                conn.connect()
        assert conn.sock is not None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _take(self) -> http.client.HTTPConnection | None:
        while True:
            with self._lock:
                if not self._idle:
                    return None
                conn = self._idle.pop()
            if conn.sock is not None and not _dropped(conn.sock):
                return conn
            conn.close()

    def _put(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.maxsize:
                self._idle.append(conn)
                return
        conn.close()


def _dropped(sock: socket.socket) -> bool:
    """Whether an idle connection was closed (or sent something unasked) by the server: it
    is readable, where a kept-alive one has nothing to say until asked."""
    try:
        poller = select.poll()  # not select(): file descriptors past 1,024 (800 watches)
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


__all__ = ["Connections", "ReadTimeout", "Response"]
