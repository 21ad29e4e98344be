"""The API description against the API itself.

(a) /openapi.json documents exactly the app's routes and methods: adding a route without
documenting it (or documenting one that does not exist) fails here.
(b) The document's request schemas against the parsers, without a cluster: a query
parameter given empty is invalid everywhere (the parsers refuse it, so the document must).
(c) The property-based run of tests/support/fuzzing.py (schemathesis) over the in-memory
service, with authentication on and a write token: the API's own parsing, refusals,
envelopes, codes and headers against the document, without a cluster. The same run
against a real Controller on the control plane (the real service's answers too):
test_e2e_openapi.py.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import falcon
import falcon.inspect
import jsonschema
import openapi_spec_validator
import pytest
import yaml
from prometheus_client import CollectorRegistry

from controller.adapters.metrics import Metrics
from controller.api.app import Settings, create_app
from controller.api.openapi import document
from controller.config import ApiSettings
from tests.support import fuzzing
from tests.support.fakes import FakeService

# -- (a) routes and the document --------------------------------------------------------------


def _routes(tmp_path: Path) -> dict[str, set[str]]:
    service = FakeService(tmp_path / "events.db")
    app = create_app(service, CollectorRegistry(), Settings(ApiSettings(auth=False)))
    out: dict[str, set[str]] = {}
    for route in falcon.inspect.inspect_app(app).routes:
        methods = {m.method.lower() for m in route.methods if not m.internal}
        out[route.path] = methods
    app.close()
    service.close()
    return out


def test_documented_paths_and_methods_are_the_routes(tmp_path: Path) -> None:
    doc = document()
    documented = {path: {m for m in item if m in ("get", "post", "put", "patch", "delete")}
                  for path, item in doc["paths"].items()}
    routes = _routes(tmp_path)
    assert sorted(set(routes) - set(documented)) == [], "routes missing from /openapi.json"
    assert sorted(set(documented) - set(routes)) == [], "documented paths that are no route"
    for path, methods in routes.items():
        assert methods == documented[path], (path, methods, documented[path])


def test_path_parameters_match_the_templates() -> None:
    for path, item in document()["paths"].items():
        fields = set(re.findall(r"{(\w+)}", path))
        for method, op in item.items():
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == fields, (method, path)
            assert all(p.get("required") for p in op.get("parameters", [])
                       if p["in"] == "path"), (method, path)


def test_every_operation_documents_the_error_envelope() -> None:
    doc = document()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if path in ("/metrics", "/openapi.json"):
                continue
            for status in ("400", "404", "500"):
                schema = op["responses"][status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (method, path)


def test_the_document_validates_against_the_openapi_schema() -> None:
    openapi_spec_validator.validate(document())  # raises, naming the first fault


def test_every_operation_has_an_id_a_summary_and_schemas() -> None:
    """What a generated client or an agent's tool-caller needs: a unique camelCase name,
    a summary, and a schema for every body it sends or receives (no content, only for
    answers that have none: 304)."""
    ids: list[str] = []
    for path, item in document()["paths"].items():
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            assert re.fullmatch(r"[a-z][A-Za-z0-9]*", op.get("operationId", "")), where
            ids.append(op["operationId"])
            assert op.get("summary", "").strip(), where
            bodies = [("request", op["requestBody"])] if "requestBody" in op else []
            bodies += [(status, r) for status, r in op["responses"].items()
                       if status not in ("204", "304")]
            for name, body in bodies:
                assert body.get("content"), (where, name, "no content")
                for media, content in body["content"].items():
                    assert content.get("schema"), (where, name, media)
    assert len(ids) == len(set(ids)) >= 35, sorted(ids)


# -- (b) request schemas and parsers agree ---------------------------------------------------


def test_an_empty_value_is_invalid_for_every_documented_query_parameter() -> None:
    checked = 0
    for path, item in document()["paths"].items():
        for method, op in item.items():
            for p in op.get("parameters", []):
                if p["in"] != "query":
                    continue
                validator = jsonschema.Draft4Validator(
                    p["schema"], format_checker=jsonschema.Draft4Validator.FORMAT_CHECKER)
                assert not validator.is_valid(""), (method, path, p["name"])
                checked += 1
    assert checked >= 30


def test_request_bodies_refuse_what_the_parsers_refuse() -> None:
    schemas = document()["components"]["schemas"]
    selection = jsonschema.Draft4Validator(schemas["ServiceSelection"])
    for valid in ({}, {"services": []}, {"services": ["redis"]}):
        assert selection.is_valid(valid), valid
    for invalid in ({"services": ""}, {"services": None}, {"services": False},
                    {"services": 0}, {"services": {}}, {"services": [""]},
                    {"service": ["redis"]}):
        assert not selection.is_valid(invalid), invalid


# -- (c) property-based run over the in-memory service ----------------------------------------


class Fuzzed:
    """The API over the fake service; a write is undone by putting the whole spec back
    (suspend included), as the end-to-end run replaces the object's spec."""

    def __init__(self, falcon_app: Any, service: FakeService) -> None:
        self.falcon_app = falcon_app
        self.service = service
        self.instance = service.default
        self.headers = {"Authorization": f"Bearer {fuzzing.WRITE_TOKEN}"}
        self.spec = copy.deepcopy(service.instances_[service.default].spec)

    def restore(self) -> None:
        self.service.instances_[self.instance].spec = copy.deepcopy(self.spec)


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    tmp = tmp_path_factory.mktemp("fuzz")
    (tmp / "tokens.yaml").write_text(yaml.safe_dump({"tokens": [
        {"name": "fuzzer", "token": fuzzing.WRITE_TOKEN, "scopes": ["read", "write"]}]}))
    service = FakeService(tmp / "events.db")
    registry = CollectorRegistry()
    # Authentication on, as deployed; no rate limit (the run is one client, on purpose).
    api = ApiSettings(auth=True, tokens_file=str(tmp / "tokens.yaml"), rate_limit=0,
                      sync_timeout=20)
    settings = Settings(api, webhook_secret=fuzzing.WEBHOOK_SECRET.encode())
    app = create_app(service, registry, settings,
                     meters=Metrics(registry, service.default, service.namespace))
    yield Fuzzed(app, service)
    app.close()
    service.close()


@fuzzing.schema.parametrize()
@fuzzing.PER_OPERATION
def test_every_operation_conforms_to_the_document(case: Any, fuzzed: Fuzzed) -> None:
    fuzzing.call(case, fuzzed)


def test_sequences_of_calls_conform_to_the_document(fuzzed: Fuzzed) -> None:
    fuzzing.run_sequences(fuzzed)
