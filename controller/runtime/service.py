"""The one narrow interface the API talks to (`Service`), and the plain data it returns.

The HTTP layer parses a request, calls one method here and shapes the answer; every
decision about the domain is behind this interface: which instance a request means when
it names none, Git or the DeploymentParameters object for a write, validation against the
CRD's schema, versions for If-Match, redaction for callers without the write scope, what
up/update/down run and how long they are waited for. `controller_service.ControllerService`
implements it over the controller's pieces; tests implement it in memory
(tests/support/fakes.py), which is why this module holds only types: importing it costs
the API none of the runtime's machinery.

Versions (issue 15): a parameters version is opaque to clients. For the
DeploymentParameters object it is its generation (with its uid): unlike the
resourceVersion it moves only when the spec does, so the status every pass writes does
not make a client's If-Match stale. With a Git source it is the blob SHA of the
parameters file. The API sends
it as `ETag: "<version>"`; a write given `if_match` compares it with the current version
first and raises `PreconditionFailedError` (412, `details.current`) when it moved. `*`
matches any version; no `if_match` changes nothing from before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from controller.adapters.store.events import Event
from controller.errors import PreconditionFailedError

DeployOp = Literal["up", "update", "down"]


@dataclass(frozen=True)
class InstanceScope:
    """The instances an API token is limited to (the tokens file's `instances`): every
    criterion given must hold; none given matches every instance. Outside it an instance
    answers 404, as if it did not exist."""

    namespaces: frozenset[str] = frozenset()
    names: frozenset[str] = frozenset()
    labels: tuple[tuple[str, str], ...] = ()  # equality on the object's labels

    def allows(self, namespace: str, name: str, labels: Mapping[str, str]) -> bool:
        return ((not self.namespaces or namespace in self.namespaces)
                and (not self.names or name in self.names)
                and all(labels.get(k) == v for k, v in self.labels))

    def to_dict(self) -> dict[str, Any]:
        return {"namespaces": sorted(self.namespaces), "names": sorted(self.names),
                "labels": dict(self.labels)}


@dataclass(frozen=True)
class Caller:
    """Who asks, as far as the service cares: whether they may see secret values (only a
    caller who may write the parameters may), and the API token's name (Git commits
    carry it as the author)."""

    may_see_secrets: bool = False
    token_name: str = ""


@dataclass(frozen=True)
class Versioned:
    """A parameters answer and the version it reflects (the ETag)."""

    body: dict[str, Any]
    version: str


@dataclass(frozen=True)
class DeployRequest:
    """One up/update/down, parsed. `timeout` 0: answer at once with the operation."""

    op: DeployOp
    instance: str | None = None  # None: the controller's own
    services: tuple[str, ...] = ()  # none: every service
    force: bool = False  # apply on a suspended instance (up/update only)
    timeout: float | None = None  # None: the configured sync timeout
    wait_healthy: bool = False
    health_timeout: float = 120.0
    if_match: str | None = None


@dataclass(frozen=True)
class Deployed:
    """What up/update/down answered: the body, and whether it is final (200) or accepted
    and still going (202: running past the timeout, or applied but not yet healthy);
    `location` is the operation to follow when it is still running."""

    body: dict[str, Any]
    accepted: bool = False
    location: str = ""


@dataclass(frozen=True)
class Draft:
    """Proposed parameters to plan without writing (POST /api/plan): the whole spec, or a
    JSON merge patch on the current one; with a Git source, a ref to read them from (the
    patch, if any, applies on top of that ref's file)."""

    parameters: dict[str, Any] | None = None
    patch: dict[str, Any] | None = None
    ref: str | None = None


class EventSource(Protocol):
    """The event store as the events endpoints and the stream read it."""

    @property
    def last_id(self) -> int: ...

    @property
    def closed(self) -> bool: ...

    @property
    def local(self) -> bool:
        """Reads are a local file's (SQLite), not network round trips (PostgreSQL)."""
        ...

    def query(self, type: str | Sequence[str] | None = None, resource: str | None = None,
              service: str | None = None, since: datetime | str | None = None,
              until: datetime | str | None = None, limit: int = 100, offset: int = 0,
              after_id: int | None = None, before_id: int | None = None,
              oldest_first: bool = False, instance: str | None = None,
              namespace: str | None = None) -> list[Event]: ...

    def query_json(self, type: str | Sequence[str] | None = None,
                   resource: str | None = None, service: str | None = None,
                   since: datetime | str | None = None, until: datetime | str | None = None,
                   limit: int = 100, offset: int = 0, after_id: int | None = None,
                   before_id: int | None = None, oldest_first: bool = False,
                   instance: str | None = None, namespace: str | None = None) -> list[str]:
        """`query`'s events as their stored JSON text, serialized once at write."""
        ...

    def page(self, **query: Any) -> bytes:
        """The answer `{"events": [...], "count": n}` as bytes, from the stored JSON."""
        ...

    def wait_for_new(self, after_id: int, timeout: float | None) -> bool: ...


class Service(Protocol):
    """Everything the API asks of a controller. Methods raise the error vocabulary of
    controller.errors (NotFoundError, ValidationError, ConflictError,
    PreconditionFailedError, ...); the API maps those to HTTP in one place."""

    @property
    def events(self) -> EventSource: ...

    # -- probes and status ---------------------------------------------------------------
    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Readiness: (ready, body): started and the API server answering."""
        ...

    def status(self, scope: InstanceScope | None = None) -> dict[str, Any]:
        """The controller's status; within `scope`, only what concerns its instances
        (the controller-wide rest: app, time, leadership)."""
        ...

    def requirements(self) -> dict[str, Any]: ...

    # -- instances ------------------------------------------------------------------------
    def resolve(self, instance: str | None, scope: InstanceScope | None = None) -> str:
        """The instance a request names (`name` or `namespace/name`; None: the
        controller's own) as `namespace/name`, which every method below accepts;
        NotFoundError when it is not reconciled here, or is outside `scope`."""
        ...

    def instances(self, scope: InstanceScope | None = None) -> list[dict[str, Any]]:
        """Every reconciled instance (within `scope`): Ready, revision, last pass, health
        summary, suspended."""
        ...

    # -- services and health --------------------------------------------------------------

    def services(self, instance: str | None) -> list[dict[str, Any]]:
        """Every service's health (the contract's ServiceHealth shape)."""
        ...

    def services_now(self, instance: str | None) -> list[dict[str, Any]] | None:
        """`services` from what is already in memory, without blocking: no lock waited
        on, no request, nothing computed (the health monitor's published view); what the
        API answers on its event loop. None when that cannot answer at once (an instance
        still to resolve or to observe, a change not yet computed): ask `services`."""
        ...

    def service_detail(self, instance: str | None, name: str) -> dict[str, Any]: ...

    # -- deploying ------------------------------------------------------------------------
    def deploy(self, request: DeployRequest) -> Deployed: ...

    def operation(self, op_id: str, scope: InstanceScope | None = None) -> dict[str, Any]:
        """An operation by id; NotFoundError for one of an instance outside `scope`."""
        ...

    def plan(self, instance: str | None, services: Sequence[str],
             draft: Draft | None = None) -> dict[str, Any]:
        """What up/update would do (server-side dry run), with a planId kept a while."""
        ...

    def saved_plan(self, plan_id: str, scope: InstanceScope | None = None) -> dict[str, Any]:
        """A kept plan by id; NotFoundError for one of an instance outside `scope`."""
        ...

    def suspend(self, instance: str | None, suspend: bool) -> dict[str, Any]: ...

    # -- parameters -----------------------------------------------------------------------
    def parameters(self, instance: str | None, caller: Caller) -> Versioned: ...

    def replace_parameters(self, instance: str | None, spec: dict[str, Any], caller: Caller,
                           if_match: str | None = None) -> Versioned: ...

    def patch_parameters(self, instance: str | None, patch: dict[str, Any], caller: Caller,
                         if_match: str | None = None) -> Versioned: ...

    def rollback(self, instance: str | None, revision: str, caller: Caller,
                 if_match: str | None = None) -> Versioned: ...

    def schema(self) -> dict[str, Any]: ...

    def values(self, instance: str | None, caller: Caller) -> dict[str, Any]: ...

    def service_values(self, instance: str | None, service: str,
                       caller: Caller) -> Versioned: ...

    def history(self, instance: str | None, limit: int, caller: Caller
                ) -> list[dict[str, Any]]: ...

    # -- Git ------------------------------------------------------------------------------
    def git_push(self, ref: str, repositories: Sequence[str] = ()) -> dict[str, Any]:
        """A webhook announced a push to `ref` ("" when it did not say) of `repositories`
        (the URLs the payload names; none: the controller's repository): wake every
        instance following it, on whichever replica owns it. Returns {"triggered": bool,
        "message": ..., "instances": [...]}."""
        ...


def check_version(if_match: str | None, current: str) -> None:
    """If-Match against the current version: None and "*" always match; otherwise the
    version must be exactly the current one (the API has taken the quotes off)."""
    if if_match is None or if_match in ("*", current):
        return
    raise PreconditionFailedError(
        "the parameters changed since that version was read; read them again (GET "
        "/api/parameters), re-apply your change and retry with the new ETag",
        {"current": current, "ifMatch": if_match})
