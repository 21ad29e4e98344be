"""The API's gunicorn worker (controller/api/worker.py) as `conductor run` configures it, on a
trivial ASGI app: no controller, no cluster.

The worker must serve on uvloop with gunicorn's C HTTP parser (gunicorn_h1c): together
they are a third of the API's CPU per request (bench/bench_api.py). gunicorn picks both by
itself, except that a worker subclass once made it fall back to the pure Python parser
silently; nothing else would notice but the benchmark.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller import assets
from devcluster.running import free_port
from tests.support.waiting import wait_for

# Reports what serves it: the parser class of every open connection, and the loop.
APP = textwrap.dedent('''
    import asyncio, gc, json
    from gunicorn.asgi.protocol import ASGIProtocol

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        parsers = sorted({type(o._callback_parser).__name__ for o in gc.get_objects()
                          if isinstance(o, ASGIProtocol) and o._callback_parser is not None})
        loop = type(asyncio.get_running_loop()).__module__
        body = json.dumps({"parsers": parsers, "loop": loop}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
''')


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "probe.py").write_text(APP)
    port = free_port()
    log = (tmp_path / "gunicorn.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-k", "controller.api.worker.Worker",
         "-c", str(assets.GUNICORN_CONF), "-b", f"127.0.0.1:{port}", "--chdir",
         str(tmp_path), "probe:app"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _answer(url: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            body: dict[str, object] = json.loads(resp.read())
            return body
    except OSError:
        return None


def test_the_worker_serves_on_uvloop_with_the_c_parser(served: str) -> None:
    answer = wait_for(lambda: _answer(served), timeout=30, message="the worker")
    assert answer == {"parsers": ["H1CProtocol"], "loop": "uvloop"}
