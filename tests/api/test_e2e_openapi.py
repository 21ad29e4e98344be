"""The API description against the real controller: a property-based run (schemathesis,
in-process) against a real Controller on the control plane, with authentication on and a
write token: examples, coverage and fuzzing phases (valid and invalid requests, at least 50
generated per operation) and a stateful run. Every answer must be no 5xx and conform to the
documented status codes, content types, headers and schemas, and every request the
document calls invalid must be refused (4xx). The document against the routes and the
parsers, without a cluster: test_openapi.py.
"""

from __future__ import annotations

import re
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, settings

from controller.adapters.kube import Kube
from controller.adapters.sources.resource import ParametersResource
from controller.api.openapi import document
from controller.config import ApiSettings, GitSettings
from controller.serving import app_for
from tests.support.cluster import REPO, App, LocalCluster
from tests.support.waiting import wait_for

WEBHOOK_SECRET = "fuzz-webhook-secret"
WRITE_TOKEN = "fuzz-write-token-" + secrets.token_hex(8)
# Writes change what later examples see: parameters are put back after each write, and
# mutating calls stay on the controller's own instance (another instance name would
# deploy a second copy of the app over the first one's objects).
WRITES = {("POST", "/api/parameters"), ("PATCH", "/api/parameters"),
          ("POST", "/api/parameters/rollback"), ("POST", "/api/suspend"),
          ("POST", "/api/resume")}
DEPLOYS = {"/api/up", "/api/update", "/api/down"}


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


class Fuzzed:
    def __init__(self, app: App, falcon_app: Any, spec: dict[str, Any],
                 instance: str) -> None:
        self.app = app
        self.falcon_app = falcon_app
        self.spec = spec
        self.instance = instance
        self.headers = {"Authorization": f"Bearer {WRITE_TOKEN}"}

    def restore(self) -> None:
        """Put the parameters back after a write went through (again when the controller's
        own status write made the replace a conflict)."""
        resource = ParametersResource(self.app.kube, self.app.cfg)

        def put_back() -> bool:
            if resource.read()["spec"] != self.spec:
                resource.replace_spec(self.spec)
            return True

        wait_for(put_back, timeout=30, message="the parameters put back")


@pytest.fixture(scope="module")
def fuzzed(cluster: LocalCluster, kube: Kube, crd: dict[str, Any],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    from controller.runtime.controller import Controller

    namespace = f"api-fuzz-{secrets.token_hex(3)}"
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    tmp = tmp_path_factory.mktemp("fuzz")
    root = tmp / "manifests"
    shutil.copytree(REPO / "manifests", root)
    params = yaml.safe_load((root / "parameters.yaml").read_text())
    params["global"]["namespace"] = namespace
    (root / "parameters.yaml").write_text(yaml.safe_dump(params))
    (tmp / "hook").write_text(WEBHOOK_SECRET)
    (tmp / "tokens.yaml").write_text(yaml.safe_dump({"tokens": [
        {"name": "fuzzer", "token": WRITE_TOKEN, "scopes": ["read", "write"]}]}))
    app = App(cluster, kube, namespace, root)
    # Authentication on, as deployed; no rate limit (the run is one client, on purpose).
    api = ApiSettings(auth=True, tokens_file=str(tmp / "tokens.yaml"), rate_limit=0,
                      sync_timeout=20)
    cfg = replace(app.cfg, api=api, git=GitSettings(webhook_secret_file=str(tmp / "hook")))
    controller = Controller(cfg).start()
    try:
        wait_for(lambda: controller.engine.last is not None, timeout=60, message="first pass")
        yield Fuzzed(app, app_for(controller), app.resource()["spec"], cfg.instance)
    finally:
        controller.stop()
        kube.delete("v1", "Namespace", namespace)


# The document as a dict: a schema from a fixture (`from_fixture`) would need
# schemathesis's lazy loader, which does not work with this pytest; the requests still go
# to the real app, passed to each call.
schema = schemathesis.openapi.from_dict(document())
INSTANCE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def _number(value: Any, high: float) -> float | None:
    """`value` when it is one the API accepts (so replacing it keeps a case as valid or
    invalid as it was generated), else None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if 0 <= number <= high else None


def _bound(case: Any, fuzzed: Fuzzed) -> None:
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
        query["instance"] = fuzzed.instance
    case.query = query


def _call(case: Any, fuzzed: Fuzzed) -> None:
    _bound(case, fuzzed)
    try:
        case.call_and_validate(app=fuzzed.falcon_app, headers=fuzzed.headers,
                               additional_checks=[no_unexpected_server_error],
                               excluded_checks=EXCLUDED)
    finally:
        if (case.method, case.path) in WRITES:
            fuzzed.restore()


# All of hypothesis's phases but shrinking: a failure is reported as found (shrinking a
# deploy call would re-run deploys for minutes).
PHASES = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target]


@pytest.mark.cluster
@schema.parametrize()
@settings(max_examples=50, deadline=None, database=None, phases=PHASES,
          suppress_health_check=list(HealthCheck))
def test_every_operation_conforms_to_the_document(case: Any, fuzzed: Fuzzed) -> None:
    _call(case, fuzzed)


@pytest.mark.cluster
def test_sequences_of_calls_conform_to_the_document(fuzzed: Fuzzed) -> None:
    """The stateful phase: chains the document's inferred links (a deploy's 202 to its
    operation, a listed service to its detail, an event to its object's events)."""

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def before_call(self, case: Any) -> None:
            _bound(case, fuzzed)

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"app": fuzzed.falcon_app, "headers": fuzzed.headers}

        def validate_response(self, response: Any, case: Any,
                              additional_checks: Any = None, **kwargs: Any) -> None:
            case.validate_response(response, additional_checks=[no_unexpected_server_error],
                                   excluded_checks=EXCLUDED, transport_kwargs=kwargs or None,
                                   recorder=self.recorder)

        def after_call(self, response: Any, case: Any) -> None:
            super().after_call(response, case)
            if (case.method, case.path) in WRITES:
                fuzzed.restore()

    Workflow.run(settings=settings(max_examples=20, stateful_step_count=8, deadline=None,
                                   database=None, phases=PHASES,
                                   suppress_health_check=list(HealthCheck)))
