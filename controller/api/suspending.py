"""POST /api/suspend and /api/resume: stop and restart applying an instance.

Both write only `spec.suspend` of the DeploymentParameters object (the service's
`suspend`), so the state is where `kubectl get` and a GitOps user expect it, survives
restarts and is shared by replicas; a resumed instance applies everything that waited
(drift and parameter changes) in its next pass. Idempotent: suspending a suspended
instance answers 200 and writes nothing.
"""

from __future__ import annotations

import falcon

from controller.api.common import instance_param, json_body
from controller.errors import InvalidRequestError
from controller.runtime.service import Service


class Suspend:
    """POST /api/suspend (`suspend=True`) or /api/resume (`suspend=False`), ?instance=."""

    def __init__(self, service: Service, suspend: bool) -> None:
        self.service = service
        self.suspend = suspend

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        # Nothing to send; anything else is a mistake worth a 400 rather than a guess.
        if json_body(req, {}) != {}:
            raise InvalidRequestError("this endpoint takes no body (or {})", {})
        resp.media = self.service.suspend(instance_param(req), self.suspend)
