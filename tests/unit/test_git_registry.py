"""Per-instance Git sources without a cluster (issue 13): where an instance's parameters
file is (the path mapping, `spec.source`), how a repository's URL spellings compare, and
the shared registry — one clone per repository, one fetch per announced change however
many instances read it, one poll per repository waking only the instances whose ref moved.

The repositories are real (a bare repository on disk, read through GitSource); only the
clock is the test's, so "within the poll interval" needs no sleeping.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.adapters.sources.git import GitSource
from controller.adapters.sources.instances import InstanceSource
from controller.adapters.sources.registry import Registry
from controller.config import Config, GitSettings
from controller.errors import SourceError, ValidationError
from controller.model.instance import (
    ANNOTATION_PARAMETER_SOURCE,
    ANNOTATION_REQUESTED,
    SourceSpec,
    ref_name,
    repository_id,
    source_spec,
)
from tests.support.gitrepo import run_git


def _obj(name: str = "beta", namespace: str = "team-b", source: Any = None,
         annotations: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"global": {"replicas": 1}}
    if source is not None:
        spec["source"] = source
    return {"metadata": {"name": name, "namespace": namespace,
                         "annotations": annotations or {}}, "spec": spec}


# -- the path mapping --------------------------------------------------------------------


def test_an_object_without_source_keeps_its_own_spec() -> None:
    assert source_spec(_obj()) is None
    assert source_spec(_obj(annotations={ANNOTATION_PARAMETER_SOURCE: "resource"})) is None


def test_the_annotation_means_the_instance_file_in_the_controllers_repository() -> None:
    spec = source_spec(_obj(annotations={ANNOTATION_PARAMETER_SOURCE: "git"}))
    assert spec == SourceSpec(url="", ref="", path="instances/team-b/beta.yaml")


def test_spec_source_fields_override_the_defaults() -> None:
    assert source_spec(_obj(source={"url": "https://h/o/r.git"})) == \
        SourceSpec("https://h/o/r.git", "", "instances/team-b/beta.yaml")
    assert source_spec(_obj(source={"url": "git://127.0.0.1:9/b.git", "ref": "v2",
                                    "path": "envs/beta.yml"})) == \
        SourceSpec("git://127.0.0.1:9/b.git", "v2", "envs/beta.yml")


@pytest.mark.parametrize("source", [
    "https://h/o/r.git", {"url": 3}, {"path": "/etc/passwd.yaml"},
    {"path": "../other/x.yaml"}, {"path": "instances/beta.json"}, {"branch": "main"}])
def test_a_malformed_spec_source_is_a_validation_error(source: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        source_spec(_obj(source=source))
    assert str(caught.value.details["field"]).startswith("spec.source")


def test_the_spellings_of_one_repository_compare_equal() -> None:
    same = ["https://github.com/Org/App.git", "https://user:tok@github.com/org/app",
            "git@github.com:org/app.git", "ssh://git@github.com/org/app.git",
            "ssh://git@github.com:22/org/app", "http://github.com:80/org/app/"]
    assert len({repository_id(u) for u in same}) == 1
    # Two servers on one host are two repositories (the loopback test daemons).
    assert repository_id("git://127.0.0.1:4001/repo.git") != \
        repository_id("git://127.0.0.1:4002/repo.git")
    assert repository_id("/srv/git/app.git") == repository_id("file:///srv/git/app.git")
    assert ref_name("refs/heads/main") == "main" and ref_name("refs/tags/v1") == "v1"


# -- the registry, on real repositories -----------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _remote(base: Path, name: str, files: dict[str, Any]) -> tuple[Path, Path]:
    """A bare repository `name` with `files` (YAML) committed on main; (bare, work)."""
    bare, work = base / f"{name}.git", base / f"{name}-work"
    run_git(base, "init", "--quiet", "--bare", str(bare))
    run_git(base, "init", "--quiet", str(work))
    _commit(work, files)
    run_git(work, "push", "--quiet", str(bare), "main")
    return bare, work


def _commit(work: Path, files: dict[str, Any], push_to: Path | None = None) -> str:
    for rel, doc in files.items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    run_git(work, "add", "-A")
    run_git(work, "commit", "--quiet", "-m", "change")
    if push_to is not None:
        run_git(work, "push", "--quiet", str(push_to), "main")
    return run_git(work, "rev-parse", "HEAD")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def remotes(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    a = _remote(tmp_path, "a", {
        "instances/ns1/one.yaml": {"global": {"replicas": 1}},
        "instances/ns2/two.yaml": {"global": {"replicas": 2}},
        "manifests/web/deployment.yaml.j2": "kind: Deployment\n"})
    b = _remote(tmp_path, "b", {"params/three.yaml": {"global": {"replicas": 3}}})
    return {"a": a, "b": b}


def _registry(tmp_path: Path, remotes: dict[str, tuple[Path, Path]], clock: Clock,
              made: list[GitSettings] | None = None) -> Registry:
    settings = GitSettings(url=f"file://{remotes['a'][0]}", ref="main",
                           token_file=str(tmp_path / "token"), manifests_path="manifests",
                           cache_dir=tmp_path / "cache", poll_interval=60)
    (tmp_path / "token").write_text("s3cret-token\n")

    def factory(s: GitSettings, env: Any) -> GitSource:
        if made is not None:
            made.append(s)
        return GitSource(s, env)

    return Registry(settings, {}, factory=factory, clock=clock, allow_local=True)


def _source(registry: Registry, key: tuple[str, str], tmp_path: Path) -> InstanceSource:
    cfg = Config(namespace=key[0], instance=key[1], manifest_root=tmp_path,
                 git=registry.settings)
    return InstanceSource(cfg, key, registry, manifests_from_git=True)


def test_one_clone_per_repository_and_credentials_only_for_the_controllers(
        tmp_path: Path, remotes: dict[str, tuple[Path, Path]], clock: Clock) -> None:
    made: list[GitSettings] = []
    registry = _registry(tmp_path, remotes, clock, made)
    own = registry.repository()
    assert registry.repository(str(remotes["a"][0])) is own  # a path spelling of it
    other = registry.repository(f"file://{remotes['b'][0]}")
    assert registry.repository(f"{remotes['b'][0]}/") is other
    assert [s.token_file for s in made] == [str(tmp_path / "token"), ""]
    own.refresh()
    other.refresh()
    clones = [p for p in (tmp_path / "cache").iterdir() if (p / ".git").is_dir()]
    assert len(clones) == 2


def test_one_fetch_serves_every_instance_until_a_change_is_announced(
        tmp_path: Path, remotes: dict[str, tuple[Path, Path]], clock: Clock) -> None:
    registry = _registry(tmp_path, remotes, clock)
    one = _source(registry, ("ns1", "one"), tmp_path)
    two = _source(registry, ("ns2", "two"), tmp_path)
    marked = {ANNOTATION_PARAMETER_SOURCE: "git"}
    snap1 = one.snapshot(_obj("one", "ns1", annotations=marked))
    snap2 = two.snapshot(_obj("two", "ns2", annotations=marked))
    repo = registry.repository()
    assert repo.fetches == 1
    assert snap1.spec == {"global": {"replicas": 1}} and snap2.spec["global"]["replicas"] == 2
    assert snap1.revision == snap2.revision and len(snap1.revision) == 40
    assert snap1.source == "git" and snap1.details["path"] == "instances/ns1/one.yaml"
    # The file's blob id is its version (the API's ETag), as `git hash-object` says.
    assert snap1.details["version"] == run_git(
        remotes["a"][1], "rev-parse", f"{snap1.revision}:instances/ns1/one.yaml")
    assert (snap1.manifest_root / "web" / "deployment.yaml.j2").is_file()
    assert snap1.manifest_root == snap2.manifest_root  # one export per revision

    # A push: the same passes reuse the fetch until someone announces it (or it ages).
    bare, work = remotes["a"]
    pushed = _commit(work, {"instances/ns1/one.yaml": {"global": {"replicas": 5}}}, bare)
    assert one.snapshot(_obj("one", "ns1", annotations=marked)).revision == snap1.revision
    repo.want()
    clock.now += 0.001
    assert one.snapshot(_obj("one", "ns1", annotations=marked)).spec == \
        {"global": {"replicas": 5}}
    assert two.snapshot(_obj("two", "ns2", annotations=marked)).revision == pushed
    assert repo.fetches == 2
    # An unchanged commit is read from memory, and a pass cannot change what the next reads.
    again = two.snapshot(_obj("two", "ns2", annotations=marked))
    again.spec["global"]["replicas"] = 99
    assert two.snapshot(_obj("two", "ns2", annotations=marked)).spec["global"] == \
        {"replicas": 2}
    clock.now += 61  # older than the poll interval: fetched again
    two.snapshot(_obj("two", "ns2", annotations=marked))
    assert repo.fetches == 3


def test_a_wake_up_recorded_on_the_object_fetches_anew(
        tmp_path: Path, remotes: dict[str, tuple[Path, Path]], clock: Clock) -> None:
    registry = _registry(tmp_path, remotes, clock)
    one = _source(registry, ("ns1", "one"), tmp_path)
    marked = {ANNOTATION_PARAMETER_SOURCE: "git"}
    one.snapshot(_obj("one", "ns1", annotations=marked))
    bare, work = remotes["a"]
    pushed = _commit(work, {"instances/ns1/one.yaml": {"global": {"replicas": 4}}}, bare)
    clock.now += 0.001
    asked = {**marked, ANNOTATION_REQUESTED: "2026-01-01T00:00:00.000001Z"}
    assert one.snapshot(_obj("one", "ns1", annotations=asked)).revision == pushed
    assert registry.repository().fetches == 2


def test_a_bad_source_fails_only_its_instance_and_is_tried_once(
        tmp_path: Path, remotes: dict[str, tuple[Path, Path]], clock: Clock) -> None:
    registry = _registry(tmp_path, remotes, clock)
    good = _source(registry, ("ns1", "one"), tmp_path)
    missing = _source(registry, ("ns9", "nine"), tmp_path)
    gone = [_source(registry, ("ns", f"x{i}"), tmp_path) for i in range(3)]
    marked = {ANNOTATION_PARAMETER_SOURCE: "git"}
    with pytest.raises(SourceError, match=r"instances/ns9/nine\.yaml: no such file"):
        missing.snapshot(_obj("nine", "ns9", annotations=marked))
    nowhere = {"url": f"file://{tmp_path}/no-such-repo.git"}
    for source in gone:
        with pytest.raises(SourceError) as caught:
            source.snapshot(_obj(source.cfg.instance, "ns", source=nowhere))
        assert caught.value.details["step"] in ("clone", "fetch")
    # One attempt served all three (until announced or aged), and the good one works.
    assert registry.repository(nowhere["url"]).fetches == 1
    assert good.snapshot(_obj("one", "ns1", annotations=marked)).spec["global"] == \
        {"replicas": 1}
    bad_yaml = _source(registry, ("ns3", "bad"), tmp_path)
    bare, work = remotes["a"]
    _commit(work, {"instances/ns3/bad.yaml": "global: [unclosed\n"}, bare)
    registry.repository().want()
    clock.now += 0.001
    with pytest.raises(Exception) as caught_yaml:
        bad_yaml.snapshot(_obj("bad", "ns3", annotations=marked))
    assert getattr(caught_yaml.value, "code", "") == "invalid_yaml"


def test_a_second_repository_renders_the_controllers_manifests(
        tmp_path: Path, remotes: dict[str, tuple[Path, Path]], clock: Clock) -> None:
    registry = _registry(tmp_path, remotes, clock)
    three = _source(registry, ("ns3", "three"), tmp_path)
    snap = three.snapshot(_obj("three", "ns3", source={
        "url": f"file://{remotes['b'][0]}", "path": "params/three.yaml"}))
    assert snap.spec == {"global": {"replicas": 3}}
    assert (snap.manifest_root / "web" / "deployment.yaml.j2").is_file()
    assert registry.repository(f"file://{remotes['b'][0]}").fetches == 1


def test_the_poll_asks_each_repository_once_and_wakes_only_moved_instances(
        tmp_path: Path, remotes: dict[str, tuple[Path, Path]], clock: Clock) -> None:
    registry = _registry(tmp_path, remotes, clock)
    marked = {ANNOTATION_PARAMETER_SOURCE: "git"}
    one = _source(registry, ("ns1", "one"), tmp_path)
    two = _source(registry, ("ns2", "two"), tmp_path)
    three = _source(registry, ("ns3", "three"), tmp_path)
    one.snapshot(_obj("one", "ns1", annotations=marked))
    two.snapshot(_obj("two", "ns2", annotations=marked))
    three.snapshot(_obj("three", "ns3", source={"url": f"file://{remotes['b'][0]}",
                                                "path": "params/three.yaml"}))
    assert registry.poll(lambda _key: True) == {}
    bare, work = remotes["b"]
    pushed = _commit(work, {"params/three.yaml": {"global": {"replicas": 6}}}, bare)
    assert registry.poll(lambda _key: True) == {("ns3", "three"): pushed}
    seen = registry.repository(f"file://{remotes['b'][0]}").first_seen(pushed)
    assert seen is not None and abs(seen - time.time()) < 60  # push-to-applied starts
    assert registry.poll(lambda _key: True) == {}  # woken once per commit
    # Not owned here: not woken here (its owner's poller does it).
    bare_a, work_a = remotes["a"]
    _commit(work_a, {"instances/ns2/two.yaml": {"global": {"replicas": 7}}}, bare_a)
    assert set(registry.poll(lambda key: key != ("ns1", "one"))) == {("ns2", "two")}
    registry.unfollow(("ns1", "one"))
    assert ("ns1", "one") not in registry.following()[repository_id(str(bare_a))]["main"]


def test_an_object_may_name_only_network_repositories(tmp_path: Path) -> None:
    registry = Registry(GitSettings(url="file:///srv/own.git", cache_dir=tmp_path), {})
    assert registry.repository("/srv/own.git") is registry.repository()  # the admin's
    for local in ("file:///etc", "/var/run/secrets", "ext::sh -c id", "../x.git"):
        with pytest.raises(ValidationError) as caught:
            registry.repository(local)
        assert caught.value.details["field"] == "spec.source.url"
    for remote in ("https://h/o/r.git", "ssh://git@h/o/r", "git@h:o/r.git",
                   "git://127.0.0.1:9418/r.git"):
        registry.repository(remote)


def test_a_commit_is_seen_when_its_webhook_arrived_and_counted_once_applied(
        tmp_path: Path, remotes: dict[str, tuple[Path, Path]], clock: Clock) -> None:
    registry = _registry(tmp_path, remotes, clock)
    one = _source(registry, ("ns1", "one"), tmp_path)
    marked = {ANNOTATION_PARAMETER_SOURCE: "git"}
    first = one.snapshot(_obj("one", "ns1", annotations=marked))
    assert one.newly_applied(first) is not None
    assert one.newly_applied(first) is None  # once per commit
    bare, work = remotes["a"]
    pushed = _commit(work, {"instances/ns1/one.yaml": {"global": {"replicas": 8}}}, bare)
    clock.now += 0.001
    asked = {**marked, ANNOTATION_REQUESTED: "2026-01-01T00:00:00.000001Z"}
    snap = one.snapshot(_obj("one", "ns1", annotations=asked))
    assert snap.revision == pushed
    # Seen when the webhook (on whichever replica) recorded it, not when fetched.
    assert one.newly_applied(snap) == datetime(2026, 1, 1, 0, 0, 0, 1, tzinfo=UTC).timestamp()
