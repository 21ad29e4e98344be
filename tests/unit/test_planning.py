"""Planning decisions on realistic bodies: what is applied, what is pruned, what is recorded.

Live objects are written as the API server returns them after our server-side apply
(defaulted fields, normalized quantities, status, managedFields of several managers), since
the point of the digest + owned-fields design is to stay quiet on exactly those differences.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.config import PruneSettings
from controller.errors import ValidationError
from controller.model.instance import InventoryEntry, key_from_str, key_to_str
from controller.model.objects import (
    ANNOTATION_PRUNE,
    LABEL_APP,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_SERVICE,
    MANAGED_BY,
    PRUNE_DISABLED,
    SHARED_SERVICE,
    Body,
    Manifest,
    ObjectKey,
)
from controller.model.planning import (
    ANNOTATION_DIGEST,
    OTHER_PHASE,
    IgnoreRule,
    Plan,
    digest,
    handover_body,
    live_fingerprint,
    parse_ignore_rules,
    parse_pointer,
    phase_of,
    plan,
    plan_delete,
    strip_paths,
    with_digest,
)

APP, INSTANCE, FM = "shop", "prod", "conductor"
NS = "shop-prod"
Inventory = dict[ObjectKey, InventoryEntry]


# -- bodies ---------------------------------------------------------------------------------


def ours(service: str) -> dict[str, str]:
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_APP: APP, LABEL_INSTANCE: INSTANCE,
            LABEL_SERVICE: service}


def deployment(name: str = "web", service: str = "web", image: str = "nginx:1.27",
               replicas: int = 2) -> Manifest:
    """As rendered from YAML: `cpu: 0.5` is a float, the caller set the namespace."""
    return with_digest(Manifest(service, {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": NS, "labels": ours(service)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": name, "image": image,
                    "ports": [{"containerPort": 8080}],
                    "resources": {"requests": {"cpu": 0.5, "memory": "64Mi"}},
                }]},
            },
        },
    }, source=f"{service}/deployment.yaml", line=1))


def our_deployment_fields(name: str, labels: Mapping[str, str], replicas: bool = True,
                          ) -> dict[str, Any]:
    """The fieldsV1 the API server records for our apply of `deployment()`."""
    spec: dict[str, Any] = {
        "f:selector": {},
        "f:template": {
            "f:metadata": {"f:labels": {"f:app": {}}},
            "f:spec": {"f:containers": {f'k:{{"name":"{name}"}}': {
                ".": {}, "f:image": {}, "f:name": {},
                "f:ports": {'k:{"containerPort":8080,"protocol":"TCP"}': {
                    ".": {}, "f:containerPort": {}}},
                "f:resources": {"f:requests": {"f:cpu": {}, "f:memory": {}}},
            }}},
        },
    }
    if replicas:
        spec["f:replicas"] = {}
    return {"f:metadata": {"f:annotations": {f"f:{ANNOTATION_DIGEST}": {}},
                           "f:labels": {f"f:{k}": {} for k in labels}},
            "f:spec": spec}


def served_deployment(m: Manifest) -> Body:
    """The Deployment as GET/LIST returns it after our apply and a controller's status."""
    meta, spec = m.body["metadata"], m.body["spec"]
    container = spec["template"]["spec"]["containers"][0]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {
            "name": meta["name"], "namespace": meta["namespace"],
            "uid": "0b4f6a53-8d8e-4a8e-9b53-2f3c1c9f7e21", "resourceVersion": "48213",
            "generation": 1, "creationTimestamp": "2024-05-01T10:00:00Z",
            "labels": dict(meta["labels"]),
            "annotations": {**meta["annotations"], "deployment.kubernetes.io/revision": "1"},
            "managedFields": [
                {"manager": FM, "operation": "Apply", "apiVersion": "apps/v1",
                 "time": "2024-05-01T10:00:00Z", "fieldsType": "FieldsV1",
                 "fieldsV1": our_deployment_fields(meta["name"], meta["labels"])},
                {"manager": "kube-controller-manager", "operation": "Update",
                 "apiVersion": "apps/v1", "time": "2024-05-01T10:00:07Z",
                 "fieldsType": "FieldsV1", "subresource": "status",
                 "fieldsV1": {
                     "f:metadata": {"f:annotations": {
                         ".": {}, "f:deployment.kubernetes.io/revision": {}}},
                     "f:status": {"f:availableReplicas": {}, "f:conditions": {},
                                  "f:observedGeneration": {}, "f:readyReplicas": {},
                                  "f:replicas": {}, "f:updatedReplicas": {}}}},
            ],
        },
        "spec": {
            "replicas": spec["replicas"],
            "selector": spec["selector"],
            "template": {
                "metadata": {"creationTimestamp": None,
                             "labels": dict(spec["template"]["metadata"]["labels"])},
                "spec": {
                    "containers": [{
                        "name": container["name"], "image": container["image"],
                        "imagePullPolicy": "IfNotPresent",
                        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                        "resources": {"requests": {"cpu": "500m", "memory": "64Mi"}},
                        "terminationMessagePath": "/dev/termination-log",
                        "terminationMessagePolicy": "File",
                    }],
                    "dnsPolicy": "ClusterFirst", "restartPolicy": "Always",
                    "schedulerName": "default-scheduler", "securityContext": {},
                    "terminationGracePeriodSeconds": 30,
                },
            },
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "revisionHistoryLimit": 10,
            "progressDeadlineSeconds": 600,
        },
        "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2,
                   "readyReplicas": 2, "availableReplicas": 2,
                   "conditions": [{"type": "Available", "status": "True",
                                   "reason": "MinimumReplicasAvailable"}]},
    }


def simple(kind: str, name: str, service: str, api_version: str = "v1",
           namespace: str | None = NS, **extra: Any) -> Manifest:
    meta: dict[str, Any] = {"name": name, "labels": ours(service)}
    if namespace:
        meta["namespace"] = namespace
    return with_digest(Manifest(service, {"apiVersion": api_version, "kind": kind,
                                          "metadata": meta, **extra}))


def _fields_of(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {}
    return {f"f:{k}": _fields_of(v) for k, v in value.items()}


def served(m: Manifest) -> Body:
    """A generic object as the API server returns it after our apply."""
    body = copy.deepcopy(m.body)
    applied = {k: v for k, v in body.items() if k not in ("apiVersion", "kind")}
    applied["metadata"] = {k: v for k, v in body["metadata"].items()
                           if k in ("labels", "annotations")}
    body["metadata"].update({
        "uid": f"uid-{m.key.name}", "resourceVersion": "101",
        "creationTimestamp": "2024-05-01T10:00:00Z",
        "managedFields": [{"manager": FM, "operation": "Apply",
                           "apiVersion": body["apiVersion"], "time": "2024-05-01T10:00:00Z",
                           "fieldsType": "FieldsV1", "fieldsV1": _fields_of(applied)}],
    })
    return body


def recorded(m: Manifest, live: Body) -> InventoryEntry:
    """The inventory entry the caller wrote after applying `m` and reading back `live`."""
    return InventoryEntry(m.service, m.api_version, digest(m.body), live_fingerprint(live, m.body))


def make_plan(desired: list[Manifest], live: Mapping[ObjectKey, Body],
              inventory: Mapping[ObjectKey, InventoryEntry], *,
              services: set[str] | None = None,
              prune: PruneSettings | None = None) -> Plan:
    return plan(desired, live, inventory, services=services, settings=prune or PruneSettings(),
                field_manager=FM, app=APP, instance=INSTANCE)


def only(p: Plan) -> tuple[str, str]:
    assert len(p.items) == 1, p.items
    return p.items[0].action, p.items[0].reason


def deployed(*manifests: Manifest) -> tuple[dict[ObjectKey, Body], Inventory]:
    """Live state and inventory after a clean pass that applied `manifests`."""
    live, inventory = {}, {}
    for m in manifests:
        body = served_deployment(m) if m.key.kind == "Deployment" else served(m)
        live[m.key] = body
        inventory[m.key] = recorded(m, body)
    return live, inventory


# -- classification -------------------------------------------------------------------------


def test_create_when_nothing_is_live() -> None:
    web = deployment()
    p = make_plan([web], {}, {})
    assert only(p) == ("create", "missing")
    assert p.apply_phases() == [[p.items[0]]]
    assert p.items[0].manifest is not None
    assert p.items[0].manifest.body["metadata"]["annotations"][ANNOTATION_DIGEST] == \
        digest(web.body)


def test_server_defaulting_and_normalized_quantities_are_unchanged() -> None:
    web = deployment()
    live, inventory = deployed(web)
    body = live[web.key]
    assert web.body["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"][
        "cpu"] == 0.5
    assert body["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"][
        "cpu"] == "500m"
    # Render again from scratch, as the next pass does: same digest, same fields.
    p = make_plan([deployment()], live, inventory)
    assert only(p) == ("unchanged", "current")
    assert p.is_noop
    assert p.apply_phases() == [] and p.prune_phases() == []
    assert p.counts() == {"create": 0, "update": 0, "unchanged": 1, "prune": 0, "keep": 0,
                          "gone": 0}
    assert p.next_inventory({}) == inventory


def test_a_changed_render_is_an_update() -> None:
    live, inventory = deployed(deployment(image="nginx:1.27"))
    p = make_plan([deployment(image="nginx:1.28")], live, inventory)
    assert only(p) == ("update", "changed")
    assert not p.is_noop


def test_a_stale_digest_on_the_rendered_body_is_restamped() -> None:
    web = deployment()
    live, inventory = deployed(web)
    stale = copy.deepcopy(web.body)
    stale["metadata"]["annotations"][ANNOTATION_DIGEST] = "0123456789abcdef"
    stale["spec"]["replicas"] = 3
    p = make_plan([Manifest("web", stale)], live, inventory)
    assert only(p) == ("update", "changed")
    manifest = p.items[0].manifest
    assert manifest is not None
    assert manifest.body["metadata"]["annotations"][ANNOTATION_DIGEST] == digest(stale)


def test_kubectl_scale_takes_our_field_and_is_drift() -> None:
    web = deployment()
    live, inventory = deployed(web)
    body = live[web.key]
    body["spec"]["replicas"] = 5
    ours_entry = body["metadata"]["managedFields"][0]
    ours_entry["fieldsV1"] = our_deployment_fields("web", web.body["metadata"]["labels"],
                                                   replicas=False)
    body["metadata"]["managedFields"].append({
        "manager": "kubectl", "operation": "Update", "apiVersion": "apps/v1",
        "time": "2024-05-02T08:00:00Z", "fieldsType": "FieldsV1", "subresource": "scale",
        "fieldsV1": {"f:spec": {"f:replicas": {}}}})
    p = make_plan([deployment()], live, inventory)
    assert only(p) == ("update", "drift")
    new = p.next_inventory({web.key: "f00dfeedf00dfeed"})
    assert new[web.key].fields == "f00dfeedf00dfeed"


def test_changes_by_others_to_fields_we_do_not_own_are_not_drift() -> None:
    web = deployment()
    live, inventory = deployed(web)
    body = live[web.key]
    body["metadata"]["annotations"]["team.example.com/on-call"] = "alice"
    body["metadata"]["resourceVersion"] = "50120"
    body["metadata"]["managedFields"].append({
        "manager": "kubectl-edit", "operation": "Update", "apiVersion": "apps/v1",
        "time": "2024-05-02T08:00:00Z", "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:annotations": {"f:team.example.com/on-call": {}}}}})
    assert only(make_plan([deployment()], live, inventory)) == ("unchanged", "current")


def test_live_fingerprint_covers_only_the_paths_we_set() -> None:
    web = deployment()
    body = served_deployment(web)
    ours = live_fingerprint(body, web.body)
    assert ours and len(ours) == 16
    # Server-side additions outside our paths do not count...
    body["status"] = {"replicas": 2, "readyReplicas": 1}
    body["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "3"
    body["metadata"]["resourceVersion"] = "999"
    body["metadata"]["managedFields"].append({"manager": "kube-controller-manager",
                                              "operation": "Update", "fieldsV1": {}})
    assert live_fingerprint(body, web.body) == ours
    # ...a value we set does, even when ownership is not moved (1.20's scale subresource).
    body["spec"]["replicas"] = 7
    assert live_fingerprint(body, web.body) != ours
    # A list we set that gained an element counts as changed.
    body["spec"]["replicas"] = web.body["spec"]["replicas"]
    assert live_fingerprint(body, web.body) == ours
    containers = body["spec"]["template"]["spec"]["containers"]
    containers.append({"name": "sidecar", "image": "envoy"})
    assert live_fingerprint(body, web.body) != ours


def test_live_object_without_inventory_entry_is_adopted() -> None:
    """A crash between the apply and the inventory write: re-apply once to learn fields."""
    web = deployment()
    live, _ = deployed(web)
    p = make_plan([deployment()], live, {})
    assert only(p) == ("update", "adopt")
    fields = live_fingerprint(live[web.key], web.body)
    assert p.next_inventory({web.key: fields}) == {web.key: recorded(web, live[web.key])}


def test_foreign_object_at_a_desired_key_is_taken_over() -> None:
    web = deployment()
    foreign = served_deployment(web)
    foreign["metadata"]["labels"] = {"app": "web"}
    del foreign["metadata"]["annotations"][ANNOTATION_DIGEST]
    foreign["metadata"]["managedFields"][0]["manager"] = "kubectl-client-side-apply"
    p = make_plan([web], {web.key: foreign}, {})
    assert only(p) == ("update", "changed")


def test_duplicate_desired_objects_are_rejected() -> None:
    a = replace(deployment(), source="web/a.yaml", line=1)
    b = replace(deployment(), source="web/b.yaml", line=7)
    with pytest.raises(ValidationError) as err:
        make_plan([a, b], {}, {})
    assert err.value.code == "validation_error"
    assert err.value.details["sources"] == ["web/a.yaml:1", "web/b.yaml:7"]


# -- pruning --------------------------------------------------------------------------------


def test_inventory_object_no_longer_rendered_is_pruned() -> None:
    web, worker = deployment(), deployment("worker", service="worker")
    live, inventory = deployed(web, worker)
    p = make_plan([deployment()], live, inventory)
    prune = [c for c in p.items if c.action == "prune"]
    assert [(c.key, c.service, c.reason, c.api_version) for c in prune] == \
        [(worker.key, "worker", "removed", "apps/v1")]
    assert p.prune_phases() == [prune]
    assert p.next_inventory({}) == {web.key: inventory[web.key]}


def test_crash_leftover_labelled_ours_is_pruned() -> None:
    web = deployment()
    live, inventory = deployed(web)
    leftover = simple("ConfigMap", "web-old", "web", data={"a": "1"})
    live[leftover.key] = served(leftover)
    p = make_plan([deployment()], live, inventory)
    assert [(c.action, c.reason, c.service) for c in p.items if c.key == leftover.key] == \
        [("prune", "leftover", "web")]


def test_objects_not_ours_are_never_pruned() -> None:
    web = deployment()
    live, inventory = deployed(web)
    unlabelled = served(simple("ConfigMap", "kube-root-ca.crt", "web"))
    unlabelled["metadata"]["labels"] = {}
    other_instance = served(simple("ConfigMap", "staging-config", "web"))
    other_instance["metadata"]["labels"][LABEL_INSTANCE] = "staging"
    other_app = served(simple("ConfigMap", "blog-config", "web"))
    other_app["metadata"]["labels"][LABEL_APP] = "blog"
    for body in (unlabelled, other_instance, other_app):
        live[ObjectKey.of(body)] = body
    p = make_plan([deployment()], live, inventory)
    assert [c.key for c in p.items] == [web.key]
    assert p.is_noop


def test_prune_disabled_annotation_keeps_and_remembers() -> None:
    web = deployment()
    config = simple("ConfigMap", "web-config", "web",
                    data={"a": "1"})
    body = copy.deepcopy(config.body)
    body["metadata"]["annotations"][ANNOTATION_PRUNE] = PRUNE_DISABLED
    config = with_digest(Manifest("web", body))
    live, inventory = deployed(web, config)
    p = make_plan([deployment()], live, inventory)
    kept = [c for c in p.items if c.key == config.key]
    assert [(c.action, c.reason) for c in kept] == [("keep", "annotation")]
    assert p.prune_phases() == []
    # Still ours: pruned as soon as someone removes the annotation.
    assert p.next_inventory({}) == inventory


@pytest.mark.parametrize(("kind", "flag"), [("Namespace", "namespaces"),
                                            ("PersistentVolumeClaim",
                                             "persistent_volume_claims")])
def test_namespaces_and_pvcs_are_kept_by_policy_and_orphaned(kind: str, flag: str) -> None:
    namespace = None if kind == "Namespace" else NS
    obj = simple(kind, "data", "db", namespace=namespace, spec={})
    live, inventory = deployed(obj)
    p = make_plan([deployment(service="db")], live, inventory)
    assert [(c.action, c.reason) for c in p.items if c.key == obj.key] == [("keep", "policy")]
    assert obj.key not in p.next_inventory({deployment(service="db").key: "ff"})

    allowed = make_plan([deployment(service="db")], live, inventory,
                        prune=replace(PruneSettings(), **{flag: True}))
    assert [(c.action, c.reason) for c in allowed.items if c.key == obj.key] == \
        [("prune", "removed")]


def test_policy_applies_to_core_kinds_only() -> None:
    crd_ns = simple("Namespace", "tenant", "db", api_version="tenancy.example.com/v1",
                    namespace=None)
    live, inventory = deployed(crd_ns)
    p = make_plan([deployment(service="db")], live, inventory)
    assert [c.action for c in p.items if c.key == crd_ns.key] == ["prune"]


def test_disabled_pruning_keeps_everything_and_remembers_it() -> None:
    worker = deployment("worker", service="worker")
    live, inventory = deployed(worker)
    leftover = simple("ConfigMap", "old", "worker")
    live[leftover.key] = served(leftover)
    p = make_plan([deployment()], live, inventory, prune=PruneSettings(enabled=False))
    assert {(c.key, c.action, c.reason) for c in p.items if c.action != "create"} == \
        {(worker.key, "keep", "disabled"), (leftover.key, "keep", "disabled")}
    new = p.next_inventory({deployment().key: "aa"})
    assert new[worker.key] == inventory[worker.key]
    assert new[leftover.key].service == "worker"  # recorded: prunable once enabled


def test_inventory_entry_already_gone_is_dropped_without_a_request() -> None:
    web, worker = deployment(), deployment("worker", service="worker")
    live, inventory = deployed(web, worker)
    del live[worker.key]
    p = make_plan([deployment()], live, inventory)
    assert [(c.action, c.reason) for c in p.items if c.key == worker.key] == \
        [("prune", "gone")]
    assert p.prune_phases() == []
    assert p.is_noop
    assert p.counts()["gone"] == 1 and p.counts()["prune"] == 0
    assert worker.key not in p.next_inventory({}, succeeded=set())


def test_empty_render_refuses_to_prune_everything() -> None:
    live, inventory = deployed(deployment(), deployment("worker", service="worker"))
    with pytest.raises(ValidationError) as err:
        make_plan([], live, inventory)
    assert err.value.code == "validation_error"
    assert err.value.details == {"would_prune": 2}
    assert "refusing to prune 2 objects" in err.value.message
    assert "prune.allow_empty" in err.value.message

    p = make_plan([], live, inventory, prune=PruneSettings(allow_empty=True))
    assert [c.action for c in p.items] == ["prune", "prune"]


def test_empty_render_with_nothing_to_delete_is_fine() -> None:
    ns = simple("Namespace", NS, "web", namespace=None)
    live, inventory = deployed(ns)
    assert make_plan([], {}, {}).items == ()
    assert only(make_plan([], live, inventory)) == ("keep", "policy")


# -- scope ----------------------------------------------------------------------------------


def test_scoped_plan_never_touches_another_service() -> None:
    a, b = deployment("a", service="a"), deployment("b", service="b")
    old_a = deployment("a-old", service="a")
    live, inventory = deployed(a, b, old_a)
    b_leftover = simple("ConfigMap", "b-leftover", "b")
    live[b_leftover.key] = served(b_leftover)
    del live[b.key]  # the caller lists only in-scope kinds: b's objects look gone

    p = make_plan([deployment("a", service="a")], live, inventory, services={"a"})
    assert {c.service for c in p.items} == {"a"}
    assert {(c.key, c.action) for c in p.items} == {(a.key, "unchanged"),
                                                    (old_a.key, "prune")}
    new = p.next_inventory({})
    assert new[b.key] == inventory[b.key]  # carried over untouched
    assert old_a.key not in new and b_leftover.key not in new


def test_scoped_plan_rejects_other_services_objects() -> None:
    with pytest.raises(ValueError, match=re.escape(f"['a']: {NS}/Deployment/b")):
        make_plan([deployment("a", service="a"), deployment("b", service="b")], {}, {},
                  services={"a"})


def test_scoped_empty_render_is_not_guarded() -> None:
    live, inventory = deployed(deployment("a", service="a"))
    p = make_plan([], live, inventory, services={"a", SHARED_SERVICE})
    assert [c.action for c in p.items] == ["prune"]


def test_plan_delete_takes_down_one_service_only() -> None:
    a, b = deployment("a", service="a"), deployment("b", service="b")
    config = simple("ConfigMap", "a-config", "a")
    ns = simple("Namespace", "a-data", "a", namespace=None)
    live, inventory = deployed(a, b, config, ns)
    leftover = simple("Secret", "a-leftover", "a")
    live[leftover.key] = served(leftover)
    p = plan_delete({"a"}, inventory, live, settings=PruneSettings(enabled=False),
                    app=APP, instance=INSTANCE)
    assert {(c.key, c.action, c.reason) for c in p.items} == {
        (a.key, "prune", "down"), (config.key, "prune", "down"),
        (leftover.key, "prune", "down"), (ns.key, "keep", "policy")}
    assert [[c.key.kind for c in phase] for phase in p.prune_phases()] == \
        [["Deployment"], ["ConfigMap", "Secret"]]
    new = p.next_inventory({})
    assert new == {b.key: inventory[b.key]}
    # A delete that failed keeps the entry (or records the leftover), to retry later.
    partial = p.next_inventory({}, succeeded={a.key})
    assert set(partial) == {b.key, config.key, leftover.key}
    assert partial[leftover.key].service == "a"


def test_plan_delete_of_nothing_is_empty() -> None:
    p = plan_delete({"a"}, {}, {}, settings=PruneSettings(), app=APP, instance=INSTANCE)
    assert p.items == () and p.is_noop


# -- ordering -------------------------------------------------------------------------------


def test_phases_follow_kind_order_and_deletion_reverses_it() -> None:
    kinds = [("apiextensions.k8s.io/v1", "CustomResourceDefinition", None),
             ("v1", "Namespace", None), ("v1", "ServiceAccount", NS),
             ("rbac.authorization.k8s.io/v1", "ClusterRole", None),
             ("rbac.authorization.k8s.io/v1", "RoleBinding", NS), ("v1", "ConfigMap", NS),
             ("v1", "Secret", NS), ("v1", "Service", NS),
             ("v1", "PersistentVolumeClaim", NS), ("apps/v1", "StatefulSet", NS),
             ("batch/v1", "CronJob", NS), ("networking.k8s.io/v1", "Ingress", NS),
             ("autoscaling/v2", "HorizontalPodAutoscaler", NS),
             ("policy/v1", "PodDisruptionBudget", NS),
             ("shop.example.com/v1", "Cart", NS)]
    desired = [simple(kind, kind.lower(), "web", api_version=v, namespace=ns)
               for v, kind, ns in reversed(kinds)]
    p = make_plan(desired, {}, {})
    # Within a phase requests run concurrently: only the phases' order matters.
    phases = [{c.key.kind for c in phase} for phase in p.apply_phases()]
    assert phases == [
        {"CustomResourceDefinition"}, {"Namespace"},
        {"ClusterRole", "ConfigMap", "RoleBinding", "Secret", "ServiceAccount"},
        {"PersistentVolumeClaim", "Service"}, {"CronJob", "StatefulSet"},
        {"HorizontalPodAutoscaler", "Ingress", "PodDisruptionBudget", "Cart"}]

    live, inventory = deployed(*desired)
    down = plan_delete({"web"}, inventory, live,
                       settings=PruneSettings(namespaces=True, persistent_volume_claims=True),
                       app=APP, instance=INSTANCE)
    assert [{c.key.kind for c in phase} for phase in down.prune_phases()] == \
        list(reversed(phases))


def test_phase_of_accepts_keys_and_kinds() -> None:
    assert phase_of("CustomResourceDefinition") == 0
    assert phase_of(ObjectKey("", "Namespace", "", "x")) == 1
    assert phase_of("ResourceQuota") == phase_of("PriorityClass") == phase_of("Secret") == 2
    assert phase_of("Service") == 3
    assert phase_of(deployment().key) == 4
    assert phase_of("Ingress") == phase_of("Cart") == OTHER_PHASE == 5


# -- the next inventory ---------------------------------------------------------------------


def test_next_inventory_after_partial_failure_forgets_nothing() -> None:
    created_ok, create_failed = deployment("new-ok", "web"), deployment("new-bad", "web")
    updated_ok, update_failed = deployment("up-ok", "web"), deployment("up-bad", "web")
    deleted, delete_failed = deployment("del-ok", "web"), deployment("del-bad", "web")
    leftover = simple("ConfigMap", "leftover", "web")
    live, inventory = deployed(updated_ok, update_failed, deleted, delete_failed)
    live[leftover.key] = served(leftover)
    desired = [created_ok, create_failed, deployment("up-ok", "web", image="nginx:2"),
               deployment("up-bad", "web", image="nginx:2")]
    p = make_plan(desired, live, inventory)
    assert p.counts() == {"create": 2, "update": 2, "unchanged": 0, "prune": 3, "keep": 0,
                          "gone": 0}

    applied = {created_ok.key: "c0ffee", updated_ok.key: "beef"}
    new = p.next_inventory(applied, succeeded={deleted.key})
    assert new[created_ok.key] == InventoryEntry("web", "apps/v1", digest(created_ok.body),
                                                 "c0ffee")
    assert new[updated_ok.key] == InventoryEntry("web", "apps/v1", digest(desired[2].body),
                                                 "beef")
    # Failed: the old entry stays; a failed create is recorded with unknown digest/fields.
    assert new[update_failed.key] == inventory[update_failed.key]
    assert new[create_failed.key] == InventoryEntry("web", "apps/v1", "", "")
    assert deleted.key not in new
    assert new[delete_failed.key] == inventory[delete_failed.key]
    assert new[leftover.key] == InventoryEntry("web", "v1", digest(leftover.body), "")


def test_next_inventory_when_everything_succeeded() -> None:
    web, worker = deployment(), deployment("worker", service="worker")
    live, inventory = deployed(web, worker)
    p = make_plan([deployment(image="nginx:2")], live, inventory)
    new = p.next_inventory({web.key: "abc"})
    assert new == {web.key: InventoryEntry("web", "apps/v1",
                                           digest(deployment(image="nginx:2").body), "abc")}


def test_failed_takeover_of_a_foreign_object_is_not_recorded() -> None:
    web = deployment()
    foreign = served_deployment(web)
    foreign["metadata"]["labels"] = {}
    p = make_plan([web], {web.key: foreign}, {})
    assert p.next_inventory({}, succeeded=set()) == {}


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_nothing_live_and_ours_is_ever_forgotten(data: st.DataObject) -> None:
    names = ["a", "b", "c", "d"]
    old = [deployment(n, service="web") for n in names]
    live, inventory = deployed(*old)
    kept = data.draw(st.lists(st.sampled_from(names), unique=True))
    desired = [deployment(n, service="web", image="nginx:2") for n in kept]
    p = make_plan(desired, live, inventory, prune=PruneSettings(allow_empty=True))
    keys = [c.key for c in p.items]
    ok = data.draw(st.lists(st.sampled_from(keys), unique=True)) if keys else []
    new = p.next_inventory({k: "ff" for k in ok if k.name in kept}, succeeded=set(ok))
    for key in live:
        deleted = key in ok and key.name not in kept
        assert (key in new) != deleted


# -- fingerprints and keys ------------------------------------------------------------------


def test_digest_ignores_its_own_annotation_and_key_order() -> None:
    web = deployment()
    bare = copy.deepcopy(web.body)
    del bare["metadata"]["annotations"]
    assert digest(bare) == digest(web.body)
    reordered = dict(reversed(list(bare.items())))
    assert digest(reordered) == digest(bare)
    assert len(digest(bare)) == 16
    changed = copy.deepcopy(bare)
    changed["spec"]["replicas"] = 3
    assert digest(changed) != digest(bare)


def test_with_digest_is_idempotent_and_leaves_its_input_alone() -> None:
    body: Body = {"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "c", "namespace": NS, "annotations": {"x": "y"}}}
    m = Manifest("web", body, source="web/c.yaml", line=3)
    stamped = with_digest(m)
    assert body["metadata"]["annotations"] == {"x": "y"}
    assert stamped.body["metadata"]["annotations"] == {"x": "y",
                                                       ANNOTATION_DIGEST: digest(body)}
    assert (stamped.source, stamped.line, stamped.key) == ("web/c.yaml", 3, m.key)
    assert with_digest(stamped) is stamped


def test_key_strings_are_readable() -> None:
    assert key_to_str(deployment().key) == f"apps/Deployment/{NS}/web"
    assert key_to_str(ObjectKey("", "Namespace", "", NS)) == f"/Namespace//{NS}"
    assert key_to_str(ObjectKey("rbac.authorization.k8s.io", "ClusterRole", "",
                                "system:auth")) == \
        "rbac.authorization.k8s.io/ClusterRole//system:auth"
    with pytest.raises(ValueError, match="expected"):
        key_from_str("apps/Deployment/web")


@given(st.builds(ObjectKey, st.text(), st.text(), st.text(), st.text()))
def test_key_strings_round_trip(key: ObjectKey) -> None:
    assert key_from_str(key_to_str(key)) == key


def test_inventory_entries_round_trip_through_status() -> None:
    web = deployment()
    entry = recorded(web, served_deployment(web))
    raw = entry.to_dict(web.key)
    assert raw == {"k": f"apps/Deployment/{NS}/web", "v": "apps/v1", "s": "web",
                   "d": digest(web.body), "f": entry.fields}
    assert InventoryEntry.from_dict(raw) == (web.key, entry)


@pytest.mark.parametrize("raw", [
    {"v": "apps/v1", "s": "web"},
    {"k": "apps/Deployment/ns/web", "v": 1, "s": "web"},
    {"k": "Deployment/web", "v": "apps/v1", "s": "web"},
    {"k": "apps/Deployment/ns/web", "v": "v1", "s": "web"},
])
def test_malformed_inventory_entries_are_rejected(raw: dict[str, Any]) -> None:
    with pytest.raises((KeyError, TypeError, ValueError)):
        InventoryEntry.from_dict(raw)


# -- ignore rules (fields someone else owns) ------------------------------------------------

REPLICAS = IgnoreRule(("/spec/replicas",), kind="Deployment", name="web")


def ignoring_plan(desired: list[Manifest], live: Mapping[ObjectKey, Body],
                  inventory: Mapping[ObjectKey, InventoryEntry],
                  *rules: IgnoreRule) -> Plan:
    return plan(desired, live, inventory, settings=PruneSettings(), field_manager=FM,
                app=APP, instance=INSTANCE, ignore=rules or (REPLICAS,))


def created_ignoring(m: Manifest) -> tuple[Manifest, dict[ObjectKey, Body], Inventory]:
    """What we manage of `m`, and live state and inventory after creating it under
    REPLICAS (the whole render sent, what we manage recorded)."""
    change = ignoring_plan([m], {}, {}).items[0]
    assert change.manifest is not None and change.initial is not None
    live = served_deployment(replace(m, body=change.initial))
    return change.manifest, {m.key: live}, {m.key: recorded(change.manifest, live)}


def test_an_ignored_field_is_set_once_on_create() -> None:
    change = ignoring_plan([deployment(replicas=3)], {}, {}).items[0]
    assert (change.action, change.ignored) == ("create", ("/spec/replicas",))
    assert change.body is not None and change.body["spec"]["replicas"] == 3
    assert change.manifest is not None and "replicas" not in change.manifest.body["spec"]
    # Both carry the digest of what we manage, so the next pass sees no change.
    assert change.body["metadata"]["annotations"][ANNOTATION_DIGEST] == \
        digest(change.manifest.body)


def test_a_field_scaled_by_someone_else_is_not_drift_when_ignored() -> None:
    managed, live, inventory = created_ignoring(deployment())
    assert only(ignoring_plan([deployment()], live, inventory)) == ("unchanged", "current")
    live[managed.key]["spec"]["replicas"] = 7  # an autoscaler scaled it
    assert only(ignoring_plan([deployment()], live, inventory)) == ("unchanged", "current")
    # Without the rule the same state is drift: the rule is what makes the difference.
    web = deployment()
    live2, inventory2 = deployed(web)
    live2[web.key]["spec"]["replicas"] = 7
    assert only(make_plan([web], live2, inventory2)) == ("update", "drift")


def test_an_ignored_render_change_applies_nothing() -> None:
    _, live, inventory = created_ignoring(deployment(replicas=2))
    assert only(ignoring_plan([deployment(replicas=9)], live, inventory)) == \
        ("unchanged", "current")


def test_an_update_hands_over_an_ignored_field_we_still_own() -> None:
    # Created with the rendered replicas (so we own them), scaled through the scale
    # subresource (a 1.20 server leaves the ownership with us), then the image changes.
    web = deployment(replicas=2)
    live, inventory = deployed(web)
    live[web.key]["spec"]["replicas"] = 6
    change = ignoring_plan([deployment(replicas=2, image="nginx:1.28")], live,
                           inventory).items[0]
    assert (change.action, change.reason) == ("update", "changed")
    assert change.manifest is not None and "replicas" not in change.manifest.body["spec"]
    # The handover carries the live value, not the rendered one, and the live version.
    assert change.handover == {"apiVersion": "apps/v1", "kind": "Deployment",
                               "metadata": {"name": "web", "namespace": NS,
                                            "resourceVersion": "48213"},
                               "spec": {"replicas": 6}}


def test_no_handover_once_someone_else_owns_the_field() -> None:
    web = deployment()
    live, inventory = deployed(web)
    fields = live[web.key]["metadata"]["managedFields"][0]
    fields["fieldsV1"] = our_deployment_fields("web", web.body["metadata"]["labels"],
                                               replicas=False)
    change = ignoring_plan([deployment(image="nginx:1.28")], live, inventory).items[0]
    assert change.action == "update" and change.handover is None


def test_handover_through_a_keyed_list() -> None:
    web = deployment()
    live, _ = deployed(web)
    body = handover_body(live[web.key], FM, ["/spec/template/spec/containers/0/image"])
    assert body is not None
    assert body["spec"] == {"template": {"spec": {"containers": [
        {"name": "web", "image": "nginx:1.27"}]}}}
    assert handover_body(live[web.key], "someone-else", ["/spec/replicas"]) is None


def test_rules_select_by_service_kind_and_name() -> None:
    annotated = deployment()
    annotated.body["metadata"]["annotations"]["mesh.io/inject"] = "true"
    other = deployment("api", service="api")
    rules = (IgnoreRule(("/metadata/annotations/mesh.io~1inject",), service="web"),)
    p = ignoring_plan([annotated, other], {}, {}, *rules)
    by_name = {c.key.name: c for c in p.items}
    assert by_name["web"].ignored == ("/metadata/annotations/mesh.io~1inject",)
    assert by_name["api"].ignored == ()
    assert by_name["web"].manifest is not None
    assert "mesh.io/inject" not in by_name["web"].manifest.body["metadata"]["annotations"]


def test_strip_paths_drops_maps_it_empties() -> None:
    body: dict[str, Any] = {"metadata": {"name": "x", "annotations": {"a": "1"}},
                            "spec": {"replicas": 2}}
    stripped, removed = strip_paths(body, ["/metadata/annotations/a", "/spec/nothing"])
    assert stripped == {"metadata": {"name": "x"}, "spec": {"replicas": 2}}
    assert removed == ("/metadata/annotations/a",)
    assert body["metadata"]["annotations"] == {"a": "1"}  # input untouched


@pytest.mark.parametrize(("raw", "path"), [
    ("nope", "spec.ignore"),
    ([{"kind": "Deployment"}], "spec.ignore[0].paths"),
    ([{"paths": ["spec/replicas"]}], "spec.ignore[0].paths[0]"),
    ([{"paths": ["/spec//replicas"]}], "spec.ignore[0].paths[0]"),
    ([{"paths": ["/metadata/name"]}], "spec.ignore[0].paths[0]"),
    ([{"paths": ["/metadata/labels/conductor.io~1app"]}], "spec.ignore[0].paths[0]"),
    ([{"paths": ["/spec/a~2b"]}], "spec.ignore[0].paths[0]"),
    ([{"paths": ["/spec/replicas"], "kindd": "Deployment"}], "spec.ignore[0]"),
    ([{"paths": ["/spec/replicas"], "name": 3}], "spec.ignore[0].name"),
])
def test_bad_ignore_rules_name_their_path(raw: Any, path: str) -> None:
    with pytest.raises(ValidationError) as e:
        parse_ignore_rules(raw)
    assert e.value.details["path"] == path


def test_ignore_rules_parse() -> None:
    assert parse_ignore_rules(None) == ()
    assert parse_ignore_rules([{"service": "web", "paths": ["/spec/replicas"]}]) == (
        IgnoreRule(("/spec/replicas",), service="web"),)
    assert parse_pointer("/metadata/annotations/a~1b~0c") == (
        "metadata", "annotations", "a/b~c")
