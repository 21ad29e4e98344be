"""The dashboard in a real browser: Debian's Chromium driven by Playwright, headless,
against a real `conductor run` (gunicorn, authentication on) on the local control plane.

Playwright's own browser download is never used (nothing can be downloaded here):
scripts/setup installs Debian's `chromium` and the tests launch /usr/bin/chromium. The
simulated kubelet marks Pods Ready, or ImagePullBackOff for a tag listed as missing: on a
control plane that runs the simulator (`devcluster up --simulate-kubelet`, the shared one)
the test adds its own tag to the simulator's list; on one without (the private control
plane pytest starts, or when the shared one has died), the test runs the same simulator
in-process, for its own namespace only, for its duration.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.adapters.kube import Kube
from devcluster import running
from tests.support.cluster import App, LocalCluster, controller_process, missing_image_tag
from tests.support.waiting import wait_for

CHROMIUM = os.environ.get("CONDUCTOR_CHROMIUM", "/usr/bin/chromium")
WRITE_TOKEN = "ui-write-" + secrets.token_hex(8)
READ_TOKEN = "ui-read-" + secrets.token_hex(8)


# Per module: Playwright's sync API keeps an asyncio loop running while it is open, which
# would refuse the asyncio.run of falcon's test client in later modules.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: scripts/setup installs Debian's chromium "
                    "(Playwright's browser download is not used)")
    playwright = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e .[test])")
    with playwright.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


@dataclass
class Served:
    """A running controller: its port, the tokens, and where screenshots go."""

    port: int
    shots: Path
    log: Path
    write_token: str = WRITE_TOKEN
    read_token: str = READ_TOKEN
    taken: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ui"

    def call(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
        """One API call with the write token: (status, headers, JSON body)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
            headers={"Authorization": f"Bearer {self.write_token}",
                     "Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, dict(resp.headers), json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), json.loads(e.read() or b"null")

    def shot(self, page: Any, name: str) -> Path:
        path = self.shots / f"{len(self.taken) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        return path


@pytest.fixture
def served(app: App, tmp_path: Path) -> Iterator[Served]:
    """`conductor run` with authentication on (a write and a read-only token), its first
    pass done; screenshots go to the test's own folder (tmp_path/screenshots)."""
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(yaml.safe_dump({"tokens": [
        {"name": "ui-writer", "token": WRITE_TOKEN, "scopes": ["write"]},
        {"name": "ui-reader", "token": READ_TOKEN, "scopes": ["read"]}]}))
    port = running.free_port()
    log = tmp_path / "controller.log"
    shots = tmp_path / "screenshots"
    shots.mkdir()
    out = Served(port, shots, log)
    with controller_process(app.cluster, app.root, app.namespace, port, log,
                            CONDUCTOR_API_AUTH="true",
                            CONDUCTOR_API_TOKENS_FILE=str(tokens)):
        wait_for(lambda: out.call("GET", "/healthz")[0] == 200, timeout=60,
                 message=f"the API to answer (log: {log})")
        wait_for(lambda: "lastPass" in out.call("GET", "/api/status")[2], timeout=60,
                 message="the first pass")
        yield out
    print(f"screenshots: {shots}")
    docs = os.environ.get("UI_DOCS_SCREENSHOT")
    if docs and out.taken:  # `UI_DOCS_SCREENSHOT=docs/ui.png` refreshes the README's picture
        # (not a CONDUCTOR_ name: `conductor run` refuses settings it does not know): the
        # broken service with its reason, hint and error event, when the test got there.
        shutil.copyfile(next((p for p in out.taken if "unhealthy" in p.name), out.taken[0]),
                        docs)


@pytest.fixture
def missing_tag(cluster: LocalCluster, kube: Kube, namespace: str) -> Iterator[str]:
    """An image tag the simulated kubelet reports as not found (ImagePullBackOff)."""
    with missing_image_tag(cluster, kube, namespace, "ui-missing") as tag:
        yield tag
