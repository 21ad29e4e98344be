"""`conductor mcp` driven as a real client drives it: the SDK's own client over stdio, the
server a subprocess, the conductor API a fake on 127.0.0.1 serving issue 15's agreed
shapes (planId, basedOn, ETag, If-Match)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from tests.support.fake_conductor import FakeConductor

WRITE_TOOLS = {"set_parameters", "patch_parameters", "rollback_parameters", "up", "update",
               "down", "suspend", "resume"}
SCALE = {"global": {"namespace": "default", "replicas": 1},
         "services": {"redis": {"replicas": 5}}}


@pytest.fixture
def fake() -> Iterator[FakeConductor]:
    with FakeConductor() as f:
        yield f


def session(fake: FakeConductor, *flags: str,
            body: Callable[[Client], Awaitable[Any]]) -> Any:
    params = StdioServerParameters(command=sys.executable, args=[
        "-m", "controller", "mcp", "--url", fake.url, *flags])

    async def run() -> Any:
        async with Client(params, read_timeout_seconds=60) as client:
            return await body(client)

    return asyncio.run(asyncio.wait_for(run(), 120))


async def call(client: Client, tool: str, **arguments: Any) -> tuple[bool, Any]:
    """(is_error, the structured result or the error object)."""
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        text = "".join(getattr(c, "text", "") for c in result.content)
        return True, json.loads(text[text.index("{"):])  # after the SDK's "Error ...: "
    return False, result.structured_content


def test_read_only_lists_no_write_tool(fake: FakeConductor) -> None:
    async def body(client: Client) -> tuple[set[str], Any]:
        tools = {t.name for t in (await client.list_tools()).tools}
        refused = await client.call_tool("set_parameters", {"plan_id": "x", "parameters": {}})
        return tools, refused

    tools, refused = session(fake, "--read-only", body=body)
    assert not tools & WRITE_TOOLS, tools
    assert {"get_health", "list_errors", "plan_changes", "get_parameters",
            "wait_for_healthy", "list_instances", "list_services"} <= tools
    assert refused.is_error
    assert not [r for r in fake.state.requests if r[0] != "GET"]


def test_every_tool_says_when_to_use_it(fake: FakeConductor) -> None:
    async def body(client: Client) -> Any:
        return (await client.list_tools()).tools

    tools = session(fake, body=body)
    assert {t.name for t in tools} >= WRITE_TOOLS
    for t in tools:
        assert t.description and len(t.description) > 40, t.name
        if t.name in WRITE_TOOLS:
            assert "plan_id" in t.input_schema["properties"], t.name
            assert "planId" in t.description, t.name


def test_set_parameters_without_a_plan_is_refused(fake: FakeConductor) -> None:
    async def body(client: Client) -> Any:
        return await call(client, "set_parameters", plan_id="made-up", parameters=SCALE)

    failed, error = session(fake, body=body)
    assert failed and error["error"] == "plan_required", error
    assert error["retryable"] is False and "plan_changes" in error["hint"]
    assert fake.state.version == 1
    assert not [r for r in fake.state.requests if r[0] != "GET"]


def test_example_4_plan_set_update_verify(fake: FakeConductor) -> None:
    async def body(client: Client) -> list[tuple[bool, Any]]:
        _, plan = await call(client, "plan_changes", parameters=SCALE)
        return [(False, plan),
                await call(client, "set_parameters", plan_id=plan["planId"],
                           parameters=SCALE),
                await call(client, "update", plan_id=plan["planId"], services=["redis"]),
                await call(client, "wait_for_healthy", services=["redis"], timeout=5)]

    (_, plan), (set_failed, wrote), (up_failed, updated), (_, health) = session(
        fake, body=body)
    assert plan["draft"] is True and plan["basedOn"] == "1"
    assert plan["changes"][0]["action"] == "update" and "replicas: 5" in plan["changes"][0][
        "diff"]
    assert not set_failed, wrote
    assert wrote["version"] == "2" and fake.state.spec == SCALE
    assert not up_failed, updated
    assert updated["done"] is True and updated["services"] == ["redis"]
    assert health["healthy"] is True
    writes = [r for r in fake.state.requests if r[0] != "GET"]
    # Each write carried the version its plan was based on (or its own write made).
    assert [(m, p.split("?")[0], h.get("If-Match")) for m, p, h in writes] == [
        ("POST", "/api/plan", None), ("POST", "/api/parameters", '"1"'),
        ("POST", "/api/update", '"2"')]


def test_a_plan_is_refused_after_someone_else_changed_the_parameters(
        fake: FakeConductor) -> None:
    async def body(client: Client) -> list[tuple[bool, Any]]:
        _, plan = await call(client, "plan_changes", parameters=SCALE)
        fake.bump({"services": {"frontend": {"replicas": 3}}})  # another writer
        stale = await call(client, "set_parameters", plan_id=plan["planId"],
                           parameters=SCALE)
        _, fresh = await call(client, "plan_changes", parameters=SCALE)
        return [stale, await call(client, "set_parameters", plan_id=fresh["planId"],
                                  parameters=SCALE)]

    (failed, error), (ok_failed, wrote) = session(fake, body=body)
    assert failed and error["error"] == "stale_plan", error
    assert error["details"] == {"planId": error["details"]["planId"], "basedOn": "1",
                                "current": "2"}
    assert not ok_failed and wrote["version"] == "3"


def test_a_plan_of_another_change_or_services_is_refused(fake: FakeConductor) -> None:
    async def body(client: Client) -> list[tuple[bool, Any]]:
        _, plan = await call(client, "plan_changes", parameters=SCALE)
        _, redis_only = await call(client, "plan_changes", services=["redis"])
        return [await call(client, "set_parameters", plan_id=plan["planId"],
                           parameters={**SCALE, "global": {"replicas": 9}}),
                await call(client, "patch_parameters", plan_id=plan["planId"],
                           patch={"services": {"redis": {"replicas": 5}}}),
                await call(client, "down", plan_id=redis_only["planId"]),
                await call(client, "up", plan_id=redis_only["planId"],
                           services=["redis", "frontend"])]

    results = session(fake, body=body)
    assert [(failed, e["error"]) for failed, e in results] == [(True, "plan_mismatch")] * 4
    assert fake.state.version == 1


def test_example_5_diagnosis_from_tools_alone(fake: FakeConductor,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    fake.state.health["frontend"] = "unhealthy"

    async def body(client: Client) -> list[tuple[bool, Any]]:
        return [await call(client, "get_health"), await call(client, "list_errors", limit=5),
                await call(client, "get_resource_events", namespace="default",
                           kind="Deployment", name="redis")]

    (_, health), (_, errors), (_, events) = session(fake, body=body)
    with capsys.disabled():  # the transcript, for people reading the test output
        print("\nExample 5 through MCP:\n" + json.dumps(
            {"get_health": health, "list_errors": errors}, indent=1)[:2000])
    assert health["healthy"] is False and health["counts"]["unhealthy"] == 1
    failing = health["failing"][0]
    assert failing["service"] == "frontend"
    assert failing["objects"][0] == {"resource": "default/Deployment/frontend",
                                     "status": "unhealthy", "reason": "ImagePullBackOff",
                                     "message": "Back-off pulling image"}
    assert errors["events"][0]["reason"] == "ImagePullBackOff"
    assert events["count"] >= 1


def test_api_errors_come_back_structured(fake: FakeConductor) -> None:
    async def body(client: Client) -> tuple[bool, Any]:
        return await call(client, "get_health", service="nope")

    failed, error = session(fake, body=body)
    assert failed and error["error"] == "not_found" and error["retryable"] is False
    assert error["hint"]
