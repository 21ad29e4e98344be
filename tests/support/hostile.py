"""Hostile parameters bodies (issue 9, findings 9 and 17) and what the API must answer, in
one place: tests/api sends them to the in-memory service (each case its own test) and once
to the real one, end to end. Each check returns nothing and leaves the spec as it was; the
caller checks that no generation moved."""

from __future__ import annotations

import time
from typing import Any, Protocol

from falcon import testing

from controller.model.parameters import MAX_DEPTH
from tests.support.api import envelope

# Values the API server would refuse: (service, values, the path the 400 names).
INVALID_VALUES = [
    ("redis", {"replicas": 99999999999999999999}, "spec.services.redis.replicas"),
    ("redis", {"port": 70000}, "spec.services.redis.port"),
    ("frontend", {"image": ""}, "spec.services.frontend.image"),
]


class Client(Protocol):
    def post(self, path: str, body: Any = None, **kwargs: Any) -> testing.Result: ...

    def patch(self, path: str, body: Any, **kwargs: Any) -> testing.Result: ...


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"n": value}
    return value


def deep_nesting_is_refused(api: Client, method: str, spec: dict[str, Any]) -> None:
    """`method` ("post" with the whole `spec`, or "patch") of a body nested 300 deep: a 400
    naming the limit and the path, at once."""
    body = {"services": {"redis": {"deep": _nested(300)}}}
    if method == "post":
        body = {**spec, **body}
    started = time.monotonic()
    result = getattr(api, method)("/api/parameters", body)
    elapsed = time.monotonic() - started
    details = envelope(result, 400, "validation_error")
    assert details["limit"] == MAX_DEPTH
    assert details["path"].startswith("spec.services.redis.deep.n.n")
    assert elapsed < 5, elapsed  # not 5 attempts of 30 s against a spinning API server


def huge_body_is_refused(api: Client) -> None:
    result = api.patch("/api/parameters", {"global": {"blob": "x" * (300 * 1024)}})
    details = envelope(result, 400, "validation_error")
    assert details["limitName"] == "maxBytes" and details["size"] > details["limit"]


def invalid_value_is_refused(api: Client, spec: dict[str, Any], service: str,
                             values: dict[str, Any], path: str) -> None:
    """The value as a PATCH, and in the whole `spec` as a POST: 400 naming `path`."""
    result = api.patch("/api/parameters", {"services": {service: values}})
    details = envelope(result, 400, "validation_error")
    assert details["path"] == path
    spec["services"][service].update(values)
    details = envelope(api.post("/api/parameters", spec), 400, "validation_error")
    assert details["path"] == path
