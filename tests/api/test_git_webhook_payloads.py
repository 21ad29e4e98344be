"""Which repository a push webhook names (issues 13, 14), against the in-memory service:
GitHub's, Gitea's and GitLab's payloads and a generic caller's reach the service with the
pushed ref and every URL the payload gives for the repository (the service wakes the
instances following one of them); a payload naming none leaves the choice to the service
(the controller's repository)."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.api import FakeApi

SECRET = b"payload-secret-0123456789"


def _push(api: FakeApi, payload: Any) -> Any:
    body = json.dumps(payload).encode()
    signature = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    return api.post("/api/webhooks/git", body, headers={"X-Hub-Signature-256": signature})


@pytest.mark.parametrize(("payload", "urls"), [
    ({"ref": "refs/heads/main", "repository": {
        "clone_url": "https://github.com/org/app.git", "ssh_url": "git@github.com:org/app.git",
        "git_url": "git://github.com/org/app.git", "html_url": "https://github.com/org/app"}},
     ["https://github.com/org/app.git", "git@github.com:org/app.git",
      "git://github.com/org/app.git", "https://github.com/org/app"]),
    ({"ref": "refs/heads/main", "project": {
        "git_http_url": "https://gitlab.example.com/g/app.git",
        "git_ssh_url": "git@gitlab.example.com:g/app.git"},
      "repository": {"homepage": "https://gitlab.example.com/g/app"}},
     ["https://gitlab.example.com/g/app", "https://gitlab.example.com/g/app.git",
      "git@gitlab.example.com:g/app.git"]),
    ({"ref": "refs/heads/main", "repository": {"url": "git://127.0.0.1:9418/b.git"}},
     ["git://127.0.0.1:9418/b.git"]),
    ({"ref": "refs/heads/main", "repository": "not a mapping", "project": [1]}, []),
    ({"ref": "refs/heads/main"}, []),
])
def test_the_pushed_repository_reaches_the_service(
        make_fake_api: Callable[..., FakeApi], payload: dict[str, Any],
        urls: list[str]) -> None:
    api = make_fake_api(webhook_secret=SECRET)
    answer = _push(api, payload)
    assert answer.status_code == 202, answer.text
    assert api.service.git_pushes == ["refs/heads/main"]
    assert sorted(api.service.git_repositories[0]) == sorted(urls)
