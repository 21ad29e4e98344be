"""`conductor mcp`: a Model Context Protocol server (stdio) in front of a conductor API.

Agents reach for MCP first; this gives them every workflow of the reference document as
tools, on the official `mcp` SDK, talking to the conductor over HTTP (so it works against
a remote controller, with its URL and token).

Safety goes beyond a read-only switch. `--read-only` registers the reading tools only (a
write tool that is absent cannot be called). Otherwise every state-changing tool takes the
`planId` of a plan of the same change made in this session, and is refused when
- the plan is unknown to this session, expired, or of another change (other parameters,
  other services than it showed), or
- the parameters moved since the plan: a fresh GET's version must be the plan's `basedOn`
  (or the version this session's own write from that plan produced, so Example 4's
  plan -> set -> update needs one plan), and the write carries it as If-Match, so a change
  that lands between that check and the write is refused by the server (412) as well.
The agent must look before it leaps. Results are compact (counts, failing objects,
reasons, hints), never raw dumps; an error is one JSON object with the contract's code,
the message, a hint and whether retrying the same call may help.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

from controller.agents.client import ApiError, Client, Reply
from controller.model import times

DIFF_LINES = 40  # per object: enough to read a change, not a dump
EVENT_TEXT = 300

ERRORS_GUIDE = (
    "Errors come back as JSON {error, message, hint, retryable, details}. Codes: "
    "not_found (check the name), validation_error / invalid_yaml (fix the value or "
    "template named in details), invalid_request, conflict (changed meanwhile, or the "
    "instance is suspended), precondition_failed (parameters changed since you read or "
    "planned them: plan again), stale_plan / plan_required / plan_mismatch (this server's "
    "safety rules: make a fresh plan of exactly this change), unauthorized / forbidden "
    "(token), rate_limited, kubernetes_error, not_leader, source_error, unreachable, "
    "timeout (transient: retryable is true, retry with exponential backoff), "
    "reconciliation_error (an object failed: details name it; diagnose with the events "
    "tools, fix, update again), internal_error. Deploy operations are idempotent.")

INSTRUCTIONS = (
    "Tools for a conductor, a GitOps controller of a multi-service Kubernetes app. Look "
    "before you leap: read (get_health, list_errors, get_parameters), then plan_changes "
    "(or plan_rollback) for the exact change, then call the write tool with the plan's "
    "planId; a write whose plan is stale is refused, so plan again. Verify with "
    "wait_for_healthy. " + ERRORS_GUIDE)

READ = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True,
                       open_world_hint=False)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True,
                        open_world_hint=False)
DESTROY = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True,
                          open_world_hint=False)


class Refused(Exception):
    """A safety rule of this server said no (nothing was sent)."""

    def __init__(self, code: str, message: str, hint: str, **details: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.hint, self.details = code, message, hint, details


@dataclass
class PlanRecord:
    """A plan this session made: what change it was of, and the versions it may write at."""

    plan_id: str
    change: str  # "current", "parameters", "patch", "rollback"
    draft: str  # the canonical JSON of the draft (or the revision), "" for current
    services: tuple[str, ...]
    based_on: str
    expires_at: str
    everything: bool  # planned every service (none named)
    accepted: set[str] = field(default_factory=set)
    written: bool = False


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


class Session:
    """The plans of this MCP session and the checks every write goes through."""

    def __init__(self, client: Client, now: Callable[[], Any] = times.now) -> None:
        self.client = client
        self.plans: dict[str, PlanRecord] = {}
        self._now = now

    def remember(self, body: Mapping[str, Any], change: str, draft: Any,
                 version: str | None, everything: bool) -> PlanRecord:
        plan_id = body.get("planId")
        if not isinstance(plan_id, str) or not plan_id:
            raise Refused("internal_error", "the conductor answered a plan without a planId",
                          "upgrade the conductor: plans of drafts need its issue-15 API")
        based_on = str(body.get("basedOn") or version or "")
        record = PlanRecord(plan_id, change, "" if draft is None else canonical(draft),
                            tuple(body.get("services") or ()), based_on,
                            str(body.get("expiresAt") or ""), everything, {based_on})
        self.plans[plan_id] = record
        return record

    def check(self, plan_id: str, change: str, draft: Any = None,
              services: Sequence[str] = (), write: bool = False) -> str:
        """The plan allows this change now: returns the version to send as If-Match."""
        record = self.plans.get(plan_id)
        if record is None:
            raise Refused("plan_required", f"no plan {plan_id!r} was made in this session",
                          "call plan_changes (or plan_rollback) for this exact change "
                          "first, look at its changes, then pass its planId",
                          planId=plan_id)
        expires = times.parse_rfc3339(record.expires_at)
        if expires is not None and expires <= self._now():
            raise Refused("stale_plan", f"plan {plan_id} expired at {record.expires_at}",
                          "plan again", planId=plan_id)
        if write:
            if record.change != change or (draft is not None
                                           and canonical(draft) != record.draft):
                raise Refused("plan_mismatch", f"plan {plan_id} is not a plan of this "
                              f"change (it planned: {record.change})",
                              "plan exactly the change you want to make, then pass that "
                              "plan's planId", planned=record.change)
            if record.written:
                raise Refused("plan_mismatch", f"plan {plan_id} was already written",
                              "plan again for another write")
        wanted = set(services)
        if not write and not record.everything and (
                not wanted or not wanted.issubset(record.services)):
            raise Refused("plan_mismatch",
                          f"the plan covered {sorted(record.services)}, not "
                          f"{sorted(wanted) or 'every service'}",
                          "plan the services you want to change (or none for all)",
                          planned=list(record.services), requested=sorted(wanted))
        current = self.client.get_parameters().version or ""
        if current not in record.accepted:
            raise Refused("stale_plan",
                          f"the parameters moved since plan {plan_id} (planned at "
                          f"{record.based_on}, now {current})",
                          "someone else changed them: read them and plan again",
                          planId=plan_id, basedOn=record.based_on, current=current)
        return current

    def wrote(self, plan_id: str, version: str | None) -> None:
        record = self.plans[plan_id]
        record.written = True
        if version:
            record.accepted.add(version)


# -- compact results -------------------------------------------------------------------


def compact_health(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    failing = []
    for s in rows:
        status = str(s.get("status"))
        counts[status] = counts.get(status, 0) + 1
        if status in ("unhealthy", "progressing", "unknown"):
            failing.append({"service": s.get("name"), "status": status,
                            "reason": s.get("reason", ""), "message": s.get("message", ""),
                            "hint": s.get("hint", ""),
                            "objects": [{"resource": o.get("resource"),
                                         "status": o.get("status"),
                                         "reason": o.get("reason"),
                                         "message": str(o.get("message", ""))[:EVENT_TEXT]}
                                        for o in (s.get("objects") or [])[:5]]})
    return {"healthy": bool(rows) and all(s.get("status") in ("healthy", "suspended", "down")
                                          for s in rows),
            "counts": counts, "services": {s.get("name"): s.get("status") for s in rows},
            "failing": failing}


def compact_events(events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {"count": len(events), "events": [
        {k: (str(v)[:EVENT_TEXT] if k == "message" else v) for k, v in e.items()
         if k in ("id", "timestamp", "type", "resource", "service", "reason", "message")}
        for e in events]}


def compact_plan(body: Mapping[str, Any]) -> dict[str, Any]:
    changes = []
    for c in body.get("changes") or []:
        if c.get("action") == "unchanged":
            continue
        item = {k: c[k] for k in ("resource", "service", "action", "reason", "error")
                if c.get(k)}
        lines = str(c.get("diff") or "").splitlines()
        if lines:
            item["diff"] = "\n".join(lines[:DIFF_LINES]) + (
                f"\n... {len(lines) - DIFF_LINES} more lines" if len(lines) > DIFF_LINES
                else "")
        changes.append(item)
    out = {k: body[k] for k in ("planId", "basedOn", "expiresAt", "draft", "services",
                                "revision", "counts", "suspended") if k in body}
    out["changes"] = changes
    return out


def compact_deploy(status: int, body: Mapping[str, Any]) -> dict[str, Any]:
    results = body.get("results") or []
    failed = [{"resource": r.get("resource"), "reason": r.get("reason"),
               "error": r.get("error")} for r in results if r.get("result") == "failed"]
    out = {k: body[k] for k in ("message", "services", "revision", "counts", "operation",
                                "status", "id") if k in body}
    out["done"] = status == 200
    if failed:
        out["failed"] = failed
    if isinstance(body.get("health"), dict):
        out["health"] = {name: h.get("status") for name, h in body["health"].items()
                         if isinstance(h, dict)}
    return out


def tool_error(e: ApiError | Refused) -> ToolError:
    if isinstance(e, ApiError):
        payload = e.to_dict()
        payload.pop("status", None)
        details = payload.get("details") or {}
        if isinstance(details.get("results"), list):  # compact: failures only
            details = {**details, "results": [r for r in details["results"]
                                              if r.get("result") == "failed"][:10]}
        if isinstance(details.get("health"), dict):
            details = {**details, "health": {n: h.get("status") for n, h in
                                             details["health"].items() if isinstance(h, dict)}}
        payload["details"] = details
    else:
        payload = {"error": e.code, "message": e.message, "hint": e.hint,
                   "retryable": False, "details": e.details}
    return ToolError(json.dumps(payload, sort_keys=True))


def guarded(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """The tool's API errors and refusals become one structured tool error."""
    import functools

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return fn(*args, **kwargs)
        except (ApiError, Refused) as e:
            raise tool_error(e) from e

    return call


# -- the server --------------------------------------------------------------------------


def build(client: Client, read_only: bool = False, session: Session | None = None,
          version: str = "") -> MCPServer:
    """The MCP server with its tools; `read_only` registers the reading tools only."""
    state = session or Session(client)
    server: MCPServer = MCPServer(name="conductor", version=version,
                                  instructions=INSTRUCTIONS, log_level="WARNING")

    def tool(annotations: ToolAnnotations, description: str) -> Callable[[Any], Any]:
        def add(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
            server.add_tool(guarded(fn), name=fn.__name__, annotations=annotations,
                            description=description, structured_output=True)
            return fn
        return add

    # ---- reads -------------------------------------------------------------------------

    @tool(READ, "Status of the controller: leader, parameters source, last pass (result, "
          "revision, duration), per-service state and recent errors. Use first to see "
          "whether the controller itself is working.")
    def get_status() -> dict[str, Any]:
        body = client.status().body
        last = body.get("lastPass") or {}
        return {"instance": body.get("instance"), "namespace": body.get("namespace"),
                "leader": body.get("leader"), "source": body.get("source"),
                "lastPass": {k: last[k] for k in ("ok", "revision", "finishedAt", "duration",
                                                  "error", "counts") if k in last},
                "recentErrors": (body.get("recentErrors") or [])[:5]}

    @tool(READ, "List the DeploymentParameters instances (name, namespace, Ready, applied "
          "revision). Use to find which instance to work on.")
    def list_instances() -> dict[str, Any]:
        return dict(client.instances().body)

    @tool(READ, "List the services of the app (name, namespace, deployed, state).")
    def list_services() -> dict[str, Any]:
        return dict(client.services().body)

    @tool(READ, "Health of every service, compact: healthy (bool), counts per status, and "
          "for each service not healthy its failing objects with reason (e.g. "
          "ImagePullBackOff, CrashLoopBackOff, Pending, Forbidden) and a hint. Step 1 of "
          "diagnosing; then list_errors or get_resource_events for the failing object.")
    def get_health(service: str | None = None) -> dict[str, Any]:
        if service:
            detail = client.service(service).body
            health = detail.get("health") or {}
            return {**compact_health([health]),
                    "events": compact_events((detail.get("events") or [])[:10])["events"]}
        return compact_health(client.services_health().body.get("services") or [])

    @tool(READ, "Recent events, newest first, filtered by type (error, warning, info, "
          "success), service, resource ('namespace/Kind/name') and since (RFC 3339 or a "
          "duration like 15m, 2h). Use to see what happened, and when.")
    def list_events(type: str | None = None, service: str | None = None,
                    resource: str | None = None, since: str | None = None,
                    limit: int = 20) -> dict[str, Any]:
        return compact_events(client.events(type=type, service=service, resource=resource,
                                            since=since, limit=limit).body.get("events", []))

    @tool(READ, "Recent errors and warnings (failed passes, objects that failed to apply, "
          "objects that turned unhealthy, Kubernetes Warning events). The first call when "
          "something is wrong.")
    def list_errors(service: str | None = None, since: str | None = None,
                    limit: int = 20) -> dict[str, Any]:
        return compact_events(client.errors(service=service, since=since,
                                            limit=limit).body.get("events", []))

    @tool(READ, "Events of one object (namespace, kind, name, e.g. default / Deployment / "
          "frontend): why that object failed.")
    def get_resource_events(namespace: str, kind: str, name: str,
                            limit: int = 20) -> dict[str, Any]:
        return compact_events(client.resource_events(namespace, kind, name,
                                                     limit=limit).body.get("events", []))

    @tool(READ, "The parameters in force (spec: global and services), or one service's "
          "values (own, global, effective), with `version`: the version plans are based on "
          "and writes must match.")
    def get_parameters(service: str | None = None) -> dict[str, Any]:
        reply = client.get_parameters(service)
        return {"version": reply.version, "parameters": reply.body}

    @tool(READ, "Recorded parameter revisions (revision, time, applied), newest first: "
          "what rollback can restore.")
    def list_history(limit: int = 10) -> dict[str, Any]:
        rows = client.history(limit).body.get("history") or []
        return {"history": [{k: v for k, v in r.items() if k != "parameters"} for r in rows]}

    @tool(READ, "Plan a change without writing anything: the current parameters (optionally "
          "only some services), a draft `parameters` (the whole spec), a draft `patch` "
          "(JSON merge patch on the current spec; null deletes), or with a Git source a "
          "`ref`. Answers per object the action (create/update/prune) with reason and diff "
          "(Secrets redacted), counts, and a planId (valid until expiresAt) that the write "
          "tools require: set_parameters needs a plan of the same `parameters`, "
          "patch_parameters of the same `patch`, up/update/down/suspend/resume a plan "
          "naming their services (a draft plan also covers the update that follows its "
          "write).")
    def plan_changes(services: list[str] | None = None,
                     parameters: dict[str, Any] | None = None,
                     patch: dict[str, Any] | None = None,
                     ref: str | None = None) -> dict[str, Any]:
        if parameters is not None and patch is not None:
            raise Refused("invalid_request", "give either parameters or patch, not both",
                          "a whole spec, or a merge patch")
        version = client.get_parameters().version
        body = client.plan(services or (), parameters=parameters, patch=patch, ref=ref).body
        change, draft = (("parameters", parameters) if parameters is not None else
                         ("patch", patch) if patch is not None else
                         ("ref", ref) if ref is not None else ("current", None))
        state.remember(body, change, draft, version, everything=not services)
        return compact_plan(body)

    @tool(READ, "Plan restoring a recorded revision (from list_history): the changes it "
          "would make and the planId rollback_parameters requires.")
    def plan_rollback(revision: str) -> dict[str, Any]:
        rows = client.history(500).body.get("history") or []
        entry = next((r for r in rows if str(r.get("revision")) == revision), None)
        if entry is None:
            raise Refused("not_found", f"no recorded revision {revision}",
                          "list_history shows the revisions", revision=revision)
        version = client.get_parameters().version
        spec = {k: v for k, v in (entry.get("parameters") or {}).items()
                if k in ("global", "services")}
        body = client.plan(parameters=spec).body
        state.remember(body, "rollback", revision, version, everything=True)
        return compact_plan(body)

    @tool(READ, "Wait until the services (default: every deployed one) are healthy, up to "
          "timeout seconds. Answers healthy true/false and, when not, the failing objects "
          "and reasons. Use after a write to verify it.")
    def wait_for_healthy(services: list[str] | None = None,
                         timeout: float = 120.0) -> dict[str, Any]:
        ok, rows = client.wait_healthy(services or (), min(max(timeout, 0.0), 1800.0))
        out = compact_health(rows)
        out["healthy"] = ok
        if not ok:
            out["hint"] = ("not healthy in time: look at failing[].objects, then list_errors "
                           "or get_resource_events for them")
        return out

    if read_only:
        return server

    # ---- writes (each behind a plan of the same change) ----------------------------------

    def write(plan_id: str, change: str, draft: Any,
              send: Callable[..., Reply]) -> dict[str, Any]:
        reply = send(draft, if_match=state.check(plan_id, change, draft, write=True))
        state.wrote(plan_id, reply.version)
        return {"message": reply.body.get("message"), "version": reply.version,
                "revision": reply.body.get("revision"),
                "next": "update (with this planId) applies it; then wait_for_healthy"}

    @tool(WRITE, "Replace the parameters with `parameters` (the whole spec). Requires the "
          "planId of plan_changes(parameters=<the same spec>) from this session, with the "
          "parameters unchanged since (else stale_plan / precondition_failed: plan again). "
          "Then call update (same planId) to apply, and wait_for_healthy.")
    def set_parameters(plan_id: str, parameters: dict[str, Any]) -> dict[str, Any]:
        return write(plan_id, "parameters", parameters, client.set_parameters)

    @tool(WRITE, "Merge-patch the parameters (RFC 7386: maps merge, null deletes). Requires "
          "the planId of plan_changes(patch=<the same patch>) from this session, with the "
          "parameters unchanged since. Then update and wait_for_healthy.")
    def patch_parameters(plan_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        return write(plan_id, "patch", patch, client.patch_parameters)

    @tool(DESTROY, "Restore a recorded parameters revision. Requires the planId of "
          "plan_rollback(<the same revision>) from this session, parameters unchanged since.")
    def rollback_parameters(plan_id: str, revision: str) -> dict[str, Any]:
        return write(plan_id, "rollback", revision, client.rollback)

    def deploy(op: str, plan_id: str, services: list[str] | None, wait_healthy: bool,
               timeout: float) -> dict[str, Any]:
        version = state.check(plan_id, op, None, services or ())
        reply = client.deploy(op, services or (), wait_healthy=wait_healthy,
                              timeout=min(max(timeout, 1.0), 3600.0),
                              health_timeout=min(max(timeout, 1.0), 3600.0)
                              if wait_healthy else None, if_match=version)
        return compact_deploy(reply.status, reply.body)

    @tool(WRITE, "Deploy services (all when none named); idempotent. Requires the planId of "
          "a plan from this session that covered these services, parameters unchanged "
          "since. wait_healthy: also wait for health (an unhealthy service answers "
          "reconciliation_error naming the failing object and reason).")
    def up(plan_id: str, services: list[str] | None = None, wait_healthy: bool = False,
           timeout: float = 120.0) -> dict[str, Any]:
        return deploy("up", plan_id, services, wait_healthy, timeout)

    @tool(WRITE, "Re-read the parameters and apply them to the services (all when none "
          "named); idempotent. Requires a planId from this session covering them (the plan "
          "of a parameters change covers the update after its write).")
    def update(plan_id: str, services: list[str] | None = None, wait_healthy: bool = False,
               timeout: float = 120.0) -> dict[str, Any]:
        return deploy("update", plan_id, services, wait_healthy, timeout)

    @tool(DESTROY, "Remove services (all when none named!): deletes their objects. Requires "
          "a planId from this session covering them, parameters unchanged since.")
    def down(plan_id: str, services: list[str] | None = None,
             timeout: float = 120.0) -> dict[str, Any]:
        return deploy("down", plan_id, services, False, timeout)

    @tool(WRITE, "Suspend the instance: passes still plan and report drift but apply and "
          "prune nothing. Requires a planId from this session, parameters unchanged since.")
    def suspend(plan_id: str) -> dict[str, Any]:
        return dict(client.suspend(if_match=state.check(plan_id, "suspend")).body)

    @tool(WRITE, "Resume a suspended instance: its next pass applies what waited (plan "
          "first to see it). Requires a planId from this session, parameters unchanged "
          "since.")
    def resume(plan_id: str) -> dict[str, Any]:
        return dict(client.resume(if_match=state.check(plan_id, "resume")).body)

    return server


def serve(client: Client, read_only: bool, version: str = "") -> None:
    """Serve over stdio until the client closes the stream."""
    build(client, read_only, version=version).run("stdio")
