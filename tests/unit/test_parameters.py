"""Parameters: the spec shape, the merge rules, and validation against the CRD's schema."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from controller.errors import SourceError, ValidationError
from controller.model.parameters import (
    DEFAULT_CRD,
    Parameters,
    deep_merge,
    effective,
    load_schema,
    validate_spec,
)

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "config" / "crd" / "deploymentparameters.yaml"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return load_schema(CRD)


# --- Parameters -------------------------------------------------------------------------


def test_from_spec_reads_both_sections_and_tolerates_missing_ones() -> None:
    params = Parameters.from_spec({"global": {"a": 1}, "services": {"web": {"b": 2}}})
    assert params.global_ == {"a": 1}
    assert params.services == {"web": {"b": 2}}
    assert Parameters.from_spec({}) == Parameters({}, {})
    assert Parameters.from_spec(None) == Parameters({}, {})
    assert Parameters.from_spec({"global": None, "services": {"web": None}}).services == {
        "web": {}}


def test_from_spec_copies_its_input() -> None:
    spec = {"global": {"env": {"A": "1"}}, "services": {"web": {"ports": [80]}}}
    params = Parameters.from_spec(spec)
    params.global_["env"]["A"] = "changed"
    params.services["web"]["ports"].append(81)
    assert spec == {"global": {"env": {"A": "1"}}, "services": {"web": {"ports": [80]}}}


def test_to_spec_round_trips() -> None:
    spec = {"global": {"namespace": "shop"}, "services": {"redis": {"replicas": 1}}}
    assert Parameters.from_spec(spec).to_spec() == spec


@pytest.mark.parametrize("spec, path", [
    ({"global": [1]}, "spec.global"),
    ({"services": "web"}, "spec.services"),
    ({"services": {"web": [1]}}, "spec.services.web"),
])
def test_from_spec_refuses_sections_that_are_not_maps(spec: dict[str, Any], path: str) -> None:
    with pytest.raises(ValidationError) as err:
        Parameters.from_spec(spec)
    assert err.value.details["path"] == path


# --- merging ------------------------------------------------------------------------------


def test_maps_merge_recursively_and_override_wins() -> None:
    base = {"resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}, "replicas": 1}
    override = {"resources": {"requests": {"memory": "1Gi"}}, "replicas": 3}
    assert deep_merge(base, override) == {
        "resources": {"requests": {"cpu": "50m", "memory": "1Gi"}}, "replicas": 3}


def test_lists_and_scalars_replace_whole() -> None:
    assert deep_merge({"args": [1, 2, 3]}, {"args": [9]}) == {"args": [9]}
    assert deep_merge({"env": {"A": "1"}}, {"env": None}) == {"env": None}
    assert deep_merge({"x": 1}, {"x": {"y": 2}}) == {"x": {"y": 2}}
    assert deep_merge({"x": {"y": 2}}, {"x": 1}) == {"x": 1}


def test_effective_is_global_overlaid_by_the_service() -> None:
    params = Parameters.from_spec({
        "global": {"namespace": "shop", "replicas": 1, "env": {"A": "1", "B": "2"}},
        "services": {"web": {"replicas": 3, "env": {"B": "x"}}},
    })
    assert effective(params, "web") == {
        "namespace": "shop", "replicas": 3, "env": {"A": "1", "B": "x"}}
    assert effective(params, "other") == params.global_


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner,
                                                                   max_size=3),
    max_leaves=10,
)
maps = st.dictionaries(st.text(max_size=3), json_values, max_size=4)


@given(maps, maps)
def test_merge_never_mutates_and_never_shares(base: dict[str, Any],
                                              override: dict[str, Any]) -> None:
    before = copy.deepcopy((base, override))
    merged = deep_merge(base, override)
    assert (base, override) == before
    assert set(merged) == set(base) | set(override)
    for key, value in override.items():
        if not (isinstance(value, dict) and isinstance(base.get(key), dict)):
            assert merged[key] == value
    # Changing the result must not reach the inputs.
    for value in merged.values():
        if isinstance(value, list | dict):
            value.clear()
    assert (base, override) == before


@given(maps)
def test_merge_identities(values: dict[str, Any]) -> None:
    assert deep_merge(values, {}) == values
    assert deep_merge({}, values) == values
    assert deep_merge(values, values) == values


# --- the CRD and its schema -------------------------------------------------------------


def test_default_crd_path_is_the_shipped_file() -> None:
    assert DEFAULT_CRD == CRD
    assert load_schema() == load_schema(CRD)


def test_load_schema_returns_the_spec_schema(schema: dict[str, Any]) -> None:
    assert schema["type"] == "object"
    # Values (global, services) and the controls beside them (suspend, ignore rules, and
    # where the parameters come from: spec.source).
    assert set(schema["properties"]) == {"global", "services", "suspend", "ignore", "source"}


def test_load_schema_reports_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError):
        load_schema(tmp_path / "missing.yaml")
    (tmp_path / "x.yaml").write_text("kind: ConfigMap\n")
    with pytest.raises(ValidationError):
        load_schema(tmp_path / "x.yaml")


def test_crd_identity() -> None:
    crd = yaml.safe_load(CRD.read_text())
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "deploymentparameters.conductor.io"
    spec = crd["spec"]
    assert spec["group"] == "conductor.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "DeploymentParameters", "listKind": "DeploymentParametersList",
        "plural": "deploymentparameters", "singular": "deploymentparameter",
        "shortNames": ["dp"]}
    [version] = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert set(columns) == {"Ready", "Reason", "Revision", "Age"}
    assert columns["Reason"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].reason'
    assert columns["Revision"]["jsonPath"] == ".status.lastAppliedRevision"
    assert columns["Age"]["type"] == "date"
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["x-kubernetes-preserve-unknown-fields"] is True
    assert {"conditions", "observedGeneration", "lastAppliedRevision", "lastPassTime",
            "lastPassDuration", "services", "inventory"} <= set(status["properties"])


def _structural_problems(node: dict[str, Any], path: str) -> list[str]:
    """The structural-schema rules of apiextensions v1 that a hand-written CRD can break."""
    problems = []
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    int_or_string = node.get("x-kubernetes-int-or-string") is True
    if "type" not in node and not (preserve or int_or_string):
        problems.append(f"{path}: no type")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties together")
    for junctor in ("allOf", "anyOf", "oneOf"):
        for sub in node.get(junctor, []):
            allowed = int_or_string and junctor == "anyOf" and set(sub) == {"type"}
            if not allowed and {"type", "default", "nullable", "description"} & set(sub):
                problems.append(f"{path}.{junctor}: type/default/description inside")
    if "items" in node and isinstance(node["items"], list):
        problems.append(f"{path}: items must be one schema")
    for name, sub in node.get("properties", {}).items():
        problems += _structural_problems(sub, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        problems += _structural_problems(node["additionalProperties"], f"{path}[*]")
    if isinstance(node.get("items"), dict):
        problems += _structural_problems(node["items"], f"{path}[]")
    return problems


def test_crd_schema_is_structural() -> None:
    crd = yaml.safe_load(CRD.read_text())
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _structural_problems(root, "") == []
    # metadata may only be `type: object` at the root (apiextensions rule).
    assert root["properties"]["metadata"] == {"type": "object"}


def test_global_and_per_service_well_known_keys_are_the_same(schema: dict[str, Any]) -> None:
    global_ = schema["properties"]["global"]
    per_service = schema["properties"]["services"]["additionalProperties"]
    assert global_["properties"] == per_service["properties"]
    assert global_["x-kubernetes-preserve-unknown-fields"] is True
    assert "deployed" not in global_["properties"]


# --- validation -----------------------------------------------------------------------------


def test_valid_specs_pass(schema: dict[str, Any]) -> None:
    validate_spec({}, schema)
    validate_spec({"global": {"namespace": "shop", "anything": {"goes": [1, 2]}},
                   "services": {"redis": {"replicas": 0, "image": "redis", "tag": "7.2",
                                          "imagePullPolicy": "Always", "storage": "1.5Gi",
                                          "env": {"A": "1"},
                                          "resources": {"requests": {"cpu": "100m",
                                                                     "memory": 1024},
                                                        "limits": {"cpu": 2},
                                                        "claims": [{"name": "gpu"}]}}}},
                  schema)


def test_error_names_the_failing_path(schema: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as err:
        validate_spec({"services": {"redis": {"replicas": -1}}}, schema)
    assert err.value.message == "spec.services.redis.replicas: -1 is less than the minimum of 0"
    assert err.value.details["path"] == "spec.services.redis.replicas"
    assert err.value.details["reason"] == "-1 is less than the minimum of 0"
    assert err.value.details["errors"] == [
        {"path": "spec.services.redis.replicas", "reason": "-1 is less than the minimum of 0"}]
    assert err.value.code == "validation_error"


def test_every_error_is_listed(schema: dict[str, Any]) -> None:
    spec = {"global": {"namespace": "Not_A_Label", "imagePullPolicy": "Sometimes"},
            "services": {"db": {"storage": "lots", "env": {"A": 1}, "replicas": "3",
                                "resources": {"limits": {"memory": "1 GB"}}}}}
    with pytest.raises(ValidationError) as err:
        validate_spec(spec, schema)
    paths = [e["path"] for e in err.value.details["errors"]]
    assert paths == sorted([
        "spec.global.imagePullPolicy", "spec.global.namespace",
        "spec.services.db.env.A", "spec.services.db.replicas",
        "spec.services.db.resources.limits.memory", "spec.services.db.storage"])
    assert err.value.details["path"] == paths[0]
    assert err.value.message.startswith(f"{paths[0]}: ")
    assert "(and 5 more)" in err.value.message


def test_unknown_top_level_fields_are_refused(schema: dict[str, Any]) -> None:
    # The API server would drop `service` silently; a Git-sourced typo should not vanish.
    with pytest.raises(ValidationError) as err:
        validate_spec({"service": {"web": {}}}, schema)
    assert err.value.details["path"] == "spec"
    assert "'service' was unexpected" in err.value.details["reason"]


def test_list_indices_are_shown_in_brackets() -> None:
    schema = {"type": "object", "properties": {"ports": {"type": "array",
                                                         "items": {"type": "integer"}}}}
    with pytest.raises(ValidationError) as err:
        validate_spec({"ports": [80, "x"]}, schema)
    assert err.value.details["path"] == "spec.ports[1]"


def test_openapi_keywords_are_understood() -> None:
    schema = {
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
        "properties": {
            "maybe": {"type": "string", "nullable": True},
            "mode": {"type": "string", "enum": ["a", "b"], "nullable": True},
            "port": {"x-kubernetes-int-or-string": True},
            # A field whose name is itself a schema keyword.
            "properties": {"type": "object", "properties": {"nullable": {"type": "integer"}}},
        },
    }
    validate_spec({"maybe": None, "mode": None, "port": 80, "extra": 1,
                   "properties": {"nullable": 1}}, schema)
    validate_spec({"port": "http"}, schema)
    with pytest.raises(ValidationError):
        validate_spec({"port": 1.5}, schema)
    with pytest.raises(ValidationError):
        validate_spec({"properties": {"nullable": "x"}}, schema)
    with pytest.raises(ValidationError):
        validate_spec({"properties": {"other": 1}}, schema)


def test_a_spec_that_is_not_a_map_is_refused(schema: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as err:
        validate_spec([1], schema)
    assert err.value.details["path"] == "spec"


# --- limits (issue 9, finding 9) -------------------------------------------------------------


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def test_deep_nesting_is_refused_naming_the_limit_and_path(schema: dict[str, Any]) -> None:
    from controller.model.parameters import MAX_DEPTH

    with pytest.raises(ValidationError) as err:
        validate_spec({"services": {"redis": {"x": _nested(400)}}}, schema)
    details = err.value.details
    assert details["limit"] == MAX_DEPTH == 32
    assert details["path"].startswith("spec.services.redis.x.a.a")
    assert details["path"].count(".") == MAX_DEPTH
    assert f"nested deeper than {MAX_DEPTH} levels" in err.value.message
    # Lists count as levels too, and the limit is a limit, not an approximation.
    with pytest.raises(ValidationError):
        nested: Any = 1
        for _ in range(31):  # spec, global and 31 lists: 33 levels
            nested = [nested]
        validate_spec({"global": {"x": nested}}, schema)
    validate_spec({"services": {"redis": {"x": _nested(MAX_DEPTH - 4)}}}, schema)


def test_nesting_deeper_than_the_python_stack_is_refused_not_crashed(
        schema: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        validate_spec({"global": {"x": _nested(5000)}}, schema)


def test_a_huge_spec_is_refused_naming_the_limit(schema: dict[str, Any]) -> None:
    from controller.model.parameters import MAX_SPEC_BYTES

    with pytest.raises(ValidationError) as err:
        validate_spec({"global": {"blob": "x" * MAX_SPEC_BYTES}}, schema)
    assert err.value.details["limit"] == MAX_SPEC_BYTES
    assert err.value.details["path"] == "spec"
    assert err.value.details["size"] > MAX_SPEC_BYTES


# --- secrets (issue 9, finding 7) ------------------------------------------------------------


def test_redact_masks_schema_marked_and_secret_named_values(schema: dict[str, Any]) -> None:
    from controller.model.parameters import redact
    from controller.model.redaction import REDACTED

    spec: dict[str, Any] = {"global": {"namespace": "shop", "apiToken": "t0k3n",
                                       "tokenFile": "/run/t",
                       "nested": {"tls.key": "PEM", "privateKey": "PEM2", "keyspace": "k"}},
            "services": {"postgres": {"password": "hunter2", "user": "app",
                                      "imagePullSecrets": ["regcred"],
                                      "passwordRef": "db"},
                         "api": {"password": {"secretKeyRef": {"name": "db", "key": "pw"}},
                                 "clientSecret": "", "list": [{"secret": "s"}]},
                         "cache": {"creds": {"dsn": "redis://"}, "x-secret": None}}}
    out = redact(spec, schema)
    assert out["global"] == {"namespace": "shop", "apiToken": REDACTED, "tokenFile": "/run/t",
                             "nested": {"tls.key": REDACTED, "privateKey": REDACTED,
                                        "keyspace": "k"}}
    assert out["services"]["postgres"] == {"password": REDACTED, "user": "app",
                                           "imagePullSecrets": ["regcred"],
                                           "passwordRef": "db"}
    # A reference names a Secret, not its value; an empty value reveals nothing.
    assert out["services"]["api"] == {
        "password": {"secretKeyRef": {"name": "db", "key": "pw"}}, "clientSecret": "",
        "list": [{"secret": REDACTED}]}
    assert spec["services"]["postgres"]["password"] == "hunter2"  # input untouched


def test_redact_follows_the_schema_marks() -> None:
    from controller.model.parameters import redact
    from controller.model.redaction import REDACTED

    schema = {"type": "object", "properties": {
        "dsn": {"type": "string", "x-conductor-secret": True},
        "opaque": {"type": "string", "format": "password"},
        "items": {"type": "array", "items": {"type": "object", "properties": {
            "conn": {"type": "string", "format": "password"}}}}}}
    value = {"dsn": "postgres://u:p@h", "opaque": "x", "plain": "y",
             "items": [{"conn": "c", "other": "o"}]}
    assert redact(value, schema) == {"dsn": REDACTED, "opaque": REDACTED, "plain": "y",
                                     "items": [{"conn": REDACTED, "other": "o"}]}


def test_secret_references_resolve_once_per_secret() -> None:
    from controller.model.parameters import resolve_secret_refs

    reads: list[str] = []

    def read(name: str) -> dict[str, str] | None:
        reads.append(name)
        return {"db": {"pw": "p", "user": "u"}}.get(name)

    ref = {"secretKeyRef": {"name": "db", "key": "pw"}}
    params = Parameters.from_spec({"global": {"pw": ref},
                                   "services": {"a": {"list": [ref, 1],
                                                      "u": {"secretKeyRef": {"name": "db",
                                                                             "key": "user"}}}}})
    out = resolve_secret_refs(params, read, "ns")
    assert out.global_ == {"pw": "p"}
    assert out.services == {"a": {"list": ["p", 1], "u": "u"}}
    assert reads == ["db"]
    assert params.global_ == {"pw": ref}  # the input keeps the reference


@pytest.mark.parametrize("value, reason", [
    ({"secretKeyRef": {"name": "nope", "key": "pw"}}, "Secret not found"),
    ({"secretKeyRef": {"name": "db", "key": "nope"}}, "key not in Secret"),
    ({"secretKeyRef": {"name": "db"}}, "malformed secretKeyRef"),
    ({"secretKeyRef": "db", "extra": 1}, "malformed secretKeyRef"),
])
def test_an_unresolvable_reference_names_parameter_secret_and_key(value: Any,
                                                                 reason: str) -> None:
    from controller.model.parameters import resolve_secret_refs

    params = Parameters.from_spec({"services": {"postgres": {"password": value}}})
    with pytest.raises(ValidationError) as err:
        resolve_secret_refs(params, {"db": {"pw": "p"}}.get, "ns")
    assert err.value.details["path"] == "spec.services.postgres.password"
    assert err.value.details["reason"] == reason
