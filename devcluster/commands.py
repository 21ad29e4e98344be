"""The command line of the local control plane: up, down, env, prepare (and the kubelet
simulator's own entry, which `up --simulate-kubelet` starts as a process).

Reached as `python -m devcluster ...`, and as `conductor cluster ...` from a checkout,
where the product's command line hands the arguments over unchanged (controller/cli.py).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from devcluster import building, running


def parser(prog: str = "python -m devcluster") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="etcd + kube-apiserver + kube-controller-manager on "
        "127.0.0.1, built once from Debian's source package and cached.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    csub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
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


def main(argv: Sequence[str] | None = None, prog: str = "python -m devcluster") -> int:
    args = parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
                 f"stop with `{prog} down`")
        elif args.action == "down":
            stopped = running.down(args.state_dir)
            _say("stopped: " + (", ".join(stopped) if stopped else "nothing was running"))
        elif args.action == "env":
            print(running.env_line(args.state_dir))
        elif args.action == "kubelet":
            return _kubelet(args)
    except (building.BuildError, running.ClusterError) as e:
        _say(f"{prog} {args.action}: {e}")
        return 1
    return 0


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _kubelet(args: argparse.Namespace) -> int:
    from controller.adapters.kube import Kube
    from controller.config import Config
    from devcluster import kubelet

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    kube = Kube.connect(Config(kubeconfig=args.kubeconfig))
    logging.getLogger(__name__).info("kubelet SIMULATION running (no containers are run)")
    kubelet.run_forever(kube, Path(args.missing_images), stop)
    return 0
