"""The no-change pass (engine.py's module doc): an interval pass that finds nothing changed
since the last full pass skips rendering and planning and writes nothing; every change it
must not miss, the safety-net age and any other trigger run a full pass.

The real Engine, ResourceSource and LiveCache, over an in-memory API server of lists and
watch streams (tests/support/memkube.py, no cluster). The app is a small tree whose one
service is marked down, so a full pass renders nothing and sends only its status write:
what is tested here is which passes run in full, not applying (the cluster tests cover
that).
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.adapters.cache import LiveCache
from controller.adapters.kube import Body
from controller.adapters.sources.resource import ResourceSource
from controller.adapters.watching import Selector
from controller.config import Config, LoopSettings
from controller.model import instance
from controller.model.instance import API_VERSION, KIND
from controller.model.objects import LABEL_APP, LABEL_INSTANCE, LABEL_INSTANCE_NAMESPACE
from controller.reconcile.applying import selector
from controller.reconcile.engine import Engine, Report
from controller.reconcile.passes import PassEvent, PassFinished, PassStarted
from tests.support.memkube import MemoryKube, live_cache
from tests.support.waiting import wait_for

NS = "ns"


def parameters(generation: int, message: str = "hello") -> Body:
    """The instance's DeploymentParameters object, its one service marked down."""
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": "default", "namespace": NS, "uid": "u-1",
                         "generation": generation,
                         "annotations": instance.down_annotation(["web"])},
            "spec": {"global": {"message": message}}}


def owned_configmap() -> Body:
    labels = {LABEL_APP: Config().app_name, LABEL_INSTANCE: "default",
              LABEL_INSTANCE_NAMESPACE: NS}
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "web-config", "namespace": NS, "labels": labels},
            "data": {"message": "hello"}}


class Rig:
    def __init__(self, tmp: Path, full_pass_every: float = 600.0) -> None:
        root = tmp / "manifests"
        (root / "web").mkdir(parents=True)
        (root / "web" / "configmap.yaml").write_text(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\n"
            "data:\n  message: {{ global.message }}\n")
        (root / "parameters.yaml").write_text("global:\n  message: default\n")
        self.template = root / "web" / "configmap.yaml"
        self.cfg = Config(namespace=NS, default_namespace=NS, manifest_root=root,
                          loop=LoopSettings(full_pass_every=full_pass_every))
        self.kube = MemoryKube(stamp_versions=True)
        self.kube.send("ADDED", parameters(1))
        self.kube.send("ADDED", owned_configmap())
        # A change waits 0.05 s (not cache.OURS_GRACE) for the answer of a write of ours.
        self.live = LiveCache(self.kube, sync_timeout=5.0,  # type: ignore[arg-type]
                              ours_grace=0.05)
        # The set a pass that applied the ConfigMap would have started (applier.observe).
        self.configmaps = Selector("v1", "ConfigMap", NS, selector(self.cfg))
        assert self.live.objects(self.configmaps)
        self.events: list[PassEvent] = []
        self.engine = Engine(self.cfg, self.kube, ResourceSource(self.cfg),  # type: ignore[arg-type]
                             sink=self.events.append, live=self.live)

    def stamp(self) -> int:
        return self.live.changes("default")

    def settle(self, before: int) -> None:
        """Wait until the cache has taken a change sent after `before` was read, and no
        longer waits for an answer of ours to it (the stamp is known again)."""
        wait_for(lambda: self.stamp() != before and self.stamp() >= 0, timeout=10,
                 message="the cache to take the change")

    def send(self, event: str, obj: Body) -> None:
        before = self.stamp()
        sent = self.kube.send(event, obj)
        if obj["kind"] == KIND:  # not instance-labelled: wait for the copy itself
            wait_for(lambda: (self.live.get(Selector(API_VERSION, KIND, NS), "default", NS)[1]
                              or {}).get("metadata", {}).get("resourceVersion")
                     == sent["metadata"]["resourceVersion"], timeout=10,
                     message="the cache to take the parameters")
        else:
            self.settle(before)

    def interval(self) -> Report:
        report = self.engine.reconcile("interval")
        assert report.ok, report.summary()
        return report

    def steady(self) -> None:
        """A start pass, then an interval pass that skips (the start pass's own status
        write is no change of what it reads)."""
        first = self.engine.reconcile("start")
        assert first.ok and not first.skipped, first.summary()
        assert self.interval().skipped


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    rig.live.stop()
    rig.kube.end()


def test_an_unchanged_interval_pass_skips_and_writes_nothing(rig: Rig) -> None:
    rig.steady()
    writes = rig.kube.writes
    for _ in range(5):
        report = rig.interval()
        assert report.skipped
        assert report.revision == "generation/1"
        assert report.snapshot is not None and report.plan is not None
    assert rig.kube.writes == writes  # no status write, nothing applied
    assert rig.engine.last is not None and rig.engine.last.skipped


def test_a_skipped_pass_records_no_events(rig: Rig) -> None:
    rig.steady()
    rig.events.clear()
    assert rig.interval().skipped
    assert rig.events == []
    assert not rig.engine.reconcile("webhook").skipped
    assert [type(e) for e in rig.events] == [PassStarted, PassFinished]


def test_a_spec_change_runs_a_full_pass(rig: Rig) -> None:
    rig.steady()
    rig.send("MODIFIED", parameters(2, message="changed"))
    report = rig.interval()
    assert not report.skipped and report.revision == "generation/2"
    assert rig.interval().skipped  # and the one after is steady again


def test_an_annotation_change_runs_a_full_pass(rig: Rig) -> None:
    """A service marked up or down is an annotation: no new generation."""
    rig.steady()
    changed = parameters(1)
    changed["metadata"]["annotations"] = instance.down_annotation(["web", "gone"])
    rig.send("MODIFIED", changed)
    assert not rig.interval().skipped


def test_a_status_write_by_someone_else_does_not_force_a_full_pass(rig: Rig) -> None:
    """resourceVersion is not part of the fingerprint: status writes move it."""
    rig.steady()
    obj = rig.kube.get(API_VERSION, KIND, "default", NS)
    assert obj is not None
    obj["status"] = {**(obj.get("status") or {}), "note": "a reporter wrote"}
    rig.send("MODIFIED", obj)
    assert rig.interval().skipped


def test_a_template_edited_in_place_runs_a_full_pass(rig: Rig) -> None:
    rig.steady()
    rig.template.write_text(rig.template.read_text() + "  extra: '1'\n")
    stat = rig.template.stat()  # a coarse clock may leave the mtime: move it on
    os.utime(rig.template, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert not rig.interval().skipped


def test_default_parameters_edited_run_a_full_pass(rig: Rig) -> None:
    rig.steady()
    seed = rig.cfg.manifest_root / "parameters.yaml"
    seed.write_text("global:\n  message: another default\n")
    assert not rig.interval().skipped


def test_a_new_source_revision_runs_a_full_pass(rig: Rig) -> None:
    """The same spec at a new generation (e.g. recreated from the same file)."""
    rig.steady()
    rig.send("MODIFIED", parameters(3))
    report = rig.interval()
    assert not report.skipped and report.revision == "generation/3"


@pytest.mark.parametrize("event", ["MODIFIED", "DELETED"])
def test_an_owned_object_changed_in_the_cache_runs_a_full_pass(rig: Rig, event: str) -> None:
    """Drift (someone edits or deletes one of its objects) is corrected at the next pass."""
    rig.steady()
    drifted = owned_configmap()
    drifted["data"] = {"message": "edited by hand"}
    rig.send(event, drifted)
    assert not rig.interval().skipped
    assert rig.interval().skipped


def test_a_status_write_on_an_owned_object_does_not_force_a_full_pass(rig: Rig) -> None:
    """A controller writing a workload's status and its revision annotation (the
    controller manager rolling out a Deployment) is no drift; another manager taking a
    field of ours is news."""
    rig.steady()
    before = rig.stamp()
    written = owned_configmap()
    written["status"] = {"observedGeneration": 2}
    written["metadata"]["managedFields"] = [
        {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
         "time": "2026-11-27T00:00:00Z", "fieldsV1": {"f:status": {"f:observedGeneration": {}}}}]
    sent = rig.kube.send("MODIFIED", written)

    def taken() -> bool:
        copies = rig.live.objects(rig.configmaps) or []
        return any(c["metadata"].get("resourceVersion") == sent["metadata"]["resourceVersion"]
                   for c in copies)

    wait_for(taken, timeout=10, message="the cache to take the status write")
    assert rig.stamp() == before
    assert rig.interval().skipped
    again = copy.deepcopy(written)  # the next status write, at another time, and the
    again["status"] = {"observedGeneration": 3}  # Deployment controller's revision
    again["metadata"]["annotations"] = {"deployment.kubernetes.io/revision": "1"}
    again["metadata"]["managedFields"][0].update(
        time="2026-11-27T00:00:05Z",
        fieldsV1={"f:status": {"f:observedGeneration": {}}, "f:metadata": {
            "f:annotations": {"f:deployment.kubernetes.io/revision": {}}}})
    sent = rig.kube.send("MODIFIED", again)
    wait_for(taken, timeout=10, message="the cache to take the second status write")
    assert rig.stamp() == before
    shared = copy.deepcopy(again)
    shared["metadata"]["managedFields"].append(
        {"manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
         "time": "2026-11-27T00:00:09Z", "fieldsV1": {"f:data": {"f:message": {}}}})
    rig.send("MODIFIED", shared)  # waits for the stamp to move
    assert not rig.interval().skipped


def test_another_instances_object_changing_does_not_force_a_full_pass(rig: Rig) -> None:
    rig.steady()
    other = owned_configmap()
    other["metadata"]["name"] = "other-config"
    other["metadata"]["labels"] = {**other["metadata"]["labels"], LABEL_INSTANCE: "other"}
    before = rig.live.changes("other")
    rig.kube.send("ADDED", other)
    wait_for(lambda: rig.live.changes("other") != before, timeout=10,
             message="the other instance's object in the cache")
    assert rig.interval().skipped


def test_a_set_only_health_subscribes_to_does_not_force_a_full_pass(rig: Rig) -> None:
    """Pods (and ReplicaSets) are watched for health, never read by a pass: their changes
    say nothing about a plan. After a restart their first lists once made every instance's
    next interval pass a full one."""
    rig.steady()
    seen = threading.Event()
    pods = rig.live.subscribe(
        Selector("v1", "Pod", NS),
        lambda kind, obj: seen.set() if kind == "ADDED" else None)
    assert pods.wait_fresh(10)  # listed (empty): the Pod below comes as a watch event
    pod = owned_configmap()
    pod.update(kind="Pod", data=None)
    pod["metadata"]["name"] = "web-1"
    rig.kube.send("ADDED", pod)
    wait_for(seen.is_set, timeout=10, message="the health subscriber to see the Pod")
    assert rig.interval().skipped
    # A set a pass reads stamps from its first read on (the cache docstring).
    cm = owned_configmap()
    cm["data"] = {"message": "edited by hand"}
    rig.send("MODIFIED", cm)
    assert not rig.interval().skipped


def test_a_sets_first_list_stamps_nothing_its_changes_after_do(tmp_path: Path) -> None:
    """A restart's passes overlap their namespaces' first lists: what a first list brings
    in is no change (no one read the set before), or every instance sharing the set would
    run a second full pass."""
    kube = MemoryKube(stamp_versions=True)
    kube.send("ADDED", owned_configmap())
    with live_cache(kube) as live:
        before = live.changes("default")
        assert live.objects(Selector("v1", "ConfigMap", NS))  # created, listed, read
        assert live.changes("default") == before
        edited = owned_configmap()
        edited["data"] = {"message": "edited by hand"}
        kube.send("MODIFIED", edited)
        wait_for(lambda: live.changes("default") != before, timeout=10,
                 message="a change after the first read moves the stamp")


def test_a_full_pass_is_forced_after_full_pass_every(tmp_path: Path) -> None:
    rig = Rig(tmp_path, full_pass_every=0.3)
    try:
        rig.steady()
        # Polled, not slept: skipped passes until the age is reached, then a full one.
        wait_for(lambda: not rig.interval().skipped, timeout=10,
                 message="a full pass once the last one is full_pass_every old")
    finally:
        rig.live.stop()
        rig.kube.end()


def test_no_skipping_when_full_pass_every_is_zero(tmp_path: Path) -> None:
    rig = Rig(tmp_path, full_pass_every=0)
    try:
        assert not rig.engine.reconcile("start").skipped
        assert not rig.interval().skipped
        assert not rig.interval().skipped
    finally:
        rig.live.stop()
        rig.kube.end()


@pytest.mark.parametrize("trigger", ["start", "parameters changed", "webhook", "retry",
                                     "interval,wake"])
def test_any_other_trigger_runs_a_full_pass(rig: Rig, trigger: str) -> None:
    rig.steady()
    report = rig.engine.reconcile(trigger)
    assert report.ok and not report.skipped


def test_an_operation_makes_the_next_interval_pass_full(rig: Rig) -> None:
    rig.steady()
    assert rig.engine.update().ok
    assert not rig.interval().skipped


def test_a_failed_pass_makes_the_next_interval_pass_full(rig: Rig) -> None:
    rig.steady()
    rig.send("MODIFIED", {**parameters(4), "spec": {"global": "not a mapping"}})
    assert not rig.engine.reconcile("interval").ok
    rig.send("MODIFIED", parameters(5))
    assert not rig.interval().skipped
    assert rig.interval().skipped


def test_an_engine_without_a_live_cache_never_skips(rig: Rig) -> None:
    engine = Engine(rig.cfg, rig.kube, ResourceSource(rig.cfg))  # type: ignore[arg-type]
    for trigger in ("start", "interval", "interval"):
        report = engine.reconcile(trigger)
        assert report.ok and not report.skipped, report.summary()


def test_secret_references_are_always_rendered(rig: Rig) -> None:
    """A Secret is not watched: its change would not move the fingerprint."""
    rig.kube.send("ADDED", {"apiVersion": "v1", "kind": "Secret",
                            "metadata": {"name": "s", "namespace": NS},
                            "data": {"k": "dmFsdWU="}})
    ref = parameters(6)
    ref["spec"]["global"]["message"] = {"secretKeyRef": {"name": "s", "key": "k"}}
    rig.send("MODIFIED", ref)
    assert rig.engine.reconcile("start").ok
    assert not rig.interval().skipped


def test_a_hidden_folder_is_not_part_of_the_manifests(rig: Rig) -> None:
    """Rendering skips hidden folders (a checkout's .git): so does the fingerprint."""
    rig.steady()
    hidden = rig.cfg.manifest_root / ".git" / "objects"
    hidden.mkdir(parents=True)
    (hidden / "ab12").write_text("a fetched object")
    assert rig.interval().skipped
