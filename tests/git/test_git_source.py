"""The Git source against a real git daemon: what a push changes, what a write pushes, and
that credentials never leak into messages, argv or the cached repository's config."""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from controller.adapters.sources.git import GitConflictError, GitSnapshot, GitSource
from controller.config import GitSettings
from controller.errors import InvalidRequestError, InvalidYAMLError, SourceError, ValidationError
from tests.support.gitrepo import MAIN_PARAMS, SEED_PARAMS, TEMPLATE, GitServer, User, run_git

TOKEN = "tok-3f9c2a7d-very-secret"
PASSWORD = "hunter2-password"


def source(settings: GitSettings, **changes: Any) -> GitSource:
    return GitSource(replace(settings, **changes), {})


# --- reading --------------------------------------------------------------------------


def test_fetch_reads_params_sha_and_commit_time(settings: GitSettings,
                                                git_server: GitServer) -> None:
    snap = source(settings).fetch()
    assert isinstance(snap, GitSnapshot)
    assert snap.sha == git_server.second
    assert snap.ref == "main"
    assert snap.params == MAIN_PARAMS
    assert snap.manifest_root is None  # manifests_path "" = the local root
    seconds = int(run_git(git_server.bare, "show", "-s", "--format=%ct", git_server.second))
    assert snap.committed_at == datetime.fromtimestamp(seconds, tz=UTC)


def test_a_pushed_commit_is_seen_by_remote_sha_then_fetch(settings: GitSettings,
                                                          git_server: GitServer,
                                                          user: User) -> None:
    git = source(settings)
    assert git.fetch().sha == git_server.second
    assert git.remote_sha() == git_server.second
    changed = {"global": {"image_tag": "3.0"}, "services": {}}
    pushed = user.commit_and_push({"parameters.yaml": yaml.safe_dump(changed)})
    assert git.remote_sha() == pushed
    snap = git.fetch()
    assert (snap.sha, snap.params) == (pushed, changed)


@pytest.mark.parametrize("ref", ["release", "refs/heads/release", "v1", "refs/tags/v1",
                                 "FIRST", "FIRST[:10]"])
def test_ref_as_branch_tag_or_commit(settings: GitSettings, git_server: GitServer,
                                     ref: str) -> None:
    ref = {"FIRST": git_server.first, "FIRST[:10]": git_server.first[:10]}.get(ref, ref)
    git = source(settings, ref=ref)
    snap = git.fetch()
    assert snap.sha == git_server.first
    assert snap.params == SEED_PARAMS
    assert snap.ref == ref
    # The cheap check answers in the same terms (a commit; annotated tags peeled), so a
    # poller comparing it with the fetched SHA sees no change.
    expected = ref if ref == git_server.first[:10] else git_server.first
    assert git.remote_sha() == expected


def test_checkout_is_detached_and_clean(settings: GitSettings, git_server: GitServer) -> None:
    git = source(settings, manifests_path="manifests")
    snap = git.fetch()
    assert snap.manifest_root is not None
    stray = snap.manifest_root / "web" / "stray.yaml.j2"
    stray.write_text("kind: Stray\n")
    (snap.manifest_root / "web" / "deployment.yaml.j2").write_text("edited locally\n")
    assert git.fetch().manifest_root == snap.manifest_root
    assert not stray.exists()
    assert (snap.manifest_root / "web" / "deployment.yaml.j2").read_text() == TEMPLATE
    assert run_git(git.repo_dir, "rev-parse", "--abbrev-ref", "HEAD") == "HEAD"  # detached


def test_unknown_ref_is_a_source_error(settings: GitSettings) -> None:
    git = source(settings, ref="no-such-branch")
    with pytest.raises(SourceError) as caught:
        git.fetch()
    assert "no-such-branch" in caught.value.message
    assert caught.value.details["ref"] == "no-such-branch"
    with pytest.raises(SourceError):
        git.remote_sha()


def test_missing_params_file_names_the_path(settings: GitSettings) -> None:
    with pytest.raises(SourceError) as caught:
        source(settings, params_path="config/params.yaml").fetch()
    assert "config/params.yaml" in caught.value.message
    assert caught.value.details["path"] == "config/params.yaml"
    assert caught.value.details["step"] == "read"


def test_invalid_yaml_names_file_and_line(settings: GitSettings, user: User) -> None:
    """invalid_yaml as the README promises, not source_error: Git worked, the file is
    wrong (and a source error would count as a Git fetch failure and fire its alert)."""
    broken = "global:\n  image_tag: '2.0'\nservices:\n  web: {replicas: [1, 2}\n"
    sha = user.commit_and_push({"parameters.yaml": broken})
    with pytest.raises(InvalidYAMLError) as caught:
        source(settings).fetch()
    err = caught.value
    assert not isinstance(err, SourceError)
    assert err.code == "invalid_yaml"
    assert err.details["line"] == 4
    assert "parameters.yaml:4" in err.message
    assert (err.details["path"], err.details["sha"], err.details["step"]) == (
        "parameters.yaml", sha, "read")


@pytest.mark.parametrize(("text", "line"), [("- a\n- b\n", 1), ("", 1),
                                            ("# only a comment\n\njust text\n", 3)])
def test_params_that_are_not_a_mapping(settings: GitSettings, user: User, text: str,
                                       line: int) -> None:
    user.commit_and_push({"parameters.yaml": text})
    with pytest.raises(ValidationError) as caught:
        source(settings).fetch()
    assert f"parameters.yaml:{line}" in caught.value.message
    assert "mapping" in caught.value.message
    assert caught.value.code == "validation_error"


def test_a_ref_moved_to_a_non_descendant_is_reported(settings: GitSettings,
                                                     git_server: GitServer,
                                                     user: User) -> None:
    git = source(settings)
    applied = git.fetch().sha
    ahead = user.commit_and_push({"parameters.yaml": yaml.safe_dump(SEED_PARAMS)})
    assert git.fetch(since=applied).replaced == ""  # a fast-forward
    assert git.fetch(since=ahead).replaced == ""  # unchanged
    # Someone resets main to the seed commit and force-pushes: `ahead` is dropped.
    user.git("push", "--quiet", "--force", "origin", f"{git_server.first}:refs/heads/main")
    snap = git.fetch(since=ahead)
    assert (snap.sha, snap.replaced) == (git_server.first, ahead)
    # A commit the cache never had is not an ancestor either; a generation is no SHA.
    assert git.fetch(since="ab" * 20).replaced == "ab" * 20
    assert git.fetch(since="generation/3").replaced == ""
    assert git.fetch().replaced == ""


def test_manifests_path_is_the_worktree_at_that_commit(settings: GitSettings,
                                                       user: User) -> None:
    git = source(settings, manifests_path="manifests")
    root = git.fetch().manifest_root
    assert root is not None
    assert root.is_relative_to(git.repo_dir)
    assert (root / "web" / "deployment.yaml.j2").read_text() == TEMPLATE
    user.commit_and_push({"manifests/web/deployment.yaml.j2": TEMPLATE + "  labels: {}\n",
                          "manifests/api/service.yaml.j2": "kind: Service\n"})
    root = git.fetch().manifest_root
    assert root is not None
    assert (root / "web" / "deployment.yaml.j2").read_text().endswith("labels: {}\n")
    assert (root / "api" / "service.yaml.j2").is_file()


@pytest.mark.parametrize("path", ["nowhere", "parameters.yaml", "../.."])
def test_manifests_path_must_be_a_folder_in_the_repository(settings: GitSettings,
                                                           path: str) -> None:
    with pytest.raises(SourceError) as caught:
        source(settings, manifests_path=path).fetch()
    assert caught.value.details["step"] == "read"


# --- writing --------------------------------------------------------------------------


def test_write_params_commits_and_pushes(settings: GitSettings, git_server: GitServer,
                                         make_user: Callable[[str], User]) -> None:
    git = source(settings)
    git.fetch()
    new = {"services": {"web": {"replicas": 5}}, "global": {"image_tag": "4.0", "a": 1}}
    sha = git.write_params(new, "scale web", author="Ops Bot <ops@example.com>")
    assert git.remote_sha() == sha
    fresh = make_user("fresh")  # a clone made after the push sees it
    assert fresh.git("rev-parse", "HEAD") == sha
    text = (fresh.path / "parameters.yaml").read_text()
    assert yaml.safe_load(text) == new
    assert text.index("global") < text.index("services")  # stable (sorted) key order
    assert text.index("a: 1") < text.index("image_tag")
    assert fresh.git("log", "-1", "--format=%an <%ae>|%s|%P") == (
        f"Ops Bot <ops@example.com>|scale web|{git_server.second}")
    # Only the parameters file changed; the manifests are still there.
    assert fresh.git("diff", "--name-only", f"{git_server.second}..{sha}") == "parameters.yaml"
    snap = git.fetch()
    assert (snap.sha, snap.params) == (sha, new)


def test_write_params_without_a_prior_fetch_and_unchanged_writes(settings: GitSettings,
                                                                 git_server: GitServer) -> None:
    git = source(settings)
    assert git.write_params(MAIN_PARAMS, "no change") == git_server.second  # no empty commit
    first = git.write_params({"global": {}, "services": {}}, "one")
    second = git.write_params({"global": {"x": 1}, "services": {}}, "two")  # builds on `one`
    assert git.remote_sha() == second
    assert run_git(git_server.bare, "rev-parse", f"{second}^") == first


def test_write_params_can_fix_a_broken_file(settings: GitSettings, user: User) -> None:
    broken = user.commit_and_push({"parameters.yaml": "global: [\n"})
    git = source(settings)
    with pytest.raises(InvalidYAMLError):
        git.fetch()
    fixed = git.write_params(MAIN_PARAMS, "fix parameters")
    assert run_git(user.path, "fetch", "--quiet") == ""
    assert user.git("rev-parse", f"{fixed}^") == broken
    assert git.fetch().params == MAIN_PARAMS


def test_a_concurrent_push_makes_the_write_a_conflict(settings: GitSettings, user: User) -> None:
    git = source(settings)
    git.fetch()
    theirs = user.commit_and_push({"parameters.yaml": yaml.safe_dump({"global": {"by": "user"}})})
    with pytest.raises(GitConflictError) as caught:
        git.write_params({"global": {"by": "conductor"}, "services": {}}, "ours")
    err = caught.value
    assert isinstance(err, SourceError)
    assert err.code == "conflict"
    assert (err.details["step"], err.details["conflict"]) == ("push", "non_fast_forward")
    # Nothing was forced: the user's commit is still the tip, and stays there.
    assert user.remote_head() == theirs
    assert git.remote_sha() == theirs
    # After a fetch the write builds on their commit and goes through.
    assert git.fetch().params == {"global": {"by": "user"}}
    ours = git.write_params({"global": {"by": "conductor"}, "services": {}}, "ours")
    assert user.git("ls-remote", "origin", "refs/heads/main").split()[0] == ours
    user.git("fetch", "--quiet")
    assert user.git("rev-parse", f"{ours}^") == theirs


@pytest.mark.parametrize("ref", ["v1", "FIRST"])
def test_write_params_needs_a_branch(settings: GitSettings, git_server: GitServer,
                                     ref: str) -> None:
    ref = git_server.first if ref == "FIRST" else ref
    git = source(settings, ref=ref)
    with pytest.raises(GitConflictError) as caught:
        git.write_params({"global": {}}, "nope")
    assert caught.value.details["conflict"] == "not_a_branch"
    assert run_git(git_server.bare, "rev-parse", "main") == git_server.second


def test_write_params_rejects_a_malformed_author(settings: GitSettings) -> None:
    with pytest.raises(InvalidRequestError):
        source(settings).write_params({"global": {}}, "msg", author="nobody")


# --- credentials ----------------------------------------------------------------------


def _leaks(text: str) -> list[str]:
    b64 = base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    url_b64 = base64.b64encode(f"user:{PASSWORD}".encode()).decode()
    return [s for s in (TOKEN, b64, PASSWORD, url_b64, "user:") if s in text]


Call = tuple[list[str], dict[str, str]]


@pytest.fixture
def git_calls(monkeypatch: pytest.MonkeyPatch) -> list[Call]:
    """Every git process the source starts: its argv and the environment it adds."""
    calls: list[Call] = []
    original = GitSource._execute

    def spy(self: GitSource, cwd: Path, argv: Sequence[str],
            env: Mapping[str, str]) -> tuple[int, bytes, bytes]:
        calls.append((list(argv), dict(env)))
        return original(self, cwd, argv, env)

    monkeypatch.setattr(GitSource, "_execute", spy)
    return calls


def test_errors_never_show_the_token_or_url_password(tmp_path: Path,
                                                     git_calls: list[Call]) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n")
    settings = GitSettings(url=f"http://user:{PASSWORD}@127.0.0.1:1/repo.git",
                           token_file=str(token_file), cache_dir=tmp_path / "cache")
    git = GitSource(settings, {})
    assert not _leaks(git.url)
    for call in (git.fetch, git.remote_sha,
                 lambda: git.write_params({"global": {}}, "msg")):
        with pytest.raises(SourceError) as caught:
            call()
        err = caught.value
        assert err.details["step"] in ("clone", "fetch")
        assert err.details["reason"]  # git's own words, scrubbed
        assert not _leaks(f"{err} {err.message} {err.details!r} {err.to_dict()!r}")
        assert err.__cause__ is None  # no unscrubbed exception chained on
        assert err.__context__ is None or err.__suppress_context__
    # The cache was created (init + remote) but holds no credentials.
    config = (git.repo_dir / ".git" / "config").read_text()
    assert "127.0.0.1:1/repo.git" in config
    assert not _leaks(config)
    # Not in argv either: the token rides in the environment of network commands only.
    assert git_calls
    for argv, env in git_calls:
        assert not _leaks(" ".join(argv)), argv
        assert env["GIT_TERMINAL_PROMPT"] == "0"
    network = [env for argv, env in git_calls if argv[1] in ("fetch", "ls-remote", "push")]
    assert network
    expected = "Authorization: Basic " + base64.b64encode(
        f"x-access-token:{TOKEN}".encode()).decode()
    for env in network:
        assert (env["GIT_CONFIG_COUNT"], env["GIT_CONFIG_KEY_0"], env["GIT_CONFIG_VALUE_0"]) == (
            "1", "http.extraHeader", expected)
    local = [env for argv, env in git_calls if argv[1] not in ("fetch", "ls-remote", "push")]
    assert local and all("GIT_CONFIG_VALUE_0" not in env for env in local)


class _Recorder(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str | None]]] = []  # each server gets its own list

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization")))
        self.send_response(404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


@pytest.fixture
def http_recorder() -> Iterator[tuple[int, list[tuple[str, str | None]]]]:
    seen: list[tuple[str, str | None]] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize("where", ["token_env", "url"])
def test_credentials_reach_the_server_as_a_header(tmp_path: Path, where: str,
                                                  http_recorder: tuple[int, list[Any]]) -> None:
    port, seen = http_recorder
    if where == "token_env":
        settings = GitSettings(url=f"http://127.0.0.1:{port}/repo.git", token_env="GIT_TOKEN",
                               cache_dir=tmp_path / "cache")
        env = {"GIT_TOKEN": TOKEN}
        pair = f"x-access-token:{TOKEN}"
    else:
        settings = GitSettings(url=f"http://user:{PASSWORD}@127.0.0.1:{port}/repo.git",
                               cache_dir=tmp_path / "cache")
        env = {}
        pair = f"user:{PASSWORD}"
    git = GitSource(settings, env)
    with pytest.raises(SourceError) as caught:
        git.remote_sha()
    assert not _leaks(f"{caught.value} {caught.value.details!r}")
    assert seen, "git never reached the server"
    for path, authorization in seen:
        assert not _leaks(path)
        assert authorization == "Basic " + base64.b64encode(pair.encode()).decode()


def test_a_missing_token_variable_is_reported(settings: GitSettings) -> None:
    git = GitSource(replace(settings, token_env="NOT_THERE"), {"OTHER": "x"})
    with pytest.raises(SourceError) as caught:
        git.fetch()
    assert "NOT_THERE" in caught.value.message


def test_ssh_key_is_given_through_git_ssh_command(tmp_path: Path,
                                                  git_calls: list[Call]) -> None:
    key = tmp_path / "id key"
    key.write_text("not really a key\n")
    settings = GitSettings(url="ssh://git@127.0.0.1:1/repo.git", ssh_key_file=str(key),
                           cache_dir=tmp_path / "cache")
    with pytest.raises(SourceError):
        GitSource(settings, {}).remote_sha()
    (_argv, env), = git_calls
    assert env["GIT_SSH_COMMAND"] == (
        f"ssh -i '{key}' -o IdentitiesOnly=yes -o StrictHostKeyChecking=accept-new "
        "-o BatchMode=yes")
    assert env["GIT_TERMINAL_PROMPT"] == "0"


# --- the cache ------------------------------------------------------------------------


def test_a_cache_dir_that_is_not_a_repository_is_recloned(settings: GitSettings,
                                                          git_server: GitServer) -> None:
    git = source(settings)
    git.repo_dir.mkdir(parents=True)
    (git.repo_dir / "junk").write_text("left over\n")
    (git.repo_dir / ".git").write_text("gitdir: /nowhere\n")
    assert git.fetch().sha == git_server.second
    assert not (git.repo_dir / "junk").exists()


def test_a_cache_of_another_remote_is_recloned(settings: GitSettings, git_server: GitServer,
                                               tmp_path: Path) -> None:
    git = source(settings)
    other = tmp_path / "other"
    run_git(tmp_path, "init", "--quiet", str(other))
    run_git(other, "commit", "--quiet", "--allow-empty", "-m", "other")
    git.repo_dir.parent.mkdir(parents=True)
    run_git(tmp_path, "clone", "--quiet", str(other), str(git.repo_dir))
    snap = git.fetch()
    assert snap.sha == git_server.second
    assert run_git(git.repo_dir, "remote", "get-url", "origin") == git_server.url


def test_a_stale_git_lock_is_removed(settings: GitSettings, git_server: GitServer) -> None:
    git = source(settings)
    git.fetch()
    (git.repo_dir / ".git" / "index.lock").write_text("")  # a process died mid-checkout
    assert git.fetch().sha == git_server.second


def test_sources_sharing_a_cache_fetch_and_write_concurrently(settings: GitSettings,
                                                              git_server: GitServer) -> None:
    sources = [source(settings), source(settings)]
    errors: list[BaseException] = []
    shas: list[str] = []

    def work(git: GitSource, n: int) -> None:
        try:
            for i in range(3):
                shas.append(git.fetch().sha)
                if n == 0 and i == 1:
                    git.write_params({"global": {"written": True}, "services": {}}, "write")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(sources[n % 2], n)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert len(shas) == 12
    final = sources[1].fetch()
    assert final.params == {"global": {"written": True}, "services": {}}
    assert set(shas) <= {git_server.second, final.sha}


def test_no_url_is_a_source_error(tmp_path: Path) -> None:
    git = GitSource(GitSettings(url="", cache_dir=tmp_path / "cache"), {})
    with pytest.raises(SourceError) as caught:
        git.fetch()
    assert caught.value.details["step"] == "clone"
