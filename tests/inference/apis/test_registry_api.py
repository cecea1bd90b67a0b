"""The registry API: management keys create models, upload versions (validated in the background
by a real qcluster), promote and roll back with aliases, archive; a real web server serves the new
production version on the next request.

Real small MLPs throughout, loaded by the real loader (in the validation subprocess, the worker
and the web processes). Runs on SQLite + the ORM broker and on PostgreSQL + Redis.
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.urls import reverse

from inference.keys import APIKey
from inference.services.jobs import jobs_reconcile
from registry import services as registry_services
from registry.models import AliasEvent, ModelAlias, ModelVersion, RegisteredModel, RegistryEvent
from tests.conftest import safetensors_bytes, small_mlp, torchscript_bytes
from tests.helpers import stored_files
from tests.inference.support import ROWS, config, error_of, forward, make_key, ready
from tests.processes import Cluster, WebServer


def live(test):
    """A test with real processes: they see only committed rows (transaction=True)."""
    test = pytest.mark.django_db(transaction=True, serialized_rollback=True)(test)
    return pytest.mark.slow(test)


# --- clients ---------------------------------------------------------------------------------------------


class Registry:
    """Django's test client speaking to the registry API with one key."""

    def __init__(self, key: str, client: Client | None = None):
        self.client = client or Client()
        self.headers = {"Authorization": f"Api-Key {key}"}

    def create_model(self, name: str, **fields: Any):
        return self.client.post("/api/v1/models", json.dumps({"name": name, **fields}),
                                content_type="application/json", headers=self.headers)

    def upload(self, model: str, artifact: bytes | None, cfg: Any, *, sha256: str | None = None,
               config_as_file: bool = False, **extra: Any):
        data: dict[str, Any] = dict(extra)
        if artifact is not None:
            data["artifact"] = SimpleUploadedFile("model.safetensors", artifact)
        if cfg is not None:
            text = cfg if isinstance(cfg, str) else json.dumps(cfg)
            data["config"] = SimpleUploadedFile("config.json", text.encode()) if config_as_file else text
        if sha256 is not None:
            data["sha256"] = sha256
        return self.client.post(f"/api/v1/models/{model}/versions", data, headers=self.headers)

    def version(self, model: str, number: int | str):
        return self.client.get(f"/api/v1/models/{model}/versions/{number}", headers=self.headers)

    def archive(self, model: str, number: int | str):
        return self.client.post(f"/api/v1/models/{model}/versions/{number}/archive", headers=self.headers)

    def promote(self, model: str, alias: str, number: Any, *, raw: str | None = None,
                content_type: str = "application/json"):
        body = raw if raw is not None else json.dumps({"version": number})
        return self.client.put(f"/api/v1/models/{model}/aliases/{alias}", body, content_type=content_type,
                               headers=self.headers)

    def alias(self, model: str, alias: str):
        return self.client.get(f"/api/v1/models/{model}/aliases/{alias}", headers=self.headers)

    def delete_alias(self, model: str, alias: str):
        return self.client.delete(f"/api/v1/models/{model}/aliases/{alias}", headers=self.headers)

    def wait(self, model: str, number: int, timeout: float = 60, cluster: Cluster | None = None) -> dict:
        """Poll the version until validation decided it (ready or failed), as a pipeline does."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = self.version(model, number)
            assert r.status_code == 200, r.content
            if r.json()["status"] != "registered":
                return r.json()
            time.sleep(0.1)
        raise AssertionError(f"{model} v{number} still registered" + (f"\n{cluster.log_tail()}" if cluster else ""))


def predict(client: Client, key: str, model: str) -> dict:
    r = client.post(f"/api/v1/models/{model}/predict", json.dumps({"instances": ROWS}),
                    content_type="application/json", headers={"Authorization": f"Api-Key {key}"})
    assert r.status_code == 200, r.content
    return r.json()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def manage_key(db) -> str:
    return make_key("deploy", scope=APIKey.Scope.MANAGE, rate="10000/s")


@pytest.fixture
def infer_key(db) -> str:
    return make_key("client", rate="10000/s")


@pytest.fixture
def reg(manage_key) -> Registry:
    return Registry(manage_key)


@pytest.fixture
def weights() -> bytes:
    return safetensors_bytes(small_mlp(5))


DEPLOY_ACTOR = "key:deploy ("


# --- scope and visibility -----------------------------------------------------------------------------------


def _management_calls(r: Registry, weights: bytes) -> dict[str, Any]:
    return {
        "create model": lambda: r.create_model("new-model"),
        "upload": lambda: r.upload("iris", weights, config()),
        "version status": lambda: r.version("iris", 1),
        "archive": lambda: r.archive("iris", 2),
        "load": lambda: r.client.post("/api/v1/models/iris/versions/2/load", headers=r.headers),
        "unload": lambda: r.client.post("/api/v1/models/iris/versions/2/unload", headers=r.headers),
        "promote": lambda: r.promote("iris", "production", 2),
        "read alias": lambda: r.alias("iris", "production"),
        "delete alias": lambda: r.delete_alias("iris", "staging"),
    }


def _registry_state() -> tuple:
    return (
        list(RegisteredModel.objects.values_list("name", flat=True)),
        list(ModelVersion.objects.values_list("version", "status", "archived", "pinned")),
        list(ModelAlias.objects.values_list("name", "version__version")),
        AliasEvent.objects.count(),
        RegistryEvent.objects.count(),
    )


def test_an_inference_key_is_refused_with_403_on_every_management_endpoint(iris, infer_key, weights, settings,
                                                                             django_capture_on_commit_callbacks):
    before, files = _registry_state(), stored_files(settings.MEDIA_ROOT)
    with django_capture_on_commit_callbacks() as callbacks:
        for what, call in _management_calls(Registry(infer_key), weights).items():
            r = call()
            assert r.status_code == 403, (what, r.content)
            err = error_of(r)
            assert err["code"] == "permission_denied" and "'manage'" in err["message"], (what, err)
    assert callbacks == []
    assert _registry_state() == before
    assert stored_files(settings.MEDIA_ROOT) == files


def test_no_key_is_401_on_every_management_endpoint(iris, weights):
    for what, call in _management_calls(Registry("nope.nope"), weights).items():
        r = call()
        assert r.status_code == 401, (what, r.content)
        assert error_of(r)["code"] == "not_authenticated"
    r = Client().put("/api/v1/models/iris/aliases/production", "{}", content_type="application/json")
    assert r.status_code == 401 and r["WWW-Authenticate"] == "Api-Key"


def test_a_manage_key_cannot_predict_or_read_the_inference_endpoints(iris, manage_key):
    for r in (Client().post("/api/v1/models/iris/predict", json.dumps({"instances": ROWS}),
                            content_type="application/json", headers={"Authorization": f"Api-Key {manage_key}"}),
              Client().get("/api/v1/models", headers={"Authorization": f"Api-Key {manage_key}"})):
        assert r.status_code == 403 and error_of(r)["code"] == "permission_denied"


def test_a_manage_key_limited_to_other_models_gets_404_like_for_an_unknown_model(iris, weights):
    ready(small_mlp(3), model_name="other")
    limited = Registry(make_key("other-only", scope=APIKey.Scope.MANAGE, model_names=["other"], rate="10000/s"))
    before = _registry_state()
    calls = _management_calls(limited, weights)
    calls.pop("create model")
    for what, call in calls.items():
        hidden = call()
        assert hidden.status_code == 404, (what, hidden.content)
        assert error_of(hidden) == {"code": "not_found", "message": "No model named 'iris'.", "details": {}}, what
    unknown = limited.version("nothing-here", 1)
    assert unknown.status_code == 404
    assert error_of(unknown)["message"] == "No model named 'nothing-here'."
    assert _registry_state() == before
    # its own model it manages
    assert limited.version("other", 1).status_code == 200
    # and it cannot create a model it could never see
    r = limited.create_model("brand-new")
    assert r.status_code == 403 and error_of(r)["details"]["reason"] == "key_limited_to_models"
    assert not RegisteredModel.objects.filter(name="brand-new").exists()


# --- create a model -----------------------------------------------------------------------------------------


def test_create_a_model(reg):
    r = reg.create_model("fraud", description="Card fraud score", task="classification")
    assert r.status_code == 201, r.content
    assert r.json() == {"name": "fraud", "description": "Card fraud score", "task": "classification",
                        "aliases": {}, "versions": []}
    assert r["Location"] == "/api/v1/models/fraud"
    event = RegistryEvent.objects.get(model__name="fraud")
    assert event.action == "model_created" and event.actor.startswith(DEPLOY_ACTOR)

    again = reg.create_model("fraud")
    assert again.status_code == 409 and error_of(again)["details"]["reason"] == "exists"
    for body, path in (({"name": "Not A Slug"}, "name"), ({"name": ""}, "name"), ({"name": 3}, "name"),
                       ({"name": "x", "owner": "me"}, "owner")):
        r = reg.client.post("/api/v1/models", json.dumps(body), content_type="application/json", headers=reg.headers)
        assert r.status_code == 400, (body, r.content)
        err = error_of(r)
        assert err["code"] == "invalid_input" and err["details"].get("path") == path, err
    r = reg.client.post("/api/v1/models", "name=x", content_type="application/x-www-form-urlencoded",
                        headers=reg.headers)
    assert r.status_code == 415 and error_of(r)["code"] == "unsupported_media_type"
    assert list(RegisteredModel.objects.values_list("name", flat=True)) == ["fraud"]


# --- upload -----------------------------------------------------------------------------------------------------


def test_an_upload_is_202_registered_with_its_sha256_and_queues_its_validation(
    reg, iris, weights, monkeypatch, django_capture_on_commit_callbacks
):
    queued = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda func, *args, **kw: queued.append((func, args)))
    with django_capture_on_commit_callbacks(execute=True):
        r = reg.upload("iris", weights, config(), sha256=sha(weights).upper(), config_as_file=True)
    assert r.status_code == 202, r.content
    body = r.json()
    assert body["model"] == "iris" and body["version"] == 3
    assert body["status"] == "registered" and body["ready"] is False and body["error"] is None
    assert body["sha256"] == sha(weights) and body["size_bytes"] == len(weights)
    assert body["created_by"].startswith(DEPLOY_ACTOR)
    assert body["url"] == r["Location"] == "/api/v1/models/iris/versions/3"
    version = ModelVersion.objects.get(model__name="iris", version=3)
    assert Path(version.artifact.path).read_bytes() == weights
    assert queued == [("inference.tasks.validate_version", (version.pk,))]
    event = RegistryEvent.objects.get(action="version_registered", version=3)
    assert event.actor == body["created_by"] and sha(weights) in event.detail

    status = reg.version("iris", 3)
    assert status.status_code == 200
    assert {k: status.json()[k] for k in ("status", "sha256", "archived", "aliases")} == {
        "status": "registered", "sha256": sha(weights), "archived": False, "aliases": []}
    assert reg.version("iris", 1).json()["aliases"] == ["production"]
    for missing in ("9", "production"):
        r = reg.version("iris", missing)
        assert r.status_code == 404 and error_of(r)["code"] == "not_found"


def test_the_config_may_be_a_form_field(reg, iris, weights, monkeypatch, django_capture_on_commit_callbacks):
    queued = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda func, *args, **kw: queued.append((func, args)))
    with django_capture_on_commit_callbacks(execute=True):
        r = reg.upload("iris", weights, config())
    assert r.status_code == 202 and r.json()["status"] == "registered"
    assert queued == [("inference.tasks.validate_version", (ModelVersion.objects.get(version=3).pk,))]


def test_an_upload_to_an_unknown_model_is_404(reg, weights):
    r = reg.upload("ghost", weights, config())
    assert r.status_code == 404 and error_of(r)["code"] == "not_found"
    assert not RegisteredModel.objects.exists()


BAD_UPLOADS = {
    "missing file": (dict(artifact=None), 400, "artifact", None),
    "empty file": (dict(artifact=b""), 400, "artifact", "invalid_artifact"),
    "missing config": (dict(cfg=None), 400, "config", None),
    "config not JSON": (dict(cfg='{"format": "safetensors",'), 400, "config", "malformed_json"),
    "config not an object": (dict(cfg="[1, 2]"), 400, "config", None),
    "config with an unknown field": (dict(cfg=config(colour="red")), 400, "config", "invalid_config"),
    "unknown architecture": (dict(cfg=config(architecture="os.system")), 400, "config", "invalid_architecture"),
    "unknown hardware": (dict(cfg=config(hardware="tpu")), 400, "config", "invalid_hardware"),
    "sha256 mismatch": (dict(sha256="0" * 64), 400, "artifact", "sha256_mismatch"),
    "sha256 not hex": (dict(sha256="not-a-digest"), 400, "sha256", "invalid_sha256"),
    "unknown field": (dict(extra={"alias": "production"}), 400, "alias", None),
    "too large": (dict(max_bytes=100), 413, None, "artifact_too_large"),
    "code format, code disabled": (dict(code=True), 403, None, "code_artifacts_disabled"),
    "code format, key without may_upload_code": (dict(code=True, allow_code=True), 403, None,
                                                 "code_artifacts_forbidden"),
}


@pytest.mark.parametrize("case", BAD_UPLOADS)
def test_a_bad_upload_is_refused_in_the_error_shape_and_stores_nothing(
    case, reg, weights, settings, django_capture_on_commit_callbacks
):
    registry_services.model_create(name="iris")
    changes, status, path, reason = BAD_UPLOADS[case]
    artifact = changes.get("artifact", weights)
    cfg = changes.get("cfg", config())
    if changes.get("code"):
        artifact, cfg = torchscript_bytes(small_mlp()), config(format="torchscript", architecture="",
                                                                architecture_args={})
    settings.INFERENCE_ALLOW_CODE_ARTIFACTS = bool(changes.get("allow_code"))
    if "max_bytes" in changes:
        settings.INFERENCE_MAX_ARTIFACT_BYTES = changes["max_bytes"]
    with django_capture_on_commit_callbacks() as callbacks:
        r = reg.upload("iris", artifact, cfg, sha256=changes.get("sha256"), **changes.get("extra", {}))
    assert r.status_code == status, r.content
    err = error_of(r)
    if path is not None:
        assert err["details"].get("path") == path, err
    if reason is not None:
        assert err["details"].get("reason") == reason, err
    if case == "sha256 mismatch":
        assert sha(weights) in err["message"]
    assert callbacks == []
    assert not ModelVersion.objects.exists()
    assert not RegistryEvent.objects.filter(action="version_registered").exists()
    assert stored_files(settings.MEDIA_ROOT) == []


def test_an_upload_whose_declared_length_cannot_fit_is_413_before_it_is_read(reg, weights, settings):
    registry_services.model_create(name="iris")
    settings.INFERENCE_MAX_ARTIFACT_BYTES = 100
    settings.INFERENCE_MAX_BODY_BYTES = 100
    r = reg.upload("iris", weights, config())
    assert r.status_code == 413 and error_of(r)["details"] == {"reason": "artifact_too_large", "limit": 100}
    assert stored_files(settings.MEDIA_ROOT) == []


def test_an_upload_that_is_not_multipart_is_415(reg, iris):
    r = reg.client.post("/api/v1/models/iris/versions", json.dumps({"config": config()}),
                        content_type="application/json", headers=reg.headers)
    assert r.status_code == 415 and error_of(r)["code"] == "unsupported_media_type"


def test_a_key_with_may_upload_code_uploads_a_code_format_when_the_platform_allows_it(settings, iris,
                                                                                      django_capture_on_commit_callbacks):
    settings.INFERENCE_ALLOW_CODE_ARTIFACTS = True
    trusted = Registry(make_key("trusted", scope=APIKey.Scope.MANAGE, may_upload_code=True, rate="10000/s"))
    cfg = config(format="torchscript", architecture="", architecture_args={})
    with django_capture_on_commit_callbacks():
        r = trusted.upload("iris", torchscript_bytes(small_mlp()), cfg)
    assert r.status_code == 202, r.content
    assert r.json()["format"] == "torchscript"
    settings.INFERENCE_ALLOW_CODE_ARTIFACTS = False  # the platform switch still rules over the key
    r = trusted.upload("iris", torchscript_bytes(small_mlp()), cfg)
    assert r.status_code == 403 and error_of(r)["details"]["reason"] == "code_artifacts_disabled"


# --- aliases and archive (without the cluster) ---------------------------------------------------------------


def test_promote_is_409_unless_the_version_is_ready(reg, iris, weights, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks():
        assert reg.upload("iris", weights, config()).status_code == 202  # v3, registered
    failed = registry_services.model_version_register(model_name="iris", artifact=io.BytesIO(weights),
                                                      config=config(), validate=False)  # v4
    ModelVersion.objects.filter(pk=failed.pk).update(status="failed", status_error="boom")
    ModelVersion.objects.filter(model__name="iris", version=2).update(archived=True)
    ModelAlias.objects.filter(name="staging").delete()
    events = AliasEvent.objects.count()
    for number, reason in ((3, "not_ready"), (4, "not_ready"), (2, "archived")):
        r = reg.promote("iris", "production", number)
        assert r.status_code == 409, (number, r.content)
        err = error_of(r)
        assert err["code"] == "conflict" and err["details"]["reason"] == reason, err
    r = reg.promote("iris", "production", 99)
    assert r.status_code == 400 and error_of(r)["details"] == {"path": "version", "reason": "unknown_version"}
    assert ModelAlias.objects.get(name="production").version.version == 1
    assert AliasEvent.objects.count() == events


@pytest.mark.parametrize("raw, content_type, status", [
    ('{"version": "2"}', "application/json", 400),
    ('{"version": true}', "application/json", 400),
    ('{"version": 0}', "application/json", 400),
    ('{"version": 2, "force": true}', "application/json", 400),
    ("[2]", "application/json", 400),
    ("{", "application/json", 400),
    ("version=2", "application/x-www-form-urlencoded", 415),
])
def test_a_bad_promote_body_is_refused(reg, iris, raw, content_type, status):
    r = reg.promote("iris", "production", None, raw=raw, content_type=content_type)
    assert r.status_code == status, r.content
    error_of(r)
    assert ModelAlias.objects.get(name="production").version.version == 1


def test_promote_roll_back_and_read_an_alias(reg, iris):
    r = reg.promote("iris", "production", 2)
    assert r.status_code == 200, r.content
    assert {k: r.json()[k] for k in ("model", "alias", "version", "previous_version")} == {
        "model": "iris", "alias": "production", "version": 2, "previous_version": 1}
    again = reg.promote("iris", "production", 2)  # already there: nothing moves, nothing recorded
    assert again.json()["previous_version"] == 2
    r = reg.promote("iris", "canary", 2)
    assert r.status_code == 200 and r.json()["previous_version"] is None
    r = reg.promote("iris", "Not An Alias", 2)
    assert r.status_code == 400 and error_of(r)["details"]["path"] == "alias"
    back = reg.promote("iris", "production", 1)
    assert back.json()["version"] == 1 and back.json()["previous_version"] == 2
    alias = reg.alias("iris", "production")
    assert alias.status_code == 200
    body = alias.json()
    assert body["version"] == 1
    moves = [(e["from_version"], e["to_version"]) for e in body["history"]]
    assert moves == [(2, 1), (1, 2), (None, 1)]
    assert all(e["actor"].startswith(DEPLOY_ACTOR) for e in body["history"][:2])
    assert body["history"][2]["actor"] == "system"  # the fixture's own alias
    assert reg.alias("iris", "nope").status_code == 404


def test_delete_an_alias(reg, iris):
    r = reg.delete_alias("iris", "staging")
    assert r.status_code == 204 and r.content == b""
    assert not ModelAlias.objects.filter(name="staging").exists()
    event = AliasEvent.objects.get(action="delete")
    assert (event.alias, event.from_version, event.to_version) == ("staging", 2, None)
    assert event.actor.startswith(DEPLOY_ACTOR)
    again = reg.delete_alias("iris", "staging")
    assert again.status_code == 404 and error_of(again)["code"] == "not_found"


def test_archive_is_refused_while_an_alias_points_to_the_version(reg, iris, infer_key):
    r = reg.archive("iris", 1)
    assert r.status_code == 409
    err = error_of(r)
    assert err["details"]["reason"] == "alias_target" and "production" in err["message"]
    assert reg.delete_alias("iris", "staging").status_code == 204
    r = reg.archive("iris", 2)
    assert r.status_code == 200, r.content
    assert r.json()["archived"] is True and r.json()["version"] == 2
    assert reg.archive("iris", 2).status_code == 200  # again: no change, no second record
    events = RegistryEvent.objects.filter(action="version_archived")
    assert [(e.version, e.actor.startswith(DEPLOY_ACTOR)) for e in events] == [(2, True)]
    # an archived version no longer serves, and cannot be promoted
    r = Client().post("/api/v1/models/iris/versions/2/predict", json.dumps({"instances": ROWS}),
                      content_type="application/json", headers={"Authorization": f"Api-Key {infer_key}"})
    assert r.status_code == 404
    assert reg.promote("iris", "production", 2).status_code == 409
    assert reg.version("iris", 2).json()["archived"] is True
    assert reg.archive("iris", 7).status_code == 404


# --- history in the admin, keys, reconciler, OpenAPI ------------------------------------------------------------


def test_the_admin_shows_who_changed_the_registry(reg, iris, admin_client, django_capture_on_commit_callbacks):
    assert reg.promote("iris", "production", 2).status_code == 200
    assert reg.delete_alias("iris", "staging").status_code == 204
    assert reg.archive("iris", 1).status_code == 200
    with django_capture_on_commit_callbacks():
        assert reg.upload("iris", safetensors_bytes(small_mlp(7)), config()).status_code == 202
    model = RegisteredModel.objects.get(name="iris")
    page = admin_client.get(reverse("admin:registry_registeredmodel_change", args=[model.pk])).content.decode()
    assert "alias history" in page.lower() and "history (models created" in page.lower()
    assert page.count("key:deploy (") >= 4  # the move, the removal, the archive, the upload
    events = admin_client.get(reverse("admin:registry_registryevent_changelist"))
    assert events.status_code == 200 and "version registered" in events.content.decode()
    assert admin_client.get(reverse("admin:registry_registryevent_add")).status_code == 403


def test_create_api_key_allow_code_and_the_admin_field(admin_client):
    out = io.StringIO()
    call_command("create_api_key", "--name", "ci", "--scope", "manage", "--allow-code", stdout=out)
    assert "may upload code artifacts" in out.getvalue()
    assert APIKey.objects.get(name="ci").may_upload_code is True
    call_command("create_api_key", "--name", "plain", "--scope", "manage", stdout=io.StringIO())
    assert APIKey.objects.get(name="plain").may_upload_code is False
    with pytest.raises(CommandError, match="infer key"):
        call_command("create_api_key", "--name", "bad", "--allow-code", stdout=io.StringIO())
    assert not APIKey.objects.filter(name="bad").exists()
    page = admin_client.get(reverse("admin:inference_apikey_add")).content.decode()
    assert 'name="may_upload_code"' in page
    r = admin_client.post(reverse("admin:inference_apikey_add"),
                          {"name": "admin-made", "scope": "manage", "may_upload_code": "on", "rate": "", "expiry_date": ""})
    assert r.status_code == 302, r.content[:2000]
    assert APIKey.objects.get(name="admin-made").may_upload_code is True


def test_the_reconciler_queues_again_the_validation_of_versions_left_registered(iris, weights, monkeypatch, settings):
    from datetime import timedelta

    from django.utils import timezone

    queued = []
    monkeypatch.setattr("django_q.tasks.async_task", lambda func, *args, **kw: queued.append((func, args)))
    settings.INFERENCE_JOB_REQUEUE_AFTER = 60
    lost, fresh, archived = (
        registry_services.model_version_register(model_name="iris", artifact=io.BytesIO(weights), config=config(),
                                                 validate=False) for _ in range(3))
    old = timezone.now() - timedelta(seconds=61)
    ModelVersion.objects.filter(pk__in=[lost.pk, archived.pk]).update(created_at=old)
    ModelVersion.objects.filter(pk=archived.pk).update(archived=True)
    ModelVersion.objects.filter(model__name="iris", version__in=[1, 2]).update(created_at=old)  # ready ones
    assert jobs_reconcile() == {"running": 0, "queued": 0, "versions": 1}
    assert queued == [("inference.tasks.validate_version", (lost.pk,))]
    assert ModelVersion.objects.get(pk=fresh.pk).status == "registered"  # its task may still be on its way


def test_the_openapi_schema_documents_the_registry_api_and_its_errors(client):
    schema = client.get("/api/schema/?format=json").json()
    paths = {p.rstrip("/"): ops for p, ops in schema["paths"].items()}
    expected = {
        ("/api/v1/models", "post"): {"201", "400", "401", "403", "409", "415", "429"},
        ("/api/v1/models/{name}/versions", "post"): {"202", "400", "401", "403", "404", "413", "415", "429"},
        ("/api/v1/models/{name}/versions/{version}", "get"): {"200", "401", "403", "404", "429"},
        ("/api/v1/models/{name}/versions/{version}/archive", "post"): {"200", "401", "403", "404", "409", "429"},
        ("/api/v1/models/{name}/aliases/{alias}", "get"): {"200", "401", "403", "404", "429"},
        ("/api/v1/models/{name}/aliases/{alias}", "put"): {"200", "400", "401", "403", "404", "409", "415", "429"},
        ("/api/v1/models/{name}/aliases/{alias}", "delete"): {"204", "401", "403", "404", "429"},
    }
    for (path, method), statuses in expected.items():
        operation = paths[path][method]
        assert statuses <= set(operation["responses"]), (path, method, sorted(operation["responses"]))
        assert "manage" in operation["description"]
        for status in statuses - {"200", "201", "202", "204"}:
            ref = operation["responses"][status]["content"]["application/json"]["schema"]["$ref"]
            assert ref.endswith("/Error"), (path, method, status, ref)
    upload = paths["/api/v1/models/{name}/versions"]["post"]["requestBody"]["content"]
    assert upload["multipart/form-data"]["schema"]["$ref"].endswith("/VersionUpload")
    assert "get" in paths["/api/v1/models"]  # listing models is unchanged


# --- live: a real qcluster validates, a real web server serves ----------------------------------------------------


CLUSTER_ENV = {"INFERENCE_WORKERS": "2", "INFERENCE_VALIDATION_TIMEOUT": "60"}


@pytest.fixture(scope="module")
def media_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("registry-api") / "media"


@pytest.fixture(scope="module")
def cluster(media_root, django_db_setup):
    """One qcluster for the module, started once the test database exists."""
    c = Cluster(media_root, CLUSTER_ENV)
    c.start()
    yield c
    c.stop()


@pytest.fixture
def shared_media(settings, media_root):
    settings.MEDIA_ROOT = media_root  # where the worker and the web server find the artifacts


@live
@pytest.mark.usefixtures("shared_media")
def test_a_pipelines_deploy_step_upload_poll_promote_roll_back(cluster, manage_key, infer_key):
    reg, client = Registry(manage_key), Client()
    m1, m2 = small_mlp(11), small_mlp(12)
    w1, w2 = safetensors_bytes(m1), safetensors_bytes(m2)
    assert reg.create_model("churn", description="Churn risk", task="classification").status_code == 201

    r = reg.upload("churn", w1, config(), sha256=sha(w1))
    assert r.status_code == 202 and r.json()["status"] == "registered" and r.json()["sha256"] == sha(w1)
    v1 = reg.wait("churn", 1, cluster=cluster)
    assert v1["status"] == "ready" and v1["error"] is None and v1["validated_at"], v1
    assert reg.promote("churn", "production", 1).status_code == 200
    first = predict(client, infer_key, "churn")
    assert first["version"] == 1
    np.testing.assert_allclose(first["predictions"], forward(m1, ROWS), rtol=1e-5, atol=1e-6)

    r = reg.upload("churn", w2, config(), sha256=sha(w2))
    assert r.status_code == 202 and r.json()["version"] == 2
    assert predict(client, infer_key, "churn")["version"] == 1  # still validating: production unchanged
    assert reg.wait("churn", 2, cluster=cluster)["status"] == "ready"
    promoted = reg.promote("churn", "production", 2)
    assert promoted.status_code == 200 and promoted.json()["previous_version"] == 1
    second = predict(client, infer_key, "churn")
    assert second["version"] == 2
    np.testing.assert_allclose(second["predictions"], forward(m2, ROWS), rtol=1e-5, atol=1e-6)

    rollback = reg.promote("churn", "production", promoted.json()["previous_version"])
    assert rollback.status_code == 200 and rollback.json()["version"] == 1
    third = predict(client, infer_key, "churn")
    assert third["version"] == 1
    np.testing.assert_allclose(third["predictions"], forward(m1, ROWS), rtol=1e-5, atol=1e-6)

    history = reg.alias("churn", "production").json()["history"]
    assert [(e["from_version"], e["to_version"]) for e in history] == [(2, 1), (1, 2), (None, 1)]
    assert all(e["actor"].startswith(DEPLOY_ACTOR) for e in history)
    validated = RegistryEvent.objects.filter(model__name="churn", action="version_validated").order_by("version")
    assert [(e.version, e.detail, e.actor) for e in validated] == [
        (1, "ready", "system (background validation)"), (2, "ready", "system (background validation)")]


@live
@pytest.mark.usefixtures("shared_media")
def test_a_version_that_fails_validation_in_the_background_cannot_be_promoted(cluster, manage_key, infer_key):
    reg = Registry(manage_key)
    ready(small_mlp(1), model_name="churn", aliases=["production"])
    # weights of a 4-8-3 MLP declared as a 4-16-3 one: only loading them can tell
    bad = config(architecture_args={"in_features": 4, "hidden": [16], "out_features": 3})
    r = reg.upload("churn", safetensors_bytes(small_mlp(2)), bad)
    assert r.status_code == 202 and r.json()["status"] == "registered"
    status = reg.wait("churn", 2, cluster=cluster)
    assert status["status"] == "failed" and status["ready"] is False
    assert "do not match" in status["error"], status["error"]
    r = reg.promote("churn", "production", 2)
    assert r.status_code == 409
    err = error_of(r)
    assert err["details"]["reason"] == "not_ready" and "failed" in err["message"]
    assert predict(Client(), infer_key, "churn")["version"] == 1
    assert AliasEvent.objects.filter(model__name="churn").count() == 1


@live
@pytest.mark.usefixtures("shared_media")
def test_a_lost_validation_task_is_queued_again_by_the_reconciler(cluster, manage_key, settings):
    settings.INFERENCE_JOB_REQUEUE_AFTER = 1
    # stored without queueing its task: as if the broker lost it
    version = registry_services.model_version_register(
        model_name="churn", artifact=io.BytesIO(safetensors_bytes(small_mlp(4))), config=config(), validate=False)
    time.sleep(1.1)
    assert jobs_reconcile()["versions"] == 1
    assert Registry(manage_key).wait("churn", version.version, cluster=cluster)["status"] == "ready"


@live
def test_concurrent_promotions_leave_one_target_and_a_consistent_history(manage_key):
    ready(small_mlp(1), model_name="churn")
    ready(small_mlp(2), model_name="churn")
    threads_n, rounds = 8, 5
    barrier = threading.Barrier(threads_n)
    answers: list[tuple[int, int | None]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def promote(i: int) -> None:
        try:
            reg = Registry(manage_key)
            for _ in range(rounds):
                barrier.wait(30)
                target = 1 + i % 2
                r = reg.promote("churn", "production", target)
                assert r.status_code == 200, r.content
                with lock:
                    answers.append((target, r.json()["previous_version"]))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            barrier.abort()
        finally:
            connection.close()

    threads = [threading.Thread(target=promote, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    assert len(answers) == threads_n * rounds
    (alias,) = ModelAlias.objects.filter(model__name="churn")
    events = list(AliasEvent.objects.filter(model__name="churn").order_by("id"))
    assert events[0].from_version is None
    for before, after in zip(events, events[1:]):
        assert after.from_version == before.to_version != after.to_version, [(e.from_version, e.to_version)
                                                                            for e in events]
    assert events[-1].to_version == alias.version.version
    # every answer that moved the alias is one event; the others found it already there
    assert sum(1 for target, previous in answers if previous != target) == len(events)
    assert {e.actor for e in events} == {events[0].actor} and events[0].actor.startswith(DEPLOY_ACTOR)


def _http(method: str, url: str, key: str, body: Any = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Api-Key {key}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@live
@pytest.mark.usefixtures("shared_media")
def test_a_running_server_serves_the_new_production_version_on_the_next_request(media_root, manage_key, infer_key,
                                                                                 settings):
    m1, m2 = small_mlp(21), small_mlp(22)
    ready(m1, model_name="churn", aliases=["production"])
    v2 = ready(m2, model_name="churn")
    if "registry" in settings.CACHES:  # embedded: the generation lives in the server's data dir
        settings.CACHES = {**settings.CACHES, "registry": {**settings.CACHES["registry"],
                                                           "LOCATION": str(media_root.parent / "cache" / "registry")}}
    # Two web processes: a promotion lands in one of them, the other must see it too.
    server = WebServer(media_root, {"WEB_CONCURRENCY": "2", "WEB_THREADS": "4"})
    server.start()
    try:
        def served() -> int:
            status, body = _http("POST", f"{server.url}/api/v1/models/churn/predict", infer_key, {"instances": ROWS})
            assert status == 200, body
            return body["version"]

        assert {served() for _ in range(6)} == {1}
        status, body = _http("PUT", f"{server.url}/api/v1/models/churn/aliases/production", manage_key,
                             {"version": 2})
        assert status == 200 and body["previous_version"] == 1, body
        time.sleep(settings.INFERENCE_REGISTRY_POLL_SECONDS)  # the other process re-checks within this
        answers = [served() for _ in range(6)]
        assert answers == [2] * 6, answers

        status, body = _http("PUT", f"{server.url}/api/v1/models/churn/aliases/production", manage_key,
                             {"version": 1})
        assert status == 200
        time.sleep(settings.INFERENCE_REGISTRY_POLL_SECONDS)
        assert [served() for _ in range(6)] == [1] * 6

        # A promotion made by another process (here: this test's) reaches the server through the shared
        # registry generation (Redis, or the data dir's file cache in embedded mode), within
        # INFERENCE_REGISTRY_POLL_SECONDS.
        registry_services.alias_set(model=v2.model, alias="production", version=v2, actor="test")
        started = time.monotonic()
        while served() != 2:
            assert time.monotonic() - started < settings.INFERENCE_REGISTRY_POLL_SECONDS + 1.5
        time.sleep(settings.INFERENCE_REGISTRY_POLL_SECONDS)
        assert [served() for _ in range(6)] == [2] * 6
    finally:
        server.stop()
    assert "Traceback" not in server.log_tail(), server.log_tail()
