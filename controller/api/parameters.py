"""The parameters endpoints: read, replace, patch, inspect, history and rollback.

HTTP only: the body's shape is checked here (an object of `global`/`services`), the rest
is the service's (runtime/service.py): Git or the DeploymentParameters object, validation
against the CRD's schema before any request (400 validation_error naming the path), the
conflict rules of concurrent writers, redaction for callers without the write scope.

Every answer about the parameters in force carries `ETag: "<version>"` (opaque: the
object's generation and uid, or the Git blob SHA of the parameters file); writes and rollback honour
`If-Match` (412 precondition_failed with `details.current` when stale; `*` matches any).
"""

from __future__ import annotations

import falcon

from controller.api.common import caller, etag, if_match, instance_param, int_param, json_body
from controller.api.deploying import check_spec_shape
from controller.api.security import scope_of
from controller.errors import InvalidRequestError
from controller.runtime.service import Service, Versioned


def _answer(resp: falcon.Response, result: Versioned) -> None:
    etag(resp, result.version)
    resp.media = result.body


class _Base:
    def __init__(self, service: Service) -> None:
        self.service = service


class ParametersRoot(_Base):
    """GET/POST/PATCH /api/parameters."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        _answer(resp, self.service.parameters(instance_param(req), caller(req)))

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        spec = check_spec_shape(json_body(req))
        _answer(resp, self.service.replace_parameters(instance_param(req), spec, caller(req),
                                                      if_match(req)))

    def on_patch(self, req: falcon.Request, resp: falcon.Response) -> None:
        patch = check_spec_shape(json_body(req))
        _answer(resp, self.service.patch_parameters(instance_param(req), patch, caller(req),
                                                    if_match(req)))


class Instances(_Base):
    """GET /api/instances (and /api/parameters/instances): the reconciled instances the
    caller may see, with Ready, revision, last pass, health summary, suspended."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"instances": self.service.instances(scope_of(req))}


class Schema(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.service.schema()


class Values(_Base):
    """GET /api/parameters/values: effective (merged) values of every service."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.service.values(instance_param(req), caller(req))


class ServiceValues(_Base):
    """GET /api/parameters/{service}: the service's own values and the merged result."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, service: str) -> None:
        _answer(resp, self.service.service_values(instance_param(req), service, caller(req)))


class HistoryList(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = int_param(req, "limit", 50, 1, 500)
        resp.media = {"history": self.service.history(instance_param(req), limit,
                                                      caller(req))}


class Rollback(_Base):
    """POST /api/parameters/rollback {"revision": "..."}: restore a recorded spec."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = json_body(req, {})
        revision = body.get("revision") if isinstance(body, dict) else None
        if not isinstance(revision, str) or not revision:
            raise InvalidRequestError("'revision' is required (see /api/parameters/history)",
                                      {"field": "revision"})
        _answer(resp, self.service.rollback(instance_param(req), revision, caller(req),
                                            if_match(req)))
