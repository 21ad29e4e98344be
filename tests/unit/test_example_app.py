"""The example application in manifests/: its defaults validate and it renders real objects."""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.errors import ValidationError
from controller.model.objects import LABEL_SERVICE, SHARED_SERVICE, Manifest
from controller.model.parameters import Parameters, load_schema, validate_spec
from controller.model.rendering import Tree, load_tree, render

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
DEFAULTS: dict[str, Any] = yaml.safe_load((MANIFESTS / "parameters.yaml").read_text())


@pytest.fixture(scope="module")
def app_tree() -> Tree:
    return load_tree(MANIFESTS)


def rendered(app_tree: Tree, spec: dict[str, Any] | None = None,
             **kwargs: Any) -> dict[str, Manifest]:
    manifests = render(app_tree, Parameters.from_spec(spec or DEFAULTS), **kwargs)
    return {f"{m.key.kind}/{m.key.name}": m for m in manifests}


def containers(m: Manifest) -> list[dict[str, Any]]:
    return list(m.body["spec"]["template"]["spec"]["containers"])


def test_defaults_validate_against_the_crd() -> None:
    validate_spec(DEFAULTS, load_schema(ROOT / "config" / "crd" / "deploymentparameters.yaml"))


def test_services_of_the_example(app_tree: Tree) -> None:
    assert app_tree.names == ["frontend", "postgres", "redis"]
    assert SHARED_SERVICE in app_tree.services
    assert set(DEFAULTS["services"]) == set(app_tree.names)


def test_renders_every_object_with_defaults(app_tree: Tree) -> None:
    objects = rendered(app_tree)
    assert set(objects) == {
        "Deployment/frontend", "Service/frontend",
        "Deployment/redis", "Service/redis",
        "StatefulSet/postgres", "Service/postgres", "Secret/postgres",
        "PersistentVolumeClaim/postgres-data",
    }  # no Namespace: "default" always exists and must never be owned (or pruned) by us
    for m in objects.values():
        assert m.key.namespace == "default"
        assert m.body["metadata"]["labels"][LABEL_SERVICE] == m.service
        assert m.api_version in ("v1", "apps/v1")


def test_a_namespace_is_created_when_not_default(app_tree: Tree) -> None:
    spec = copy.deepcopy(DEFAULTS)
    spec["global"]["namespace"] = "shop"
    objects = rendered(app_tree, spec)
    ns = objects["Namespace/shop"]
    assert ns.service == SHARED_SERVICE and ns.key.namespace == ""
    assert ns.body["metadata"]["labels"][LABEL_SERVICE] == ""
    assert all(m.key.namespace == "shop" for m in objects.values() if m is not ns)
    # Rendered even when only one service is.
    assert set(rendered(app_tree, spec, services=["redis"])) == {
        "Namespace/shop", "Deployment/redis", "Service/redis"}


def test_workloads_take_typed_values_from_parameters(app_tree: Tree) -> None:
    objects = rendered(app_tree)
    frontend = objects["Deployment/frontend"].body
    assert frontend["spec"]["replicas"] == 2 and type(frontend["spec"]["replicas"]) is int
    assert objects["Deployment/redis"].body["spec"]["replicas"] == 1  # from global
    [web] = containers(objects["Deployment/frontend"])
    assert web["image"] == "nginx:1.25"
    assert web["imagePullPolicy"] == "IfNotPresent"
    assert web["ports"] == [{"name": "http", "containerPort": 80, "protocol": "TCP"}]
    assert web["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"},
                                "limits": {"memory": "256Mi"}}
    [db] = containers(objects["StatefulSet/postgres"])
    assert db["image"] == "postgres:16"
    # Maps merge: postgres raises only the memory limit.
    assert db["resources"] == {"requests": {"cpu": "50m", "memory": "64Mi"},
                               "limits": {"memory": "512Mi"}}


def test_frontend_finds_redis_and_postgres_by_service_name(app_tree: Tree) -> None:
    objects = rendered(app_tree)
    env = {e["name"]: e["value"] for e in containers(objects["Deployment/frontend"])[0]["env"]}
    assert env["REDIS_HOST"] == "redis" and f"Service/{env['REDIS_HOST']}" in objects
    assert env["POSTGRES_HOST"] == "postgres" and f"Service/{env['POSTGRES_HOST']}" in objects
    assert env["REDIS_PORT"] == "6379" and env["POSTGRES_PORT"] == "5432"
    assert all(isinstance(value, str) for value in env.values())


def test_extra_env_from_parameters(app_tree: Tree) -> None:
    spec = copy.deepcopy(DEFAULTS)
    spec["global"]["env"] = {"LOG_LEVEL": "debug"}
    spec["services"]["frontend"]["env"] = {"GREETING": "hi\nevil: true"}
    objects = rendered(app_tree, spec)
    env = {e["name"]: e["value"] for e in containers(objects["Deployment/frontend"])[0]["env"]}
    assert env["GREETING"] == "hi\nevil: true" and env["LOG_LEVEL"] == "debug"
    redis_env = containers(objects["Deployment/redis"])[0]["env"]
    assert redis_env == [{"name": "LOG_LEVEL", "value": "debug"}]


def test_every_container_has_probes(app_tree: Tree) -> None:
    for m in rendered(app_tree).values():
        if m.key.kind in ("Deployment", "StatefulSet"):
            for c in containers(m):
                assert "readinessProbe" in c and "livenessProbe" in c, m.key


def test_selectors_match_pod_labels_and_services(app_tree: Tree) -> None:
    objects = rendered(app_tree)
    for name, kind in (("frontend", "Deployment"), ("redis", "Deployment"),
                       ("postgres", "StatefulSet")):
        workload = objects[f"{kind}/{name}"].body["spec"]
        pod_labels = workload["template"]["metadata"]["labels"]
        assert workload["selector"]["matchLabels"].items() <= pod_labels.items()
        assert objects[f"Service/{name}"].body["spec"]["selector"].items() <= pod_labels.items()


def test_postgres_statefulset_secret_and_claim(app_tree: Tree) -> None:
    objects = rendered(app_tree)
    secret = objects["Secret/postgres"].body
    decoded = {k: base64.b64decode(v, validate=True).decode() for k, v in secret["data"].items()}
    assert decoded == {"username": "app", "password": "conductor"}  # the default password
    claim = objects["PersistentVolumeClaim/postgres-data"].body
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    sts = objects["StatefulSet/postgres"].body["spec"]
    assert sts["serviceName"] == "postgres"
    assert objects["Service/postgres"].body["spec"]["clusterIP"] == "None"
    volumes = sts["template"]["spec"]["volumes"]
    assert volumes == [{"name": "data", "persistentVolumeClaim": {"claimName": "postgres-data"}}]
    refs = [e["valueFrom"]["secretKeyRef"] for e in containers(objects["StatefulSet/postgres"])[0]
            ["env"] if "valueFrom" in e]
    assert {(r["name"], r["key"]) for r in refs} == {("postgres", "username"),
                                                      ("postgres", "password")}


def test_password_and_storage_from_parameters(app_tree: Tree) -> None:
    spec = copy.deepcopy(DEFAULTS)
    spec["services"]["postgres"].update(password="s3cret\n:", storage="5Gi",
                                        storageClass="fast")
    objects = rendered(app_tree, spec)
    data = objects["Secret/postgres"].body["data"]
    assert base64.b64decode(data["password"]).decode() == "s3cret\n:"
    claim = objects["PersistentVolumeClaim/postgres-data"].body["spec"]
    assert claim["resources"]["requests"]["storage"] == "5Gi"
    assert claim["storageClassName"] == "fast"


def test_a_missing_parameter_is_reported_with_file_and_line(app_tree: Tree) -> None:
    spec = copy.deepcopy(DEFAULTS)
    del spec["services"]["redis"]["port"]
    with pytest.raises(ValidationError) as err:
        rendered(app_tree, spec)
    files = {e["file"] for e in err.value.details["errors"]}
    # The frontend reads services.redis.port too: one error per file, all reported.
    assert files == {"frontend/deployment.yaml", "redis/deployment.yaml", "redis/service.yaml"}
    assert all(e["line"] > 0 for e in err.value.details["errors"])


# --- the example's values are typed as the fields they end up in (issue 9, finding 17) -----

SCHEMA = load_schema(ROOT / "config" / "crd" / "deploymentparameters.yaml")


@pytest.mark.parametrize("section, values, path", [
    ("redis", {"port": 70000}, "spec.services.redis.port"),  # rendered into frontend too
    ("redis", {"port": 0}, "spec.services.redis.port"),
    ("redis", {"port": "6379"}, "spec.services.redis.port"),
    ("redis", {"replicas": 99999999999999999999}, "spec.services.redis.replicas"),
    ("redis", {"replicas": 2147483648}, "spec.services.redis.replicas"),
    ("redis", {"replicas": 2.5}, "spec.services.redis.replicas"),
    ("redis", {"replicas": 2.0}, "spec.services.redis.replicas"),  # would render "2.0"
    ("frontend", {"image": ""}, "spec.services.frontend.image"),
    ("frontend", {"tag": ""}, "spec.services.frontend.tag"),
    ("postgres", {"database": ""}, "spec.services.postgres.database"),
    ("postgres", {"user": ""}, "spec.services.postgres.user"),
    ("postgres", {"password": {"secretKeyRef": {"name": "db"}}},
     "spec.services.postgres.password"),
    ("postgres", {"password": {"secretKeyRef": {"name": "db", "key": "pw", "x": 1}}},
     "spec.services.postgres.password"),
    ("frontend", {"env": {"A": "1"}, "apiToken": {"secretKeyRef": "db"}},
     "spec.services.frontend.apiToken"),  # a free-form value's reference too
    ("postgres", {"storageClass": ""}, "spec.services.postgres.storageClass"),
    ("global", {"port": 65536}, "spec.global.port"),
    ("global", {"imagePullPolicy": "Sometimes"}, "spec.global.imagePullPolicy"),
])
def test_values_the_api_server_would_refuse_are_validation_errors(
        section: str, values: dict[str, Any], path: str) -> None:
    spec = copy.deepcopy(DEFAULTS)
    target = spec["global"] if section == "global" else spec["services"][section]
    target.update(values)
    with pytest.raises(ValidationError) as err:
        validate_spec(spec, SCHEMA)
    assert err.value.details["path"] == path


def test_the_contracts_example_4_and_typical_values_stay_valid() -> None:
    validate_spec({"global": {"namespace": "default", "replicas": 1},
                   "services": {"redis": {"replicas": 5}}}, SCHEMA)
    spec = copy.deepcopy(DEFAULTS)
    spec["services"]["redis"].update(port=1, replicas=2147483647)
    spec["services"]["frontend"].update(port=65535, replicas=0)
    spec["services"]["postgres"].update(password="s3cret", storageClass="fast")
    validate_spec(spec, SCHEMA)
    spec["services"]["postgres"]["password"] = {"secretKeyRef": {"name": "db", "key": "pw"}}
    validate_spec(spec, SCHEMA)


def test_a_password_from_a_secret_reference_is_rendered_into_the_secret(app_tree: Tree) -> None:
    from controller.model.parameters import resolve_secret_refs

    spec = copy.deepcopy(DEFAULTS)
    spec["services"]["postgres"]["password"] = {"secretKeyRef": {"name": "db", "key": "pw"}}
    params = resolve_secret_refs(Parameters.from_spec(spec),
                                 {"db": {"pw": "from-the-secret"}}.get)
    manifests = render(app_tree, params)
    secret = next(m for m in manifests if m.key.kind == "Secret").body
    assert base64.b64decode(secret["data"]["password"]).decode() == "from-the-secret"
