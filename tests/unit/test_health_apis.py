"""Health of the kinds that report through conditions another controller writes:
HorizontalPodAutoscaler, APIService, CustomResourceDefinition.

The bodies are as kube-apiserver and kube-controller-manager 1.20 write them (the HPA
controller's condition reasons and messages, the apiextensions naming and establishing
controllers', the aggregator's availability checks); only fields the rules could read are
kept. An HPA read as autoscaling/v1 carries v2's conditions in an annotation.
"""

from __future__ import annotations

import json
from typing import Any

from controller.model.health import HPA_METRICS_HINT, ObjectHealth, aggregate, assess

Body = dict[str, Any]


def check(h: ObjectHealth, status: str, reason: str | None = None) -> ObjectHealth:
    assert h.status == status, h
    if reason is not None:
        assert h.reason == reason, h
    return h


def cond(type_: str, status: str, reason: str, message: str) -> Body:
    return {"type": type_, "status": status, "lastTransitionTime": "2026-11-23T21:44:50Z",
            "reason": reason, "message": message}


GOT_SCALE = cond("AbleToScale", "True", "SucceededGetScale",
                 "the HPA controller was able to get the target's current scale")
READY_FOR_SCALE = cond("AbleToScale", "True", "ReadyForNewScale",
                       "recommended size matches current size")
VALID_METRIC = cond("ScalingActive", "True", "ValidMetricFound",
                    "the HPA was able to successfully calculate a replica count from cpu "
                    "resource utilization (percentage of request)")
WITHIN_RANGE = cond("ScalingLimited", "False", "DesiredWithinRange",
                    "the desired count is within the acceptable range")
# No metrics-server in the cluster: the most common broken HPA.
NO_METRICS_API = cond(
    "ScalingActive", "False", "FailedGetResourceMetric",
    "the HPA was unable to compute the replica count: failed to get cpu utilization: unable "
    "to get metrics for resource cpu: unable to fetch metrics from resource metrics API: the "
    "server could not find the requested resource (get pods.metrics.k8s.io)")
NO_REQUEST = cond(
    "ScalingActive", "False", "FailedGetResourceMetric",
    "the HPA was unable to compute the replica count: failed to get cpu utilization: missing "
    "request for cpu")
NO_TARGET = cond("AbleToScale", "False", "FailedGetScale",
                 "the HPA controller was unable to get the target's current scale: "
                 'deployments/scale.apps "frontend" not found')


def hpa(*conditions: Body, api_version: str = "autoscaling/v2beta2") -> Body:
    obj: Body = {
        "apiVersion": api_version, "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "frontend", "namespace": "cap",
                     "creationTimestamp": "2026-11-23T21:44:32Z"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                    "name": "frontend"},
                 "minReplicas": 2, "maxReplicas": 10,
                 "metrics": [{"type": "Resource", "resource": {
                     "name": "cpu", "target": {"type": "Utilization",
                                               "averageUtilization": 80}}}]},
        "status": {"currentReplicas": 2, "desiredReplicas": 2, "currentMetrics": None}}
    if api_version == "autoscaling/v1":
        # What the API server answers for the same object read as v1.
        obj["spec"] = {k: v for k, v in obj["spec"].items() if k != "metrics"}
        obj["spec"]["targetCPUUtilizationPercentage"] = 80
        if conditions:
            obj["metadata"]["annotations"] = {
                "autoscaling.alpha.kubernetes.io/conditions": json.dumps(list(conditions))}
    elif conditions:
        obj["status"]["conditions"] = list(conditions)
    return obj


def test_hpa_working_is_healthy_in_every_version() -> None:
    for version in ("autoscaling/v1", "autoscaling/v2beta1", "autoscaling/v2beta2",
                    "autoscaling/v2"):
        h = check(assess(hpa(READY_FOR_SCALE, VALID_METRIC, WITHIN_RANGE,
                             api_version=version)), "healthy", "ReadyForNewScale")
        assert h.message == "recommended size matches current size"
    stabilized = cond("AbleToScale", "True", "ScaleDownStabilized",
                      "recent recommendations were higher than current one, applying the "
                      "highest recent recommendation")
    check(assess(hpa(stabilized, VALID_METRIC, WITHIN_RANGE)), "healthy")


def test_hpa_at_its_bounds_is_healthy_and_says_so() -> None:
    at_max = cond("ScalingLimited", "True", "TooManyReplicas",
                  "the desired replica count is more than the maximum replica count")
    h = check(assess(hpa(READY_FOR_SCALE, VALID_METRIC, at_max)), "healthy")
    assert "TooManyReplicas" in h.message


def test_hpa_without_metrics_is_unhealthy_with_a_hint() -> None:
    for version in ("autoscaling/v1", "autoscaling/v2beta2"):
        h = check(assess(hpa(GOT_SCALE, NO_METRICS_API, api_version=version)), "unhealthy",
                  "FailedGetResourceMetric")
        assert "pods.metrics.k8s.io" in h.message
        assert h.hint == HPA_METRICS_HINT
    check(assess(hpa(GOT_SCALE, NO_REQUEST)), "unhealthy", "FailedGetResourceMetric")
    selector = cond("ScalingActive", "False", "InvalidSelector",
                    "the HPA target's scale is missing a selector")
    h = check(assess(hpa(GOT_SCALE, selector)), "unhealthy", "InvalidSelector")
    assert "selector" in h.hint


def test_hpa_whose_target_is_missing_is_unhealthy_and_names_it() -> None:
    h = check(assess(hpa(NO_TARGET)), "unhealthy", "FailedGetScale")
    assert '"frontend" not found' in h.message
    assert "Deployment/frontend" in h.hint and "scaleTargetRef" in h.hint
    failed_update = cond("AbleToScale", "False", "FailedUpdateScale",
                         'the HPA controller was unable to update the target scale: '
                         'deployments.apps "frontend" is forbidden')
    h = check(assess(hpa(failed_update, VALID_METRIC)), "unhealthy", "FailedUpdateScale")
    assert "cannot update" in h.hint


def test_hpa_just_rescaled_into_bounds_is_healthy() -> None:
    # The target was below minReplicas: the controller scaled it without reading metrics,
    # so the failed ScalingActive is left from an earlier sync.
    rescaled = cond("AbleToScale", "True", "SucceededRescale",
                    "the HPA controller was able to update the target scale to 2")
    check(assess(hpa(rescaled, NO_METRICS_API)), "healthy", "SucceededRescale")


def test_hpa_disabled_by_a_target_at_zero_is_healthy() -> None:
    disabled = cond("ScalingActive", "False", "ScalingDisabled",
                    "scaling is disabled since the replica count of the target is zero")
    h = check(assess(hpa(GOT_SCALE, disabled)), "healthy")
    assert h.message == disabled["message"]


def test_hpa_not_reported_yet_or_backing_off_is_progressing() -> None:
    check(assess(hpa()), "progressing", "WaitingToAutoscale")
    check(assess(hpa(api_version="autoscaling/v1")), "progressing", "WaitingToAutoscale")
    check(assess(hpa(VALID_METRIC, WITHIN_RANGE)), "progressing", "WaitingToAutoscale")
    backoff = cond("AbleToScale", "False", "BackoffBoth",
                   "the time since the previous scale is still within both the downscale "
                   "and upscale forbidden windows")
    check(assess(hpa(backoff, VALID_METRIC)), "progressing", "BackoffBoth")


def test_hpa_with_an_unreadable_annotation_is_unknown() -> None:
    obj = hpa(api_version="autoscaling/v1")
    obj["metadata"]["annotations"] = {"autoscaling.alpha.kubernetes.io/conditions": "[{"}
    check(assess(obj), "unknown", "UnreadableStatus")


def test_a_broken_hpa_makes_its_service_unhealthy() -> None:
    s = aggregate("frontend", "cap", [("cap/HorizontalPodAutoscaler/frontend",
                                       assess(hpa(GOT_SCALE, NO_METRICS_API)))],
                  deployed=True, last_checked="")
    assert (s.status, s.reason, s.hint) == ("unhealthy", "FailedGetResourceMetric",
                                            HPA_METRICS_HINT)


# -- APIService ----------------------------------------------------------------------------------


def api_service(*conditions: Body, local: bool = False) -> Body:
    spec: Body = {"group": "metrics.k8s.io", "version": "v1beta1", "groupPriorityMinimum": 100,
                  "versionPriority": 100}
    if not local:
        spec.update(service={"namespace": "kube-system", "name": "metrics-server",
                             "port": 443}, insecureSkipTLSVerify=True)
    return {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": "v1beta1.metrics.k8s.io"}, "spec": spec,
            "status": {"conditions": list(conditions)} if conditions else {}}


def test_api_service_available() -> None:
    check(assess(api_service(cond("Available", "True", "Passed", "all checks passed"))),
          "healthy", "Passed")
    check(assess(api_service(cond("Available", "True", "Local",
                                  "Local APIServices are always available"), local=True)),
          "healthy", "Local")


def test_api_service_unavailable_is_progressing_and_points_at_its_service() -> None:
    missing = cond("Available", "False", "ServiceNotFound",
                   'service/metrics-server in "kube-system" is not present')
    h = check(assess(api_service(missing)), "progressing", "ServiceNotFound")
    assert "kube-system/metrics-server" in h.hint
    failing = cond("Available", "False", "FailedDiscoveryCheck",
                   "failing or missing response from https://10.0.0.12:4443/apis/metrics.k8s."
                   "io/v1beta1: Get \"https://10.0.0.12:4443/apis/metrics.k8s.io/v1beta1\": "
                   "dial tcp 10.0.0.12:4443: connect: connection refused")
    h = check(assess(api_service(failing)), "progressing", "FailedDiscoveryCheck")
    assert "connection refused" in h.message
    check(assess(api_service()), "progressing", "NotObserved")
    check(assess({**api_service(failing), "apiVersion": "apiregistration.k8s.io/v1beta1"}),
          "progressing")


# -- CustomResourceDefinition ---------------------------------------------------------------------


def definition(*conditions: Body) -> Body:
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.test.conductor.io", "generation": 1},
            "spec": {"group": "test.conductor.io", "scope": "Namespaced",
                     "names": {"plural": "widgets", "singular": "widget", "kind": "Widget",
                               "listKind": "WidgetList"}},
            "status": {"conditions": list(conditions),
                       "acceptedNames": {"plural": "", "kind": ""}, "storedVersions": ["v1"]}}


NAMES_OK = cond("NamesAccepted", "True", "NoConflicts", "no conflicts found")


def test_crd_established_is_healthy() -> None:
    check(assess(definition(NAMES_OK, cond("Established", "True", "InitialNamesAccepted",
                                           "the initial names have been accepted"))),
          "healthy", "Established")


def test_crd_installing_is_progressing() -> None:
    check(assess(definition(NAMES_OK, cond("Established", "False", "Installing",
                                           "the initial names have been accepted"))),
          "progressing", "Installing")
    check(assess(definition()), "progressing", "NotEstablished")


def test_crd_whose_names_are_taken_is_unhealthy() -> None:
    taken = cond("NamesAccepted", "False", "PluralConflict", '"widgets" is already in use')
    h = check(assess(definition(taken, cond("Established", "False", "NotAccepted",
                                            "not all names are accepted"))),
              "unhealthy", "PluralConflict")
    assert '"widgets" is already in use' in h.hint


def test_crd_with_a_non_structural_schema_is_unhealthy() -> None:
    schema = cond("NonStructuralSchema", "True", "Violations",
                  '[spec.validation.openAPIV3Schema.properties[spec].type: Required value: '
                  'must not be empty for specified object fields]')
    obj = {**definition(NAMES_OK, cond("Established", "True", "InitialNamesAccepted", "")),
           "apiVersion": "apiextensions.k8s.io/v1beta1"}
    obj["status"]["conditions"].append(schema)
    h = check(assess(obj), "unhealthy", "Violations")
    assert "structural" in h.hint
