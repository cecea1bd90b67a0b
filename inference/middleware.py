"""Request middleware: request ids (X-Request-ID), the short path for predict and infer, messages for the admin only."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.contrib.messages.middleware import MessageMiddleware as DjangoMessageMiddleware
from django.http import HttpRequest, HttpResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.urls import Resolver404, ResolverMatch, get_resolver

from .errors import is_api_path
from .monitoring.logs import key_prefix_var, request_id_var

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id_of(request: HttpRequest) -> str:
    given = request.META.get("HTTP_X_REQUEST_ID", "")
    # 128 random bits as 32 hex digits. Ids need to be unique, not secret: the module's
    # generator avoids a urandom system call per request.
    return given if _SAFE_ID.match(given) else f"{random.getrandbits(128):032x}"


@contextmanager
def request_context(request: HttpRequest) -> Iterator[None]:
    """Give the request its id; every log line written meanwhile carries it (monitoring.logs.JsonFormatter)."""
    request.request_id = request_id_of(request)
    token = request_id_var.set(request.request_id)
    key_token = key_prefix_var.set("")
    try:
        yield
    finally:
        key_prefix_var.reset(key_token)
        request_id_var.reset(token)


class RequestIdMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        with request_context(request):
            response = self.get_response(request)
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


# The request path: what clients call at rate. Their views authenticate with API keys,
# are CSRF-exempt and answer JSON; sessions, CSRF, request.user, messages and static
# files do not concern them.
INFERENCE_ROUTES = frozenset({"v1-predict", "v1-predict-version", "v2-infer", "v2-infer-version"})


class InferenceRouteMiddleware:
    """Send predict and infer requests straight to their view, past the browser middleware.

    Sits after RequestIdMiddleware and SecurityMiddleware (request ids, HTTPS redirect and
    security headers apply as everywhere) and before WhiteNoise, sessions, CommonMiddleware,
    CSRF, authentication and messages, which are for the admin and the browsable pages and
    cost ~10 % of an iris predict's time in this process. What of them the API needs is done
    here: the Host check (ALLOWED_HOSTS, a 400 otherwise), Content-Length and
    X-Frame-Options on the response. Every other request takes the full chain.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response
        self.xframe = XFrameOptionsMiddleware(get_response)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        match = inference_route(request.method, request.path_info)
        if match is None:
            return self.get_response(request)
        self.enter(request, match)
        return self.finish(request, match.func(request, *match.args, **match.kwargs))

    @staticmethod
    def enter(request: HttpRequest, match: ResolverMatch) -> None:
        request.get_host()  # ALLOWED_HOSTS, as CommonMiddleware checks it: DisallowedHost is a 400
        request.resolver_match = match

    def finish(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        if not response.streaming and not response.has_header("Content-Length"):
            response.headers["Content-Length"] = str(len(response.content))
        return self.xframe.process_response(request, response)


def inference_route(method: str | None, path: str) -> ResolverMatch | None:
    """The predict or infer route a request is for, or None (every other request)."""
    if method != "POST" or not is_api_path(path):
        return None
    try:
        match = get_resolver().resolve(path)
    except Resolver404:
        return None
    return match if match.url_name in INFERENCE_ROUTES else None
