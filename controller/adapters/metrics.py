"""Prometheus metrics: one registry per process, passed in, never a global.

Names and labels are chosen so that dashboards and alerts written for Flux and Argo CD carry
over with a relabel at most: the pass metrics carry `kind`, `name`, `namespace` like Flux's
`gotk_reconcile_*` (kind is always DeploymentParameters), and `conductor_app_info` carries
`health_status` / `sync_status` like Argo CD's `argocd_app_info`.

Values that are state, not events (service health, the app's health and sync, leadership,
the event store's size) are computed at scrape time: `LiveGauges` is a collector
registered in the registry whose `collect()` reads the controller's `LiveState` afresh, so
every path that collects the registry (the /metrics resource, a test, any exporter) sees
current values and nobody has to remember to refresh them first.

Every reconciled instance has its own series, labelled with its object's `name` and
`namespace` (the scrape-time service health and app info as much as the pass counters):
bounded by the number of instances, and gone when an instance is forgotten (the gauges
read only the instances there are; `Metrics.forget` drops its counters and histograms).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controller.model.instance import KIND  # the object a metric's labels name

log = logging.getLogger(__name__)

HEALTH_STATES = ("healthy", "progressing", "unhealthy", "unknown", "down", "suspended")
PASS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# A webhook-driven push applies in a fraction of a second; a poll-driven one within a poll
# interval (60 s by default); a repository outage may hold a revision back for long.
SEEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
COMMIT_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 21600)
# The app's health is its worst service's, in this order ("healthy" when none is worse).
_WORST_FIRST = ("unhealthy", "progressing", "unknown", "suspended")


def _worst(services: Mapping[str, str]) -> str:
    """An app's health: its worst service's; "unknown" with no service."""
    if not services:
        return "unknown"
    states = set(services.values())
    return next((s for s in _WORST_FIRST if s in states), "healthy")


@dataclass(frozen=True)
class InstanceState:
    """Another reconciled instance's scrape-time state (the own one's is LiveState's)."""

    services: Mapping[str, str] = field(default_factory=dict)  # service -> health status
    sync: str = "Unknown"
    revision: str = ""

    @property
    def health(self) -> str:
        return _worst(self.services)


@dataclass(frozen=True)
class LiveState:
    """What the scrape-time gauges show, read from memory at every scrape."""

    services: Mapping[str, str] = field(default_factory=dict)  # service -> health status
    sync: str = "Unknown"  # Synced | OutOfSync | Unknown (no pass yet)
    revision: str = ""
    # Every other reconciled instance, by (namespace, name): its own series.
    instances: Mapping[tuple[str, str], InstanceState] = field(default_factory=dict)
    leader: bool | None = None  # None: no leader election, so no conductor_leader series
    events_stored: int | None = 0  # None: the store could not count (no sample)
    events_bytes: int = 0
    events_degraded: bool = False

    @property
    def health(self) -> str:
        """The app's health: its worst service's; "unknown" with no service."""
        return _worst(self.services)


@dataclass(frozen=True)
class GaugeSpec:
    """A gauge `LiveGauges` yields: its name, help and label names (what a Gauge would
    declare; the README's metric list is checked against these too)."""

    name: str
    documentation: str
    labelnames: tuple[str, ...] = ()

    def family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.documentation,
                                 labels=self.labelnames if self.labelnames else None)


class LiveGauges(Collector):
    """The scrape-time gauges: `collect()` reads a fresh `LiveState` from `read`.

    Until a reader is set (the controller sets it once it is built) the labelled gauges
    have no series and the others their defaults. A reader that fails costs its gauges one
    scrape (logged), never the scrape itself."""

    def __init__(self, labels: Mapping[str, str], specs: Iterable[GaugeSpec]) -> None:
        self.labels = dict(labels)
        self.specs = {spec.name: spec for spec in specs}
        self.read: Callable[[], LiveState] | None = None

    def describe(self) -> Iterator[Metric]:
        # Names only: registering must not call the reader (the controller is not built).
        for spec in self.specs.values():
            yield spec.family()

    def collect(self) -> Iterator[Metric]:
        state = LiveState()
        if self.read is not None:
            try:
                state = self.read()
            except Exception:
                log.exception("cannot read the scrape-time gauges")
                yield from self.describe()
                return
        obj = list(self.labels.values())
        families = {name: spec.family() for name, spec in self.specs.items()}
        health = families["conductor_service_health"]
        for service, status in sorted(state.services.items()):
            for value in HEALTH_STATES:
                health.add_metric([*obj, service, value], 1 if value == status else 0)
        if self.read is not None:  # one series, the current one (as argocd_app_info)
            families["conductor_app_info"].add_metric(
                [*obj, state.health, state.sync, state.revision], 1)
        for (namespace, name), other in sorted(state.instances.items()):
            labels = [KIND, name, namespace]
            for service, status in sorted(other.services.items()):
                for value in HEALTH_STATES:
                    health.add_metric([*labels, service, value], 1 if value == status else 0)
            families["conductor_app_info"].add_metric(
                [*labels, other.health, other.sync, other.revision], 1)
        if state.events_stored is not None:
            families["conductor_event_store_events"].add_metric([], state.events_stored)
        families["conductor_event_store_bytes"].add_metric([], state.events_bytes)
        families["conductor_event_store_degraded"].add_metric(
            [], 1 if state.events_degraded else 0)
        if state.leader is not None:
            families["conductor_leader"].add_metric(obj, 1 if state.leader else 0)
        yield from families.values()


class Metrics:
    """Every collector the controller exports, registered in `registry`."""

    def __init__(self, registry: CollectorRegistry, name: str, namespace: str) -> None:
        self.registry = registry
        self.name = name
        self.namespace = namespace
        obj = ["kind", "name", "namespace"]
        self.reconcile_duration = Histogram(
            "conductor_reconcile_duration_seconds",
            "Duration of reconcile passes and up/update/down operations "
            "(as gotk_reconcile_duration_seconds).", [*obj, "operation"],
            buckets=PASS_BUCKETS, registry=registry)
        self.reconcile_total = Counter(
            "conductor_reconcile_total", "Passes and operations by result (success|failure).",
            [*obj, "operation", "result"], registry=registry)
        self.reconcile_condition = Gauge(
            "conductor_reconcile_condition",
            "Current status conditions, 1 for the status that holds "
            "(as gotk_reconcile_condition).", [*obj, "type", "status"], registry=registry)
        self.last_success = Gauge(
            "conductor_last_successful_reconcile_timestamp_seconds",
            "Unix time of the last successful pass.", obj, registry=registry)
        self.objects = Counter(
            "conductor_objects_total",
            "Objects handled by passes, by outcome (applied|unchanged|deleted|kept|failed).",
            [*obj, "outcome"], registry=registry)
        self.drift = Counter(
            "conductor_drift_corrections_total",
            "Objects re-applied because someone changed a field we set.",
            [*obj, "service"], registry=registry)
        self.kube_latency = Histogram(
            "conductor_kube_request_duration_seconds",
            "Kubernetes API request latency by verb and HTTP code (0 = no answer).",
            ["verb", "code"], buckets=REQUEST_BUCKETS, registry=registry)
        self.kube_retries = Counter(
            "conductor_kube_request_retries_total",
            "Kubernetes API requests retried after a transient failure, by verb and code.",
            ["verb", "code"], registry=registry)
        self.git_fetch = Histogram(
            "conductor_git_fetch_duration_seconds", "Git fetch duration.", obj,
            buckets=REQUEST_BUCKETS, registry=registry)
        self.git_failures = Counter(
            "conductor_git_fetch_failures_total",
            "Git fetches and polls that failed to reach the ref (network, credentials, a "
            "missing ref); not invalid content.", obj, registry=registry)
        self.revision = Info(
            "conductor_last_applied_revision", "The last applied revision (Git SHA or "
            "resource generation).", obj, registry=registry)
        self.push_to_applied = Histogram(
            "conductor_push_to_applied_seconds",
            "From the first time the controller saw a Git revision (webhook, poll or "
            "fetch) to the end of the pass that applied it; once per revision.", obj,
            buckets=SEEN_BUCKETS, registry=registry)
        self.commit_to_applied = Histogram(
            "conductor_commit_to_applied_seconds",
            "From a Git commit's committer time (whole seconds, the committer's clock) to "
            "the end of the pass that applied it; once per revision.", obj,
            buckets=COMMIT_BUCKETS, registry=registry)
        # Scrape-time gauges (LiveGauges, registered below): specs, not Gauge objects.
        self.service_health = GaugeSpec(
            "conductor_service_health",
            "Per-service health: 1 for the current status, 0 for the others.",
            (*obj, "service", "status"))
        self.app_info = GaugeSpec(
            "conductor_app_info", "The app instance (as argocd_app_info): health and sync.",
            (*obj, "health_status", "sync_status", "revision"))
        self.events_stored = GaugeSpec(
            "conductor_event_store_events", "Events in the event store.")
        self.events_bytes = GaugeSpec(
            "conductor_event_store_bytes", "Size of the event store on disk.")
        self.events_degraded = GaugeSpec(
            "conductor_event_store_degraded",
            "1 while the configured event store file is unusable and events go to a "
            "temporary file until a restart (/api/status says why).")
        self.api_requests = Counter(
            "conductor_api_requests_total",
            "REST API requests by route, method and HTTP status code.",
            ["route", "method", "code"], registry=registry)
        self.api_latency = Histogram(
            "conductor_api_request_duration_seconds", "REST API latency by route and method.",
            ["route", "method"], buckets=REQUEST_BUCKETS, registry=registry)
        self.leader = GaugeSpec(
            "conductor_leader", "1 while this replica holds the leader lease.", tuple(obj))
        self.live = LiveGauges(self.labels, [self.service_health, self.app_info,
                                             self.events_stored, self.events_bytes,
                                             self.events_degraded, self.leader])
        registry.register(self.live)

    def read_live(self, read: Callable[[], LiveState]) -> None:
        """Where the scrape-time gauges come from (called once, when the state exists)."""
        self.live.read = read

    def of(self, name: str, namespace: str) -> Metrics:
        """The same collectors, labelled for another instance (its passes and conditions;
        its scrape-time gauges come from `LiveState.instances`)."""
        other = copy.copy(self)
        other.name, other.namespace = name, namespace
        return other

    def forget(self, name: str, namespace: str) -> int:
        """Drop every series of the instance `namespace/name` (it is no longer
        reconciled here): the number of series removed."""
        removed = 0
        for collector in self._per_instance():
            # The children by label values; every per-instance collector's first three
            # labels are kind, name, namespace.
            children: Mapping[tuple[str, ...], Any] = getattr(collector, "_metrics", {})
            for values in list(children):
                if tuple(values[:3]) == (KIND, name, namespace):
                    with suppress(KeyError):  # removed meanwhile
                        collector.remove(*values)
                        removed += 1
        return removed

    def _per_instance(self) -> list[Counter | Gauge | Histogram | Info]:
        return [self.reconcile_duration, self.reconcile_total, self.reconcile_condition,
                self.last_success, self.objects, self.drift, self.git_fetch,
                self.git_failures, self.revision, self.push_to_applied,
                self.commit_to_applied]

    @property
    def labels(self) -> dict[str, str]:
        """kind, name, namespace of the DeploymentParameters object these metrics are of."""
        return {"kind": KIND, "name": self.name, "namespace": self.namespace}

    def observe_pass(self, operation: str, seconds: float, ok: bool,
                     outcomes: Mapping[str, int], revision: str,
                     drifted_services: Iterable[str] = ()) -> None:
        o = self.labels
        self.reconcile_duration.labels(**o, operation=operation).observe(seconds)
        self.reconcile_total.labels(**o, operation=operation,
                                    result="success" if ok else "failure").inc()
        for outcome, count in outcomes.items():
            if count:
                self.objects.labels(**o, outcome=outcome).inc(count)
        for service in drifted_services:
            self.drift.labels(**o, service=service).inc()
        if ok:
            self.last_success.labels(**o).set(time.time())
            if revision:
                self.revision.labels(**o).info({"revision": revision})

    def observe_applied(self, seen_at: float, committed_at: float | None,
                        now: float | None = None) -> None:
        """A new Git revision was applied (call once per revision): latency from when it
        was first seen, and from its commit time when known. Unix times; a time in the
        future (clock skew) counts as zero, never negative."""
        now = time.time() if now is None else now
        self.push_to_applied.labels(**self.labels).observe(max(0.0, now - seen_at))
        if committed_at is not None:
            self.commit_to_applied.labels(**self.labels).observe(max(0.0, now - committed_at))

    def set_conditions(self, conditions: Mapping[str, str]) -> None:
        for kind, status in conditions.items():
            for value in ("True", "False", "Unknown"):
                self.reconcile_condition.labels(**self.labels, type=kind, status=value).set(
                    1 if value == status else 0)

    def observe_request(self, verb: str, code: int, seconds: float) -> None:
        self.kube_latency.labels(verb=verb, code=str(code)).observe(seconds)

    def count_retry(self, verb: str, code: int) -> None:
        self.kube_retries.labels(verb=verb, code=str(code)).inc()


def register_runtime(registry: CollectorRegistry) -> None:
    """The client library's standard process_*, python_gc_* and python_info series on
    `registry` (a process's, not the library's global one): what dashboards for any Python
    service expect beside conductor's own."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
