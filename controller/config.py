"""Settings: small frozen groups with documented defaults, loaded once and passed down.

No other module reads the environment; `Config.from_env` is called by the command line
(or the caller of `controller.run`) and the resulting object flows to every component.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal, TypeVar

_T = TypeVar("_T")

DEFAULT_MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"


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


@dataclass(frozen=True)
class LeaderSettings:
    enabled: bool = True  # with one replica it costs one Lease renew per retry period
    identity: str = ""  # default: hostname + random suffix (set to the pod name)
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


@dataclass(frozen=True)
class EventSettings:
    path: Path = Path.home() / ".local" / "state" / "conductor" / "events.db"
    max_age_days: float = 14.0
    max_count: int = 100_000


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
    git: GitSettings = field(default_factory=GitSettings)
    loop: LoopSettings = field(default_factory=LoopSettings)
    apply: ApplySettings = field(default_factory=ApplySettings)
    prune: PruneSettings = field(default_factory=PruneSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    events: EventSettings = field(default_factory=EventSettings)
    leader: LeaderSettings = field(default_factory=LeaderSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Config:
        """Build from CONDUCTOR_* variables (e.g. CONDUCTOR_LOOP_INTERVAL), then overrides."""
        env = os.environ if env is None else env
        cfg = _apply_env(cls(), "CONDUCTOR_", env)
        if "KUBECONFIG" in env and not cfg.kubeconfig:
            cfg = replace(cfg, kubeconfig=env["KUBECONFIG"])
        return replace(cfg, **overrides)  # type: ignore[arg-type]


def _apply_env(obj: _T, prefix: str, env: Mapping[str, str]) -> _T:
    changes: dict[str, object] = {}
    for f in fields(obj):  # type: ignore[arg-type]
        name = prefix + f.name.upper()
        current = getattr(obj, f.name)
        if hasattr(current, "__dataclass_fields__"):
            changes[f.name] = _apply_env(current, name + "_", env)
        elif name in env:
            changes[f.name] = _convert(env[name], current, name)
    return replace(obj, **changes)  # type: ignore[type-var]


def _convert(raw: str, current: object, name: str) -> object:
    if isinstance(current, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"{name}: expected a boolean, got {raw!r}")
    if isinstance(current, int):
        return int(raw)
    if isinstance(current, float):
        return float(raw)
    if isinstance(current, Path):
        return Path(raw)
    if isinstance(current, tuple):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw
