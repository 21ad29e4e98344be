"""Secret redaction: the one home of REDACTED and of masking what is stored or shown.

Two callers need it and they differ only in what they know. The event store knows nothing
of a schema: `redact` masks by key name at any depth (password, token, key material,
Authorization...), a Secret object's data values, kubectl's last-applied copy, and
credentials quoted inside strings (`redact_text`: Bearer headers, URL user info,
password=..., JWTs, GitHub tokens, PEM keys). Parameters know their schema
(`format: password`) and keep Secret references readable: `controller.model.parameters.redact`
does that walk with REDACTED and `is_secret_key` from here. Pure: no I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

REDACTED = "***REDACTED***"
MAX_DEPTH = 16  # nesting kept by `redact`; deeper is cut (a stored event stays small)

# Keys whose values are secret material, for events and parameters alike (one list: a key
# masked in one place and shown in another would leak). Names of things (secretName,
# tokenFile, passwordRef, tokenEnv, imagePullSecrets, ...) are not secret and stay
# readable: they are what an agent needs to fix a reference.
_SECRET_KEY = re.compile(
    r"pass(word|wd|phrase)|^pwd$|token|secret|credential|authorization|^auth$|cookie|"
    r"api[-_.]?key|access[-_.]?key|private[-_.]?key|privatekey|client[-_.]?key|"
    r"(^|[-_.])key$|\.pem$|kubeconfig|dockerconfigjson|dockercfg",
    re.IGNORECASE)
_NAME_SUFFIX = re.compile(r"(name|names|ref|refs|file|path|env|type|kind|count|secrets)$",
                          re.IGNORECASE)
_LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
# Cheap first look (on the lower-cased text: a case-insensitive alternation is ~8x slower):
# most strings hold none of these and skip the patterns below.
_SECRET_HINT = re.compile(r"bearer|authorization|://|pass|pwd|token|secret|api.?key|eyj|gh._|"
                          r"github_pat_|private key")
_SECRET_TEXT = (
    # Authorization headers: "Authorization: Basic dXNlcjpwYXNz", "Bearer abc..."
    (re.compile(r"\b(authorization[\"']?\s*[:=]\s*[\"']?)(\w+\s+)?[^\s\"',;]+",
                re.IGNORECASE), rf"\1\2{REDACTED}"),
    (re.compile(r"\b(bearer)\s+[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE), rf"\1 {REDACTED}"),
    # Credentials in URLs: https://user:token@host
    (re.compile(r"\b([a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE), rf"\1{REDACTED}@"),
    # password=..., "token": "...", api_key: ...
    (re.compile(r"\b(pass(?:word|wd)|pwd|token|secret|api[-_]?key)(\"?'?\s*[=:]\s*\"?'?)"
                r"[^\s\"'&,;]+", re.IGNORECASE), rf"\1\2{REDACTED}"),
    # Well-known token shapes: JWTs, GitHub tokens, PEM private keys
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), REDACTED),
    (re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"), REDACTED),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(-----END [A-Z ]*PRIVATE KEY-----|$)",
                re.DOTALL), REDACTED),
)


def redact(details: Mapping[str, Any] | None) -> dict[str, Any]:
    """A JSON-safe copy of `details` with secret values replaced by "***REDACTED***".

    Secret-looking keys (password, token, secret, key material, Authorization, ...) lose
    their values at any depth; a Secret object keeps the keys of its data/stringData but
    not the values; credentials inside strings (Bearer headers, URL user info, password=...)
    are masked. Non-JSON values become strings; nesting deeper than 16 levels is cut.
    """
    if not details:
        return {}
    out = _redact_value(dict(details), 0)
    assert isinstance(out, dict)
    return out


def redact_text(text: str) -> str:
    """`text` with credentials it may quote masked (see `redact`)."""
    if not _SECRET_HINT.search(text.lower()):
        return text
    for pattern, replacement in _SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any, depth: int) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= MAX_DEPTH:
        return "...(truncated)"
    if isinstance(value, Mapping):
        is_secret = value.get("kind") == "Secret"
        out: dict[str, Any] = {}
        for k, v in value.items():
            key = str(k)
            if is_secret and key in ("data", "stringData") and isinstance(v, Mapping):
                out[key] = {str(name): REDACTED for name in v}
            elif v not in (None, "") and (is_secret_key(key) or key == _LAST_APPLIED):
                out[key] = REDACTED  # last-applied: a whole copy of the object, Secrets too
            else:
                out[key] = _redact_value(v, depth + 1)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v, depth + 1) for v in value]
    return redact_text(str(value))


@lru_cache(maxsize=4096)  # keys repeat from event to event; the patterns are the cost
def is_secret_key(key: str) -> bool:
    """Whether a value under `key` is secret material (events and parameters both ask)."""
    return bool(_SECRET_KEY.search(key)) and not _NAME_SUFFIX.search(key)


__all__ = ["MAX_DEPTH", "REDACTED", "is_secret_key", "redact", "redact_text"]
