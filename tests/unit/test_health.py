"""Health rules per kind, on object shapes recorded from a 1.20 API server.

The shapes below were read back from the local control plane (kube-apiserver and
kube-controller-manager v1.20.2) after deploying the example app, driving pods with the
kubelet helper, rolling a Deployment and failing a Job; kubelet-only shapes (waiting
reasons and their messages) are as a 1.20 kubelet writes them. Only fields the rules could
read are kept; managedFields and most of the pod spec are dropped.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import pytest

from controller.adapters.metrics import HEALTH_STATES
from controller.api.openapi import SCHEMAS
from controller.model.health import (
    CONFIG_HINT,
    IMAGE_HINT,
    ObjectHealth,
    ServiceStatus,
    aggregate,
    assess,
    parse_forbidden,
    rbac_problem,
    unschedulable_deadline,
)

Body = dict[str, Any]
NOW = datetime(2026, 11, 23, 21, 45, 0, tzinfo=UTC)
CREATED = "2026-11-23T21:44:32Z"  # 28 s before NOW

OUR_LABELS = {"app.kubernetes.io/managed-by": "conductor", "conductor.io/app": "conductor",
              "conductor.io/instance": "default", "conductor.io/instance-namespace": "cap",
              "conductor.io/service": "frontend"}


def changed(obj: Body, **paths: Any) -> Body:
    """A deep copy with dotted paths (`status__readyReplicas`) set; None removes."""
    out = copy.deepcopy(obj)
    for path, value in paths.items():
        *parents, last = path.split("__")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return out


# -- recorded shapes ---------------------------------------------------------------------------

DEPLOYMENT_READY: Body = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "frontend", "namespace": "cap",
                 "uid": "a0e5e550-4199-441f-8570-49be43f286bb", "resourceVersion": "299",
                 "generation": 1, "creationTimestamp": CREATED, "labels": OUR_LABELS,
                 "annotations": {"conductor.io/digest": "eed5394a6c03980c",
                                 "conductor.io/source": "frontend/deployment.yaml",
                                 "deployment.kubernetes.io/revision": "1"}},
    "spec": {"replicas": 2, "selector": {"matchLabels": {"app.kubernetes.io/name": "frontend"}},
             "strategy": {"type": "RollingUpdate",
                          "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
             "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600},
    "status": {
        "observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2,
        "availableReplicas": 2,
        "conditions": [
            {"type": "Available", "status": "True", "lastUpdateTime": "2026-11-23T21:44:51Z",
             "lastTransitionTime": "2026-11-23T21:44:51Z", "reason": "MinimumReplicasAvailable",
             "message": "Deployment has minimum availability."},
            {"type": "Progressing", "status": "True", "lastUpdateTime": "2026-11-23T21:44:51Z",
             "lastTransitionTime": "2026-11-23T21:44:32Z", "reason": "NewReplicaSetAvailable",
             "message": 'ReplicaSet "frontend-7f8f9dff9" has successfully progressed.'}]},
}
# Right after an apply changed the pod template: generation 2, not observed yet.
DEPLOYMENT_JUST_CHANGED = changed(DEPLOYMENT_READY, metadata__generation=2)
# One new pod surged, not ready; the old ReplicaSet still serves.
DEPLOYMENT_ROLLING = changed(
    DEPLOYMENT_READY, metadata__generation=2,
    metadata__annotations={"deployment.kubernetes.io/revision": "2"},
    status={"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "readyReplicas": 2,
            "availableReplicas": 2, "unavailableReplicas": 1, "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                 "message": "Deployment has minimum availability."},
                {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
                 "message": 'ReplicaSet "frontend-6554d54977" is progressing.'}]})
# First rollout: one pod ready, one not.
DEPLOYMENT_STARTING = changed(DEPLOYMENT_READY, status={
    "observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 1,
    "availableReplicas": 1, "unavailableReplicas": 1, "conditions": [
        {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
         "message": "Deployment does not have minimum availability."},
        {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
         "message": 'ReplicaSet "frontend-7f8f9dff9" is progressing.'}]})
DEPLOYMENT_DEADLINE = changed(DEPLOYMENT_READY, status={
    "observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "unavailableReplicas": 1,
    "conditions": [
        {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
         "message": "Deployment does not have minimum availability."},
        {"type": "Progressing", "status": "False", "lastUpdateTime": "2026-11-23T21:44:58Z",
         "lastTransitionTime": "2026-11-23T21:44:58Z", "reason": "ProgressDeadlineExceeded",
         "message": 'ReplicaSet "slow-7f9948b6cf" has timed out progressing.'}]})
DEPLOYMENT_QUOTA = changed(DEPLOYMENT_STARTING, status__conditions=[
    *DEPLOYMENT_STARTING["status"]["conditions"],
    {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
     "message": 'pods "frontend-7f8f9dff9-x2x8k" is forbidden: exceeded quota: pods, '
                "requested: pods=1, used: pods=10, limited: pods=10"}])

POD_READY: Body = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "frontend-7f8f9dff9-hmb4w", "generateName": "frontend-7f8f9dff9-",
                 "namespace": "cap", "uid": "8d0f3c77-4f43-4b8e-9d43-3c3b0b3f1a10",
                 "resourceVersion": "270", "creationTimestamp": CREATED,
                 "labels": {"app.kubernetes.io/instance": "default",
                            "app.kubernetes.io/name": "frontend",
                            "pod-template-hash": "7f8f9dff9"},
                 "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                      "name": "frontend-7f8f9dff9",
                                      "uid": "421830be-c257-41ee-a8fc-d7e5ae57eb39",
                                      "controller": True, "blockOwnerDeletion": True}]},
    "spec": {"containers": [{"name": "frontend", "image": "nginx:1.25",
                             "imagePullPolicy": "IfNotPresent"}],
             "restartPolicy": "Always", "schedulerName": "default-scheduler"},
    "status": {
        "phase": "Running",
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastProbeTime": None,
             "lastTransitionTime": "2026-11-23T21:44:35Z"},
            {"type": "Initialized", "status": "True", "lastProbeTime": None,
             "lastTransitionTime": "2026-11-23T21:44:35Z"},
            {"type": "ContainersReady", "status": "True", "lastProbeTime": None,
             "lastTransitionTime": "2026-11-23T21:44:35Z"},
            {"type": "Ready", "status": "True", "lastProbeTime": None,
             "lastTransitionTime": "2026-11-23T21:44:35Z"}],
        "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
        "startTime": "2026-11-23T21:44:35Z",
        "containerStatuses": [{"name": "frontend",
                               "state": {"running": {"startedAt": "2026-11-23T21:44:35Z"}},
                               "lastState": {}, "ready": True, "restartCount": 0,
                               "image": "nginx:1.25", "imageID": "", "started": True}],
        "qosClass": "Burstable"},
}
_NOT_READY = [
    {"type": "PodScheduled", "status": "True", "lastProbeTime": None,
     "lastTransitionTime": "2026-11-23T21:44:35Z"},
    {"type": "Initialized", "status": "True", "lastProbeTime": None,
     "lastTransitionTime": "2026-11-23T21:44:35Z"},
    {"type": "ContainersReady", "status": "False", "lastProbeTime": None,
     "lastTransitionTime": "2026-11-23T21:44:35Z", "reason": "ContainersNotReady",
     "message": "containers with unready status: [frontend]"},
    {"type": "Ready", "status": "False", "lastProbeTime": None,
     "lastTransitionTime": "2026-11-23T21:44:35Z", "reason": "ContainersNotReady",
     "message": "containers with unready status: [frontend]"}]


def waiting_pod(reason: str, message: str, *, restarts: int = 0,
                last: Body | None = None, phase: str = "Pending") -> Body:
    return changed(POD_READY, metadata__name="frontend-7f8f9dff9-q999w", status={
        "phase": phase, "conditions": _NOT_READY, "hostIP": "127.0.0.1",
        "startTime": "2026-11-23T21:44:35Z",
        "containerStatuses": [{"name": "frontend",
                               "state": {"waiting": {"reason": reason, "message": message}},
                               "lastState": last or {}, "ready": False,
                               "restartCount": restarts, "image": "nginx:1.25",
                               "imageID": "", "started": False}],
        "qosClass": "Burstable"})


POD_IMAGE_PULL_BACKOFF = waiting_pod("ImagePullBackOff",
                                     'Back-off pulling image "nginx:0.0-missing"')
POD_ERR_IMAGE_PULL = waiting_pod(
    "ErrImagePull", "rpc error: code = Unknown desc = Error response from daemon: manifest "
    "for nginx:0.0-missing not found: manifest unknown: manifest unknown")
POD_INVALID_IMAGE = waiting_pod(
    "InvalidImageName", 'Failed to apply default image tag "nginx:Bad Tag": couldn\'t parse '
    'image reference "nginx:Bad Tag": invalid reference format')
POD_CRASH_LOOP = waiting_pod(
    "CrashLoopBackOff", "back-off 5m0s restarting failed container=frontend "
    "pod=frontend-7f8f9dff9-q999w_cap(2a302436-932c-4b3b-acba-3cf40f165c0b)",
    restarts=5, phase="Running",
    last={"terminated": {"exitCode": 137, "reason": "OOMKilled",
                         "startedAt": "2026-11-23T21:44:40Z",
                         "finishedAt": "2026-11-23T21:44:41Z",
                         "containerID": "docker://4b1c0c1f1e1d"}})
POD_SECRET_MISSING = waiting_pod("CreateContainerConfigError", 'secret "db-credentials" not found')
POD_CONFIGMAP_MISSING = waiting_pod("CreateContainerConfigError",
                                    'configmap "frontend-config" not found')
POD_KEY_MISSING = waiting_pod("CreateContainerConfigError",
                              "couldn't find key password in Secret cap/postgres")
POD_CREATING = waiting_pod("ContainerCreating", "")
POD_UNSCHEDULABLE = changed(POD_READY, metadata__name="redis-78bc768cdd-nrh7r", status={
    "phase": "Pending",
    "conditions": [{"type": "PodScheduled", "status": "False", "lastProbeTime": None,
                    "lastTransitionTime": "2026-11-23T21:44:35Z", "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient memory."}],
    "qosClass": "Burstable"})
# As the API server creates it, before any scheduler or kubelet wrote status.
POD_PENDING = changed(POD_READY, status={"phase": "Pending", "qosClass": "Burstable"})
POD_SUCCEEDED = changed(POD_READY, status__phase="Succeeded", status__conditions=[
    {"type": "Ready", "status": "False", "reason": "PodCompleted"}],
    status__containerStatuses=[{"name": "frontend", "ready": False, "restartCount": 0,
                                "state": {"terminated": {"exitCode": 0,
                                                         "reason": "Completed"}}}])
POD_FAILED = changed(POD_SUCCEEDED, status__phase="Failed", status__containerStatuses=[
    {"name": "frontend", "ready": False, "restartCount": 0,
     "state": {"terminated": {"exitCode": 2, "reason": "Error"}}}])

STATEFUL_SET_READY: Body = {
    "apiVersion": "apps/v1", "kind": "StatefulSet",
    "metadata": {"name": "postgres", "namespace": "cap",
                 "uid": "39142261-207c-432f-905f-77451a6606fb", "resourceVersion": "259",
                 "generation": 1, "creationTimestamp": CREATED,
                 "labels": {**OUR_LABELS, "conductor.io/service": "postgres"}},
    "spec": {"replicas": 1, "serviceName": "postgres", "podManagementPolicy": "OrderedReady",
             "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
             "revisionHistoryLimit": 10},
    "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1,
               "currentReplicas": 1, "updatedReplicas": 1,
               "currentRevision": "postgres-899d94869", "updateRevision": "postgres-899d94869",
               "collisionCount": 0},
}
STATEFUL_SET_ROLLING = changed(STATEFUL_SET_READY, metadata__generation=2, status={
    "observedGeneration": 2, "replicas": 1, "updatedReplicas": 1,
    "currentRevision": "postgres-899d94869", "updateRevision": "postgres-5df458d56f",
    "collisionCount": 0})
# The new pod is ready; the 1.20 controller has not moved currentRevision yet.
STATEFUL_SET_ROLLED_NOT_CURRENT = changed(STATEFUL_SET_ROLLING, status__readyReplicas=1)
STATEFUL_SET_ROLLED = changed(STATEFUL_SET_READY, metadata__generation=2, status={
    "observedGeneration": 2, "replicas": 1, "readyReplicas": 1, "currentReplicas": 1,
    "updatedReplicas": 1, "currentRevision": "postgres-5df458d56f",
    "updateRevision": "postgres-5df458d56f", "collisionCount": 0})
STATEFUL_SET_NEW = changed(STATEFUL_SET_READY, status={
    "observedGeneration": 1, "replicas": 1, "currentReplicas": 1, "updatedReplicas": 1,
    "currentRevision": "postgres-899d94869", "updateRevision": "postgres-899d94869",
    "collisionCount": 0})

DAEMON_SET_READY: Body = {
    "apiVersion": "apps/v1", "kind": "DaemonSet",
    "metadata": {"name": "agent", "namespace": "cap", "generation": 3,
                 "creationTimestamp": CREATED, "labels": OUR_LABELS},
    "spec": {"updateStrategy": {"type": "RollingUpdate",
                                "rollingUpdate": {"maxUnavailable": 1}}},
    "status": {"currentNumberScheduled": 3, "numberMisscheduled": 0,
               "desiredNumberScheduled": 3, "numberReady": 3, "observedGeneration": 3,
               "updatedNumberScheduled": 3, "numberAvailable": 3},
}
DAEMON_SET_ROLLING = changed(DAEMON_SET_READY, status={
    "currentNumberScheduled": 3, "numberMisscheduled": 0, "desiredNumberScheduled": 3,
    "numberReady": 2, "observedGeneration": 3, "updatedNumberScheduled": 1,
    "numberAvailable": 2, "numberUnavailable": 1})
# No nodes (as on the local control plane): nothing to schedule, nothing missing.
DAEMON_SET_NO_NODES = changed(DAEMON_SET_READY, status={
    "currentNumberScheduled": 0, "numberMisscheduled": 0, "desiredNumberScheduled": 0,
    "numberReady": 0, "observedGeneration": 3})

REPLICA_SET_READY: Body = {
    "apiVersion": "apps/v1", "kind": "ReplicaSet",
    "metadata": {"name": "frontend-7f8f9dff9", "namespace": "cap",
                 "uid": "421830be-c257-41ee-a8fc-d7e5ae57eb39", "generation": 1,
                 "annotations": {"deployment.kubernetes.io/desired-replicas": "2",
                                 "deployment.kubernetes.io/max-replicas": "3",
                                 "deployment.kubernetes.io/revision": "1"}},
    "spec": {"replicas": 2},
    "status": {"replicas": 2, "fullyLabeledReplicas": 2, "readyReplicas": 2,
               "availableReplicas": 2, "observedGeneration": 1},
}
REPLICA_SET_NEW = changed(REPLICA_SET_READY, spec__replicas=1, status={
    "replicas": 1, "fullyLabeledReplicas": 1, "observedGeneration": 1})
REPLICA_SET_QUOTA = changed(REPLICA_SET_NEW, status__conditions=[
    {"type": "ReplicaFailure", "status": "True", "lastTransitionTime": "2026-11-23T21:44:40Z",
     "reason": "FailedCreate",
     "message": 'pods "frontend-7f8f9dff9-x2x8k" is forbidden: exceeded quota: pods'}])

JOB_RUNNING: Body = {
    "apiVersion": "batch/v1", "kind": "Job",
    "metadata": {"name": "migrate", "namespace": "cap",
                 "uid": "0b9c1f9e-5a0e-4d0c-8f5b-1f3f9c0a7e11", "creationTimestamp": CREATED,
                 "labels": {**OUR_LABELS, "conductor.io/service": "batch"}},
    "spec": {"parallelism": 1, "completions": 1, "backoffLimit": 1},
    "status": {"startTime": "2026-11-23T21:45:03Z", "active": 1},
}
JOB_FAILED = changed(JOB_RUNNING, status={
    "conditions": [{"type": "Failed", "status": "True", "lastProbeTime": "2026-11-23T21:45:14Z",
                    "lastTransitionTime": "2026-11-23T21:45:14Z",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit"}],
    "startTime": "2026-11-23T21:45:03Z", "failed": 2})
JOB_COMPLETE = changed(JOB_RUNNING, status={
    "conditions": [{"type": "Complete", "status": "True",
                    "lastProbeTime": "2026-11-23T21:45:20Z",
                    "lastTransitionTime": "2026-11-23T21:45:20Z"}],
    "startTime": "2026-11-23T21:45:03Z", "completionTime": "2026-11-23T21:45:20Z",
    "succeeded": 1})

CLAIM_PENDING: Body = {
    "apiVersion": "v1", "kind": "PersistentVolumeClaim",
    "metadata": {"name": "postgres-data", "namespace": "cap", "creationTimestamp": CREATED,
                 "finalizers": ["kubernetes.io/pvc-protection"]},
    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
             "volumeMode": "Filesystem"},
    "status": {"phase": "Pending"},
}
CLAIM_BOUND = changed(CLAIM_PENDING, status={"phase": "Bound", "accessModes": ["ReadWriteOnce"],
                                              "capacity": {"storage": "1Gi"}})
CLAIM_LOST = changed(CLAIM_PENDING, status={"phase": "Lost"})

SERVICE_CLUSTER_IP: Body = {
    "apiVersion": "v1", "kind": "Service",
    "metadata": {"name": "frontend", "namespace": "cap", "creationTimestamp": CREATED},
    "spec": {"ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http"}],
             "clusterIP": "10.0.0.219", "clusterIPs": ["10.0.0.219"], "type": "ClusterIP",
             "sessionAffinity": "None"},
    "status": {"loadBalancer": {}},
}
SERVICE_LB_PENDING = changed(SERVICE_CLUSTER_IP, spec__type="LoadBalancer",
                             spec__externalTrafficPolicy="Cluster")
SERVICE_LB_READY = changed(SERVICE_LB_PENDING,
                           status={"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}})
INGRESS_PENDING: Body = {
    "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
    "metadata": {"name": "frontend", "namespace": "cap", "generation": 1},
    "spec": {"rules": [{"host": "shop.example.com"}]},
    "status": {"loadBalancer": {}},
}
INGRESS_READY = changed(INGRESS_PENDING, status={
    "loadBalancer": {"ingress": [{"hostname": "lb-1.elb.example.com"}]}})

CERTIFICATE_READY: Body = {
    "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
    "metadata": {"name": "shop-tls", "namespace": "cap", "generation": 1},
    "spec": {"secretName": "shop-tls", "dnsNames": ["shop.example.com"]},
    "status": {"conditions": [{"type": "Ready", "status": "True", "observedGeneration": 1,
                               "reason": "Ready", "lastTransitionTime": CREATED,
                               "message": "Certificate is up to date and has not expired"}],
               "notAfter": "2027-02-21T21:44:32Z"},
}
CERTIFICATE_ISSUING = changed(CERTIFICATE_READY, status__conditions=[
    {"type": "Ready", "status": "False", "reason": "DoesNotExist",
     "message": "Issuing certificate as Secret does not exist"}])
KUSTOMIZATION_STALLED: Body = {
    "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
    "metadata": {"name": "apps", "namespace": "cap", "generation": 4},
    "status": {"observedGeneration": 4, "conditions": [
        {"type": "Ready", "status": "False", "reason": "BuildFailed",
         "message": "kustomize build failed: missing resource"},
        {"type": "Stalled", "status": "True", "reason": "BuildFailed",
         "message": "kustomize build failed: missing resource"}]},
}
WIDGET_NOT_OBSERVED: Body = {
    "apiVersion": "test.conductor.io/v1", "kind": "Widget",
    "metadata": {"name": "w1", "namespace": "cap", "generation": 3},
    "spec": {"size": 3},
    "status": {"observedGeneration": 2,
               "conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}]},
}


def check(h: ObjectHealth, status: str, reason: str | None = None) -> ObjectHealth:
    assert h.status == status, h
    if reason is not None:
        assert h.reason == reason, h
    return h


# -- workloads ----------------------------------------------------------------------------------


def test_deployment_rollout_states() -> None:
    check(assess(DEPLOYMENT_READY, [POD_READY]), "healthy", "Available")
    check(assess(DEPLOYMENT_JUST_CHANGED), "progressing", "NotObserved")
    rolling = check(assess(DEPLOYMENT_ROLLING), "progressing", "RollingUpdate")
    assert "1 of 2 replicas updated" in rolling.message
    check(assess(DEPLOYMENT_STARTING), "progressing", "ReplicasNotReady")
    check(assess(changed(DEPLOYMENT_READY, status__observedGeneration=None)),
          "progressing", "NotObserved")


def test_deployment_scaled_to_zero_is_healthy() -> None:
    zero = changed(DEPLOYMENT_READY, spec__replicas=0, status={
        "observedGeneration": 1, "conditions": DEPLOYMENT_READY["status"]["conditions"]})
    check(assess(zero), "healthy")


def test_deployment_progress_deadline_is_unhealthy() -> None:
    h = check(assess(DEPLOYMENT_DEADLINE), "unhealthy", "ProgressDeadlineExceeded")
    assert "timed out progressing" in h.message


def test_deployment_replica_failure_is_unhealthy() -> None:
    h = check(assess(DEPLOYMENT_QUOTA), "unhealthy", "FailedCreate")
    assert "exceeded quota" in h.hint


def test_deployment_fails_fast_on_a_pod_and_names_it() -> None:
    h = check(assess(DEPLOYMENT_STARTING, [POD_READY, POD_IMAGE_PULL_BACKOFF]),
              "unhealthy", "ImagePullBackOff")
    assert h.message == ('pod frontend-7f8f9dff9-q999w: container frontend: ImagePullBackOff: '
                         'Back-off pulling image "nginx:0.0-missing"')
    assert h.hint == IMAGE_HINT
    assert h.details["pod"] == "frontend-7f8f9dff9-q999w"
    assert h.details["container"] == "frontend"
    # An old pod being deleted by the rollout does not count.
    leaving = changed(POD_IMAGE_PULL_BACKOFF, metadata__deletionTimestamp="2026-11-23T21:45Z")
    check(assess(DEPLOYMENT_STARTING, [POD_READY, leaving]), "progressing")


def test_deployment_not_observed_wins_over_old_pods() -> None:
    # A new spec (e.g. a fixed image) may replace the failing pods: wait for it.
    check(assess(DEPLOYMENT_JUST_CHANGED, [POD_CRASH_LOOP]), "progressing", "NotObserved")


def test_stateful_set_states() -> None:
    check(assess(STATEFUL_SET_READY), "healthy", "Ready")
    check(assess(STATEFUL_SET_NEW), "progressing", "ReplicasNotReady")
    check(assess(STATEFUL_SET_ROLLING), "progressing", "ReplicasNotReady")
    h = check(assess(STATEFUL_SET_ROLLED_NOT_CURRENT), "progressing", "RollingUpdate")
    assert "postgres-5df458d56f" in h.message
    check(assess(STATEFUL_SET_ROLLED), "healthy")
    check(assess(changed(STATEFUL_SET_READY, metadata__generation=2)), "progressing",
          "NotObserved")
    check(assess(changed(STATEFUL_SET_READY, spec__replicas=3)), "progressing", "Scaling")
    check(assess(STATEFUL_SET_NEW, [POD_SECRET_MISSING]), "unhealthy",
          "CreateContainerConfigError")


def test_stateful_set_partition_and_on_delete() -> None:
    three = changed(STATEFUL_SET_ROLLED_NOT_CURRENT, spec__replicas=3, status__replicas=3,
                    status__readyReplicas=3, status__updatedReplicas=1)
    partitioned = changed(three, spec__updateStrategy={
        "type": "RollingUpdate", "rollingUpdate": {"partition": 2}})
    check(assess(partitioned), "healthy")
    check(assess(changed(partitioned, status__updatedReplicas=0)), "progressing",
          "RollingUpdate")
    check(assess(changed(three, spec__updateStrategy={"type": "OnDelete"})), "healthy")


def test_daemon_set_states() -> None:
    check(assess(DAEMON_SET_READY), "healthy")
    h = check(assess(DAEMON_SET_ROLLING), "progressing", "RollingUpdate")
    assert "1 of 3 pods updated" in h.message
    check(assess(DAEMON_SET_NO_NODES), "healthy")
    check(assess(changed(DAEMON_SET_READY, status__observedGeneration=2)), "progressing",
          "NotObserved")
    check(assess(DAEMON_SET_ROLLING, [POD_CRASH_LOOP]), "unhealthy", "CrashLoopBackOff")


def test_replica_set_states() -> None:
    check(assess(REPLICA_SET_READY), "healthy")
    check(assess(REPLICA_SET_NEW), "progressing", "ReplicasNotReady")
    check(assess(changed(REPLICA_SET_READY, spec__replicas=1)), "progressing", "Scaling")
    check(assess(REPLICA_SET_QUOTA), "unhealthy", "FailedCreate")
    check(assess(REPLICA_SET_NEW, [POD_ERR_IMAGE_PULL]), "unhealthy", "ErrImagePull")


def test_job_states() -> None:
    h = check(assess(JOB_RUNNING), "progressing", "Running")
    assert h.details == {"active": 1, "succeeded": 0, "failed": 0}
    failed = check(assess(JOB_FAILED), "unhealthy", "BackoffLimitExceeded")
    assert failed.message == "Job has reached the specified backoff limit"
    assert "BackoffLimitExceeded" in failed.hint
    check(assess(JOB_COMPLETE), "healthy", "Complete")
    check(assess(JOB_RUNNING, [POD_IMAGE_PULL_BACKOFF]), "unhealthy", "ImagePullBackOff")
    check(assess(changed(JOB_RUNNING, spec__suspend=True)), "suspended", "Suspended")


# -- pods ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pod", [POD_IMAGE_PULL_BACKOFF, POD_ERR_IMAGE_PULL, POD_INVALID_IMAGE],
                         ids=lambda p: p["status"]["containerStatuses"][0]["state"]["waiting"]
                         ["reason"])
def test_pod_image_problems(pod: Body) -> None:
    waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    h = check(assess(pod), "unhealthy", waiting["reason"])
    assert h.hint == IMAGE_HINT
    assert h.details["message"] == waiting["message"]
    assert h.details["image"] == "nginx:1.25"
    assert waiting["message"] in h.message


def test_pod_crash_loop_hint_has_termination_exit_code_and_restarts() -> None:
    h = check(assess(POD_CRASH_LOOP), "unhealthy", "CrashLoopBackOff")
    assert "OOMKilled" in h.hint
    assert "exit code 137" in h.hint
    assert "5 restart(s)" in h.hint
    assert h.details["lastTermination"] == {"reason": "OOMKilled", "exitCode": 137}
    assert h.details["restartCount"] == 5
    assert "back-off 5m0s restarting failed container=frontend" in h.message
    no_history = changed(POD_CRASH_LOOP)
    no_history["status"]["containerStatuses"][0]["lastState"] = {}
    assert "5 restart(s)" in assess(no_history).hint


@pytest.mark.parametrize(("pod", "hint", "missing"), [
    (POD_SECRET_MISSING, "missing ConfigMap or Secret: db-credentials",
     {"kind": "Secret", "name": "db-credentials"}),
    (POD_CONFIGMAP_MISSING, "missing ConfigMap or Secret: frontend-config",
     {"kind": "ConfigMap", "name": "frontend-config"}),
    (POD_KEY_MISSING, "missing ConfigMap or Secret key: password in Secret cap/postgres",
     {"kind": "Secret", "name": "postgres", "key": "password"}),
], ids=["secret", "configmap", "key"])
def test_pod_config_errors_name_what_is_missing(pod: Body, hint: str,
                                                missing: dict[str, str]) -> None:
    h = check(assess(pod), "unhealthy", "CreateContainerConfigError")
    assert h.hint == hint
    assert h.details["missing"] == missing


def test_pod_config_error_without_a_name_gets_the_generic_hint() -> None:
    pod = waiting_pod("CreateContainerConfigError",
                      "container has runAsNonRoot and image will run as root")
    assert assess(pod).hint == CONFIG_HINT


def test_pod_unschedulable_turns_unhealthy_after_the_threshold() -> None:
    early = check(assess(POD_UNSCHEDULABLE, now=NOW, pending_threshold=60),
                  "progressing", "Unschedulable")
    assert early.details["unhealthyAt"] == "2026-11-23T21:45:32Z"
    late = check(assess(POD_UNSCHEDULABLE, now=NOW + timedelta(seconds=40),
                        pending_threshold=60), "unhealthy", "Unschedulable")
    assert late.hint == "unschedulable: 0/3 nodes are available: 3 Insufficient memory."
    assert late.message == ("pod redis-78bc768cdd-nrh7r: Unschedulable: 0/3 nodes are "
                            "available: 3 Insufficient memory.")
    assert late.details["pendingSeconds"] == 68
    check(assess(POD_UNSCHEDULABLE, now=NOW, pending_threshold=10), "unhealthy")
    # Without a clock the pod counts as just created.
    check(assess(POD_UNSCHEDULABLE, pending_threshold=10), "progressing")
    assert unschedulable_deadline(POD_UNSCHEDULABLE, 60) == datetime(
        2026, 11, 23, 21, 45, 32, tzinfo=UTC)
    assert unschedulable_deadline(POD_PENDING, 60) is None


def test_workload_fails_fast_on_an_unschedulable_pod_past_the_threshold() -> None:
    late = NOW + timedelta(minutes=5)
    h = check(assess(DEPLOYMENT_STARTING, [POD_UNSCHEDULABLE], now=late), "unhealthy",
              "Unschedulable")
    assert "redis-78bc768cdd-nrh7r" in h.message
    early = check(assess(DEPLOYMENT_STARTING, [POD_UNSCHEDULABLE], now=NOW), "progressing",
                  "Unschedulable")
    assert early.message == ("pod redis-78bc768cdd-nrh7r: Unschedulable: 0/3 nodes are "
                             "available: 3 Insufficient memory. (unhealthy from "
                             "2026-11-23T21:45:32Z)")
    assert early.details["unhealthyAt"] == "2026-11-23T21:45:32Z"
    # Only while the workload is progressing anyway; never hides a verdict.
    check(assess(DEPLOYMENT_READY, [POD_UNSCHEDULABLE], now=NOW), "healthy")
    check(assess(JOB_RUNNING, [POD_UNSCHEDULABLE], now=NOW), "progressing", "Unschedulable")


def test_pod_other_states() -> None:
    check(assess(POD_READY), "healthy", "Ready")
    check(assess(POD_PENDING), "progressing", "Pending")
    check(assess(POD_CREATING), "progressing", "ContainerCreating")
    check(assess(POD_SUCCEEDED), "healthy", "Completed")
    failed = check(assess(POD_FAILED), "unhealthy")
    assert "exited with code 2" in failed.message
    running_unready = changed(POD_READY, status__conditions=_NOT_READY)
    running_unready["status"]["containerStatuses"][0]["ready"] = False
    check(assess(running_unready), "progressing", "ContainersNotReady")
    check(assess(changed(POD_READY, metadata__deletionTimestamp="2026-11-23T21:46:00Z")),
          "progressing", "Terminating")


def test_init_container_problems_count() -> None:
    pod = changed(POD_PENDING, status__initContainerStatuses=[
        {"name": "migrate", "ready": False, "restartCount": 0, "image": "migrate:0.0-missing",
         "state": {"waiting": {"reason": "ImagePullBackOff",
                               "message": 'Back-off pulling image "migrate:0.0-missing"'}}}])
    h = check(assess(pod), "unhealthy", "ImagePullBackOff")
    assert h.details["container"] == "migrate"


# -- other kinds ---------------------------------------------------------------------------------


def test_claims() -> None:
    check(assess(CLAIM_PENDING), "progressing", "Pending")
    check(assess(CLAIM_BOUND), "healthy", "Bound")
    check(assess(CLAIM_LOST), "unhealthy", "ClaimLost")


def test_services_and_ingresses() -> None:
    check(assess(SERVICE_CLUSTER_IP), "healthy")
    check(assess(SERVICE_LB_PENDING), "progressing", "NoAddress")
    assert assess(SERVICE_LB_READY).message == "203.0.113.10"
    check(assess(SERVICE_LB_READY), "healthy")
    check(assess(INGRESS_PENDING), "progressing", "NoAddress")
    check(assess(INGRESS_READY), "healthy")


def test_custom_resources_follow_ready_stalled_and_generation() -> None:
    check(assess(CERTIFICATE_READY), "healthy", "Ready")
    h = check(assess(CERTIFICATE_ISSUING), "progressing", "DoesNotExist")
    assert "Issuing" in h.message
    check(assess(KUSTOMIZATION_STALLED), "unhealthy", "BuildFailed")
    check(assess(WIDGET_NOT_OBSERVED), "progressing", "NotObserved")


@pytest.mark.parametrize("obj", [
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "cap"},
     "data": {"a": "b"}},
    {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "cap"},
     "type": "Opaque", "data": {"password": "Y29uZHVjdG9y"}},
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "cap"},
     "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
     "metadata": {"name": "r", "namespace": "cap"}, "rules": []},
], ids=lambda o: o["kind"])
def test_other_kinds_are_healthy_once_they_exist(obj: Body) -> None:
    check(assess(obj), "healthy", "Exists")


def test_a_malformed_status_is_unknown_not_a_crash() -> None:
    check(assess(changed(DEPLOYMENT_READY, status__updatedReplicas="many")), "unknown",
          "UnreadableStatus")


# -- services and RBAC --------------------------------------------------------------------------


def test_a_service_is_the_worst_of_its_objects() -> None:
    healthy = ObjectHealth("healthy", "Ready", "")
    progressing = ObjectHealth("progressing", "RollingUpdate", "1 of 2 replicas updated")
    unknown = ObjectHealth("unknown", "NotObserved", "not observed yet")
    broken = assess(POD_CRASH_LOOP)
    s = aggregate("frontend", "cap", [("cap/Service/frontend", healthy),
                                      ("cap/Deployment/frontend", progressing),
                                      ("cap/Deployment/web", broken),
                                      ("cap/ConfigMap/x", unknown)],
                  deployed=True, last_checked="2026-11-23T21:45:00Z")
    assert s.status == "unhealthy"
    assert s.reason == "CrashLoopBackOff"
    assert s.message.startswith("cap/Deployment/web: pod frontend-7f8f9dff9-q999w")
    assert s.hint == broken.hint
    assert [k for k, _ in s.failing] == ["cap/Deployment/web", "cap/Deployment/frontend",
                                         "cap/ConfigMap/x"]
    assert aggregate("x", "cap", [("a", healthy), ("b", unknown), ("c", progressing)],
                     deployed=True, last_checked="").status == "progressing"
    assert aggregate("x", "cap", [("a", healthy), ("b", unknown)], deployed=True,
                     last_checked="").status == "unknown"
    ok = aggregate("x", "cap", [("a", healthy)], deployed=True, last_checked="")
    assert ok.status == "healthy" and ok.failing == ()
    down = aggregate("x", "cap", [("a", broken)], deployed=False, last_checked="")
    assert down.status == "down"


def test_service_health_serializes_for_the_api() -> None:
    s = aggregate("frontend", "cap", [("cap/Deployment/frontend", assess(
        DEPLOYMENT_STARTING, [POD_IMAGE_PULL_BACKOFF]))], deployed=True,
        last_checked="2026-11-23T21:45:00Z")
    out = s.to_dict()
    assert out["name"] == "frontend" and out["namespace"] == "cap"
    assert out["status"] == "unhealthy"
    assert out["lastChecked"] == "2026-11-23T21:45:00Z"
    assert out["hint"] == IMAGE_HINT
    assert out["objects"][0]["resource"] == "cap/Deployment/frontend"
    assert out["objects"][0]["details"]["container"] == "frontend"


FORBIDDEN_MESSAGE = ('deployments.apps "frontend" is forbidden: User '
                     '"system:serviceaccount:conductor:conductor" cannot patch resource '
                     '"deployments" in API group "apps" in the namespace "cap"')


def test_forbidden_answers_become_rbac_problems() -> None:
    assert parse_forbidden(FORBIDDEN_MESSAGE) == ("patch", "deployments.apps")
    assert parse_forbidden('pods is forbidden: User "u" cannot list resource "pods" in API '
                           'group "" in the namespace "cap"') == ("list", "pods")
    assert parse_forbidden("connection refused") is None
    h = rbac_problem("patch", "deployments.apps", FORBIDDEN_MESSAGE)
    assert h.status == "unhealthy" and h.reason == "Forbidden"
    assert h.hint.startswith("RBAC: the controller may not patch deployments.apps")
    assert h.details == {"verb": "patch", "resource": "deployments.apps"}


# -- suspended ----------------------------------------------------------------------------------
# A paused rollout and a suspended Job or CronJob wait for a person, not for time: neither
# progress nor failure (the shapes as kube-controller-manager leaves them).

DEPLOYMENT_PAUSED = changed(
    DEPLOYMENT_ROLLING, spec__paused=True, status__conditions=[
        {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
         "message": "Deployment has minimum availability."},
        {"type": "Progressing", "status": "Unknown", "reason": "DeploymentPaused",
         "message": "Deployment is paused"}])
CRON_JOB: Body = {
    "apiVersion": "batch/v1beta1", "kind": "CronJob",
    "metadata": {"name": "backup", "namespace": "cap", "generation": 1,
                 "creationTimestamp": CREATED, "labels": OUR_LABELS},
    "spec": {"schedule": "*/5 * * * *", "concurrencyPolicy": "Forbid", "suspend": False,
             "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 1},
    "status": {"lastScheduleTime": "2026-11-23T21:40:00Z",
               "active": [{"kind": "Job", "namespace": "cap", "name": "backup-1795520400",
                           "apiVersion": "batch/v1", "resourceVersion": "812",
                           "uid": "5c2e1f0a-7b7d-4c55-9b1b-0d9a3c1e2f40"}]},
}


def test_paused_deployment_is_suspended_not_progressing() -> None:
    h = check(assess(DEPLOYMENT_PAUSED), "suspended", "Paused")
    assert "1 of 2 replicas updated" in h.message
    assert "spec.paused" in h.hint
    # Pausing needs the controller to see it first; a pod that cannot run still fails it.
    check(assess(changed(DEPLOYMENT_PAUSED, metadata__generation=3)), "progressing",
          "NotObserved")
    check(assess(DEPLOYMENT_PAUSED, [POD_IMAGE_PULL_BACKOFF]), "unhealthy", "ImagePullBackOff")
    check(assess(changed(DEPLOYMENT_READY, spec__paused=False)), "healthy")


def test_suspended_job_and_cron_job() -> None:
    h = check(assess(changed(JOB_RUNNING, spec__suspend=True, status={"conditions": [
        {"type": "Suspended", "status": "True", "reason": "JobSuspended",
         "message": "Job suspended"}]})), "suspended", "Suspended")
    assert "spec.suspend" in h.hint
    # A finished Job stays finished, suspended or not.
    check(assess(changed(JOB_FAILED, spec__suspend=True)), "unhealthy", "BackoffLimitExceeded")
    cron = check(assess(CRON_JOB), "healthy", "Scheduled")
    assert cron.message == "1 active job(s), last scheduled 2026-11-23T21:40:00Z"
    check(assess(changed(CRON_JOB, status={})), "healthy", "Scheduled")
    off = check(assess(changed(CRON_JOB, spec__suspend=True)), "suspended", "Suspended")
    assert "2026-11-23T21:40:00Z" in off.message
    check(assess(changed(CRON_JOB, apiVersion="batch/v1", spec__suspend=True)), "suspended")


def test_a_suspended_service_is_not_unhealthy() -> None:
    paused = assess(DEPLOYMENT_PAUSED)
    healthy = assess(SERVICE_CLUSTER_IP)
    s = aggregate("frontend", "cap", [("cap/Service/frontend", healthy),
                                      ("cap/Deployment/frontend", paused)],
                  deployed=True, last_checked="2026-11-23T21:45:00Z")
    assert (s.status, s.reason) == ("suspended", "Paused")
    assert s.message.startswith("cap/Deployment/frontend: the deployment is paused")
    assert s.hint == paused.hint and not s.healthy
    assert s.to_dict()["objects"][0]["status"] == "suspended"
    # Anything still moving or broken says more than a pause does.
    for other, status in [(ObjectHealth("unknown", "NotObserved", ""), "unknown"),
                          (ObjectHealth("progressing", "RollingUpdate", ""), "progressing"),
                          (assess(POD_CRASH_LOOP), "unhealthy")]:
        assert aggregate("x", "cap", [("a", paused), ("b", other)], deployed=True,
                         last_checked="").status == status
    assert aggregate("x", "cap", [("a", paused)], deployed=False,
                     last_checked="").status == "down"


def test_every_service_status_is_in_the_api_document_and_the_metrics() -> None:
    # A status the gauge or the OpenAPI enum does not list would read as "none of them".
    statuses = set(get_args(ServiceStatus))
    assert "suspended" in statuses
    assert set(HEALTH_STATES) == statuses
    enum = SCHEMAS["ServiceHealth"]["properties"]["status"]["enum"]
    assert set(enum) == statuses


# -- DaemonSet OnDelete, load balancers ---------------------------------------------------------


def test_daemon_set_on_delete_rollout_is_done_when_pods_are_ready() -> None:
    # The template changed (generation 4); OnDelete replaces no pod by itself.
    on_delete = changed(DAEMON_SET_READY, metadata__generation=4,
                        spec__updateStrategy={"type": "OnDelete"},
                        status__observedGeneration=4, status__updatedNumberScheduled=1)
    h = check(assess(on_delete), "healthy", "Ready")
    assert h.message == "3 of 3 pods ready (2 on the old template until deleted: OnDelete)"
    check(assess(changed(on_delete, status__numberReady=2, status__numberAvailable=2)),
          "progressing", "PodsNotReady")
    # The same status under RollingUpdate is a rollout still under way.
    check(assess(changed(on_delete, spec__updateStrategy={"type": "RollingUpdate"})),
          "progressing", "RollingUpdate")


def test_load_balancer_entries_without_an_address_count_as_assigned() -> None:
    # Some cloud controllers publish `ingress: [{}]` (the balancer exists; no ip/hostname).
    empty_entry: Body = {"loadBalancer": {"ingress": [{}]}}
    h = check(assess(changed(SERVICE_LB_PENDING, status=empty_entry)), "healthy",
              "AddressAssigned")
    assert "without an address" in h.message
    check(assess(changed(INGRESS_PENDING, status=empty_entry)), "healthy", "AddressAssigned")
    mixed = {"loadBalancer": {"ingress": [{}, {"ip": "203.0.113.10", "ports": [
        {"port": 80, "protocol": "TCP"}]}]}}
    assert assess(changed(SERVICE_LB_PENDING, status=mixed)).message == "203.0.113.10"
    check(assess(changed(SERVICE_LB_PENDING, status={"loadBalancer": {"ingress": []}})),
          "progressing", "NoAddress")


# -- containers that crash before CrashLoopBackOff ---------------------------------------------


def terminated_pod(reason: str, exit_code: int, restarts: int, *,
                   policy: str = "Always") -> Body:
    """A pod whose container just exited, as the kubelet reports it in the seconds before it
    backs off (state terminated, the previous run in lastState)."""
    run = {"exitCode": exit_code, "reason": reason, "startedAt": "2026-11-23T21:44:50Z",
           "finishedAt": "2026-11-23T21:44:51Z", "containerID": "containerd://9f1c2a"}
    pod = changed(POD_READY, metadata__name="frontend-7f8f9dff9-q999w",
                  spec__restartPolicy=policy, status__conditions=_NOT_READY)
    pod["status"]["containerStatuses"] = [{
        "name": "frontend", "state": {"terminated": run},
        "lastState": {"terminated": {**run, "startedAt": "2026-11-23T21:44:40Z",
                                     "finishedAt": "2026-11-23T21:44:41Z"}} if restarts else {},
        "ready": False, "restartCount": restarts, "image": "nginx:1.25", "imageID": "",
        "started": False}]
    return pod


def test_a_container_failing_again_after_a_restart_is_unhealthy_at_once() -> None:
    h = check(assess(terminated_pod("Error", 1, 2)), "unhealthy", "Error")
    assert h.message == ("pod frontend-7f8f9dff9-q999w: container frontend: terminated Error "
                         "(exit code 1) after 2 restart(s)")
    assert h.hint == ("container crashing: terminated Error (exit code 1), 2 restart(s): "
                      "check its logs")
    assert h.details["lastTermination"] == {"reason": "Error", "exitCode": 1}
    oom = check(assess(terminated_pod("OOMKilled", 137, 1)), "unhealthy", "OOMKilled")
    assert "resources.limits.memory" in oom.hint
    # Its workload fails at once, not when the kubelet's back-off starts.
    check(assess(DEPLOYMENT_STARTING, [POD_READY, terminated_pod("Error", 1, 1)]),
          "unhealthy", "Error")
    check(assess(terminated_pod("Error", 1, 3, policy="OnFailure")), "unhealthy", "Error")


def test_a_first_exit_or_a_clean_exit_is_not_a_crash() -> None:
    # The first failure may be transient: the kubelet restarts it.
    check(assess(terminated_pod("Error", 1, 0)), "progressing")
    # OnFailure: a clean exit is done, not crashing.
    check(assess(terminated_pod("Completed", 0, 1, policy="OnFailure")), "progressing")
    # Never: the pod's phase tells (Failed), not a restart that will not happen.
    failed = changed(terminated_pod("Error", 1, 0, policy="Never"), status__phase="Failed")
    check(assess(failed), "unhealthy", "Failed")
    # Init containers that finished are done, whatever the restart count of the pod.
    init_done = changed(POD_READY, status__initContainerStatuses=[
        {"name": "migrate", "ready": True, "restartCount": 1, "image": "migrate:1",
         "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}])
    check(assess(init_done), "healthy", "Ready")
    init_failing = changed(POD_PENDING, status__initContainerStatuses=[
        {"name": "migrate", "ready": False, "restartCount": 1, "image": "migrate:1",
         "state": {"terminated": {"exitCode": 3, "reason": "Error"}}}])
    check(assess(init_failing), "unhealthy", "Error")



def test_an_evicted_pod_left_behind_does_not_fail_its_workload() -> None:
    # The kubelet evicted it after it had crashed once; the ReplicaSet already replaced it,
    # and the Failed pod stays until garbage-collected.
    evicted = changed(terminated_pod("Error", 137, 1), status__phase="Failed",
                      status__reason="Evicted",
                      status__message="The node was low on resource: memory. Container "
                                      "frontend was using 1834604Ki, which exceeds its "
                                      "request of 128Mi.")
    check(assess(DEPLOYMENT_READY, [POD_READY, evicted]), "healthy", "Available")
    h = check(assess(evicted), "unhealthy", "Evicted")
    assert h.message.startswith("pod frontend-7f8f9dff9-q999w: The node was low on resource: "
                                "memory.")
    assert h.hint.startswith("evicted by its node: The node was low on resource: memory.")
