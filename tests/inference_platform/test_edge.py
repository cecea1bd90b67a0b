"""The front's own API path (inference_platform.edge): a request that is not Django's, a response that
passes no middleware chain, and yet the answer Django's full chain gives.

Each request goes through the front's ASGI interface in this process (``Front.__call__``: the same
``FrontRequest``, ``Edge`` and ``Front.api`` as under RSGI), and the same request through Django's test
client with every middleware (the boundary taken out): status, body and every header but the date must
match, over plain HTTP and HTTPS behind a proxy, for answers, refusals, a refused host and a redirect.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.wsgi import WSGIHandler
from django.test import Client
from django.urls import ResolverMatch

from inference.apis.replies import api_view
from inference_platform.edge import Edge, FrontRequest
from inference_platform.front import Front

BOUNDARY = "inference.middleware.APIBoundaryMiddleware"
BODY = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode()
V2_BODY = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                  "data": [5.1, 3.5, 1.4, 0.2]}]}).encode()
CALLS = [
    ("/api/v1/models/iris/predict", BODY),
    ("/api/v1/models/iris/versions/2/predict", BODY),
    ("/v2/models/iris/infer", V2_BODY),
    ("/api/v1/models/nope/predict", BODY),  # 404 from the view
    ("/api/v1/models/iris/predict", b"{not json"),  # 400 from the view
    ("/api/v1/models/iris/predict", b""),  # no body
    ("/healthz", b""),  # the liveness probe, answered by the loop
    ("/v2/models/iris/ready", b""),  # an async view that refuses the method (405, with Allow)
]


def front_call(front: Front, path: str, body: bytes, headers: dict[str, str], *, method: str = "POST",
               scheme: str = "http") -> tuple[int, dict[str, str], bytes]:
    """(status, headers by lowercase name, body) of one request through the front's ASGI interface."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": scheme,
             "path": path, "root_path": "", "query_string": b"",
             "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
             "client": ("10.0.0.7", 5555), "server": ("testserver", 80)}
    sent: list[dict] = []
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        if pending:
            return pending.pop()
        await asyncio.Event().wait()  # the client stays until its answer
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    async def run() -> None:
        await front(scope, receive, send)

    asyncio.run(run())
    start = sent[0]
    return (start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]},
            b"".join(m.get("body", b"") for m in sent[1:]))


def full_chain(path: str, body: bytes, headers: dict[str, str], *, secure: bool = False):
    """The same request through Django's handler with every middleware in settings.MIDDLEWARE."""
    extra = {"HTTP_" + k.upper().replace("-", "_"): v for k, v in headers.items()
             if k.lower() not in ("content-type", "host")}
    if "Content-Type" in headers:  # the test client leaves it out of a request without a body
        extra["CONTENT_TYPE"] = headers["Content-Type"]
    response = Client(HTTP_HOST=headers.get("Host", "testserver")).generic("POST", path, body, secure=secure, **extra)
    return response.status_code, {k.lower(): v for k, v in response.items()}, response.content


def same_answer(front_answer, chain_answer) -> None:
    assert front_answer[0] == chain_answer[0], (front_answer, chain_answer)
    assert front_answer[2] == chain_answer[2] or json.loads(front_answer[2]) == json.loads(chain_answer[2])
    assert front_answer[1] == chain_answer[1], (front_answer[1], chain_answer[1])


@pytest.fixture
def front(settings):
    settings.MIDDLEWARE = list(django_settings.MIDDLEWARE)
    return Front(WSGIHandler(), threads=2)


@pytest.fixture
def without_boundary(settings):
    """What the full chain runs: settings.MIDDLEWARE without the boundary (set after the front is made)."""
    def take_out() -> None:
        settings.MIDDLEWARE = [m for m in django_settings.MIDDLEWARE if m != BOUNDARY]
    return take_out


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.parametrize(("path", "body"), CALLS)
@pytest.mark.parametrize("https", [False, True], ids=["http", "https-behind-proxy"])
def test_the_front_answers_as_the_full_middleware_chain(settings, iris, key, front, without_boundary, path, body,
                                                        https):
    if https:  # a TLS proxy says so: the front must send HSTS as SecurityMiddleware does
        settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
        settings.SECURE_HSTS_SECONDS = 3600
        settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    headers = {"Host": "testserver", "Content-Type": "application/json", "Authorization": f"Api-Key {key}",
               "X-Request-ID": "same-id", **({"X-Forwarded-Proto": "https"} if https else {})}
    got = front_call(front, path, body, headers)
    without_boundary()
    expected = full_chain(path, body, headers)
    same_answer(got, expected)
    assert got[1]["x-request-id"] == "same-id" and got[1]["content-length"] == str(len(got[2]))
    assert got[1]["x-frame-options"] == "DENY" and got[1]["x-content-type-options"] == "nosniff"
    assert ("strict-transport-security" in got[1]) is https


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_host_django_refuses_is_answered_by_django(iris, key, front, without_boundary, caplog):
    headers = {"Host": "evil.example.com", "Content-Type": "application/json", "Authorization": f"Api-Key {key}",
               "X-Request-ID": "evil-1"}
    with caplog.at_level(logging.ERROR, logger="django.security.DisallowedHost"):
        got = front_call(front, "/api/v1/models/iris/predict", BODY, headers)
    assert got[0] == 400 and json.loads(got[2])["error"]["code"] == "invalid_input"
    assert got[1]["x-request-id"] == "evil-1" and got[1]["x-frame-options"] == "DENY"
    assert "evil.example.com" in caplog.text  # Django's own log line for a disallowed host
    without_boundary()
    same_answer(got, full_chain("/api/v1/models/iris/predict", BODY, headers))


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_request_to_redirect_to_https_is_redirected_by_django(settings, iris, key):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 60
    settings.ALLOWED_HOSTS = ["api.example.com"]
    front = Front(WSGIHandler(), threads=2)  # Django's handler reads the middleware's settings as it is made
    headers = {"Host": "api.example.com", "Content-Type": "application/json", "Authorization": f"Api-Key {key}"}
    status, answer, raw = front_call(front, "/api/v1/models/iris/predict", BODY, headers)
    assert status == 301 and answer["location"] == "https://api.example.com/api/v1/models/iris/predict", raw
    status, answer, raw = front_call(front, "/api/v1/models/iris/predict", BODY, headers, scheme="https")
    assert status == 200 and "strict-transport-security" in answer, raw
    # A path SECURE_REDIRECT_EXEMPT names is served over plain HTTP; the others still are redirected.
    settings.SECURE_REDIRECT_EXEMPT = [r"^v2/"]
    front = Front(WSGIHandler(), threads=2)
    status, answer, raw = front_call(front, "/v2/models/iris/infer", V2_BODY, headers)
    assert status == 200 and "strict-transport-security" not in answer, raw
    assert front_call(front, "/api/v1/models/iris/predict", BODY, headers)[0] == 301


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_what_the_edge_remembers_is_forgotten_when_a_setting_changes(settings, iris, key, front):
    headers = {"Host": "api.example.com", "Content-Type": "application/json", "Authorization": f"Api-Key {key}"}
    settings.ALLOWED_HOSTS = ["api.example.com"]
    for _ in range(2):
        assert front_call(front, "/api/v1/models/iris/predict", BODY, headers)[0] == 200
    settings.ALLOWED_HOSTS = ["other.example.com"]
    assert front_call(front, "/api/v1/models/iris/predict", BODY, headers)[0] == 400
    settings.X_FRAME_OPTIONS = "SAMEORIGIN"
    settings.ALLOWED_HOSTS = ["api.example.com"]
    status, answer, _ = front_call(front, "/api/v1/models/iris/predict", BODY, headers)
    assert status == 200 and answer["x-frame-options"] == "SAMEORIGIN"


def test_only_the_known_middleware_may_be_above_the_boundary(settings):
    """Any other middleware above the boundary would have to run per request: start-up refuses it."""
    middleware = list(django_settings.MIDDLEWARE)
    edge = Edge.from_settings()
    assert edge.request_ids and [type(h).__name__ for h in edge.hooks] == ["SecurityMiddleware",
                                                                           "XFrameOptionsMiddleware"]
    settings.MIDDLEWARE = ["django.middleware.gzip.GZipMiddleware", *middleware]
    with pytest.raises(ImproperlyConfigured, match="GZipMiddleware"):
        Edge.from_settings()
    settings.MIDDLEWARE = [m for m in middleware if m != BOUNDARY]
    with pytest.raises(ImproperlyConfigured, match="APIBoundaryMiddleware"):
        Edge.from_settings()
    settings.MIDDLEWARE = [m for m in middleware if m != "inference.middleware.RequestIdMiddleware"]
    assert not Edge.from_settings().request_ids


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_an_exception_a_view_lets_out_is_a_logged_json_500(front, caplog):
    async def broken_view(request, name):
        raise RuntimeError("a bug")

    request = FrontRequest("POST", "/api/v1/models/iris/predict", "http", {"host": "testserver"}, "10.0.0.7",
                           ("testserver", "80"), "", exchange=None)
    match = ResolverMatch(api_view(broken_view), (), {"name": "iris"})
    with caplog.at_level(logging.ERROR, logger="django.request"):
        response = asyncio.run(front.view(request, match))
    assert response.status_code == 500 and json.loads(response.content)["error"]["code"] == "server_error"
    assert "a bug" in caplog.text and "/api/v1/models/iris/predict" in caplog.text


def test_a_front_request_reads_headers_as_djangos_meta_does():
    request = FrontRequest("POST", "/v2/models/m/infer", "http",
                           {"host": "h", "content-length": "12", "content-type": "application/json; charset=utf-8",
                            "x-forwarded-for": "6.6.6.6,10.0.0.1", "x_api_key": "smuggled", "x-api-key": "k"},
                           "10.0.0.7", ("h", "80"), "a=1", exchange=None)
    meta = request.META
    assert meta["CONTENT_LENGTH"] == "12" and meta.get("HTTP_X_API_KEY") == "k"
    assert meta.get("HTTP_X_FORWARDED_FOR") == "6.6.6.6,10.0.0.1" and meta["REMOTE_ADDR"] == "10.0.0.7"
    assert meta.get("HTTP_NOPE") is None and "HTTP_X_API_KEY" in meta
    assert sorted(k for k in meta if k.startswith("HTTP_")) == ["HTTP_HOST", "HTTP_X_API_KEY", "HTTP_X_FORWARDED_FOR"]
    assert request.headers.get("Content-Type") == "application/json; charset=utf-8"
    assert request.content_type == "application/json" and request.get_full_path() == "/v2/models/m/infer?a=1"
    request.body = b"0123456789"
    assert request.read(4) == b"0123" and request.read() == b"456789" and request.read() == b""
