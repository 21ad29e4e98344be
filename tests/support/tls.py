"""Throw-away TLS for loopback test servers: a self-signed certificate (its own CA, as a
kubeconfig's `certificate-authority`), and an HTTPS server on 127.0.0.1 that uses it."""

from __future__ import annotations

import ssl
import subprocess
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def self_signed(where: Path, name: str = "server",
                san: str = "IP:127.0.0.1") -> tuple[Path, Path]:
    """WHERE/NAME.crt and WHERE/NAME.key, valid a day for `san` (an openssl
    subjectAltName: `IP:127.0.0.1`, `DNS:kubernetes`)."""
    cert, key = where / f"{name}.crt", where / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=conductor-test", "-addext", f"subjectAltName={san}",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def https_server(handler: type[BaseHTTPRequestHandler], cert: Path,
                 key: Path) -> ThreadingHTTPServer:
    """Bound to a free port on 127.0.0.1 with TLS, not serving yet (`serve_forever` on a
    thread of the caller's; `shutdown` and `server_close` at the end)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server
