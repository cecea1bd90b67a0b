"""/readyz: green when database, broker, cache and production models are fine; 503 (JSON,
saying what is red) when one is not."""

from __future__ import annotations

import pytest
from django.db import OperationalError, connection
from django_q.conf import Conf

from registry.models import ModelVersion
from tests.inference.support import ROWS

TOKEN = "ready-token"


@pytest.fixture
def ready_client(client, settings):
    settings.INFERENCE_METRICS_TOKEN = TOKEN

    def get(detail: bool = True):
        headers = {"Authorization": f"Bearer {TOKEN}"} if detail else {}
        response = client.get("/readyz", headers=headers)
        assert response["Content-Type"] == "application/json"
        assert response["Cache-Control"] == "no-store"
        return response

    return get


def test_ready_when_everything_is_up(ready_client, iris):
    response = ready_client()
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready" and body["failing"] == []
    checks = body["checks"]
    assert set(checks) == {"database", "broker", "cache", "models"}
    assert all(c["ok"] for c in checks.values())
    assert checks["models"]["models"]["iris"] == {"version": 1, "ok": True, "loaded": False}
    assert "error" not in body


def test_anonymous_probes_do_not_learn_model_names(ready_client, iris):
    body = ready_client(detail=False).json()
    assert body["checks"]["models"]["ok"] is True
    assert "models" not in body["checks"]["models"] and "iris" not in str(body)


DB_ERROR = ('connection to server at "db-7.internal.example" (10.0.0.1), port 5432 failed: FATAL: password '
            'authentication failed for user "svc_inference" (postgres://svc_inference:hunter2@db-7.internal.example/x)')


def database_down(patch):
    def refuse():
        raise OperationalError(DB_ERROR)

    patch.setattr(connection, "ensure_connection", refuse)


def test_database_down_is_a_503_saying_so_with_codes_only_to_anonymous_probes(ready_client, iris, monkeypatch,
                                                                               caplog):
    with monkeypatch.context() as patch:  # undone before the test database's own teardown
        database_down(patch)
        with caplog.at_level("WARNING", logger="inference.readiness"):
            response = ready_client(detail=False)
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    body = response.json()
    assert body["status"] == "not_ready"
    assert "database" in body["failing"] and "models" in body["failing"]
    for leak in ("db-7", "10.0.0.1", "svc_inference", "hunter2", "5432", "OperationalError", "FATAL"):
        assert leak not in response.content.decode()
    assert body["checks"]["database"]["code"] == "database_unreachable"
    assert body["checks"]["database"]["error"] == "the database is unreachable"
    assert body["checks"]["models"]["code"] == "database_unreachable"
    assert body["error"]["code"] == "not_ready" and "database" in body["error"]["message"]
    assert body["error"]["details"]["failing"] == body["failing"]
    assert body["error"]["details"]["codes"]["database"] == "database_unreachable"
    # the log says what happened, without the password
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "database check failed (database_unreachable)" in logged and "svc_inference" in logged
    assert "hunter2" not in logged and "postgres://***@db-7.internal.example" in logged


def test_database_down_details_for_the_metrics_token(ready_client, iris, monkeypatch):
    with monkeypatch.context() as patch:
        database_down(patch)
        body = ready_client(detail=True).json()
    database = body["checks"]["database"]
    assert database["code"] == "database_unreachable"
    assert "OperationalError" in database["error"] and "db-7.internal.example" in database["error"]
    assert "hunter2" not in database["error"]  # credentials are scrubbed for everyone
    assert body["checks"]["models"]["error"] == "not checked: the database is unreachable"


def test_a_staff_session_sees_the_details(admin_client, iris, monkeypatch):
    from django.core.cache import cache

    def down(*args, **kwargs):
        raise ConnectionError("Error 111 connecting to redis-3.internal.example:6379. Connection refused.")

    monkeypatch.setattr(cache, "set", down)
    body = admin_client.get("/readyz").json()
    assert body["failing"] == ["cache"]
    assert "redis-3.internal.example" in body["checks"]["cache"]["error"]
    assert body["checks"]["cache"]["code"] == "cache_unreachable"


def test_a_bad_cache_gives_only_its_code_to_anonymous_probes(client, iris, monkeypatch):
    from django.core.cache import cache

    def down(*args, **kwargs):
        raise ConnectionError("Error 111 connecting to redis-3.internal.example:6379. Connection refused.")

    monkeypatch.setattr(cache, "set", down)
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["cache"] == {"ok": False, "code": "cache_unreachable",
                                       "error": "the cache is unreachable or did not return a value just stored",
                                       "ms": body["checks"]["cache"]["ms"]}
    assert "redis-3" not in response.content.decode() and "ConnectionError" not in response.content.decode()


def test_broker_down_is_a_503(ready_client, iris, monkeypatch):
    monkeypatch.setattr(Conf, "ORM", None)
    monkeypatch.setattr(Conf, "REDIS", "redis://127.0.0.1:1/0")  # nothing listens there
    response = ready_client()
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["broker"]
    assert body["checks"]["broker"]["ok"] is False and "Connect" in body["checks"]["broker"]["error"]
    assert body["checks"]["broker"]["code"] == "broker_unreachable"
    anonymous = ready_client(detail=False).json()["checks"]["broker"]
    assert anonymous["code"] == "broker_unreachable" and "6379" not in str(anonymous) and ":1/" not in str(anonymous)
    assert body["checks"]["database"]["ok"] and body["checks"]["models"]["ok"]


def test_cache_down_is_a_503(ready_client, iris, monkeypatch):
    from django.core.cache import cache

    def down(*args, **kwargs):
        raise ConnectionError("cache unreachable")

    monkeypatch.setattr(cache, "set", down)
    response = ready_client()
    assert response.status_code == 503
    assert response.json()["failing"] == ["cache"]


def test_a_production_artifact_missing_or_altered_is_red(ready_client, iris):
    version = ModelVersion.objects.get(model__name="iris", version=1)
    path = version.artifact.path
    original = open(path, "rb").read()
    open(path, "wb").write(original + b"tampered")
    response = ready_client()
    assert response.status_code == 503
    iris_check = response.json()["checks"]["models"]["models"]["iris"]
    assert iris_check["ok"] is False and "sha256" in iris_check["error"]

    version.artifact.storage.delete(version.artifact.name)
    iris_check = ready_client().json()["checks"]["models"]["models"]["iris"]
    assert iris_check["ok"] is False and "missing" in iris_check["error"]
    anonymous = ready_client(detail=False).json()
    assert anonymous["checks"]["models"]["failing_models"] == 1 and "iris" not in str(anonymous)

    open(path, "wb").write(original)
    assert ready_client().status_code == 200


def test_a_production_version_not_ready_is_red_and_a_loaded_one_is_green(ready_client, iris, api, key):
    assert api.post("/api/v1/models/iris/predict", {"instances": ROWS[:1]}, key).status_code == 200
    assert ready_client().json()["checks"]["models"]["models"]["iris"]["loaded"] is True
    ModelVersion.objects.filter(model__name="iris", version=1).update(status="failed", status_error="bad weights")
    body = ready_client().json()
    assert body["failing"] == ["models"]
    assert "bad weights" in body["checks"]["models"]["models"]["iris"]["error"]
