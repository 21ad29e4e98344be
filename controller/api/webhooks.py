"""POST /api/webhooks/git: a push notification wakes the instances following the pushed
repository and ref now instead of at the poll — on any replica (the service hands the
wake-up to the owner of each instance).

GitHub (X-Hub-Signature-256), Gitea (X-Gitea-Signature) and generic callers
(X-Conductor-Signature) sign the body with HMAC-SHA256; GitLab sends its secret token
(X-Gitlab-Token); a generic caller may also send `Authorization: Bearer <secret>`. All are
compared in constant time, as bytes, against the configured secret. The secret is read
once, when the app is built: a missing, unreadable or empty file stops the start with a
message naming it (an empty key would let an empty token or an HMAC anyone can compute
through). The answer is immediate (202): the fetch and the pass happen in the loop.
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

import falcon

from controller.api.common import MAX_JSON_DEPTH, body_bytes, check_document, parse_json
from controller.config import GitSettings
from controller.errors import ForbiddenError, InvalidRequestError, UnauthorizedError
from controller.runtime.service import Service


def load_secret(git: GitSettings) -> bytes | None:
    """The webhook secret (None: webhooks are off), or ValueError naming the file."""
    path = git.webhook_secret_file
    if not path:
        return None
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as e:
        raise ValueError(f"webhook secret file {path}: {e.strerror or e} "
                         "(CONDUCTOR_GIT_WEBHOOK_SECRET_FILE)") from e
    if not secret:
        raise ValueError(f"webhook secret file {path} is empty: put a random secret in it, "
                         "or unset CONDUCTOR_GIT_WEBHOOK_SECRET_FILE to turn webhooks off")
    return secret


def _raw(text: str) -> bytes:
    # Header values arrive as str; compare_digest refuses non-ASCII str (a TypeError, i.e.
    # a 500). As bytes, any value is simply a mismatch.
    return text.encode("utf-8", "surrogatepass")


def _signature_ok(secret: bytes, body: bytes, presented: str) -> bool:
    expected = hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
    presented = presented.strip().removeprefix("sha256=")
    return hmac.compare_digest(expected, _raw(presented.lower()))


class GitWebhook:
    """`secret`: as `load_secret` read it when the app was built (None: webhooks off)."""

    def __init__(self, service: Service, secret: bytes | None) -> None:
        self.service = service
        self.secret = secret

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        secret = self.secret
        if secret is None:
            raise ForbiddenError("webhooks are disabled: no webhook secret is configured",
                                 {"hint": "set CONDUCTOR_GIT_WEBHOOK_SECRET_FILE"})
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
            ok = hmac.compare_digest(secret, _raw(req.get_header("X-Gitlab-Token") or ""))
        elif req.get_header("X-Conductor-Signature"):
            ok = _signature_ok(secret, body, req.get_header("X-Conductor-Signature") or "")
        else:
            scheme, _, token = (req.get_header("Authorization") or "").partition(" ")
            ok = scheme.lower() == "bearer" and hmac.compare_digest(secret, _raw(token))
        if not ok:
            raise UnauthorizedError("webhook signature or token does not match",
                                    {"provider": provider})
        ref, repositories = _push_of(body)
        # Every instance following that repository and ref is woken, whichever replica
        # owns it (this one may not: the owner is asked through the object).
        answer = self.service.git_push(ref, repositories)
        resp.status = falcon.HTTP_202
        resp.media = {"message": answer["message"], "provider": provider, **answer}


# Where GitHub/Gitea (`repository`) and GitLab (`project`, `repository`) name the pushed
# repository; a generic caller may send {"repository": {"url": ...}}.
_URL_KEYS = ("clone_url", "ssh_url", "git_url", "html_url", "url", "git_http_url",
             "git_ssh_url", "http_url", "web_url", "homepage")


def _push_of(body: bytes) -> tuple[str, list[str]]:
    """The pushed ref and the URLs naming the pushed repository, from GitHub/GitLab/Gitea
    push payloads ("" and none when not given: a generic caller's empty or non-JSON body
    wakes the instances following the controller's repository). A JSON body that cannot
    be handled (nested too deep, lone surrogates) is the caller's invalid_request."""
    doc: Any = None
    try:
        doc = parse_json(body or b"{}")
        problem = check_document(doc)
    except RecursionError:
        problem = f"nested deeper than {MAX_JSON_DEPTH} levels"
    except ValueError:
        return "", []
    if problem:
        raise InvalidRequestError(f"webhook body is not usable JSON: {problem}",
                                  {"max_depth": MAX_JSON_DEPTH})
    if not isinstance(doc, dict):
        return "", []
    ref = doc.get("ref")
    urls: list[str] = []
    for part in ("repository", "project"):
        named = doc.get(part)
        if isinstance(named, dict):
            urls += [v for k in _URL_KEYS if isinstance(v := named.get(k), str) and v]
    return (ref if isinstance(ref, str) else ""), list(dict.fromkeys(urls))
