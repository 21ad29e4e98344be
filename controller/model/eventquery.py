"""Event queries as the API and the store accept them: types, filters, bounds.

Every way into the event store (the REST API, the SSE stream, the store's own `query`,
`follow` and `explain`) checks its filters here, so a bad filter is one
`validation_error` naming the field, whoever asks. Pure: no SQLite, no I/O; the store
turns a `Filters` into index ranges.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal, NamedTuple

from controller.errors import ValidationError
from controller.model.times import parse_time

EventType = Literal["error", "warning", "info", "success"]
EVENT_TYPES: tuple[EventType, ...] = ("error", "warning", "info", "success")

MAX_LIMIT = 1000
# Deeper pages cost a walk of `offset` index entries per type; past this, page with
# `before_id` (the last id seen) or `until`, which cost nothing extra.
MAX_OFFSET = 10_000
ID_MAX = 2**63 - 1


class Filters(NamedTuple):
    types: tuple[EventType, ...]  # empty: any type
    resource: str | None
    service: str | None
    since_ms: int | None
    until_ms: int | None
    lo: int  # inclusive id bounds
    hi: int
    limit: int
    offset: int
    ascending: bool
    instance: str | None = None  # the DeploymentParameters object the event is about
    namespace: str | None = None  # ... and its namespace (only with `instance`)


def filters(type: str | Sequence[str] | None, resource: str | None, service: str | None,
            since: datetime | str | None, until: datetime | str | None, limit: int,
            offset: int, after_id: int | None, before_id: int | None,
            ascending: bool, instance: str | None = None,
            namespace: str | None = None) -> Filters:
    """`namespace` narrows `instance` to the object of that namespace (two instances of
    one name in two namespaces are two instances); alone it names nothing."""
    types = _types(type)
    if namespace is not None and instance is None:
        raise ValidationError("namespace: needs instance (the DeploymentParameters "
                              "object's name)", {"field": "namespace", "value": namespace})
    if len(types) == len(EVENT_TYPES):
        types = ()  # every type: one scan instead of four
    return Filters(
        types,
        _text(resource, "resource"), _text(service, "service"),
        None if since is None else parse_time(since, "since"),
        None if until is None else parse_time(until, "until"),
        1 + _int(after_id, "after_id", 0, ID_MAX - 1) if after_id is not None else 0,
        _int(before_id, "before_id", 1, ID_MAX) - 1 if before_id is not None else ID_MAX,
        max(1, min(_int(limit, "limit", -ID_MAX, ID_MAX), MAX_LIMIT)),
        _int(offset, "offset", 0, MAX_OFFSET),
        bool(ascending), _text(instance, "instance"), _text(namespace, "namespace"))


def _types(value: str | Sequence[str] | None) -> tuple[EventType, ...]:
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[EventType] = []
    for item in items:
        t = validate_type(item.strip() if isinstance(item, str) else item)
        if t not in out:
            out.append(t)
    return tuple(out)


def validate_type(value: object) -> EventType:
    """`value` as an event type, or ValidationError naming the field."""
    for t in EVENT_TYPES:
        if value == t:
            return t
    raise ValidationError(f"type: must be one of {', '.join(EVENT_TYPES)}, got {value!r}",
                          {"field": "type", "value": value, "allowed": list(EVENT_TYPES)})


def _text(value: object, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ValidationError(f"{name}: must be a string", {"field": name, "value": repr(value)})


def _int(value: object, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        raise ValidationError(f"{name}: must be an integer", {"field": name, "value": value})
    try:
        n: int = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ValidationError(f"{name}: must be an integer",
                              {"field": name, "value": repr(value)}) from None
    if not lo <= n <= hi:
        raise ValidationError(f"{name}: must be between {lo} and {hi}, got {n}",
                              {"field": name, "value": n, "min": lo, "max": hi})
    return n


__all__ = ["EVENT_TYPES", "ID_MAX", "MAX_LIMIT", "MAX_OFFSET", "EventType", "Filters",
           "filters", "validate_type"]
