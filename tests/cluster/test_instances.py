"""Many instances in one controller (issue 13), against the local control plane.

Three instances of the example app in three namespaces, reconciled continuously by one
controller: drift in one is corrected without touching the others, a new object starts
within a second, a deleted one is pruned and forgotten (only its objects), and a token
limited to one namespace sees and changes only its instance, events and stream included.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.adapters.kube import Kube
from controller.adapters.sources.resource import API_VERSION, KIND
from controller.config import ApiSettings, InstanceSettings, LoopSettings
from controller.model.objects import LABEL_INSTANCE
from controller.runtime.controller import FINALIZER
from tests.support.api import Api, envelope
from tests.support.cluster import App
from tests.support.waiting import wait_for

TENANT = "tenant-token-0123456789abcdef"
ADMIN = "admin-token-0123456789abcdef"
# Kinds nobody but conductor writes (no status): their resourceVersions move only if
# conductor writes them.
QUIET_KINDS = (("v1", "Service"), ("v1", "Secret"), ("v1", "ConfigMap"))


def _objects(kube: Kube, namespace: str, instance: str,
             kinds: tuple[tuple[str, str], ...] = QUIET_KINDS) -> dict[tuple[str, str], str]:
    """(kind, name) -> resourceVersion of an instance's objects in its namespace."""
    out = {}
    for api_version, kind in kinds:
        for item in kube.list(api_version, kind, namespace, f"{LABEL_INSTANCE}={instance}")[0]:
            out[(kind, item["metadata"]["name"])] = item["metadata"]["resourceVersion"]
    return out


def _instance(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"global": {"namespace": namespace}}}


@pytest.fixture
def spaces(kube: Kube, namespace: str) -> Iterator[list[str]]:
    """Two more namespaces beside the test's own; their instances are deleted (and so
    finalised by the running controller) by the test, the finalizer stripped if not."""
    extra = [f"{namespace}-b", f"{namespace}-c"]
    for name in extra:
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield [namespace, *extra]
    for name in extra:
        for obj in kube.list(API_VERSION, KIND, name)[0]:
            kube.patch(API_VERSION, KIND, obj["metadata"]["name"],
                       {"metadata": {"finalizers": []}}, name)
        kube.delete("v1", "Namespace", name)


def _tenant_api(make_api: Callable[..., Api], tmp_path: Path, spaces: list[str],
                tenant_ns: str, interval: float) -> Api:
    """A controller reconciling `spaces`, with an admin token and a write token limited to
    the namespace `tenant_ns`."""
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(yaml.safe_dump({"tokens": [
        {"name": "admin", "token": ADMIN, "scopes": ["write"]},
        {"name": "tenant-b", "token": TENANT, "scopes": ["write"],
         "instances": {"namespaces": [tenant_ns]}}]}))
    return make_api(api=ApiSettings(auth=True, tokens_file=str(tokens), rate_limit=0),
                    instances=InstanceSettings(namespaces=tuple(spaces)),
                    loop=LoopSettings(interval=interval, jitter=0))


def test_three_instances_in_three_namespaces(app: App, kube: Kube, spaces: list[str],
                                            make_api: Callable[..., Api],
                                            tmp_path: Path) -> None:
    own, ns_b, ns_c = spaces
    kube.create(_instance("beta", ns_b))
    api = _tenant_api(make_api, tmp_path, spaces, ns_b, interval=5)
    controller = api.controller
    admin = {"Authorization": f"Bearer {ADMIN}"}
    tenant = {"Authorization": f"Bearer {TENANT}"}

    # A new object is picked up within a second (its finalizer is written first).
    created = time.monotonic()
    kube.create(_instance("gamma", ns_c))
    wait_for(lambda: FINALIZER in ((kube.get(API_VERSION, KIND, "gamma", ns_c) or {})
                                   .get("metadata", {}).get("finalizers") or []),
             timeout=10, interval=0.05, message="gamma taken in")
    assert time.monotonic() - created < 1.5
    wanted = [(own, "default"), (ns_b, "beta"), (ns_c, "gamma")]
    for ns, name in wanted:  # each instance applied into its own namespace
        wait_for(lambda ns=ns, name=name: len(_objects(kube, ns, name)) >= 4, timeout=120,
                 message=f"{ns}/{name} applied")
    rows = wait_for(lambda: (found := api.get("/api/instances", headers=admin)
                             .json["instances"]) and all(r["lastPass"] for r in found)
                    and found, timeout=60, message="every instance's first pass")
    assert sorted((r["namespace"], r["name"]) for r in rows) == sorted(wanted)
    assert {r["lastPass"]["result"] for r in rows} == {"success"}

    # Continuously: drift in beta (a deleted Secret) is corrected by beta's own passes;
    # the other instances' objects are not written.
    wait_for(lambda: all(controller.loop_state(k).passes >= 2 for k in wanted), timeout=60,
             message="every instance's second pass")
    others = {k: _objects(kube, *k) for k in wanted if k[1] != "beta"}
    secret = next(name for kind, name in _objects(kube, ns_b, "beta") if kind == "Secret")
    kube.delete("v1", "Secret", secret, ns_b)
    wait_for(lambda: kube.get("v1", "Secret", secret, ns_b) is not None, timeout=30,
             message="beta's Secret restored by an interval pass")
    passes = {k: controller.loop_state(k).passes for k in others}
    wait_for(lambda: all(controller.loop_state(k).passes > passes[k] for k in others),
             timeout=30, message="the others' next passes")
    assert {k: _objects(kube, *k) for k in others} == others

    # A token limited to beta's namespace: one instance, 404 for the others.
    mine = api.get("/api/instances", headers=tenant).json["instances"]
    assert [(r["namespace"], r["name"]) for r in mine] == [(ns_b, "beta")]
    beta = {"instance": "beta"}
    assert api.get("/api/parameters", params=beta, headers=tenant).status_code == 200
    assert api.get("/api/services/health", params=beta, headers=tenant).status_code == 200
    events = api.get("/api/events", headers=tenant).json["events"]
    assert events and {e["instance"] for e in events} == {"beta"}
    for other in ({"instance": "gamma"}, {"instance": "default"}, {}):
        for method, path in (("GET", "/api/parameters"), ("GET", "/api/services/health"),
                             ("POST", "/api/up"), ("POST", "/api/down")):
            envelope(api.client.simulate_request(method, path, params=other, headers=tenant,
                                                 json={} if method == "POST" else None),
                     404, "not_found")
        if other:
            envelope(api.get("/api/events", params=other, headers=tenant), 404, "not_found")
    streamed = api.stream("/api/events/stream", {"duration": "0", "limit": "200"}, tenant)
    assert streamed.status_code == 200 and '"instance": "beta"' in streamed.text
    assert '"instance": "gamma"' not in streamed.text
    assert '"instance": "default"' not in streamed.text
    assert {r["name"] for r in api.get("/api/instances", headers=admin).json["instances"]} \
        == {"default", "beta", "gamma"}

    # Deleting gamma prunes its objects only, then the object goes and is forgotten.
    kept = {k: _objects(kube, *k) for k in wanted if k[1] != "gamma"}
    kube.delete(API_VERSION, KIND, "gamma", ns_c)
    wait_for(lambda: kube.get(API_VERSION, KIND, "gamma", ns_c) is None, timeout=120,
             message="gamma finalised")
    workloads = (*QUIET_KINDS, ("apps/v1", "Deployment"), ("apps/v1", "StatefulSet"))
    assert _objects(kube, ns_c, "gamma", workloads) == {}
    wait_for(lambda: (ns_c, "gamma") not in controller.instance_keys(), timeout=10,
             message="gamma forgotten")
    envelope(api.get("/api/parameters", params={"instance": "gamma"}, headers=admin), 404,
             "not_found")
    assert {k: _objects(kube, *k) for k in kept} == kept

    # Orphaned on request: beta's objects stay when its object says so.
    kube.patch(API_VERSION, KIND, "beta", {"metadata": {"annotations": {
        "conductor.io/prune": "disabled"}}}, ns_b)
    kube.delete(API_VERSION, KIND, "beta", ns_b)
    wait_for(lambda: kube.get(API_VERSION, KIND, "beta", ns_b) is None, timeout=60,
             message="beta finalised")
    assert _objects(kube, ns_b, "beta") == kept[(ns_b, "beta")]
    wait_for(lambda: (ns_b, "beta") not in controller.instance_keys(), timeout=10,
             message="beta forgotten")


def test_same_named_instances_in_two_namespaces_are_two(app: App, kube: Kube,
                                                        spaces: list[str],
                                                        make_api: Callable[..., Api],
                                                        tmp_path: Path) -> None:
    """`twin` in two namespaces: two instances in every store and answer. A token limited
    to one namespace reads only its twin's events, history, operations and plans (404 for
    the other's, as for what does not exist), and /api/status shows it only what is
    controller-wide; /metrics has a series per twin."""
    _own, ns_b, ns_c = spaces
    for ns in (ns_b, ns_c):
        kube.create(_instance("twin", ns))
    api = _tenant_api(make_api, tmp_path, spaces, ns_b, interval=30)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    tenant = {"Authorization": f"Bearer {TENANT}"}
    for ns in (ns_b, ns_c):
        wait_for(lambda ns=ns: len(_objects(kube, ns, "twin")) >= 4, timeout=120,
                 message=f"{ns}/twin applied")
    theirs = {"instance": "twin", "namespace": ns_c}

    # Events: the tenant's twin's only; an unlimited caller tells them apart by namespace.
    wait_for(lambda: api.get("/api/events", params=theirs, headers=admin).json["events"],
             timeout=30, message="events of the other twin")
    mine = api.get("/api/events", params={"limit": "500"}, headers=tenant).json["events"]
    assert mine and {(e["instance"], e["namespace"]) for e in mine} == {("twin", ns_b)}
    other = api.get("/api/events", params={**theirs, "limit": "500"}, headers=admin).json
    assert {e["namespace"] for e in other["events"]} == {ns_c}
    envelope(api.get("/api/events", params=theirs, headers=tenant), 404, "not_found")
    streamed = api.stream("/api/events/stream", {"duration": "0", "limit": "500"}, tenant)
    assert f'"namespace": "{ns_b}"' in streamed.text
    assert f'"namespace": "{ns_c}"' not in streamed.text

    # History: a change of the other twin is in its history, not in the tenant's.
    assert api.patch("/api/parameters", {"services": {"redis": {"replicas": 2}}},
                     params=theirs, headers=admin).status_code == 200
    wait_for(lambda: len(api.get("/api/parameters/history", params=theirs,
                                 headers=admin).json["history"]) == 2,
             timeout=60, message="the other twin's second revision recorded")
    history = api.get("/api/parameters/history", params={"instance": "twin"},
                      headers=tenant).json["history"]
    assert [h["revision"] for h in history] == ["generation/1"]

    # Operations and plans by id: the other twin's are a 404 to the tenant.
    op = api.post("/api/up", {}, params=theirs, headers=admin).json["operation"]
    envelope(api.get(f"/api/operations/{op}", headers=tenant), 404, "not_found")
    assert api.get(f"/api/operations/{op}", headers=admin).json["namespace"] == ns_c
    own_op = api.post("/api/up", {}, params={"instance": "twin"}, headers=tenant).json
    assert api.get(f"/api/operations/{own_op['operation']}", headers=tenant).json[
        "namespace"] == ns_b
    plan = api.post("/api/plan", {}, params=theirs, headers=admin).json["planId"]
    envelope(api.get(f"/api/plans/{plan}", headers=tenant), 404, "not_found")
    assert api.get(f"/api/plans/{plan}", headers=admin).status_code == 200

    # Status: controller-wide only, and the tenant's own instance.
    status = api.get("/api/status", headers=tenant).json
    assert set(status) == {"app", "time", "leader", "instances"}
    assert status["instances"] == [{"namespace": ns_b, "name": "twin"}]

    # Metrics: each twin its scrape-time series.
    scraped = api.get("/metrics").text
    for ns in (ns_b, ns_c):
        for family in ("conductor_app_info{", "conductor_service_health{"):
            assert any(line.startswith(family) and 'name="twin"' in line
                       and f'namespace="{ns}"' in line
                       for line in scraped.splitlines()), (family, ns)
