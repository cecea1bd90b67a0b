"""What the front does for an API request before and after its view, in place of Django's request and middleware.

The async API views (v1 predict, v2 infer, model metadata and readiness, /healthz) are written against a small request
interface that Django's ``HttpRequest`` also has, so that a WSGI server runs them too
(``inference.middleware.APIBoundaryMiddleware``): ``method``, ``path``, ``META`` (read with ``get``),
``headers.get``, ``content_type``, ``read()``, ``request_id``; the view sets ``auth`` on it. On the
web server's front a request is a ``FrontRequest``: those attributes over the headers granian has
parsed already, without building Django's ``ASGIRequest`` (its META of every header, query and cookie
dictionaries), and its response leaves without Django's middleware chain.

What that chain does for such a request, the front does as it does, once per process where it can:

* the request id (``RequestIdMiddleware``): the client's sane ``X-Request-ID`` or a new one, on the
  response and on every log line meanwhile;
* the Host check (``ALLOWED_HOSTS``) and the redirect to HTTPS (``SECURE_SSL_REDIRECT``): Django's
  own ``WSGIRequest`` and ``SecurityMiddleware`` decide, once per distinct set of the headers their
  answer depends on (``Edge.facts``). A request they would refuse or redirect is handed to Django's
  WSGI application whole, which answers it exactly as it answers any other;
* the security headers (``SecurityMiddleware``: nosniff, Referrer-Policy, Cross-Origin-Opener-Policy,
  HSTS on HTTPS; ``XFrameOptionsMiddleware``): the headers those middleware add to a JSON response,
  asked of them with that same request, added to every response that does not set them itself.

Those answers depend on the settings and on these headers only, so they are remembered until a
setting changes. Above ``APIBoundaryMiddleware`` settings.MIDDLEWARE may list these three only: any
other middleware there would have to run per request, and start-up refuses it (ImproperlyConfigured).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from django.conf import settings
from django.core.exceptions import DisallowedHost, ImproperlyConfigured
from django.core.handlers.wsgi import WSGIRequest
from django.core.signals import setting_changed
from django.http import HttpRequest, HttpResponse, QueryDict
from django.http.cookie import parse_cookie
from django.utils.datastructures import MultiValueDict
from django.utils.functional import cached_property
from django.utils.module_loading import import_string

from inference.errors import ClientGone
from inference.middleware import APIBoundaryMiddleware

BOUNDARY = f"{APIBoundaryMiddleware.__module__}.{APIBoundaryMiddleware.__qualname__}"
REQUEST_IDS = "inference.middleware.RequestIdMiddleware"
# Hook middleware whose effect on an API response depends only on the settings and on the headers
# Edge.facts reads (the request's scheme and host): asked once per such set of headers.
HEADER_HOOKS = (
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
)
FACTS_MAX = 1024  # distinct header sets remembered per process (bounded against random Host headers)


_HEADER_NAMES: dict[str, str | None] = {}  # META name -> header name, for the names the code reads (a few dozen)


def _header_name(name: str) -> str | None:
    """The header a META name reads (``HTTP_X_API_KEY`` -> ``x-api-key``), None for other META names."""
    if name.startswith("HTTP_"):
        header = name[5:].lower().replace("_", "-")
    elif name in ("CONTENT_LENGTH", "CONTENT_TYPE"):
        header = name.lower().replace("_", "-")
    else:
        header = None
    if len(_HEADER_NAMES) < 1024:  # META names come from code and settings, not from clients: bounded anyway
        _HEADER_NAMES[name] = header
    return header


class HeaderMeta(Mapping):
    """A request's ``META`` as Django's code reads it (``HTTP_X_API_KEY``, ``CONTENT_LENGTH`` ...), over
    its headers by their lowercase names: looked up when read, not built for every header."""

    __slots__ = ("headers", "base")

    def __init__(self, headers: dict[str, str], base: dict[str, str]):
        self.headers, self.base = headers, base

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def get(self, name: str, default: Any = None) -> Any:  # the common call: no KeyError when absent
        value = self.base.get(name)
        if value is not None:
            return value
        try:
            header = _HEADER_NAMES[name]
        except KeyError:
            header = _header_name(name)
        if header is None:
            return default
        return self.headers.get(header, default)

    def __iter__(self) -> Iterator[str]:
        yield from self.base
        for name in self.headers:
            if "_" in name:  # as Django's ASGIRequest: X_API_KEY would pass for X-API-Key
                continue
            if name in ("content-length", "content-type"):
                yield name.upper().replace("-", "_")
            else:
                yield "HTTP_" + name.upper().replace("-", "_")

    def __len__(self) -> int:
        return sum(1 for _ in self)


class Headers:
    """``request.headers.get(name)`` by any case of the name, as Django's ``HttpHeaders``."""

    __slots__ = ("headers",)

    def __init__(self, headers: dict[str, str]):
        self.headers = headers

    def get(self, name: str, default: Any = None) -> Any:
        return self.headers.get(name.lower(), default)

    def __contains__(self, name: str) -> bool:
        return name.lower() in self.headers


def joined(pairs: Any) -> dict[str, str]:
    """Headers by lowercase name, a repeated header's values joined with commas (as Django joins them:
    X-Forwarded-For sent twice reads as one list, its last address the proxy's)."""
    headers: dict[str, str] = {}
    for name, value in pairs:
        if name in headers:
            headers[name] += "," + value
        else:
            headers[name] = value
    return headers


class FrontRequest(HttpRequest):
    """An API request on the front: a Django ``HttpRequest`` whose ``META`` is read from the headers granian
    has parsed, when read (``HeaderMeta``), and whose body is read when the view asks for it.

    Django's own request classes build all of ``META`` and the query, cookie and form dictionaries as
    they are made; an API request reads a few headers. What a log handler or an error page may read
    (``GET``, ``COOKIES``, ``POST``, ``FILES``) is made if it is read."""

    scheme = "http"  # an attribute here (``HttpRequest.scheme`` is a property): ``Edge.facts`` sets it
    body = b""  # likewise: the whole body, once ``fill_body`` has read it

    def __init__(self, method: str, path: str, scheme: str, headers: dict[str, str], client: str,
                 server: tuple[str, str], query_string: str, exchange: Any):
        self.exchange = exchange  # the body and the response over the server's interface (``protocols``)
        self.method = method
        self.path = self.path_info = path
        self.scheme = scheme
        self.META = HeaderMeta(headers, {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query_string,
                                          "REMOTE_ADDR": client, "SERVER_NAME": server[0], "SERVER_PORT": server[1]})
        self.headers = Headers(headers)
        self.position = 0
        self.client_gone = False
        self.request_id = ""
        self.auth = self.api_key = None
        self.resolver_match = None

    async def fill_body(self) -> None:
        """Read the body (``inference.middleware.receive_body`` calls this once, after authentication);
        ClientGone when the client leaves before sending all of it."""
        body = await self.exchange.body()
        if body is None:
            self.client_gone = True
            raise ClientGone()
        self.body = body

    @property
    def content_type(self) -> str:  # type: ignore[override]
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    def read(self, size: int | None = -1) -> bytes:
        end = len(self.body) if size is None or size < 0 else self.position + size
        data = self.body[self.position:end]
        self.position += len(data)
        return data

    @cached_property
    def GET(self) -> QueryDict:  # noqa: N802 - Django's name
        return QueryDict(self.META["QUERY_STRING"])

    @cached_property
    def COOKIES(self) -> dict[str, str]:  # noqa: N802
        return parse_cookie(self.META.get("HTTP_COOKIE", ""))

    @cached_property
    def POST(self) -> QueryDict:  # noqa: N802 - an API request's body is JSON or tensors, never a form
        return QueryDict()

    @cached_property
    def FILES(self) -> MultiValueDict:  # noqa: N802
        return MultiValueDict()


class Facts(NamedTuple):
    """What Django's request and middleware answer for a request's scheme and host headers."""

    scheme: str  # "https" when Django's request is secure (SECURE_PROXY_SSL_HEADER included)
    headers: list[tuple[str, str]]  # what the header hooks add to a JSON response that lacks them


# The META names Django's answers to get_host(), is_secure() and the redirect read, besides the path.
_FACT_NAMES = ("HTTP_HOST", "HTTP_X_FORWARDED_HOST", "HTTP_X_FORWARDED_PORT", "SERVER_NAME", "SERVER_PORT")


class Edge:
    """The front's part of settings.MIDDLEWARE above the boundary (the module's docstring)."""

    def __init__(self, paths: list[str]):
        for path in paths:
            if path != REQUEST_IDS and path not in HEADER_HOOKS:
                raise ImproperlyConfigured(
                    f"{path} is above {BOUNDARY} in MIDDLEWARE. The web server's front serves the async API "
                    f"views itself and runs only {', '.join((REQUEST_IDS, *HEADER_HOOKS))} there; put "
                    "other middleware below the boundary (it then applies to every other request).")
        self.request_ids = REQUEST_IDS in paths
        self.paths = [path for path in paths if path in HEADER_HOOKS]
        self.hooks: list[Any] = []
        self.known: dict[tuple, Facts | None] = {}
        self.proxy: tuple[str, str] | None = None
        self.redirects = False
        self.forget()
        setting_changed.connect(self.forget)

    @classmethod
    def from_settings(cls) -> Edge:
        if BOUNDARY not in settings.MIDDLEWARE:
            raise ImproperlyConfigured(f"MIDDLEWARE must include {BOUNDARY}.")
        return cls(settings.MIDDLEWARE[: settings.MIDDLEWARE.index(BOUNDARY)])

    def forget(self, **_: Any) -> None:
        """Forget every answer, and make the hooks anew (a middleware reads its settings when it is made, and
        so does this: not per request)."""
        self.hooks = [import_string(path)(lambda request: None) for path in self.paths]
        self.proxy = settings.SECURE_PROXY_SSL_HEADER
        self.redirects = settings.SECURE_SSL_REDIRECT
        self.known.clear()

    def facts(self, request: FrontRequest) -> Facts | None:
        """The request's facts, or None when Django would refuse its host or redirect it: then Django's
        WSGI application is to serve it."""
        # The path matters only to the redirect (SECURE_REDIRECT_EXEMPT): without one, a host's answer is
        # the same for every model's path.
        key = (request.path if self.redirects else "", request.scheme, *map(request.META.get, self.fact_names()))
        try:
            return self.known[key]
        except KeyError:
            pass
        facts = self.ask_django(request)
        if len(self.known) >= FACTS_MAX:
            self.known.clear()
        self.known[key] = facts
        return facts

    def fact_names(self) -> tuple[str, ...]:
        """The META names the answers read: the host's, and the TLS proxy's header when there is one."""
        return (*_FACT_NAMES, self.proxy[0]) if self.proxy else _FACT_NAMES

    def ask_django(self, request: FrontRequest) -> Facts | None:
        environ: dict[str, Any] = {"REQUEST_METHOD": request.method, "PATH_INFO": request.path, "SCRIPT_NAME": "",
                                   "wsgi.input": io.BytesIO(), "wsgi.url_scheme": request.scheme}
        for name in self.fact_names():
            value = request.META.get(name)
            if value is not None:
                environ[name] = value
        probe = WSGIRequest(environ)
        try:
            probe.get_host()
        except DisallowedHost:
            return None
        response = HttpResponse(content_type="application/json")
        before = set(response.headers)
        for hook in self.hooks:
            if hasattr(hook, "process_request") and hook.process_request(probe) is not None:
                return None  # a redirect (SECURE_SSL_REDIRECT)
        for hook in reversed(self.hooks):
            response = hook.process_response(probe, response)
        return Facts("https" if probe.is_secure() else "http",
                     [(name, value) for name, value in response.items() if name not in before])
