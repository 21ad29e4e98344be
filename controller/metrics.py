"""Prometheus metrics: one registry per process, passed in, never a global.

Names and labels are chosen so that dashboards and alerts written for Flux and Argo CD carry
over with a relabel at most: the pass metrics carry `kind`, `name`, `namespace` like Flux's
`gotk_reconcile_*` (kind is always DeploymentParameters), and `conductor_app_info` carries
`health_status` / `sync_status` like Argo CD's `argocd_app_info`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

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

KIND = "DeploymentParameters"
HEALTH_STATES = ("healthy", "progressing", "unhealthy", "unknown", "down", "suspended")
PASS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# A webhook-driven push applies in a fraction of a second; a poll-driven one within a poll
# interval (60 s by default); a repository outage may hold a revision back for long.
SEEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
COMMIT_BUCKETS = (1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 21600)


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
        self.service_health = Gauge(
            "conductor_service_health",
            "Per-service health: 1 for the current status, 0 for the others.",
            [*obj, "service", "status"], registry=registry)
        self.app_info = Gauge(
            "conductor_app_info", "The app instance (as argocd_app_info): health and sync.",
            [*obj, "health_status", "sync_status", "revision"], registry=registry)
        self.events_stored = Gauge(
            "conductor_event_store_events", "Events in the event store.", registry=registry)
        self.events_bytes = Gauge(
            "conductor_event_store_bytes", "Size of the event store on disk.",
            registry=registry)
        self.events_degraded = Gauge(
            "conductor_event_store_degraded",
            "1 while the configured event store file is unusable and events go to a "
            "temporary file until a restart (/api/status says why).", registry=registry)
        self.api_requests = Counter(
            "conductor_api_requests_total",
            "REST API requests by route, method and HTTP status code.",
            ["route", "method", "code"], registry=registry)
        self.api_latency = Histogram(
            "conductor_api_request_duration_seconds", "REST API latency by route and method.",
            ["route", "method"], buckets=REQUEST_BUCKETS, registry=registry)
        self.leader = Gauge(
            "conductor_leader", "1 while this replica holds the leader lease.", obj,
            registry=registry)

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

    def set_service_health(self, states: Mapping[str, str]) -> None:
        for service, state in states.items():
            for value in HEALTH_STATES:
                self.service_health.labels(**self.labels, service=service, status=value).set(
                    1 if value == state else 0)

    def set_app(self, health: str, sync: str, revision: str) -> None:
        self.app_info.clear()
        self.app_info.labels(**self.labels, health_status=health, sync_status=sync,
                             revision=revision).set(1)

    def observe_request(self, verb: str, code: int, seconds: float) -> None:
        self.kube_latency.labels(verb=verb, code=str(code)).observe(seconds)

    def count_retry(self, verb: str, code: int) -> None:
        self.kube_retries.labels(verb=verb, code=str(code)).inc()

    def set_leader(self, leading: bool) -> None:
        self.leader.labels(**self.labels).set(1 if leading else 0)


def register_runtime(registry: CollectorRegistry) -> None:
    """The client library's standard process_*, python_gc_* and python_info series on
    `registry` (a process's, not the library's global one): what dashboards for any Python
    service expect beside conductor's own."""
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
