"""The Prometheus collectors: names, labels and values, each test on a fresh registry."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from controller.adapters.metrics import HEALTH_STATES, KIND, GaugeSpec, LiveState, Metrics

OBJ = {"kind": KIND, "name": "default", "namespace": "apps"}
METRIC_COUNT = 21  # every collector Metrics registers
OUTCOMES = {"applied": 3, "unchanged": 5, "deleted": 1, "kept": 0, "failed": 2}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry, "default", "apps")


def value(registry: CollectorRegistry, sample: str, **labels: str) -> float | None:
    return registry.get_sample_value(sample, labels)


def live(metrics: Metrics, **state: Any) -> None:
    """Scrapes from now on see this state (what the controller's `live_state` returns)."""
    metrics.read_live(lambda: LiveState(**state))


def test_labels_name_the_deployment_parameters_object(metrics: Metrics) -> None:
    assert metrics.labels == OBJ


def test_a_successful_pass(metrics: Metrics, registry: CollectorRegistry) -> None:
    before = time.time()
    metrics.observe_pass("reconcile", 0.3, True, OUTCOMES, "generation/4",
                         drifted_services=["redis"])
    op = {**OBJ, "operation": "reconcile"}
    assert value(registry, "conductor_reconcile_duration_seconds_count", **op) == 1
    assert value(registry, "conductor_reconcile_duration_seconds_sum", **op) == \
        pytest.approx(0.3)
    assert value(registry, "conductor_reconcile_duration_seconds_bucket", **op, le="0.25") == 0
    assert value(registry, "conductor_reconcile_duration_seconds_bucket", **op, le="0.5") == 1
    assert value(registry, "conductor_reconcile_total", **op, result="success") == 1
    assert value(registry, "conductor_reconcile_total", **op, result="failure") is None
    for outcome in ("applied", "unchanged", "deleted", "failed"):
        assert value(registry, "conductor_objects_total", **OBJ, outcome=outcome) == \
            OUTCOMES[outcome]
    # Zero counts create no series (no outcome that never happened).
    assert value(registry, "conductor_objects_total", **OBJ, outcome="kept") is None
    assert value(registry, "conductor_drift_corrections_total", **OBJ, service="redis") == 1
    last = value(registry, "conductor_last_successful_reconcile_timestamp_seconds", **OBJ)
    assert last is not None and before <= last <= time.time()
    assert value(registry, "conductor_last_applied_revision_info", **OBJ,
                 revision="generation/4") == 1
    # A pass is not a newly applied revision: the latency is the controller's to observe.
    assert value(registry, "conductor_push_to_applied_seconds_count", **OBJ) is None


def test_a_newly_applied_revision_is_timed_from_first_seen_in_sub_second_buckets(
        metrics: Metrics, registry: CollectorRegistry) -> None:
    """The review measured 0.23 s from webhook to applied; with 1 s as the smallest
    bucket and the commit's whole-second time as the start it read as ~0.78 s."""
    now = 1_700_000_000.0
    metrics.observe_applied(seen_at=now - 0.23, committed_at=now - 20.6, now=now)
    assert value(registry, "conductor_push_to_applied_seconds_count", **OBJ) == 1
    assert value(registry, "conductor_push_to_applied_seconds_sum", **OBJ) == \
        pytest.approx(0.23)
    assert value(registry, "conductor_push_to_applied_seconds_bucket", **OBJ, le="0.1") == 0
    assert value(registry, "conductor_push_to_applied_seconds_bucket", **OBJ, le="0.25") == 1
    # Commit-time lag is its own metric.
    assert value(registry, "conductor_commit_to_applied_seconds_sum", **OBJ) == \
        pytest.approx(20.6)
    assert value(registry, "conductor_commit_to_applied_seconds_bucket", **OBJ,
                 le="10.0") == 0
    assert value(registry, "conductor_commit_to_applied_seconds_bucket", **OBJ,
                 le="30.0") == 1


def test_passes_accumulate_by_operation_and_result(metrics: Metrics,
                                                   registry: CollectorRegistry) -> None:
    metrics.observe_pass("reconcile", 0.1, True, {"applied": 2}, "sha1")
    metrics.observe_pass("reconcile", 0.2, True, {"applied": 1}, "sha2",
                         drifted_services=["redis", "frontend"])
    metrics.observe_pass("reconcile", 0.2, False, {"failed": 1}, "sha3",
                         drifted_services=["redis"])
    metrics.observe_pass("up", 4.0, True, {"applied": 7}, "sha3")
    reconcile = {**OBJ, "operation": "reconcile"}
    assert value(registry, "conductor_reconcile_total", **reconcile, result="success") == 2
    assert value(registry, "conductor_reconcile_total", **reconcile, result="failure") == 1
    assert value(registry, "conductor_reconcile_total", **OBJ, operation="up",
                 result="success") == 1
    assert value(registry, "conductor_reconcile_duration_seconds_count", **reconcile) == 3
    assert value(registry, "conductor_reconcile_duration_seconds_bucket", **OBJ,
                 operation="up", le="2.5") == 0
    assert value(registry, "conductor_objects_total", **OBJ, outcome="applied") == 10
    assert value(registry, "conductor_objects_total", **OBJ, outcome="failed") == 1
    assert value(registry, "conductor_drift_corrections_total", **OBJ, service="redis") == 2
    assert value(registry, "conductor_drift_corrections_total", **OBJ, service="frontend") == 1
    # A failed pass applied nothing new: the revision stays at the last success.
    assert value(registry, "conductor_last_applied_revision_info", **OBJ, revision="sha2") \
        is None
    assert value(registry, "conductor_last_applied_revision_info", **OBJ, revision="sha3") == 1


def test_a_failed_pass_moves_neither_last_success_nor_revision(
        metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.observe_pass("reconcile", 1.0, False, {"failed": 4}, "sha1")
    assert value(registry, "conductor_reconcile_total", **OBJ, operation="reconcile",
                 result="failure") == 1
    assert value(registry, "conductor_last_successful_reconcile_timestamp_seconds", **OBJ) \
        is None
    assert value(registry, "conductor_last_applied_revision_info", **OBJ, revision="sha1") \
        is None
    assert value(registry, "conductor_push_to_applied_seconds_count", **OBJ) is None


def test_commit_lag_only_when_the_commit_time_is_known(
        metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.observe_pass("reconcile", 0.1, True, {}, "generation/1")
    assert value(registry, "conductor_push_to_applied_seconds_count", **OBJ) is None
    metrics.observe_applied(seen_at=time.time() - 1, committed_at=None)
    assert value(registry, "conductor_push_to_applied_seconds_count", **OBJ) == 1
    assert value(registry, "conductor_commit_to_applied_seconds_count", **OBJ) is None
    # A commit time in the future (clock skew) counts as zero, never negative.
    metrics.observe_applied(seen_at=time.time(), committed_at=time.time() + 100)
    assert value(registry, "conductor_commit_to_applied_seconds_count", **OBJ) == 1
    assert value(registry, "conductor_commit_to_applied_seconds_sum", **OBJ) == 0


def test_conditions_are_one_hot(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.set_conditions({"Ready": "True", "Stalled": "False"})
    assert value(registry, "conductor_reconcile_condition", **OBJ, type="Ready",
                 status="True") == 1
    assert value(registry, "conductor_reconcile_condition", **OBJ, type="Ready",
                 status="False") == 0
    assert value(registry, "conductor_reconcile_condition", **OBJ, type="Ready",
                 status="Unknown") == 0
    assert value(registry, "conductor_reconcile_condition", **OBJ, type="Stalled",
                 status="False") == 1
    metrics.set_conditions({"Ready": "False"})
    assert value(registry, "conductor_reconcile_condition", **OBJ, type="Ready",
                 status="True") == 0
    assert value(registry, "conductor_reconcile_condition", **OBJ, type="Ready",
                 status="False") == 1


def test_service_health_is_one_hot(metrics: Metrics, registry: CollectorRegistry) -> None:
    live(metrics, services={"redis": "unhealthy", "frontend": "healthy"})
    for status in HEALTH_STATES:
        assert value(registry, "conductor_service_health", **OBJ, service="redis",
                     status=status) == (1 if status == "unhealthy" else 0)
        assert value(registry, "conductor_service_health", **OBJ, service="frontend",
                     status=status) == (1 if status == "healthy" else 0)
    live(metrics, services={"redis": "healthy"})
    assert value(registry, "conductor_service_health", **OBJ, service="redis",
                 status="unhealthy") == 0
    assert value(registry, "conductor_service_health", **OBJ, service="redis",
                 status="healthy") == 1
    total = sum(value(registry, "conductor_service_health", **OBJ, service="redis",
                      status=s) or 0 for s in HEALTH_STATES)
    assert total == 1


def test_app_info_keeps_only_the_current_series(metrics: Metrics,
                                                registry: CollectorRegistry) -> None:
    live(metrics, services={"web": "progressing"}, sync="Synced", revision="sha1")
    live(metrics, services={"web": "healthy"}, sync="Synced", revision="sha2")
    assert value(registry, "conductor_app_info", **OBJ, health_status="healthy",
                 sync_status="Synced", revision="sha2") == 1
    assert value(registry, "conductor_app_info", **OBJ, health_status="progressing",
                 sync_status="Synced", revision="sha1") is None
    text = generate_latest(registry).decode()
    assert text.count("\nconductor_app_info{") == 1


def test_kube_requests_and_retries_by_verb_and_code(metrics: Metrics,
                                                    registry: CollectorRegistry) -> None:
    metrics.observe_request("PATCH", 200, 0.02)
    metrics.observe_request("PATCH", 200, 0.2)
    metrics.observe_request("GET", 0, 3.0)  # no answer
    metrics.count_retry("PATCH", 503)
    metrics.count_retry("PATCH", 503)
    metrics.count_retry("PATCH", 429)
    assert value(registry, "conductor_kube_request_duration_seconds_count", verb="PATCH",
                 code="200") == 2
    assert value(registry, "conductor_kube_request_duration_seconds_bucket", verb="PATCH",
                 code="200", le="0.025") == 1
    assert value(registry, "conductor_kube_request_duration_seconds_sum", verb="PATCH",
                 code="200") == pytest.approx(0.22)
    assert value(registry, "conductor_kube_request_duration_seconds_count", verb="GET",
                 code="0") == 1
    assert value(registry, "conductor_kube_request_retries_total", verb="PATCH",
                 code="503") == 2
    assert value(registry, "conductor_kube_request_retries_total", verb="PATCH",
                 code="429") == 1


def test_leader_gauge(metrics: Metrics, registry: CollectorRegistry) -> None:
    assert value(registry, "conductor_leader", **OBJ) is None
    live(metrics, leader=True)
    assert value(registry, "conductor_leader", **OBJ) == 1
    live(metrics, leader=False)
    assert value(registry, "conductor_leader", **OBJ) == 0
    live(metrics, leader=None)  # no leader election: no series
    assert value(registry, "conductor_leader", **OBJ) is None


def test_one_registry_per_instance() -> None:
    """Two controllers in one process (tests) do not collide: nothing is global."""
    first, second = CollectorRegistry(), CollectorRegistry()
    live(Metrics(first, "a", "ns"), leader=True)
    live(Metrics(second, "b", "ns"), leader=False)
    assert first.get_sample_value("conductor_leader", {**OBJ, "name": "a",
                                                       "namespace": "ns"}) == 1
    assert first.get_sample_value("conductor_leader", {**OBJ, "name": "b",
                                                       "namespace": "ns"}) is None
    assert second.get_sample_value("conductor_leader", {**OBJ, "name": "b",
                                                        "namespace": "ns"}) == 0
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Metrics(first, "c", "ns")


def test_every_metric_has_help_and_the_conductor_prefix(metrics: Metrics,
                                                        registry: CollectorRegistry) -> None:
    metrics.observe_pass("reconcile", 0.1, True, {"applied": 1}, "sha", ["redis"])
    metrics.observe_applied(time.time(), time.time())
    metrics.set_conditions({"Ready": "True"})
    live(metrics, services={"redis": "healthy"}, sync="Synced", revision="sha", leader=True)
    metrics.observe_request("GET", 200, 0.01)
    metrics.count_retry("GET", 503)
    families = list(registry.collect())
    assert len(families) == METRIC_COUNT
    for family in families:
        assert family.name.startswith("conductor_"), family.name
        assert family.documentation, family.name


def documented(collector: Any) -> str:
    """A collector's line in README.md's Metrics section: the name to query (histograms
    add `_bucket`, `_sum`, `_count`), type, labels, help text. Regenerate the list with
    `python -c 'from tests.unit.test_metrics import *; print(*map(documented, collectors()),
    sep="\\n")'`."""
    if isinstance(collector, GaugeSpec):  # a scrape-time gauge (metrics.LiveGauges)
        return documented_gauge(collector.name, collector.labelnames,
                                collector.documentation)
    kind: str = collector._type
    name: str = collector._name
    labels = list(collector._labelnames)
    if kind == "counter":
        name += "_total"
    elif kind == "info":
        name += "_info"
        labels.append("revision")
    shown = "labels " + ", ".join(f"`{label}`" for label in labels) if labels else "no labels"
    return f"- `{name}` ({kind}; {shown}): {collector._documentation}"


def documented_gauge(name: str, labels: Sequence[str], documentation: str) -> str:
    shown = "labels " + ", ".join(f"`{label}`" for label in labels) if labels else "no labels"
    return f"- `{name}` (gauge; {shown}): {documentation}"


def collectors() -> list[Any]:
    metrics = Metrics(CollectorRegistry(), "default", "apps")
    return [c for c in vars(metrics).values()
            if hasattr(c, "_documentation") or isinstance(c, GaugeSpec)]


def test_the_readme_documents_every_metric_exactly() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    listed = [line for line in section.splitlines() if line.startswith("- `conductor_")]
    expected = [documented(c) for c in collectors()]
    assert len(expected) == METRIC_COUNT
    assert listed == expected


def test_scrape_time_gauges_are_fresh_on_every_collect(metrics: Metrics,
                                                       registry: CollectorRegistry) -> None:
    """The gauges that are state are read at collect time by a registered collector: any
    scrape path (generate_latest here, no /metrics resource, no refresh call) sees now."""
    state = {"services": {"redis": "progressing"}, "leader": False, "events_stored": 3}
    metrics.read_live(lambda: LiveState(**state))
    text = generate_latest(registry).decode()
    assert 'status="progressing"} 1.0' in text and "conductor_event_store_events 3.0" in text
    state.update(services={"redis": "healthy"}, leader=True, events_stored=4)
    assert value(registry, "conductor_service_health", **OBJ, service="redis",
                 status="healthy") == 1
    assert value(registry, "conductor_app_info", **OBJ, health_status="healthy",
                 sync_status="Unknown", revision="") == 1
    assert value(registry, "conductor_leader", **OBJ) == 1
    assert value(registry, "conductor_event_store_events") == 4


def test_a_failing_reader_costs_its_gauges_not_the_scrape(metrics: Metrics,
                                                          registry: CollectorRegistry) -> None:
    def broken() -> LiveState:
        raise RuntimeError("the health monitor is gone")

    metrics.observe_request("GET", 200, 0.01)
    metrics.read_live(broken)
    text = generate_latest(registry).decode()
    assert "conductor_kube_request_duration_seconds_count" in text
    assert "# TYPE conductor_service_health gauge" in text
    assert value(registry, "conductor_event_store_events") is None


def test_app_health_is_the_worst_service() -> None:
    assert LiveState().health == "unknown"
    assert LiveState(services={"a": "healthy", "b": "suspended"}).health == "suspended"
    assert LiveState(services={"a": "progressing", "b": "unhealthy"}).health == "unhealthy"
    assert LiveState(services={"a": "healthy", "b": "down"}).health == "healthy"


# -- every instance its series (issue 13) -------------------------------------------------


def test_every_instance_has_its_scrape_time_series(metrics: Metrics,
                                                   registry: CollectorRegistry) -> None:
    """Two instances named `web` in two namespaces: two sets of series, beside the own
    instance's; an instance no longer in the state has none at the next scrape."""
    from controller.adapters.metrics import InstanceState

    state = {("team-a", "web"): InstanceState({"redis": "unhealthy"}, "OutOfSync", ""),
             ("team-b", "web"): InstanceState({"redis": "healthy"}, "Synced", "g/2")}
    live(metrics, services={"redis": "healthy"}, sync="Synced", revision="g/9",
         instances=state)
    a = {"kind": KIND, "name": "web", "namespace": "team-a"}
    b = {**a, "namespace": "team-b"}
    assert value(registry, "conductor_service_health", **a, service="redis",
                 status="unhealthy") == 1
    assert value(registry, "conductor_service_health", **b, service="redis",
                 status="healthy") == 1
    assert value(registry, "conductor_app_info", **a, health_status="unhealthy",
                 sync_status="OutOfSync", revision="") == 1
    assert value(registry, "conductor_app_info", **b, health_status="healthy",
                 sync_status="Synced", revision="g/2") == 1
    assert value(registry, "conductor_app_info", **OBJ, health_status="healthy",
                 sync_status="Synced", revision="g/9") == 1
    live(metrics, services={"redis": "healthy"}, instances={("team-b", "web"):
                                                            state[("team-b", "web")]})
    assert value(registry, "conductor_service_health", **a, service="redis",
                 status="unhealthy") is None
    assert value(registry, "conductor_service_health", **b, service="redis",
                 status="healthy") == 1


def test_a_forgotten_instance_loses_its_series(metrics: Metrics,
                                               registry: CollectorRegistry) -> None:
    a, b = metrics.of("web", "team-a"), metrics.of("web", "team-b")
    for m in (a, b, metrics):
        m.observe_pass("reconcile", 0.2, True, OUTCOMES, "g/1", drifted_services=["redis"])
        m.set_conditions({"Ready": "True"})
    a.observe_applied(time.time(), None)
    gone = {"kind": KIND, "name": "web", "namespace": "team-a"}
    kept = {**gone, "namespace": "team-b"}
    assert metrics.forget("web", "team-a") > 10
    text = generate_latest(registry).decode()
    assert 'namespace="team-a"' not in text
    assert value(registry, "conductor_reconcile_total", **kept, operation="reconcile",
                 result="success") == 1
    assert value(registry, "conductor_reconcile_condition", **kept, type="Ready",
                 status="True") == 1
    assert value(registry, "conductor_reconcile_total", **OBJ, operation="reconcile",
                 result="success") == 1
    assert metrics.forget("web", "team-a") == 0
