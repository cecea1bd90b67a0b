"""Errors as HTTP answers: one renderer per protocol, and Django's and DRF's hooks that use them.

* ``v1_error(exc)``: the native API's ``{"error": {"code", "message", "details"}}``, used by the
  async predict views, by DRF's exception handler (every other /api/v1/ view) and by Django's
  400/403/404/500 handlers on API paths. Django's HTML error pages never answer an API path.
* ``v2_reply(exc)``: the Open Inference Protocol's ``{"error": "..."}``, same statuses and headers.

The async API views answer ``apis.replies.Reply`` objects (``v1_reply``, ``v2_reply``); ``v1_error`` is
``v1_reply`` as a Django response, for Django's handlers.

Both first turn whatever was raised into an ``inference.errors.APIError`` (``api_error``): DRF's
own exceptions, Django's Http404, a lost database (503, not a bug), a malformed tensor request.
Anything else is a bug: logged with the request id and answered 500.
"""

from __future__ import annotations

import logging
from typing import Any

from django.http import Http404, HttpRequest, HttpResponse
from rest_framework import exceptions
from rest_framework.response import Response

from ..errors import (
    APIError,
    ErrorCode,
    InvalidInput,
    NotAuthenticated,
    NotFound,
    PermissionDenied,
    RateLimited,
    database_unavailable,
    error_body,
    is_api_path,
)
from ..oip import ProtocolError
from .replies import Reply, json_reply

logger = logging.getLogger("inference.errors")

SERVER_ERROR = "Internal error: this is a bug in the platform; it was logged with the request id."

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


def _from_drf(exc: exceptions.APIException) -> APIError:
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        return NotAuthenticated(str(exc.detail))
    if isinstance(exc, exceptions.PermissionDenied):
        return PermissionDenied(str(exc.detail))
    if isinstance(exc, exceptions.Throttled):
        return RateLimited(exc.wait)
    code = next((_DRF_CODES[cls] for cls in type(exc).__mro__ if cls in _DRF_CODES), ErrorCode.INVALID_INPUT)
    if isinstance(exc.detail, (dict, list)):
        error = APIError("Invalid request.", code=code, details={"fields": exc.detail})
    else:
        error = APIError(str(exc.detail), code=code)
    error.status_code = exc.status_code
    return error


def api_error(exc: BaseException) -> APIError | None:
    """The APIError an exception answers as, or None for a bug."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, exceptions.APIException):
        return _from_drf(exc)
    if isinstance(exc, ProtocolError):
        return InvalidInput(str(exc))
    if isinstance(exc, Http404):
        return NotFound(str(exc) or None)
    return database_unavailable(exc)


def _json(data: Any, status: int, headers: dict[str, str]) -> HttpResponse:
    return json_reply(data, status, headers).http_response()


def _bug(exc: BaseException, request: HttpRequest | None) -> None:
    path = request.path if request is not None else "?"
    logger.error("Internal Server Error: %s", path, exc_info=(type(exc), exc, exc.__traceback__))


def v1_reply(exc: BaseException, request: HttpRequest | None = None) -> Reply:
    """Render any exception as the v1 error object with its status and headers (a bug: 500, logged)."""
    error = api_error(exc)
    if error is None:
        _bug(exc, request)
        return json_reply(error_body(ErrorCode.SERVER_ERROR, SERVER_ERROR), 500)
    return json_reply(error_body(error.error_code, error.message, error.details), error.status_code, error.headers)


def v1_error(exc: BaseException, request: HttpRequest | None = None) -> HttpResponse:
    """``v1_reply`` as a Django response."""
    return v1_reply(exc, request).http_response()


def v2_reply(exc: BaseException, request: HttpRequest | None = None) -> Reply:
    """Render any exception as the Open Inference Protocol's {"error": message} (a bug: 500, logged)."""
    error = api_error(exc)
    if error is None:
        _bug(exc, request)
        return json_reply({"error": SERVER_ERROR}, 500)
    if isinstance(error, RateLimited):
        message = f"rate limit exceeded for this API key; retry in {error.wait} s"
    elif error.details.get("path"):
        message = f"{error.message} (at {error.details['path']})"
    else:
        message = error.message
    return json_reply({"error": message}, error.status_code, error.headers)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's EXCEPTION_HANDLER: every error of a DRF view in the v1 shape (None: a bug, DRF re-raises)."""
    error = api_error(exc)
    if error is None:
        return None
    response = Response(error_body(error.error_code, error.message, error.details), status=error.status_code)
    for name, value in error.headers.items():
        response[name] = value
    return response


# ---- Django's error handlers (inference_platform.urls): JSON on API paths, HTML pages elsewhere -----------

def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_api_path(request.path):
        return v1_error(NotFound(f"No endpoint at {request.path}."))
    from django.views.defaults import page_not_found

    return page_not_found(request, exception)


def handler500(request: HttpRequest) -> HttpResponse:
    import sys

    if is_api_path(request.path):
        # Django calls this while handling the uncaught exception (already logged by Django): a lost
        # database raised outside a view that renders its own errors is a 503, not a bug.
        unavailable = database_unavailable(sys.exc_info()[1])
        if unavailable is not None:
            return v1_error(unavailable)
        return _json(error_body(ErrorCode.SERVER_ERROR, SERVER_ERROR), 500, {})
    from django.views.defaults import server_error

    return server_error(request)


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_api_path(request.path):
        from django.core.exceptions import RequestDataTooBig

        if isinstance(exception, RequestDataTooBig):
            return _json(error_body(ErrorCode.PAYLOAD_TOO_LARGE, "The request body is too large."), 413, {})
        return _json(error_body(ErrorCode.INVALID_INPUT, "Bad request."), 400, {})
    from django.views.defaults import bad_request

    return bad_request(request, exception)


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_api_path(request.path):
        return _json(error_body(ErrorCode.PERMISSION_DENIED, "Forbidden."), 403, {})
    from django.views.defaults import permission_denied

    return permission_denied(request, exception)
