"""The admin site: Django's, with failed logins throttled (``inference_platform.login_throttle``)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse

from . import login_throttle


class ThrottledAuthenticationForm(AdminAuthenticationForm):
    """The admin's login form; refused before the password is checked when the address or the
    username is out of failed logins, and every failed login counted."""

    def clean(self) -> dict[str, Any]:
        username = str(self.data.get("username", ""))
        refusal = login_throttle.refusal(self.request, username)
        if refusal is not None:
            self.request.login_refusal = refusal
            raise ValidationError(refusal.message, code="throttled")
        try:
            return super().clean()
        except ValidationError:  # wrong password, unknown user, inactive or not staff
            login_throttle.record_failure(self.request, username)
            raise


class PlatformAdminSite(admin.AdminSite):
    login_form = ThrottledAuthenticationForm

    def login(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        response = super().login(request, extra_context)
        refusal = getattr(request, "login_refusal", None)
        if refusal is not None:  # the login page, saying why, as a 429
            response.status_code = 429
            response["Retry-After"] = str(refusal.retry_after)
        return response
