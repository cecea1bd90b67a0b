"""The platform's errors: exceptions that carry their HTTP meaning (status, stable code, headers).

Services and selectors raise these; each protocol renders them once (``inference.apis.errors``:
v1's ``{"error": {"code", "message", "details"}}``, the Open Inference Protocol's
``{"error": "..."}``). Nothing here knows HTTP frameworks: no Django response, no DRF.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any

logger = logging.getLogger("inference.errors")


class ErrorCode(StrEnum):
    INVALID_INPUT = "invalid_input"
    MALFORMED_JSON = "malformed_json"
    NOT_AUTHENTICATED = "not_authenticated"
    PERMISSION_DENIED = "permission_denied"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    RATE_LIMITED = "rate_limited"
    MODEL_NOT_READY = "model_not_ready"
    OVERLOADED = "overloaded"
    TIMEOUT = "timeout"
    MODEL_ERROR = "model_error"
    SERVER_ERROR = "server_error"
    NOT_READY = "not_ready"  # /readyz: a dependency (database, broker, cache, a production model) is down
    DATABASE_UNAVAILABLE = "database_unavailable"  # the database cannot be reached: retry later
    CANCELLED = "cancelled"  # the client closed the connection before the answer (status 499, in records only)
    TOO_MANY_JOBS = "too_many_jobs"  # the key has INFERENCE_JOB_MAX_QUEUED_PER_KEY jobs queued or running


class APIError(Exception):
    """Base of the platform's API errors: status, stable code, message, details and headers."""

    status_code = 400
    default_code: str = ErrorCode.INVALID_INPUT
    default_detail = "Bad request."

    def __init__(self, message: str | None = None, *, details: dict[str, Any] | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        self.message = message or self.default_detail
        super().__init__(self.message)
        self.error_code = str(code or self.default_code)
        self.details = details or {}
        self.headers: dict[str, str] = dict(headers or {})


class InvalidInput(APIError):
    status_code = 400
    default_code = ErrorCode.INVALID_INPUT
    default_detail = "The request's input is invalid."

    def __init__(self, message: str, *, path: str = "", code: str | None = None, details: dict | None = None):
        details = dict(details or {})
        if path:
            details["path"] = path
        super().__init__(message, details=details, code=code)


class NotAuthenticated(APIError):
    """401 with WWW-Authenticate: no API key, or one that is not valid (any more)."""

    status_code = 401
    default_code = ErrorCode.NOT_AUTHENTICATED
    default_detail = 'An API key is required: "Authorization: Api-Key <key>".'
    scheme = "Api-Key"

    def __init__(self, message: str | None = None):
        super().__init__(message, headers={"WWW-Authenticate": self.scheme})


class PermissionDenied(APIError):
    """403: the key lacks the scope (or the permission) for this action."""

    status_code = 403
    default_code = ErrorCode.PERMISSION_DENIED
    default_detail = "This API key may not do this."


class NotFound(APIError):
    status_code = 404
    default_code = ErrorCode.NOT_FOUND
    default_detail = "Not found."


class MethodNotAllowed(APIError):
    status_code = 405
    default_code = ErrorCode.METHOD_NOT_ALLOWED

    def __init__(self, method: str, allowed: str):
        super().__init__(f'Method "{method}" not allowed.', headers={"Allow": allowed})


class Conflict(APIError):
    status_code = 409
    default_code = ErrorCode.CONFLICT
    default_detail = "The request conflicts with the current state."


class PayloadTooLarge(APIError):
    status_code = 413
    default_code = ErrorCode.PAYLOAD_TOO_LARGE
    default_detail = "The request body is too large."


class UnsupportedMediaType(APIError):
    status_code = 415
    default_code = ErrorCode.UNSUPPORTED_MEDIA_TYPE
    default_detail = "Unsupported media type."


class RateLimited(APIError):
    """429 with Retry-After: the key's rate is used up for this window (RATELIMIT_EXCEPTION_CLASS)."""

    status_code = 429
    default_code = ErrorCode.RATE_LIMITED

    def __init__(self, wait: float | None = None):
        self.wait = max(1, int(wait or 1))
        super().__init__(f"Rate limit exceeded for this API key; retry in {self.wait} s.",
                         details={"retry_after": self.wait}, headers={"Retry-After": str(self.wait)})


class AuthenticationThrottled(APIError):
    """429 with Retry-After: too many failed authentications from this client address
    (INFERENCE_AUTH_FAILURE_RATE); unknown keys are refused without looking them up."""

    status_code = 429
    default_code = ErrorCode.RATE_LIMITED

    def __init__(self, wait: float | None = None):
        self.wait = max(1, int(wait or 1))
        super().__init__(
            f"Too many failed authentications from this address; retry in {self.wait} s with a valid API key.",
            details={"retry_after": self.wait}, headers={"Retry-After": str(self.wait)})


class ClientGone(APIError):
    """The client closed the connection before its request's body arrived: nobody reads the answer,
    which only the request's record and logs keep (nginx's 499)."""

    status_code = 499
    default_code = ErrorCode.CANCELLED
    default_detail = "The client closed the connection before sending its whole request."


class TooManyJobs(APIError):
    """429 with Retry-After: the key has as many jobs queued or running as it may (INFERENCE_JOB_MAX_QUEUED_PER_KEY)."""

    status_code = 429
    default_code = ErrorCode.TOO_MANY_JOBS

    def __init__(self, message: str, *, retry_after: int, details: dict | None = None):
        super().__init__(message, details=details, headers={"Retry-After": str(max(1, int(retry_after)))})


class ServiceUnavailable(APIError):
    """503 with Retry-After: the model is not ready, or its queue is full."""

    status_code = 503
    default_code = ErrorCode.MODEL_NOT_READY
    default_detail = "The model is not ready."

    def __init__(self, message: str | None = None, *, retry_after: int = 1, code: str | None = None,
                 details: dict | None = None):
        super().__init__(message, code=code, details=details, headers={"Retry-After": str(max(1, int(retry_after)))})


DATABASE_RETRY_AFTER = 5  # seconds a client is asked to wait while the database is unreachable


class DatabaseUnavailable(ServiceUnavailable):
    """503 with Retry-After: the database cannot be reached (down, restarting, connections cut).

    Not a bug of the platform, so not a 500: the request can be retried as it is once the
    database is back, which the process notices by itself (CONN_HEALTH_CHECKS discards a
    broken persistent connection at the next request)."""

    default_code = ErrorCode.DATABASE_UNAVAILABLE
    default_detail = "The database is unavailable; retry later."

    def __init__(self, message: str | None = None):
        super().__init__(message, retry_after=DATABASE_RETRY_AFTER)


def database_unavailable(exc: BaseException | None) -> DatabaseUnavailable | None:
    """A DatabaseUnavailable for a lost or refused database connection (Django's OperationalError,
    InterfaceError), else None. Other database errors (integrity, programming) stay bugs."""
    from django.db import InterfaceError, OperationalError

    if not isinstance(exc, (OperationalError, InterfaceError)):
        return None
    logger.warning("database unavailable: %s: %s", type(exc).__name__, (str(exc).strip().splitlines() or [""])[0])
    return DatabaseUnavailable()


class ModelFailed(APIError):
    """The model raised while computing this request's batch (the model's error, not the server's)."""

    status_code = 500
    default_code = ErrorCode.MODEL_ERROR
    default_detail = "The model failed on this input."


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The v1 error object (the one shape every API path answers errors with)."""
    return {"error": {"code": str(code), "message": message, "details": details or {}}}


API_PREFIXES = ("/api/", "/v2", "/metrics", "/readyz", "/healthz")


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES)
