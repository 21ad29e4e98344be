"""Parameters (and optionally manifests) from a Git repository, so a `git push` changes what runs.

This is the only module that talks to Git. It keeps one clone per remote URL in the cache
directory, fetches it, checks the configured ref out detached, and reads the parameters file
from that exact commit. It can also commit a new parameters file and push it — never forced,
so a concurrent change by someone else is reported as a conflict instead of being lost. A
write edits the file rather than rewriting it (`editing`: comments, key order and quoting
stay), is authored by the API token that asked for it (`author_for`), and its message lists
the paths that changed.
A fetch given the commit applied before says when the ref no longer descends from it (a
force-push dropped it), so the caller can warn instead of silently going back in time.

Failures keep their nature: Git failing (network, credentials, a missing ref or file) is a
`SourceError`; a parameters file that Git served fine but that is not valid YAML is
`invalid_yaml` (not a mapping: `validation_error`), so a typo is not a fetch failure.

Credentials never reach argv, the remote URL or .git/config: an HTTPS token (or the
`user:password@` of the configured URL) travels as an `http.extraHeader` set through
`GIT_CONFIG_*` variables of the one git process that needs it, and every message, error
detail and log line passes through a scrubber that removes the secrets.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import io
import logging
import re
import shlex
import shutil
import tarfile
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import git
import yaml

from controller.adapters.sources import editing
from controller.config import GitSettings
from controller.errors import (
    ConductorError,
    InvalidRequestError,
    InvalidYAMLError,
    SourceError,
    ValidationError,
)

log = logging.getLogger(__name__)

DEFAULT_AUTHOR = "conductor <conductor@localhost>"
# A git command still running after this long is stuck (a dead network, a server that
# stopped answering); it is killed so the loop can report it and try again.
COMMAND_TIMEOUT = 300.0
_REASON_MAX = 2000  # characters of git's stderr kept in error details
_HEX = re.compile(r"[0-9a-fA-F]{7,64}")
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@]+@")
_AUTHOR = re.compile(r"^\s*(?P<name>[^<>]*[^<>\s])\s*<(?P<email>[^<>\s]+)>\s*$")
# Short strings would blank out ordinary words of a message; they are still removed from
# URLs by the userinfo pattern, and a secret that short protects little anyway.
_MIN_SECRET = 4


class GitConflictError(SourceError):
    """A write could not be pushed without overwriting someone else's commit (or the ref
    is not a branch). Fetch again and decide; never retried or forced here."""

    code = "conflict"


@dataclass(frozen=True)
class GitSnapshot:
    """What one `fetch` read: the parameters and manifests at one commit."""

    sha: str  # full commit SHA that was read
    ref: str  # the configured ref
    params: dict[str, Any]  # the parameters file: {"global": ..., "services": ...}
    manifest_root: Path | None  # settings.manifests_path in the worktree; None when ""
    committed_at: datetime  # commit time, for commit-to-applied latency
    # The `since` commit given to `fetch` when the ref no longer descends from it (a
    # force-push or a reset dropped it from the branch's history); "" otherwise.
    replaced: str = ""


class _Scrubber:
    """Removes known secrets and any URL userinfo from text meant for humans."""

    def __init__(self) -> None:
        self._secrets: frozenset[str] = frozenset()

    def add(self, *secrets: str) -> None:
        # Rebuilt rather than mutated, so a concurrent __call__ sees a consistent set;
        # old tokens are kept, a rotated one may still appear in a late message.
        self._secrets = self._secrets | {s for s in secrets if len(s) >= _MIN_SECRET}

    def __call__(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return _USERINFO.sub(r"\1***@", text)


@dataclass(frozen=True)
class _Resolved:
    sha: str
    branch: str | None  # the branch name when the ref is a branch, else None


class GitSource:
    """One Git repository and ref: fetch snapshots, check the remote cheaply, write params.

    Thread-safe; several processes may share `settings.cache_dir`.
    """

    def __init__(self, settings: GitSettings, env: Mapping[str, str]) -> None:
        self.settings = settings
        self._env = env  # only settings.token_env is read from it, at each command
        self._scrub = _Scrubber()
        self._remote_url, url_user, url_password = _split_userinfo(settings.url)
        self._url_header = ""
        if url_user or url_password:
            pair = f"{url_user}:{url_password}"
            self._url_header = _basic_header(pair)
            self._scrub.add(url_password, unquote(url_password), pair, unquote(pair),
                            self._url_header)
        self.url = self._scrub(settings.url)  # safe to show
        key = hashlib.sha256(self._remote_url.encode()).hexdigest()[:16]
        self.repo_dir = settings.cache_dir / key
        self._lock_path = settings.cache_dir / f"{key}.lock"
        self._lock = threading.Lock()
        # The commit and branch of the last fetch: the base a write builds on, so a write
        # made from parameters read at that commit can't silently undo a newer push.
        self._last: _Resolved | None = None

    # --- public API -------------------------------------------------------------------

    def fetch(self, since: str = "") -> GitSnapshot:
        """Bring the cache up to date, check the ref out (detached, clean) and read it.

        `since` is the commit applied before (if any): when the ref's new commit does not
        descend from it, the snapshot says so in `replaced`.

        A file at that commit that cannot be read as parameters raises InvalidYAMLError or
        ValidationError (the repository's content is wrong, Git works); anything else that
        fails is a SourceError.
        """
        with self._locked("fetch"):
            resolved = self._fetch_locked()
            # A revision that is no SHA (`generation/N`: the resource source before) has no
            # history to compare with.
            replaced = since if _HEX.fullmatch(since) and since != resolved.sha and \
                not self._descends(resolved.sha, since) else ""
            self._git(["checkout", "--quiet", "--force", "--detach", resolved.sha], "checkout")
            self._git(["clean", "-ffdxq"], "checkout")
            # Recorded before reading: when the file at this commit is broken, the caller
            # has seen this commit (in the error) and may write a fix on top of it.
            self._last = resolved
            committed_at = self._committed_at(resolved.sha)
            params = self._read_params(resolved.sha, self._params_path())
            manifest_root = self._manifest_root(resolved.sha)
        log.info("git %s %s at %s", self.url, self.settings.ref, resolved.sha[:12])
        return GitSnapshot(sha=resolved.sha, ref=self.settings.ref, params=params,
                           manifest_root=manifest_root, committed_at=committed_at,
                           replaced=replaced)

    def remote_sha(self) -> str:
        """The ref's current commit on the remote (ls-remote: no objects are fetched)."""
        ref = self.settings.ref
        found = self.remote_shas([ref])
        if ref in found:
            return found[ref]
        raise self._error(f"ref {ref!r} not found in {self.url}", "fetch",
                          "no branch or tag by that name on the remote")

    def remote_shas(self, refs: Sequence[str]) -> dict[str, str]:
        """The current commit of each of `refs` on the remote, in one ls-remote (no
        objects fetched): the poll of a repository however many instances follow it. A ref
        that is a commit SHA answers itself; a ref the remote lacks is left out."""
        self._require_url("fetch")
        patterns: dict[str, list[str]] = {}
        for ref in refs:
            branch, tag = _ref_names(ref)
            patterns[ref] = ([f"refs/heads/{branch}"] if branch else []) + (
                [f"refs/tags/{tag}^{{}}", f"refs/tags/{tag}"] if tag else [])
        wanted = sorted({p for names in patterns.values() for p in names})
        self._mkdir_cache("fetch")
        out = self._git(["ls-remote", "--", self._remote_url, *wanted], "fetch",
                        cwd=self.settings.cache_dir, auth=True) if wanted else ""
        found: dict[str, str] = {}
        for line in out.splitlines():
            sha, _, name = line.partition("\t")
            found[name.strip()] = sha.strip()
        answers: dict[str, str] = {}
        for ref, names in patterns.items():
            # A branch wins over a tag of the same name (as in `fetch`); an annotated tag
            # is peeled (^{}) so the answer is a commit, comparable with GitSnapshot.sha.
            sha = next((found[n] for n in names if n in found), "")
            if not sha and _HEX.fullmatch(ref):
                sha = ref
            if sha:
                answers[ref] = sha
        return answers

    # --- one repository, many readers (registry.py) --------------------------------------

    def update(self) -> None:
        """Fetch the remote's branches and tags into the cache, without checking anything
        out: readers of several refs and paths then read commits from the object store."""
        with self._locked("fetch"):
            fresh = self._ensure_repo()
            self._fetch_objects("clone" if fresh else "fetch")

    def resolve(self, ref: str) -> str:
        """The commit `ref` names in the cache as last updated (a SourceError if none)."""
        with self._locked("fetch"):
            return self._resolve("checkout", ref).sha

    def read_params_at(self, sha: str, path: str) -> tuple[dict[str, Any], str]:
        """The parameters file at `path` in commit `sha` (read from the object store: no
        checkout, so readers of different commits do not disturb each other), and its
        blob id (`git hash-object`: the parameters' version, as the API's ETag)."""
        with self._locked("read"):
            rel = _repo_path(path)
            data = self._blob(sha, rel, "read")
            params = self._parse_params(data, sha, rel)
        blob = hashlib.sha1(b"blob %d\0" % len(data or b"") + (data or b""),
                            usedforsecurity=False).hexdigest()
        return params, blob

    def committed_at(self, sha: str) -> datetime:
        with self._locked("read"):
            return self._committed_at(sha)

    def export(self, sha: str, path: str, dest: Path) -> Path:
        """The folder `path` of commit `sha` written under `dest` (git archive: no checkout),
        returned as the folder to render from; a SourceError when it is no folder there."""
        rel = _repo_path(path)
        with self._locked("read"):
            kind = self._git(["cat-file", "-t", f"{sha}:{rel}" if rel else f"{sha}^{{tree}}"],
                             "read", check=False).strip()
            if kind != "tree":
                raise self._error(f"manifests path {path!r} is not a folder at {sha[:12]}",
                                  "read", "not a folder in the repository", path=path, sha=sha)
            data = self._git_bytes(["archive", "--format=tar", sha, "--", rel or "."], "read")
            # Under the cache's lock too: processes sharing the cache export one at a time.
            partial = dest.with_name(dest.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                tar.extractall(partial, filter="data")  # no links out, no devices
            shutil.rmtree(dest, ignore_errors=True)
            partial.rename(dest)  # whole or absent: a reader never sees half a tree
        return dest / rel if rel else dest

    def write_params(self, params: Mapping[str, Any], message: str,
                     author: str = DEFAULT_AUTHOR) -> str:
        """Commit the parameters file on the branch and push; returns the new commit SHA.

        The file is edited, not rewritten (`editing.edit`): comments, key order and quoting
        stay, only the values that changed change, and the commit message lists the paths
        that changed. The commit's parent is the branch tip this source last fetched
        (fetching first if it never did), so parameters edited from a snapshot can't
        overwrite a newer push: the push is then not a fast-forward and GitConflictError
        is raised. Nothing is retried or forced. When the file would not change, no commit
        is made and the base is returned.
        """
        match = _AUTHOR.match(author)
        if not match:
            raise InvalidRequestError(f"author {author!r} is not 'Name <email>'",
                                      {"author": author})
        path = self._params_path()
        with self._locked("push"):
            base = self._last or self._fetch_locked()
            if base.branch is None:
                raise self._error(
                    f"ref {self.settings.ref!r} is not a branch; parameters can only be "
                    "committed to a branch", "push", "not a branch",
                    cls=GitConflictError, conflict="not_a_branch")
            blob = self._blob(base.sha, path, "push")
            original = _text(blob)
            try:
                content = editing.edit(original, params)
            except yaml.YAMLError as e:
                raise InvalidRequestError(f"parameters cannot be written as YAML: {e}",
                                          {"reason": str(e)}) from e
            if blob == content.encode():
                return base.sha
            paths = editing.changed_paths(_old_params(original), params)
            sha = self._commit(base.sha, path, content,
                               _commit_message(message or "Update parameters", path, paths),
                               match["name"], match["email"])
            self._push(sha, base.branch)
            self._last = _Resolved(sha, base.branch)
        log.info("git %s: pushed %s to %s (%s)", self.url, sha[:12], base.branch,
                 ", ".join(paths) or "no value changed")
        return sha

    # --- fetching and reading ---------------------------------------------------------

    def _fetch_locked(self) -> _Resolved:
        fresh = self._ensure_repo()
        step = "clone" if fresh else "fetch"
        self._fetch_objects(step)
        return self._resolve(step)

    def _fetch_objects(self, step: str) -> None:
        # Tags are forced too: a tag moved on the remote must move here, or a tag ref
        # would keep serving the old commit. --prune drops branches and tags deleted there.
        self._git(["fetch", "--quiet", "--prune", "--force", "origin",
                   "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*"], step,
                  auth=True)

    def _resolve(self, step: str, ref: str = "") -> _Resolved:
        ref = ref or self.settings.ref
        branch, tag = _ref_names(ref)
        if branch and (sha := self._rev(f"refs/remotes/origin/{branch}")):
            return _Resolved(sha, branch)
        if tag and (sha := self._rev(f"refs/tags/{tag}")):
            return _Resolved(sha, None)
        if _HEX.fullmatch(ref):
            sha = self._rev(ref)
            if sha is None:
                # A commit no branch or tag reaches is not fetched by the refspecs above;
                # servers that allow it hand it over when asked by name.
                self._git(["fetch", "--quiet", "origin", ref], step, check=False, auth=True)
                sha = self._rev(ref)
            if sha is not None and sha.startswith(ref.lower()):
                return _Resolved(sha, None)
        raise self._error(f"ref {ref!r} not found in {self.url}", "checkout",
                          "no branch, tag or commit by that name", ref=ref)

    def _descends(self, sha: str, ancestor: str) -> bool:
        """Whether `ancestor` is in `sha`'s history. A commit we no longer have is not:
        the fetch brought `sha`'s whole history."""
        status, _out, _err = self._run(["merge-base", "--is-ancestor", ancestor, sha],
                                       "checkout")
        return status == 0

    def _rev(self, name: str) -> str | None:
        out = self._git(["rev-parse", "--verify", "--quiet", f"{name}^{{commit}}"],
                        "checkout", check=False)
        return out.strip() or None

    def _committed_at(self, sha: str) -> datetime:
        out = self._git(["show", "-s", "--format=%ct", sha], "read")
        return datetime.fromtimestamp(int(out.strip()), tz=UTC)

    def _params_path(self) -> str:
        return _repo_path(self.settings.params_path) or "parameters.yaml"

    def _blob(self, sha: str, path: str, step: str) -> bytes | None:
        """The file at `path` in commit `sha`, from the object store (symlinks not followed);
        None when there is no such file."""
        kind = self._git(["cat-file", "-t", f"{sha}:{path}"], step, check=False).strip()
        if kind != "blob":
            return None
        return self._git_bytes(["cat-file", "blob", f"{sha}:{path}"], step)

    def _read_params(self, sha: str, path: str) -> dict[str, Any]:
        return self._parse_params(self._blob(sha, path, "read"), sha, path)

    def _parse_params(self, data: bytes | None, sha: str, path: str) -> dict[str, Any]:
        if data is None:
            raise self._error(f"{path}: no such file at {sha[:12]}", "read", "file not found",
                              path=path, sha=sha)
        # The file's content being wrong is not Git failing: invalid_yaml or
        # validation_error (as a template's), never counted as a fetch failure.
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self._error(f"{path}: not UTF-8 text", "read", str(e), path=path,
                              sha=sha, cls=InvalidYAMLError) from None
        try:
            params = yaml.safe_load(text)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark else None
            column = mark.column + 1 if mark else None
            problem = str(e.problem or e.context or "invalid YAML")
            where = f"{path}:{line}" if line else path
            raise self._error(f"{where}: invalid YAML: {problem}", "read", problem, path=path,
                              line=line, column=column, sha=sha,
                              cls=InvalidYAMLError) from None
        except yaml.YAMLError as e:
            raise self._error(f"{path}: invalid YAML: {e}", "read", str(e), path=path,
                              sha=sha, cls=InvalidYAMLError) from None
        if not isinstance(params, dict):
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            line = node.start_mark.line + 1 if node is not None else 1
            got = "empty" if params is None else type(params).__name__
            raise self._error(f"{path}:{line}: parameters must be a mapping, got {got}",
                              "read", "not a mapping", path=path, line=line, sha=sha,
                              cls=ValidationError)
        return params

    def _manifest_root(self, sha: str) -> Path | None:
        if not self.settings.manifests_path:
            return None
        rel = _repo_path(self.settings.manifests_path)
        root = (self.repo_dir / rel).resolve() if rel else self.repo_dir.resolve()
        # A symlink or ".." must not lead out of the checkout.
        inside = root.is_relative_to(self.repo_dir.resolve())
        if not inside or not root.is_dir():
            raise self._error(
                f"manifests path {self.settings.manifests_path!r} is not a folder at "
                f"{sha[:12]}", "read", "not a folder in the repository",
                path=self.settings.manifests_path, sha=sha)
        return root

    # --- writing ----------------------------------------------------------------------

    def _commit(self, base: str, path: str, content: str, message: str, name: str,
                email: str) -> str:
        """A commit of `base` with `path` replaced, built with a scratch index so the
        checked-out worktree (which a render may be reading) is not touched."""
        with tempfile.TemporaryDirectory(prefix="conductor-git-") as tmp:
            index = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            blob_file = Path(tmp) / "params.yaml"
            blob_file.write_text(content, encoding="utf-8")
            self._git(["read-tree", base], "push", extra_env=index)
            blob = self._git(["hash-object", "-w", "--", str(blob_file)], "push").strip()
            self._git(["update-index", "--add", "--cacheinfo", f"100644,{blob},{path}"],
                      "push", extra_env=index)
            tree = self._git(["write-tree"], "push", extra_env=index).strip()
        identity = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email,
                    "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}
        return self._git(["commit-tree", tree, "-p", base, "-m", message], "push",
                         extra_env=identity).strip()

    def _push(self, sha: str, branch: str) -> None:
        # No force of any kind: the remote accepts only a fast-forward of what we built on.
        status, out, err = self._run(
            ["push", "--porcelain", "origin", f"{sha}:refs/heads/{branch}"], "push", auth=True)
        if status == 0:
            return
        rejected = [line for line in out.splitlines() if line.startswith("!")]
        if any("[rejected]" in line for line in rejected):
            raise self._error(
                f"push to {branch!r} rejected: the branch moved since {self._short_last()} "
                "(not a fast-forward); fetch and write again", "push",
                "\n".join(rejected) or err, cls=GitConflictError, conflict="non_fast_forward")
        raise self._error(f"push to {branch!r} failed: {_last_line(err or out)}", "push",
                          err or out)

    def _short_last(self) -> str:
        return self._last.sha[:12] if self._last else "the last fetch"

    # --- the cache --------------------------------------------------------------------

    def _ensure_repo(self) -> bool:
        """Make repo_dir a repository of our remote; True when it had to be created."""
        self._require_url("clone")
        problem = self._cache_problem()
        if problem is None:
            self._remove_stale_locks()
            return False
        try:
            if problem != "missing":
                log.warning("git cache %s is unusable (%s); cloning again", self.repo_dir,
                            problem)
                if self.repo_dir.is_dir() and not self.repo_dir.is_symlink():
                    shutil.rmtree(self.repo_dir)
                else:
                    self.repo_dir.unlink()  # a file, or a symlink (whose target is not ours)
            self.repo_dir.mkdir(parents=True)
        except OSError as e:
            raise self._error(f"cannot prepare the git cache {self.repo_dir}", "clone",
                              str(e)) from None
        # init + remote add, then the same fetch as always: a clone interrupted half-way
        # leaves a valid repository that the next fetch simply completes.
        self._git(["init", "--quiet"], "clone")
        self._git(["remote", "add", "origin", self._remote_url], "clone")
        return True

    def _cache_problem(self) -> str | None:
        if not self.repo_dir.exists() and not self.repo_dir.is_symlink():
            return "missing"
        if self.repo_dir.is_symlink() or not (self.repo_dir / ".git").is_dir():
            return "not a repository"
        status, top, _err = self._run(["rev-parse", "--show-toplevel"], "clone")
        if status != 0 or Path(top.strip()).resolve() != self.repo_dir.resolve():
            return "not a repository"
        status, url, _err = self._run(["config", "--get", "remote.origin.url"], "clone")
        if status != 0 or url.strip() != self._remote_url:
            return "a different remote"
        return None

    def _remove_stale_locks(self) -> None:
        # We hold the cache's file lock, so a git lock file left here belongs to a process
        # that died mid-command; git would refuse to work until it is gone.
        gitdir = self.repo_dir / ".git"
        for stale in [*gitdir.glob("*.lock"), *(gitdir / "refs").rglob("*.lock")]:
            log.warning("removing stale git lock %s", stale)
            stale.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _locked(self, step: str) -> Iterator[None]:
        """This source's lock, then the cache's file lock (other processes, other sources)."""
        with self._lock:
            self._mkdir_cache(step)
            with open(self._lock_path, "a+b") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)

    def _mkdir_cache(self, step: str) -> None:
        try:
            self.settings.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise self._error(f"cannot create the git cache {self.settings.cache_dir}", step,
                              str(e)) from None

    def _require_url(self, step: str) -> None:
        if not self.settings.url:
            raise self._error("no Git URL configured (git.url)", step, "empty url")

    # --- running git ------------------------------------------------------------------

    def _git(self, args: Sequence[str], step: str, *, check: bool = True,
             cwd: Path | None = None, extra_env: Mapping[str, str] | None = None,
             auth: bool = False) -> str:
        status, out, err = self._run(args, step, cwd=cwd, extra_env=extra_env, auth=auth)
        if check and status != 0:
            reason = err or out
            raise self._error(f"git {args[0]} failed ({step} {self.url}): {_last_line(reason)}",
                              step, reason)
        return out if status == 0 else ""

    def _git_bytes(self, args: Sequence[str], step: str) -> bytes:
        status, out, err = self._execute(self.repo_dir, ["git", *args],
                                         self._command_env(step, auth=False))
        if status != 0:
            reason = err.decode("utf-8", "replace")
            raise self._error(f"git {args[0]} failed ({step} {self.url}): {_last_line(reason)}",
                              step, reason)
        return out

    def _run(self, args: Sequence[str], step: str, *, cwd: Path | None = None,
             extra_env: Mapping[str, str] | None = None,
             auth: bool = False) -> tuple[int, str, str]:
        env = {**self._command_env(step, auth=auth), **(extra_env or {})}
        status, out, err = self._execute(cwd or self.repo_dir, ["git", *args], env)
        return status, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def _execute(self, cwd: Path, argv: Sequence[str],
                 env: Mapping[str, str]) -> tuple[int, bytes, bytes]:
        """Run one git command: the single place a git process is started."""
        try:
            status, out, err = git.Git(str(cwd)).execute(
                list(argv), env=dict(env), with_extended_output=True, with_exceptions=False,
                stdout_as_string=False, strip_newline_in_stdout=False,
                kill_after_timeout=COMMAND_TIMEOUT)
        except git.GitCommandNotFound as e:
            return 127, b"", f"git is not installed: {e}".encode()
        return int(status or 0), _as_bytes(out), _as_bytes(err)

    def _command_env(self, step: str, *, auth: bool) -> dict[str, str]:
        """Environment for one git process: credentials live here and nowhere else, and
        only commands that talk to the remote (`auth`) get them."""
        env = {"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": ""}
        if not auth:
            return env
        header = self._auth_header(step)
        if header:
            env.update({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader",
                        "GIT_CONFIG_VALUE_0": f"Authorization: {header}"})
        if self.settings.ssh_key_file:
            env["GIT_SSH_COMMAND"] = (
                f"ssh -i {shlex.quote(self.settings.ssh_key_file)} -o IdentitiesOnly=yes "
                "-o StrictHostKeyChecking=accept-new -o BatchMode=yes")
        return env

    def _auth_header(self, step: str) -> str:
        token = self._token(step)
        if token:
            header = _basic_header(f"x-access-token:{token}")
            self._scrub.add(token, header)
            return header
        return self._url_header

    def _token(self, step: str) -> str:
        # Read at every command, so a rotated token file is picked up without a restart.
        if self.settings.token_file:
            try:
                token = Path(self.settings.token_file).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as e:
                raise self._error(f"cannot read the token file {self.settings.token_file}",
                                  step, str(e)) from None
            if not token:
                raise self._error(f"the token file {self.settings.token_file} is empty",
                                  step, "empty token")
            return token
        if self.settings.token_env:
            token = self._env.get(self.settings.token_env, "").strip()
            if not token:
                raise self._error(f"the token variable {self.settings.token_env} is not set",
                                  step, "empty token")
            return token
        return ""

    def _error(self, message: str, step: str, reason: str, *,
               cls: type[ConductorError] = SourceError, **extra: Any) -> ConductorError:
        """A SourceError whose every string has been scrubbed; raised `from None` by
        callers, so no unscrubbed cause rides along in a traceback."""
        reason = self._scrub(reason.strip())
        if len(reason) > _REASON_MAX:
            reason = "…" + reason[-_REASON_MAX:]  # git puts the decisive line last
        details: dict[str, Any] = {"url": self.url, "ref": self.settings.ref, "step": step,
                                   "reason": reason}
        details.update({k: self._scrub(v) if isinstance(v, str) else v
                        for k, v in extra.items()})
        return cls(self._scrub(message), details)


# --- pure helpers ---------------------------------------------------------------------


def _split_userinfo(url: str) -> tuple[str, str, str]:
    """(url without userinfo, user, password) for http(s) URLs; other URLs are kept whole
    (an ssh user is not a secret, and scp-like `git@host:path` has no scheme)."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or "@" not in parts.netloc:
        return url, "", ""
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=host)), unquote(user), unquote(password)


def _last_line(text: str) -> str:
    """git's decisive message is its last non-empty line (the ones before are context)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _as_bytes(value: str | bytes | None) -> bytes:
    # gitpython hands back bytes with stdout_as_string=False, but types it loosely.
    if value is None:
        return b""
    return value.encode() if isinstance(value, str) else value


def _basic_header(pair: str) -> str:
    return "Basic " + base64.b64encode(pair.encode()).decode()


def _ref_names(ref: str) -> tuple[str | None, str | None]:
    """(branch name, tag name) the ref may denote; a bare name may be either."""
    if ref.startswith("refs/heads/"):
        return ref.removeprefix("refs/heads/"), None
    if ref.startswith("refs/tags/"):
        return None, ref.removeprefix("refs/tags/")
    return ref, ref


def _repo_path(path: str) -> str:
    """A path inside the repository in git's form: posix, relative, no "." parts."""
    return "/".join(p for p in PurePosixPath(path).parts if p not in ("/", "."))


def author_for(token_name: str | None) -> str:
    """The commit author for a write made with an API token: `conductor (<token name>)`,
    plain `conductor` when the API has no authentication. The name is reduced to what an
    author name may hold (no angle brackets, no line breaks)."""
    name = re.sub(r"[<>\s]+", " ", token_name or "").strip()
    return f"conductor ({name}) <conductor@localhost>" if name else DEFAULT_AUTHOR


def _commit_message(subject: str, path: str, paths: list[str]) -> str:
    """The caller's subject, then every changed path in the body (one a line)."""
    if not paths:
        return f"{subject}\n\n{path}: formatting only, no value changed\n"
    body = "\n".join(f"- {p}" for p in paths)
    return f"{subject}\n\nChanged in {path}:\n{body}\n"


def _text(blob: bytes | None) -> str | None:
    """The file's text, or None when there is none or it is not UTF-8 (written afresh)."""
    if blob is None:
        return None
    try:
        return blob.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _old_params(text: str | None) -> dict[str, Any]:
    """What the file held, for the list of changed paths; {} when it held no mapping."""
    try:
        old = yaml.safe_load(text) if text is not None else None
    except yaml.YAMLError:
        return {}
    return old if isinstance(old, dict) else {}
