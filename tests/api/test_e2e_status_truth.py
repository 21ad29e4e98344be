"""Issue 11 parts 1 and 2: conditions that tell the truth, and an errors view that shows it.

On the local control plane, with the simulated kubelet's helpers driving Pods through the
real pods/status subresource and posting the Events a kubelet would: a bad image tag set
through PATCH /api/parameters turns Ready False (seen by the real `kubectl wait`), names the
object and ImagePullBackOff, and lands in /api/events/errors and in the Deployment's own
events (the Pod's warnings attributed to it); fixing the tag brings Ready back and records
the recovery.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

from controller.adapters.crds import load_crd
from controller.adapters.kube import Body, Kube
from controller.adapters.sources.resource import API_VERSION, KIND
from devcluster import kubelet
from tests.support.api import Api
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster


def _object(api: Api) -> Body:
    obj = api.app.kube.get(API_VERSION, KIND, "default", api.namespace)
    assert obj is not None
    return obj


def _conditions(api: Api) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (_object(api).get("status") or {}).get("conditions", [])}


def _kubectl(api: Api, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kubectl", "--kubeconfig", api.app.cluster.kubeconfig, "-n",
                           api.namespace, *args], check=False, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "KUBECONFIG": ""})


def _pods(kube: Kube, namespace: str, image: str) -> list[Body]:
    return [p for p in kube.list("v1", "Pod", namespace)[0]
            if not p["metadata"].get("deletionTimestamp")
            and any(c.get("image") == image for c in p["spec"]["containers"])]


def _healthy(api: Api) -> Callable[[], bool]:
    """Every Pod the simulated kubelet has not reported yet goes Ready, claims Bound."""
    def check() -> bool:
        kubelet.settle(api.app.kube, api.namespace)
        return _conditions(api).get("Ready", {}).get("status") == "True"
    return check


def test_bad_image_tag_turns_ready_false_and_shows_in_the_errors_view(api: Api) -> None:
    kube, ns = api.app.kube, api.namespace
    # The session installs the CRD only when it is missing: bring its printer columns up
    # to date (an additive server-side apply of config/crd).
    kube.apply(load_crd())
    wait_for(_healthy(api), timeout=90, message="Ready=True once every Pod runs")
    obj = _object(api)
    conditions = _conditions(api)
    generation = obj["metadata"]["generation"]
    assert obj["status"]["observedGeneration"] == generation
    assert {c["observedGeneration"] for c in conditions.values()} == {generation}
    assert conditions["Reconciling"]["status"] == "False"
    assert conditions["Stalled"]["status"] == "False"
    printed = _kubectl(api, "get", "deploymentparameters", "default", "--no-headers")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.split()[1:3] == ["True", "Succeeded"], printed.stdout

    # A tag that does not exist, through the API.
    bad = "nginx:1.25-does-not-exist"
    resp = api.patch("/api/parameters", {"services": {"frontend": {"tag": "1.25-does-not-exist"}}})
    assert resp.status_code == 200, resp.text
    pod = wait_for(lambda: _pods(kube, ns, bad), timeout=60,
                   message="the rollout's Pod with the bad image")[0]
    failed_at = time.monotonic()
    kubelet.pull_failed(kube, pod, bad)

    waited = _kubectl(api, "wait", "--for=condition=Ready=false", "deploymentparameters/default",
                      "--timeout=60s")
    assert waited.returncode == 0, (waited.stdout, waited.stderr)
    # The Ready=False kubectl saw may be the pass's Progressing: the verdict follows.
    ready = wait_for(lambda: _conditions(api)["Ready"] if _conditions(api)["Ready"].get(
        "reason") == "HealthCheckFailed" else None, timeout=30,
        message="Ready=False HealthCheckFailed")
    elapsed = time.monotonic() - failed_at
    assert elapsed < 15, f"{elapsed:.1f}s from the failure to the condition"
    assert ready["status"] == "False"
    assert f"{ns}/Deployment/frontend: ImagePullBackOff" in ready["message"], ready
    assert _conditions(api)["Stalled"]["status"] == "False"
    printed = _kubectl(api, "get", "deploymentparameters", "default", "--no-headers")
    assert printed.stdout.split()[1:3] == ["False", "HealthCheckFailed"], printed.stdout

    # Step 1 of the reference's diagnosis: the errors view names the object and service.
    resource = f"{ns}/Deployment/frontend"

    def errors() -> list[dict[str, Any]]:
        resp = api.get("/api/events/errors", params={"limit": "20"})
        assert resp.status_code == 200, resp.text
        return list(resp.json["events"])

    def has_error() -> bool:
        return any(e["type"] == "error" and e["reason"] == "ImagePullBackOff"
                   for e in errors())
    wait_for(has_error, timeout=15, message="the health error in /api/events/errors")
    error = next(e for e in errors() if e["type"] == "error" and
                 e["reason"] == "ImagePullBackOff")
    assert error["resource"] == resource and error["service"] == "frontend", error
    assert error["details"]["instance"] == "default"
    assert error["details"]["hint"], error
    assert "ImagePullBackOff" in error["message"]
    # The kubelet's warnings about the Pod, filed under the Deployment, are listed beside it.
    wait_for(lambda: {"Failed", "BackOff"} <= {e["reason"] for e in errors()
                                               if e["type"] == "warning"},
             timeout=15, message="the Pod's warnings in /api/events/errors")
    warning = next(e for e in errors() if e["reason"] == "Failed")
    assert warning["resource"] == resource and warning["service"] == "frontend", warning
    assert warning["details"]["involvedObject"]["kind"] == "Pod"
    assert warning["details"]["involvedObject"]["name"] == pod["metadata"]["name"]
    # type=error stays exact.
    only = api.get("/api/events", params={"type": "error", "limit": "100"}).json["events"]
    assert only and {e["type"] for e in only} == {"error"}

    # Step 2: the Deployment's own events show its Pod's warnings.
    own = api.get(f"/api/events/{ns}/Deployment/frontend", params={"limit": "10"})
    assert own.status_code == 200, own.text
    reasons = {(e["type"], e["reason"]) for e in own.json["events"]}
    assert {("warning", "Failed"), ("warning", "BackOff"),
            ("error", "ImagePullBackOff")} <= reasons, reasons

    # A repeat of the same warning is one row with a count, as before.
    before = len(errors())
    event = next(e for e in kube.list("v1", "Event", ns)[0] if e["reason"] == "BackOff")
    kube.patch("v1", "Event", event["metadata"]["name"],
               {"count": 5, "lastTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                            time.gmtime())}, ns)
    wait_for(lambda: any(e["reason"] == "BackOff" and e["details"]["count"] == 5
                         for e in errors()), timeout=15, message="the repeated warning")
    assert sum(e["reason"] == "BackOff" for e in errors()) == 1
    assert len(errors()) == before

    # Fixing the tag: Ready again, and a recovery event.
    resp = api.patch("/api/parameters", {"services": {"frontend": {"tag": "1.25"}}})
    assert resp.status_code == 200, resp.text
    wait_for(_healthy(api), timeout=90, message="Ready=True after the fix")
    waited = _kubectl(api, "wait", "--for=condition=Ready", "deploymentparameters/default",
                      "--timeout=10s")
    assert waited.returncode == 0, (waited.stdout, waited.stderr)
    assert "every service healthy" in _conditions(api)["Ready"]["message"]
    recovered = wait_for(lambda: [e for e in api.get(
        f"/api/events/{ns}/Deployment/frontend", params={"type": "success"}).json["events"]
        if e["reason"] == "Recovered"], timeout=15, message="the recovery event")
    assert recovered[0]["service"] == "frontend"
