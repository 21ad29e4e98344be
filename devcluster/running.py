"""Start and stop etcd, kube-apiserver and kube-controller-manager on loopback.

Everything binds 127.0.0.1 on free ports; the API server serves HTTPS with its own
generated certificate and authenticates a static bearer token. A state file records the
pid and start time of each process this module started, so `down` stops exactly those
(and not an unrelated process that later got the same pid).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from devcluster.building import Binaries, ensure_binaries

Progress = Callable[[str], None]

# 65,534 Service IPs: a /24 ran out at 254 Services ("range is full") while benchmarks
# created many instances' Services. The API server of 1.20 accepts up to a /12.
SERVICE_CIDR = "10.0.0.0/16"
# The directory holding this package: the simulator runs `python -m devcluster` from there,
# so it starts whatever the caller's working directory (devcluster is not installed).
ROOT = Path(__file__).resolve().parents[1]
ISSUER = "https://kubernetes.default.svc.cluster.local"
# The controller manager minus node, cloud, route, service and volume controllers: this
# cluster has no nodes, no cloud and no storage, and those loops would only log errors.
CONTROLLERS = ",".join([
    "deployment", "replicaset", "statefulset", "daemonset", "job", "cronjob",
    "replicationcontroller", "garbagecollector", "namespace", "serviceaccount",
    "serviceaccount-token", "endpoint", "endpointslice", "disruption", "podgc",
    "resourcequota", "clusterrole-aggregation", "ttl-after-finished",
    "horizontalpodautoscaling", "root-ca-cert-publisher", "pvc-protection", "pv-protection",
])


class ClusterError(Exception):
    """Starting or stopping the control plane failed; names the process and its log."""


def default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "conductor" / "cluster"


@dataclass
class Proc:
    name: str
    pid: int
    start_time: str  # field 22 of /proc/PID/stat: tells a reused pid from ours
    log: str


@dataclass
class ClusterState:
    """What `up` wrote and `down` reads: where things are and which processes are ours."""

    dir: str
    server: str
    kubeconfig: str
    token: str
    etcd_url: str
    processes: list[Proc] = field(default_factory=list)

    @property
    def ca_file(self) -> Path:
        return Path(self.dir) / "certs" / "apiserver.crt"

    def save(self) -> None:
        path = Path(self.dir) / "state.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, state_dir: Path) -> ClusterState | None:
        path = state_dir / "state.json"
        if not path.exists():
            return None
        raw = json.loads(path.read_text())
        raw["processes"] = [Proc(**p) for p in raw.get("processes", [])]
        return cls(**raw)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def up(state_dir: Path | None = None, binaries: Binaries | None = None,
       progress: Progress | None = None, timeout: float = 90.0,
       simulate_kubelet: bool = False, missing_tags: Iterable[str] = ()) -> ClusterState:
    """Start the control plane (or return the running one) and write its kubeconfig.

    With `simulate_kubelet`, also start the kubelet simulation (see devcluster/kubelet.py);
    image tags in `missing_tags` (or later added to `missing_images_file`) go to
    ImagePullBackOff instead of Ready.
    """
    state_dir = (state_dir or default_state_dir()).resolve()
    say = progress or (lambda _line: None)
    existing = ClusterState.load(state_dir)
    if existing and all(_alive(p) for p in existing.processes):
        say(f"control plane already running at {existing.server}")
        if simulate_kubelet and not any(p.name == "kubelet-simulator"
                                        for p in existing.processes):
            _start_simulator(existing, missing_tags)
        return existing
    if existing:
        down(state_dir)
    bins = binaries or ensure_binaries(progress=say)
    state_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("certs", "logs", "etcd"):
        (state_dir / sub).mkdir(exist_ok=True)
    token = secrets.token_hex(24)
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    state = ClusterState(
        dir=str(state_dir), server=f"https://127.0.0.1:{api_port}",
        kubeconfig=str(state_dir / "kubeconfig"), token=token,
        etcd_url=f"http://127.0.0.1:{etcd_port}",
    )
    _write_credentials(state_dir, token)
    try:
        say(f"starting etcd on 127.0.0.1:{etcd_port}")
        state.processes.append(_start(state_dir, "etcd", [
            "etcd", "--name=conductor", f"--data-dir={state_dir / 'etcd'}",
            f"--listen-client-urls={state.etcd_url}", f"--advertise-client-urls={state.etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=conductor=http://127.0.0.1:{peer_port}",
            "--log-level=warn",
        ]))
        state.save()
        _wait(lambda: _http_ok(f"{state.etcd_url}/health"), "etcd", state, timeout)
        say(f"starting kube-apiserver on {state.server}")
        state.processes.append(_start(state_dir, "kube-apiserver", [
            str(bins.apiserver), "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}", f"--cert-dir={state_dir / 'certs'}",
            f"--etcd-servers={state.etcd_url}", f"--token-auth-file={state_dir / 'tokens.csv'}",
            "--authorization-mode=RBAC", f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={state_dir / 'sa.pub'}",
            f"--service-account-signing-key-file={state_dir / 'sa.key'}",
            f"--api-audiences={ISSUER}", "--disable-admission-plugins=ServiceAccount",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--allow-privileged=true",
            "--profiling=false", "--v=1",
        ]))
        state.save()
        _wait(lambda: _api_ready(state), "kube-apiserver", state, timeout)
        _write_kubeconfig(state)
        say("starting kube-controller-manager")
        state.processes.append(_start(state_dir, "kube-controller-manager", [
            str(bins.controller_manager), f"--kubeconfig={state.kubeconfig}",
            "--bind-address=127.0.0.1", "--secure-port=0", "--port=0", "--leader-elect=false",
            f"--service-account-private-key-file={state_dir / 'sa.key'}",
            f"--root-ca-file={state.ca_file}", f"--controllers={CONTROLLERS}",
            "--use-service-account-credentials=false", "--v=1",
            # Its client's default 20 requests/s (burst 30) makes 1,000 new Deployments
            # wait ~2 minutes for their ReplicaSets and observed status (3 requests each):
            # the benchmarks' many instances would measure that queue, not conductor.
            "--kube-api-qps=200", "--kube-api-burst=400",
        ]))
        state.save()
        if simulate_kubelet:
            _start_simulator(state, missing_tags)
        time.sleep(0.5)  # a flag error exits at once; catch it here rather than later
        for proc in state.processes[2:]:
            if not _alive(proc):
                raise ClusterError(f"{proc.name} exited at start; see {proc.log}")
    except BaseException:
        down(state_dir)
        raise
    say(f"control plane ready: export KUBECONFIG={state.kubeconfig}")
    return state


def down(state_dir: Path | None = None, timeout: float = 15.0) -> list[str]:
    """Stop exactly the processes `up` started here (newest first); returns their names."""
    state_dir = (state_dir or default_state_dir()).resolve()
    state = ClusterState.load(state_dir)
    if state is None:
        return []
    stopped = []
    for proc in reversed(state.processes):
        if _alive(proc):
            os.kill(proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(proc) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(proc):
                os.kill(proc.pid, signal.SIGKILL)
                while _alive(proc):
                    time.sleep(0.05)
            stopped.append(proc.name)
        _reap(proc.pid)
    (state_dir / "state.json").unlink(missing_ok=True)
    return stopped


def env_line(state_dir: Path | None = None) -> str:
    state = ClusterState.load((state_dir or default_state_dir()).resolve())
    if state is None:
        raise ClusterError("no local control plane is running; run `python -m devcluster up`")
    return f"export KUBECONFIG={state.kubeconfig}"


def missing_images_file(state_dir: Path | None = None) -> Path:
    """One image tag (or full image) per line: the simulator reports these as not found."""
    return (state_dir or default_state_dir()).resolve() / "missing-images"


def _start_simulator(state: ClusterState, missing_tags: Iterable[str]) -> None:
    state_dir = Path(state.dir)
    path = missing_images_file(state_dir)
    existing = path.read_text().split() if path.exists() else []
    path.write_text("".join(f"{t}\n" for t in dict.fromkeys([*existing, *missing_tags])))
    state.processes.append(_start(state_dir, "kubelet-simulator", [
        sys.executable, "-m", "devcluster", "kubelet",
        f"--kubeconfig={state.kubeconfig}", f"--missing-images={path}",
    ], cwd=ROOT))
    state.save()


def _write_credentials(state_dir: Path, token: str) -> None:
    # group system:masters makes the static token a cluster admin, as kind's admin user is.
    (state_dir / "tokens.csv").write_text(f'{token},admin,admin,"system:masters"\n')
    os.chmod(state_dir / "tokens.csv", 0o600)
    key = state_dir / "sa.key"
    if not key.exists():
        subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True,
                       capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-out",
                        str(state_dir / "sa.pub")], check=True, capture_output=True)


def _write_kubeconfig(state: ClusterState) -> None:
    import base64

    ca = base64.b64encode(state.ca_file.read_bytes()).decode()
    text = f"""\
apiVersion: v1
kind: Config
clusters:
- name: conductor-local
  cluster:
    server: {state.server}
    certificate-authority-data: {ca}
users:
- name: admin
  user:
    token: {state.token}
contexts:
- name: conductor-local
  context:
    cluster: conductor-local
    user: admin
    namespace: default
current-context: conductor-local
"""
    path = Path(state.kubeconfig)
    path.write_text(text)
    os.chmod(path, 0o600)


def _start(state_dir: Path, name: str, argv: list[str], cwd: Path | None = None) -> Proc:
    log = state_dir / "logs" / f"{name}.log"
    with log.open("ab") as out:
        try:
            popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     cwd=cwd)
        except OSError as e:
            raise ClusterError(f"cannot start {name}: {e}") from e
    return Proc(name, popen.pid, _start_time(popen.pid), str(log))


def _wait(ready: Callable[[], bool], name: str, state: ClusterState, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    proc = next(p for p in state.processes if p.name == name)
    while time.monotonic() < deadline:
        if not _alive(proc):
            raise ClusterError(f"{name} exited during start; see {proc.log}")
        if ready():
            return
        time.sleep(0.2)
    raise ClusterError(f"{name} not ready after {timeout:.0f}s; see {proc.log}")


def _http_ok(url: str, context: ssl.SSLContext | None = None,
             headers: dict[str, str] | None = None) -> bool:
    try:
        req = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(req, timeout=2, context=context) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _api_ready(state: ClusterState) -> bool:
    if not state.ca_file.exists():
        return False
    ctx = ssl.create_default_context(cafile=str(state.ca_file))
    return _http_ok(f"{state.server}/readyz", ctx, {"Authorization": f"Bearer {state.token}"})


def _start_time(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(proc: Proc) -> bool:
    """True while the recorded process runs (same pid *and* same start time)."""
    try:
        stat = Path(f"/proc/{proc.pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0] != "Z" and fields[19] == proc.start_time


def _reap(pid: int) -> None:
    # When `up` ran in this same process the children are ours to reap; otherwise no-op.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
