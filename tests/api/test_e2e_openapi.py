"""The API description against the real controller: the property-based run of
tests/support/fuzzing.py (schemathesis, in-process) against a real Controller on the
control plane, with authentication on and a write token, so that the real service's
answers are checked against the document too. The same run over the in-memory service,
and the document against the routes and the parsers, without a cluster: test_openapi.py.
"""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import yaml

from controller.adapters.kube import Kube
from controller.adapters.sources.resource import ParametersResource
from controller.config import ApiSettings, GitSettings
from controller.serving import app_for
from tests.support import fuzzing
from tests.support.cluster import REPO, App, LocalCluster
from tests.support.waiting import wait_for


class Fuzzed:
    def __init__(self, app: App, falcon_app: Any, spec: dict[str, Any],
                 instance: str) -> None:
        self.app = app
        self.falcon_app = falcon_app
        self.spec = spec
        self.instance = instance
        self.headers = {"Authorization": f"Bearer {fuzzing.WRITE_TOKEN}"}

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
    (tmp / "hook").write_text(fuzzing.WEBHOOK_SECRET)
    (tmp / "tokens.yaml").write_text(yaml.safe_dump({"tokens": [
        {"name": "fuzzer", "token": fuzzing.WRITE_TOKEN, "scopes": ["read", "write"]}]}))
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


@pytest.mark.cluster
@fuzzing.schema.parametrize()
@fuzzing.PER_OPERATION
def test_every_operation_conforms_to_the_document(case: Any, fuzzed: Fuzzed) -> None:
    fuzzing.call(case, fuzzed)


@pytest.mark.cluster
def test_sequences_of_calls_conform_to_the_document(fuzzed: Fuzzed) -> None:
    fuzzing.run_sequences(fuzzed)
