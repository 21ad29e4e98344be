"""Errors that carry an API error code, so every layer speaks the same envelope.

The REST contract answers `{"error": code, "message": ..., "details": {...}}`; raising one
of these anywhere below the API lets the API map it in one place, and lets the loop record
the same code in events and status.
"""

from __future__ import annotations

from typing import Any


class ConductorError(Exception):
    """Base error: a stable machine-readable code, a human message and details."""

    code = "internal_error"

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, "details": self.details}


class InvalidYAMLError(ConductorError):
    """A template rendered to text that is not YAML (details: file, line, reason)."""

    code = "invalid_yaml"


class ValidationError(ConductorError):
    """Parameters or rendered objects are well-formed YAML but not acceptable."""

    code = "validation_error"


class NotFoundError(ConductorError):
    code = "not_found"


class InvalidRequestError(ConductorError):
    code = "invalid_request"


class ConflictError(ConductorError):
    code = "conflict"


class UnauthorizedError(ConductorError):
    code = "unauthorized"


class ForbiddenError(ConductorError):
    code = "forbidden"


class RateLimitedError(ConductorError):
    code = "rate_limited"


class PayloadTooLargeError(ConductorError):
    code = "payload_too_large"


class PreconditionFailedError(ConductorError):
    """If-Match named a version that is no longer current: nothing was changed."""

    code = "precondition_failed"


class KubernetesError(ConductorError):
    """The API server refused or failed a request (details: status, reason, resource)."""

    code = "kubernetes_error"


class ReconciliationError(ConductorError):
    code = "reconciliation_error"


class SourceError(ConductorError):
    """Parameters or manifests could not be fetched (Git, the resource)."""

    code = "source_error"
