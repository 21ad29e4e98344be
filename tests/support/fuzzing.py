"""The property-based run of the API against its own description (schemathesis), shared by
the run over the in-memory service (tests/api/test_openapi.py, no cluster: the API's
parsing, refusals, envelopes and codes) and the run against a real Controller
(tests/api/test_e2e_openapi.py: the real service's answers too).

Examples, coverage and fuzzing phases (valid and invalid requests, at least 50 generated
per operation) and a stateful run. Every answer must be no 5xx and conform to the
documented status codes, content types, headers and schemas, and every request the
document calls invalid must be refused (4xx). A `Target` is what the calls go to: the
Falcon app, the write token's headers, the instance mutating calls stay on, and how to put
the parameters back after a write.
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Protocol

import schemathesis
from hypothesis import HealthCheck, Phase, settings

from controller.api.openapi import document

WEBHOOK_SECRET = "fuzz-webhook-secret"
WRITE_TOKEN = "fuzz-write-token-" + secrets.token_hex(8)
# Writes change what later examples see: parameters are put back after each write, and
# mutating calls stay on the controller's own instance (another instance name would
# deploy a second copy of the app over the first one's objects).
WRITES = {("POST", "/api/parameters"), ("PATCH", "/api/parameters"),
          ("POST", "/api/parameters/rollback"), ("POST", "/api/suspend"),
          ("POST", "/api/resume")}
DEPLOYS = {"/api/up", "/api/update", "/api/down"}


class Target(Protocol):
    falcon_app: Any
    headers: dict[str, str]
    instance: str

    def restore(self) -> None:
        """Put the parameters back after a write went through."""


@schemathesis.check
def no_unexpected_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """No 5xx, except the contract's reconciliation_error of a deploy call: on a cluster
    without nodes, `waitHealthy` legitimately reports services that never become ready."""
    if response.status_code < 500:
        return None
    body = response.json() if "json" in response.headers.get("content-type", [""])[0] \
        else None
    if case.path in DEPLOYS and isinstance(body, dict) \
            and body.get("error") == "reconciliation_error":
        return None
    raise AssertionError(f"server error {response.status_code}: {response.text[:2000]}")


# Every built-in check schemathesis enables by default (status codes, content types,
# headers, response schemas, invalid requests refused, unsupported methods, ...) plus ours,
# except two: `not_a_server_error`, replaced by the check above, and
# `positive_data_acceptance`: a request valid for the document may still be refused for
# reasons it cannot state (parameters the CRD's schema rejects, an unknown service, a
# revision never recorded), with the contract's 400/404.
EXCLUDED = [schemathesis.checks.not_a_server_error,
            schemathesis.checks.positive_data_acceptance]

# The document as a dict: a schema from a fixture (`from_fixture`) would need
# schemathesis's lazy loader, which does not work with this pytest; the requests still go
# to the target's app, passed to each call.
schema = schemathesis.openapi.from_dict(document())
INSTANCE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
# All of hypothesis's phases but shrinking: a failure is reported as found (shrinking a
# deploy call would re-run deploys for minutes).
PHASES = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target]
# For `@schema.parametrize()` tests: 50 examples per operation.
PER_OPERATION = settings(max_examples=50, deadline=None, database=None, phases=PHASES,
                         suppress_health_check=list(HealthCheck))


def _number(value: Any, high: float) -> float | None:
    """`value` when it is one the API accepts (so replacing it keeps a case as valid or
    invalid as it was generated), else None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if 0 <= number <= high else None


def bound(case: Any, target: Target) -> None:
    """Keep generated calls short and on this app, touching only values that are valid
    (an invalid one may be the point of a negative case, and must stay as generated): a
    stream ends at once, a health wait lasts at most a second, and a mutating call acts on
    the controller's own instance (another name would deploy a second copy of the app)."""
    query = case.query if isinstance(case.query, dict) else {}
    if case.path == "/api/events/stream" and _number(query.get("duration", 0), 3600) \
            is not None:
        query["duration"] = 0
    health = _number(query.get("healthTimeout"), 3600)
    if health is not None:
        query["healthTimeout"] = min(health, 1)
    elif "waitHealthy" in query and "healthTimeout" not in query:
        query["healthTimeout"] = 1  # the default would wait two minutes
    instance = query.get("instance")
    if case.method != "GET" and isinstance(instance, str) and len(instance) <= 63 \
            and INSTANCE_NAME.match(instance):
        query["instance"] = target.instance
    case.query = query


def call(case: Any, target: Target) -> None:
    """One generated call, checked against the document."""
    bound(case, target)
    try:
        case.call_and_validate(app=target.falcon_app, headers=target.headers,
                               additional_checks=[no_unexpected_server_error],
                               excluded_checks=EXCLUDED)
    finally:
        if (case.method, case.path) in WRITES:
            target.restore()


def run_sequences(target: Target) -> None:
    """The stateful phase: chains the document's inferred links (a deploy's 202 to its
    operation, a listed service to its detail, an event to its object's events)."""

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: Any) -> None:
            bound(case, target)

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"app": target.falcon_app, "headers": target.headers}

        def validate_response(self, response: Any, case: Any,
                              additional_checks: Any = None, **kwargs: Any) -> None:
            case.validate_response(response, additional_checks=[no_unexpected_server_error],
                                   excluded_checks=EXCLUDED, transport_kwargs=kwargs or None,
                                   recorder=self.recorder)

        def after_call(self, response: Any, case: Any) -> None:
            super().after_call(response, case)
            if (case.method, case.path) in WRITES:
                target.restore()

    Workflow.run(settings=settings(max_examples=20, stateful_step_count=8, deadline=None,
                                   database=None, phases=PHASES,
                                   suppress_health_check=list(HealthCheck)))
