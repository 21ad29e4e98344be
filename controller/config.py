"""Settings: small frozen groups with documented defaults, loaded once and passed down.

No other module reads the environment; `Config.from_env` is called by the command line
(or the caller of `controller.run`) and the resulting object flows to every component.

Strict: `check_environment` refuses a `CONDUCTOR_*` variable that names no setting (a typo
would otherwise be silently ignored) and suggests the closest name; every value is
converted with its field's type (a Literal's choices included) and `validate` checks
ranges and files. Each problem is one `ConfigError` line naming the setting.
"""

from __future__ import annotations

import difflib
import math
import os
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from controller import assets

_T = TypeVar("_T")

DEFAULT_MANIFESTS = assets.MANIFESTS  # the example app, package data (controller/assets)


@dataclass(frozen=True)
class GitSettings:
    """Where parameters (and optionally manifests) come from when the source is Git."""

    url: str = ""
    ref: str = "main"  # branch, tag or commit
    params_path: str = "parameters.yaml"  # file inside the repository, global/services shape
    manifests_path: str = ""  # manifests root inside the repository; "" = use the local root
    token_file: str = ""  # HTTPS token, read at fetch time, never logged
    token_env: str = ""  # or the name of an environment variable holding it
    ssh_key_file: str = ""
    cache_dir: Path = Path.home() / ".cache" / "conductor" / "git"
    poll_interval: float = 60.0
    # Parameter writes through the API commit and push to the ref's branch; without this
    # they are refused with 409 (the repository stays the only truth).
    write: bool = False
    webhook_secret_file: str = ""  # HMAC secret / token that webhook calls must prove


@dataclass(frozen=True)
class LoopSettings:
    interval: float = 60.0  # seconds between passes when nothing wakes the loop
    jitter: float = 0.1  # fraction of the interval added at random, so replicas don't align
    retry_backoff: float = 5.0  # first delay before retrying a failed pass (doubles, capped)
    retry_backoff_max: float = 300.0
    # An interval pass that finds nothing changed (engine.py's fingerprint) skips rendering
    # and planning; a full pass still runs at least this often (seconds; 0: always full).
    full_pass_every: float = 600.0


@dataclass(frozen=True)
class InstanceSettings:
    """Which DeploymentParameters objects this controller reconciles, and how many at once.

    Every object in the watched namespaces (matching `selector`, when set) is an instance
    with its own loop state; their passes share one work queue (runtime/workqueue.py)."""

    # () = the controller's own namespace; "*" = all namespaces; else a list of them.
    namespaces: tuple[str, ...] = ()
    selector: str = ""  # a label selector on the objects, e.g. "team=blue"; "" = all
    concurrency: int = 4  # passes of different instances in parallel at most
    min_gap: float = 0.2  # seconds between two pass starts of one instance, at least
    finalize: bool = True  # prune an instance's objects when its object is deleted


@dataclass(frozen=True)
class ApplySettings:
    field_manager: str = "conductor"
    # Server-side apply conflicts: "force" takes ownership of fields another manager set
    # (GitOps: the repository is the truth); "fail" reports the conflict and applies nothing
    # to that object.
    conflicts: Literal["force", "fail"] = "force"
    concurrency: int = 8  # parallel requests within one apply phase
    attempts: int = 5  # tries per request on transient errors (429, 5xx, timeouts, resets)
    backoff_initial: float = 0.2
    backoff_max: float = 5.0
    request_timeout: float = 30.0
    delete_timeout: float = 60.0  # how long `down` waits for objects to be gone


@dataclass(frozen=True)
class PruneSettings:
    enabled: bool = True
    allow_empty: bool = False  # prune everything when a render comes out empty
    namespaces: bool = False  # Namespaces and PVCs hold data: kept unless asked
    persistent_volume_claims: bool = False


@dataclass(frozen=True)
class ApiSettings:
    host: str = "127.0.0.1"
    port: int = 8081
    # Threads for the resources' blocking work (one worker process, an asyncio worker:
    # connections and event streams take no thread; see api/worker.py).
    threads: int = 8
    # Bearer tokens with scopes read/write, from a YAML file (or a mounted Secret):
    #   tokens: [{name: ci, token: "...", scopes: [read, write]}]
    # Authentication is on unless explicitly turned off (auth=false).
    auth: bool = True
    tokens_file: str = ""
    public_reads: bool = False  # GET endpoints answer without a token
    cors_origins: tuple[str, ...] = ()  # allowed origins; empty = no CORS headers at all
    rate_limit: float = 5.0  # mutating requests per second per client (token bucket)
    rate_burst: int = 20
    # Failed authentications per client address: a burst, then this many per second.
    auth_failure_rate: float = 0.5
    auth_failure_burst: int = 10
    max_streams: int = 512  # concurrent event streams (each a coroutine, not a thread)
    max_body_bytes: int = 1_048_576
    sync_timeout: float = 30.0  # up/update/down answer 202 with an operation id after this
    certfile: str = ""  # TLS through gunicorn when both are set
    keyfile: str = ""
    # gunicorn's access log: every request ("on"), none ("off"), or only answers with a
    # status of 400 or more ("errors", the default). A line costs more than half a short
    # read's CPU (bench_api: 0.37 ms per health request with it, 0.21-0.26 without), and
    # most requests are the same polled reads (probes, dashboards, agents) that /metrics
    # already counts by route and status, while every change is an event in the store;
    # the failures (refused tokens, malformed requests, 5xx) are what an operator reads
    # the log for. gunicorn's own default is off.
    access_log: Literal["on", "off", "errors"] = "errors"


@dataclass(frozen=True)
class LeaderSettings:
    enabled: bool = True  # with one replica it costs one Lease renew per retry period
    identity: str = ""  # default: hostname + random suffix (set to the pod name)
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    # Shard Leases the other instances are spread over (runtime/sharding.py), with these
    # timings; 0 = no sharding: the leader reconciles every instance.
    shards: int = 0


@dataclass(frozen=True)
class EventSettings:
    path: Path = Path.home() / ".local" / "state" / "conductor" / "events.db"
    max_age_days: float = 14.0
    max_count: int = 100_000


@dataclass(frozen=True)
class StoreSettings:
    """Where durable state lives (adapters/store/sql.py): SQLite for one replica, a shared
    PostgreSQL for several (issue 14)."""

    # "" = SQLite in CONDUCTOR_EVENTS_PATH's file; sqlite:///abs/path.db; or
    # postgresql://user@host:5432/db (may come from a Secret through the environment).
    url: str = ""
    password_file: str = ""  # PostgreSQL password, read once at start; never logged
    pool_size: int = 8  # PostgreSQL connections per process, shared by every store
    connect_timeout: float = 10.0  # seconds to reach PostgreSQL at start and per connection


@dataclass(frozen=True)
class NotificationSettings:
    """Notifications out (notifying.py): receivers from a YAML file, URLs and keys in
    files it names; delivery retried with backoff until the receiver takes it."""

    receivers_file: str = ""  # "" = no notifications
    timeout: float = 10.0  # seconds per delivery attempt
    attempts: int = 5  # tries per round on 5xx, 408/429, timeouts, refused connections
    backoff_initial: float = 1.0
    backoff_max: float = 60.0  # also the pause between rounds while a receiver is down
    rate_per_minute: float = 30.0  # per receiver unless it says otherwise; delays, never drops


@dataclass(frozen=True)
class Config:
    """Everything a controller needs; `Config()` works out of the box on the example app."""

    app_name: str = "conductor"
    manifest_root: Path = DEFAULT_MANIFESTS
    namespace: str = "default"  # where the DeploymentParameters objects live
    instance: str = "default"  # the DeploymentParameters object this controller serves
    default_namespace: str = "default"  # for namespaced objects that name none
    source: Literal["resource", "git"] = "resource"
    kubeconfig: str = ""  # "" = $KUBECONFIG / ~/.kube/config / in-cluster
    context: str = ""
    log_format: Literal["text", "json"] = "text"  # json: one object a line (logs.py)
    git: GitSettings = field(default_factory=GitSettings)
    loop: LoopSettings = field(default_factory=LoopSettings)
    instances: InstanceSettings = field(default_factory=InstanceSettings)
    apply: ApplySettings = field(default_factory=ApplySettings)
    prune: PruneSettings = field(default_factory=PruneSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    events: EventSettings = field(default_factory=EventSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    leader: LeaderSettings = field(default_factory=LeaderSettings)
    notify: NotificationSettings = field(default_factory=NotificationSettings)

    @property
    def apply_threads(self) -> int:
        """Requests applying at once at most, all instances together: passes run
        `instances.concurrency` at a time, each phase `apply.concurrency` requests, and
        room for one operation (the controller's apply pool, the client's connections)."""
        return (self.instances.concurrency + 1) * self.apply.concurrency

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Config:
        """Build from CONDUCTOR_* variables (e.g. CONDUCTOR_LOOP_INTERVAL), then overrides."""
        env = os.environ if env is None else env
        cfg = _apply_env(cls(), "CONDUCTOR_", env)
        if "KUBECONFIG" in env and not cfg.kubeconfig:
            cfg = replace(cfg, kubeconfig=env["KUBECONFIG"])
        return replace(cfg, **overrides)  # type: ignore[arg-type]


class ConfigError(ValueError):
    """A setting is unknown or its value is invalid: one line naming it."""


PREFIX = "CONDUCTOR_"
# Variables under the prefix that are not settings of the controller: the project's own
# tests, benchmarks and test data locations (never read by `conductor run`).
NOT_SETTINGS = ("CONDUCTOR_TEST_", "CONDUCTOR_BENCH_", "CONDUCTOR_PEER_")
# Read by the command-line client and the MCP server (controller/agents), not by the
# controller: one shell may set them and also start `conductor run`.
CLIENT_URL = "CONDUCTOR_URL"
CLIENT_TOKEN = "CONDUCTOR_TOKEN"
CLIENT_VARIABLES = (CLIENT_URL, CLIENT_TOKEN)


def _settings(obj: Any, prefix: str) -> Iterator[tuple[str, Any, Any, Any]]:
    """(variable name, owner, field, current value) of every leaf setting."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        name = prefix + f.name.upper()
        current = getattr(obj, f.name)
        if hasattr(current, "__dataclass_fields__"):
            yield from _settings(current, name + "_")
        else:
            yield name, obj, hints.get(f.name), current


def known_variables() -> list[str]:
    """Every CONDUCTOR_* variable that sets something."""
    return sorted(name for name, *_ in _settings(Config(), PREFIX))


def check_environment(env: Mapping[str, str], ignore: tuple[str, ...] = ()) -> None:
    """Refuse a CONDUCTOR_* variable that names no setting (`ignore`: variables the
    configuration itself points at, e.g. the one CONDUCTOR_GIT_TOKEN_ENV names)."""
    known = set(known_variables())
    for name in sorted(env):
        if (not name.startswith(PREFIX) or name in known or name in ignore
                or name.startswith(NOT_SETTINGS) or name in CLIENT_VARIABLES):
            continue
        # Compared without the shared prefix, which would make every name look close.
        close = difflib.get_close_matches(name.removeprefix(PREFIX),
                                          [k.removeprefix(PREFIX) for k in sorted(known)],
                                          n=1, cutoff=0.6)
        hint = f"; did you mean {PREFIX}{close[0]}?" if close else \
            "; `conductor config --list` shows every setting"
        raise ConfigError(f"{name}: unknown setting{hint}")


def _apply_env(obj: _T, prefix: str, env: Mapping[str, str]) -> _T:
    changes: dict[str, object] = {}
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):  # type: ignore[arg-type]
        name = prefix + f.name.upper()
        current = getattr(obj, f.name)
        if hasattr(current, "__dataclass_fields__"):
            changes[f.name] = _apply_env(current, name + "_", env)
        elif name in env:
            changes[f.name] = _convert(env[name], current, name, hints.get(f.name))
    return replace(obj, **changes)  # type: ignore[type-var]


def _convert(raw: str, current: object, name: str, hint: object = None) -> object:
    choices = typing.get_args(hint) if typing.get_origin(hint) is Literal else ()
    if choices:
        if raw not in choices:
            raise ConfigError(f"{name}: expected one of {', '.join(map(str, choices))}, "
                              f"got {raw!r}")
        return raw
    if isinstance(current, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{name}: expected a boolean (true or false), got {raw!r}")
    if isinstance(current, int):
        try:
            return int(raw.strip())
        except ValueError:
            raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None
    if isinstance(current, float):
        try:
            value = float(raw.strip())
        except ValueError:
            raise ConfigError(f"{name}: expected a number (seconds where it is a "
                              f"duration), got {raw!r}") from None
        if not math.isfinite(value):
            raise ConfigError(f"{name}: expected a finite number, got {raw!r}")
        return value
    if isinstance(current, Path):
        return Path(raw)
    if isinstance(current, tuple):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


# (variable, low, high) for numbers; the variable names the setting in messages.
_RANGES: dict[str, tuple[float, float]] = {
    "CONDUCTOR_API_PORT": (1, 65535), "CONDUCTOR_API_THREADS": (1, 256),
    "CONDUCTOR_API_RATE_LIMIT": (0, 1e6), "CONDUCTOR_API_RATE_BURST": (1, 1e6),
    "CONDUCTOR_API_AUTH_FAILURE_RATE": (0, 1e6), "CONDUCTOR_API_AUTH_FAILURE_BURST": (1, 1e6),
    "CONDUCTOR_API_MAX_STREAMS": (1, 100_000), "CONDUCTOR_API_MAX_BODY_BYTES": (1, 1 << 30),
    "CONDUCTOR_API_SYNC_TIMEOUT": (0, 3600),
    "CONDUCTOR_LOOP_INTERVAL": (0.1, 86400), "CONDUCTOR_LOOP_JITTER": (0, 1),
    "CONDUCTOR_LOOP_RETRY_BACKOFF": (0.01, 86400),
    "CONDUCTOR_LOOP_RETRY_BACKOFF_MAX": (0.01, 86400),
    "CONDUCTOR_LOOP_FULL_PASS_EVERY": (0, 86400),
    "CONDUCTOR_INSTANCES_CONCURRENCY": (1, 256), "CONDUCTOR_INSTANCES_MIN_GAP": (0, 3600),
    "CONDUCTOR_APPLY_CONCURRENCY": (1, 256), "CONDUCTOR_APPLY_ATTEMPTS": (1, 100),
    "CONDUCTOR_APPLY_BACKOFF_INITIAL": (0, 3600), "CONDUCTOR_APPLY_BACKOFF_MAX": (0, 3600),
    "CONDUCTOR_APPLY_REQUEST_TIMEOUT": (0.1, 3600),
    "CONDUCTOR_APPLY_DELETE_TIMEOUT": (0, 86400),
    "CONDUCTOR_GIT_POLL_INTERVAL": (0.1, 86400),
    "CONDUCTOR_LEADER_LEASE_DURATION": (0.1, 3600),
    "CONDUCTOR_LEADER_RENEW_DEADLINE": (0.1, 3600),
    "CONDUCTOR_LEADER_RETRY_PERIOD": (0.01, 3600),
    "CONDUCTOR_LEADER_SHARDS": (0, 1024),
    "CONDUCTOR_EVENTS_MAX_AGE_DAYS": (0.001, 36500), "CONDUCTOR_EVENTS_MAX_COUNT": (1, 1e9),
    "CONDUCTOR_NOTIFY_TIMEOUT": (0.1, 3600), "CONDUCTOR_NOTIFY_ATTEMPTS": (1, 100),
    "CONDUCTOR_NOTIFY_BACKOFF_INITIAL": (0, 3600), "CONDUCTOR_NOTIFY_BACKOFF_MAX": (0.01, 3600),
    "CONDUCTOR_NOTIFY_RATE_PER_MINUTE": (0.01, 1e6),
    "CONDUCTOR_STORE_POOL_SIZE": (1, 1000), "CONDUCTOR_STORE_CONNECT_TIMEOUT": (0.1, 3600),
}
# Files that must be readable when set (the tokens file is checked in full by the API).
_FILES = ("CONDUCTOR_API_TOKENS_FILE", "CONDUCTOR_API_CERTFILE", "CONDUCTOR_API_KEYFILE",
          "CONDUCTOR_GIT_TOKEN_FILE", "CONDUCTOR_GIT_SSH_KEY_FILE",
          "CONDUCTOR_GIT_WEBHOOK_SECRET_FILE", "CONDUCTOR_NOTIFY_RECEIVERS_FILE",
          "CONDUCTOR_STORE_PASSWORD_FILE")


def validate(cfg: Config) -> None:
    """Every value in range, every named file readable, the combinations coherent: the
    first problem as one ConfigError line (the command line calls this before starting)."""
    for name, _owner, hint, value in _settings(cfg, PREFIX):
        choices = typing.get_args(hint) if typing.get_origin(hint) is Literal else ()
        if choices and value not in choices:
            raise ConfigError(f"{name}: expected one of {', '.join(map(str, choices))}, "
                              f"got {value!r}")
        if name in _RANGES and isinstance(value, int | float) \
                and not isinstance(value, bool):
            low, high = _RANGES[name]
            if not (math.isfinite(value) and low <= value <= high):
                raise ConfigError(f"{name}: {value} is out of range [{low:g}, {high:g}]")
        if name in _FILES and value:
            path = Path(str(value))
            if not path.is_file() or not os.access(path, os.R_OK):
                raise ConfigError(f"{name}: {path} is not a readable file")
    # An empty key would make an empty token, or an HMAC anyone can compute, valid.
    secret = cfg.git.webhook_secret_file
    if secret and not Path(secret).read_bytes().strip():
        raise ConfigError(f"CONDUCTOR_GIT_WEBHOOK_SECRET_FILE: {secret} is empty (put a "
                          "random secret in it, or unset it to turn webhooks off)")
    leader = cfg.leader
    if not leader.retry_period < leader.renew_deadline < leader.lease_duration:
        raise ConfigError("CONDUCTOR_LEADER_*: needs RETRY_PERIOD < RENEW_DEADLINE < "
                          f"LEASE_DURATION, got {leader.retry_period} < "
                          f"{leader.renew_deadline} < {leader.lease_duration}")
    if leader.shards and not leader.enabled:
        raise ConfigError("CONDUCTOR_LEADER_SHARDS: shards are Leases the replicas elect "
                          "holders for; it needs CONDUCTOR_LEADER_ENABLED=true")
    if bool(cfg.api.certfile) != bool(cfg.api.keyfile):
        raise ConfigError("CONDUCTOR_API_CERTFILE and CONDUCTOR_API_KEYFILE: set both "
                          "(TLS) or neither")
    if cfg.source == "git" and not cfg.git.url:
        raise ConfigError("CONDUCTOR_GIT_URL: --source git needs a repository URL "
                          "(--git-url)")
    if not cfg.manifest_root.is_dir() and not (cfg.source == "git"
                                               and cfg.git.manifests_path):
        raise ConfigError(f"CONDUCTOR_MANIFEST_ROOT: {cfg.manifest_root} is not a "
                          "directory (--manifests)")
    _validate_store(cfg.store)
    if cfg.kubeconfig:
        path = Path(cfg.kubeconfig)
        if not path.is_file() or not os.access(path, os.R_OK):
            raise ConfigError(f"KUBECONFIG: {path} is not a readable file (--kubeconfig)")


def _validate_store(store: StoreSettings) -> None:
    url = store.url
    if not url:
        return
    shown = _masked("CONDUCTOR_STORE_URL", url)
    if url.startswith("sqlite://"):
        if not url.removeprefix("sqlite://").startswith("/"):
            raise ConfigError(f"CONDUCTOR_STORE_URL: {shown}: expected sqlite:///absolute/"
                              "path.db")
        return
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"CONDUCTOR_STORE_URL: expected sqlite:///path.db or "
                          f"postgresql://user@host:5432/database, got {shown}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError as e:
        raise ConfigError(f"CONDUCTOR_STORE_URL: {shown}: {e}") from None
    if not parts.hostname and "host=" not in parts.query:
        raise ConfigError(f"CONDUCTOR_STORE_URL: {shown}: names no host")
    if "password=" in parts.query:  # would be shown by `conductor config` and logs
        raise ConfigError("CONDUCTOR_STORE_URL: put the password in "
                          "CONDUCTOR_STORE_PASSWORD_FILE (or user:password@ in the URL, "
                          "which is masked), not in the query")
    if parts.password and store.password_file:
        raise ConfigError("CONDUCTOR_STORE_URL and CONDUCTOR_STORE_PASSWORD_FILE: the URL "
                          "holds a password already; give it in one place")
    if store.password_file and not Path(store.password_file).read_text().strip():
        raise ConfigError(f"CONDUCTOR_STORE_PASSWORD_FILE: {store.password_file} is empty")


def effective(cfg: Config) -> dict[str, str]:
    """Every setting's variable and effective value, secrets masked (`conductor config`)."""
    out: dict[str, str] = {}
    for name, _owner, _hint, value in _settings(cfg, PREFIX):
        text = ",".join(value) if isinstance(value, tuple) else str(value)
        out[name] = _masked(name, text)
    return out


def _masked(name: str, text: str) -> str:
    if "://" in text and "@" in text.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = text.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"  # credentials in a URL
    secret = any(w in name for w in ("SECRET", "PASSWORD", "TOKEN")) and \
        not name.endswith(("_FILE", "_ENV", "_TOKENS_FILE"))
    return "***" if secret and text else text
