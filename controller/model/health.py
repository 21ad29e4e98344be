"""Is an object healthy, and if not, why: pure rules per kind, and a service's worst-of.

"Applied" is not "working": a Deployment whose pods cannot pull their image is applied
and broken. These rules read only an object's own status (and, for workloads, their pods'
status) the way kstatus does — observedGeneration, replica counts, conditions — so they can
be tested on recorded objects and run on watched state without API calls. Waiting for a
rollout's progress deadline (10 minutes by default) to learn that an image does not exist
is too slow, so a pod waiting in ImagePullBackOff, CrashLoopBackOff or
CreateContainerConfigError, a container that crashed again after a restart (before the
kubelet's back-off says CrashLoopBackOff), or a pod unschedulable for longer than a
threshold, makes its workload `unhealthy` at once, with the pod, container, reason, message
and a short hint.

`suspended` is an object that is as someone asked and will not progress by itself: a
paused Deployment, a suspended Job or CronJob. It is not a failure: a service whose worst
object is suspended is `suspended`, not unhealthy, and an unhealthy object still outranks it.
The verdicts agree with Argo CD's gitops-engine on its own health test objects (see
tests/unit/test_health_parity.py), except where the peer's answer serves its sync hooks
rather than the question "is this working".

Pure: no I/O and no clock; the caller passes `now`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from controller.model.objects import Body
from controller.model.times import parse_rfc3339, rfc3339

Status = Literal["healthy", "suspended", "progressing", "unhealthy", "unknown"]
ServiceStatus = Literal["healthy", "suspended", "progressing", "unhealthy", "unknown", "down"]

HEALTHY: Final = "healthy"
SUSPENDED: Final = "suspended"
PROGRESSING: Final = "progressing"
UNHEALTHY: Final = "unhealthy"
UNKNOWN: Final = "unknown"
DOWN: Final = "down"

# Worst-of order for a service: one broken object makes it unhealthy; progress (a
# rollout) outranks not knowing yet (a watch still syncing); a paused object only says the
# rest is as good as it gets while it stays paused.
SEVERITY: Final[Mapping[str, int]] = {HEALTHY: 0, SUSPENDED: 1, UNKNOWN: 2, PROGRESSING: 3,
                                      UNHEALTHY: 4}

DEFAULT_PENDING_THRESHOLD = 60.0  # seconds a pod may stay unschedulable before it is a failure

IMAGE_HINT: Final = ("image not found or registry authentication failed: check image "
                     "name/tag and imagePullSecrets")
CONFIG_HINT: Final = ("container configuration error: check the ConfigMaps, Secrets and "
                      "environment it references")
# Container waiting reasons that will not resolve by waiting (kubelet's names).
IMAGE_REASONS: Final = frozenset({"ImagePullBackOff", "ErrImagePull", "InvalidImageName",
                                  "ErrImageNeverPull", "RegistryUnavailable",
                                  "ImageInspectError"})
CRASH_REASON: Final = "CrashLoopBackOff"
CONFIG_REASON: Final = "CreateContainerConfigError"
FAIL_FAST_REASONS: Final = IMAGE_REASONS | {CRASH_REASON, CONFIG_REASON,
                                            "CreateContainerError", "RunContainerError"}

# kubelet: `secret "db" not found`, `configmap "app" not found`,
# `couldn't find key password in Secret ns/db`.
_MISSING_OBJECT = re.compile(r'\b(secret|configmap)s? "([^"]+)" not found', re.IGNORECASE)
_MISSING_KEY = re.compile(r"couldn't find key (\S+) in (Secret|ConfigMap) (\S+)")
# API server: `... is forbidden: User "u" cannot patch resource "deployments" in API group
# "apps" in the namespace "ns"`.
_FORBIDDEN = re.compile(r'cannot (\S+) resource "([^"]+)" in API group "([^"]*)"'
                        r'(?: in the namespace "([^"]+)")?')

_WORKLOAD_GROUP = "apps"

# autoscaling/v1 has no status.conditions: the controller writes v2's into this annotation.
HPA_CONDITIONS: Final = "autoscaling.alpha.kubernetes.io/conditions"
# AbleToScale reasons that say the target itself cannot be read or scaled.
HPA_TARGET_FAILURES: Final = frozenset({"FailedGetScale", "FailedUpdateScale"})
HPA_METRICS_HINT: Final = ("the autoscaler cannot read its metrics: check the metrics API "
                           "(metrics-server, or the adapter for custom and external metrics) "
                           "and that the target's containers request the resource it scales on")
HPA_SELECTOR_HINT: Final = ("the autoscaler cannot use its target's selector: check the "
                            "target's spec.selector")


@dataclass(frozen=True)
class ObjectHealth:
    """The health of one object: a status, a machine reason, a human message and a hint."""

    status: Status
    reason: str
    message: str
    hint: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return self.status == HEALTHY

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "reason": self.reason,
                               "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        if self.details:
            out["details"] = self.details
        return out


@dataclass(frozen=True)
class ServiceHealth:
    """A service's status (the worst of its objects'), with the objects that are not healthy.

    `failing` pairs a resource key (`namespace/Kind/name`) with that object's health, worst
    first; `reason`, `message` and `hint` are those of the first of them.
    """

    name: str
    namespace: str
    status: ServiceStatus
    last_checked: str  # RFC 3339
    reason: str = ""
    message: str = ""
    hint: str = ""
    failing: tuple[tuple[str, ObjectHealth], ...] = ()

    @property
    def healthy(self) -> bool:
        return self.status == HEALTHY

    @property
    def settled(self) -> bool:
        """Nothing more will happen by waiting: healthy, or suspended on purpose."""
        return self.status in (HEALTHY, SUSPENDED)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "namespace": self.namespace,
                               "status": self.status, "lastChecked": self.last_checked}
        if self.reason:
            out["reason"] = self.reason
        if self.message:
            out["message"] = self.message
        if self.hint:
            out["hint"] = self.hint
        if self.failing:
            out["objects"] = [{"resource": key, **h.to_dict()} for key, h in self.failing]
        return out


def aggregate(name: str, namespace: str, objects: Sequence[tuple[str, ObjectHealth]], *,
              deployed: bool, last_checked: str) -> ServiceHealth:
    """A service's health: `down` when not deployed, else the worst of its objects'."""
    if not deployed:
        return ServiceHealth(name, namespace, DOWN, last_checked, "NotDeployed",
                             "the service is not deployed")
    failing = sorted(((k, h) for k, h in objects if not h.healthy),
                     key=lambda kh: (-SEVERITY[kh[1].status], kh[0]))
    if not failing:
        return ServiceHealth(name, namespace, HEALTHY, last_checked, "Healthy",
                             f"{len(objects)} object(s) healthy")
    key, first = failing[0]
    hint = next((h.hint for _, h in failing if h.hint and h.status == first.status), "")
    return ServiceHealth(name, namespace, first.status, last_checked, first.reason,
                         f"{key}: {first.message}", hint, tuple(failing))


def rbac_problem(verb: str, resource: str, message: str) -> ObjectHealth:
    """A 403 to one of the controller's own requests: what it may not do, and where."""
    return ObjectHealth(UNHEALTHY, "Forbidden", message,
                        f"RBAC: the controller may not {verb} {resource}: grant it in the "
                        "controller's Role or ClusterRole",
                        {"verb": verb, "resource": resource})


def parse_forbidden(message: str) -> tuple[str, str] | None:
    """(verb, resource[.group]) from an API server's Forbidden message, if it names them."""
    m = _FORBIDDEN.search(message)
    if not m:
        return None
    verb, resource, group = m.group(1), m.group(2), m.group(3)
    return verb, f"{resource}.{group}" if group else resource


def unschedulable_deadline(pod: Body, pending_threshold: float) -> datetime | None:
    """When an unschedulable pod turns from progressing to unhealthy (None if it is not)."""
    sched = _conditions(pod).get("PodScheduled") or {}
    if sched.get("status") != "False" or sched.get("reason") != "Unschedulable":
        return None
    created = parse_rfc3339(pod.get("metadata", {}).get("creationTimestamp"))
    return created + timedelta(seconds=pending_threshold) if created else None


# -- assessing one object --------------------------------------------------------------------


def assess(obj: Body, pods: Sequence[Body] = (), *, now: datetime | None = None,
           pending_threshold: float = DEFAULT_PENDING_THRESHOLD) -> ObjectHealth:
    """The health of `obj`; `pods` are a workload's current pods (for fail-fast reasons).

    `now` measures how long an unschedulable pod has been pending (from its
    creationTimestamp); without it, pods count as just created.
    """
    try:
        return _assess(obj, pods, now, pending_threshold)
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # malformed status
        return ObjectHealth(UNKNOWN, "UnreadableStatus", f"cannot read its status: {e!r}")


def _assess(obj: Body, pods: Sequence[Body], now: datetime | None,
            threshold: float) -> ObjectHealth:
    meta = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return ObjectHealth(PROGRESSING, "Terminating", "being deleted")
    kind = str(obj.get("kind", ""))
    group = str(obj.get("apiVersion", "")).rpartition("/")[0]
    if group == _WORKLOAD_GROUP and kind in _WORKLOADS:
        return _with_pending(_WORKLOADS[kind](obj, pods, now, threshold), pods, threshold)
    if group == "batch" and kind == "Job":
        return _with_pending(_job(obj, pods, now, threshold), pods, threshold)
    if group == "batch" and kind == "CronJob":
        return _cron_job(obj)
    if group == "autoscaling" and kind == "HorizontalPodAutoscaler":
        return _autoscaler(obj)
    if group == "apiregistration.k8s.io" and kind == "APIService":
        return _api_service(obj)
    if group == "apiextensions.k8s.io" and kind == "CustomResourceDefinition":
        return _definition(obj)
    if group == "" and kind == "Pod":
        return _pod(obj, now, threshold)
    if group == "" and kind == "PersistentVolumeClaim":
        return _claim(obj)
    if group == "" and kind == "Service":
        return _service(obj)
    if group in ("networking.k8s.io", "extensions") and kind == "Ingress":
        return _ingress(obj)
    return _generic(obj)


def _deployment(obj: Body, pods: Sequence[Body], now: datetime | None,
                threshold: float) -> ObjectHealth:
    waiting = _not_observed(obj)
    if waiting:
        return waiting
    conds = _conditions(obj)
    progress = conds.get("Progressing") or {}
    if progress.get("reason") == "ProgressDeadlineExceeded":
        return ObjectHealth(UNHEALTHY, "ProgressDeadlineExceeded",
                            str(progress.get("message") or "rollout timed out"),
                            "the rollout passed its progress deadline: check the new pods")
    failure = _replica_failure(conds)
    if failure:
        return failure
    problem = _pods_problem(pods, now, threshold)
    if problem:
        return problem
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if spec.get("paused"):
        # A paused rollout stays where it is until someone resumes it: not a failure,
        # and not progress either (the deadline does not run while paused).
        return ObjectHealth(SUSPENDED, "Paused", "the deployment is paused: "
                            f"{status.get('updatedReplicas', 0)} of {spec.get('replicas', 1)}"
                            " replicas updated",
                            "set spec.paused to false to let the rollout continue")
    want = int(spec.get("replicas", 1))
    updated = int(status.get("updatedReplicas", 0))
    total = int(status.get("replicas", 0))
    available = int(status.get("availableReplicas", 0))
    ready = int(status.get("readyReplicas", 0))
    counts = {"replicas": want, "updated": updated, "ready": ready, "available": available}
    if updated < want:
        return ObjectHealth(PROGRESSING, "RollingUpdate",
                            f"{updated} of {want} replicas updated", details=counts)
    if total > updated:
        return ObjectHealth(PROGRESSING, "RollingUpdate",
                            f"{total - updated} old replica(s) pending termination",
                            details=counts)
    if available < updated or ready < want:
        return ObjectHealth(PROGRESSING, "ReplicasNotReady",
                            f"{ready} of {want} replicas ready, {available} available",
                            details=counts)
    return ObjectHealth(HEALTHY, "Available", f"{ready} of {want} replicas ready",
                        details=counts)


def _stateful_set(obj: Body, pods: Sequence[Body], now: datetime | None,
                  threshold: float) -> ObjectHealth:
    waiting = _not_observed(obj)
    if waiting:
        return waiting
    problem = _pods_problem(pods, now, threshold)
    if problem:
        return problem
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    want = int(spec.get("replicas", 1))
    total = int(status.get("replicas", 0))
    ready = int(status.get("readyReplicas", 0))
    updated = int(status.get("updatedReplicas", 0))
    counts = {"replicas": want, "ready": ready, "updated": updated}
    if total != want:
        return ObjectHealth(PROGRESSING, "Scaling", f"{total} of {want} replicas exist",
                            details=counts)
    if ready < want:
        return ObjectHealth(PROGRESSING, "ReplicasNotReady", f"{ready} of {want} replicas ready",
                            details=counts)
    strategy = spec.get("updateStrategy") or {}
    if strategy.get("type") == "OnDelete":
        return ObjectHealth(HEALTHY, "Ready", f"{ready} of {want} replicas ready",
                            details=counts)
    partition = int((strategy.get("rollingUpdate") or {}).get("partition", 0))
    if partition > 0:
        if updated < want - partition:
            return ObjectHealth(PROGRESSING, "RollingUpdate",
                                f"{updated} of {want - partition} replicas updated "
                                f"(partition {partition})", details=counts)
        return ObjectHealth(HEALTHY, "Ready", f"partitioned rollout complete: {ready} of "
                            f"{want} replicas ready", details=counts)
    if status.get("currentRevision") != status.get("updateRevision"):
        return ObjectHealth(PROGRESSING, "RollingUpdate",
                            f"rolling out revision {status.get('updateRevision')}: "
                            f"{updated} of {want} replicas updated", details=counts)
    return ObjectHealth(HEALTHY, "Ready", f"{ready} of {want} replicas ready", details=counts)


def _daemon_set(obj: Body, pods: Sequence[Body], now: datetime | None,
                threshold: float) -> ObjectHealth:
    waiting = _not_observed(obj)
    if waiting:
        return waiting
    problem = _pods_problem(pods, now, threshold)
    if problem:
        return problem
    status = obj.get("status") or {}
    want = int(status.get("desiredNumberScheduled", 0))
    counts = {name: int(status.get(field_, 0)) for name, field_ in (
        ("scheduled", "currentNumberScheduled"), ("updated", "updatedNumberScheduled"),
        ("available", "numberAvailable"), ("ready", "numberReady"))}
    # OnDelete: a pod gets the new template only when someone deletes it, so old pods are
    # the finished state of such a rollout, not a rollout in progress.
    on_delete = ((obj.get("spec") or {}).get("updateStrategy") or {}).get("type") == "OnDelete"
    for name, value in counts.items():
        if value < want and not (on_delete and name == "updated"):
            return ObjectHealth(PROGRESSING, "RollingUpdate" if name == "updated"
                                else "PodsNotReady", f"{value} of {want} pods {name}",
                                details={"desired": want, **counts})
    stale = (f" ({want - counts['updated']} on the old template until deleted: OnDelete)"
             if on_delete and counts["updated"] < want else "")
    return ObjectHealth(HEALTHY, "Ready", f"{want} of {want} pods ready{stale}",
                        details={"desired": want, **counts})


def _replica_set(obj: Body, pods: Sequence[Body], now: datetime | None,
                 threshold: float) -> ObjectHealth:
    waiting = _not_observed(obj)
    if waiting:
        return waiting
    failure = _replica_failure(_conditions(obj))
    if failure:
        return failure
    problem = _pods_problem(pods, now, threshold)
    if problem:
        return problem
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    want = int(spec.get("replicas", 1))
    total = int(status.get("replicas", 0))
    ready = int(status.get("readyReplicas", 0))
    available = int(status.get("availableReplicas", 0))
    counts = {"replicas": want, "ready": ready, "available": available}
    if total != want:
        return ObjectHealth(PROGRESSING, "Scaling", f"{total} of {want} replicas exist",
                            details=counts)
    if ready < want or available < want:
        return ObjectHealth(PROGRESSING, "ReplicasNotReady",
                            f"{ready} of {want} replicas ready, {available} available",
                            details=counts)
    return ObjectHealth(HEALTHY, "Ready", f"{ready} of {want} replicas ready", details=counts)


def _job(obj: Body, pods: Sequence[Body], now: datetime | None,
         threshold: float) -> ObjectHealth:
    conds = _conditions(obj)
    status = obj.get("status") or {}
    counts = {name: int(status.get(name, 0)) for name in ("active", "succeeded", "failed")}
    failed = conds.get("Failed") or {}
    if failed.get("status") == "True":
        reason = str(failed.get("reason") or "Failed")
        return ObjectHealth(UNHEALTHY, reason, str(failed.get("message") or "the job failed"),
                            f"job failed ({reason}, {counts['failed']} failed pod(s)): "
                            "check its pods' logs", counts)
    complete = conds.get("Complete") or {}
    if complete.get("status") == "True":
        return ObjectHealth(HEALTHY, "Complete",
                            f"completed: {counts['succeeded']} pod(s) succeeded", details=counts)
    problem = _pods_problem(pods, now, threshold)
    if problem:
        return problem
    if (obj.get("spec") or {}).get("suspend"):
        return ObjectHealth(SUSPENDED, "Suspended", "the job is suspended",
                            "set spec.suspend to false to run it", counts)
    return ObjectHealth(PROGRESSING, "Running",
                        f"{counts['active']} active, {counts['succeeded']} succeeded, "
                        f"{counts['failed']} failed", details=counts)


def _cron_job(obj: Body) -> ObjectHealth:
    """A CronJob is healthy once it exists: each run is a Job with its own health."""
    status = obj.get("status") or {}
    last = str(status.get("lastScheduleTime") or "")
    if (obj.get("spec") or {}).get("suspend"):
        return ObjectHealth(SUSPENDED, "Suspended", "the cron job is suspended"
                            + (f" (last run scheduled {last})" if last else ""),
                            "set spec.suspend to false to schedule it again")
    active = len(status.get("active") or [])
    return ObjectHealth(HEALTHY, "Scheduled", f"{active} active job(s)"
                        + (f", last scheduled {last}" if last else ", not run yet"))


def _autoscaler(obj: Body) -> ObjectHealth:
    """A HorizontalPodAutoscaler from its conditions (autoscaling/v1 keeps them in an
    annotation). It is working when it can scale its target and read its metrics."""
    conds = _autoscaler_conditions(obj)
    able = conds.get("AbleToScale") or {}
    active = conds.get("ScalingActive") or {}
    if able.get("reason") in HPA_TARGET_FAILURES:
        # The reason, not the status: it names the failed step whatever the status says.
        reason = str(able["reason"])
        verb = "read" if reason == "FailedGetScale" else "update"
        return ObjectHealth(UNHEALTHY, reason,
                            str(able.get("message") or f"cannot {verb} its target's scale"),
                            f"the autoscaler cannot {verb} the scale of {_target(obj)}: check "
                            "that spec.scaleTargetRef names an existing workload (and, for a "
                            "custom resource, that it has a scale subresource)")
    if able.get("reason") == "SucceededRescale":
        # Its last sync scaled the target, which it only does after that sync read its
        # metrics or the target was out of bounds: a failed ScalingActive is from before.
        return ObjectHealth(HEALTHY, "SucceededRescale", str(able.get("message") or ""))
    if active.get("status") == "False" and active.get("reason") != "ScalingDisabled":
        reason = str(active.get("reason") or "ScalingInactive")
        return ObjectHealth(UNHEALTHY, reason, str(active.get("message") or "cannot scale"),
                            HPA_SELECTOR_HINT if reason == "InvalidSelector" else
                            HPA_METRICS_HINT)
    if able.get("status") == "True":
        # ScalingDisabled (target at zero replicas) is a choice, not a failure.
        limited = conds.get("ScalingLimited") or {}
        note = (f"; {limited.get('reason')}: {limited.get('message')}"
                if limited.get("status") == "True" else "")
        message = str((active if active.get("reason") == "ScalingDisabled" else able)
                      .get("message") or "")
        return ObjectHealth(HEALTHY, str(able.get("reason") or "AbleToScale"), message + note)
    if able:
        return ObjectHealth(PROGRESSING, str(able.get("reason") or "NotAbleToScale"),
                            str(able.get("message") or "waiting to scale"))
    return ObjectHealth(PROGRESSING, "WaitingToAutoscale",
                        "waiting for the autoscaler controller to report")


def _autoscaler_conditions(obj: Body) -> dict[str, Body]:
    conds = _conditions(obj)
    if conds:
        return conds
    raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(HPA_CONDITIONS)
    parsed = json.loads(raw) if raw else []
    if not isinstance(parsed, list):
        raise ValueError(f"{HPA_CONDITIONS} is not a list")
    return {str(c.get("type")): c for c in parsed if isinstance(c, dict)}


def _target(obj: Body) -> str:
    ref = (obj.get("spec") or {}).get("scaleTargetRef") or {}
    return f"{ref.get('kind', '?')}/{ref.get('name', '?')}"


def _api_service(obj: Body) -> ObjectHealth:
    """An aggregated API is usable when kube-apiserver says Available (it probes it)."""
    available = _conditions(obj).get("Available") or {}
    if available.get("status") == "True":
        return ObjectHealth(HEALTHY, str(available.get("reason") or "Available"),
                            str(available.get("message") or ""))
    if not available:
        return ObjectHealth(PROGRESSING, "NotObserved", "waiting for its availability check")
    service = (obj.get("spec") or {}).get("service") or {}
    where = f"{service.get('namespace')}/{service.get('name')}" if service else ""
    # Progressing, as the peer says: the backing pods are often still starting; their
    # own objects carry the failure when they cannot start.
    return ObjectHealth(PROGRESSING, str(available.get("reason") or "Unavailable"),
                        str(available.get("message") or "not available"),
                        f"the API is served by Service {where}: check its endpoints and pods"
                        if where else "")


def _definition(obj: Body) -> ObjectHealth:
    """A CRD serves its kind once Established; names another CRD holds are never accepted,
    and a non-structural schema (apiextensions v1beta1) loses pruning and defaulting."""
    conds = _conditions(obj)
    names = conds.get("NamesAccepted") or {}
    if names.get("status") == "False":
        message = str(names.get("message") or "names not accepted")
        return ObjectHealth(UNHEALTHY, str(names.get("reason") or "NamesNotAccepted"), message,
                            f"its names conflict with another definition: {message}: rename "
                            "its kind, plural or short names")
    schema = conds.get("NonStructuralSchema") or {}
    if schema.get("status") == "True":
        return ObjectHealth(UNHEALTHY, str(schema.get("reason") or "NonStructuralSchema"),
                            str(schema.get("message") or "non-structural schema"),
                            "make its schema structural (every field typed; see "
                            "apiextensions.k8s.io/v1)")
    established = conds.get("Established") or {}
    if established.get("status") == "True":
        return ObjectHealth(HEALTHY, "Established", str(established.get("message") or ""))
    return ObjectHealth(PROGRESSING, str(established.get("reason") or "NotEstablished"),
                        str(established.get("message") or "waiting to be established"))


def _pod(pod: Body, now: datetime | None, threshold: float) -> ObjectHealth:
    status = pod.get("status") or {}
    phase = str(status.get("phase") or "Pending")
    if phase == "Succeeded":
        return ObjectHealth(HEALTHY, "Completed", "all containers exited successfully")
    problem = pod_problem(pod, now, threshold)
    if problem:
        return problem
    if phase == "Failed":
        return _failed_pod(pod)
    conds = _conditions(pod)
    sched = conds.get("PodScheduled") or {}
    if sched.get("status") == "False":
        deadline = unschedulable_deadline(pod, threshold)
        return ObjectHealth(PROGRESSING, str(sched.get("reason") or "Unschedulable"),
                            f"pod {_name(pod)}: {sched.get('message') or 'not scheduled yet'}",
                            details={"pod": _name(pod), "unhealthyAt":
                                     rfc3339(deadline) if deadline else ""})
    ready = conds.get("Ready") or {}
    if ready.get("status") == "True":
        return ObjectHealth(HEALTHY, "Ready", "all containers ready")
    waiting = [(c, (c.get("state") or {}).get("waiting") or {}) for c in _container_statuses(pod)]
    for c, w in waiting:
        if w.get("reason"):
            return ObjectHealth(PROGRESSING, str(w["reason"]),
                                f"pod {_name(pod)}: container {c.get('name')}: {w['reason']}"
                                + (f": {w['message']}" if w.get("message") else ""))
    if phase == "Running":
        unready = [str(c.get("name")) for c in _container_statuses(pod) if not c.get("ready")]
        return ObjectHealth(PROGRESSING, str(ready.get("reason") or "ContainersNotReady"),
                            f"pod {_name(pod)}: containers not ready: "
                            f"{', '.join(unready) or '-'}")
    return ObjectHealth(PROGRESSING, "Pending", f"pod {_name(pod)}: pending")


def pod_problem(pod: Body, now: datetime | None = None,
                pending_threshold: float = DEFAULT_PENDING_THRESHOLD) -> ObjectHealth | None:
    """An unhealthy verdict that should not wait for a deadline, or None.

    A container waiting for a reason that will not go away by itself (see
    FAIL_FAST_REASONS), a container that failed again after a restart (the kubelet says
    CrashLoopBackOff only once it backs off, seconds to minutes later), or a pod
    unschedulable for longer than `pending_threshold`.
    """
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return None  # on its way out: a rollout replacing it is not failing
    # A pod that has ended (evicted, or its node shut down) restarts nothing: its workload
    # replaces it, so its last crash is history, not a crash loop.
    restarts_allowed = ((pod.get("spec") or {}).get("restartPolicy", "Always") != "Never"
                        and (pod.get("status") or {}).get("phase") not in ("Failed",
                                                                           "Succeeded"))
    for c in _container_statuses(pod):
        state = c.get("state") or {}
        waiting = state.get("waiting") or {}
        reason = str(waiting.get("reason") or "")
        if reason in FAIL_FAST_REASONS:
            return _container_problem(pod, c, reason, str(waiting.get("message") or ""))
        term = state.get("terminated") or {}
        if (restarts_allowed and term and int(term.get("exitCode") or 0) != 0
                and int(c.get("restartCount") or 0) > 0):
            return _crashed(pod, c, term)
    deadline = unschedulable_deadline(pod, pending_threshold)
    if deadline is not None:
        created = deadline - timedelta(seconds=pending_threshold)
        if (now or created) >= deadline:
            message = str((_conditions(pod).get("PodScheduled") or {}).get("message") or "")
            return ObjectHealth(UNHEALTHY, "Unschedulable",
                                f"pod {_name(pod)}: Unschedulable: {message}",
                                f"unschedulable: {message or 'no node fits the pod'}",
                                {"pod": _name(pod), "reason": "Unschedulable",
                                 "message": message,
                                 "pendingSeconds": int(((now or created) - created)
                                                       .total_seconds())})
    return None


def _container_problem(pod: Body, c: Body, reason: str, message: str) -> ObjectHealth:
    name = str(c.get("name", ""))
    details: dict[str, Any] = {"pod": _name(pod), "container": name, "reason": reason,
                               "message": message, "image": str(c.get("image", "")),
                               "restartCount": int(c.get("restartCount", 0))}
    if reason in IMAGE_REASONS:
        hint = IMAGE_HINT
    elif reason == CRASH_REASON:
        last = (c.get("lastState") or {}).get("terminated") or {}
        restarts = int(c.get("restartCount", 0))
        if last:
            details["lastTermination"] = {"reason": str(last.get("reason", "")),
                                          "exitCode": last.get("exitCode")}
            hint = (f"container crashing: last termination {last.get('reason') or 'unknown'}"
                    f" (exit code {last.get('exitCode')}), {restarts} restart(s): check its "
                    "logs")
        else:
            hint = f"container crashing: {restarts} restart(s): check its logs"
    elif reason == CONFIG_REASON:
        hint = _config_hint(message, details)
    else:
        hint = f"the container cannot start: {message}" if message else ""
    text = f"pod {_name(pod)}: container {name}: {reason}" + (f": {message}" if message else "")
    return ObjectHealth(UNHEALTHY, reason, text, hint, details)


def _crashed(pod: Body, c: Body, term: Body) -> ObjectHealth:
    """A container that exited with an error and had been restarted before: it is crashing,
    whatever the kubelet calls its state right now."""
    name = str(c.get("name", ""))
    restarts = int(c.get("restartCount") or 0)
    why = str(term.get("reason") or "Error")
    code = term.get("exitCode")
    details: dict[str, Any] = {"pod": _name(pod), "container": name, "reason": why,
                               "message": str(term.get("message") or ""),
                               "image": str(c.get("image", "")), "restartCount": restarts,
                               "lastTermination": {"reason": why, "exitCode": code}}
    if why == "OOMKilled":
        hint = (f"container killed for exceeding its memory limit, {restarts} restart(s): "
                "raise resources.limits.memory or reduce its memory use")
    else:
        hint = (f"container crashing: terminated {why} (exit code {code}), {restarts} "
                "restart(s): check its logs")
    return ObjectHealth(UNHEALTHY, why, f"pod {_name(pod)}: container {name}: terminated "
                        f"{why} (exit code {code}) after {restarts} restart(s)", hint, details)


def _config_hint(message: str, details: dict[str, Any]) -> str:
    missing = _MISSING_OBJECT.search(message)
    if missing:
        kind = "Secret" if missing.group(1).lower().startswith("secret") else "ConfigMap"
        details["missing"] = {"kind": kind, "name": missing.group(2)}
        return f"missing ConfigMap or Secret: {missing.group(2)}"
    key = _MISSING_KEY.search(message)
    if key:
        details["missing"] = {"kind": key.group(2), "name": key.group(3).rpartition("/")[2],
                              "key": key.group(1)}
        return (f"missing ConfigMap or Secret key: {key.group(1)} in {key.group(2)} "
                f"{key.group(3)}")
    return CONFIG_HINT


def _failed_pod(pod: Body) -> ObjectHealth:
    status = pod.get("status") or {}
    if status.get("reason") == "Evicted":
        # The kubelet's message says which resource ran short; exit codes say nothing.
        message = str(status.get("message") or "evicted")
        return ObjectHealth(UNHEALTHY, "Evicted", f"pod {_name(pod)}: {message}",
                            f"evicted by its node: {message}: set requests that match its "
                            "use, or give the node more room", {"pod": _name(pod)})
    for c in _container_statuses(pod):
        term = (c.get("state") or {}).get("terminated") or {}
        if term and int(term.get("exitCode", 0)) != 0:
            return ObjectHealth(UNHEALTHY, str(status.get("reason") or "Failed"),
                                f"pod {_name(pod)}: container {c.get('name')} exited with "
                                f"code {term.get('exitCode')} ({term.get('reason', '')})",
                                details={"pod": _name(pod), "container": c.get("name"),
                                         "exitCode": term.get("exitCode")})
    return ObjectHealth(UNHEALTHY, str(status.get("reason") or "Failed"),
                        f"pod {_name(pod)}: {status.get('message') or 'failed'}",
                        details={"pod": _name(pod)})


def _claim(obj: Body) -> ObjectHealth:
    phase = str((obj.get("status") or {}).get("phase") or "Pending")
    if phase == "Bound":
        return ObjectHealth(HEALTHY, "Bound", "bound to a volume")
    if phase == "Lost":
        return ObjectHealth(UNHEALTHY, "ClaimLost", "its volume is gone",
                            "the bound PersistentVolume no longer exists: restore or recreate it")
    return ObjectHealth(PROGRESSING, phase, "waiting for a volume to be bound")


def _service(obj: Body) -> ObjectHealth:
    if (obj.get("spec") or {}).get("type") != "LoadBalancer":
        return ObjectHealth(HEALTHY, "Exists", "")
    return _address(obj, "the load balancer")


def _ingress(obj: Body) -> ObjectHealth:
    return _address(obj, "the ingress controller")


def _address(obj: Body, who: str) -> ObjectHealth:
    ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    addresses = [str(i.get("ip") or i.get("hostname") or "") for i in ingress
                 if isinstance(i, dict)]
    if any(addresses):
        return ObjectHealth(HEALTHY, "AddressAssigned", ", ".join(a for a in addresses if a))
    if addresses:
        # Some controllers publish an entry without ip or hostname (`[{}]`) once the
        # load balancer exists: provisioned, with an address they do not report.
        return ObjectHealth(HEALTHY, "AddressAssigned",
                            f"{who} published {len(addresses)} entry(ies) without an address")
    return ObjectHealth(PROGRESSING, "NoAddress", f"waiting for an address from {who}")


def _generic(obj: Body) -> ObjectHealth:
    """kstatus for the rest: Stalled/Reconciling/Ready conditions and observedGeneration;
    an object with none of them is healthy once it exists."""
    conds = _conditions(obj)
    stalled = conds.get("Stalled") or {}
    if stalled.get("status") == "True":
        return ObjectHealth(UNHEALTHY, str(stalled.get("reason") or "Stalled"),
                            str(stalled.get("message") or "stalled"))
    waiting = _not_observed(obj)
    if waiting:
        return waiting
    reconciling = conds.get("Reconciling") or {}
    if reconciling.get("status") == "True":
        return ObjectHealth(PROGRESSING, str(reconciling.get("reason") or "Reconciling"),
                            str(reconciling.get("message") or "reconciling"))
    ready = conds.get("Ready")
    if ready is not None and ready.get("status") != "True":
        return ObjectHealth(PROGRESSING, str(ready.get("reason") or "NotReady"),
                            str(ready.get("message") or "not ready"))
    if ready is not None:
        return ObjectHealth(HEALTHY, "Ready", str(ready.get("message") or ""))
    return ObjectHealth(HEALTHY, "Exists", "")


_WORKLOADS = {"Deployment": _deployment, "StatefulSet": _stateful_set,
              "DaemonSet": _daemon_set, "ReplicaSet": _replica_set}


# -- helpers -------------------------------------------------------------------------------


def _not_observed(obj: Body) -> ObjectHealth | None:
    """Progressing while the object's controller has not seen its latest spec."""
    generation = (obj.get("metadata") or {}).get("generation")
    observed = (obj.get("status") or {}).get("observedGeneration")
    if generation is None or (observed is None and not _is_builtin_workload(obj)):
        return None
    if observed is None or int(observed) < int(generation):
        return ObjectHealth(PROGRESSING, "NotObserved",
                            f"generation {generation} not observed yet "
                            f"(observed: {observed if observed is not None else 'none'})")
    return None


def _is_builtin_workload(obj: Body) -> bool:
    group = str(obj.get("apiVersion", "")).rpartition("/")[0]
    return group == _WORKLOAD_GROUP and obj.get("kind") in _WORKLOADS


def _with_pending(result: ObjectHealth, pods: Sequence[Body],
                  threshold: float) -> ObjectHealth:
    """A workload still waiting for an unschedulable pod says so (with the scheduler's
    message) before the pod's threshold makes it unhealthy."""
    if result.status != PROGRESSING or result.reason == "NotObserved":
        return result
    for pod in sorted(pods, key=_name):
        deadline = unschedulable_deadline(pod, threshold)
        if deadline is None or (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        message = str((_conditions(pod).get("PodScheduled") or {}).get("message") or "")
        return ObjectHealth(PROGRESSING, "Unschedulable",
                            f"pod {_name(pod)}: Unschedulable: {message} (unhealthy from "
                            f"{rfc3339(deadline)})", f"unschedulable: {message}",
                            {**result.details, "pod": _name(pod),
                             "unhealthyAt": rfc3339(deadline)})
    return result


def _replica_failure(conds: Mapping[str, Body]) -> ObjectHealth | None:
    """ReplicaFailure=True: pods cannot even be created (quota, admission, PSP)."""
    failure = conds.get("ReplicaFailure") or {}
    if failure.get("status") != "True":
        return None
    message = str(failure.get("message") or "cannot create pods")
    return ObjectHealth(UNHEALTHY, str(failure.get("reason") or "ReplicaFailure"), message,
                        f"pods cannot be created: {message}")


def _pods_problem(pods: Sequence[Body], now: datetime | None,
                  threshold: float) -> ObjectHealth | None:
    for pod in sorted(pods, key=_name):
        problem = pod_problem(pod, now, threshold)
        if problem:
            return problem
    return None


def _conditions(obj: Body) -> dict[str, Body]:
    return {str(c.get("type")): c for c in (obj.get("status") or {}).get("conditions") or []
            if isinstance(c, dict)}


def _container_statuses(pod: Body) -> list[Body]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or []),
            *(status.get("containerStatuses") or [])]


def _name(obj: Body) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))
