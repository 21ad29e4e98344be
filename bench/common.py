"""Shared pieces of the benchmarks: a control plane, generated apps, API-server counters."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from devcluster import building, running


@contextmanager
def control_plane() -> Iterator[running.ClusterState]:
    """A fresh local control plane for the run (or the one in CONDUCTOR_BENCH_STATE_DIR)."""
    reuse = os.environ.get("CONDUCTOR_BENCH_STATE_DIR")
    if reuse:
        state = running.ClusterState.load(Path(reuse))
        assert state is not None, f"no control plane in {reuse}"
        yield state
        return
    with tempfile.TemporaryDirectory(prefix="conductor-bench-") as tmp:
        state = running.up(Path(tmp), building.ensure_binaries())
        try:
            yield state
        finally:
            running.down(Path(tmp))


def write_app(root: Path, services: int, configmaps: int) -> int:
    """A generated app: per service a Deployment, a Service and N ConfigMaps. Services are
    headless: thousands of them must not exhaust a (shared) control plane's service IPs."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "parameters.yaml").write_text("global:\n  replicas: 1\n  image: nginx\n"
                                          "  tag: '1.25'\n")
    for i in range(services):
        d = root / f"svc{i:03d}"
        d.mkdir()
        (d / "workload.yaml").write_text("""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ name }}
spec:
  replicas: {{ service.replicas }}
  selector:
    matchLabels: {app: {{ name }}}
  template:
    metadata:
      labels: {app: {{ name }}}
    spec:
      containers:
      - name: main
        image: "{{ service.image }}:{{ service.tag }}"
        resources:
          requests: {cpu: 10m, memory: 16Mi}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ name }}
spec:
  clusterIP: None
  selector: {app: {{ name }}}
  ports:
  - {name: http, port: 80, targetPort: 8080, protocol: TCP}
""")
        (d / "config.yaml").write_text(f"""\
{{% for n in range({configmaps}) %}}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{{{ name }}}}-config-{{{{ n }}}}
data:
  index: "{{{{ n }}}}"
  greeting: hello from {{{{ name }}}}
{{% endfor %}}
""")
    return services * (2 + configmaps)
