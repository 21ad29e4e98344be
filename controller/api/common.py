"""Request parsing shared by the resources: JSON bodies, service lists, query numbers."""

from __future__ import annotations

import json
import re
from typing import Any

import falcon

from controller.errors import InvalidRequestError


def body_bytes(req: falcon.Request) -> bytes:
    """The raw request body: as Content-Length says, or as the body-limit middleware read
    it when it came chunked."""
    body = getattr(req.context, "body", None)
    return body if isinstance(body, bytes) else req.bounded_stream.read()


def json_body(req: falcon.Request, default: Any = None) -> Any:
    """The request body as JSON, whatever Content-Type says.

    The reference's own examples send JSON with `curl -d` and no header, which curl labels
    form-urlencoded; reading it as a form would turn `{"services": ["a"]}` into an empty
    selection, i.e. *every* service. An empty body gives `default`; anything that is not
    JSON is an invalid_request, never a guess.
    """
    raw = body_bytes(req)
    if not raw.strip():
        return default
    try:
        return json.loads(raw)
    except ValueError as e:
        raise InvalidRequestError(f"request body is not valid JSON: {e}",
                                  {"content_type": req.content_type or ""}) from e


# A DeploymentParameters name that can also be a label value (the objects carry it).
INSTANCE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def instance_param(req: falcon.Request, default: str) -> str:
    """`?instance=`: the DeploymentParameters object to act on (default: the controller's).

    Checked here, so a malformed name is the caller's invalid_request, not the API server's
    refusal passed on as a kubernetes_error (502).
    """
    raw = req.get_param("instance")
    if raw is None or raw == "":
        return default
    if len(raw) > 63 or not INSTANCE_NAME.match(raw):
        raise InvalidRequestError("'instance' must be a DeploymentParameters name: lower-case "
                                  "letters, digits, '-' and '.', at most 63 characters",
                                  {"field": "instance", "value": raw[:100]})
    return raw


def services_from(body: Any) -> list[str]:
    if body is None:
        return []
    if not isinstance(body, dict):
        raise InvalidRequestError("request body must be a JSON object",
                                  {"expected": {"services": ["name"]}})
    services = body.get("services") or []
    if not isinstance(services, list) or not all(isinstance(s, str) for s in services):
        raise InvalidRequestError("'services' must be a list of service names",
                                  {"field": "services", "got": services})
    return services


def int_param(req: falcon.Request, name: str, default: int, low: int, high: int) -> int:
    return int(_number(req, name, default, low, high, int, "an integer"))


def float_param(req: falcon.Request, name: str, default: float, low: float,
                high: float) -> float:
    return float(_number(req, name, default, low, high, float, "a number"))


def _number(req: falcon.Request, name: str, default: float, low: float, high: float,
            cast: type[int] | type[float], what: str) -> float:
    """A bounded numeric query parameter; a bad one is an invalid_request naming it."""
    raw = req.get_param(name)
    if raw is None or raw == "":
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise InvalidRequestError(f"'{name}' must be {what}",
                                  {"field": name, "value": raw}) from None
    if not low <= value <= high:
        raise InvalidRequestError(f"'{name}' must be between {low} and {high}",
                                  {"field": name, "value": value})
    return value


def bool_param(req: falcon.Request, name: str, default: bool) -> bool:
    raw = req.get_param(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise InvalidRequestError(f"'{name}' must be true or false", {"field": name, "value": raw})
