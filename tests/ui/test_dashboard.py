"""Issue 16's acceptance, in Chromium: the dashboard against a real controller.

Open /ui with a token and see the example app healthy; set a missing image tag in the
parameters editor, preview the plan (the Deployment's image diff), apply; without a reload
the service turns unhealthy with ImagePullBackOff and its hint, and the error event shows
in the live stream (and in the errors view); roll back from the history, after its
preview, and it turns healthy again; a concurrent change makes apply answer "changed since
you loaded them" (412) and overwrites nothing. A read-only token sees no write control;
a parameter value and an event message holding markup display as text and run nothing.
Each step is a screenshot in the test's folder (tmp_path/screenshots).

Every wait is Playwright's `expect` (polling with a deadline) or `wait_for`.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from devcluster import kubelet
from tests.support.cluster import App, pods
from tests.support.waiting import wait_for

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed (pip install -e .[test])")
expect = sync_api.expect

pytestmark = pytest.mark.cluster

SERVICES = ("frontend", "postgres", "redis")
# Quotes of one kind only, so YAML prints the value unescaped.
XSS = ('<script>alert(1);window.__xss=1</script>"><img src=x '
       'onerror="alert(2);window.__xss=2">')


class Watch:
    """What a page did that it must not: JS dialogs (an injected alert), CSP violations
    (an inline script or style the page relied on), API calls without the token."""

    def __init__(self, page: Any) -> None:
        self.dialogs: list[str] = []
        self.csp: list[str] = []
        self.without_token: list[str] = []
        self.writes: list[str] = []  # every API call that is not a read
        self.signed_in = False  # before the token is typed, the page may ask without one
        page.on("dialog", self._dialog)
        page.on("console", lambda m: self.csp.append(m.text)
                if "Content Security Policy" in m.text else None)
        page.on("request", self._request)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _request(self, request: Any) -> None:
        if self.signed_in and "/api/" in request.url \
                and "authorization" not in request.headers:
            self.without_token.append(request.url)
        if "/api/" in request.url and request.method not in ("GET", "HEAD", "OPTIONS"):
            self.writes.append(f"{request.method} {request.url}")

    def clean(self) -> None:
        assert self.dialogs == [], self.dialogs
        assert self.csp == [], self.csp
        assert self.without_token == [], self.without_token


def _open(browser: Any, served: Any, token: str) -> tuple[Any, Watch, Any]:
    """A new browser session on /ui: the token typed into the page once."""
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    page = context.new_page()
    watch = Watch(page)
    response = page.goto(served.url)
    assert response is not None and response.status == 200
    expect(page.locator("#login")).to_be_visible(timeout=15_000)
    page.fill("#token", token)
    watch.signed_in = True
    page.click("#login-button")
    expect(page.locator("#main")).to_be_visible(timeout=15_000)
    return page, watch, response


def mentions(text: str) -> re.Pattern[str]:
    """A pattern for `to_have_value`: the editor's YAML mentions `text`."""
    return re.compile(re.escape(text))


def _service(page: Any, name: str) -> Any:
    return page.locator(f'#services tr[data-service="{name}"]')


def _change(panel: Any, kind: str, name: str) -> Any:
    return panel.locator(f'.change[data-resource$="/{kind}/{name}"]')


def test_break_and_roll_back_in_the_browser(browser: Any, served: Any, app: App,
                                            missing_tag: str) -> None:
    page, watch, _ = _open(browser, served, served.write_token)
    expect(page.locator("#who")).to_have_text("read and write")
    for name in SERVICES:
        expect(_service(page, name)).to_have_attribute("data-status", "healthy",
                                                       timeout=120_000)
    editor = page.locator("#params-text")
    expect(editor).to_have_value(mentions("1.25"), timeout=15_000)
    expect(page.locator('#instances tr[data-instance="default"] .badge')).to_have_text(
        "True", timeout=30_000)
    served.shot(page, "healthy")

    # The editor: the missing tag, previewed (the Deployment's image diff), then applied.
    doc = yaml.safe_load(editor.input_value())
    doc["services"]["frontend"]["tag"] = missing_tag
    editor.fill(yaml.safe_dump(doc))
    expect(page.locator("#params-apply")).to_be_disabled()  # no apply before a preview
    page.click("#params-preview")
    plan = page.locator("#plan")
    frontend = _change(plan, "Deployment", "frontend")
    expect(frontend).to_have_count(1, timeout=30_000)
    expect(frontend.locator(".add", has_text=f"nginx:{missing_tag}")).to_have_count(1)
    expect(frontend.locator(".del", has_text="nginx:1.25")).to_have_count(1)
    expect(_change(plan, "Deployment", "redis")).to_have_count(0)
    expect(page.locator("#params-apply")).to_be_enabled()
    served.shot(page, "preview")
    page.click("#params-apply")
    page.click("#confirm-ok")
    expect(page.locator("#notice")).to_contain_text("Parameters updated", timeout=30_000)

    # No reload: health and the live stream move by themselves.
    row = _service(page, "frontend")
    expect(row).to_have_attribute("data-status", "unhealthy", timeout=120_000)
    expect(row.locator(".reason")).to_have_text("ImagePullBackOff")
    expect(row.locator(".hint")).not_to_be_empty()
    expect(row.locator(".objects li", has_text="ImagePullBackOff").first).to_be_visible()
    error = page.locator('#events li[data-type="error"][data-reason="ImagePullBackOff"]')
    expect(error.first).to_be_visible(timeout=60_000)
    served.shot(page, "unhealthy")
    page.click("#ev-errors")  # the errors view: one click
    expect(error.first).to_be_visible(timeout=30_000)
    expect(page.locator('#events li[data-type="info"], #events li[data-type="success"]')
           ).to_have_count(0)
    served.shot(page, "errors")

    # The history: roll back to the last good parameters, after a preview.
    def good_revision() -> str | None:
        rows = served.call("GET", "/api/parameters/history?limit=20")[2]["history"]
        if not any(r["parameters"]["services"]["frontend"].get("tag") == missing_tag
                   for r in rows):
            return None  # the bad revision is not recorded yet
        return next((r["revision"] for r in rows if r["applied"] is not False and
                     r["parameters"]["services"]["frontend"].get("tag") == "1.25"), None)
    good = wait_for(good_revision, timeout=60, message="the bad revision in the history")
    history_row = page.locator(f'#history tr[data-revision="{good}"]')
    expect(history_row).to_be_visible(timeout=30_000)
    history_row.locator('button[data-action="preview-rollback"]').click()
    preview = page.locator("#rollback-plan")
    back = _change(preview, "Deployment", "frontend")
    expect(back.locator(".add", has_text="nginx:1.25")).to_have_count(1, timeout=30_000)
    expect(back.locator(".del", has_text=f"nginx:{missing_tag}")).to_have_count(1)
    served.shot(page, "rollback-preview")
    preview.locator('button[data-action="rollback"]').click()
    page.click("#confirm-ok")
    expect(page.locator("#notice")).to_contain_text("rolled back", timeout=30_000)
    expect(row).to_have_attribute("data-status", "healthy", timeout=120_000)
    page.click("#ev-all")
    served.shot(page, "healthy-again")

    # Someone else writes after the page loaded: the preview says so and offers no apply.
    conflict = page.locator("#params-conflict")
    page.click("#params-reload")
    expect(editor).to_have_value(mentions("1.25"), timeout=15_000)
    someone_else(served, "before the preview")
    edit_note(editor, "from the page")
    page.click("#params-preview")
    expect(conflict).to_be_visible(timeout=30_000)
    expect(conflict).to_contain_text("changed since you loaded them")
    expect(page.locator("#params-apply")).to_be_disabled()
    page.click("#params-conflict-reload")
    expect(conflict).to_be_hidden(timeout=15_000)
    expect(editor).to_have_value(mentions("before the preview"), timeout=15_000)

    # ... or between the preview and apply: the write is refused (412), nothing overwritten.
    edit_note(editor, "from the page")
    page.click("#params-preview")
    expect(page.locator("#params-apply")).to_be_enabled(timeout=30_000)
    someone_else(served, "after the preview")
    page.click("#params-apply")
    page.click("#confirm-ok")
    expect(conflict).to_be_visible(timeout=30_000)
    expect(conflict).to_contain_text("changed since you loaded them")
    served.shot(page, "conflict")
    spec = served.call("GET", "/api/parameters")[2]
    assert spec["services"]["frontend"]["note"] == "after the preview", spec
    page.click("#params-conflict-reload")
    expect(conflict).to_be_hidden(timeout=15_000)
    expect(editor).to_have_value(mentions("after the preview"), timeout=15_000)
    watch.clean()


def someone_else(served: Any, note: str) -> None:
    """Another writer changes the parameters behind the page's back."""
    status, _, body = served.call("PATCH", "/api/parameters",
                                  {"services": {"frontend": {"note": note}}})
    assert status == 200, body


def edit_note(editor: Any, note: str) -> None:
    """The page's own edit: a note on frontend, in the YAML editor."""
    doc = yaml.safe_load(editor.input_value())
    doc["services"]["frontend"]["note"] = note
    editor.fill(yaml.safe_dump(doc))


def test_markup_in_values_is_text_and_read_only_sees_no_write_control(
        browser: Any, served: Any, app: App) -> None:
    status, _, body = served.call("PATCH", "/api/parameters",
                                  {"services": {"frontend": {"note": XSS}}})
    assert status == 200, body
    pod = wait_for(lambda: pods(app, "frontend"), timeout=60, message="a frontend Pod")[0]
    kubelet.post_event(app.kube, pod, "MarkupProbe", XSS)
    wait_for(lambda: any(e["reason"] == "MarkupProbe" for e in served.call(
        "GET", "/api/events?limit=200")[2]["events"]), timeout=60,
        message="the event in the store")

    page, watch, response = _open(browser, served, served.read_token)
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, csp
    assert "unsafe-inline" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    expect(page.locator("#who")).to_have_text("read-only")
    expect(page.locator("#params-view")).to_contain_text(XSS, timeout=15_000)
    message = page.locator('#events li[data-reason="MarkupProbe"] .message')
    expect(message.first).to_contain_text(XSS, timeout=30_000)
    for name in SERVICES:
        expect(_service(page, name)).to_be_visible(timeout=30_000)
    expect(page.locator("#history tbody tr").first).to_be_visible(timeout=30_000)
    # No write control anywhere: only the event filters are buttons.
    expect(page.locator("[data-write]")).to_have_count(0)
    for gone in ("#params-text", "#params-apply", "#suspend", "#resume",
                 "#services button", "#history button"):
        expect(page.locator(gone)).to_have_count(0)
    ids = page.eval_on_selector_all("main button", "bs => bs.map(b => b.id)")
    assert set(ids) <= {"ev-errors", "ev-all"}, ids
    # What the token may do was asked (GET /api/whoami), not tried with a refused write.
    assert watch.writes == [], watch.writes
    served.shot(page, "read-only")

    # The stream's filters: by service, then by object (the server filters; the page
    # shows what arrives).
    def shown(attribute: str) -> set[str]:
        return set(page.eval_on_selector_all(
            "#events li", f"ls => ls.map(l => l.dataset.{attribute})"))
    page.fill("#ev-service", "redis")
    expect(message).to_have_count(0, timeout=15_000)
    expect(page.locator('#events li[data-service="redis"]').first).to_be_visible(
        timeout=15_000)
    assert shown("service") == {"redis"}
    page.fill("#ev-service", "")
    deployment = f"{app.namespace}/Deployment/frontend"
    page.fill("#ev-resource", deployment)
    expect(message.first).to_be_visible(timeout=15_000)
    expect(page.locator(f'#events li:not([data-resource="{deployment}"])')).to_have_count(
        0, timeout=15_000)
    assert shown("resource") == {deployment}
    assert page.evaluate("window.__xss") is None
    assert page.locator("main img, main script").count() == 0
    watch.clean()

    # The writer's editor holds the same value, as text too.
    page, watch, _ = _open(browser, served, served.write_token)
    expect(page.locator("#params-text")).to_have_value(mentions(XSS), timeout=15_000)
    expect(page.locator('#events li[data-reason="MarkupProbe"] .message').first
           ).to_contain_text(XSS, timeout=30_000)
    assert page.evaluate("window.__xss") is None
    assert page.locator("main img, main script").count() == 0
    watch.clean()


def test_actions_ask_first_and_do_what_they_say(browser: Any, served: Any, app: App) -> None:
    page, watch, _ = _open(browser, served, served.write_token)
    redis = _service(page, "redis")
    expect(redis).to_be_visible(timeout=30_000)

    # down, cancelled: nothing is sent, redis stays deployed.
    redis.locator('button[data-op="down"]').click()
    expect(page.locator("#confirm")).to_be_visible()
    expect(page.locator("#confirm-text")).to_contain_text("redis")
    page.click("#confirm-cancel")
    expect(page.locator("#confirm")).to_be_hidden()
    assert served.call("GET", "/api/services")[2]["services"] and all(
        s["deployed"] for s in served.call("GET", "/api/services")[2]["services"])

    # update, confirmed: the contract's answer is shown.
    redis.locator('button[data-op="update"]').click()
    page.click("#confirm-ok")
    expect(page.locator("#notice")).to_contain_text("Successfully updated all manifests",
                                                    timeout=60_000)

    # suspend and resume: the instance says so, and so does the object.
    suspended = page.locator('#instances tr[data-instance="default"] td').nth(3)
    page.click("#suspend")
    page.click("#confirm-ok")
    expect(page.locator("#notice")).to_contain_text("suspended", timeout=30_000)
    expect(suspended).to_have_text("yes", timeout=30_000)
    assert app.resource()["spec"].get("suspend") is True
    served.shot(page, "suspended")
    page.click("#resume")
    page.click("#confirm-ok")
    expect(page.locator("#notice")).to_contain_text("resumed", timeout=30_000)
    expect(suspended).to_have_text("no", timeout=30_000)
    assert app.resource()["spec"].get("suspend") is False
    watch.clean()
