"""The admin's security rules: who may let a key upload code artifacts; failed logins throttled."""

from __future__ import annotations

import pytest
from django.contrib.auth.backends import ModelBackend
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


# --- Admin logins ---------------------------------------------------------------------------------

LOGIN = "/admin/login/"
CHECKED: list[str] = []


class CountingBackend(ModelBackend):
    """Django's ModelBackend, counting the passwords it is asked to check."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        CHECKED.append(username)
        return super().authenticate(request, username=username, password=password, **kwargs)


@pytest.fixture
def throttled(settings, django_user_model):
    """A login rate of 3 failures a day (a window no test straddles), passwords counted as checked."""
    settings.INFERENCE_ADMIN_LOGIN_RATE = "3/d"
    settings.AUTHENTICATION_BACKENDS = ["tests.test_admin_security.CountingBackend"]
    CHECKED.clear()
    django_user_model.objects.create_user("root", password="right-password-123", is_staff=True, is_superuser=True)


def login(client, username: str, password: str, address: str = "10.0.0.1"):
    return client.post(LOGIN, {"username": username, "password": password, "next": "/admin/"}, REMOTE_ADDR=address)


def test_failed_logins_from_one_address_are_throttled_without_checking_the_password(client, throttled, caplog):
    for name in ("root", "alice", "bob"):  # three usernames: the address runs out, not a username
        assert login(client, name, "wrong").status_code == 200
    assert len(CHECKED) == 3
    with caplog.at_level("WARNING", logger="inference.admin_login"):
        refused = login(client, "root", "right-password-123")  # even the right password
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) >= 1
    assert "Too many failed logins" in refused.content.decode() and b'name="password"' in refused.content
    assert len(CHECKED) == 3  # the password was never checked
    assert "_auth_user_id" not in client.session
    assert "admin login refused without checking the password" in caplog.text and "right-password" not in caplog.text
    # another address is not throttled
    assert login(client, "root", "right-password-123", address="10.0.0.2").status_code == 302
    assert "_auth_user_id" in client.session


def test_failed_logins_for_one_username_are_throttled_from_any_address(client, throttled):
    for i in range(3):
        assert login(client, "Root", "wrong", address=f"10.1.0.{i}").status_code == 200
    refused = login(client, "root", "right-password-123", address="10.1.0.99")
    assert refused.status_code == 429 and len(CHECKED) == 3
    assert "_auth_user_id" not in client.session


def test_successful_logins_are_not_counted_and_no_rate_means_no_limit(client, throttled, settings):
    for _ in range(4):
        assert login(client, "root", "right-password-123").status_code == 302
        client.logout()
    settings.INFERENCE_ADMIN_LOGIN_RATE = ""
    for _ in range(5):
        assert login(client, "root", "wrong").status_code == 200
    assert login(client, "root", "right-password-123").status_code == 302


def test_behind_the_tls_proxy_the_address_is_the_one_the_proxy_appended(client, throttled, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

    def via_proxy(forwarded_for: str, username: str = "someone"):
        return client.post(LOGIN, {"username": username, "password": "wrong"}, REMOTE_ADDR="10.9.9.9",
                           headers={"X-Forwarded-For": forwarded_for, "X-Forwarded-Proto": "https"}, secure=True)

    for i in range(3):  # a client varying the part of the header it writes itself, and the username
        assert via_proxy(f"192.0.2.{i}, 203.0.113.7", username=f"user-{i}").status_code == 200
    assert via_proxy("198.51.100.1, 203.0.113.7", username="user-9").status_code == 429
    # another client behind the same proxy is not throttled
    assert via_proxy("203.0.113.8", username="someone-else").status_code == 200
