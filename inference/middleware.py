"""Request ids: every request gets one (X-Request-ID, echoed if the client sent a sane one)."""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from django.contrib.messages.middleware import MessageMiddleware as DjangoMessageMiddleware
from django.http import HttpRequest, HttpResponse

from .errors import is_api_path
from .monitoring.logs import key_prefix_var, request_id_var

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
        # Every log line written while serving it carries the id (monitoring.logs.JsonFormatter).
        token = request_id_var.set(request.request_id)
        key_token = key_prefix_var.set("")
        try:
            response = self.get_response(request)
        finally:
            key_prefix_var.reset(key_token)
            request_id_var.reset(token)
        response["X-Request-ID"] = request.request_id
        return response


class MessageMiddleware(DjangoMessageMiddleware):
    """django.contrib.messages for the admin, not for the API.

    The stock middleware builds a message storage (cookie + session backends) for every
    request; an API request never reads or writes a message, and on the predict path
    that construction was ~3 % of the time the process holds the GIL (py-spy, iris at
    concurrency 16).
    """

    def process_request(self, request: HttpRequest) -> None:
        if not is_api_path(request.path_info):
            super().process_request(request)
