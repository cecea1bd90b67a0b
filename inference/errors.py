"""API errors: exceptions that carry their HTTP meaning, and the one handler that renders them.

Every error on an API path has the shape
``{"error": {"code": "...", "message": "...", "details": {...}}}``; codes are stable
and listed in ``ErrorCode``. Django's HTML error pages never answer an API path.
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from rest_framework import exceptions, status
from rest_framework.response import Response

logger = logging.getLogger("inference.errors")

API_PREFIXES = ("/api/", "/v2", "/metrics", "/readyz", "/healthz")


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


class APIError(exceptions.APIException):
    """Base of the platform's API errors: status, stable code, optional details and headers."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = ErrorCode.INVALID_INPUT
    default_detail = "Bad request."

    def __init__(self, message: str | None = None, *, details: dict[str, Any] | None = None, code: str | None = None):
        super().__init__(message or self.default_detail, code or self.default_code)
        self.message = message or str(self.default_detail)
        self.error_code = str(code or self.default_code)
        self.details = details or {}
        self.headers: dict[str, str] = {}


class InvalidInput(APIError):
    status_code = 400
    default_code = ErrorCode.INVALID_INPUT
    default_detail = "The request's input is invalid."

    def __init__(self, message: str, *, path: str = "", code: str | None = None, details: dict | None = None):
        details = dict(details or {})
        if path:
            details["path"] = path
        super().__init__(message, details=details, code=code)


class NotFound(APIError):
    status_code = 404
    default_code = ErrorCode.NOT_FOUND
    default_detail = "Not found."


class Conflict(APIError):
    status_code = 409
    default_code = ErrorCode.CONFLICT
    default_detail = "The request conflicts with the current state."


class PayloadTooLarge(APIError):
    status_code = 413
    default_code = ErrorCode.PAYLOAD_TOO_LARGE
    default_detail = "The request body is too large."


class ServiceUnavailable(APIError):
    """503 with Retry-After: the model is not ready, or its queue is full."""

    status_code = 503
    default_code = ErrorCode.MODEL_NOT_READY
    default_detail = "The model is not ready."

    def __init__(self, message: str | None = None, *, retry_after: int = 1, code: str | None = None,
                 details: dict | None = None):
        super().__init__(message, code=code, details=details)
        self.headers["Retry-After"] = str(max(1, int(retry_after)))


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


class RequestTimeout(APIError):
    status_code = 504
    default_code = ErrorCode.TIMEOUT
    default_detail = "The model did not answer in time."


class ModelFailed(APIError):
    """The model raised while computing this request's batch (the model's error, not the server's)."""

    status_code = 500
    default_code = ErrorCode.MODEL_ERROR
    default_detail = "The model failed on this input."


class RateLimited(exceptions.Throttled):
    """429 with Retry-After; django-ratelimit raises this (RATELIMIT_EXCEPTION_CLASS)."""

    default_code = ErrorCode.RATE_LIMITED

    def __init__(self, wait: float | None = None, detail: str | None = None, code: str | None = None):
        super().__init__(wait=wait if wait is not None else 1, detail=detail, code=code)


_DRF_CODES = {
    exceptions.NotAuthenticated: ErrorCode.NOT_AUTHENTICATED,
    exceptions.AuthenticationFailed: ErrorCode.NOT_AUTHENTICATED,
    exceptions.PermissionDenied: ErrorCode.PERMISSION_DENIED,
    exceptions.NotFound: ErrorCode.NOT_FOUND,
    exceptions.MethodNotAllowed: ErrorCode.METHOD_NOT_ALLOWED,
    exceptions.UnsupportedMediaType: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
    exceptions.NotAcceptable: ErrorCode.INVALID_INPUT,
    exceptions.ParseError: ErrorCode.MALFORMED_JSON,
    exceptions.Throttled: ErrorCode.RATE_LIMITED,
    exceptions.ValidationError: ErrorCode.INVALID_INPUT,
}


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": str(code), "message": message, "details": details or {}}}


def _drf_code(exc: exceptions.APIException) -> str:
    for cls in type(exc).__mro__:
        if cls in _DRF_CODES:
            return _DRF_CODES[cls]
    return ErrorCode.INVALID_INPUT


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's EXCEPTION_HANDLER: render every error in the platform's error shape."""
    if isinstance(exc, Http404):
        exc = NotFound(str(exc) or None)
    exc = database_unavailable(exc) or exc
    if isinstance(exc, APIError):
        response = Response(error_body(exc.error_code, exc.message, exc.details), status=exc.status_code)
        for k, v in exc.headers.items():
            response[k] = v
        return response
    if isinstance(exc, exceptions.APIException):
        details: dict[str, Any] = {}
        if isinstance(exc.detail, (dict, list)):
            details = {"fields": exc.detail}
            message = "Invalid request."
        else:
            message = str(exc.detail)
        code = _drf_code(exc)
        if isinstance(exc, exceptions.Throttled):
            wait = int(exc.wait or 1)
            message = f"Rate limit exceeded for this API key; retry in {wait} s."
            details = {"retry_after": wait}
        response = Response(error_body(code, message, details), status=exc.status_code)
        if isinstance(exc, exceptions.Throttled):
            response["Retry-After"] = str(max(1, int(exc.wait or 1)))
        auth_header = getattr(exc, "auth_header", None)
        if auth_header:
            response["WWW-Authenticate"] = auth_header
        return response
    return None  # a bug: Django's handler500 below renders it as JSON


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES)


def _json_response(code: str, message: str, status_code: int) -> HttpResponse:
    import orjson

    return HttpResponse(orjson.dumps(error_body(code, message)), status=status_code, content_type="application/json")


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_api_path(request.path):
        return _json_response(ErrorCode.NOT_FOUND, f"No endpoint at {request.path}.", 404)
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def handler500(request: HttpRequest) -> HttpResponse:
    import sys

    if is_api_path(request.path):
        # Django calls this while handling the uncaught exception: a lost database (raised
        # outside a DRF view, e.g. in a plain view or middleware) is a 503, not a bug.
        unavailable = database_unavailable(sys.exc_info()[1])
        if unavailable is not None:
            response = _json_response(unavailable.error_code, unavailable.message, 503)
            response["Retry-After"] = unavailable.headers["Retry-After"]
            return response
        return _json_response(
            ErrorCode.SERVER_ERROR,
            "Internal error: this is a bug in the platform; it was logged with the request id.",
            500,
        )
    from django.views.defaults import server_error

    return server_error(request)


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_api_path(request.path):
        from django.core.exceptions import RequestDataTooBig

        if isinstance(exception, RequestDataTooBig):
            return _json_response(ErrorCode.PAYLOAD_TOO_LARGE, "The request body is too large.", 413)
        return _json_response(ErrorCode.INVALID_INPUT, "Bad request.", 400)
    from django.views.defaults import bad_request

    return bad_request(request, exception)


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_api_path(request.path):
        return _json_response(ErrorCode.PERMISSION_DENIED, "Forbidden.", 403)
    from django.views.defaults import permission_denied

    return permission_denied(request, exception)
