"""The parameters endpoints: read, replace, patch, inspect, history and rollback.

Writes validate against the CRD's schema first (400 validation_error naming the path; a
body nested too deep or too large is refused before any request) and change only the
DeploymentParameters object (or, with a Git source that may push, a new commit); with a Git
source that may not push they answer 409: the controller never silently diverges from Git.

Writes to the object carry the resourceVersion they were computed from, so two concurrent
writers cannot lose each other's keys: a PATCH whose base changed is re-read and its merge
patch re-applied (a few times); a replace (POST, rollback) answers 409 conflict when the
spec changed under it (a status or annotation write in between is retried, it changed no
parameter).

Readers without the write scope see secret values redacted (see `parameters.redact`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import falcon

from controller.adapters.sources.resource import API_VERSION, KIND, ParametersResource
from controller.api.common import instance_param, int_param, json_body
from controller.errors import ConflictError, InvalidRequestError, NotFoundError
from controller.model import rendering
from controller.model.parameters import (
    Parameters,
    check_limits,
    effective,
    redact,
    section_schema,
    validate_spec,
)
from controller.runtime.controller import Controller

TOP_LEVEL = ("global", "services")
# Writes of one request racing others: enough for a handful of concurrent writers, bounded
# so a hot object answers 409 rather than spin.
WRITE_ATTEMPTS = 8


def may_see_secrets(req: falcon.Request) -> bool:
    """Only a caller who may write the parameters may read their secret values. The auth
    middleware sets the token's scopes; without them, assume the least."""
    scopes = getattr(req.context, "scopes", None)
    return isinstance(scopes, set | frozenset) and "write" in scopes


def _check_shape(spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise InvalidRequestError("request body must be a JSON object with 'global' and/or "
                                  "'services'", {"allowed": list(TOP_LEVEL)})
    unknown = sorted(set(spec) - set(TOP_LEVEL))
    if unknown:
        raise InvalidRequestError(f"unknown top-level field(s): {', '.join(unknown)}",
                                  {"fields": unknown, "allowed": list(TOP_LEVEL)})
    return spec


def _values_replaced(current: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A replace (POST, rollback) replaces the parameter values (`global`, `services`);
    the instance's controls beside them (`suspend`, `ignore`) are kept: a values write
    must not resume a suspended instance or drop its ignore rules (PATCH and
    /api/suspend, /api/resume change those)."""
    kept = {k: v for k, v in current.items() if k not in TOP_LEVEL}
    return {**kept, **{k: v for k, v in values.items() if k in TOP_LEVEL}}


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

    def _redact(self, req: falcon.Request, value: Any, section: str = "") -> Any:
        if may_see_secrets(req):
            return value
        schema = self.controller.engine.schema
        return redact(value, section_schema(schema, section) if section else schema)

    def _write(self, req: falcon.Request, build: Callable[[dict[str, Any]], dict[str, Any]],
               message: str, *, reapply: bool) -> dict[str, Any]:
        """Write `build(current spec)`. `reapply`: a conflict re-reads and builds again (a
        merge patch); otherwise a spec changed by someone else is a 409 (a replace)."""
        instance = self._instance(req)
        cfg = self.controller.cfg
        schema = self.controller.engine.schema
        if cfg.source == "git" and instance == cfg.instance:
            git = self.controller.git_source()
            writable = git is not None and cfg.git.write
            # Validation comes first: an invalid body is a 400 whatever the source allows.
            spec = build(self._spec(req, fresh=writable))
            validate_spec(spec, schema)
            if git is None or not writable:
                raise ConflictError(
                    "parameters come from Git and this controller may not push; change them "
                    "with a commit", {"source": "git", "url": git.url if git else "",
                                      "ref": cfg.git.ref, "hint": "set CONDUCTOR_GIT_WRITE"})
            from controller.adapters.sources.git import author_for  # gitpython: only with Git

            sha = git.write_params(spec, message, author=author_for(_token_name(req)))
            self.controller.loop.wake("api")
            return {"message": "Parameters updated", "parameters": spec, "revision": sha}
        resource = self._resource(req)
        base = resource.get()
        if base is None:
            base = self._recreate(resource, instance, build, reapply)
            if base is None:  # created with exactly this spec
                obj = resource.read()
                return {"message": "Parameters updated",
                        "parameters": obj.get("spec") or {},
                        "revision": f"generation/{obj['metadata'].get('generation')}"}
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            spec = build(dict(base.get("spec") or {}))
            validate_spec(spec, schema)
            try:
                obj = resource.replace_spec(spec, base)
                break
            except ConflictError as e:
                fresh = resource.read()
                changed = _generation(fresh) != _generation(base)
                if attempt == WRITE_ATTEMPTS or (changed and not reapply):
                    e.details["hint"] = ("the parameters were changed by another writer; "
                                         "read them again and retry")
                    e.details["currentGeneration"] = _generation(fresh)
                    raise
                base = fresh
        return {"message": "Parameters updated", "parameters": obj.get("spec") or {},
                "revision": f"generation/{obj['metadata'].get('generation')}"}


    def _recreate(self, resource: ParametersResource, instance: str,
                  build: Callable[[dict[str, Any]], dict[str, Any]],
                  reapply: bool) -> dict[str, Any] | None:
        """The controller's own object is missing (deleted after it was applied: the loop
        has stopped and kept the app). A whole spec (POST, rollback) creates it again; a
        merge patch has nothing to merge into. Returns None when created with the spec,
        or the object another writer created meanwhile (then written over as usual)."""
        cfg = self.controller.cfg
        missing = NotFoundError(
            f"DeploymentParameters {resource.namespace}/{instance} not found",
            {"namespace": resource.namespace, "instance": instance,
             "hint": "POST /api/parameters with the whole spec creates the controller's "
                     "own instance again" if instance == cfg.instance else ""})
        if reapply or instance != cfg.instance:
            raise missing
        spec = build({})
        validate_spec(spec, self.controller.engine.schema)
        created = resource.ensure(seed=spec)
        if (created.get("spec") or {}) == spec:
            self.controller.loop.wake("api")
            return None
        return created


def _token_name(req: falcon.Request) -> str:
    """The API token's name (the auth middleware sets `token:<name>`); "" without auth."""
    client = str(getattr(req.context, "client", "") or "")
    return client.removeprefix("token:") if client.startswith("token:") else ""


def _generation(obj: dict[str, Any]) -> Any:
    return (obj.get("metadata") or {}).get("generation")


class ParametersRoot(_Base):
    """GET/POST/PATCH /api/parameters."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self._redact(req, self._spec(req))

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        spec = _check_shape(json_body(req))
        validate_spec(spec, self.controller.engine.schema)  # before any request
        resp.media = self._write(req, lambda current: _values_replaced(current, spec),
                                 "conductor: replace parameters", reapply=False)

    def on_patch(self, req: falcon.Request, resp: falcon.Response) -> None:
        patch = _check_shape(json_body(req))
        check_limits(patch)  # the merged spec is validated in full once the base is read
        resp.media = self._write(req, lambda current: merge_patch(current, patch),
                                 "conductor: patch parameters", reapply=True)


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
                      "services": {n: self._redact(req, effective(params, n), "service")
                                   for n in names}}


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
        resp.media = {"service": service,
                      "values": self._redact(req, own.services.get(service, {}), "service"),
                      "global": self._redact(req, own.global_, "global"),
                      "effective": self._redact(req, effective(engine.parameters(snap),
                                                               service), "service")}


class HistoryList(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        limit = int_param(req, "limit", 50, 1, 500)
        rows = self.controller.history.list(self._instance(req), limit)
        for row in rows:  # history keeps old values for good: old passwords included
            row["parameters"] = self._redact(req, row["parameters"])
        resp.media = {"history": rows}


class Rollback(_Base):
    """POST /api/parameters/rollback {"revision": "..."}: restore a recorded spec."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = json_body(req, {})
        revision = body.get("revision") if isinstance(body, dict) else None
        if not isinstance(revision, str) or not revision:
            raise InvalidRequestError("'revision' is required (see /api/parameters/history)",
                                      {"field": "revision"})
        instance = self._instance(req)
        entry = self.controller.history.entry(instance, revision)
        if entry is None:
            raise NotFoundError(f"no recorded parameters for revision {revision}",
                                {"revision": revision, "instance": instance})
        if entry["applied"] is False:  # refused when it was current: it would fail again
            raise ConflictError(
                f"revision {revision} was never applied (its pass failed); roll back to a "
                "revision with applied: true", {"revision": revision, "instance": instance,
                                                "applied": False,
                                                "hint": "see /api/parameters/history"})
        spec = entry["parameters"]
        result = self._write(req, lambda current: _values_replaced(current, spec),
                             f"conductor: roll parameters back to {revision}", reapply=False)
        result["message"] = f"Parameters rolled back to {revision}"
        result["rolledBackTo"] = revision
        resp.media = result


