"""Every error leaves the API in one envelope: {"error": code, "message": ..., "details"}.

The codes and their HTTP statuses are the contract agents program against; they are
mapped here and nowhere else.
"""

from __future__ import annotations

import logging
from typing import Any

import falcon

from controller.errors import ConductorError

log = logging.getLogger(__name__)

STATUS = {
    "not_found": 404,
    "validation_error": 400,
    "invalid_yaml": 400,
    "invalid_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "conflict": 409,
    "precondition_failed": 412,
    "rate_limited": 429,
    "payload_too_large": 413,
    "method_not_allowed": 405,
    "kubernetes_error": 502,
    "not_leader": 503,
    "unavailable": 503,  # accepted, but the replica carrying it out stopped: retry
    "source_error": 502,
    "reconciliation_error": 500,
    "internal_error": 500,
}


def envelope(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": code, "message": message, "details": details or {}}


# RFC 6750: a 401 says how to authenticate.
CHALLENGE = 'Bearer realm="conductor"'


async def handle_conductor_error(req: falcon.Request, resp: falcon.Response,
                                 ex: ConductorError, params: dict[str, Any]) -> None:
    resp.status = falcon.code_to_http_status(STATUS.get(ex.code, 500))
    resp.media = ex.to_dict()
    if ex.code == "unauthorized":
        resp.set_header("WWW-Authenticate", CHALLENGE)


async def handle_http_error(req: falcon.Request, resp: falcon.Response,
                            ex: falcon.HTTPError, params: dict[str, Any]) -> None:
    _http_error(req, resp, ex)


def _http_error(req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError) -> None:
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
            401: "unauthorized", 403: "forbidden", 429: "rate_limited"}.get(
        ex.status_code, "invalid_request" if ex.status_code < 500 else "internal_error")
    resp.status = ex.status
    resp.media = envelope(code, ex.description or ex.title or code,
                          {"path": req.path, "method": req.method})
    headers = ex.headers or {}
    pairs = headers.items() if isinstance(headers, dict) else list(headers)
    for name, value in pairs:
        resp.set_header(str(name), str(value))
    if ex.status_code == 401:
        resp.set_header("WWW-Authenticate", CHALLENGE)


async def handle_unexpected(req: falcon.Request, resp: falcon.Response, ex: Exception,
                            params: dict[str, Any]) -> None:
    if isinstance(ex, falcon.HTTPError):
        _http_error(req, resp, ex)
        return
    log.exception("unhandled error on %s %s", req.method, req.path)
    resp.status = falcon.HTTP_500
    resp.media = envelope("internal_error", "internal error",
                          {"exception": type(ex).__name__})


def install(app: Any) -> None:
    # Falcon picks the most specific handler registered for an exception's class.
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(falcon.HTTPError, handle_http_error)
    app.add_error_handler(ConductorError, handle_conductor_error)
