"""The parameters endpoints: read, replace, patch, inspect, history and rollback.

Writes validate against the CRD's schema first (400 validation_error naming the path) and
change only the DeploymentParameters object (or, with a Git source that may push, a new
commit); with a Git source that may not push they answer 409: the controller never
silently diverges from Git.
"""

from __future__ import annotations

from typing import Any

import falcon

from controller import rendering
from controller.api.common import instance_param, int_param, json_body
from controller.errors import ConflictError, InvalidRequestError, NotFoundError
from controller.main import Controller
from controller.parameters import Parameters, effective, validate_spec
from controller.sources.resource import API_VERSION, KIND, ParametersResource

TOP_LEVEL = ("global", "services")


def _check_shape(spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise InvalidRequestError("request body must be a JSON object with 'global' and/or "
                                  "'services'", {"allowed": list(TOP_LEVEL)})
    unknown = sorted(set(spec) - set(TOP_LEVEL))
    if unknown:
        raise InvalidRequestError(f"unknown top-level field(s): {', '.join(unknown)}",
                                  {"fields": unknown, "allowed": list(TOP_LEVEL)})
    return spec


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: maps merge, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


class _Base:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def _instance(self, req: falcon.Request) -> str:
        return instance_param(req, self.controller.cfg.instance)

    def _resource(self, req: falcon.Request) -> ParametersResource:
        return ParametersResource(self.controller.kube, self.controller.cfg,
                                  self._instance(req))

    def _spec(self, req: falcon.Request, fresh: bool = False) -> dict[str, Any]:
        """The parameters in force: the object's spec, or the Git file for a Git source."""
        engine = self.controller.engine_for(self._instance(req))
        return dict(engine.current(fresh).spec)

    def _write(self, req: falcon.Request, spec: dict[str, Any], message: str) -> dict[str, Any]:
        validate_spec(spec, self.controller.engine.schema)
        instance = self._instance(req)
        cfg = self.controller.cfg
        if cfg.source == "git" and instance == cfg.instance:
            git = self.controller.git_source()
            if git is None or not cfg.git.write:
                raise ConflictError(
                    "parameters come from Git and this controller may not push; change them "
                    "with a commit", {"source": "git", "url": git.url if git else "",
                                      "ref": cfg.git.ref, "hint": "set CONDUCTOR_GIT_WRITE"})
            sha = git.write_params(spec, message)
            self.controller.loop.wake("api")
            return {"message": "Parameters updated", "parameters": spec, "revision": sha}
        obj = self._resource(req).replace_spec(spec)
        return {"message": "Parameters updated", "parameters": obj.get("spec") or {},
                "revision": f"generation/{obj['metadata'].get('generation')}"}


class ParametersRoot(_Base):
    """GET/POST/PATCH /api/parameters."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self._spec(req)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        spec = _check_shape(json_body(req))
        resp.media = self._write(req, spec, "conductor: replace parameters")

    def on_patch(self, req: falcon.Request, resp: falcon.Response) -> None:
        patch = _check_shape(json_body(req))
        spec = merge_patch(self._spec(req, fresh=True), patch)
        resp.media = self._write(req, spec, "conductor: patch parameters")


class Instances(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        items, _ = self.controller.kube.list(API_VERSION, KIND, self.controller.cfg.namespace)
        out = []
        for obj in items:
            status = obj.get("status") or {}
            ready = next((c.get("status") for c in status.get("conditions") or []
                          if c.get("type") == "Ready"), "Unknown")
            out.append({"name": obj["metadata"]["name"],
                        "namespace": obj["metadata"]["namespace"],
                        "generation": obj["metadata"].get("generation"),
                        "ready": ready,
                        "lastAppliedRevision": status.get("lastAppliedRevision", ""),
                        "default": obj["metadata"]["name"] == self.controller.cfg.instance})
        resp.media = {"instances": out}


class Schema(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.controller.engine.schema


class Values(_Base):
    """GET /api/parameters/values: effective (merged) values of every service."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        engine = self.controller.engine_for(self._instance(req))
        snap = engine.current()
        params = engine.parameters(snap)
        names = rendering.load_tree(snap.manifest_root).names
        resp.media = {"revision": snap.revision,
                      "services": {n: effective(params, n) for n in names}}


class ServiceValues(_Base):
    """GET /api/parameters/{service}: the service's own values and the merged result."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, service: str) -> None:
        engine = self.controller.engine_for(self._instance(req))
        snap = engine.current()
        names = rendering.load_tree(snap.manifest_root).names
        if service not in names:
            raise NotFoundError(f"unknown service: {service}",
                                {"service": service, "available": names})
        own = Parameters.from_spec(snap.spec)
        resp.media = {"service": service, "values": own.services.get(service, {}),
                      "global": own.global_,
                      "effective": effective(engine.parameters(snap), service)}


class HistoryList(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = int_param(req, "limit", 50, 1, 500)
        resp.media = {"history": self.controller.history.list(self._instance(req), limit)}


class Rollback(_Base):
    """POST /api/parameters/rollback {"revision": "..."}: restore a recorded spec."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = json_body(req, {})
        revision = body.get("revision") if isinstance(body, dict) else None
        if not isinstance(revision, str) or not revision:
            raise InvalidRequestError("'revision' is required (see /api/parameters/history)",
                                      {"field": "revision"})
        instance = self._instance(req)
        spec = self.controller.history.get(instance, revision)
        if spec is None:
            raise NotFoundError(f"no recorded parameters for revision {revision}",
                                {"revision": revision, "instance": instance})
        result = self._write(req, spec, f"conductor: roll parameters back to {revision}")
        result["message"] = f"Parameters rolled back to {revision}"
        result["rolledBackTo"] = revision
        resp.media = result


