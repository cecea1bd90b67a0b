"""Request ids: every request gets one (X-Request-ID, echoed if the client sent a sane one)."""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id_of(request: HttpRequest) -> str:
    given = request.META.get("HTTP_X_REQUEST_ID", "")
    # 128 random bits as 32 hex digits. Ids need to be unique, not secret: the module's
    # generator avoids a urandom system call per request.
    return given if _SAFE_ID.match(given) else f"{random.getrandbits(128):032x}"


class RequestIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.request_id = request_id_of(request)
        response = self.get_response(request)
        response["X-Request-ID"] = request.request_id
        return response
