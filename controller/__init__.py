"""conductor: a GitOps reconcile-loop controller for multi-service Kubernetes applications.

`controller.run(Config(...))` runs the controller (the loop and its REST API) until it is
stopped; `Config()` works out of the box on the example app in `manifests/`.
"""

from __future__ import annotations

from controller.config import Config

__all__ = ["Config", "run"]


def run(config: Config | None = None) -> None:
    """Run the controller in the foreground until SIGTERM/SIGINT."""
    from controller.serving import serve  # deferred: the CLI's --help stays fast

    serve(config or Config.from_env())
