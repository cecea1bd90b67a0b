"""The auth and access matrix: who gets in where, and what never leaks.

No key, a garbage key, a revoked or expired key, a key limited to another model, a key with the
wrong scope, another key's job, the admin for anonymous and non-staff users, CSRF on the admin's
POST actions, keys in logs and error bodies, constant-time key comparison, and code artifacts
refused without the permission.
"""

from __future__ import annotations

import json
import logging
import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.utils import timezone

from inference.jobs.models import InferenceJob
from inference.keys import APIKey
from inference.monitoring.logs import JsonFormatter
from registry.models import ModelVersion
from tests.conftest import safetensors_bytes, small_mlp, torch_export_bytes, torchscript_bytes
from tests.inference.support import ROWS, config, error_of, make_key

PREDICT = {"instances": ROWS}
V2_BODY = {"inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP32", "data": ROWS}]}

# (label, method, path, body, content type, the scope that may call it)
ENDPOINTS = [
    ("v1 list", "GET", "/api/v1/models", None, None, "infer"),
    ("v1 model", "GET", "/api/v1/models/iris", None, None, "infer"),
    ("v1 predict", "POST", "/api/v1/models/iris/predict", PREDICT, "application/json", "infer"),
    ("v1 predict version", "POST", "/api/v1/models/iris/versions/1/predict", PREDICT, "application/json", "infer"),
    ("jobs submit", "POST", "/api/v1/models/iris/jobs", PREDICT, "application/json", "infer"),
    ("jobs list", "GET", "/api/v1/jobs", None, None, "infer"),
    ("v2 metadata", "GET", "/v2/models/iris", None, None, "infer"),
    ("v2 infer", "POST", "/v2/models/iris/infer", V2_BODY, "application/json", "infer"),
    ("registry create", "POST", "/api/v1/models", {"name": "newone"}, "application/json", "manage"),
    ("registry version", "GET", "/api/v1/models/iris/versions/1", None, None, "manage"),
    ("registry alias", "PUT", "/api/v1/models/iris/aliases/production", {"version": 2}, "application/json", "manage"),
]
ENDPOINT_IDS = [e[0] for e in ENDPOINTS]


def call(client: Client, endpoint, headers: dict[str, str]):
    _, method, path, body, content_type, _ = endpoint
    if body is None:
        return client.generic(method, path, headers=headers)
    return client.generic(method, path, json.dumps(body), content_type=content_type, headers=headers)


def refusal(r) -> tuple[str, str]:
    """(code, message) of an error in either shape (v1's object, v2's string)."""
    assert r["Content-Type"].startswith("application/json"), r.content[:200]
    body = r.json()
    if isinstance(body.get("error"), str):
        assert set(body) == {"error"}
        return "", body["error"]
    err = error_of(r)
    return err["code"], err["message"]


@pytest.fixture
def keys(db, iris) -> dict[str, str]:
    return {
        "infer": make_key("infer", rate="100000/s"),
        "manage": make_key("manage", scope=APIKey.Scope.MANAGE, rate="100000/s"),
    }


def _expired_key() -> str:
    plain = make_key("soon-expired", rate="100000/s", expires=timezone.now() + timedelta(days=1))
    row = APIKey.objects.get(name="soon-expired")
    row.expiry_date = timezone.now() - timedelta(seconds=1)
    row.save()  # also drops the cached key info
    return plain


def _revoked_key() -> str:
    plain = make_key("revoked", rate="100000/s")
    row = APIKey.objects.get(name="revoked")
    row.revoked = True
    row.save()
    return plain


BAD_CREDENTIALS = {
    "no key": lambda: {},
    "empty Authorization": lambda: {"Authorization": ""},
    "garbage": lambda: {"Authorization": "Api-Key garbage"},
    "garbage with a dot": lambda: {"Authorization": "Api-Key abcdefgh.0123456789abcdef0123456789abcdef"},
    "a real prefix, a wrong secret": lambda: {"Authorization": "Api-Key " + make_key("victim").split(".")[0] + ".x"},
    "wrong scheme": lambda: {"Authorization": "Bearer " + make_key("bearer")},
    "a 10 kB key": lambda: {"Authorization": "Api-Key " + "a" * 5000 + "." + "b" * 5000},
    "a key with a NUL": lambda: {"X-API-Key": "abc\x00def.ghi"},
    "revoked": lambda: {"Authorization": f"Api-Key {_revoked_key()}"},
    "expired": lambda: {"Authorization": f"Api-Key {_expired_key()}"},
    "expired, in X-API-Key": lambda: {"X-API-Key": _expired_key()},
}


@pytest.mark.parametrize("credentials", BAD_CREDENTIALS)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
def test_no_valid_key_is_401_everywhere(endpoint, credentials, keys, client):
    before = (InferenceJob.objects.count(), ModelVersion.objects.count())
    r = call(client, endpoint, BAD_CREDENTIALS[credentials]())
    assert r.status_code == 401, (r.status_code, r.content[:300])
    assert r["WWW-Authenticate"] == "Api-Key"
    code, _ = refusal(r)
    assert code in ("", "not_authenticated")
    assert (InferenceJob.objects.count(), ModelVersion.objects.count()) == before
    # and the next request with a good key is served
    good = call(client, ENDPOINTS[2], {"Authorization": f"Api-Key {keys['infer']}"})
    assert good.status_code == 200, good.content


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
def test_the_wrong_scope_is_403(endpoint, keys, client):
    wrong = "manage" if endpoint[5] == "infer" else "infer"
    r = call(client, endpoint, {"Authorization": f"Api-Key {keys[wrong]}"})
    assert r.status_code == 403, r.content
    code, message = refusal(r)
    assert code in ("", "permission_denied") and f"'{endpoint[5]}'" in message


@pytest.mark.parametrize("endpoint", [e for e in ENDPOINTS if "iris" in e[2]], ids=[e[0] for e in ENDPOINTS
                                                                                     if "iris" in e[2]])
def test_a_key_limited_to_another_model_gets_the_unknown_model_answer(endpoint, keys, client):
    from tests.inference.support import ready

    ready(small_mlp(3), model_name="other")
    scope = APIKey.Scope.MANAGE if endpoint[5] == "manage" else APIKey.Scope.INFER
    limited = make_key("other-only", scope=scope, model_names=["other"], rate="100000/s")
    hidden = call(client, endpoint, {"Authorization": f"Api-Key {limited}"})
    ghost = (endpoint[0], endpoint[1], endpoint[2].replace("/iris", "/ghost"), *endpoint[3:])
    unknown = call(client, ghost, {"Authorization": f"Api-Key {limited}"})
    assert hidden.status_code == unknown.status_code == 404, (hidden.content, unknown.content)
    assert refusal(hidden)[1].replace("iris", "ghost") == refusal(unknown)[1]
    assert not InferenceJob.objects.exists()


def test_another_keys_job_is_404_like_a_job_that_does_not_exist(keys, client, monkeypatch):
    from inference.services.jobs import job_submit
    from registry.selectors import version_resolve

    monkeypatch.setattr("django_q.tasks.async_task", lambda *a, **k: None)
    owner = APIKey.objects.get(name="infer")
    version = version_resolve(model=ModelVersion.objects.get(version=1).model, ref="1")
    job, _ = job_submit(version=version, instances=ROWS, api_key=owner)
    InferenceJob.objects.filter(pk=job.pk).update(status=InferenceJob.Status.FAILED)
    other = {"Authorization": f"Api-Key {make_key('other-client', rate='100000/s')}"}
    mine = {"Authorization": f"Api-Key {keys['infer']}"}
    for suffix, method in (("", "GET"), ("/result", "GET"), ("/cancel", "POST"), ("/retry", "POST")):
        theirs = client.generic(method, f"/api/v1/jobs/{job.pk}{suffix}", headers=other)
        nobody = client.generic(method, f"/api/v1/jobs/00000000-0000-4000-8000-000000000000{suffix}", headers=other)
        assert theirs.status_code == nobody.status_code == 404, (suffix, theirs.content)
        assert error_of(theirs)["code"] == error_of(nobody)["code"] == "not_found"
    assert client.get("/api/v1/jobs", headers=other).json()["jobs"] == []
    job.refresh_from_db()
    assert job.status == InferenceJob.Status.FAILED and job.attempts == 0  # the retry did nothing
    # the owner sees it
    assert client.get(f"/api/v1/jobs/{job.pk}", headers=mine).status_code == 200
    assert [j["id"] for j in client.get("/api/v1/jobs", headers=mine).json()["jobs"]] == [str(job.pk)]


# --- admin ----------------------------------------------------------------------------------------------------

ADMIN_PAGES = ["/admin/", "/admin/inference/apikey/", "/admin/inference/inferencejob/", "/admin/monitoring/",
               "/admin/registry/registeredmodel/", "/admin/auth/user/"]


@pytest.mark.parametrize("page", ADMIN_PAGES)
def test_admin_pages_send_anonymous_and_non_staff_users_to_the_login(page, db):
    anonymous = Client().get(page)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/admin/login/"), anonymous
    user = User.objects.create_user("plain", password="a long passphrase 123")
    plain = Client()
    plain.force_login(user)
    r = plain.get(page)
    assert r.status_code == 302 and r["Location"].startswith("/admin/login/"), r
    staff = Client()
    staff.force_login(User.objects.create_superuser("boss", password="another passphrase 456"))
    assert staff.get(page).status_code == 200


def test_admin_actions_need_the_csrf_token(keys, monkeypatch):
    from inference.services.jobs import job_submit
    from registry.selectors import version_resolve

    monkeypatch.setattr("django_q.tasks.async_task", lambda *a, **k: None)
    version = version_resolve(model=ModelVersion.objects.get(version=1).model, ref="1")
    job, _ = job_submit(version=version, instances=ROWS)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(User.objects.create_superuser("boss", password="another passphrase 456"))
    changelist = "/admin/inference/inferencejob/"
    action = {"action": "cancel_jobs", "_selected_action": [str(job.pk)]}
    forged = browser.post(changelist, action)
    assert forged.status_code == 403
    job.refresh_from_db()
    assert job.status == InferenceJob.Status.QUEUED
    key = APIKey.objects.get(name="infer")
    forged = browser.post(f"/admin/inference/apikey/{key.pk}/change/", {"name": "renamed", "revoked": "on"})
    assert forged.status_code == 403
    key.refresh_from_db()
    assert key.name == "infer" and not key.revoked
    # with the token from the page, the same action goes through
    page = browser.get(changelist)
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode()).group(1)
    done = browser.post(changelist, {**action, "csrfmiddlewaretoken": token})
    assert done.status_code == 302
    job.refresh_from_db()
    assert job.status == InferenceJob.Status.CANCELLED


# --- secrets ----------------------------------------------------------------------------------------------------


def test_keys_never_appear_in_logs_or_bodies(keys, client, caplog, monkeypatch):
    monkeypatch.setattr("django_q.tasks.async_task", lambda *a, **k: None)
    access = logging.getLogger("inference.access")  # propagate=False: listen to it directly
    access.addHandler(caplog.handler)
    wrong_secret = keys["infer"].split(".")[0] + ".not-the-secret-at-all"
    requests = [
        (ENDPOINTS[2], keys["infer"]),  # a good predict
        (ENDPOINTS[4], keys["infer"]),  # a job
        (ENDPOINTS[7], keys["infer"]),  # v2
        (("bad", "POST", "/api/v1/models/iris/predict", {"instances": [[1]]}, "application/json", ""), keys["infer"]),
        (("500", "POST", "/api/v1/models/iris/predict", {"instances": [[1, 2, 3, "x"]]}, "application/json", ""),
         keys["infer"]),
        (ENDPOINTS[2], keys["manage"]),  # 403
        (ENDPOINTS[2], wrong_secret),  # 401
        (ENDPOINTS[8], keys["manage"]),
    ]
    bodies = []
    try:
        with caplog.at_level(logging.DEBUG):
            for endpoint, key in requests:
                for header in ({"Authorization": f"Api-Key {key}"}, {"X-API-Key": key}):
                    r = call(client, endpoint, header)
                    bodies.append(r.content.decode("utf-8", "replace") + "".join(f"{k}: {v}" for k, v in r.items()))
    finally:
        access.removeHandler(caplog.handler)
    assert any(r.name == "inference.access" for r in caplog.records)  # the access log was heard
    formatter = JsonFormatter()
    logged = "\n".join(f"{r.getMessage()} {formatter.format(r)}" for r in caplog.records)
    for secret in (keys["infer"], keys["manage"], wrong_secret):
        secret_part = secret.split(".", 1)[1]
        assert secret_part not in logged
        for body in bodies:
            assert secret_part not in body


def test_keys_are_compared_in_constant_time(keys, client, monkeypatch):
    import rest_framework_api_key.crypto as crypto

    calls = []
    real = crypto.constant_time_compare

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(crypto, "constant_time_compare", spy)
    prefix = keys["infer"].split(".")[0]
    for key, status in ((keys["infer"], 200), (prefix + ".wrong", 401)):
        r = call(client, ENDPOINTS[2], {"Authorization": f"Api-Key {key}"})
        assert r.status_code == status
    stored = APIKey.objects.get(name="infer").hashed_key
    assert [a for a, _ in calls] == [stored, stored]  # both the good and the bad key: the hash, compared whole
    assert calls[0][1] == stored and calls[1][1] != stored
    # and Django's constant_time_compare is secrets.compare_digest (hmac.compare_digest)
    import secrets
    from unittest import mock

    with mock.patch.object(secrets, "compare_digest", wraps=secrets.compare_digest) as compare:
        assert real("a", "a") and not real("a", "b")
    assert compare.call_count == 2


# --- code artifacts ---------------------------------------------------------------------------------------------

CODE_UPLOADS = {
    "torchscript": (torchscript_bytes, config(format="torchscript", architecture="", architecture_args={})),
    "torch_export": (torch_export_bytes, config(format="torch_export", architecture="", architecture_args={})),
}


@pytest.mark.parametrize("fmt", CODE_UPLOADS)
@pytest.mark.parametrize("platform_allows,key_may,status,reason", [
    (False, False, 403, "code_artifacts_disabled"),
    (False, True, 403, "code_artifacts_disabled"),
    (True, False, 403, "code_artifacts_forbidden"),
    (True, True, 202, None),
])
def test_code_artifacts_need_the_platform_switch_and_the_keys_permission(fmt, platform_allows, key_may, status,
                                                                       reason, keys, settings, client,
                                                                       django_capture_on_commit_callbacks):
    settings.INFERENCE_ALLOW_CODE_ARTIFACTS = platform_allows
    key = make_key("uploader", scope=APIKey.Scope.MANAGE, may_upload_code=key_may, rate="100000/s")
    build, cfg = CODE_UPLOADS[fmt]
    before = ModelVersion.objects.count()
    with django_capture_on_commit_callbacks():
        r = client.post("/api/v1/models/iris/versions",
                        {"artifact": SimpleUploadedFile("m.pt", build(small_mlp())), "config": json.dumps(cfg)},
                        headers={"Authorization": f"Api-Key {key}"})
    assert r.status_code == status, r.content
    if reason:
        assert error_of(r)["details"]["reason"] == reason
        assert ModelVersion.objects.count() == before
    else:
        assert r.json()["format"] == fmt
    # a weights upload by the same key is never refused for this
    weights = client.post("/api/v1/models/iris/versions",
                          {"artifact": SimpleUploadedFile("m.safetensors", safetensors_bytes(small_mlp())),
                           "config": json.dumps(config())}, headers={"Authorization": f"Api-Key {key}"})
    assert weights.status_code == 202, weights.content


def test_an_inference_key_cannot_hold_the_code_permission(db):
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError):
        make_key("sneaky", scope=APIKey.Scope.INFER, may_upload_code=True)
