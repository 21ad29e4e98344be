"""Health parity with Argo CD's gitops-engine: its own test objects, our verdicts.

`../shared/peer-health/gitops-engine/` (beside the repository; CONDUCTOR_PEER_HEALTH names
another `peer-health` folder) holds gitops-engine's health test manifests, unchanged, and
`expected.tsv`: per file, the peer's verdict and the status conductor should report (with
the reason where the two differ on purpose). The files are read where they are, not copied
into the project, so the cases stay the peer's own; without the folder these tests skip
and say why.

Each file is one object; a Pod file is a pod by itself and a workload is assessed without
pods (its own status is the whole case). "Now" is the time of the run, as the folder's
README asks.
"""

from __future__ import annotations

import csv
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.model.health import assess

_DEFAULT = Path(__file__).resolve().parents[2].parent / "shared" / "peer-health"
PEER = Path(os.environ.get("CONDUCTOR_PEER_HEALTH") or _DEFAULT) / "gitops-engine"
EXPECTED = PEER / "expected.tsv"


ABSENT = (f"peer health cases not found at {PEER} (they live beside the repository in CI; "
          "set CONDUCTOR_PEER_HEALTH to a peer-health folder to run them)")


def _cases() -> list[Any]:
    if not EXPECTED.is_file():
        return [pytest.param("", "", "", marks=pytest.mark.skip(reason=ABSENT),
                             id="peer-health-absent")]
    with EXPECTED.open(newline="") as f:
        rows = [r for r in csv.reader(f, delimiter="\t") if r and not r[0].startswith("#")]
    return [pytest.param(r[0], r[2], r[3] if len(r) > 3 else "", id=r[0]) for r in rows]


CASES = _cases()


def test_every_peer_file_has_an_expectation() -> None:
    if not EXPECTED.is_file():
        pytest.skip(ABSENT)
    listed = {p.values[0] for p in CASES}
    assert listed == {p.name for p in PEER.glob("*.yaml")}
    assert len(listed) == 46


@pytest.mark.parametrize(("file", "expected", "why"), CASES)
def test_peer_case(file: str, expected: str, why: str) -> None:
    docs = [d for d in yaml.safe_load_all((PEER / file).read_text()) if d]
    assert len(docs) == 1, f"{file}: one object per file"
    health = assess(docs[0], now=datetime.now(UTC))
    assert health.status == expected, (
        f"{file}: {health.status} ({health.reason}: {health.message}), expected {expected}"
        + (f" because {why}" if why else ""))
    if expected in ("unhealthy", "progressing", "suspended"):
        assert health.reason and health.message, f"{file}: a non-healthy verdict says why"
