"""`create_app(controller)` wires resources to routes; the gunicorn worker calls it."""

from __future__ import annotations

from typing import Any

import falcon

from controller.api import errors, resources
from controller.main import Controller


def create_app(controller: Controller) -> falcon.App[Any, Any]:
    app = falcon.App()
    app.req_options.strip_url_path_trailing_slash = True
    errors.install(app)
    app.add_route("/healthz", resources.Healthz())
    app.add_route("/readyz", resources.Readyz(controller))
    app.add_route("/api/services", resources.Services(controller))
    for op in ("up", "update", "down"):
        app.add_route(f"/api/{op}", resources.Deploy(controller, op))
    app.add_route("/api/parameters", resources.Parameters(controller))
    return app
