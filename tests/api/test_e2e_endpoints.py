"""Every endpoint of the REST API, in-process, against a real Controller on the control plane.

The requests and answers of the agents' reference (the contract) are checked field by
field; every error answer must be the contract's envelope with a `details` object. What is
the API's own behaviour (parsing, refusals, the event queries, webhooks' providers) runs
without a cluster in test_endpoints_fake.py; what stays here needs the real thing: what a
pass applies, deletes and records, health from Pods, dry-run plans, the real object's
version.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from controller.adapters.sources.resource import API_VERSION, KIND
from controller.config import GitSettings
from devcluster import kubelet
from tests.support.api import SERVICES, Api, envelope
from tests.support.cluster import App, make_all_ready, wait_pods
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def _deployment(api: Api, name: str) -> dict[str, Any] | None:
    return api.app.kube.get("apps/v1", "Deployment", name, api.namespace)


def _replicas(api: Api, name: str) -> int:
    dep = _deployment(api, name)
    return int(dep["spec"]["replicas"]) if dep else -1


def _full_spec(api: Api) -> dict[str, Any]:
    spec: dict[str, Any] = api.app.resource()["spec"]
    return spec


# --- probes, status, metrics ---------------------------------------------------------------


def test_probes_report_liveness_readiness_and_role(api: Api) -> None:
    result = api.get("/healthz")
    assert result.status_code == 200 and result.json == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json["status"] == "ready"
    assert ready.json["leader"] is True
    assert ready.json["holder"] == api.controller.leader_identity() != ""


def test_status_names_leader_source_and_last_pass(api: Api) -> None:
    body = api.get("/api/status").json
    assert body["instance"] == "default" and body["namespace"] == api.namespace
    assert body["leader"]["isLeader"] is True
    assert body["source"]["type"] == "resource"
    assert body["source"]["revision"] == "generation/1"
    assert body["lastPass"]["result"] == "success"
    # Reasons that arrive together coalesce into one pass (runtime/loop.py): "leader,start".
    assert set(body["lastPass"]["trigger"].split(",")) <= {"start", "leader", "resource"}, \
        body["lastPass"]["trigger"]
    assert body["lastPass"]["counts"]["failed"] == 0


def test_metrics_are_prometheus_text_with_the_reconcile_counter(api: Api) -> None:
    api.get("/api/services")  # counted under its route template
    # The engine publishes its first pass (engine.last, what make_api waits for) a moment
    # before the controller's report hook has counted it: wait for the count, not a pass.
    def counted() -> Any:
        scraped = api.get("/metrics")
        return [scraped] if "conductor_reconcile_total{" in scraped.text else None

    result = wait_for(counted, timeout=10, message="the first pass counted")[0]
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("text/plain")
    text = result.text
    assert "# TYPE conductor_reconcile_total counter" in text
    samples = [line for line in text.splitlines()
               if line.startswith("conductor_reconcile_total{")]
    assert samples and any(float(line.rsplit(" ", 1)[1]) >= 1 for line in samples), samples
    assert 'route="/api/services"' in text


# --- services and health -------------------------------------------------------------------


def test_services_list_and_health_in_the_contract_shape(api: Api) -> None:
    listed = api.get("/api/services").json["services"]
    assert [s["name"] for s in listed] == SERVICES
    assert all(s["namespace"] == api.namespace and s["deployed"] is True for s in listed)

    make_all_ready(api.app)

    def all_healthy() -> list[dict[str, Any]] | None:
        services: list[dict[str, Any]] = api.get("/api/services/health").json["services"]
        return services if {s["status"] for s in services} == {"healthy"} else None

    health = wait_for(all_healthy, timeout=20, message="every service healthy")
    assert [s["name"] for s in health] == SERVICES
    for service in health:
        assert {"name", "namespace", "status", "lastChecked"} <= set(service), service
        assert service["namespace"] == api.namespace
        assert RFC3339.match(service["lastChecked"]), service["lastChecked"]
        assert "objects" not in service  # only failing objects are listed

    # A pod that cannot pull its image: unhealthy at once, with the reason and a hint.
    (pod,) = wait_pods(api.app, "redis", 1)
    kubelet.mark_waiting(api.app.kube, pod, "ImagePullBackOff",
                         'Back-off pulling image "redis:7.2"')

    def redis() -> dict[str, Any] | None:
        found = {s["name"]: s for s in api.get("/api/services/health").json["services"]}
        return found["redis"] if found["redis"]["status"] == "unhealthy" else None

    bad = wait_for(redis, timeout=10, message="redis unhealthy")
    assert bad["reason"] == "ImagePullBackOff" and bad["hint"]
    assert bad["objects"][0]["resource"] == f"{api.namespace}/Deployment/redis"
    others = {s["name"]: s["status"] for s in api.get("/api/services/health").json["services"]}
    assert others == {"frontend": "healthy", "postgres": "healthy", "redis": "unhealthy"}


def test_one_service_with_objects_health_and_events(api: Api) -> None:
    result = api.get("/api/services/redis")
    assert result.status_code == 200, result.text
    body = result.json
    assert body["name"] == "redis" and body["namespace"] == api.namespace
    assert body["health"]["name"] == "redis"
    resources = {o["resource"] for o in body["objects"]}
    assert resources == {f"{api.namespace}/Deployment/redis", f"{api.namespace}/Service/redis"}
    assert all(o["status"] for o in body["objects"])
    assert body["events"], "the first pass created redis's objects: events expected"
    assert {e["service"] for e in body["events"]} == {"redis"}

    details = envelope(api.get("/api/services/redis-master"), 404, "not_found")
    assert details["service"] == "redis-master"
    assert details["available"] == SERVICES


# --- deploying -----------------------------------------------------------------------------


def test_up_update_down_with_the_contract_bodies(api: Api) -> None:
    result = api.post("/api/up", {"services": ["redis"]})
    assert result.status_code == 200, result.text
    body = result.json
    assert body["message"] == "Successfully deployed all manifests"
    assert body["services"] == ["redis"]
    assert {r["service"] for r in body["results"]} <= {"redis", "_shared"}
    assert body["counts"]["failed"] == 0 and body["operation"]

    result = api.post("/api/update", {"services": ["redis"]})
    assert result.status_code == 200, result.text
    assert result.json["message"] == "Successfully updated all manifests"

    result = api.post("/api/down", {"services": ["redis"]})
    assert result.status_code == 200, result.text
    assert result.json["message"] == "Successfully removed all manifests"
    assert {r["result"] for r in result.json["results"]} == {"deleted"}
    assert _deployment(api, "redis") is None
    assert _deployment(api, "frontend") is not None  # only the named service
    listed = {s["name"]: s for s in api.get("/api/services").json["services"]}
    assert listed["redis"]["deployed"] is False and listed["redis"]["status"] == "down"

    result = api.post("/api/up", {"services": ["redis"]})
    assert result.status_code == 200, result.text
    assert _deployment(api, "redis") is not None


def test_an_object_the_api_server_refuses_is_a_validation_error_naming_it(
        make_api: Callable[..., Api], app: App) -> None:
    # The whole render is dry-run first: a refused object applies nothing, and every
    # refusal is named at once.
    (app.root / "broken").mkdir()
    (app.root / "broken" / "service.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: broken\n"
        "spec:\n  ports:\n  - port: 70000\n    protocol: TCP\n")
    api = make_api(pass_ok=False)
    details = envelope(api.post("/api/up", {"services": ["broken", "redis"]}), 400,
                       "validation_error")
    refused = details["refused"]
    assert [r["resource"] for r in refused] == [f"{api.namespace}/Service/broken"]
    assert "70000" in refused[0]["message"]
    assert details["applied"] == 0
    assert api.get("/api/status").json["lastPass"]["result"] == "failed"
    # The refusal is an error event of that resource.
    events = api.get(f"/api/events/{api.namespace}/Service/broken?type=error").json["events"]
    assert events, "no error event for the refused object"


def test_a_failing_object_is_a_reconciliation_error(make_api: Callable[..., Api],
                                                     app: App) -> None:
    # Passes the dry run, fails at the apply: a field another manager owns, with the
    # conflict policy `fail`.
    api = make_api(apply=replace(app.cfg.apply, conflicts="fail"))
    app.take_replicas("redis", 5)
    api.stop_loop()  # the drift stays for the call to meet
    details = envelope(api.post("/api/up", {"services": ["redis"]}), 500,
                       "reconciliation_error")
    assert details["resource"] == f"{api.namespace}/Deployment/redis"
    assert isinstance(details["error"], str) and details["error"]
    assert "conflict" in details["message"].lower() or "409" in details["message"]
    assert api.get("/api/status").json["lastPass"]["result"] == "failed"
    events = api.get(f"/api/events/{api.namespace}/Deployment/redis?type=error").json[
        "events"]
    assert events and events[0]["reason"] == "ApplyFailed"


def test_wait_false_answers_202_and_the_operation_can_be_followed(api: Api) -> None:
    # The 202's shape and the refusals: test_endpoints_fake.py; here the real operation
    # runs to its end and reports.
    result = api.post("/api/update?wait=false", {"services": ["frontend"]})
    assert result.status_code == 202, result.text
    op = result.json

    def finished() -> dict[str, Any] | None:
        body: dict[str, Any] = api.get(f"/api/operations/{op['id']}").json
        return body if body["status"] != "running" else None

    done = wait_for(finished, timeout=30, message="the operation to finish")
    assert done["status"] == "succeeded"
    assert done["report"]["operation"] == "update"
    assert done["report"]["result"] == "success"


# --- plan ----------------------------------------------------------------------------------


def test_plan_shows_a_diff_for_a_changed_object_and_changes_nothing(api: Api) -> None:
    api.stop_loop()
    api.app.kube.patch("apps/v1", "Deployment", "redis", {"spec": {"replicas": 4}},
                       api.namespace)
    before = _deployment(api, "redis")
    assert before is not None
    result = api.post("/api/plan", {"services": ["redis"]})
    assert result.status_code == 200, result.text
    plan = result.json
    assert plan["services"] == ["redis"]
    changes = {c["resource"]: c for c in plan["changes"]}
    change = changes[f"{api.namespace}/Deployment/redis"]
    assert change["action"] == "update" and change["reason"] == "drift"
    assert "-  replicas: 4" in change["diff"] and "+  replicas: 1" in change["diff"]
    assert "managedFields" not in change["diff"]
    assert changes[f"{api.namespace}/Service/redis"]["action"] == "unchanged"
    assert "diff" not in changes[f"{api.namespace}/Service/redis"]
    assert plan["counts"] == {"update": 1, "unchanged": len(changes) - 1}
    after = _deployment(api, "redis")  # a server-side dry-run: nothing was written
    assert after is not None and after["spec"]["replicas"] == 4
    assert after["metadata"]["generation"] == before["metadata"]["generation"]


def test_a_draft_plan_shows_the_image_diff_and_writes_nothing(api: Api) -> None:
    """Issue 15: a merge-patch draft is planned by server-side dry run against the live
    Deployment; neither the parameters nor the Deployment change, and the plan can be
    read again by its id."""
    api.stop_loop()
    params = api.get("/api/parameters")
    version = params.headers["etag"].strip('"')
    meta = api.app.resource()["metadata"]
    assert version == f"{meta['generation']}-{meta['uid'][:8]}"
    before = _deployment(api, "redis")
    assert before is not None
    image = before["spec"]["template"]["spec"]["containers"][0]["image"]
    result = api.post("/api/plan", {"services": ["redis"], "patch": {
        "services": {"redis": {"tag": "7.4-draft"}}}})
    assert result.status_code == 200, result.text
    plan = result.json
    assert plan["draft"] is True and plan["basedOn"] == version
    change = next(c for c in plan["changes"]
                  if c["resource"] == f"{api.namespace}/Deployment/redis")
    assert change["action"] == "update", change
    lines = change["diff"].splitlines()
    assert any(line.startswith("-") and line.endswith(f"image: {image}") for line in lines)
    assert any(line.startswith("+") and line.endswith("image: redis:7.4-draft")
               for line in lines), change["diff"]
    assert api.get(f"/api/plans/{plan['planId']}").json == plan
    after = _deployment(api, "redis")
    assert after is not None
    assert after["spec"]["template"]["spec"]["containers"][0]["image"] == image
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert api.app.resource()["metadata"]["generation"] == meta["generation"]
    # A write against the version the plan was based on goes through; a second one with
    # the same (now stale) version is 412 naming the current one.
    written = api.patch("/api/parameters", {"services": {"redis": {"replicas": 2}}},
                        headers={"If-Match": f'"{plan["basedOn"]}"'})
    assert written.status_code == 200, written.text
    details = envelope(api.patch("/api/parameters", {"services": {"redis": {"replicas": 3}}},
                                 headers={"If-Match": f'"{plan["basedOn"]}"'}),
                       412, "precondition_failed")
    assert f'"{details["current"]}"' == written.headers["etag"]


def test_plan_never_shows_secret_values(api: Api) -> None:
    live = "live-password-0xC0FFEE"
    planned = "planned-password-0xBEEF"
    spec = _full_spec(api)
    api.app.kube.patch("v1", "Secret", "postgres",
                       {"data": {"password": base64.b64encode(live.encode()).decode()}},
                       api.namespace)
    # The value the plan would write comes from a parameter: the loop applies it, then
    # (the loop stopped) the live Secret drifts back to another value.
    spec["services"]["postgres"]["password"] = planned
    assert api.post("/api/parameters", spec).status_code == 200
    secret = f"{api.namespace}/Secret/postgres"

    def applied() -> bool:
        obj = api.app.kube.get("v1", "Secret", "postgres", api.namespace) or {}
        return bool(base64.b64decode(obj["data"]["password"]).decode() == planned)

    wait_for(applied, timeout=20, message="the new password applied by the loop")
    api.stop_loop()
    api.app.kube.patch("v1", "Secret", "postgres",
                       {"data": {"password": base64.b64encode(live.encode()).decode()}},
                       api.namespace)
    result = api.post("/api/plan", {"services": ["postgres"]})
    assert result.status_code == 200, result.text
    change = {c["resource"]: c for c in result.json["changes"]}[secret]
    assert change["action"] == "update"
    lines = change["diff"].splitlines()
    # The change is visible, its values are not; an unchanged value is plainly redacted.
    assert any(line.startswith("-") and "password: '***REDACTED***'" in line
               for line in lines), change["diff"]
    assert any(line.startswith("+") and "password: '***REDACTED (changed)***'" in line
               for line in lines), change["diff"]
    assert any(line.startswith(" ") and "username: '***REDACTED***'" in line
               for line in lines), change["diff"]
    for value in (live, planned, "conductor", "app"):
        for form in (value, base64.b64encode(value.encode()).decode()):
            if len(form) > 4:
                assert form not in result.text, form
    assert base64.b64encode(b"app").decode() not in change["diff"]


# --- events --------------------------------------------------------------------------------


def _ids(result: Any) -> list[int]:
    assert result.status_code == 200, result.text
    return [e["id"] for e in result.json["events"]]


def test_events_of_one_applied_resource(api: Api) -> None:
    # The queries over seeded events: test_endpoints_fake.py; here the events of what the
    # first pass applied.
    result = api.get(f"/api/events/{api.namespace}/Deployment/frontend?limit=10")
    events = result.json["events"]
    assert events and all(e["resource"] == f"{api.namespace}/Deployment/frontend"
                          for e in events)
    # Our apply is among them (the Deployment's own Kubernetes events, e.g. its
    # ReplicaSet's SuccessfulCreate filed under it, may be newer).
    assert "Created" in [e["reason"] for e in events], events
    # Cluster-scoped objects use "-" for the namespace.
    namespaced = api.get(f"/api/events/-/Namespace/{api.namespace}").json["events"]
    assert [e["reason"] for e in namespaced] == ["Created"]
    assert _ids(api.get("/api/events/default/Deployment/frontend?limit=10")) == []


# --- parameters ----------------------------------------------------------------------------


def test_parameters_get_and_post_the_contract_example(api: Api) -> None:
    body = api.get("/api/parameters").json
    assert body == _full_spec(api)
    # The contract's Example 4 body (its namespace made the test's: "default" would move
    # the app), on top of the current values so every template still renders.
    example = {"global": {"namespace": api.namespace, "replicas": 1},
               "services": {"redis": {"replicas": 5}}}
    spec = json.loads(json.dumps(body))
    spec["global"].update(example["global"])
    spec["services"]["redis"].update(example["services"]["redis"])
    result = api.post("/api/parameters", spec)
    assert result.status_code == 200, result.text
    assert result.json["message"] == "Parameters updated"
    assert result.json["parameters"] == spec
    assert result.json["revision"] == "generation/2"
    assert api.get("/api/parameters").json == spec
    wait_for(lambda: _replicas(api, "redis") == 5, timeout=20,
             message="the loop applies the new parameters")
    result = api.post("/api/update", {"services": ["redis"]})
    assert result.status_code == 200, result.text
    assert result.json["revision"] == "generation/2"


def test_the_contract_example_4_body_scales_redis(api: Api) -> None:
    """POST replaces the spec; the app's defaults (manifests/parameters.yaml) fill in what
    the minimal body leaves out, so the contract's Example 4 scales redis and only that."""
    body = {"global": {"namespace": api.namespace, "replicas": 1},
            "services": {"redis": {"replicas": 5}}}
    assert api.post("/api/parameters", body).status_code == 200
    result = api.post("/api/update", {"services": ["redis"]})
    assert result.status_code == 200, result.text
    assert _replicas(api, "redis") == 5
    values = api.get("/api/parameters/redis").json
    assert values["values"] == {"replicas": 5}
    assert values["effective"]["image"] == "redis"  # from the app's defaults


def test_patch_merges_and_null_deletes(api: Api) -> None:
    result = api.patch("/api/parameters",
                       {"services": {"redis": {"replicas": 2, "env": {"MODE": "x"}}}})
    assert result.status_code == 200, result.text
    spec = result.json["parameters"]
    assert spec["services"]["redis"]["replicas"] == 2
    assert spec["services"]["redis"]["image"] == "redis"  # kept
    assert spec["services"]["frontend"]["replicas"] == 2  # untouched
    result = api.patch("/api/parameters", {"services": {"redis": {"env": None}}})
    assert result.status_code == 200, result.text
    assert "env" not in result.json["parameters"]["services"]["redis"]
    wait_for(lambda: _replicas(api, "redis") == 2, timeout=20, message="patch applied")


def test_parameter_views_instances_schema_values_and_one_service(api: Api) -> None:
    instances = api.get("/api/parameters/instances").json["instances"]
    assert [(i["name"], i["namespace"], i["default"]) for i in instances] \
        == [("default", api.namespace, True)]
    # Ready means applied and healthy: the pods have to run first (settled on every poll,
    # as the other tests do: under load the ReplicaSets create them after a first look).
    def ready() -> bool:
        kubelet.settle(api.app.kube, api.namespace)
        return bool(api.get("/api/parameters/instances").json["instances"][0]["ready"]
                    == "True")

    wait_for(ready, timeout=60, message="the instance Ready")
    assert instances[0]["lastAppliedRevision"] == "generation/1"

    schema = api.get("/api/parameters/schema").json
    assert schema["type"] == "object" and {"global", "services"} <= set(schema["properties"])

    values = api.get("/api/parameters/values").json
    assert values["revision"] == "generation/1"
    assert sorted(values["services"]) == SERVICES
    assert values["services"]["redis"]["replicas"] == 1  # from global
    assert values["services"]["frontend"]["replicas"] == 2  # its own
    assert values["services"]["redis"]["namespace"] == api.namespace

    redis = api.get("/api/parameters/redis").json
    assert redis["service"] == "redis"
    assert redis["values"] == _full_spec(api)["services"]["redis"]
    assert redis["effective"] == values["services"]["redis"]
    details = envelope(api.get("/api/parameters/redis-master"), 404, "not_found")
    assert details["available"] == SERVICES


def test_history_and_rollback_restore_the_old_spec(api: Api) -> None:
    old = _full_spec(api)
    history = api.get("/api/parameters/history").json["history"]
    assert [h["revision"] for h in history] == ["generation/1"]
    assert history[0]["parameters"] == old and history[0]["source"] == "resource"

    assert api.patch("/api/parameters",
                     {"services": {"redis": {"replicas": 3}}}).status_code == 200

    def recorded() -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] = api.get("/api/parameters/history").json["history"]
        return found if found[0]["revision"] == "generation/2" else None

    history = wait_for(recorded, timeout=20, message="the pass to record generation/2")
    assert history[0]["parameters"]["services"]["redis"]["replicas"] == 3
    assert _replicas(api, "redis") == 3
    assert [h["revision"] for h in
            api.get("/api/parameters/history?limit=1").json["history"]] == ["generation/2"]

    result = api.post("/api/parameters/rollback", {"revision": "generation/1"})
    assert result.status_code == 200, result.text
    assert result.json["rolledBackTo"] == "generation/1"
    assert result.json["message"] == "Parameters rolled back to generation/1"
    assert result.json["parameters"] == old
    assert api.get("/api/parameters").json == old
    wait_for(lambda: _replicas(api, "redis") == 1, timeout=20, message="rollback applied")
    # Its refusals: test_endpoints_fake.py.


# --- webhooks ------------------------------------------------------------------------------


SECRET = "webhook-secret-42"


def _sign(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()


@pytest.fixture
def hooked(make_api: Callable[..., Api], tmp_path: Path) -> Api:
    secret = tmp_path / "webhook-secret"
    secret.write_text(SECRET + "\n")
    return make_api(git=GitSettings(webhook_secret_file=str(secret)))


def _triggers_a_pass(api: Api, send: Callable[[], Any]) -> Any:
    before = api.passes()
    result = send()
    assert result.status_code == 202, result.text
    assert result.json["triggered"] is True
    wait_for(lambda: api.passes() > before, timeout=20, message="a pass after the webhook")
    wait_for(lambda: "webhook" in api.get("/api/status").json["lastPass"]["trigger"],
             timeout=5, message="the pass's trigger")
    return result


def test_github_signature_triggers_a_pass(hooked: Api) -> None:
    body = json.dumps({"ref": "refs/heads/main", "after": "abc"}).encode()
    result = _triggers_a_pass(hooked, lambda: hooked.post(
        "/api/webhooks/git", body, headers={"X-Hub-Signature-256": _sign(body),
                                            "X-GitHub-Event": "push"}))
    assert result.json["provider"] == "github" and result.json["ref"] == "refs/heads/main"

    before = hooked.passes()
    details = envelope(hooked.post("/api/webhooks/git", body,
                                   headers={"X-Hub-Signature-256": _sign(b"other")}),
                       401, "unauthorized")
    assert details["provider"] == "github"
    other = json.dumps({"ref": "refs/heads/feature"}).encode()
    ignored = hooked.post("/api/webhooks/git", other,
                          headers={"X-Hub-Signature-256": _sign(other)})
    assert ignored.status_code == 202 and ignored.json["triggered"] is False
    assert hooked.passes() == before


# --- cluster requirements, API description -------------------------------------------------


def test_cluster_requirements_fail_on_a_cluster_without_nodes(api: Api) -> None:
    body = api.get("/api/cluster/requirements").json
    assert body["ok"] is False
    assert body["file"] == "requirements.yaml"
    checks = {c["name"]: c for c in body["checks"]}
    assert checks["nodes"]["ok"] is False and checks["nodes"]["actual"] == 0
    assert checks["nodes"]["message"] == "nodes: need 1, have 0"
    assert checks["kubernetesVersion"]["ok"] is True
    assert body["facts"]["nodes"] == 0


def test_a_patch_that_changes_nothing_writes_nothing(api: Api) -> None:
    """Writes go to the DeploymentParameters object: an identical spec is no new generation."""
    assert api.patch("/api/parameters", {"global": {"replicas": 1}}).status_code == 200
    obj = api.app.kube.get(API_VERSION, KIND, "default", api.namespace)
    assert obj is not None and obj["metadata"]["generation"] == 1  # no change, no bump


def test_up_can_wait_for_health(api: Api) -> None:
    # Nothing runs the pods here: still progressing at the timeout is a 202, not an error.
    result = api.post("/api/up", {"services": ["redis"]},
                      params={"waitHealthy": "true", "healthTimeout": "0.5"})
    assert result.status_code == 202, result.text
    assert result.json["health"]["redis"]["status"] == "progressing"
    assert result.json["message"] == "applied; not every service is healthy yet"
    # Healthy: 200 with the health of each service.
    make_all_ready(api.app)
    result = api.post("/api/up", {"services": ["redis"]},
                      params={"waitHealthy": "true", "healthTimeout": "20"})
    assert result.status_code == 200, result.text
    assert result.json["health"]["redis"]["status"] == "healthy"
    # Unhealthy: the contract's reconciliation_error naming the object and the reason.
    pod = wait_pods(api.app, "redis", 1)[0]
    kubelet.mark_waiting(api.app.kube, pod, "ImagePullBackOff",
                         'Back-off pulling image "redis:7.2"')
    wait_for(lambda: {s["name"]: s["status"] for s in
                      api.get("/api/services/health").json["services"]}["redis"]
             == "unhealthy", message="redis unhealthy")
    details = envelope(api.post("/api/up", {"services": ["redis"]},
                                params={"waitHealthy": "true", "healthTimeout": "20"}),
                       500, "reconciliation_error")
    assert details["error"] == "ImagePullBackOff"
    assert details["resource"] == f"{api.namespace}/Deployment/redis"
    assert details["service"] == "redis"


def test_waiting_for_health_ends_at_a_paused_deployment(api: Api) -> None:
    # A paused Deployment is suspended on purpose: waiting would not change it, so the call
    # answers at once (200, the status says suspended) instead of at the timeout (202).
    make_all_ready(api.app)
    api.stop_loop()
    api.app.kube.patch("apps/v1", "Deployment", "redis", {"spec": {"paused": True}},
                       api.namespace)
    wait_for(lambda: {s["name"]: s["status"] for s in
                      api.get("/api/services/health").json["services"]}["redis"]
             == "suspended", message="redis suspended")
    result = api.post("/api/up", {"services": ["redis"]},
                      params={"waitHealthy": "true", "healthTimeout": "30"})
    assert result.status_code == 200, result.text
    assert result.json["health"]["redis"]["status"] == "suspended"
