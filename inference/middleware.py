"""Request middleware: request ids, the boundary of the async API views, messages for the admin only.

settings.MIDDLEWARE has two parts, split by ``APIBoundaryMiddleware``:

* above it, what every request gets (request ids, HTTPS redirect and security headers,
  X-Frame-Options). These are hook middleware (``process_request`` / ``process_response``), so the
  web server's front runs the very same list around the async API views on its event loop
  (``inference_platform.front``, which reads it from settings.MIDDLEWARE);
* below it, what the admin and the browsable pages need (static files, sessions, CSRF, users,
  messages). The async API views (v1 predict, v2 infer) authenticate with API keys, are
  CSRF-exempt and answer JSON: their requests go from the boundary straight to the view
  (``serve_api_view``), under WSGI as on the front.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable

from asgiref.sync import async_to_sync
from django.contrib.messages.middleware import MessageMiddleware as DjangoMessageMiddleware
from django.core.signals import setting_changed
from django.http import HttpRequest, HttpResponse
from django.urls import Resolver404, ResolverMatch, get_resolver
from django.utils.deprecation import MiddlewareMixin

from .errors import is_api_path
from .monitoring.logs import key_prefix_var, request_id_var

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def new_request_id() -> str:
    """A request id: 32 hex digits, the milliseconds since the epoch (48 bits) then 80 random bits, as
    UUIDv7 orders them.

    Ordered by time, so that each request record's id lands at the end of the records' request_id
    index: random ids touch a page of that index each, which every write of a few thousand records
    then copies to SQLite's journal (docs/benchmarks.md: twice the CPU per record once the table
    holds a few hundred thousand). Ids need to be unique, not secret: the module's generator avoids a
    urandom system call per request."""
    return f"{time.time_ns() // 1_000_000:012x}{random.getrandbits(80):020x}"


def request_id_of(request: HttpRequest) -> str:
    given = request.META.get("HTTP_X_REQUEST_ID", "")
    return given if _SAFE_ID.match(given) else new_request_id()


class RequestIdMiddleware(MiddlewareMixin):
    """Give the request its id (X-Request-ID, echoed or generated): on the response, and on every log
    line written meanwhile (monitoring.logs.JsonFormatter reads it from a context variable)."""

    def process_request(self, request: HttpRequest) -> None:
        request.request_id = request_id_of(request)
        request.log_context = (request_id_var.set(request.request_id), key_prefix_var.set(""))

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        tokens = getattr(request, "log_context", None)
        if tokens is not None:
            request_id_var.reset(tokens[0])
            key_prefix_var.reset(tokens[1])
            response["X-Request-ID"] = request.request_id
        return response


class MessageMiddleware(DjangoMessageMiddleware):
    """django.contrib.messages for the admin, not for the API.

    The stock middleware builds a message storage (cookie + session backends) for every
    request; an API request never reads or writes a message.
    """

    def process_request(self, request: HttpRequest) -> None:
        if not is_api_path(request.path_info):
            super().process_request(request)


ROUTES_MAX = 1024  # paths whose route this process keeps (paths name models: bounded against random ones)
_routes: dict[str, ResolverMatch | None] = {}


def api_route(path: str) -> ResolverMatch | None:
    """The async API view a path resolves to (v1 predict, v2 infer and model metadata: the views made by
    ``apis.replies.api_view``), or None for every other request.

    Remembered per path (the URLconf changes only with ROOT_URLCONF): Django's resolver tries the URL
    patterns' regexes in turn on every call, a large part of a small model's request (docs/benchmarks.md)."""
    if not is_api_path(path):
        return None
    try:
        return _routes[path]
    except KeyError:
        pass
    try:
        match = get_resolver().resolve(path)
    except Resolver404:
        match = None
    else:
        match = match if getattr(match.func, "replies", None) is not None else None
    if len(_routes) >= ROUTES_MAX:
        _routes.clear()
    _routes[path] = match
    return match


def _forget_routes(*, setting: str, **_: object) -> None:
    if setting == "ROOT_URLCONF":
        _routes.clear()


setting_changed.connect(_forget_routes, dispatch_uid="inference.middleware.forget_routes")


HOSTS_MAX = 256  # host headers whose check this process remembers (bounded against random ones)
_hosts: set[tuple[str | None, ...]] = set()


def check_host(request: HttpRequest) -> None:
    """DisallowedHost (a 400) unless the request's host is in ALLOWED_HOSTS: ``request.get_host()``, whose
    answer depends only on these headers and the settings, so a host that passed is not checked again."""
    get = request.META.get
    seen = (get("HTTP_X_FORWARDED_HOST"), get("HTTP_HOST"), get("SERVER_NAME"), get("SERVER_PORT"),
            get("HTTP_X_FORWARDED_PORT"))
    if seen in _hosts:
        return
    request.get_host()
    if len(_hosts) >= HOSTS_MAX:
        _hosts.clear()
    _hosts.add(seen)


def _forget_hosts(**_: object) -> None:
    _hosts.clear()  # ALLOWED_HOSTS, DEBUG, USE_X_FORWARDED_HOST/PORT ...: any setting, to be simple


setting_changed.connect(_forget_hosts, dispatch_uid="inference.middleware.forget_hosts")


async def serve_api_view(request: HttpRequest, match: ResolverMatch) -> HttpResponse:
    """Run an async API view: the Host check (ALLOWED_HOSTS, a 400 otherwise, as CommonMiddleware
    checks it below the boundary), the view, and the response's Content-Length."""
    check_host(request)
    request.resolver_match = match
    response = await match.func(request, *match.args, **match.kwargs)
    if not response.streaming and not response.has_header("Content-Length"):
        response.headers["Content-Length"] = str(len(response.content))
    return response


async def receive_body(request: HttpRequest) -> None:
    """Make the request's body readable (``request.body``). The web server's front reads it only when
    the view asks, after authentication (``inference_platform.front``); under WSGI it is there
    already. Raises ClientGone when the client leaves before sending all of it."""
    fill = getattr(request, "fill_body", None)
    if fill is not None:
        request.fill_body = None
        await fill()


class APIBoundaryMiddleware:
    """The boundary of settings.MIDDLEWARE (see the module's docstring): under WSGI, a request for an
    async API view goes from here to the view (run by asgiref's ``async_to_sync``, as Django runs any
    async view under WSGI); every other request goes on down the chain."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        match = api_route(request.path_info)
        if match is None:
            return self.get_response(request)
        return async_to_sync(serve_api_view)(request, match)
