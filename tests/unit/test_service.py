"""The service's own rules without a cluster (controller/runtime/service.py and
controller_service.py): If-Match comparison, parameter versions, plan ids and their expiry,
draft digests, plan diffs with Secrets redacted."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from controller.errors import PreconditionFailedError
from controller.runtime.controller_service import (
    CHANGED,
    PlanStore,
    _resource_version,
    blob_sha,
    diff,
    draft_digest,
    merge_patch,
    values_replaced,
)
from controller.runtime.service import Draft, check_version


def test_if_match_compares_exactly_and_star_matches_anything() -> None:
    check_version(None, "7-abc")
    check_version("*", "7-abc")
    check_version("7-abc", "7-abc")
    with pytest.raises(PreconditionFailedError) as raised:
        check_version("6-abc", "7-abc")
    assert raised.value.code == "precondition_failed"
    assert raised.value.details["current"] == "7-abc"


def test_the_object_version_moves_with_the_spec_not_with_status() -> None:
    obj = {"metadata": {"generation": 4, "uid": "0123456789ab", "resourceVersion": "99"}}
    status_written = {"metadata": {**obj["metadata"], "resourceVersion": "100"}}
    assert _resource_version(obj) == _resource_version(status_written) == "4-01234567"
    recreated = {"metadata": {"generation": 4, "uid": "fedcba987654"}}
    assert _resource_version(recreated) != _resource_version(obj)


def test_blob_sha_is_gits(tmp_path: Path) -> None:
    path = tmp_path / "parameters.yaml"
    path.write_bytes(b"global:\n  namespace: shop\n")
    git = subprocess.run(["git", "hash-object", str(path)], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert blob_sha(path.read_bytes()) == git


def test_a_plan_is_kept_until_it_expires_and_the_store_is_bounded() -> None:
    now = [1000.0]
    store = PlanStore(ttl=600, size=3, clock=lambda: now[0])
    first = store.keep({"changes": []}, "default", "d1", "5-abc")
    assert first["basedOn"] == "5-abc" and first["instance"] == "default"
    assert first["expiresAt"] == "1970-01-01T00:26:40Z"  # 1000 + 600 s
    assert store.get(first["planId"]) == first
    again = store.keep({"changes": []}, "default", "d1", "5-abc")
    assert again["planId"] != first["planId"]  # never guessable from the binding alone
    assert again["planId"][:16] == first["planId"][:16]  # ...but named by it
    now[0] += 601
    with pytest.raises(Exception, match="no plan"):
        store.get(first["planId"])
    ids = [store.keep({}, "default", f"d{i}", "5-abc")["planId"] for i in range(5)]
    with pytest.raises(Exception, match="no plan"):
        store.get(ids[0])  # only the newest `size` are kept
    assert store.get(ids[-1])["planId"] == ids[-1]


def test_the_draft_digest_ignores_key_order_and_tells_drafts_apart() -> None:
    one = Draft(patch={"services": {"redis": {"tag": "7", "replicas": 2}}})
    same = Draft(patch={"services": {"redis": {"replicas": 2, "tag": "7"}}})
    assert draft_digest(one, ["redis"]) == draft_digest(same, ["redis"])
    assert draft_digest(one, ["redis"]) != draft_digest(one, ["redis", "web"])
    assert draft_digest(Draft(parameters=one.patch), ["redis"]) != \
        draft_digest(one, ["redis"])
    assert draft_digest(None, []) != draft_digest(Draft(patch={}), [])


def test_replace_keeps_the_controls_and_merge_patch_deletes_with_null() -> None:
    current = {"global": {"a": 1}, "services": {"x": {}}, "suspend": True}
    assert values_replaced(current, {"services": {}}) == {"services": {}, "suspend": True}
    assert merge_patch(current, {"global": {"a": None, "b": 2}, "suspend": None}) == {
        "global": {"b": 2}, "services": {"x": {}}}


def test_a_plan_diff_never_shows_secret_values() -> None:
    live = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
            "data": {"password": "b2xk", "user": "dXNlcg=="}}
    planned = {**live, "data": {"password": "bmV3", "user": "dXNlcg=="}}
    text = diff(live, planned)
    assert "b2xk" not in text and "bmV3" not in text and "dXNlcg==" not in text
    assert f"+  password: '{CHANGED}'" in text
    created = diff(None, planned)
    assert "bmV3" not in created
