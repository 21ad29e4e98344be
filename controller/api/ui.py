"""GET /ui and /ui/{file}: the dashboard's static files, from the package data.

The dashboard is a page of static files (controller/assets/ui: HTML, CSS, JavaScript and
one vendored library), no build step and no separate server: the page asks for a token
and calls the same REST API as any client, so it has no powers of its own and needs no
token to be fetched (security.py lists /ui as an open path; the files hold no data).

The files are read once, when the app is built, and answered from memory on the event
loop. They carry no version in their names, so the browser revalidates each load
(`Cache-Control: no-cache` with a content ETag: a 304 costs no body). Every answer carries
a strict Content-Security-Policy: scripts, styles and connections from this origin only,
no inline script or style (the page has none, so an injected `<script>` or `onerror=`
attribute could not run even if it reached the DOM), no framing; and `nosniff`, so a file
is only ever what its Content-Type says.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import falcon
import falcon.asgi

from controller.errors import NotFoundError

CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'none'; frame-ancestors 'none'")
TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
         ".png": "image/png", ".svg": "image/svg+xml"}
INDEX = "index.html"
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
                    "Cross-Origin-Opener-Policy": "same-origin"}


@dataclass(frozen=True)
class Asset:
    data: bytes
    content_type: str
    etag: str  # quoted, as the header carries it


def load(package: str = "controller.assets", folder: str = "ui") -> dict[str, Asset]:
    """Every file of the folder whose type is known, by name (the folder is flat)."""
    out = {}
    for entry in files(package).joinpath(folder).iterdir():
        suffix = entry.name[entry.name.rfind("."):] if "." in entry.name else ""
        if entry.is_file() and suffix in TYPES:
            data = entry.read_bytes()
            digest = hashlib.sha256(data).hexdigest()[:32]
            out[entry.name] = Asset(data, TYPES[suffix], f'"{digest}"')
    return out


class Dashboard:
    """GET /ui (the page) and GET /ui/{name} (its files); anything else is a 404."""

    def __init__(self, assets: dict[str, Asset] | None = None) -> None:
        self.assets = load() if assets is None else assets

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                     name: str = INDEX) -> None:
        resp.set_headers(SECURITY_HEADERS)
        asset = self.assets.get(name)
        if asset is None:
            raise NotFoundError(f"no dashboard file {name[:100]!r}",
                                {"file": name[:100], "available": sorted(self.assets)})
        resp.set_header("Cache-Control", "no-cache")
        resp.set_header("ETag", asset.etag)
        resp.content_type = asset.content_type
        if asset.etag in (req.get_header("If-None-Match") or ""):
            resp.status = falcon.HTTP_304
            return
        resp.data = asset.data


def add_routes(app: falcon.asgi.App[Any, Any]) -> None:
    """/ui and /ui/{name} on `app`, answered on the event loop (memory only, no thread)."""
    dashboard = Dashboard()
    app.add_route("/ui", dashboard)
    app.add_route("/ui/{name}", dashboard)
