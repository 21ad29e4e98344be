"""GET /openapi.json: the API described for agents and tools (OpenAPI 3.0).

Written by hand next to the routes, with response schemas loose enough to grow (we add,
never break) but strict about the contract's fields, and request schemas exactly as strict
as the parsers in `common.py`: what the document calls invalid is answered 400 and changes
nothing (a query parameter given empty is invalid, not "absent"). A test keeps its paths
and methods identical to the app's routes, and a property-based run checks both ways.
"""

from __future__ import annotations

from typing import Any

import falcon

from controller.api.errors import STATUS
from controller.api.ui import TYPES as UI_TYPES

JSON = "application/json"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _resp(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = {JSON: {"schema": schema}}
    return out


ERR = _resp("error envelope", _ref("Error"))
ERRORS = {"400": ERR, "401": ERR, "403": ERR, "404": ERR, "409": ERR, "413": ERR,
          "429": ERR, "500": ERR, "502": ERR, "503": ERR}
# Writes that honour If-Match: a stale version is 412 precondition_failed, the current one
# in details.current. `*` matches any version; without the header nothing is compared.
IF_MATCH = {"name": "If-Match", "in": "header", "required": False,
            "description": 'the parameters version read before (an ETag: "<version>"), or '
                           "*; a stale one answers 412 precondition_failed",
            "schema": {"type": "string", "minLength": 1}}
STALE = {"412": _resp("If-Match named a version that is no longer current "
                      "(details.current is the current one)", _ref("Error"))}
# Parameters answers carry the version they reflect.
ETAG = {"ETag": {"description": "the parameters version, quoted and opaque (the object's "
                                "generation and uid, which move with the spec only; or the "
                                "Git blob SHA of the parameters file)",
                 "schema": {"type": "string"}}}


def _versioned(response: dict[str, Any]) -> dict[str, Any]:
    return {**response, "headers": ETAG}
INSTANCE = {"name": "instance", "in": "query", "required": False,
            "description": "DeploymentParameters object (default: the controller's); "
                           "add ?namespace= where instances of that name span namespaces",
            "schema": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
                       "minLength": 1, "maxLength": 63}}
# `since`/`until`: an RFC 3339 time, or a duration back from now.
TIME = {"type": "string", "minLength": 1, "anyOf": [
    {"format": "date-time"}, {"pattern": r"^[0-9]+(\.[0-9]+)?(ms|s|m|h|d)$"}]}
EVENT_FILTERS: list[dict[str, Any]] = [
    {"name": "type", "in": "query", "schema": {"type": "string",
                                               "enum": ["error", "warning", "info",
                                                        "success"]}},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                "maximum": 1000}},
    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0,
                                                 "maximum": 10000}},
    # Exact matches on what the events carry: any other value simply matches nothing.
    {"name": "resource", "in": "query", "schema": {"type": "string", "minLength": 1},
     "description": "namespace/Kind/name"},
    {"name": "service", "in": "query", "schema": {"type": "string", "minLength": 1}},
    {"name": "since", "in": "query", "schema": TIME,
     "description": "RFC 3339 time, or a duration back from now (500ms, 30s, 15m, 2h, 7d)"},
    {"name": "until", "in": "query", "schema": TIME,
     "description": "RFC 3339 time, or a duration back from now (500ms, 30s, 15m, 2h, 7d)"},
    {**INSTANCE, "description": "only events about this DeploymentParameters object "
                                "(default: every object's)"},
    {"name": "namespace", "in": "query", "required": False,
     "description": "with instance: that namespace's object only (an instance is its "
                    "namespace and name)",
     "schema": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                "minLength": 1, "maxLength": 63}},
]
SERVICES_BODY = {"required": False, "content": {JSON: {"schema": _ref("ServiceSelection")}}}
DEPLOY_PARAMS: list[dict[str, Any]] = [INSTANCE,
                 {"name": "wait", "in": "query", "schema": {"type": "boolean"}},
                 {"name": "timeout", "in": "query", "schema": {"type": "number", "minimum": 0,
                                                               "maximum": 3600}},
                 {"name": "waitHealthy", "in": "query", "schema": {"type": "boolean"},
                  "description": "after applying, wait until the services are healthy; "
                                 "an unhealthy one answers reconciliation_error, services "
                                 "still progressing at healthTimeout answer 202"},
                 {"name": "healthTimeout", "in": "query",
                  "schema": {"type": "number", "minimum": 0, "maximum": 3600}}]


def _op(summary: str, responses: dict[str, Any], params: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None, tag: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"summary": summary, "responses": {**responses, **ERRORS}}
    if params:
        out["parameters"] = params
    if body:
        out["requestBody"] = body
    if tag:
        out["tags"] = [tag]
    return out


FORCE = {"name": "force", "in": "query", "schema": {"type": "boolean"},
         "description": "apply even though the instance is suspended (409 otherwise)"}


def _deploy(what: str, suspendable: bool = True) -> dict[str, Any]:
    params = [*DEPLOY_PARAMS, FORCE] if suspendable else DEPLOY_PARAMS
    return {"post": _op(f"{what} services (all when none are named); idempotent",
                        {"200": _resp("done, with a result per object", _ref("DeployResult")),
                         "202": _resp("still running (follow the operation), or applied "
                                      "but not yet healthy (waitHealthy)", {"anyOf": [
                                          _ref("Operation"), _ref("DeployResult")]}),
                         **STALE},
                        [*params, IF_MATCH], SERVICES_BODY, "deploy")}


NO_BODY = {"required": False, "content": {JSON: {"schema": {
    "type": "object", "additionalProperties": False}}}}
PARAMS_BODY = {"required": True, "content": {JSON: {"schema": _ref("ParametersSpec")}}}
PATCH_BODY = {"required": True, "content": {JSON: {"schema": _ref("ParametersPatch")}}}
OBJ = {"type": "object"}

PATHS: dict[str, Any] = {
    "/healthz": {"get": _op("liveness", {"200": _resp("alive", OBJ)}, tag="probes")},
    "/readyz": {"get": _op("readiness and role", {"200": _resp("ready", OBJ),
                                                  "503": _resp("starting", OBJ)},
                           tag="probes")},
    "/metrics": {"get": {"summary": "Prometheus metrics", "tags": ["probes"],
                         "responses": {"200": {"description": "text exposition format",
                                               "content": {"text/plain": {
                                                   "schema": {"type": "string"}}}}}}},
    "/openapi.json": {"get": {"summary": "this document", "tags": ["probes"],
                              "responses": {"200": _resp("OpenAPI 3.0", OBJ)}}},
    # The dashboard (api/ui.py): a page and its static files, open (they hold no data).
    "/ui": {"get": {"summary": "the dashboard page", "tags": ["ui"], "responses": {
        "200": {"description": "HTML", "content": {"text/html": {
            "schema": {"type": "string"}}}}, "304": {"description": "not modified"},
        **ERRORS}}},
    "/ui/{name}": {"get": {"summary": "one of the dashboard's files", "tags": ["ui"],
                           "parameters": [{"name": "name", "in": "path", "required": True,
                                           "schema": {"type": "string"}}],
                           "responses": {"200": {"description": "the file", "content": {
                               media: {"schema": {"type": "string"}} for media in sorted(
                                   {t.split(";")[0] for t in UI_TYPES.values()})}},
                                         "304": {"description": "not modified"},
                                         **ERRORS}}},
    "/api/status": {"get": _op("controller status: leader, source, last pass",
                               {"200": _resp("status", _ref("Status"))}, tag="status")},
    "/api/services": {"get": _op("all services", {"200": _resp("services",
                                                               _ref("ServiceList"))},
                                 [INSTANCE], tag="services")},
    "/api/services/health": {"get": _op("health of every service",
                                        {"200": _resp("health", _ref("HealthList"))},
                                        [INSTANCE], tag="services")},
    "/api/services/{name}": {"get": _op(
        "one service: objects, health with reasons, recent events",
        {"200": _resp("service", _ref("ServiceDetail"))},
        [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
         INSTANCE], tag="services")},
    "/api/up": _deploy("deploy"),
    "/api/update": _deploy("re-read parameters and apply"),
    "/api/down": _deploy("remove", suspendable=False),
    "/api/plan": {"post": {**_op(
        "dry run of up/update with diffs (server-side dry-run), of the parameters in "
        "force or of a draft; writes nothing", {"200": _resp("plan", _ref("Plan"))},
        [INSTANCE], {"required": False, "content": {JSON: {"schema": _ref("PlanRequest")}}},
        "deploy"),
        "description": "Without a draft, what up/update would do now. With `parameters` "
                       "(a whole spec) or `patch` (a JSON merge patch on the current spec), "
                       "and with a Git source `ref`, what they would do if written. The "
                       "answer is kept for 10 minutes under its `planId` (GET "
                       "/api/plans/{planId}), with `basedOn`: the parameters version it was "
                       "planned against (send it as If-Match when writing the change)."}},
    "/api/plans/{plan_id}": {"get": _op(
        "a plan made lately (until its expiresAt; 404 after)",
        {"200": _resp("plan", _ref("Plan"))},
        [{"name": "plan_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        tag="deploy")},
    "/api/suspend": {"post": _op(
        "suspend the instance: passes plan and report drift but apply and prune nothing "
        "(spec.suspend: true); idempotent", {"200": _resp("suspended", _ref("Suspension"))},
        [INSTANCE], NO_BODY, "deploy")},
    "/api/resume": {"post": _op(
        "resume a suspended instance: its next pass applies what waited; idempotent",
        {"200": _resp("resumed", _ref("Suspension"))}, [INSTANCE], NO_BODY, "deploy")},
    "/api/operations/{op_id}": {"get": _op(
        "a running or finished operation", {"200": _resp("operation", _ref("Operation"))},
        [{"name": "op_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        tag="deploy")},
    "/api/events": {"get": _op("events, newest first",
                               {"200": _resp("events", _ref("EventList"))},
                               EVENT_FILTERS, tag="events")},
    "/api/events/errors": {"get": {**_op(
        "recent errors and warnings", {"200": _resp("events", _ref("EventList"))},
        [p for p in EVENT_FILTERS if p["name"] != "type"], tag="events"),
        "description": "Newest first, events of two types: `error` (failed passes, objects "
                       "that failed to apply or delete, objects that turned unhealthy) and "
                       "`warning` (Kubernetes Warning events of managed objects and of "
                       "their Pods and ReplicaSets, the controller's own warnings). "
                       "`/api/events?type=error` lists errors only."}},
    "/api/events/stream": {"get": {
        "summary": "Server-Sent Events with the same filters; Last-Event-ID resumes",
        "tags": ["events"], "parameters": [
            *EVENT_FILTERS,
            {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
            {"name": "duration", "in": "query",
             "schema": {"type": "number", "minimum": 0, "maximum": 3600}}],
        "responses": {"200": {"description": "text/event-stream: one message per event, "
                                             "`data` being the Event as JSON",
                              "content": {"text/event-stream": {
                                  "schema": _ref("StreamMessage")}}}, **ERRORS}}},
    "/api/events/{namespace}/{kind}/{name}": {"get": _op(
        "events of one object", {"200": _resp("events", _ref("EventList"))},
        [{"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
         for n in ("namespace", "kind", "name")]
        + [p for p in EVENT_FILTERS if p["name"] != "resource"], tag="events")},
    "/api/parameters": {
        "get": _op("the parameters in force", {"200": _versioned(_resp(
            "spec", _ref("ParametersInForce")))}, [INSTANCE], tag="parameters"),
        "post": _op("replace the parameters (validated against the CRD schema)",
                    {"200": _versioned(_resp("updated", _ref("ParametersWritten"))),
                     **STALE}, [INSTANCE, IF_MATCH], PARAMS_BODY, "parameters"),
        "patch": _op("JSON merge patch of the parameters (RFC 7386: null deletes)",
                     {"200": _versioned(_resp("updated", _ref("ParametersWritten"))),
                      **STALE}, [INSTANCE, IF_MATCH], PATCH_BODY, "parameters")},
    "/api/parameters/instances": {"get": _op(
        "DeploymentParameters objects", {"200": _resp("instances", OBJ)},
        tag="parameters")},
    "/api/instances": {"get": _op(
        "the reconciled instances the caller may see: Ready, revision, last pass, health "
        "summary, suspended", {"200": _resp("instances", OBJ)}, tag="parameters")},
    "/api/whoami": {"get": _op(
        "the caller's token, scopes and instance restriction", {"200": _resp("caller", OBJ)},
        tag="status")},
    "/api/parameters/schema": {"get": _op("the CRD's spec schema",
                                          {"200": _resp("schema", OBJ)}, tag="parameters")},
    "/api/parameters/values": {"get": _op("effective values per service",
                                          {"200": _resp("values", OBJ)}, [INSTANCE],
                                          tag="parameters")},
    "/api/parameters/history": {"get": _op(
        "recorded parameter revisions", {"200": _resp("history", OBJ)},
        [INSTANCE, {"name": "limit", "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 500}}],
        tag="parameters")},
    "/api/parameters/rollback": {"post": _op(
        "restore a recorded revision",
        {"200": _versioned(_resp("rolled back", _ref("ParametersWritten"))), **STALE},
        [INSTANCE, IF_MATCH], {"required": True, "content": {JSON: {"schema": {
            "type": "object", "required": ["revision"],
            "properties": {"revision": {"type": "string", "minLength": 1}}}}}},
        "parameters")},
    "/api/parameters/{service}": {"get": _op(
        "one service's values", {"200": _versioned(_resp("values", OBJ))},
        [{"name": "service", "in": "path", "required": True, "schema": {"type": "string"}},
         INSTANCE], tag="parameters")},
    "/api/webhooks/git": {"post": _op(
        "Git push webhook (GitHub, GitLab, Gitea, generic); signature verified",
        {"202": _resp("accepted", OBJ)}, body={"required": False, "content": {
            JSON: {"schema": OBJ}}}, tag="webhooks")},
    "/api/cluster/requirements": {"get": _op(
        "the cluster against requirements.yaml", {"200": _resp("checks", OBJ)},
        tag="status")},
}

STR = {"type": "string"}
SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error", "message", "details"],
              "properties": {"error": {"type": "string", "enum": sorted(STATUS)},
                             "message": STR, "details": OBJ}},
    # No `services` (or []) selects every service; any other value must be a list of names
    # (a falsy "" or null selecting everything would take the whole app down).
    "ServiceSelection": {"type": "object", "additionalProperties": False, "properties": {
        "services": {"type": "array", "items": {"type": "string", "minLength": 1}}}},
    "ObjectResult": {"type": "object", "required": ["resource", "service", "result"],
                     "properties": {"resource": STR, "service": STR,
                                    "result": {"type": "string",
                                               "enum": ["applied", "unchanged", "deleted",
                                                        "kept", "failed"]},
                                    "action": STR, "reason": STR, "error": OBJ}},
    "DeployResult": {"type": "object", "required": ["message"], "properties": {
        "message": STR, "services": {"type": "array", "items": STR}, "revision": STR,
        "counts": OBJ, "results": {"type": "array", "items": _ref("ObjectResult")},
        "operation": STR, "health": OBJ}},
    "Operation": {"type": "object", "required": ["id", "status"], "properties": {
        "id": STR, "operation": STR, "status": {"type": "string", "enum": [
            "running", "succeeded", "failed"]}, "report": OBJ, "links": OBJ}},
    # A plan's request: the service selection, and optionally a draft to plan instead of
    # the parameters in force (a whole spec or a merge patch, not both; a ref with Git).
    "PlanRequest": {"type": "object", "additionalProperties": False, "properties": {
        "services": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "parameters": _ref("ParametersSpec"), "patch": _ref("ParametersPatch"),
        "ref": {"type": "string", "minLength": 1, "maxLength": 255,
                "pattern": r"\S"}},
        "not": {"required": ["parameters", "patch"]}},
    "Plan": {"type": "object", "required": ["changes", "planId", "expiresAt", "basedOn"],
             "properties": {
        "services": {"type": "array", "items": STR}, "revision": STR, "counts": OBJ,
        "changes": {"type": "array", "items": _ref("PlannedChange")},
        "planId": STR, "expiresAt": {"type": "string", "format": "date-time"},
        "basedOn": {"type": "string", "description": "the parameters version planned "
                                                     "against"},
        "instance": STR, "draft": {"type": "boolean"},
        # Fields left to someone else by spec.ignore, per object; set only when any.
        "ignored": {"type": "array", "items": {"type": "object", "properties": {
            "resource": STR, "service": STR, "paths": {"type": "array", "items": STR}}}},
        "suspended": {"type": "boolean"}}},
    "PlannedChange": {"type": "object", "required": ["resource", "service", "action"],
                      "properties": {"resource": STR, "service": STR, "action": STR,
                                     "reason": STR, "diff": STR, "error": OBJ}},
    "Suspension": {"type": "object", "required": ["message", "instance", "suspended"],
                   "properties": {"message": STR, "instance": STR, "namespace": STR,
                                  "suspended": {"type": "boolean"},
                                  "changed": {"type": "boolean"}}},
    "ServiceList": {"type": "object", "required": ["services"], "properties": {
        "services": {"type": "array", "items": {
            "type": "object", "required": ["name", "namespace"],
            "properties": {"name": STR, "namespace": STR, "deployed": {"type": "boolean"},
                           "status": STR}}}}},
    "ServiceHealth": {"type": "object", "required": ["name", "namespace", "status",
                                                     "lastChecked"],
                      "properties": {"name": STR, "namespace": STR,
                                     "status": {"type": "string", "enum": [
                                         "healthy", "progressing", "unhealthy", "unknown",
                                         "down", "suspended"]},
                                     "lastChecked": STR, "hint": STR,
                                     "objects": {"type": "array", "items": OBJ}}},
    "HealthList": {"type": "object", "required": ["services"], "properties": {
        "services": {"type": "array", "items": _ref("ServiceHealth")}}},
    "ServiceDetail": {"type": "object", "required": ["name", "health"], "properties": {
        "name": STR, "health": _ref("ServiceHealth"),
        "objects": {"type": "array", "items": OBJ},
        "events": {"type": "array", "items": OBJ}}},
    "Event": {"type": "object", "required": ["id", "timestamp", "type", "message"],
              "properties": {"id": {"type": "integer"}, "timestamp": STR,
                             "type": {"type": "string", "enum": ["error", "warning", "info",
                                                                 "success"]},
                             "resource": STR, "service": STR, "message": STR, "reason": STR,
                             "details": OBJ, "instance": STR, "namespace": STR}},
    # One Server-Sent Events message (the schema applies to each, as tools read streams).
    "StreamMessage": {"type": "object", "required": ["id", "event", "data"], "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "event": {"type": "string", "enum": ["error", "warning", "info", "success"]},
        "data": {"type": "string", "description": "the Event as JSON"}}},
    "EventList": {"type": "object", "required": ["events"], "properties": {
        "events": {"type": "array", "items": _ref("Event")}, "count": {"type": "integer"}}},
    "ParametersSpec": {"type": "object", "properties": {
        "global": {"type": "object"}, "services": {
            "type": "object", "additionalProperties": {"type": "object"}}},
        "additionalProperties": False},
    # What GET answers: the spec, with the controls set on the object (kubectl, /api/suspend).
    "ParametersInForce": {"type": "object", "properties": {
        "global": {"type": "object"}, "services": {
            "type": "object", "additionalProperties": {"type": "object"}},
        "suspend": {"type": "boolean"}, "ignore": {"type": "array", "items": OBJ}},
        "additionalProperties": False},
    # A merge patch of ParametersSpec: any map may be null, which deletes it.
    "ParametersPatch": {"type": "object", "properties": {
        "global": {"type": "object", "nullable": True}, "services": {
            "type": "object", "nullable": True,
            "additionalProperties": {"type": "object", "nullable": True}}},
        "additionalProperties": False},
    "ParametersWritten": {"type": "object", "required": ["message", "parameters"],
                          "properties": {"message": STR, "parameters": OBJ,
                                         "revision": STR}},
    # A token limited to other instances than the controller's own gets app, time,
    # leader and `instances` only (its own instances reconciled here).
    "Status": {"type": "object", "required": ["leader"],
               "properties": {"instance": STR, "namespace": STR, "app": STR, "time": STR,
                              "leader": OBJ, "source": OBJ, "lastPass": OBJ, "services": OBJ,
                              "recentErrors": {"type": "array", "items": OBJ},
                              "instances": {"type": "array", "items": OBJ}}},
}


# Every operation's name for generated clients and tool-callers (camelCase, stable: clients
# are written against them, as against the paths).
OPERATION_IDS: dict[tuple[str, str], str] = {
    ("/healthz", "get"): "getLiveness",
    ("/readyz", "get"): "getReadiness",
    ("/metrics", "get"): "getMetrics",
    ("/openapi.json", "get"): "getOpenApi",
    ("/ui", "get"): "getDashboard",
    ("/ui/{name}", "get"): "getDashboardFile",
    ("/api/status", "get"): "getStatus",
    ("/api/services", "get"): "listServices",
    ("/api/services/health", "get"): "getServicesHealth",
    ("/api/services/{name}", "get"): "getService",
    ("/api/up", "post"): "up",
    ("/api/update", "post"): "update",
    ("/api/down", "post"): "down",
    ("/api/plan", "post"): "planChanges",
    ("/api/plans/{plan_id}", "get"): "getPlan",
    ("/api/suspend", "post"): "suspend",
    ("/api/resume", "post"): "resume",
    ("/api/operations/{op_id}", "get"): "getOperation",
    ("/api/events", "get"): "listEvents",
    ("/api/events/errors", "get"): "listErrors",
    ("/api/events/stream", "get"): "streamEvents",
    ("/api/events/{namespace}/{kind}/{name}", "get"): "listResourceEvents",
    ("/api/parameters", "get"): "getParameters",
    ("/api/parameters", "post"): "setParameters",
    ("/api/parameters", "patch"): "patchParameters",
    ("/api/parameters/instances", "get"): "listInstances",
    ("/api/instances", "get"): "listManagedInstances",
    ("/api/whoami", "get"): "whoAmI",
    ("/api/parameters/schema", "get"): "getParametersSchema",
    ("/api/parameters/values", "get"): "getParameterValues",
    ("/api/parameters/history", "get"): "listParametersHistory",
    ("/api/parameters/rollback", "post"): "rollbackParameters",
    ("/api/parameters/{service}", "get"): "getServiceParameters",
    ("/api/webhooks/git", "post"): "gitWebhook",
    ("/api/cluster/requirements", "get"): "checkRequirements",
}


def _named(paths: dict[str, Any]) -> dict[str, Any]:
    """`paths` with each operation's operationId (others' paths, e.g. /ui, keep theirs)."""
    return {path: {method: {**op, "operationId": OPERATION_IDS[(path, method)]}
                   if (path, method) in OPERATION_IDS and isinstance(op, dict) else op
                   for method, op in item.items()} for path, item in paths.items()}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "conductor", "version": "1",
                 "description": "GitOps controller API: deploy, observe and configure a "
                                "multi-service application. Errors use one envelope: "
                                '{"error": code, "message": ..., "details": {...}}.'},
        "paths": _named(PATHS),
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}, {}],
    }


class OpenAPI:
    def __init__(self) -> None:
        self.doc = document()

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.doc
