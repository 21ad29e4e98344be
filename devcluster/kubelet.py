"""A SIMULATED kubelet: it runs no containers; it only writes the status a kubelet would.

The local control plane has no nodes, so Pods stay Pending forever. Health logic must be
tested on real objects, and the demo's services should be able to become healthy, so this
module writes Pod status through the `pods/status` subresource, the way a kubelet reports:
Running and Ready, or a container waiting with a reason (ImagePullBackOff, CrashLoopBackOff,
...). The simulator process applies it to every new Pod, sending an image whose tag is
listed as missing to ImagePullBackOff, and marks PersistentVolumeClaims Bound. It binds no
port and starts no process. It is a stand-in in the spirit of kwok, not a node.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from controller.adapters.kube import Body, Kube, KubeError
from controller.adapters.watching import Reflector, Selector

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _conditions(ready: bool, scheduled: bool = True, reason: str = "",
                message: str = "") -> list[Body]:
    now = _now()
    out = [{"type": "PodScheduled", "status": "True" if scheduled else "False",
            "lastTransitionTime": now}]
    if not scheduled:
        out[0].update(reason="Unschedulable", message=message)
        return out
    for kind in ("Initialized", "ContainersReady", "Ready"):
        cond: Body = {"type": kind, "status": "True", "lastTransitionTime": now}
        if kind != "Initialized" and not ready:
            cond.update(status="False", reason=reason or "ContainersNotReady",
                        message=message or "containers with unready status")
        out.append(cond)
    return out


def _containers(pod: Body) -> list[Body]:
    return list(pod.get("spec", {}).get("containers") or [])


def _status_of(container: Body, ready: bool, state: Body, restarts: int = 0,
               last_state: Body | None = None) -> Body:
    return {
        "name": container["name"], "image": container.get("image", ""),
        "imageID": "", "ready": ready, "started": ready, "restartCount": restarts,
        "state": state, "lastState": last_state or {},
    }


def _patch_status(kube: Kube, pod: Body, status: Body) -> Body:
    meta = pod["metadata"]
    return kube.patch("v1", "Pod", meta["name"], {"status": status}, meta["namespace"],
                      subresource="status")


def mark_ready(kube: Kube, pod: Body) -> Body:
    """Pod Running, every container running and ready."""
    started = {"running": {"startedAt": _now()}}
    return _patch_status(kube, pod, {
        "phase": "Running", "conditions": _conditions(True), "hostIP": "127.0.0.1",
        "podIP": "127.0.0.1", "startTime": _now(),
        "containerStatuses": [_status_of(c, True, started) for c in _containers(pod)],
    })


def mark_waiting(kube: Kube, pod: Body, reason: str, message: str = "",
                 container: str | None = None, restarts: int = 0,
                 last_exit_code: int | None = None) -> Body:
    """A container waits with `reason` (ImagePullBackOff, CrashLoopBackOff, ...).

    Other containers run. With `last_exit_code`, the container's last state is a
    termination with that code (as after a crash), and `restarts` its restart count.
    """
    names = [c["name"] for c in _containers(pod)]
    target = container or names[0]
    statuses = []
    for c in _containers(pod):
        if c["name"] == target:
            last = None
            if last_exit_code is not None:
                last = {"terminated": {"exitCode": last_exit_code, "reason": "Error",
                                       "startedAt": _now(), "finishedAt": _now()}}
            statuses.append(_status_of(c, False, {"waiting": {"reason": reason,
                                                              "message": message}},
                                       restarts, last))
        else:
            statuses.append(_status_of(c, True, {"running": {"startedAt": _now()}}))
    phase = "Running" if restarts or last_exit_code is not None else "Pending"
    return _patch_status(kube, pod, {
        "phase": phase, "conditions": _conditions(False), "startTime": _now(),
        "containerStatuses": statuses,
    })


def post_event(kube: Kube, pod: Body, reason: str, message: str,
               type_: str = "Warning") -> Body:
    """An Event about `pod` as a kubelet posts it (e.g. Failed / BackOff for a pull)."""
    meta, now = pod["metadata"], _now()
    return kube.create({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta.get("uid", "")},
        "type": type_, "reason": reason, "message": message,
        "source": {"component": "kubelet", "host": "simulated"},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1})


def pull_failed(kube: Kube, pod: Body, image: str, container: str | None = None) -> Body:
    """A missing image, as a kubelet reports it: the container in ImagePullBackOff, and
    the Pod's Failed and BackOff Warning Events."""
    out = mark_waiting(kube, pod, "ImagePullBackOff", f'Back-off pulling image "{image}"',
                       container=container)
    post_event(kube, pod, "Failed", f'Failed to pull image "{image}": rpc error: code = '
               f'NotFound desc = failed to pull and unpack image "{image}": not found')
    post_event(kube, pod, "BackOff", f'Back-off pulling image "{image}"')
    return out


def mark_unschedulable(kube: Kube, pod: Body, message: str) -> Body:
    """Pending with PodScheduled=False/Unschedulable, as the scheduler reports."""
    return _patch_status(kube, pod, {"phase": "Pending",
                                     "conditions": _conditions(False, False, message=message)})


def bind_claim(kube: Kube, claim: Body) -> Body:
    meta = claim["metadata"]
    size = claim.get("spec", {}).get("resources", {}).get("requests", {}).get("storage", "1Gi")
    return kube.patch("v1", "PersistentVolumeClaim", meta["name"],
                      {"status": {"phase": "Bound", "capacity": {"storage": size},
                                  "accessModes": claim["spec"].get("accessModes", [])}},
                      meta["namespace"], subresource="status")


def settle(kube: Kube, namespace: str) -> None:
    """What the simulator does, once, for one namespace: every Pod not yet reported goes
    Ready, every claim Bound (for tests and benchmarks, which run no simulator)."""
    for pod in kube.list("v1", "Pod", namespace)[0]:
        if not (pod.get("status") or {}).get("containerStatuses"):
            mark_ready(kube, pod)
    for claim in kube.list("v1", "PersistentVolumeClaim", namespace)[0]:
        if (claim.get("status") or {}).get("phase") != "Bound":
            bind_claim(kube, claim)


def _image_tag(image: str) -> str:
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


class Simulator:
    """Moves new Pods to Ready (or ImagePullBackOff for a missing tag), PVCs to Bound."""

    def __init__(self, kube: Kube, missing_tags: Callable[[], set[str]],
                 namespace: str = "") -> None:
        """`namespace`: only that one (a test's own, on a control plane others share)."""
        self.kube = kube
        self.missing_tags = missing_tags
        self._reflectors = [
            Reflector(kube, Selector("v1", "Pod", namespace), self._on_pod),
            Reflector(kube, Selector("v1", "PersistentVolumeClaim", namespace),
                      self._on_claim),
        ]

    def start(self) -> Simulator:
        for r in self._reflectors:
            r.start()
        return self

    def stop(self) -> None:
        for r in self._reflectors:
            r.stop()

    def _on_pod(self, kind: str, pod: Body) -> None:
        if kind not in ("ADDED", "MODIFIED") or pod["metadata"].get("deletionTimestamp"):
            return
        if pod.get("status", {}).get("containerStatuses"):
            return  # already reported once; tests may drive it further by hand
        missing = self.missing_tags()
        bad = [c for c in _containers(pod) if _image_tag(c.get("image", "")) in missing
               or c.get("image", "") in missing]
        try:
            if bad:
                pull_failed(self.kube, pod, bad[0].get("image", ""), bad[0]["name"])
            else:
                mark_ready(self.kube, pod)
        except KubeError as e:
            if e.status != 404:  # deleted meanwhile is fine
                log.warning("cannot update pod %s: %s", pod["metadata"]["name"], e.message)

    def _on_claim(self, kind: str, claim: Body) -> None:
        if kind in ("ADDED", "MODIFIED") and claim.get("status", {}).get("phase") != "Bound":
            try:
                bind_claim(self.kube, claim)
            except KubeError as e:
                if e.status != 404:
                    log.warning("cannot bind claim %s: %s", claim["metadata"]["name"],
                                e.message)


def missing_tags_from(path: Path) -> Callable[[], set[str]]:
    """Tags (or full image names) listed one per line in `path`, re-read on each use."""
    def read() -> set[str]:
        try:
            return {line.strip() for line in path.read_text().splitlines() if line.strip()}
        except FileNotFoundError:
            return set()
    return read


def run_forever(kube: Kube, missing_file: Path, stop: threading.Event | None = None) -> None:
    sim = Simulator(kube, missing_tags_from(missing_file)).start()
    (stop or threading.Event()).wait()
    sim.stop()

