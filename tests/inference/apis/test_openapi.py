"""OpenAPI 3 schema and the interactive docs, served offline. Both are public: a browser opening
/api/docs/ sends no API key (the page's "Authorize" button is where a key goes)."""

from __future__ import annotations

import re

import pytest
from django.contrib.staticfiles import finders

pytestmark = pytest.mark.django_db

PREDICT_ERRORS = {"400", "401", "404", "413", "415", "429", "503"}


@pytest.fixture
def schema(client) -> dict:
    r = client.get("/api/schema/?format=json")
    assert r.status_code == 200, r.content[:300]
    assert "json" in r["Content-Type"]
    return r.json()


def test_the_schema_lists_the_v1_paths(schema):
    assert schema["openapi"].startswith("3.")
    paths = set(schema["paths"])
    for expected in (
        "/api/v1/models",
        "/api/v1/models/{name}",
        "/api/v1/models/{name}/predict",
        "/api/v1/models/{name}/versions/{ref}/predict",
    ):
        assert any(p.rstrip("/") == expected for p in paths), sorted(paths)


def test_the_schema_declares_the_api_key_scheme(schema):
    scheme = schema["components"]["securitySchemes"]["ApiKeyAuth"]
    assert scheme["type"] == "apiKey" and scheme["in"] == "header"
    predict = next(v for p, v in schema["paths"].items() if p.rstrip("/") == "/api/v1/models/{name}/predict")
    assert {"ApiKeyAuth": []} in predict["post"]["security"]


def test_the_predict_operations_document_their_error_statuses(schema):
    for path in ("/api/v1/models/{name}/predict", "/api/v1/models/{name}/versions/{ref}/predict"):
        operation = next(v for p, v in schema["paths"].items() if p.rstrip("/") == path)["post"]
        responses = operation["responses"]
        assert "200" in responses
        assert PREDICT_ERRORS <= set(responses), sorted(responses)
        error_ref = responses["404"]["content"]["application/json"]["schema"]["$ref"]
        error_schema = schema["components"]["schemas"][error_ref.rsplit("/", 1)[-1]]
        assert "error" in error_schema["properties"]
        assert "requestBody" in operation


def test_the_schema_is_also_served_as_yaml(client):
    r = client.get("/api/schema/")
    assert r.status_code == 200
    assert b"openapi: 3" in r.content and b"/api/v1/models" in r.content


def test_an_error_on_the_schema_endpoint_is_not_a_500(client):
    client.raise_request_exception = False
    r = client.post("/api/schema/")
    assert r.status_code == 405, r.content[:300]
    r = client.post("/api/schema/?format=json")
    assert r.status_code == 405, r.content[:300]


@pytest.fixture
def plain_static(settings):
    """Static files straight from the installed apps, as before any collectstatic (no manifest)."""
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }


def test_the_docs_page_is_served_without_a_cdn(client, plain_static):
    r = client.get("/api/docs/")
    assert r.status_code == 200
    assert r["Content-Type"].startswith("text/html")
    page = r.content.decode()
    for host in ("cdn.jsdelivr", "unpkg", "cdnjs", "googleapis"):
        assert host not in page
    # every script, stylesheet and icon comes from this server's static files
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets), assets
    for asset in assets:
        assert asset.startswith("/static/"), asset
        assert finders.find(asset.split("/static/", 1)[1]), f"{asset} is not shipped with the installed apps"
    # the schema the page loads answers a browser, which sends no API key
    schema_urls = re.findall(r'"(/api/schema/[^"]*)"', page)
    assert schema_urls
    assert client.get(schema_urls[0]).status_code == 200
