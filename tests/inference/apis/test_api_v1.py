"""The native REST API /api/v1/ through Django's test client: listing, predict, auth, rate limits,
limits and the error shape (DESIGN.md, "External contract")."""

from __future__ import annotations

import io
import logging
import re
import time
from datetime import timedelta

import numpy as np
import pytest
from django.core.cache import caches
from django.utils import timezone

from inference.apis.parsing import read_body
from inference.errors import PayloadTooLarge
from inference.keys import APIKey
from inference.pool import get_pool
from inference.selectors import memo
from registry.models import ModelVersion
from tests.conftest import small_mlp
from tests.fakes import echo_rows
from tests.inference.support import ROWS, config, error_of, forward, make_key, ready

pytestmark = pytest.mark.django_db

PREDICT = "/api/v1/models/iris/predict"


def prefix_of(plain: str) -> str:
    return plain.partition(".")[0]


def key_row(plain: str) -> APIKey:
    return APIKey.objects.get(prefix=prefix_of(plain))


# --- listing -----------------------------------------------------------------------------------


def test_list_models_shows_the_models_a_key_may_see_with_versions_and_aliases(api, iris):
    ready(small_mlp(5), model_name="other")
    everything = make_key("everything")
    only_iris = make_key("only-iris", model_names=["iris"])

    r = api.get("/api/v1/models", everything)
    assert r.status_code == 200 and r["Content-Type"].startswith("application/json")
    assert [m["name"] for m in r.json()["models"]] == ["iris", "other"]

    r = api.get("/api/v1/models", only_iris)
    assert r.status_code == 200
    (model,) = r.json()["models"]
    assert model["name"] == "iris"
    assert model["aliases"] == {"production": 1, "staging": 2}
    assert [v["version"] for v in model["versions"]] == [2, 1]
    v2, v1 = model["versions"]
    assert v1["aliases"] == ["production"] and v2["aliases"] == ["staging"]
    assert v1["ready"] is True and v1["status"] == "ready" and v1["error"] is None
    assert v1["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [4]}]
    assert v1["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [3]}]
    assert v1["hardware"] == "cpu" and v1["format"] == "safetensors"
    assert set(v1) >= {
        "version",
        "status",
        "ready",
        "error",
        "format",
        "inputs",
        "outputs",
        "parameters",
        "hardware",
        "aliases",
        "created_at",
    }


def test_model_detail(api, iris, key):
    ModelVersion.objects.filter(model__name="iris", version=2).update(
        status=ModelVersion.Status.FAILED, status_error="boom"
    )
    r = api.get("/api/v1/models/iris", key)
    assert r.status_code == 200
    body = r.json()
    assert body["name"] == "iris" and body["aliases"] == {"production": 1, "staging": 2}
    by_number = {v["version"]: v for v in body["versions"]}
    assert by_number[1]["ready"] is True
    assert (by_number[2]["ready"], by_number[2]["status"], by_number[2]["error"]) == (False, "failed", "boom")
    r = api.get("/api/v1/models/nope", key)
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"


# --- predict -----------------------------------------------------------------------------------


def test_predict_with_the_production_version(api, iris, key):
    r = api.post(PREDICT, {"instances": ROWS}, key)
    assert r.status_code == 200, r.content
    assert r["Content-Type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"id", "model", "version", "predictions"}
    assert (body["model"], body["version"]) == ("iris", 1)
    np.testing.assert_allclose(body["predictions"], forward(iris[1], ROWS), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ref, number", [("1", 1), ("2", 2), ("staging", 2), ("production", 1)])
def test_predict_with_a_version_number_or_an_alias(api, iris, key, ref, number):
    r = api.post(f"/api/v1/models/iris/versions/{ref}/predict", {"instances": ROWS}, key)
    assert r.status_code == 200, r.content
    body = r.json()
    assert set(body) == {"id", "model", "version", "predictions"}
    assert body["version"] == number
    np.testing.assert_allclose(body["predictions"], forward(iris[number], ROWS), rtol=1e-5, atol=1e-6)


def test_without_a_production_alias_the_newest_ready_version_serves(api, key):
    m1, m2 = small_mlp(0), small_mlp(1)
    ready(m1, model_name="plain")
    ready(m2, model_name="plain")
    ready(small_mlp(2), model_name="plain")
    ModelVersion.objects.filter(model__name="plain", version=3).update(status=ModelVersion.Status.FAILED)
    r = api.post("/api/v1/models/plain/predict", {"instances": ROWS}, key)
    assert r.status_code == 200
    assert r.json()["version"] == 2
    np.testing.assert_allclose(r.json()["predictions"], forward(m2, ROWS), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ref", ["7", "canary"])
def test_an_unknown_version_or_alias_is_404(api, iris, key, ref):
    r = api.post(f"/api/v1/models/iris/versions/{ref}/predict", {"instances": ROWS}, key)
    assert r.status_code == 404
    assert error_of(r)["code"] == "not_found"
    assert ref in error_of(r)["message"]


def test_versions_that_cannot_serve_are_503_with_retry_after(api, iris, key):
    ModelVersion.objects.filter(model__name="iris", version=2).update(status=ModelVersion.Status.REGISTERED)
    r = api.post("/api/v1/models/iris/versions/2/predict", {"instances": ROWS}, key)
    assert r.status_code == 503 and int(r["Retry-After"]) >= 1
    assert error_of(r)["code"] == "model_not_ready" and "validated" in error_of(r)["message"]
    ModelVersion.objects.filter(model__name="iris", version=2).update(
        status=ModelVersion.Status.FAILED, status_error="bad weights"
    )
    memo.forget()
    r = api.post("/api/v1/models/iris/versions/2/predict", {"instances": ROWS}, key)
    assert r.status_code == 503 and "bad weights" in error_of(r)["message"]
    # a model with no ready version and no production alias
    version = ready(small_mlp(0), model_name="fresh")
    ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.REGISTERED)
    r = api.post("/api/v1/models/fresh/predict", {"instances": ROWS}, key)
    assert r.status_code == 503 and int(r["Retry-After"]) >= 1
    assert error_of(r)["code"] == "model_not_ready"


def test_request_id_is_echoed_or_generated(api, iris, key):
    r = api.post(PREDICT, {"instances": ROWS}, key, headers={"X-Request-ID": "client-id-123"})
    assert r.status_code == 200
    assert r["X-Request-ID"] == "client-id-123" == r.json()["id"]
    r = api.post(PREDICT, {"instances": ROWS}, key)
    generated = r["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert r.json()["id"] == generated
    assert api.post(PREDICT, {"instances": ROWS}, key)["X-Request-ID"] != generated
    # an unsafe id is replaced, not echoed
    r = api.post(PREDICT, {"instances": ROWS}, key, headers={"X-Request-ID": "<script>"})
    assert re.fullmatch(r"[0-9a-f]{32}", r["X-Request-ID"])
    # errors carry the id too
    r = api.post(PREDICT, {"instances": [[1]]}, key, headers={"X-Request-ID": "err-1"})
    assert r.status_code == 400 and r["X-Request-ID"] == "err-1"


def test_input_errors_are_400_with_the_path(api, iris, key):
    r = api.post(PREDICT, {"instances": [[1, 2, 3, 4], [1, 2, "x", 4]]}, key)
    assert r.status_code == 400
    err = error_of(r)
    assert (err["code"], err["details"]["path"]) == ("invalid_datatype", "instances[1][2]")
    r = api.post(PREDICT, {"instances": [[1, 2, 3, 4], [1, True, 3, 4]]}, key)
    assert r.status_code == 400
    assert error_of(r)["details"]["path"] == "instances[1][1]"
    r = api.post(PREDICT, {"instances": [[1, 2, 3, 4], [1, 2, 3]]}, key)
    assert (r.status_code, error_of(r)["details"]["path"]) == (400, "instances[1]")
    r = api.post(PREDICT, {"instances": [[1, 2, 3, 4]], "parameters": {"top_k": 2}}, key)
    assert (r.status_code, error_of(r)["details"]["path"]) == (400, "parameters.top_k")
    # 1e39 overflows FP32
    r = api.post(PREDICT, raw=b'{"instances": [[1, 2, 1e39, 4]]}', key=key)
    assert (r.status_code, error_of(r)["code"]) == (400, "non_finite")


def test_too_many_instances(api, iris, key, settings):
    settings.INFERENCE_MAX_INSTANCES = 4
    assert api.post(PREDICT, {"instances": ROWS + ROWS[:1]}, key).status_code == 200
    r = api.post(PREDICT, {"instances": ROWS + ROWS}, key)
    assert r.status_code == 400 and error_of(r)["code"] == "too_many_instances"


def test_a_full_queue_is_503_overloaded_with_retry_after(api, key, fake_runtime):
    gated = fake_runtime("gated")
    version = ready(small_mlp(0), config(batching={"max_batch_size": 8, "max_batch_delay_ms": 2, "max_queue_size": 1}),
                    model_name="queued", aliases=["production"])
    loaded = get_pool().loaded(version)
    running = loaded.batcher.submit({"input": np.zeros((1, 4), np.float32)})
    assert gated.entered.wait(10)  # the batcher's thread holds this one
    queued = loaded.batcher.submit({"input": np.ones((1, 4), np.float32)})  # the queue (of 1) is full
    r = api.post("/api/v1/models/queued/predict", {"instances": ROWS}, key)
    assert r.status_code == 503
    assert error_of(r)["code"] == "overloaded"
    assert int(r["Retry-After"]) >= 1
    gated.gate.set()
    running.result(10), queued.result(10)
    r = api.post("/api/v1/models/queued/predict", {"instances": ROWS}, key)  # drained: served again
    assert r.status_code == 200
    np.testing.assert_allclose(r.json()["predictions"], echo_rows(ROWS, 3), rtol=1e-6)


def test_the_models_error_fails_its_request_as_a_json_model_error(api, iris, key, fake_runtime):
    failing = fake_runtime("failing", marker=666)
    r = api.post(PREDICT, {"instances": [[666, 1, 2, 3]]}, key)
    assert r.status_code == 500
    err = error_of(r)
    assert err["code"] == "model_error" and failing.message in err["message"]
    r = api.post(PREDICT, {"instances": ROWS}, key)  # the batcher kept serving
    assert r.status_code == 200
    np.testing.assert_allclose(r.json()["predictions"], echo_rows(ROWS, 3), rtol=1e-6)


def test_a_request_that_waits_too_long_is_503_timeout(api, iris, key, settings, fake_runtime):
    settings.INFERENCE_PREDICT_TIMEOUT = 0.1
    fake_runtime("slow", delay=0.5)
    r = api.post(PREDICT, {"instances": ROWS}, key)
    assert r.status_code == 503
    assert error_of(r)["code"] == "timeout" and int(r["Retry-After"]) >= 1


# --- authentication and scope ----------------------------------------------------------------------


def test_no_key_is_401_with_www_authenticate(api, iris):
    r = api.post(PREDICT, {"instances": ROWS})
    assert r.status_code == 401
    assert r["WWW-Authenticate"] == "Api-Key"
    assert error_of(r)["code"] == "not_authenticated"
    r = api.get("/api/v1/models")
    assert r.status_code == 401 and r["WWW-Authenticate"] == "Api-Key"


@pytest.mark.parametrize(
    "header",
    ["Api-Key garbage", "Api-Key abc.def", "Bearer something", "Api-Key " + "x" * 300],
    ids=["no-dot", "unknown-prefix", "other-scheme", "too-long"],
)
def test_a_bad_key_is_401(api, iris, key, header):
    r = api.post(PREDICT, {"instances": ROWS}, headers={"Authorization": header})
    assert r.status_code == 401
    assert r["WWW-Authenticate"] == "Api-Key"
    assert error_of(r)["code"] == "not_authenticated"


def test_a_known_prefix_with_the_wrong_secret_is_401(api, iris, key):
    forged = prefix_of(key) + ".not-the-secret"
    r = api.post(PREDICT, {"instances": ROWS}, headers={"Authorization": f"Api-Key {forged}"})
    assert r.status_code == 401
    assert error_of(r)["code"] == "not_authenticated"


def test_the_x_api_key_header_works(api, iris, key):
    r = api.post(PREDICT, {"instances": ROWS}, headers={"X-API-Key": key})
    assert r.status_code == 200 and r.json()["version"] == 1
    r = api.post(PREDICT, {"instances": ROWS}, headers={"X-API-Key": "garbage"})
    assert r.status_code == 401


def test_a_revoked_key_is_refused_at_once_although_its_info_is_cached(api, iris, key):
    assert api.post(PREDICT, {"instances": ROWS}, key).status_code == 200  # key info now cached
    row = key_row(key)
    row.revoked = True
    row.save()
    r = api.post(PREDICT, {"instances": ROWS}, key)
    assert r.status_code == 401
    assert "revoked" in error_of(r)["message"]


def test_an_expired_key_is_refused(api, iris, key):
    assert api.post(PREDICT, {"instances": ROWS}, key).status_code == 200
    row = key_row(key)
    row.expiry_date = timezone.now() - timedelta(minutes=1)
    row.save()
    r = api.post(PREDICT, {"instances": ROWS}, key)
    assert r.status_code == 401
    assert "expired" in error_of(r)["message"]
    assert r["WWW-Authenticate"] == "Api-Key"
    # an expiry written straight to the row (no save(): nothing cached yet for this key)
    other = make_key("other")
    APIKey.objects.filter(prefix=prefix_of(other)).update(expiry_date=timezone.now() - timedelta(seconds=1))
    r = api.post(PREDICT, {"instances": ROWS}, other)
    assert r.status_code == 401 and "expired" in error_of(r)["message"]


def test_a_key_expires_on_time_even_while_its_info_is_cached(api, iris):
    expires = timezone.now() + timedelta(seconds=2)
    soon = make_key("short-lived", expires=expires)
    assert api.post(PREDICT, {"instances": ROWS}, soon).status_code == 200  # its info is now cached
    time.sleep(max(0.0, (expires - timezone.now()).total_seconds()) + 0.05)
    r = api.post(PREDICT, {"instances": ROWS}, soon)
    assert r.status_code == 401 and "expired" in error_of(r)["message"]


def revoke_behind_the_back(prefix: str) -> None:
    """Revoke a key in the database only (APIKey's save(), delete() and update() drop its cached info)."""
    from django.db import connection

    table = connection.ops.quote_name("inference_apikey")  # APIKey's table
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {table} SET revoked = %s WHERE prefix = %s", [True, prefix])  # noqa: S608


def test_a_key_verified_lately_is_trusted_for_the_memo_seconds_only(api, iris, settings):
    from inference.keys import key_cache_name

    settings.INFERENCE_KEY_MEMO_SECONDS = 0.5
    plain = make_key("memo")
    assert api.post(PREDICT, {"instances": ROWS}, plain).status_code == 200
    # behind the process's back (raw SQL, as another process's change: no one is told), the key is revoked
    revoke_behind_the_back(prefix_of(plain))
    caches["default"].delete(key_cache_name(prefix_of(plain)))
    assert api.post(PREDICT, {"instances": ROWS}, plain).status_code == 200  # verified 0.5 s ago
    wrong = prefix_of(plain) + ".not-the-secret"
    assert api.post(PREDICT, {"instances": ROWS}, wrong).status_code == 401  # the memo holds the key's digest
    time.sleep(0.6)
    r = api.post(PREDICT, {"instances": ROWS}, plain)
    assert r.status_code == 401 and "revoked" in error_of(r)["message"]


def test_a_key_revoked_through_the_platform_is_refused_at_once(api, iris, settings):
    settings.INFERENCE_KEY_MEMO_SECONDS = 60
    plain = make_key("revoke-now")
    assert api.post(PREDICT, {"instances": ROWS}, plain).status_code == 200
    row = key_row(plain)
    row.revoked = True
    row.save()  # as the admin and revoke_api_key do
    r = api.post(PREDICT, {"instances": ROWS}, plain)
    assert r.status_code == 401 and "revoked" in error_of(r)["message"]


def test_no_memo_reads_the_shared_cache_on_every_request(api, iris, settings):
    from inference.keys import key_cache_name

    settings.INFERENCE_KEY_MEMO_SECONDS = 0
    plain = make_key("no-memo")
    assert api.post(PREDICT, {"instances": ROWS}, plain).status_code == 200
    revoke_behind_the_back(prefix_of(plain))
    caches["default"].delete(key_cache_name(prefix_of(plain)))
    assert api.post(PREDICT, {"instances": ROWS}, plain).status_code == 401


def test_a_key_limited_to_other_models_gets_the_same_404_as_for_an_unknown_model(api, iris):
    ready(small_mlp(5), model_name="other")
    limited = make_key("other-only", model_names=["other"])
    assert api.post("/api/v1/models/other/predict", {"instances": ROWS}, limited).status_code == 200
    for path in (
        "/api/v1/models/{}/predict",
        "/api/v1/models/{}/versions/1/predict",
        "/api/v1/models/{}/versions/production/predict",
    ):
        hidden = api.post(path.format("iris"), {"instances": ROWS}, limited)
        unknown = api.post(path.format("unicorn"), {"instances": ROWS}, limited)
        assert hidden.status_code == unknown.status_code == 404
        assert error_of(hidden)["code"] == error_of(unknown)["code"] == "not_found"
        assert hidden.json() == {
            "error": {
                **unknown.json()["error"],
                "message": unknown.json()["error"]["message"].replace("unicorn", "iris"),
            }
        }
        assert hidden.content.replace(b"iris", b"unicorn") == unknown.content
    hidden, unknown = api.get("/api/v1/models/iris", limited), api.get("/api/v1/models/unicorn", limited)
    assert hidden.status_code == unknown.status_code == 404
    assert hidden.content.replace(b"iris", b"unicorn") == unknown.content
    # and the hidden model is not listed
    assert [m["name"] for m in api.get("/api/v1/models", limited).json()["models"]] == ["other"]


def test_a_manage_scope_key_cannot_predict(api, iris):
    manager = make_key("manager", scope=APIKey.Scope.MANAGE)
    r = api.post(PREDICT, {"instances": ROWS}, manager)
    assert r.status_code == 403
    err = error_of(r)
    assert err["code"] == "permission_denied" and "scope" in err["message"]


# --- rate limits -----------------------------------------------------------------------------------


@pytest.fixture
def frozen_ratelimit_clock(monkeypatch):
    """Stop django-ratelimit's clock so that no window boundary falls inside a test."""
    import types

    import django_ratelimit.core

    now = time.time()
    monkeypatch.setattr(django_ratelimit.core, "time", types.SimpleNamespace(time=lambda: now))


def test_a_key_over_its_rate_gets_429_with_retry_after(api, iris, frozen_ratelimit_clock):
    limited = make_key("three-a-minute", rate="3/m")
    for _ in range(3):
        assert api.post(PREDICT, {"instances": ROWS}, limited).status_code == 200
    r = api.post(PREDICT, {"instances": ROWS}, limited)
    assert r.status_code == 429
    assert error_of(r)["code"] == "rate_limited"
    retry_after = r["Retry-After"]
    assert retry_after.isdigit() and 1 <= int(retry_after) <= 60
    assert error_of(r)["details"] == {"retry_after": int(retry_after)}
    # the count is per key: another key is not affected, and listing counts too
    other = make_key("other", rate="3/m")
    assert api.post(PREDICT, {"instances": ROWS}, other).status_code == 200
    assert api.get("/api/v1/models", limited).status_code == 429


def test_an_unreachable_cache_fails_open_and_is_logged(api, iris, key, monkeypatch, caplog):
    default = caches["default"]

    def unreachable(*args, **kwargs):
        raise ConnectionError("cache unreachable")

    for method in ("add", "incr", "get", "set", "get_many", "set_many"):
        monkeypatch.setattr(default, method, unreachable)
    with caplog.at_level(logging.WARNING, logger="inference.auth"):
        r = api.post(PREDICT, {"instances": ROWS}, key)
        listing = api.get("/api/v1/models", key)
    assert r.status_code == 200, r.content
    np.testing.assert_allclose(r.json()["predictions"], forward(iris[1], ROWS), rtol=1e-5, atol=1e-6)
    assert listing.status_code == 200
    assert any("rate limit not enforced" in rec.getMessage() for rec in caplog.records if rec.name == "inference.auth")


# --- limits, content types and the error shape -----------------------------------------------------


def test_a_body_over_the_limit_is_a_json_413(api, iris, key, settings):
    settings.INFERENCE_MAX_BODY_BYTES = 2_000
    body = {"instances": ROWS * 60}
    r = api.post(PREDICT, body, key)
    assert r.status_code == 413
    err = error_of(r)
    assert err["code"] == "payload_too_large" and err["details"]["limit"] == 2_000
    assert api.post(PREDICT, {"instances": ROWS}, key).status_code == 200


def test_a_body_over_django_s_own_upload_limit_is_a_json_413(api, iris, key, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1_000
    settings.INFERENCE_MAX_BODY_BYTES = 1_000
    r = api.post(PREDICT, {"instances": ROWS * 40}, key)
    assert r.status_code == 413
    assert error_of(r)["code"] == "payload_too_large"


class _Stream:
    """A request without Content-Length (chunked): only reading tells the size."""

    def __init__(self, data: bytes):
        self.META: dict[str, str] = {}
        self._io = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._io.read(n)


def test_a_body_without_content_length_is_cut_at_the_limit():
    with pytest.raises(PayloadTooLarge) as info:
        read_body(_Stream(b"x" * 5_000), limit=1_000)
    assert info.value.status_code == 413
    assert read_body(_Stream(b"x" * 1_000), limit=1_000) == b"x" * 1_000


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
def test_a_body_that_is_not_json_is_415(api, iris, key, content_type):
    r = api.post(PREDICT, raw='{"instances": [[1, 2, 3, 4]]}', key=key, content_type=content_type)
    assert r.status_code == 415
    assert error_of(r)["code"] == "unsupported_media_type"


def test_json_with_a_charset_is_fine(api, iris, key):
    r = api.post(PREDICT, {"instances": ROWS}, key, content_type="application/json; charset=utf-8")
    assert r.status_code == 200


@pytest.mark.parametrize(
    "raw, code",
    [
        (b'{"instances": [[1, 2, 3, 4]]', "malformed_json"),
        (b"{instances: 1}", "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (b"", "malformed_json"),
        (b"[" * 100_000 + b"]" * 100_000, "malformed_json"),
        (b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "malformed_json"),
        (b'{"instances": [[1, 2, 3, 4]], "extra": 1}', "invalid_input"),
        (b'{"instance": [[1, 2, 3, 4]]}', "invalid_input"),
        (b"[[1, 2, 3, 4]]", "invalid_input"),
        (b"{}", "invalid_input"),
        (b'{"instances": []}', "invalid_input"),
        (b'{"instances": [[1, 2, 3, 4]], "parameters": [1]}', "invalid_input"),
    ],
    ids=[
        "truncated",
        "not-json",
        "not-utf8",
        "empty",
        "100k-deep",
        "100k-deep-instances",
        "unknown-field",
        "misspelt-field",
        "list-body",
        "empty-object",
        "no-instances",
        "parameters-not-object",
    ],
)
def test_bad_bodies_are_400_in_the_error_shape(api, iris, key, raw, code):
    # (Django's test client leaves Content-Type out for an empty body; a client sends it)
    r = api.post(PREDICT, raw=raw, key=key, CONTENT_TYPE="application/json")
    assert r.status_code == 400, r.content[:200]
    assert error_of(r)["code"] == code


def test_an_unknown_top_level_field_is_named(api, iris, key):
    r = api.post(PREDICT, {"instances": ROWS, "extra": 1}, key)
    assert r.status_code == 400
    err = error_of(r)
    assert "extra" in err["message"] and err["details"]["path"] == "extra"


@pytest.mark.parametrize("path", ["/api/v1/nothing", "/api/v1/models/iris/versions/1/predict/more", "/api/v3/models"])
def test_an_unknown_api_path_is_a_json_404(api, iris, key, path):
    r = api.get(path, key)
    assert r.status_code == 404
    assert error_of(r)["code"] == "not_found"


def test_get_on_predict_is_a_json_405(api, iris, key):
    r = api.get(PREDICT, key)
    assert r.status_code == 405
    assert error_of(r)["code"] == "method_not_allowed"
    r = api.client.delete("/api/v1/models/iris/versions/1/predict", headers={"Authorization": f"Api-Key {key}"})
    assert r.status_code == 405
    assert error_of(r)["code"] == "method_not_allowed"


def test_a_bug_is_a_json_500(api, iris, key, monkeypatch):
    from inference.services import predict

    async def bug(**kwargs):
        raise KeyError("oops")

    monkeypatch.setattr(predict, "predict", bug)
    api.client.raise_request_exception = False
    r = api.post(PREDICT, {"instances": ROWS}, key)
    assert r.status_code == 500
    assert error_of(r)["code"] == "server_error"


def test_generated_request_ids_are_ordered_by_time(api, iris, key):
    """A generated id starts with the milliseconds of its request (UUIDv7's order), so that request
    records land at the end of their request_id index, and ids of later requests sort after."""
    before = time.time_ns() // 1_000_000
    first = api.post(PREDICT, {"instances": ROWS}, key)["X-Request-ID"]
    time.sleep(0.002)
    second = api.post(PREDICT, {"instances": ROWS}, key)["X-Request-ID"]
    after = time.time_ns() // 1_000_000
    assert before <= int(first[:12], 16) <= int(second[:12], 16) <= after
    assert first < second
