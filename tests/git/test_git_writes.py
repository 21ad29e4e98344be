"""Parameter writes to Git respect the file: comments, key order and quoting stay, only the
changed values change (byte for byte elsewhere), the author names the API token and the
message lists the changed paths. A real git daemon; the API test a real controller."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from falcon import testing

from controller.adapters.sources import editing
from controller.adapters.sources.git import GitSource, author_for
from controller.config import ApiSettings, Config, EventSettings, GitSettings, LoopSettings
from controller.errors import InvalidYAMLError
from controller.runtime.controller import Controller
from controller.serving import app_for
from tests.support.cluster import LocalCluster
from tests.support.gitrepo import User, example_files, example_params
from tests.support.waiting import wait_for

# A file as people keep it: a header before the document start, comments above and beside
# values, keys in their own (unsorted) order, three quoting styles, a flow mapping, both
# sequence indentations, a block scalar and blank lines.
HAND_WRITTEN = """\
# Parameters of the shop. Reviewed by #ops; keep the comments.
---
services:
  # the front end
  web:
    replicas: 1   # raised for the sale
    image: "registry.local/web:1.4"
    ports:
    - 80
    - 443
  redis:
    replicas: 2
    maxmemory: '256mb'
    env:
      - name: MODE
        value: "cache"

global:
  image_tag: "1.0"  # bump on release
  flags: {debug: false, trace: true}
  banner: |
    Welcome!
    Mind the gap.
  zone: eu-west
"""


def _lines_changed(before: str, after: str) -> dict[int, tuple[str, str]]:
    """{line number: (before, after)} for a file whose line count did not change."""
    old, new = before.splitlines(keepends=True), after.splitlines(keepends=True)
    assert len(old) == len(new), (before, after)
    return {i + 1: (a, b) for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b}


def _write(source: GitSource, user: User, text: str, params: dict[str, Any],
           push: bool = True, **kwargs: Any) -> tuple[str, str]:
    """Push `text` as the user, write `params` through the source; (sha, text after)."""
    if push:
        user.commit_and_push({"parameters.yaml": text}, "hand-written parameters")
        source.fetch()
    sha = source.write_params(params, "conductor: patch parameters", **kwargs)
    user.git("pull", "--quiet", "--ff-only", "origin", "main")
    return sha, (user.path / "parameters.yaml").read_text()


def test_a_write_changes_only_the_changed_values_byte_for_byte(settings: GitSettings,
                                                                user: User) -> None:
    params = yaml.safe_load(HAND_WRITTEN)
    new = copy.deepcopy(params)
    new["services"]["web"]["replicas"] = 3
    new["global"]["image_tag"] = "1.1"  # a quoted string stays quoted the same way
    new["services"]["redis"]["maxmemory"] = "512mb"
    sha, after = _write(GitSource(settings, {}), user, HAND_WRITTEN, new)
    assert yaml.safe_load(after) == new
    assert _lines_changed(HAND_WRITTEN, after) == {
        6: ("    replicas: 1   # raised for the sale\n",
            "    replicas: 3   # raised for the sale\n"),
        13: ("    maxmemory: '256mb'\n", "    maxmemory: '512mb'\n"),
        19: ('  image_tag: "1.0"  # bump on release\n', '  image_tag: "1.1"  # bump on release\n'),
    }
    log = user.git("log", "-1", "--format=%an <%ae>%n%B", sha)
    assert log.splitlines() == [
        "conductor <conductor@localhost>",
        "conductor: patch parameters",
        "",
        "Changed in parameters.yaml:",
        "- services.web.replicas",
        "- services.redis.maxmemory",
        "- global.image_tag",
    ]


def test_added_and_removed_keys_touch_only_their_own_lines(settings: GitSettings,
                                                           user: User) -> None:
    new = copy.deepcopy(yaml.safe_load(HAND_WRITTEN))
    new["services"]["web"]["cpu"] = "500m"  # unsorted mapping: appended
    del new["global"]["zone"]
    new["services"]["redis"]["env"][0]["value"] = "store"
    sha, after = _write(GitSource(settings, {}), user, HAND_WRITTEN, new,
                        author=author_for("ci"))
    assert yaml.safe_load(after) == new
    before_lines = HAND_WRITTEN.splitlines(keepends=True)
    after_lines = after.splitlines(keepends=True)
    # Everything above the first change and every comment is there, byte for byte.
    assert after_lines[:10] == before_lines[:10]
    assert after_lines[10] == "    cpu: 500m\n"
    assert after_lines[11:14] == before_lines[10:13]
    for comment in [line for line in before_lines if "#" in line]:
        assert comment in after_lines
    assert "zone" not in after
    # A sequence item edited: its lines may take the normalised indentation, no others do.
    assert after_lines[-5:-1] == before_lines[-6:-2]  # the flow map and the block scalar
    assert user.git("log", "-1", "--format=%an <%ae>|%s", sha) == (
        "conductor (ci) <conductor@localhost>|conductor: patch parameters")
    assert user.git("log", "-1", "--format=%b", sha).splitlines() == [
        "Changed in parameters.yaml:", "- services.web.cpu", "- services.redis.env",
        "- global.zone"]


def test_a_sorted_mapping_gets_new_keys_in_their_place(settings: GitSettings,
                                                       user: User) -> None:
    text = "global:\n  alpha: 1\n  gamma: 3\nservices: {}\n"
    _sha, after = _write(GitSource(settings, {}), user, text,
                         {"global": {"alpha": 1, "beta": 2, "gamma": 3}, "services": {}})
    assert after == "global:\n  alpha: 1\n  beta: 2\n  gamma: 3\nservices: {}\n"


def test_types_are_kept_apart_and_an_unchanged_write_makes_no_commit(
        settings: GitSettings, user: User) -> None:
    text = "global:\n  debug: true\n  port: 80\n  ratio: 1.0\n  tag: '1'\nservices: {}\n"
    source = GitSource(settings, {})
    head, after = _write(source, user, text, yaml.safe_load(text))
    assert after == text and user.git("rev-parse", "HEAD") == head  # nothing committed
    assert user.git("log", "-1", "--format=%s") == "hand-written parameters"
    # 1 for True, 1 for 1.0 and 1 for "1" are changes, each on its own line.
    new = {"global": {"debug": 1, "port": 80, "ratio": 1, "tag": 1}, "services": {}}
    _sha, after = _write(source, user, text, new, push=False)
    assert yaml.safe_load(after) == new
    assert isinstance(yaml.safe_load(after)["global"]["debug"], int)
    assert set(_lines_changed(text, after)) == {2, 4, 5}


def test_a_broken_or_missing_file_is_written_afresh(settings: GitSettings, user: User) -> None:
    source = GitSource(settings, {})
    user.commit_and_push({"parameters.yaml": "global: [\n"}, "broken")
    with pytest.raises(InvalidYAMLError):
        source.fetch()
    _sha, after = _write(source, user, "", {"services": {}, "global": {"b": 1}}, push=False)
    assert after == "global:\n  b: 1\nservices: {}\n"
    assert editing.edit(None, {"z": 1, "a": [1]}) == "a:\n- 1\nz: 1\n"


def test_author_names_the_token_safely() -> None:
    assert author_for("ci") == "conductor (ci) <conductor@localhost>"
    assert author_for("") == author_for(None) == "conductor <conductor@localhost>"
    assert author_for("evil <x@y>\nSigned-off-by: z") == (
        "conductor (evil x@y Signed-off-by: z) <conductor@localhost>")


def test_changed_paths_in_document_order() -> None:
    old = {"global": {"a": 1, "b": [1, 2]}, "services": {"web": {"r": 1}}}
    new = {"global": {"a": 1, "b": [1, 3], "c": 0}, "services": {}}
    assert editing.changed_paths(old, new) == ["global.b", "global.c", "services.web"]
    assert editing.changed_paths({"x": True}, {"x": 1}) == ["x"]


# --- through the API, with a token ----------------------------------------------------


@pytest.fixture
def token_client(cluster: LocalCluster, namespace: str, tmp_path: Path,
                 crd: dict[str, Any], git_server: Any,
                 make_user: Callable[[str], User]) -> Iterator[tuple[testing.TestClient, User]]:
    """A Git-source controller that may push, its API with authentication on (token "ci")."""
    user = make_user("dev")
    files = example_files(namespace)
    files["app/parameters.yaml"] = "# The example app, as the team keeps it.\n" + \
        example_params(namespace, 1).replace("replicas: 1", "replicas: 1  # one is enough")
    user.commit_and_push(files, "add the example app")
    cfg = Config(kubeconfig=cluster.kubeconfig, namespace=namespace,
                 default_namespace=namespace, source="git",
                 loop=LoopSettings(interval=3600, retry_backoff=0.5),
                 git=GitSettings(url=git_server.url, ref="main",
                                 params_path="app/parameters.yaml",
                                 manifests_path="app/manifests",
                                 cache_dir=tmp_path / "git-cache", poll_interval=3600,
                                 write=True),
                 events=EventSettings(path=tmp_path / "events.db"))
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("tokens: [{name: ci, token: ci-secret-token, scopes: [write]}]\n")
    cfg = replace(cfg, api=ApiSettings(auth=True, tokens_file=str(tokens)))
    controller = Controller(cfg, env={}).start()
    try:
        wait_for(lambda: controller.engine.last is not None, timeout=60, message="first pass")
        yield testing.TestClient(app_for(controller)), user
    finally:
        controller.stop()


@pytest.mark.cluster
def test_an_api_write_is_authored_by_its_token_and_keeps_the_file(
        token_client: tuple[testing.TestClient, User]) -> None:
    client, user = token_client
    before = (user.path / "app/parameters.yaml").read_text()
    result = client.simulate_patch("/api/parameters",
                                   json={"services": {"redis": {"replicas": 2}}},
                                   headers={"Authorization": "Bearer ci-secret-token"})
    assert result.status_code == 200, result.text
    sha = result.json["revision"]
    user.git("pull", "--quiet", "--ff-only", "origin", "main")
    after = (user.path / "app/parameters.yaml").read_text()
    changed = _lines_changed(before, after)
    assert len(changed) == 1, changed
    ((old_line, new_line),) = changed.values()
    assert "replicas: 1" in old_line and "replicas: 2" in new_line
    assert new_line.endswith("# one is enough\n") and after.startswith("# The example app")
    assert user.git("log", "-1", "--format=%an <%ae>|%s|%b", sha) == (
        "conductor (ci) <conductor@localhost>|conductor: patch parameters|"
        "Changed in app/parameters.yaml:\n- services.redis.replicas")
