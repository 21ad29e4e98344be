"""Keeps tests/api cluster-free outside its end-to-end files (issue 10).

The API's own behaviour is tested over the in-memory service (tests/support/fakes.py);
what needs the local control plane (a real Controller, real gunicorn, Pods) lives in
files named test_e2e_*.py, so a reader (and `pytest tests/api --ignore-glob='*e2e*'`)
knows which is which. A test elsewhere in this folder that asks for the cluster, through
any fixture, is refused at collection, naming the test and where it belongs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    misplaced = [item.nodeid for item in items
                 if item.path.parent == HERE and not item.path.name.startswith("test_e2e_")
                 and "cluster" in getattr(item, "fixturenames", ())]
    if misplaced:
        raise pytest.UsageError(
            "tests/api: these tests need the control plane (the `cluster` fixture) but are "
            "not in a test_e2e_*.py file: move them there, or onto the fake service "
            "(fake_api): " + ", ".join(misplaced))
