"""Parameters under attack (issue 9), the API's side, over the in-memory service
(tests/support/fakes.py, no cluster): hostile bodies (finding 9) and values the API server
would refuse (finding 17) are 400s naming the limit or the path, and nothing is written;
`?instance=` naming no object is a 404 naming it (finding 13). The fake applies the same
rules as the real service (check_limits, validate_spec against the real CRD schema); the
bodies live in tests/support/hostile.py, and test_e2e_parameters_hardening.py sends them to
the real service once, end to end.
"""

from __future__ import annotations

from typing import Any

import pytest

from controller.runtime.service import Caller
from tests.support import hostile
from tests.support.api import FakeApi, envelope


def _spec(api: FakeApi) -> dict[str, Any]:
    spec: dict[str, Any] = api.service.parameters(None, Caller(may_see_secrets=True)).body
    return spec


def _generation(api: FakeApi) -> int:
    return api.service.instances_["default"].generation


@pytest.mark.parametrize("method", ["post", "patch"])
def test_deep_nesting_is_refused_before_any_write(fake_api: FakeApi, method: str) -> None:
    generation = _generation(fake_api)
    hostile.deep_nesting_is_refused(fake_api, method, _spec(fake_api))
    assert _generation(fake_api) == generation


def test_a_huge_body_is_refused_naming_the_limit(fake_api: FakeApi) -> None:
    generation = _generation(fake_api)
    hostile.huge_body_is_refused(fake_api)
    assert _generation(fake_api) == generation


@pytest.mark.parametrize("service, values, path", hostile.INVALID_VALUES)
def test_invalid_values_are_400_with_the_path_and_change_nothing(
        fake_api: FakeApi, service: str, values: dict[str, Any], path: str) -> None:
    generation = _generation(fake_api)
    hostile.invalid_value_is_refused(fake_api, _spec(fake_api), service, values, path)
    assert _generation(fake_api) == generation


def test_the_contracts_example_4_still_works(fake_api: FakeApi) -> None:
    result = fake_api.post("/api/parameters", {"global": {"namespace": "shop",
                                                          "replicas": 1},
                                               "services": {"redis": {"replicas": 5}}})
    assert result.status_code == 200, result.text


def test_services_of_an_unknown_instance_are_404_naming_it(fake_api: FakeApi) -> None:
    for path in ("/api/services", "/api/services/health", "/api/services/redis"):
        details = envelope(fake_api.get(path, params={"instance": "nonexistent"}), 404,
                           "not_found")
        assert details["instance"] == "nonexistent", path
