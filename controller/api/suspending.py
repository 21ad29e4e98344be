"""POST /api/suspend and /api/resume: stop and restart applying an instance.

Both write only `spec.suspend` of the DeploymentParameters object (a merge patch), so the
state is where `kubectl get` and a GitOps user expect it, survives restarts and is shared
by replicas; the object's watch wakes the loop, and a resumed instance applies everything
that waited (drift and parameter changes) in its next pass. Idempotent: suspending a
suspended instance answers 200 and writes nothing.
"""

from __future__ import annotations

import falcon

from controller.adapters.sources.resource import API_VERSION, KIND
from controller.api.common import instance_param, json_body
from controller.errors import InvalidRequestError
from controller.reconcile.engine import is_suspended
from controller.runtime.controller import Controller


class Suspend:
    """POST /api/suspend (`suspend=True`) or /api/resume (`suspend=False`), ?instance=."""

    def __init__(self, controller: Controller, suspend: bool) -> None:
        self.controller = controller
        self.suspend = suspend

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        # Nothing to send; anything else is a mistake worth a 400 rather than a guess.
        if json_body(req, {}) != {}:
            raise InvalidRequestError("this endpoint takes no body (or {})", {})
        instance = instance_param(req, self.controller.cfg.instance)
        resource = self.controller.engine_for(instance).resource
        obj = resource.read()
        changed = is_suspended(obj) != self.suspend
        if changed:
            resource.kube.patch(API_VERSION, KIND, resource.name,
                                {"spec": {"suspend": self.suspend}}, resource.namespace)
            if instance == self.controller.cfg.instance:
                self.controller.loop.wake("resume" if not self.suspend else "suspend")
        state = "suspended" if self.suspend else "resumed"
        resp.media = {
            "message": f"instance {instance} {state}" if changed else
            f"instance {instance} was already {state}",
            "instance": instance, "namespace": resource.namespace,
            "suspended": self.suspend, "changed": changed}
