"""The API's answer encoder (controller/api/common.dump_json): orjson, the same JSON as
json.dumps gave, and json.dumps for what orjson refuses."""

from __future__ import annotations

import json
from typing import Any

import pytest

from controller.api.common import dump_json


@pytest.mark.parametrize("value", [
    {"services": [{"name": "redis", "status": "healthy", "replicas": 3, "ratio": 0.5,
                   "ready": True, "reason": None}]},
    {"message": "café ✓ 日本", "nested": {"list": [[], {}, "", 0, -1.25e-7]}},
    [],
])
def test_the_same_document_as_json_dumps(value: Any) -> None:
    out = dump_json(value)
    assert json.loads(out) == value
    assert "é".encode() in out or "café" not in json.dumps(value)  # UTF-8, not \\u escapes


@pytest.mark.parametrize("value", [{"big": 2**70}, {1: "one", "two": 2}])
def test_what_orjson_refuses_is_still_answered(value: Any) -> None:
    assert json.loads(dump_json(value)) == json.loads(json.dumps(value))
