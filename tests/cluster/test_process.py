"""`conductor run` as a real process (gunicorn + loop): crash mid-pass, restart, converge."""

from __future__ import annotations

import json
import os
import shutil
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.adapters.kube import Kube
from controller.adapters.sources.resource import API_VERSION, KIND
from controller.model.objects import LABEL_APP, LABEL_INSTANCE, LABEL_SERVICE
from devcluster import kubelet
from devcluster.running import free_port
from tests.support.cluster import LocalCluster, controller_process
from tests.support.waiting import wait_for

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
BULK = 1000


def _get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return json.loads(resp.read())


def _bulk(kube: Kube, namespace: str) -> int:
    return len(kube.list("v1", "ConfigMap", namespace,
                         f"{LABEL_SERVICE}=bulk,{LABEL_INSTANCE}=default")[0])


def test_killed_mid_pass_then_restarted_converges_and_prunes_only_its_own(
        cluster: LocalCluster, kube: Kube, namespace: str, tmp_path: Path,
        crd: dict[str, Any]) -> None:
    root = tmp_path / "manifests"
    shutil.copytree(REPO / "manifests", root)
    params = yaml.safe_load((root / "parameters.yaml").read_text())
    params["global"]["namespace"] = namespace
    (root / "parameters.yaml").write_text(yaml.safe_dump(params))
    (root / "bulk").mkdir()
    (root / "bulk" / "many.yaml").write_text(
        f"{{% for i in range({BULK}) %}}\n---\napiVersion: v1\nkind: ConfigMap\n"
        "metadata:\n  name: bulk-{{ i }}\ndata:\n  i: '{{ i }}'\n{% endfor %}\n")
    # Not ours: an unlabelled object, and one of another instance of the same app.
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "foreign", "namespace": namespace}})
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "other-instance", "namespace": namespace,
                             "labels": {LABEL_APP: "conductor", LABEL_INSTANCE: "other",
                                        LABEL_SERVICE: "bulk"}}})
    log = tmp_path / "controller.log"
    port = free_port()
    with controller_process(cluster, root, namespace, port, log,
                            CONDUCTOR_APPLY_CONCURRENCY="1") as proc:
        wait_for(lambda: _bulk(kube, namespace) >= 20, timeout=60,
                 message=f"the first pass to be under way (log: {log})")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    applied = _bulk(kube, namespace)
    assert 20 <= applied < BULK, "the kill did not land mid-pass"
    obj = kube.get(API_VERSION, KIND, "default", namespace)
    assert obj is not None
    status = obj.get("status") or {}
    # The pass said it was under way (Reconciling, written with its intent) and never
    # got to say it was done.
    conditions = {c["type"]: (c["status"], c.get("reason")) for c in
                  status.get("conditions") or []}
    assert conditions.get("Reconciling", ("True",))[0] == "True", conditions
    assert conditions.get("Ready", ("False",))[0] != "True", \
        "the first pass finished before the kill"
    assert "lastAppliedRevision" not in status, "the first pass finished before the kill"
    # Before creating anything the pass recorded its intent, so the next one knows.
    pending = [e for e in status.get("inventory", []) if e["s"] == "bulk"]
    assert len(pending) == BULK and all(e["d"] == "" for e in pending)

    shutil.rmtree(root / "bulk")  # the service goes away while the controller is down
    with controller_process(cluster, root, namespace, port, log) as proc:
        wait_for(lambda: _get(port, "/healthz") == {"status": "ok"}, timeout=60,
                 message="the API to answer")
        wait_for(lambda: _bulk(kube, namespace) == 0, timeout=90,
                 message="leftovers of the killed pass pruned")

        def ready() -> bool:
            kubelet.settle(kube, namespace)  # Ready means applied and healthy: pods run
            o = kube.get(API_VERSION, KIND, "default", namespace) or {}
            conds = {c["type"]: c["status"] for c in (o.get("status") or {}).get(
                "conditions", [])}
            return conds.get("Ready") == "True"
        wait_for(ready, timeout=60, message="Ready=True after restart")
        assert kube.get("apps/v1", "Deployment", "redis", namespace) is not None
        assert kube.get("v1", "ConfigMap", "foreign", namespace) is not None
        assert kube.get("v1", "ConfigMap", "other-instance", namespace) is not None
        services = {s["name"] for s in _get(port, "/api/services")["services"]}
        assert services == {"frontend", "redis", "postgres"}
        # A graceful stop: SIGTERM ends the process (after the current pass, if any).
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 0, f"not a clean exit (log: {log})"
