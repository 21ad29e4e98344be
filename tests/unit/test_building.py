"""The binary cache: built once, safe under concurrent runs, failures name their step."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from devcluster import building
from tests.support.waiting import wait_for


def test_concurrent_prepares_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[int] = []
    said: list[str] = []

    def fake_build(cache_dir: Path, say: building.Progress) -> building.Binaries:
        builds.append(1)
        # Hold the lock until both other callers are queued behind it.
        wait_for(lambda: sum("waiting" in line for line in said) == 2,
                 message="the other callers to wait for the lock")
        final = cache_dir / building.KUBE_VERSION / "bin"
        final.mkdir(parents=True)
        for name in building.BINARIES:
            (final / name).write_text("#!/bin/true\n")
        return building.Binaries(final)

    monkeypatch.setattr(building, "_build", fake_build)
    results: list[building.Binaries] = []
    threads = [threading.Thread(target=lambda: results.append(
        building.ensure_binaries(tmp_path, said.append))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1
    assert len({r.bin_dir for r in results}) == 1
    assert building.cached(tmp_path) is not None


def test_missing_tool_names_the_step_and_package(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(building.REQUIRED, "go", (tmp_path / "no-go", "golang-1.19-go"))
    with pytest.raises(building.BuildError) as err:
        building.ensure_binaries(tmp_path / "cache", lambda _l: None)
    assert err.value.step == "check tools"
    assert "golang-1.19-go" in str(err.value)


def test_failing_step_names_its_log(tmp_path: Path) -> None:
    steps = building._Steps(tmp_path, lambda _l: None, total=1)
    with pytest.raises(building.BuildError) as err:
        steps.run("build thing", ["sh", "-c", "echo boom; exit 3"], cwd=tmp_path)
    assert err.value.step == "build thing"
    assert err.value.log is not None
    assert "boom" in err.value.log.read_text()
    assert "exit code 3" in str(err.value)
