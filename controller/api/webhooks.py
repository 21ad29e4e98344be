"""POST /api/webhooks/git: a push notification wakes the loop now instead of at the poll.

GitHub (X-Hub-Signature-256), Gitea (X-Gitea-Signature) and generic callers
(X-Conductor-Signature) sign the body with HMAC-SHA256; GitLab sends its secret token
(X-Gitlab-Token); a generic caller may also send `Authorization: Bearer <secret>`. All are
compared in constant time against the configured secret. The answer is immediate (202):
the fetch and the pass happen in the loop.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import falcon

from controller.api.common import body_bytes
from controller.errors import ForbiddenError, UnauthorizedError
from controller.main import Controller


def _signature_ok(secret: bytes, body: bytes, presented: str) -> bool:
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest()
    presented = presented.removeprefix("sha256=")
    return hmac.compare_digest(expected, presented.strip().lower())


class GitWebhook:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def _secret(self) -> bytes:
        path = self.controller.cfg.git.webhook_secret_file
        if not path:
            raise ForbiddenError("webhooks are disabled: no webhook secret is configured",
                                 {"hint": "set CONDUCTOR_GIT_WEBHOOK_SECRET_FILE"})
        return Path(path).read_bytes().strip()

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        secret = self._secret()
        body = body_bytes(req)
        provider = "generic"
        if req.get_header("X-Hub-Signature-256"):
            provider = "github"
            ok = _signature_ok(secret, body, req.get_header("X-Hub-Signature-256") or "")
        elif req.get_header("X-Gitea-Signature"):
            provider = "gitea"
            ok = _signature_ok(secret, body, req.get_header("X-Gitea-Signature") or "")
        elif req.get_header("X-Gitlab-Token") is not None:
            provider = "gitlab"
            ok = hmac.compare_digest(secret, (req.get_header("X-Gitlab-Token") or "").encode())
        elif req.get_header("X-Conductor-Signature"):
            ok = _signature_ok(secret, body, req.get_header("X-Conductor-Signature") or "")
        else:
            scheme, _, token = (req.get_header("Authorization") or "").partition(" ")
            ok = scheme.lower() == "bearer" and hmac.compare_digest(secret, token.encode())
        if not ok:
            raise UnauthorizedError("webhook signature or token does not match",
                                    {"provider": provider})
        ref = _ref_of(body)
        configured = self.controller.cfg.git.ref
        if ref and ref.removeprefix("refs/heads/").removeprefix("refs/tags/") != configured:
            resp.status = falcon.HTTP_202
            resp.media = {"message": f"ignored: push to {ref}, watching {configured}",
                          "provider": provider, "triggered": False}
            return
        self.controller.loop.wake("webhook")
        resp.status = falcon.HTTP_202
        resp.media = {"message": "reconciliation triggered", "provider": provider,
                      "triggered": True, "ref": ref}


def _ref_of(body: bytes) -> str:
    """The pushed ref of GitHub/GitLab/Gitea push payloads ("" when none is given)."""
    try:
        doc: Any = json.loads(body or b"{}")
    except ValueError:
        return ""
    return str(doc.get("ref") or "") if isinstance(doc, dict) else ""
