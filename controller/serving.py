"""Serve the API with gunicorn, the controller running inside the one worker process.

One worker process (gunicorn's asyncio worker, see api/worker.py): the loop, the watches
and every request share one memory (and one Prometheus registry). The app is built here:
Controller -> ControllerService (the API's one interface) -> create_app. Configuration the API
needs (the tokens file) is read and checked before anything starts, so a bad file stops
`conductor run` with one line naming it, before a lease is taken or a pass runs. The
controller is built in the worker (after the fork), and stopped in `worker_exit`, which
lets the current pass finish before the process ends.

The worker's threads switch the GIL every `SWITCH_INTERVAL` (1 ms instead of Python's
5 ms). The event loop's thread answers the API's short reads, but it gives the GIL up on
every socket send and every poll; while a pass (CPU-bound, on a pool thread) runs, getting
it back took up to a whole interval each time, so a pass every 2 s set the health
endpoint's p99 (bench/bench_sse.py). A shorter interval costs a few more switches.

The access log follows CONDUCTOR_API_ACCESS_LOG (config.ApiSettings.access_log: on, off,
or errors, the default) through gunicorn's own logger (`logger_class`): off builds nothing
per request; errors writes only the lines of answers with a status of 400 or more.
"""

from __future__ import annotations

import os
import runpy
import sys
from typing import TYPE_CHECKING, Any

from gunicorn import glogging
from gunicorn.app.base import BaseApplication

from controller import assets, logs
from controller.api.security import Token, load_tokens
from controller.config import Config

if TYPE_CHECKING:
    from controller.api.app import App, Settings
    from controller.runtime.controller import Controller

GUNICORN_CONF = assets.GUNICORN_CONF  # package data (controller/assets)
SWITCH_INTERVAL = 0.001  # seconds a thread may hold the GIL while another waits for it


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
        self.cfg.set("logger_class", access_logger(api.access_log))
        if self.config.log_format == "json":
            self.cfg.set("logconfig_dict", logs.gunicorn_config(self.config.instance,
                                                                self.config.namespace))

    def load(self) -> Any:
        from controller.api.app import Settings
        from controller.runtime.controller import Controller

        settings = Settings.from_config(self.config, self.tokens)  # before anything starts
        sys.setswitchinterval(SWITCH_INTERVAL)  # in the worker: see the module docstring
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


class AccessLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's logger, its access lines limited by `mode` (see `access_logger`)."""

    mode = "on"

    @property
    def access_log_enabled(self) -> bool:
        # Asked by gunicorn's protocol before it builds a request's log data: "off" must
        # cost nothing, whatever else configured a handler (the JSON log format does).
        return self.mode != "off" and bool(super().access_log_enabled)

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        if self.mode == "errors" and _status(resp) < 400:
            return
        super().access(resp, req, environ, request_time)


def _status(resp: Any) -> int:
    """A response's status code (gunicorn gives an int, or a "200 OK" string)."""
    text = str(getattr(resp, "status", "")).split(None, 1)
    return int(text[0]) if text and text[0].isdigit() else 0


def access_logger(mode: str) -> type[AccessLogger]:
    """gunicorn's `logger_class` for an access-log mode: on, off or errors."""
    if mode not in ("on", "off", "errors"):
        raise ValueError(f"access log mode must be on, off or errors, not {mode!r}")
    return type(f"AccessLogger_{mode}", (AccessLogger,), {"mode": mode})


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
