"""Checks before anything starts, each failure one line with its own exit code.

A controller that cannot work should say why at once, not after it has forked gunicorn,
taken a lease or run a pass, and not in a 40-line traceback: a missing kubeconfig, an API
server that does not answer, a service account that may not read DeploymentParameters.
`conductor run` calls `check_cluster` after the configuration checks (config.py) and
before the server starts; `--debug` shows the traceback behind a line.

Exit codes (the README lists them): 2 configuration, 3 the Kubernetes API cannot be
reached or authenticated to, 4 a permission or the CRD is missing.
"""

from __future__ import annotations

from typing import Any

from controller.adapters.kube import Kube, KubeError, UnknownKindError
from controller.adapters.sources.resource import API_VERSION, KIND
from controller.config import Config

EXIT_CONFIG = 2
EXIT_UNREACHABLE = 3
EXIT_FORBIDDEN = 4


class StartupError(Exception):
    """Why the controller cannot start (one line) and the process's exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def check_cluster(cfg: Config, timeout: float = 10.0) -> None:
    """Credentials load, the API server answers, and we may read our objects (or, when
    the CRD is not installed yet, may install it)."""
    try:
        kube = Kube.connect(cfg)
    except KubeError as e:
        where = cfg.kubeconfig or "$KUBECONFIG, ~/.kube/config or the in-cluster account"
        raise StartupError(f"cannot load Kubernetes credentials from {where}: "
                           f"{_first_line(e)}", EXIT_UNREACHABLE) from e
    try:
        _reachable(kube, timeout)
        _may_read(kube, cfg)
    finally:
        kube.close()


def _reachable(kube: Kube, timeout: float) -> None:
    try:
        kube.request("GET", "/version", timeout=timeout, retry=False)
    except KubeError as e:
        host = kube.api.configuration.host
        if e.status in (401, 403):
            raise StartupError(f"the Kubernetes API server at {host} refused our "
                               f"credentials ({e.status}): {_first_line(e)}",
                               EXIT_UNREACHABLE) from e
        raise StartupError(f"the Kubernetes API server at {host} does not answer: "
                           f"{_first_line(e)}", EXIT_UNREACHABLE) from e


def _may_read(kube: Kube, cfg: Config) -> None:
    try:
        kube.list(API_VERSION, KIND, cfg.namespace)
        return
    except UnknownKindError:
        pass  # not installed yet: fine if we may install it
    except KubeError as e:
        if e.status == 403:
            raise StartupError(
                f"not allowed to list {KIND} in namespace {cfg.namespace}: grant the "
                f"controller's account the Role in config/rbac ({_first_line(e)})",
                EXIT_FORBIDDEN) from e
        raise StartupError(f"cannot list {KIND} in namespace {cfg.namespace}: "
                           f"{_first_line(e)}", EXIT_UNREACHABLE) from e
    if not _allowed(kube, "create", "apiextensions.k8s.io", "customresourcedefinitions"):
        raise StartupError(
            f"the {KIND} CRD (deploymentparameters.conductor.io) is not installed and this "
            f"account may not install it: apply config/crd/deploymentparameters.yaml "
            f"(kubectl apply -k .)", EXIT_FORBIDDEN)


def _allowed(kube: Kube, verb: str, group: str, resource: str) -> bool:
    review: dict[str, Any] = {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"verb": verb, "group": group,
                                        "resource": resource}}}
    try:
        answer = kube.request("POST", "/apis/authorization.k8s.io/v1/"
                              "selfsubjectaccessreviews", body=review, elect=True)
    except KubeError:
        return False
    return bool((answer.get("status") or {}).get("allowed"))


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
