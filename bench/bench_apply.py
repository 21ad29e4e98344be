"""Benchmark: first apply of 500 objects vs `kubectl apply --server-side`, and a no-op pass.

Run: .venv/bin/python -m bench.bench_apply
Prints ratios from one run on one local control plane: conductor's first apply of 500
rendered objects against kubectl's server-side apply of the same objects (a fresh
namespace each), then a no-op pass over 1,000 managed objects with its wall time and the
write requests the API server counted during it (target: 0 writes, < 1 s).
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import yaml

from bench.common import control_plane, write_app
from controller.adapters.crds import ensure_crd
from controller.adapters.kube import Kube
from controller.adapters.sources.resource import ResourceSource, load_seed
from controller.config import Config, LoopSettings
from controller.model import rendering
from controller.model.parameters import Parameters
from controller.reconcile.engine import Engine
from tests.support.proxy import ApiProxy


def _namespace(kube: Kube, name: str) -> None:
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


def main() -> None:
    with control_plane() as state, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = Config(kubeconfig=state.kubeconfig, loop=LoopSettings(interval=3600))
        kube = Kube.connect(base)
        ensure_crd(kube)

        # -- first apply of 500 objects --------------------------------------------------
        root = work / "app500"
        count = write_app(root, services=50, configmaps=8)
        assert count == 500
        tree = rendering.load_tree(root)
        objects = rendering.render(tree, Parameters.from_spec(load_seed(root)))
        run = secrets.token_hex(3)  # fresh namespaces even on a reused control plane
        ns_kubectl, ns_conductor, ns_noop = (f"bench-{what}-{run}"
                                             for what in ("kubectl", "conductor", "noop"))
        for ns in (ns_kubectl, ns_conductor, ns_noop):
            _namespace(kube, ns)
        rendered = work / "rendered.yaml"
        docs = []
        for m in objects:
            body = dict(m.body)
            body["metadata"] = {**body["metadata"], "namespace": ns_kubectl}
            docs.append(body)
        rendered.write_text(yaml.safe_dump_all(docs))
        started = time.perf_counter()
        done = subprocess.run(["kubectl", "--kubeconfig", state.kubeconfig, "apply",
                               "--server-side", "--field-manager=bench", "-f", str(rendered)],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        kubectl_s = time.perf_counter() - started

        cfg = replace(base, namespace=ns_conductor, default_namespace=ns_conductor,
                      manifest_root=root)
        engine = Engine(cfg, kube, ResourceSource(cfg))
        engine.resource.ensure()
        started = time.perf_counter()
        report = engine.up()
        conductor_s = time.perf_counter() - started
        assert report.ok, report.to_dict()
        assert report.results.counts()["applied"] == 500

        # -- no-op pass over 1,000 managed objects ---------------------------------------
        root1k = work / "app1000"
        write_app(root1k, services=100, configmaps=8)
        cfg1k = replace(base, namespace=ns_noop, default_namespace=ns_noop,
                        manifest_root=root1k)
        engine1k = Engine(cfg1k, kube, ResourceSource(cfg1k))
        assert engine1k.up().ok
        noop_times = []
        for _ in range(5):
            started = time.perf_counter()
            noop = engine1k.reconcile()
            noop_times.append(time.perf_counter() - started)
            assert noop.ok and noop.results.counts()["applied"] == 0, noop.to_dict()
        # Writes are counted by a proxy that sees only our requests (the API server's own
        # counter also counts the controller manager's work on the new Deployments).
        with ApiProxy(state.kubeconfig, work) as proxy:
            counted = Kube.connect(replace(cfg1k, kubeconfig=str(proxy.kubeconfig)))
            proxy.stats.reset()
            assert Engine(cfg1k, counted, ResourceSource(cfg1k)).reconcile().ok
            writes, requests = proxy.stats.writes, sum(proxy.stats.requests.values())
            counted.close()
        kube.close()

    noop_best, noop_median = min(noop_times), sorted(noop_times)[len(noop_times) // 2]
    print(f"first apply, 500 objects: conductor {conductor_s:.2f}s, kubectl apply "
          f"--server-side {kubectl_s:.2f}s, ratio {conductor_s / kubectl_s:.2f}x "
          f"(target <= 0.8x)")
    print(f"no-op pass, 1000 managed objects: median {noop_median:.3f}s, best "
          f"{noop_best:.3f}s over 5 passes; {writes} write requests out of {requests} "
          f"requests (targets: 0 writes, < 1 s)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
