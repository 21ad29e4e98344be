"""End to end on the local control plane: `conductor init` scaffolds a conductor, a real
`conductor run` process deploys it, and the clients (the CLI, the MCP server in read-only
mode) see every service healthy through the real API."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mcp import Client as McpClient
from mcp.client.stdio import StdioServerParameters

from controller.adapters.kube import Kube
from controller.adapters.sources.resource import API_VERSION, KIND
from controller.agents import scaffold
from controller.agents.client import ApiError, Client, ClientSettings
from devcluster import kubelet
from devcluster.running import free_port
from tests.support.cluster import LocalCluster, controller_process
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

SERVICES = ("redis", "postgres", "web")


@pytest.fixture
def running(cluster: LocalCluster, kube: Kube, namespace: str, tmp_path: Path,
            crd: dict[str, Any]) -> Iterator[str]:
    """The scaffold, in the test's namespace, served by a real controller process."""
    made = scaffold.create("shop", SERVICES, tmp_path / "shop")
    params_file = made.root / "manifests" / "parameters.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["global"]["namespace"] = namespace
    params_file.write_text(yaml.safe_dump(params))
    port = free_port()
    log = tmp_path / "controller.log"
    with controller_process(cluster, made.root / "manifests", namespace, port, log) as proc:
        url = f"http://127.0.0.1:{port}"
        client = Client(ClientSettings(url, timeout=5))

        def ready() -> bool:
            try:
                return client.readyz().status == 200
            except ApiError:
                return False
        wait_for(lambda: proc.poll() is not None or ready(), timeout=120,
                 message="the controller's API")
        assert proc.poll() is None, log.read_text()[-2000:]  # it exited: say why
        yield url


def _simulate_kubelet(kube: Kube, namespace: str) -> None:
    """Pods Running/Ready and the claim Bound, also where no kubelet simulation runs."""
    def pods_ready() -> bool:
        pods = kube.list("v1", "Pod", namespace)[0]
        for pod in pods:
            kubelet.mark_ready(kube, pod)
        return len(pods) >= 4  # web x2, redis, postgres
    wait_for(pods_ready, timeout=120, message="the scaffold's pods")
    claim = wait_for(lambda: kube.get("v1", "PersistentVolumeClaim", "postgres-data",
                                      namespace), message="the postgres claim")
    kubelet.bind_claim(kube, claim)


def _ready(kube: Kube, namespace: str) -> bool:
    obj = kube.get(API_VERSION, KIND, "default", namespace) or {}
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controller", *args, "--url", url],
                          capture_output=True, text=True, timeout=300, check=False)


def test_scaffold_runs_healthy_and_the_clients_see_it(running: str, kube: Kube,
                                                     namespace: str) -> None:
    _simulate_kubelet(kube, namespace)
    waited = _cli(running, "wait", "--timeout", "180")
    assert waited.returncode == 0, (waited.stdout, waited.stderr)
    health = _cli(running, "health", "-o", "json")
    assert health.returncode == 0, health.stderr
    assert {s["name"]: s["status"] for s in json.loads(health.stdout)["services"]} == \
        dict.fromkeys(SERVICES, "healthy")
    params = _cli(running, "params", "get", "-o", "json")
    assert json.loads(params.stdout)["parameters"]["services"]["web"]["replicas"] == 2
    missing = _cli(running, "health", "nope")
    assert missing.returncode == 1 and missing.stderr.startswith(
        "conductor health: not_found: ")

    async def mcp() -> tuple[set[str], Any]:
        server = StdioServerParameters(command=sys.executable, args=[
            "-m", "controller", "mcp", "--read-only", "--url", running])
        async with McpClient(server, read_timeout_seconds=60) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            result = await client.call_tool("get_health", {})
            return tools, result.structured_content

    tools, seen = asyncio.run(asyncio.wait_for(mcp(), 120))
    assert "set_parameters" not in tools and "get_health" in tools
    assert seen["healthy"] is True and seen["counts"] == {"healthy": 3}, seen


def test_mcp_plan_patch_update_on_the_real_api(running: str, kube: Kube,
                                               namespace: str) -> None:
    """Example 4 through MCP against the real API: plan a patch, write it with the plan,
    update, verify; the old plan is refused once someone else changed the parameters."""
    _simulate_kubelet(kube, namespace)
    # Settled first: the status writes of a rollout move the object's version (the ETag).
    assert _cli(running, "wait", "--timeout", "180").returncode == 0
    wait_for(lambda: _ready(kube, namespace), timeout=60, message="Ready=True written")
    patch = {"services": {"web": {"replicas": 3}}}

    async def flow() -> list[Any]:
        server = StdioServerParameters(command=sys.executable, args=[
            "-m", "controller", "mcp", "--url", running])
        async with McpClient(server, read_timeout_seconds=120) as client:
            async def call(tool: str, **arguments: Any) -> Any:
                result = await client.call_tool(tool, arguments)
                if result.is_error:
                    text = "".join(getattr(c, "text", "") for c in result.content)
                    return json.loads(text[text.index("{"):])
                return result.structured_content

            plan = await call("plan_changes", patch=patch)
            wrote = await call("patch_parameters", plan_id=plan["planId"], patch=patch)
            updated = await call("update", plan_id=plan["planId"], services=["web"])
            other = Client(ClientSettings(running))
            other.patch_parameters({"services": {"redis": {"replicas": 1}}})
            stale = await call("update", plan_id=plan["planId"], services=["web"])
            return [plan, wrote, updated, stale]

    plan, wrote, updated, stale = asyncio.run(asyncio.wait_for(flow(), 240))
    assert plan["draft"] is True and plan["changes"], plan
    assert wrote.get("version"), wrote
    assert updated.get("done") is True, updated
    deployment = kube.get("apps/v1", "Deployment", "web", namespace)
    assert deployment is not None and deployment["spec"]["replicas"] == 3
    assert stale["error"] == "stale_plan", stale
