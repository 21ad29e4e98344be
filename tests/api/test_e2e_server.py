"""The real server (`conductor run`: gunicorn's asyncio worker) against hostile clients.

Slow or idle clients must never starve the API (the probes included), gunicorn's own error
answers leave in the API's envelope, event streams give their slot back as soon as their
client leaves and end when the server stops, and a bad tokens file stops `conductor run`
before it starts anything. Every client here talks to 127.0.0.1 and every loop is bounded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from controller.adapters.kube import Kube
from devcluster.running import free_port
from tests.support.api import get, request
from tests.support.cluster import App, controller_process
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster


@contextmanager
def served(app: App, tmp_path: Path, **env: str) -> Iterator[int]:
    """`conductor run` on a free loopback port, its first pass done; yields the port."""
    port = free_port()
    log = tmp_path / "controller.log"
    with controller_process(app.cluster, app.root, app.namespace, port, log, **env):
        wait_for(lambda: get(port, "/healthz").status == 200, timeout=60,
                 message=f"the API to answer (log: {log})")
        wait_for(lambda: "lastPass" in get(port, "/api/status").json, timeout=60,
                 message="the first pass")
        yield port


def test_slow_and_idle_clients_never_starve_the_api(app: App, tmp_path: Path) -> None:
    with served(app, tmp_path) as port, ExitStack() as held:
        # 16 requests whose headers never end (no token needed), and bodies shorter than
        # their Content-Length: twice the API's threads, held open throughout.
        for i in range(20):
            s = held.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
            if i < 16:
                s.sendall(b"GET /healthz HTTP/1.1\r\n")
            else:
                s.sendall(b"POST /api/up HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{")
        # A few idle connections that never send a byte, too.
        for _ in range(8):
            held.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
        deadline = time.monotonic() + 20
        answered = 0
        while time.monotonic() < deadline:  # bounded: 20 s of probes
            started = time.monotonic()
            assert get(port, "/healthz", timeout=1.0).status == 200
            assert get(port, "/api/services", timeout=1.0).status == 200
            assert time.monotonic() - started < 1.0
            answered += 1
        assert answered >= 20


def test_gunicorns_own_errors_are_in_the_envelope(app: App, tmp_path: Path) -> None:
    with served(app, tmp_path) as port:
        long_line = request(port, b"GET /api/events?x=" + b"a" * 5000
                            + b" HTTP/1.1\r\nHost: t\r\n\r\n")
        big_header = request(port, b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: "
                             + b"a" * 9000 + b"\r\n\r\n")
        garbage = request(port, b"\x16\x03\x01 nonsense\r\n\r\n")
        for reply, status in ((long_line, 414), (big_header, 431), (garbage, 400)):
            assert reply.status == status, (reply.status, reply.body[:200])
            assert reply.headers["content-type"].startswith("application/json")
            body = reply.json
            assert set(body) == {"error", "message", "details"}, body
            assert body["error"] == "invalid_request" and body["message"]


def _open_stream(port: int, query: str = "duration=600") -> socket.socket:
    """An event stream's connection, its 200 and first bytes read."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(f"GET /api/events/stream?{query} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    return s


def test_a_stream_gives_its_slot_back_when_its_client_leaves(app: App,
                                                             tmp_path: Path) -> None:
    with served(app, tmp_path, CONDUCTOR_API_MAX_STREAMS="1") as port:
        first = _open_stream(port)
        refused = get(port, "/api/events/stream?duration=0")
        assert refused.status == 429 and refused.json["error"] == "rate_limited"
        assert refused.headers["retry-after"]
        first.close()
        # Long before the 15 s heartbeat would have noticed the write failing.
        started = time.monotonic()
        wait_for(lambda: get(port, "/api/events/stream?duration=0").status == 200,
                 timeout=3, interval=0.05, message="the stream's slot to be given back")
        assert time.monotonic() - started < 3


def test_duration_bounds_a_stream_whatever_its_backlog(app: App, tmp_path: Path) -> None:
    with served(app, tmp_path) as port:
        # A backlog of exactly one page (the stream's query size) used to double it.
        newest = get(port, "/api/events?limit=1").json["events"]
        after = max(0, newest[0]["id"] - 100) if newest else 0
        started = time.monotonic()
        reply = get(port, f"/api/events/stream?duration=1&limit=100&lastEventId={after}",
                    timeout=30)
        took = time.monotonic() - started
        assert reply.status == 200
        assert took < 4, took


def test_open_streams_do_not_hold_up_a_graceful_stop(app: App, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "controller.log"
    with controller_process(app.cluster, app.root, app.namespace, port, log) as proc:
        wait_for(lambda: get(port, "/healthz").status == 200, timeout=60,
                 message=f"the API to answer (log: {log})")
        streams = [_open_stream(port) for _ in range(3)]
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        took = time.monotonic() - started
        for s in streams:  # ended by the server, not by their duration (600 s)
            s.settimeout(5)
            while s.recv(65536):
                pass
            s.close()
    assert took < 30, took


def test_a_bad_tokens_file_stops_run_before_anything_starts(app: App, kube: Kube,
                                                            tmp_path: Path) -> None:
    bad = tmp_path / "tokens.yaml"
    bad.write_text("tokens:\n  - name: ci\n    scopes: [read, deploy]\n")
    environ = {**os.environ, "CONDUCTOR_API_TOKENS_FILE": str(bad),
               "CONDUCTOR_EVENTS_PATH": str(tmp_path / "ev.db")}
    done = subprocess.run(
        [sys.executable, "-m", "controller", "run", "--kubeconfig", app.cluster.kubeconfig,
         "--manifests", str(app.root), "--namespace", app.namespace,
         "--port", str(free_port())],
        capture_output=True, text=True, env=environ, timeout=60, check=False)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "token #0" in lines[0], lines
    # Nothing started: no lease taken, no DeploymentParameters object created.
    assert kube.list("coordination.k8s.io/v1", "Lease", app.namespace)[0] == []
    assert kube.list("conductor.io/v1alpha1", "DeploymentParameters", app.namespace)[0] == []
