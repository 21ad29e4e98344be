"""The `conductor` command line: run the controller, print its configuration.

Configuration is read here once (environment, then flags) and passed down; nothing below
reads the environment. `conductor cluster ...` hands its arguments to the local control
plane's own command line (`python -m devcluster`, a separate process), which a checkout of
the repository has and the installed product does not: the product never imports it.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.metadata
import logging
import os
import subprocess
import sys
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from controller import logs
from controller.adapters.startup import EXIT_CONFIG, StartupError, check_cluster
from controller.agents import commands, scaffold
from controller.api.security import TokensFileError
from controller.config import (
    Config,
    ConfigError,
    check_environment,
    effective,
    known_variables,
    validate,
)
from controller.errors import ConductorError
from controller.runtime.notifying import NotifyConfigError, load_receivers


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
    p.add_argument("--version", action="version", version=f"conductor {_version()}")
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

    # Only listed here: `main` hands `cluster ...` to devcluster before parsing (see there).
    sub.add_parser("cluster", help="a local Kubernetes control plane on loopback (from a "
                   "checkout of the repository: `conductor cluster --help`)", add_help=False)
    # Clients of a running conductor (controller/agents): over HTTP, maybe remote.
    commands.add_commands(sub)
    init = sub.add_parser("init", help="scaffold a new conductor (services from a catalogue)",
                          description="Write a new conductor project: main.py, "
                          "manifests/<service>/ templates, parameters.yaml, a "
                          "DeploymentParameters object and a README. Never overwrites.")
    init.add_argument("name", help="the conductor's name (a DNS label)")
    init.add_argument("--services", default=",".join(scaffold.DEFAULT_SERVICES),
                      help="comma-separated, from: " + ", ".join(sorted(scaffold.CATALOGUE)))
    init.add_argument("--dir", type=Path, help="target directory (default: ./NAME)")
    mcp = sub.add_parser("mcp", help="Model Context Protocol server (stdio) for agents",
                         description="Serve MCP over stdio, talking to the conductor API at "
                         "--url. Writes need the planId of a plan of the same change.")
    mcp.add_argument("--url", help="default: $CONDUCTOR_URL, http://127.0.0.1:8081")
    mcp.add_argument("--token", help="default: $CONDUCTOR_TOKEN")
    mcp.add_argument("--instance")
    mcp.add_argument("--read-only", action="store_true", help="expose the reading tools only")
    completion = sub.add_parser("completion", help="print a shell completion script")
    completion.add_argument("shell", choices=["bash"])
    return p


def _version() -> str:
    try:
        return importlib.metadata.version("conductor")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    given = list(sys.argv[1:] if argv is None else argv)
    lead = 0
    while lead < len(given) and given[lead] in ("-v", "--verbose", "--debug"):
        lead += 1
    if given[lead:lead + 1] == ["cluster"]:
        verbose = bool({"-v", "--verbose"} & set(given[:lead]))
        return _cluster([*(["-v"] if verbose else []), *given[lead + 1:]])
    args = _parser().parse_args(given)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command in ("run", "config"):
        try:
            return _run(args) if args.command == "run" else _config(args)
        except (ConfigError, TokensFileError, StartupError, NotifyConfigError) as e:
            if args.debug:
                traceback.print_exc()
            _say(f"conductor {args.command}: {e}")
            return e.exit_code if isinstance(e, StartupError) else EXIT_CONFIG
    if args.command in commands.COMMANDS:
        return commands.run(args, dict(os.environ))
    if args.command == "init":
        return _init(args)
    if args.command == "mcp":
        return _mcp(args)
    if args.command == "completion":
        print(commands.completion_script(_parser()))
        return 0
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
    from controller.serving import serve, startup_checks

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


def _init(args: argparse.Namespace) -> int:
    services = tuple(s.strip() for s in args.services.split(",") if s.strip())
    try:
        made = scaffold.create(args.name, services, args.dir)
    except ConductorError as e:
        _say(f"conductor init: {e.code}: {e.message}")
        return 1
    print(f"created {made.root}/ with {', '.join(made.services)} "
          f"({len(made.files)} files); see {made.root}/README.md")
    return 0


def _mcp(args: argparse.Namespace) -> int:
    from controller.agents.client import Client, ClientSettings

    try:  # an optional extra: the SDK and its HTTP stack
        from controller.agents import mcp
    except ImportError as e:
        _say(f"conductor mcp: the MCP SDK is not installed ({e}); "
             "pip install 'conductor[mcp]'")
        return 2
    client = Client(ClientSettings.from_env(dict(os.environ), args.url, args.token),
                    instance=args.instance)
    mcp.serve(client, args.read_only, version=_version())
    return 0


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


DEVCLUSTER_MISSING = ("conductor cluster: the local control plane is not part of the "
                      "installed product; run it from a checkout of the repository "
                      "(`python -m devcluster up`)")


def _cluster(rest: list[str]) -> int:
    """`conductor cluster ...` is `python -m devcluster ...`, when that package is there.

    Looked up as the child will look it up (the working directory first, then this
    interpreter's path), so the message below is the only failure of a missing package.
    """
    if importlib.machinery.PathFinder.find_spec("devcluster", [os.getcwd(), *sys.path]) \
            is None:
        _say(DEVCLUSTER_MISSING)
        return 2
    try:
        return subprocess.call([sys.executable, "-m", "devcluster", *rest])
    except KeyboardInterrupt:
        return 130
