"""The admin's security rules: who may let a key upload code artifacts; throttled logins."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.core.exceptions import PermissionDenied
from django.test import RequestFactory
from django.urls import reverse

from inference.admin import APIKeyAdmin
from inference.keys import APIKey, api_key_create

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def key_staff(django_user_model, username: str, *, code: bool):
    """A staff user who may add, change and view API keys; with `code`, upload code artifacts too."""
    user = django_user_model.objects.create_user(username, password=f"pw-{username}-12345", is_staff=True)
    codenames = ["add_apikey", "change_apikey", "view_apikey"] + (["upload_code_artifact"] if code else [])
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
    return django_user_model.objects.get(pk=user.pk)  # no permission cache


def change_form(key: APIKey, **changes) -> dict:
    data = {"name": key.name, "scope": key.scope, "rate": key.rate, "expiry_date": "", "allowed_models": []}
    return data | changes


def test_staff_without_the_code_permission_cannot_let_a_key_upload_code(client, django_user_model):
    client.force_login(key_staff(django_user_model, "erin", code=False))
    key, _ = api_key_create(name="ops", scope=APIKey.Scope.MANAGE)
    url = reverse("admin:inference_apikey_change", args=[key.pk])
    page = client.get(url)
    assert page.status_code == 200
    assert b'name="may_upload_code"' not in page.content  # shown read-only, not an input

    # a forged POST with the flag: the rest of the change is saved, the flag is not
    response = client.post(url, change_form(key, name="ops-renamed", may_upload_code="on"))
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.name == "ops-renamed" and key.may_upload_code is False

    response = client.post(reverse("admin:inference_apikey_add"),
                           {"name": "forged", "scope": "manage", "rate": "", "expiry_date": "", "may_upload_code": "on"})
    assert response.status_code == 302
    assert APIKey.objects.get(name="forged").may_upload_code is False


def test_the_save_path_refuses_the_flag_from_a_user_without_the_permission(django_user_model):
    """Whatever the form held: the admin's save refuses a change of the flag without the permission."""
    admin = APIKeyAdmin(APIKey, None)
    request = RequestFactory().post("/")
    request.user = key_staff(django_user_model, "frank", code=False)
    key, _ = api_key_create(name="ops", scope=APIKey.Scope.MANAGE)
    key.may_upload_code = True
    with pytest.raises(PermissionDenied, match="upload_code_artifact"):
        admin.save_model(request, key, form=None, change=True)
    assert APIKey.objects.get(pk=key.pk).may_upload_code is False
    granted, _ = api_key_create(name="granted", scope=APIKey.Scope.MANAGE, may_upload_code=True)
    granted.may_upload_code = False  # taking the right away is a change of the flag too
    with pytest.raises(PermissionDenied):
        admin.save_model(request, granted, form=None, change=True)
    granted.may_upload_code = True
    granted.name = "granted-renamed"  # other changes to a key that holds the flag are fine
    admin.save_model(request, granted, form=None, change=True)
    assert APIKey.objects.get(pk=granted.pk).name == "granted-renamed"


def test_staff_with_the_code_permission_may_let_a_key_upload_code(client, django_user_model):
    client.force_login(key_staff(django_user_model, "grace", code=True))
    key, _ = api_key_create(name="ops", scope=APIKey.Scope.MANAGE)
    url = reverse("admin:inference_apikey_change", args=[key.pk])
    assert b'name="may_upload_code"' in client.get(url).content
    response = client.post(url, change_form(key, may_upload_code="on"))
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.may_upload_code is True
