"""Admin for the serving side: API keys (the plain key is shown once, at creation)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from rest_framework_api_key.admin import APIKeyModelAdmin
from rest_framework_api_key.models import APIKey as LibraryAPIKey

from .keys import APIKey, key_info_forget

# The library registers its own concrete key model; this platform uses its own.
if admin.site.is_registered(LibraryAPIKey):
    admin.site.unregister(LibraryAPIKey)


@admin.register(APIKey)
class APIKeyAdmin(APIKeyModelAdmin):
    list_display = ("prefix", "name", "scope", "rate", "models_list", "created", "expiry_date", "_has_expired", "revoked")
    list_filter = ("scope", "revoked", "created", "expiry_date")
    search_fields = ("name", "prefix")
    filter_horizontal = ("allowed_models",)
    fields = ("name", "scope", "allowed_models", "rate", "expiry_date", "revoked", "prefix", "created")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        fields = (*super().get_readonly_fields(request, obj), "created")
        if obj is not None and obj.revoked:
            fields += ("scope", "allowed_models", "rate")
        return fields

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).prefetch_related("allowed_models")

    def save_model(self, request: HttpRequest, obj: APIKey, form: Any = None, change: bool = False) -> None:
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        key_info_forget(form.instance.prefix)  # allowed models changed after save()

    @admin.display(description="models")
    def models_list(self, obj: APIKey) -> str:
        return ", ".join(m.name for m in obj.allowed_models.all()) or "all"
