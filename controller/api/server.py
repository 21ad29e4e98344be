"""Serve the API with gunicorn, the controller running inside the one worker process.

One worker process with threads: the loop, the watches and every request share one memory
(and one Prometheus registry). The controller is built in the worker (after the fork), and
stopped in `worker_exit`, which lets the current pass finish before the process ends.
"""

from __future__ import annotations

import os
from typing import Any

import falcon
from gunicorn.app.base import BaseApplication

from controller.config import Config


class Server(BaseApplication):  # type: ignore[misc]
    def __init__(self, cfg: Config, env: dict[str, str]) -> None:
        self.config = cfg
        self.env = env
        self.controller: Any = None
        super().__init__()

    def load_config(self) -> None:
        settings = {
            "bind": [f"{self.config.api.host}:{self.config.api.port}"],
            "workers": 1,
            "worker_class": "gthread",
            "threads": 8,
            "timeout": 120,
            "graceful_timeout": 90,
            "accesslog": "-",
            # No control socket: a second controller (tests, replicas on one host) would
            # fight over its default path, and a read-only root filesystem has no room.
            "control_socket_disable": True,
            "worker_exit": self._worker_exit,
        }
        for key, value in settings.items():
            self.cfg.set(key, value)

    def load(self) -> falcon.App[Any, Any]:
        from controller.api.app import create_app
        from controller.main import Controller

        self.controller = Controller(self.config, self.env).start()
        return create_app(self.controller)

    def _worker_exit(self, server: Any, worker: Any) -> None:
        if self.controller is not None:
            self.controller.stop()


def serve(cfg: Config, env: dict[str, str] | None = None) -> None:
    Server(cfg, dict(os.environ if env is None else env)).run()
