"""What operators read: JSON log lines from the real process, the standard process and
Python series beside conductor's metrics, the request counter's `code` label."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devcluster.running import free_port
from tests.support.api import Api, get
from tests.support.cluster import App, controller_process
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster


def test_metrics_carry_process_and_python_series_and_the_code_label(api: Api) -> None:
    assert api.get("/api/services").status_code == 200
    text = api.get("/metrics").text
    for family in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                   "process_open_fds", "python_info", "python_gc_objects_collected_total"):
        assert f"\n{family}" in text, family
    line = next(line for line in text.splitlines()
                if line.startswith("conductor_api_requests_total{")
                and 'route="/api/services"' in line)
    assert 'code="200"' in line and "status=" not in line, line


def test_json_logs_are_one_object_a_line_with_the_pass_fields(app: App,
                                                              tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "controller.log"
    with controller_process(app.cluster, app.root, app.namespace, port, log,
                            CONDUCTOR_LOG_FORMAT="json"):
        wait_for(lambda: get(port, "/healthz").status == 200, timeout=60,
                 message=f"the API to answer (log: {log})")
        wait_for(lambda: "lastPass" in get(port, "/api/status").json, timeout=60,
                 message="the first pass")

        def records() -> list[dict[str, object]]:
            lines = [line for line in log.read_text().splitlines() if line.strip()]
            return [json.loads(line) for line in lines]  # every line is one JSON object
        # The default access log (CONDUCTOR_API_ACCESS_LOG=errors) writes refused calls:
        # a 404 is one, and its line may lag the answer a little.
        assert get(port, "/api/no-such-route").status == 404
        wait_for(lambda: any(r.get("logger") == "gunicorn.access" for r in records()),
                 timeout=30, message=f"the access line of a refused call (log: {log})")
        found = records()
        passed = [r for r in found if r.get("reason") == "ReconcileSucceeded"]
        assert passed, found[-10:]
        assert passed[0]["instance"] == "default"
        assert passed[0]["namespace"] == app.namespace
        assert passed[0]["operation"] == "reconcile"
        assert str(passed[0]["revision"]).startswith("generation/")
        assert {"time", "level", "logger", "message"} <= set(passed[0])
        assert any(r.get("logger") == "gunicorn.error" for r in found)
        assert any(r.get("logger") == "gunicorn.access" for r in found)
