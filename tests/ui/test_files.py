"""The dashboard's files as served (controller/api/ui.py), without a cluster or a browser.

/ui and its files answer without a token (the page asks for one) while the API behind the
same middleware still refuses; every answer carries the strict CSP and nosniff; the markup
holds no inline script, style or event handler (the CSP would block them, so a page that
relied on one would be broken); app.js never inserts HTML; files revalidate by ETag; an
unknown file is the contract's 404 envelope.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import falcon.asgi
import pytest
import yaml
from falcon import testing

from controller.api import errors, security, ui
from controller.config import ApiSettings

UI = Path(__file__).resolve().parents[2] / "controller" / "assets" / "ui"
TOKEN = "ui-files-token"


@pytest.fixture
def client(tmp_path: Path) -> testing.TestClient:
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(yaml.safe_dump({"tokens": [{"name": "t", "token": TOKEN,
                                                  "scopes": ["read"]}]}))
    settings = ApiSettings(auth=True, tokens_file=str(tokens))
    app = falcon.asgi.App(middleware=security.middleware(settings))
    app.req_options.strip_url_path_trailing_slash = True
    errors.install(app)
    ui.add_routes(app)
    return testing.TestClient(app)


def _secure(result: testing.Result) -> None:
    csp = result.headers["content-security-policy"]
    for directive in ("default-src 'self'", "script-src 'self'", "style-src 'self'",
                      "frame-ancestors 'none'", "object-src 'none'"):
        assert directive in csp, csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert result.headers["x-content-type-options"] == "nosniff"


def test_the_page_and_its_files_need_no_token_but_the_api_does(
        client: testing.TestClient) -> None:
    for path, kind in (("/ui", "text/html"), ("/ui/", "text/html"),
                       ("/ui/app.js", "text/javascript"), ("/ui/app.css", "text/css"),
                       ("/ui/js-yaml.min.mjs", "text/javascript")):
        result = client.simulate_get(path)
        assert result.status_code == 200, (path, result.text[:200])
        assert result.headers["content-type"].startswith(kind), path
        assert result.headers["cache-control"] == "no-cache"
        _secure(result)
    assert client.simulate_get("/api/services").status_code == 401
    assert client.simulate_get("/uix").status_code == 401  # only /ui and /ui/..., no prefix
    page = client.simulate_get("/ui")
    assert page.content == (UI / "index.html").read_bytes()


def test_unknown_files_are_a_404_envelope_with_the_headers(
        client: testing.TestClient) -> None:
    for path in ("/ui/nope.js", "/ui/..%2Fapp.py", "/ui/__init__.py", "/ui/a/b"):
        result = client.simulate_get(path)
        assert result.status_code == 404, path
        assert result.json["error"] == "not_found"
        assert set(result.json) == {"error", "message", "details"}
        if "%" not in path and path.count("/") == 2:  # routed to the dashboard (others
            # match no route: "..%2F" decodes to a second segment)
            _secure(result)


def test_files_revalidate_by_etag(client: testing.TestClient) -> None:
    first = client.simulate_get("/ui/app.js")
    etag = first.headers["etag"]
    again = client.simulate_get("/ui/app.js", headers={"If-None-Match": etag})
    assert again.status_code == 304 and not again.content
    other = client.simulate_get("/ui/app.js", headers={"If-None-Match": '"stale"'})
    assert other.status_code == 200 and other.content == first.content


class _Markup(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {k for k, _ in attrs}
        if tag == "style" or "style" in names:
            self.problems.append(f"inline style on <{tag}>")
        self.problems += [f"event handler {k} on <{tag}>" for k in names if k.startswith("on")]
        if tag == "script":
            self._in_script = True
            src = dict(attrs).get("src")
            if not src:
                self.problems.append("inline <script>")
            self.scripts.append(src or "")
        if tag == "form":
            self.problems.append("a <form> (form-action 'none')")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False if tag == "script" else self._in_script

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("inline script text")


def test_markup_has_no_inline_script_style_or_handler() -> None:
    parser = _Markup()
    parser.feed((UI / "index.html").read_text())
    assert parser.problems == []
    assert parser.scripts == ["/ui/app.js"]


def test_app_js_inserts_no_html() -> None:
    source = (UI / "app.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function", ".style.", "setAttribute(\"style\"", "localStorage"):
        assert sink not in source, sink
    # The token lives in sessionStorage, and every fetch goes through the two places that
    # add the Authorization header (api() and the event stream).
    assert "sessionStorage" in source
    assert len(re.findall(r"\bfetch\(", source)) == 2
    assert source.count("Authorization = `Bearer ${state.token}`") == 2


def test_the_vendored_library_names_its_version_and_licence() -> None:
    head = (UI / "js-yaml.min.mjs").read_text()[:400]
    assert "js-yaml 5.5.0" in head and "MIT" in head
