"""The async API views (predict, infer) take the middleware above the boundary only
(inference.middleware.APIBoundaryMiddleware), under WSGI as on the front.

What a client sees must not change: the same status, body and headers as through the full
middleware chain, the Host check, request ids, and JSON errors. Only the browser
middleware (sessions, CSRF, messages, static files) is left out.
"""

from __future__ import annotations

import json

import pytest
from django.conf import settings as django_settings
from django.middleware.csrf import CsrfViewMiddleware
from django.test import Client

ROUTE_MW = "inference.middleware.APIBoundaryMiddleware"
BODY = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]})
V2_BODY = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]})

CALLS = [
    ("/api/v1/models/iris/predict", BODY),
    ("/api/v1/models/iris/versions/2/predict", BODY),
    ("/v2/models/iris/infer", V2_BODY),
    ("/v2/models/iris/versions/1/infer", V2_BODY),
    ("/api/v1/models/nope/predict", BODY),  # 404 from the view
    ("/api/v1/models/iris/predict", "{not json"),  # 400 from the view
]


def _post(client: Client, path: str, body: str, key: str, **extra):
    return client.post(path, body, content_type="application/json", HTTP_AUTHORIZATION=f"Api-Key {key}", **extra)


def _headers(response) -> dict[str, str]:
    return {k: v for k, v in response.items() if k != "X-Request-ID"}


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "body"), CALLS)
def test_the_short_path_answers_exactly_as_the_full_chain(settings, iris, key, path, body):
    assert ROUTE_MW in settings.MIDDLEWARE
    short = _post(Client(), path, body, key, HTTP_X_REQUEST_ID="same-id")
    settings.MIDDLEWARE = [m for m in django_settings.MIDDLEWARE if m != ROUTE_MW]
    full = _post(Client(), path, body, key, HTTP_X_REQUEST_ID="same-id")
    assert short.status_code == full.status_code
    assert json.loads(short.content) == json.loads(full.content)
    assert _headers(short) == _headers(full)
    assert short["X-Request-ID"] == full["X-Request-ID"] == "same-id"
    assert short["Content-Length"] == str(len(short.content))
    assert short["X-Frame-Options"] == "DENY" and short["X-Content-Type-Options"] == "nosniff"


@pytest.mark.django_db
def test_predict_skips_the_browser_middleware_and_other_routes_do_not(iris, key, monkeypatch):
    seen: list[str] = []
    original = CsrfViewMiddleware.process_view

    def spy(self, request, *args, **kwargs):
        seen.append(request.path)
        return original(self, request, *args, **kwargs)

    monkeypatch.setattr(CsrfViewMiddleware, "process_view", spy)
    client = Client()
    assert _post(client, "/api/v1/models/iris/predict", BODY, key).status_code == 200
    assert _post(client, "/v2/models/iris/infer", V2_BODY, key).status_code == 200
    assert seen == []
    assert client.get("/api/v1/models/iris", HTTP_AUTHORIZATION=f"Api-Key {key}").status_code == 200
    assert seen == ["/api/v1/models/iris"]


@pytest.mark.django_db
def test_the_host_check_still_applies_on_the_short_path(iris, key):
    response = _post(Client(), "/api/v1/models/iris/predict", BODY, key, HTTP_HOST="evil.example.com")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/json"
    assert json.loads(response.content)["error"]["code"]


@pytest.mark.django_db
def test_a_host_that_passed_is_remembered_until_the_settings_change(iris, key, settings):
    """The Host check is remembered per host header (inference.middleware.check_host): a host refused is
    refused every time, and one allowed before is refused once ALLOWED_HOSTS no longer names it."""
    settings.ALLOWED_HOSTS = ["api.example.com"]
    client = Client()
    for _ in range(2):
        assert _post(client, "/api/v1/models/iris/predict", BODY, key, HTTP_HOST="api.example.com").status_code == 200
        assert _post(client, "/api/v1/models/iris/predict", BODY, key, HTTP_HOST="evil.example.com").status_code == 400
    settings.ALLOWED_HOSTS = ["other.example.com"]
    assert _post(client, "/api/v1/models/iris/predict", BODY, key, HTTP_HOST="api.example.com").status_code == 400


def test_routes_are_remembered_per_path_and_only_async_views_are_routed():
    from inference.middleware import api_route

    first = api_route("/api/v1/models/iris/predict")
    assert first is not None and first.kwargs == {"name": "iris"}
    assert api_route("/api/v1/models/iris/predict") is first  # remembered: no second resolve
    assert api_route("/api/v1/models/other/predict").kwargs == {"name": "other"}
    assert api_route("/api/v1/models/iris") is None  # a DRF view: Django's handler serves it
    assert api_route("/healthz") is not None  # the liveness probe: answered by the loop itself
    assert api_route("/v2/models/iris/ready") is not None and api_route("/readyz") is None
    assert api_route("/api/v1/nothing/here") is None
    assert api_route("/admin/") is None
