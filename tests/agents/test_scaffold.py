"""`conductor init`: the scaffold renders and validates without a cluster; one test applies
it on the shared cluster with the real engine and sees every service healthy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.agents import scaffold
from controller.errors import ConflictError, InvalidRequestError
from controller.model.objects import SHARED_SERVICE
from controller.model.parameters import Parameters, load_schema, validate_spec
from controller.model.rendering import load_tree, render

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "config" / "crd" / "deploymentparameters.yaml"


def _objects(root: Path, spec: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    params = spec or yaml.safe_load((root / "manifests" / "parameters.yaml").read_text())
    validate_spec(params, load_schema(SCHEMA))
    manifests = render(load_tree(root / "manifests"), Parameters.from_spec(params))
    return {f"{m.key.kind}/{m.key.name}": m.body for m in manifests}


def test_default_scaffold_renders_every_service(tmp_path: Path) -> None:
    made = scaffold.create("shop", directory=tmp_path / "shop")
    assert made.services == ("redis", "postgresql", "api")
    tree = load_tree(made.root / "manifests")
    assert tree.names == ["api", "postgresql", "redis"]
    assert SHARED_SERVICE in tree.services
    objects = _objects(made.root)
    assert set(objects) == {
        "Deployment/redis", "Service/redis", "Deployment/api", "Service/api",
        "StatefulSet/postgresql", "Service/postgresql", "Secret/postgresql",
        "PersistentVolumeClaim/postgresql-data"}
    for kind in ("Deployment/redis", "Deployment/api", "StatefulSet/postgresql"):
        pod = objects[kind]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["readinessProbe"] and container["livenessProbe"], kind
        assert container["resources"]["limits"]["memory"], kind
        assert all(p["protocol"] == "TCP" for p in container["ports"])
    assert objects["StatefulSet/postgresql"]["spec"]["template"]["spec"]["volumes"][0][
        "persistentVolumeClaim"]["claimName"] == "postgresql-data"
    # The DeploymentParameters object carries the same spec, valid against the CRD.
    obj = yaml.safe_load((made.root / "deploymentparameters.yaml").read_text())
    assert obj["kind"] == "DeploymentParameters"
    validate_spec(obj["spec"], load_schema(SCHEMA))
    assert (made.root / "README.md").read_text().startswith("# shop")
    compile((made.root / "main.py").read_text(), "main.py", "exec")


def test_parameters_reach_the_templates(tmp_path: Path) -> None:
    made = scaffold.create("shop", ("redis", "postgres", "web"), tmp_path / "s")
    spec = yaml.safe_load((made.root / "manifests" / "parameters.yaml").read_text())
    spec["services"]["web"]["replicas"] = 5
    spec["global"]["namespace"] = "shop"
    objects = _objects(made.root, spec)
    assert objects["Deployment/web"]["spec"]["replicas"] == 5
    assert objects["Namespace/shop"]["kind"] == "Namespace"
    assert objects["Deployment/web"]["metadata"]["namespace"] == "shop"


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "shop").mkdir()
    with pytest.raises(ConflictError) as e:
        scaffold.create("shop", directory=tmp_path / "shop")
    assert e.value.details["path"] == str(tmp_path / "shop")
    assert list((tmp_path / "shop").iterdir()) == []


def test_bad_input_is_a_structured_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequestError) as e:
        scaffold.create("shop", ("redis", "mongodb"), tmp_path / "x")
    assert e.value.details["unknown"] == ["mongodb"]
    assert "redis" in e.value.details["available"]
    with pytest.raises(InvalidRequestError):
        scaffold.create("Bad_Name", ("redis",), tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cli_init_and_its_refusal(tmp_path: Path) -> None:
    def init(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "controller", "init", *args],
                              capture_output=True, text=True, cwd=tmp_path, timeout=60,
                              check=False)

    made = init("shop", "--services", "redis,postgres,web")
    assert made.returncode == 0, made.stderr
    assert (tmp_path / "shop" / "manifests" / "web" / "deployment.yaml").is_file()
    again = init("shop")
    assert again.returncode == 1
    assert again.stderr.startswith("conductor init: conflict: ")
    assert "Traceback" not in again.stderr and again.stderr.count("\n") == 1
