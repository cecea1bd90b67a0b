"""The admin: pages render for staff only; uploads, alias moves and key creation go through the services."""

from __future__ import annotations

import json
import re

import pytest
from django.conf import settings as django_settings
from django.contrib.messages import get_messages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.urls import reverse

from inference.keys import APIKey
from registry import services
from registry.models import AliasEvent, HardwareTarget, ModelAlias, ModelVersion, RegisteredModel
from tests.conftest import IRIS_CONFIG, safetensors_bytes, small_mlp
from tests.helpers import ready_version, stored_files

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    """Every test here creates a user; the production hasher costs ~0.2 s a password."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

ADMIN_MODELS = [
    "registry_registeredmodel",
    "registry_modelversion",
    "registry_modelalias",
    "registry_aliasevent",
    "registry_hardwaretarget",
    "inference_apikey",
]
ADDABLE = [m for m in ADMIN_MODELS if m != "registry_aliasevent"]  # history is written by the services only


@pytest.fixture
def populated(iris_config):
    """Rows on every admin page, so that the changelists render real objects."""
    v1 = ready_version(safetensors_bytes(small_mlp()), iris_config)
    services.alias_set(model=v1.model, alias="production", version=v1, actor="user:admin")
    from inference.keys import api_key_create

    api_key_create(name="listed", model_names=["iris"], rate="10/s")
    return v1


def test_admin_index_renders_for_staff(admin_client):
    response = admin_client.get(reverse("admin:index"))
    assert response.status_code == 200
    content = response.content.decode()
    for url_name in ADMIN_MODELS:
        assert reverse(f"admin:{url_name}_changelist") in content


@pytest.mark.parametrize("url_name", ADMIN_MODELS)
def test_changelists_render(admin_client, populated, url_name):
    response = admin_client.get(reverse(f"admin:{url_name}_changelist"))
    assert response.status_code == 200
    assert response.context["cl"].result_count >= 1


@pytest.mark.parametrize("url_name", ADDABLE)
def test_add_pages_render(admin_client, url_name):
    response = admin_client.get(reverse(f"admin:{url_name}_add"))
    assert response.status_code == 200
    assert b"<form" in response.content


def test_alias_history_cannot_be_written_through_the_admin(admin_client, populated):
    assert admin_client.get(reverse("admin:registry_aliasevent_add")).status_code == 403
    event = AliasEvent.objects.get()
    response = admin_client.post(reverse("admin:registry_aliasevent_delete", args=[event.pk]), {"post": "yes"})
    assert response.status_code == 403
    assert AliasEvent.objects.filter(pk=event.pk).exists()


def test_change_pages_render(admin_client, populated):
    version = populated
    pages = [
        reverse("admin:registry_registeredmodel_change", args=[version.model.pk]),
        reverse("admin:registry_modelversion_change", args=[version.pk]),
        reverse("admin:registry_modelalias_change", args=[ModelAlias.objects.get().pk]),
        reverse("admin:registry_hardwaretarget_change", args=[HardwareTarget.objects.get(name="cpu").pk]),
        reverse("admin:inference_apikey_change", args=[APIKey.objects.get().pk]),
    ]
    for url in pages:
        assert admin_client.get(url).status_code == 200, url
    # a version's page shows what it is, read-only
    content = admin_client.get(pages[1]).content.decode()
    assert version.sha256 in content
    assert "registry.architectures.MLP" in content


def test_code_format_warning_is_on_the_upload_form(admin_client):
    content = admin_client.get(reverse("admin:registry_modelversion_add")).content.decode()
    assert "runs on this server" in content
    assert "INFERENCE_ALLOW_CODE_ARTIFACTS is on (now: off)" in content


@pytest.mark.parametrize("url_name", ["admin:index", *[f"admin:{m}_changelist" for m in ADMIN_MODELS]])
def test_anonymous_is_sent_to_login(client, url_name):
    url = reverse(url_name)
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_non_staff_is_sent_to_login(client, django_user_model):
    user = django_user_model.objects.create_user("bob", password="pw-bob-12345")
    client.force_login(user)
    for url in [reverse("admin:index"), reverse("admin:registry_modelversion_add")]:
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))
    # and cannot upload
    response = client.post(reverse("admin:registry_modelversion_add"), upload_form(safetensors_bytes(small_mlp())))
    assert response.status_code == 302
    assert ModelVersion.objects.count() == 0


def test_staff_without_permissions_is_refused(client, django_user_model):
    user = django_user_model.objects.create_user("carol", password="pw-carol-12345", is_staff=True)
    client.force_login(user)
    assert client.get(reverse("admin:registry_modelversion_add")).status_code == 403
    assert client.get(reverse("admin:inference_apikey_add")).status_code == 403


# --- Uploading a version ---------------------------------------------------------------------


def upload_form(data: bytes, **changes) -> dict:
    form = {
        "model_name": "iris",
        "artifact_file": SimpleUploadedFile("iris.safetensors", data, content_type="application/octet-stream"),
        "format": "safetensors",
        "architecture": IRIS_CONFIG["architecture"],
        "architecture_args": json.dumps(IRIS_CONFIG["architecture_args"]),
        "inputs": json.dumps(IRIS_CONFIG["inputs"]),
        "outputs": json.dumps(IRIS_CONFIG["outputs"]),
        "preprocess": "[]",
        "postprocess": json.dumps([{"step": "softmax"}]),
        "example": json.dumps([5.1, 3.5, 1.4, 0.2]),
        "max_batch_size": "16",
        "max_batch_delay_ms": "3",
        "max_queue_size": "100",
        "hardware": "cpu",
        "aliases": "production, staging",
    }
    form.update(changes)
    return form


def test_upload_a_version_through_the_admin(admin_client, admin_user):
    weights = safetensors_bytes(small_mlp())
    response = admin_client.post(reverse("admin:registry_modelversion_add"), upload_form(weights))
    assert response.status_code == 302, response.content.decode()[:3000]
    assert response["Location"] == reverse("admin:registry_modelversion_changelist")
    version = ModelVersion.objects.get()
    assert (version.model.name, version.version, version.status) == ("iris", 1, ModelVersion.Status.READY)
    assert version.created_by == admin_user
    assert (version.max_batch_size, version.max_batch_delay_ms, version.max_queue_size) == (16, 3.0, 100)
    assert version.postprocess == [{"step": "softmax"}]
    assert version.example == [5.1, 3.5, 1.4, 0.2]
    with version.artifact.open("rb") as fh:
        assert fh.read() == weights
    aliases = dict(ModelAlias.objects.values_list("name", "version_id"))
    assert aliases == {"production": version.pk, "staging": version.pk}
    assert set(AliasEvent.objects.values_list("actor", flat=True)) == {"user:admin"}


def test_a_bad_artifact_re_renders_the_form_and_creates_nothing(admin_client):
    data = safetensors_bytes(small_mlp())
    response = admin_client.post(reverse("admin:registry_modelversion_add"), upload_form(data[: len(data) // 2]))
    assert response.status_code == 200
    errors = " ".join(response.context["adminform"].form.non_field_errors())
    assert "Validation failed" in errors and "safetensors" in errors
    assert "Validation failed" in response.content.decode()
    assert ModelVersion.objects.count() == 0
    assert RegisteredModel.objects.count() == 0
    assert ModelAlias.objects.count() == 0
    assert stored_files(django_settings.MEDIA_ROOT) == []


def test_a_bad_config_re_renders_the_form(admin_client):
    response = admin_client.post(
        reverse("admin:registry_modelversion_add"),
        upload_form(safetensors_bytes(small_mlp()), inputs=json.dumps([{"name": "input", "datatype": "FP32", "shape": [-4]}])),
    )
    assert response.status_code == 200
    assert "inputs[0].shape[0]" in " ".join(response.context["adminform"].form.non_field_errors())
    response = admin_client.post(reverse("admin:registry_modelversion_add"),
                                 upload_form(safetensors_bytes(small_mlp()), inputs="[not json"))
    assert response.status_code == 200
    assert "inputs" in response.context["adminform"].form.errors
    assert ModelVersion.objects.count() == 0


def test_code_upload_needs_the_switch_and_the_permission(admin_client, client, django_user_model, settings):
    from django.contrib.auth.models import Permission

    from tests.conftest import torchscript_bytes

    data = torchscript_bytes(small_mlp())
    form = dict(format="torchscript", architecture="", architecture_args="{}", aliases="")
    response = admin_client.post(reverse("admin:registry_modelversion_add"), upload_form(data, **form))
    assert response.status_code == 200
    assert "code artifacts are disabled" in " ".join(response.context["adminform"].form.non_field_errors())

    settings.INFERENCE_ALLOW_CODE_ARTIFACTS = True
    staff = django_user_model.objects.create_user("dave", password="pw-dave-12345", is_staff=True)
    staff.user_permissions.add(*Permission.objects.filter(codename__in=["add_modelversion", "view_modelversion"]))
    client.force_login(staff)
    response = client.post(reverse("admin:registry_modelversion_add"), upload_form(data, **form))
    assert response.status_code == 200
    assert "permission" in " ".join(response.context["adminform"].form.non_field_errors())
    assert ModelVersion.objects.count() == 0

    staff.user_permissions.add(Permission.objects.get(codename="upload_code_artifact"))
    staff = django_user_model.objects.get(pk=staff.pk)  # drop the permission cache
    client.force_login(staff)
    response = client.post(reverse("admin:registry_modelversion_add"), upload_form(data, **form))
    assert response.status_code == 302
    assert ModelVersion.objects.get().format == "torchscript"


# --- Aliases -----------------------------------------------------------------------------------


def test_move_an_alias_through_the_change_form(admin_client, iris_config):
    v1 = ready_version(safetensors_bytes(small_mlp()), iris_config)
    v2 = ready_version(safetensors_bytes(small_mlp(seed=1)), iris_config)
    alias = services.alias_set(model=v1.model, alias="production", version=v1, actor="system")
    url = reverse("admin:registry_modelalias_change", args=[alias.pk])
    response = admin_client.post(url, {"model": v1.model.pk, "name": "production", "version": v2.pk})
    assert response.status_code == 302, response.content.decode()[:3000]
    assert ModelAlias.objects.get(pk=alias.pk).version_id == v2.pk
    event = AliasEvent.objects.order_by("-id").first()
    assert (event.alias, event.action, event.from_version, event.to_version, event.actor) == (
        "production", "set", 1, 2, "user:admin",
    )
    assert AliasEvent.objects.count() == 2


def test_add_and_delete_an_alias_through_the_admin(admin_client, iris_config):
    v1 = ready_version(safetensors_bytes(small_mlp()), iris_config)
    response = admin_client.post(
        reverse("admin:registry_modelalias_add"), {"model": v1.model.pk, "name": "staging", "version": v1.pk}
    )
    assert response.status_code == 302
    alias = ModelAlias.objects.get(name="staging")
    response = admin_client.post(reverse("admin:registry_modelalias_delete", args=[alias.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not ModelAlias.objects.exists()
    assert list(AliasEvent.objects.order_by("id").values_list("action", "from_version", "to_version", "actor")) == [
        ("set", None, 1, "user:admin"),
        ("delete", 1, None, "user:admin"),
    ]


def test_alias_form_refuses_a_version_that_is_not_ready(admin_client, iris_config):
    from tests.helpers import register

    pending = register(safetensors_bytes(small_mlp()), iris_config, validate=False)
    response = admin_client.post(
        reverse("admin:registry_modelalias_add"), {"model": pending.model.pk, "name": "production", "version": pending.pk}
    )
    assert response.status_code == 200
    assert "version" in response.context["adminform"].form.errors
    assert not ModelAlias.objects.exists() and not AliasEvent.objects.exists()


def test_alias_form_refuses_another_models_version(admin_client, iris_config):
    iris = ready_version(safetensors_bytes(small_mlp()), iris_config)
    wine = ready_version(safetensors_bytes(small_mlp()), iris_config, model_name="wine")
    response = admin_client.post(
        reverse("admin:registry_modelalias_add"), {"model": iris.model.pk, "name": "production", "version": wine.pk}
    )
    assert response.status_code == 200
    assert "not a version of iris" in " ".join(response.context["adminform"].form.non_field_errors())
    assert not ModelAlias.objects.exists() and not AliasEvent.objects.exists()


def test_archive_action_refuses_an_aliased_version(admin_client, populated):
    version = populated
    response = admin_client.post(
        reverse("admin:registry_modelversion_changelist"),
        {"action": "archive", "_selected_action": [version.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert any("production" in str(m) for m in get_messages(response.wsgi_request))
    version.refresh_from_db()
    assert version.archived is False


# --- API keys ------------------------------------------------------------------------------------


def test_create_an_api_key_through_the_admin(admin_client, admin_user, populated):
    response = admin_client.post(
        reverse("admin:inference_apikey_add"),
        {"name": "partner", "scope": "infer", "allowed_models": [populated.model.pk], "rate": "50/s", "expiry_date": ""},
        follow=True,
    )
    assert response.status_code == 200
    messages = [str(m) for m in response.context["messages"]]
    shown = [re.search(r"The API key for partner is: (\S+?)\. ", m) for m in messages]
    (plain,) = [m.group(1) for m in shown if m]
    key = APIKey.objects.get_from_key(plain)
    assert (key.name, key.scope, key.rate, key.created_by) == ("partner", "infer", "50/s", admin_user)
    assert list(key.allowed_models.values_list("name", flat=True)) == ["iris"]
    # stored hashed: the secret part is in no column
    secret = plain.partition(".")[2]
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {connection.ops.quote_name(APIKey._meta.db_table)}")  # noqa: S608
        for row in cursor.fetchall():
            assert all(secret not in str(value) for value in row)
    # shown once
    again = admin_client.get(reverse("admin:inference_apikey_changelist"))
    assert plain not in again.content.decode()
    page = admin_client.get(reverse("admin:inference_apikey_change", args=[key.pk]))
    assert secret not in page.content.decode()


def test_admin_refuses_a_bad_rate(admin_client):
    response = admin_client.post(reverse("admin:inference_apikey_add"), {"name": "bad", "scope": "infer", "rate": "fast"})
    assert response.status_code == 200
    assert "rate" in response.context["adminform"].form.errors
    assert not APIKey.objects.exists()


def test_upload_an_onnx_version_through_the_admin(admin_client):
    """Format onnx: no architecture, no code permission needed; a fixed batch dimension is refused with the reason."""
    from tests.onnx_models import torch_onnx_bytes

    url = reverse("admin:registry_modelversion_add")
    onnx_form = dict(format="onnx", architecture="", architecture_args="{}", aliases="",
                     model_name="mlp-onnx")
    response = admin_client.post(url, upload_form(torch_onnx_bytes(dynamic=False), **onnx_form,
                                 artifact_file=SimpleUploadedFile("m.onnx", torch_onnx_bytes(dynamic=False))))
    assert response.status_code == 200
    assert "dynamic batch dimension" in " ".join(response.context["adminform"].form.non_field_errors())
    response = admin_client.post(url, upload_form(b"", **onnx_form,
                                 artifact_file=SimpleUploadedFile("m.onnx", torch_onnx_bytes())))
    assert response.status_code == 302, response.content.decode()[:3000]
    version = ModelVersion.objects.get()
    assert (version.model.name, version.format, version.status) == ("mlp-onnx", "onnx", ModelVersion.Status.READY)
