"""Issue 15's CLI acceptance: every command of `conductor` (controller/agents/commands.py)
run as a subprocess against one real `conductor run` on the local control plane, each
reading command with `-o json` parsed back and checked against what the API itself
answers (plain HTTP here, not the CLI's own client); and `update --wait-healthy` onto a
missing image tag failing with exit code 1 and the reason (ImagePullBackOff).

One controller serves the whole test (a process start costs seconds); Pods are reported
by the simulated kubelet (the shared one, or this test's own scoped to its namespace).
Every wait is a poll with a deadline: the CLI's own `wait`/`--wait`, or `wait_for`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.adapters.kube import Kube
from devcluster.running import free_port
from tests.support.cluster import App, LocalCluster, controller_process, missing_image_tag
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

SERVICES = {"frontend", "postgres", "redis"}
EXIT_OK, EXIT_FAILED, EXIT_TIMEOUT = 0, 1, 4  # commands.py's documented exit codes


@pytest.fixture
def missing_tag(cluster: LocalCluster, kube: Kube, namespace: str) -> Iterator[str]:
    """An image tag the simulated kubelet reports as not found (ImagePullBackOff)."""
    with missing_image_tag(cluster, kube, namespace, "cli-missing") as tag:
        yield tag


@pytest.fixture
def url(app: App, cluster: LocalCluster, tmp_path: Path, missing_tag: str) -> Iterator[str]:
    port = free_port()
    log = tmp_path / "controller.log"
    with controller_process(cluster, app.root, app.namespace, port, log) as proc:
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return api(base, "GET", "/readyz")[0] == 200
            except OSError:
                return False
        wait_for(lambda: proc.poll() is not None or ready(), timeout=120,
                 message="the controller's API")
        assert proc.poll() is None, log.read_text()[-2000:]  # it exited: say why
        yield base
        assert proc.poll() is None, log.read_text()[-2000:]


def api(base: str, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], Any]:
    """What the API itself answers: status, headers (names in lower case), JSON body."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, _lower(resp.headers), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, _lower(e.headers), json.loads(e.read() or b"null")


def _lower(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def cli(base: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "controller", *args]
    return subprocess.run(command + (["--url", base] if base else []), capture_output=True,
                          text=True, timeout=300, check=False)


def ok_json(base: str, *args: str) -> Any:
    """A command that must succeed, its `-o json` output parsed back."""
    done = cli(base, *args, "-o", "json")
    assert done.returncode == EXIT_OK, (args, done.returncode, done.stdout, done.stderr)
    return json.loads(done.stdout)


def event_key(event: dict[str, Any]) -> object:
    """What an event is across reads: a mirrored Kubernetes Event by its own name (its row
    takes a new id each time it repeats), any other by its id."""
    details = event.get("details") or {}
    if details.get("origin") == "kubernetes":
        return ("kubernetes", details.get("event"))
    return event["id"]


def version_of(base: str) -> str:
    status, headers, _ = api(base, "GET", "/api/parameters")
    assert status == 200
    return headers["etag"].strip('"')


def test_every_cli_command_against_a_real_controller(url: str, app: App, kube: Kube,
                                                     missing_tag: str,
                                                     tmp_path: Path) -> None:
    # Commands that need no controller.
    version = cli(None, "--version")
    assert version.returncode == 0 and version.stdout.startswith("conductor "), version
    completion = cli(None, "completion", "bash")
    assert completion.returncode == 0 and "--wait-healthy" in completion.stdout
    assert "complete -o default -F _conductor conductor" in completion.stdout
    syntax = subprocess.run(["bash", "-n"], input=completion.stdout, text=True,
                            capture_output=True, check=False)
    assert syntax.returncode == 0, syntax.stderr

    # Healthy first (the simulated kubelet reports the Pods), then the reads.
    waited = cli(url, "wait", "--timeout", "180")
    assert waited.returncode == EXIT_OK, (waited.stdout, waited.stderr)

    status = ok_json(url, "status")
    assert (status["namespace"], status["instance"]) == (app.namespace, "default"), status
    assert status["leader"] == api(url, "GET", "/api/status")[2]["leader"]

    instances = ok_json(url, "instances")
    assert [(i["name"], i["namespace"]) for i in instances["instances"]] == \
        [(i["name"], i["namespace"])
         for i in api(url, "GET", "/api/parameters/instances")[2]["instances"]]

    services = ok_json(url, "services")
    listed = api(url, "GET", "/api/services")[2]  # names and placement; status is live
    assert [(s["name"], s["namespace"], s["deployed"]) for s in services["services"]] == \
        [(s["name"], s["namespace"], s["deployed"]) for s in listed["services"]], listed
    assert {s["name"] for s in services["services"]} == SERVICES

    health = ok_json(url, "health")
    assert {s["name"]: s["status"] for s in health["services"]} == \
        dict.fromkeys(SERVICES, "healthy")
    one = ok_json(url, "health", "redis")
    assert one["health"]["status"] == "healthy" and one["name"] == "redis", one

    # A Kubernetes Event seen again replaces its row under a new id (the store's rule),
    # so one may move between two reads: those are compared by the Event they mirror.
    before = api(url, "GET", "/api/events?limit=100")[2]["events"]
    events = ok_json(url, "events", "--limit", "50")
    after = api(url, "GET", "/api/events?limit=100")[2]["events"]
    assert events["events"] and len(events["events"]) <= 50
    assert {event_key(e) for e in events["events"]} <= \
        {event_key(e) for e in before} | {event_key(e) for e in after}
    infos = ok_json(url, "events", "--type", "info", "--service", "redis")
    assert all(e["type"] == "info" and e.get("service") == "redis" for e in infos["events"])

    params = ok_json(url, "params", "get")
    before = version_of(url)
    assert params["version"] == before
    assert params["parameters"] == api(url, "GET", "/api/parameters")[2]
    redis = ok_json(url, "params", "get", "redis")
    assert redis["parameters"] == api(url, "GET", "/api/parameters/redis")[2]

    # plan a draft: the redis Deployment's diff, kept under its planId; nothing written.
    patch = {"services": {"redis": {"replicas": 2}}}
    plan = ok_json(url, "plan", "--patch", json.dumps(patch))
    assert plan["draft"] is True and plan["basedOn"] == before, plan
    changed = [c for c in plan["changes"] if c["action"] != "unchanged"]
    assert [c["resource"] for c in changed] == [f"{app.namespace}/Deployment/redis"], changed
    assert "replicas: 2" in changed[0]["diff"]
    assert api(url, "GET", f"/api/plans/{plan['planId']}")[2]["changes"] == plan["changes"]
    assert version_of(url) == before

    # params patch / set, with the version read (If-Match) and a stale one refused.
    patched = ok_json(url, "params", "patch", json.dumps(patch), "--if-match", before)
    assert patched["version"] == version_of(url) != before
    assert api(url, "GET", "/api/parameters")[2]["services"]["redis"]["replicas"] == 2
    stale = cli(url, "params", "patch", json.dumps({"services": {"redis": {"replicas": 3}}}),
                "--if-match", before)
    assert stale.returncode == EXIT_FAILED and "precondition_failed" in stale.stderr, stale
    assert "Traceback" not in stale.stderr

    updated = ok_json(url, "update", "redis", "--wait-healthy", "--timeout", "120")
    assert updated["health"]["redis"]["status"] == "healthy", updated
    deployment = kube.get("apps/v1", "Deployment", "redis", app.namespace)
    assert deployment is not None and deployment["spec"]["replicas"] == 2

    spec = api(url, "GET", "/api/parameters")[2]
    spec["services"]["redis"]["replicas"] = 1
    draft = tmp_path / "params.yaml"
    draft.write_text(yaml.safe_dump(spec))
    written = ok_json(url, "params", "set", str(draft))
    assert written["version"] == version_of(url)
    assert api(url, "GET", "/api/parameters")[2] == spec

    # history and rollback: back to the applied revision with two redis replicas.
    history = ok_json(url, "history")
    recorded = api(url, "GET", "/api/parameters/history?limit=20")[2]["history"]
    # `applied` turns true when a pass has applied a revision, maybe between the two reads.
    assert [h["revision"] for h in history["history"]] == [h["revision"] for h in recorded]
    two = next(h for h in history["history"] if h.get("applied")
               and h["parameters"]["services"]["redis"].get("replicas") == 2)
    rolled = ok_json(url, "rollback", str(two["revision"]))
    assert rolled["version"] == version_of(url)
    assert api(url, "GET", "/api/parameters")[2]["services"]["redis"]["replicas"] == 2

    # suspend / resume: while suspended an up is refused (409 conflict), exit 1.
    ok_json(url, "suspend")
    assert app.resource()["spec"]["suspend"] is True
    refused = cli(url, "up", "redis")
    assert refused.returncode == EXIT_FAILED and "conflict" in refused.stderr, refused
    ok_json(url, "resume")

    # down / up with --wait.
    down = ok_json(url, "down", "redis", "--wait")
    assert down.get("done", True), down
    wait_for(lambda: kube.get("apps/v1", "Deployment", "redis", app.namespace) is None,
             timeout=60, message="redis removed")
    up = ok_json(url, "up", "redis", "--wait-healthy", "--timeout", "120")
    assert up["health"]["redis"]["status"] == "healthy", up

    # A missing image: update --wait-healthy fails with exit 1 and the reason, one line.
    ok_json(url, "params", "patch", json.dumps({"services": {"frontend": {"tag": missing_tag}}}))
    broken = cli(url, "update", "frontend", "--wait-healthy", "--timeout", "120")
    print("update --wait-healthy on a missing image:", broken.returncode, broken.stderr)
    assert broken.returncode == EXIT_FAILED, (broken.stdout, broken.stderr)
    assert "ImagePullBackOff" in broken.stderr and "Traceback" not in broken.stderr
    assert broken.stderr.startswith("conductor update: reconciliation_error: ")
    assert len(broken.stderr.strip().splitlines()) == 1, broken.stderr
    unhealthy = cli(url, "health", "-o", "json")
    assert unhealthy.returncode == EXIT_FAILED
    row = {s["name"]: s for s in json.loads(unhealthy.stdout)["services"]}["frontend"]
    assert (row["status"], row["reason"]) == ("unhealthy", "ImagePullBackOff"), row
    timed_out = cli(url, "wait", "frontend", "--timeout", "3")
    assert timed_out.returncode == EXIT_TIMEOUT and "ImagePullBackOff" in timed_out.stderr
