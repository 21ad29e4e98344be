"""Request parsing shared by the resources: JSON bodies, service lists, query parameters.

Everything a request carries is parsed and checked here *before* a resource acts on it, so
a malformed request is a 400 that changed nothing. The rules are the OpenAPI document's
(`openapi.py`): a query parameter given with an empty value is malformed (never "absent":
`?instance=` must not quietly mean the default instance), numbers are finite decimals,
and a JSON body is strict JSON (no NaN/Infinity, no lone surrogates, bounded nesting).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, NoReturn

import falcon
import orjson

from controller.errors import InvalidRequestError
from controller.runtime.service import Caller

# Deeper than any document a client means to send, and well below the depth at which the
# json module (and every recursive walk after it) runs out of interpreter stack. Stricter
# limits for particular bodies (parameters) are theirs to add.
MAX_JSON_DEPTH = 512


def dump_json(value: Any) -> bytes:
    """A response body as JSON (UTF-8, non-ASCII as is, like Falcon's own handler).

    orjson writes the same JSON in a fraction of json.dumps' time, which is a few percent
    of a small answer's cost and most of a large one's (a plan, the parameters). It refuses
    what json.dumps takes (integers beyond 64 bits, keys that are not strings): those go
    through json.dumps, so nothing that answered before fails now."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        return json.dumps(value, ensure_ascii=False).encode()


def body_bytes(req: falcon.Request) -> bytes:
    """The raw request body: as Content-Length says, or as the body-limit middleware read
    it when it came chunked."""
    body = getattr(req.context, "body", None)
    return body if isinstance(body, bytes) else req.bounded_stream.read()


def _not_json(message: str, req: falcon.Request, **details: Any) -> NoReturn:
    raise InvalidRequestError(f"request body is not valid JSON: {message}",
                              {"content_type": req.content_type or "", **details})


def _no_constant(name: str) -> NoReturn:
    # json.loads accepts NaN/Infinity by default; they are not JSON, and echoed back in an
    # error's details they would make the error itself invalid JSON.
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e309 overflows to inf
        raise ValueError(f"number out of range: {text[:40]}")
    return value


def parse_json(raw: bytes | str) -> Any:
    """Strict JSON, or ValueError saying why (RecursionError for nesting that overflows
    the parser)."""
    return json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)


def json_body(req: falcon.Request, default: Any = None) -> Any:
    """The request body as JSON, whatever Content-Type says.

    The reference's own examples send JSON with `curl -d` and no header, which curl labels
    form-urlencoded; reading it as a form would turn `{"services": ["a"]}` into an empty
    selection, i.e. *every* service. An empty body (no bytes at all) gives `default`;
    anything else that is not strict JSON, whitespace alone included, is an
    invalid_request, never a guess (and never a 500 later on, when the answer or a log
    line would have to encode it).
    """
    raw = body_bytes(req)
    if not raw:
        return default
    try:
        doc = parse_json(raw)
    except RecursionError:
        _not_json(f"nested deeper than {MAX_JSON_DEPTH} levels", req,
                  max_depth=MAX_JSON_DEPTH)
    except ValueError as e:  # includes UnicodeDecodeError (not UTF-8/16/32)
        _not_json(str(e), req)
    problem = check_document(doc)
    if problem:
        _not_json(problem, req, max_depth=MAX_JSON_DEPTH)
    return doc


# A lone UTF-16 surrogate: json.loads accepts "\ud800" (and UTF-8-encoded surrogates,
# which it decodes with surrogatepass), but no UTF-8 encoder can write it back.
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_document(doc: Any, max_depth: int = MAX_JSON_DEPTH) -> str:
    """Why a parsed document is refused ("" if it is not): nesting over `max_depth`, or a
    string (key or value) with a lone surrogate. Iterative, so depth costs no stack."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if _SURROGATE.search(node):
                return "a string holds a lone UTF-16 surrogate (not Unicode text)"
        elif isinstance(node, dict | list):
            if depth > max_depth:
                return f"nested deeper than {max_depth} levels"
            if isinstance(node, dict):
                stack.extend((k, depth) for k in node)
                stack.extend((v, depth + 1) for v in node.values())
            else:
                stack.extend((v, depth + 1) for v in node)
    return ""


# --- query parameters ----------------------------------------------------------------------


def query_param(req: falcon.Request, name: str) -> str | None:
    """A query parameter's value, None when absent; given but empty is an invalid_request
    (`?instance=` from an unset shell variable must not act on the default instance)."""
    raw = req.get_param(name)
    if raw == "":
        raise InvalidRequestError(f"'{name}' is empty; leave it out to use the default",
                                  {"field": name, "value": ""})
    return raw


# A DeploymentParameters name that can also be a label value (the objects carry it).
INSTANCE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def instance_param(req: falcon.Request) -> str | None:
    """`?instance=`: the DeploymentParameters object to act on (None: the service's default,
    the controller's own).

    Checked here, so a malformed name is the caller's invalid_request, not the API server's
    refusal passed on as a kubernetes_error (502).
    """
    resolved = getattr(req.context, "instance", None)
    if isinstance(resolved, str):  # resolved within the caller's scope (security.py)
        return resolved
    raw = query_param(req, "instance")
    if raw is None:
        return None
    if len(raw) > 63 or not INSTANCE_NAME.match(raw):
        raise InvalidRequestError("'instance' must be a DeploymentParameters name: lower-case "
                                  "letters, digits, '-' and '.', at most 63 characters",
                                  {"field": "instance", "value": raw[:100]})
    return raw


def if_match(req: falcon.Request) -> str | None:
    """The If-Match header as a version (quotes taken off), "*", or None when absent.

    One entity tag only: versions are strong (a generation, a blob SHA), so a weak
    tag (W/"...") or a list could never be compared honestly and is an invalid_request."""
    raw = req.get_header("If-Match")
    if raw is None:
        return None
    value = raw.strip()
    if value == "*":
        return value
    if value.startswith("W/") or "," in value or not value:
        raise InvalidRequestError("If-Match must be one strong entity tag (\"<version>\" as "
                                  "an ETag gave it) or *", {"header": "If-Match",
                                                          "value": raw[:100]})
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value


def caller(req: falcon.Request) -> Caller:
    """Who asks: only a caller who may write the parameters may read their secret values
    (the auth middleware sets the token's scopes; without them, assume the least), and
    the token's name (`token:<name>` in `req.context.client`; "" without auth)."""
    scopes = getattr(req.context, "scopes", None)
    client = str(getattr(req.context, "client", "") or "")
    return Caller(may_see_secrets=isinstance(scopes, set | frozenset) and "write" in scopes,
                  token_name=client.removeprefix("token:") if client.startswith("token:")
                  else "")


def etag(resp: falcon.Response, version: str) -> None:
    """`ETag: "<version>"` on a parameters answer (what If-Match sends back)."""
    if version:
        resp.set_header("ETag", f'"{version}"')


def services_from(body: Any, allowed: tuple[str, ...] = ("services",)) -> list[str]:
    """The service selection of a deploy/plan body: `{}`, `{"services": []}` (and an empty
    body, which the caller turns into `{}`) mean every service; anything else must be a
    list of non-empty names. A value that is merely falsy (`""`, `false`, `0`, `null`, `{}`)
    is refused: read as "nothing named" it would take *every* service down."""
    if not isinstance(body, dict):
        raise InvalidRequestError("request body must be a JSON object",
                                  {"expected": {"services": ["name"]}})
    unknown = sorted(set(body) - set(allowed))
    if unknown:  # a misspelt "service" would otherwise select everything
        raise InvalidRequestError(f"unknown field(s): {', '.join(unknown)[:200]}",
                                  {"fields": unknown[:20], "allowed": list(allowed)})
    services = body.get("services", [])
    if not isinstance(services, list) or \
            not all(isinstance(s, str) and s for s in services):
        raise InvalidRequestError("'services' must be a list of service names (an empty list "
                                  "or no 'services' field means every service)",
                                  {"field": "services", "type": _json_type(services)})
    return services


def _json_type(value: Any) -> str:
    """The JSON type of a value, for an error's details (the value itself may be huge)."""
    if isinstance(value, list):
        kinds = sorted({_json_type(v) for v in value if not isinstance(v, list | dict)}
                       | {"array" for v in value if isinstance(v, list)}
                       | {"object" for v in value if isinstance(v, dict)})
        return f"array of {', '.join(kinds)}" if kinds else "array"
    return {bool: "boolean", int: "number", float: "number", str: "string", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)


_INTEGER = re.compile(r"^[-+]?[0-9]{1,18}$")
_DECIMAL = re.compile(r"^[-+]?([0-9]{1,18}(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]{1,3})?$")


def int_param(req: falcon.Request, name: str, default: int, low: int, high: int) -> int:
    return int(_number(req, name, default, low, high, _INTEGER, int, "an integer"))


def float_param(req: falcon.Request, name: str, default: float, low: float,
                high: float) -> float:
    return float(_number(req, name, default, low, high, _DECIMAL, float, "a number"))


def _number(req: falcon.Request, name: str, default: float, low: float, high: float,
            syntax: re.Pattern[str], cast: type[int] | type[float], what: str) -> float:
    """A bounded numeric query parameter; a bad one is an invalid_request naming it.

    Plain decimal syntax only: Python's own parsers also take "nan", "inf", "1_000" and
    digits of other scripts, and a NaN slips through any range check."""
    raw = query_param(req, name)
    if raw is None:
        return default
    value = cast(raw) if syntax.match(raw) else None
    if value is None or not math.isfinite(value):
        raise InvalidRequestError(f"'{name}' must be {what}",
                                  {"field": name, "value": raw[:100]})
    if not low <= value <= high:
        raise InvalidRequestError(f"'{name}' must be between {low} and {high}",
                                  {"field": name, "value": raw[:100], "minimum": low,
                                   "maximum": high})
    return value


def bool_param(req: falcon.Request, name: str, default: bool) -> bool:
    raw = query_param(req, name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise InvalidRequestError(f"'{name}' must be true or false",
                              {"field": name, "value": raw[:100]})
