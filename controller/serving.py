"""Serve the API with gunicorn, the controller running inside the one worker process.

One worker process (gunicorn's asyncio worker, see api/worker.py): the loop, the watches
and every request share one memory (and one Prometheus registry). The app is built here:
Controller -> ControllerService (the API's one interface) -> create_app. Configuration the API
needs (the tokens file) is read and checked before anything starts, so a bad file stops
`conductor run` with one line naming it, before a lease is taken or a pass runs. The
controller is built in the worker (after the fork), and stopped in `worker_exit`, which
lets the current pass finish before the process ends.
"""

from __future__ import annotations

import os
import runpy
from typing import TYPE_CHECKING, Any

from gunicorn.app.base import BaseApplication

from controller import assets, logs
from controller.api.security import Token, load_tokens
from controller.config import Config

if TYPE_CHECKING:
    from controller.api.app import App, Settings
    from controller.runtime.controller import Controller

GUNICORN_CONF = assets.GUNICORN_CONF  # package data (controller/assets)


class Server(BaseApplication):  # type: ignore[misc]
    def __init__(self, cfg: Config, env: dict[str, str], tokens: list[Token]) -> None:
        self.config = cfg
        self.env = env
        self.tokens = tokens
        self.controller: Any = None
        self.app: Any = None
        super().__init__()

    def load_config(self) -> None:
        for key, value in runpy.run_path(str(GUNICORN_CONF)).items():
            if key in self.cfg.settings and value is not None:
                self.cfg.set(key, value)
        api = self.config.api
        self.cfg.set("bind", [f"{api.host}:{api.port}"])
        if api.certfile and api.keyfile:
            self.cfg.set("certfile", api.certfile)
            self.cfg.set("keyfile", api.keyfile)
        self.cfg.set("worker_exit", self._worker_exit)
        if self.config.log_format == "json":
            self.cfg.set("logconfig_dict", logs.gunicorn_config(self.config.instance,
                                                                self.config.namespace))

    def load(self) -> Any:
        from controller.api.app import Settings
        from controller.runtime.controller import Controller

        settings = Settings.from_config(self.config, self.tokens)  # before anything starts
        self.controller = Controller(self.config, self.env).start()
        self.app = app_for(self.controller, self.env, settings)
        return self.app

    def on_draining(self) -> None:
        """SIGTERM reached the worker: end event streams now (see api/worker.py)."""
        if self.app is not None:
            self.app.on_draining()

    def _worker_exit(self, server: Any, worker: Any) -> None:
        if self.app is not None:
            self.app.close()
        if self.controller is not None:
            self.controller.stop()


def app_for(controller: Controller, env: dict[str, str] | None = None,
            settings: Settings | None = None) -> App:
    """The API over a controller: Controller -> ControllerService -> create_app (also what
    tests serve a started controller with). `settings` default: read from its config."""
    from controller.api.app import Settings, create_app
    from controller.runtime.controller_service import ControllerService

    if settings is None:
        settings = Settings.from_config(controller.cfg)
    return create_app(ControllerService(controller, env), controller.registry, settings,
                      meters=controller.metrics)


def startup_checks(cfg: Config) -> list[Token]:
    """What must hold before anything starts; raises with one line naming the problem."""
    return load_tokens(cfg.api.tokens_file) if cfg.api.tokens_file else []


def serve(cfg: Config, env: dict[str, str] | None = None,
          tokens: list[Token] | None = None) -> None:
    if tokens is None:
        tokens = startup_checks(cfg)
    Server(cfg, dict(os.environ if env is None else env), tokens).run()
