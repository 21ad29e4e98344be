"""The `conductor` command line: run the controller, and manage the local control plane.

Configuration is read here once (environment, then flags) and passed down; nothing below
reads the environment.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from controller import logs
from controller.api.security import TokensFileError
from controller.cluster import building, running
from controller.config import (
    Config,
    ConfigError,
    check_environment,
    effective,
    known_variables,
    validate,
)
from controller.notifying import NotifyConfigError, load_receivers
from controller.startup import EXIT_CONFIG, StartupError, check_cluster


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubeconfig", help="default: $KUBECONFIG, ~/.kube/config, in-cluster")
    p.add_argument("--context")
    p.add_argument("--manifests", type=Path, help="manifests root (default: ./manifests "
                   "of the installed package)")
    p.add_argument("--app-name")
    p.add_argument("--namespace", help="namespace of the DeploymentParameters object")
    p.add_argument("--instance", help="name of the DeploymentParameters object")
    p.add_argument("--source", choices=["resource", "git"])
    p.add_argument("--git-url")
    p.add_argument("--git-ref")
    p.add_argument("--git-params-path")
    p.add_argument("--git-manifests-path")
    p.add_argument("--git-token-file")
    p.add_argument("--git-ssh-key-file")
    p.add_argument("--git-poll-interval", type=float)
    p.add_argument("--interval", type=float, help="seconds between passes (default 60)")
    p.add_argument("--conflicts", choices=["force", "fail"],
                   help="server-side apply conflicts: take the fields over, or fail")
    p.add_argument("--log-format", choices=["text", "json"],
                   help="log lines as text (default) or JSON objects")
    p.add_argument("--host", help="API bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="API port (default 8081)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="conductor",
        description="GitOps reconcile-loop controller for multi-service Kubernetes apps.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--debug", action="store_true",
                   help="show the traceback behind a start-up error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the controller and its REST API (gunicorn)",
                         description="Run the reconcile loop and the REST API. Every "
                         "option can also be set as CONDUCTOR_<GROUP>_<NAME> in the "
                         "environment (e.g. CONDUCTOR_LOOP_INTERVAL=30); flags win. "
                         "Exit codes: 2 configuration, 3 Kubernetes unreachable or "
                         "credentials refused, 4 a permission or the CRD missing.")
    _run_options(run)
    shown = sub.add_parser("config", help="print the effective configuration (secrets "
                           "masked) and check it",
                           description="The configuration `conductor run` would use, from "
                           "the environment and the same flags, one CONDUCTOR_* variable "
                           "a line, secrets masked; exits 2 on an invalid one.")
    _run_options(shown)
    shown.add_argument("--list", action="store_true", help="only the names of every setting")

    cl = sub.add_parser("cluster", help="a local Kubernetes control plane on loopback",
                        description="etcd + kube-apiserver + kube-controller-manager on "
                        "127.0.0.1, built once from Debian's source package and cached.")
    csub = cl.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = csub.add_parser("up", help="start it (building the binaries the first time)")
    up.add_argument("--simulate-kubelet", action="store_true",
                    help="also run a SIMULATED kubelet: it runs no containers, it only "
                    "marks Pods Running/Ready (and PVCs Bound) so services can look healthy")
    up.add_argument("--missing-image", action="append", default=[], metavar="TAG",
                    help="with --simulate-kubelet: Pods using this image tag go to "
                    "ImagePullBackOff (repeatable; also read from STATE_DIR/missing-images)")
    csub.add_parser("down", help="stop exactly the processes `up` started")
    csub.add_parser("env", help="print the export line for KUBECONFIG")
    csub.add_parser("prepare", help="only build and cache the binaries")
    kl = csub.add_parser("kubelet", help=argparse.SUPPRESS)
    kl.add_argument("--kubeconfig", required=True)
    kl.add_argument("--missing-images", required=True)
    for sp in (up, *[csub.choices[n] for n in ("down", "env", "prepare")]):
        sp.add_argument("--state-dir", type=Path, default=None,
                        help=f"where state, logs and kubeconfig live "
                        f"(default {running.default_state_dir()})")
        sp.add_argument("--cache-dir", type=Path, default=None,
                        help=f"binary cache (default {building.default_cache_dir()})")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "cluster":
        return _cluster(args)
    if args.command in ("run", "config"):
        try:
            return _run(args) if args.command == "run" else _config(args)
        except (ConfigError, TokensFileError, StartupError, NotifyConfigError) as e:
            if args.debug:
                traceback.print_exc()
            _say(f"conductor {args.command}: {e}")
            return e.exit_code if isinstance(e, StartupError) else EXIT_CONFIG
    return 2


def config_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> Config:
    """Environment first, then flags: the one place configuration is assembled."""
    cfg = Config.from_env(env)
    top = {"kubeconfig": args.kubeconfig, "context": args.context,
           "manifest_root": args.manifests, "app_name": args.app_name,
           "namespace": args.namespace, "instance": args.instance, "source": args.source,
           "log_format": args.log_format}
    cfg = replace(cfg, **{k: v for k, v in top.items() if v is not None})
    git = {"url": args.git_url, "ref": args.git_ref, "params_path": args.git_params_path,
           "manifests_path": args.git_manifests_path, "token_file": args.git_token_file,
           "ssh_key_file": args.git_ssh_key_file, "poll_interval": args.git_poll_interval}
    loop = {"interval": args.interval}
    api = {"host": args.host, "port": args.port}
    apply = {"conflicts": args.conflicts}
    return replace(
        cfg,
        git=replace(cfg.git, **{k: v for k, v in git.items() if v is not None}),
        loop=replace(cfg.loop, **{k: v for k, v in loop.items() if v is not None}),
        api=replace(cfg.api, **{k: v for k, v in api.items() if v is not None}),
        apply=replace(cfg.apply, **{k: v for k, v in apply.items() if v is not None}),
    )


def checked_config(args: argparse.Namespace, env: Mapping[str, str]) -> Config:
    """The configuration, refused (ConfigError, one line) when a variable is unknown or
    a value invalid."""
    cfg = config_from_args(args, env)
    check_environment(env, ignore=(cfg.git.token_env,) if cfg.git.token_env else ())
    validate(cfg)
    return cfg


def _run(args: argparse.Namespace) -> int:
    from controller.api.server import serve, startup_checks

    env = dict(os.environ)
    cfg = checked_config(args, env)
    logs.setup(cfg.log_format, args.verbose, cfg.instance, cfg.namespace)
    tokens = startup_checks(cfg)  # the tokens file, in full
    if cfg.notify.receivers_file:  # the receivers file, in full
        load_receivers(cfg.notify.receivers_file, cfg.notify.rate_per_minute)
    check_cluster(cfg)  # credentials, the API server, permissions: before anything starts
    serve(cfg, env, tokens)
    return 0


def _config(args: argparse.Namespace) -> int:
    if args.list:
        print("\n".join(known_variables()))
        return 0
    env = dict(os.environ)
    cfg = checked_config(args, env)
    for name, value in effective(cfg).items():
        print(f"{name}={value}")
    return 0


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _cluster(args: argparse.Namespace) -> int:
    try:
        if args.action == "prepare":
            bins = building.ensure_binaries(args.cache_dir, _say)
            print(bins.bin_dir)
        elif args.action == "up":
            bins = building.ensure_binaries(args.cache_dir, _say)
            state = running.up(args.state_dir, bins, _say,
                               simulate_kubelet=args.simulate_kubelet,
                               missing_tags=args.missing_image)
            print(f"export KUBECONFIG={state.kubeconfig}")
            _say(f"API server {state.server}; logs in {Path(state.dir) / 'logs'}; "
                 f"stop with `conductor cluster down`")
        elif args.action == "down":
            stopped = running.down(args.state_dir)
            _say("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        elif args.action == "env":
            print(running.env_line(args.state_dir))
        elif args.action == "kubelet":
            return _kubelet(args)
    except (building.BuildError, running.ClusterError) as e:
        _say(f"conductor cluster {args.action}: {e}")
        return 1
    return 0


def _kubelet(args: argparse.Namespace) -> int:
    from controller.cluster import kubelet
    from controller.kube import Kube

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    kube = Kube.connect(Config(kubeconfig=args.kubeconfig))
    logging.getLogger(__name__).info("kubelet SIMULATION running (no containers are run)")
    kubelet.run_forever(kube, Path(args.missing_images), stop)
    return 0
