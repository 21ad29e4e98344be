"""Serve the API with gunicorn, the controller running inside the one worker process.

One worker process with threads: the loop, the watches and every request share one memory
(and one Prometheus registry). The controller is built in the worker (after the fork), and
stopped in `worker_exit`, which lets the current pass finish before the process ends.
"""

from __future__ import annotations

import os
import runpy
from pathlib import Path
from typing import Any

import falcon
from gunicorn.app.base import BaseApplication

from controller.config import Config

GUNICORN_CONF = Path(__file__).resolve().parents[2] / "config" / "gunicorn.conf.py"


class Server(BaseApplication):  # type: ignore[misc]
    def __init__(self, cfg: Config, env: dict[str, str]) -> None:
        self.config = cfg
        self.env = env
        self.controller: Any = None
        super().__init__()

    def load_config(self) -> None:
        for key, value in runpy.run_path(str(GUNICORN_CONF)).items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)
        api = self.config.api
        self.cfg.set("bind", [f"{api.host}:{api.port}"])
        self.cfg.set("threads", api.threads)
        if api.certfile and api.keyfile:
            self.cfg.set("certfile", api.certfile)
            self.cfg.set("keyfile", api.keyfile)
        self.cfg.set("worker_exit", self._worker_exit)

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
