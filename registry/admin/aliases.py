"""Aliases in the admin: the alias list and form (one version per alias; a model's page edits
splits, promotes and rolls back), and the read-only histories."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from .. import services
from ..models import AliasEvent, ModelAlias, ModelVersion, RegistryEvent
from .readonly import ReadOnlyAdmin


class AliasForm(forms.ModelForm):
    class Meta:
        model = ModelAlias
        fields = ["model", "name", "version"]

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        qs = ModelVersion.objects.select_related("model").filter(status=ModelVersion.Status.READY, archived=False)
        if self.instance.pk:
            self.fields["model"].disabled = True
            self.fields["name"].disabled = True
            qs = qs.filter(model=self.instance.model)
        self.fields["version"].queryset = qs
        self.fields["version"].help_text = "Only ready, unarchived versions can take an alias."
        if self.instance.pk and (self.instance.split or self.instance.shadow):
            # This form sets one version (the whole alias, as the API's PUT does): say what saving drops.
            self.fields["version"].help_text += (
                " Saving here points the alias at this one version and removes its split and shadow; to keep "
                "them, edit the alias in the Releases panel of its model's page.")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        model, version = data.get("model"), data.get("version")
        if model and version and version.model_id != model.pk:
            raise ValidationError(f"{version} is not a version of {model}.")
        return data

    def validate_unique(self) -> None:
        # Moving an existing alias is an update through the service, not a duplicate.
        pass


@admin.register(ModelAlias)
class ModelAliasAdmin(admin.ModelAdmin):
    form = AliasForm
    list_display = ("__str__", "model", "name", "version", "updated_at")
    list_filter = ("name", "model")
    search_fields = ("model__name", "name")
    list_select_related = ("model", "version")

    def save_model(self, request: HttpRequest, obj: ModelAlias, form: Any, change: bool) -> None:
        alias = services.alias_set(
            model=obj.model, alias=obj.name, version=obj.version, actor=services.actor_for(user=request.user)
        )
        obj.pk = alias.pk

    def delete_model(self, request: HttpRequest, obj: ModelAlias) -> None:
        services.alias_delete(model=obj.model, alias=obj.name, actor=services.actor_for(user=request.user))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for obj in queryset.select_related("model"):
            self.delete_model(request, obj)


@admin.register(AliasEvent)
class AliasEventAdmin(ReadOnlyAdmin):
    list_display = ("at", "model", "alias", "action", "from_version", "to_version", "actor")
    list_filter = ("action", "alias", "model")
    search_fields = ("model__name", "alias", "actor")
    date_hierarchy = "at"


@admin.register(RegistryEvent)
class RegistryEventAdmin(ReadOnlyAdmin):
    """Read-only history of registry changes other than alias moves (those are in the alias history)."""

    list_display = ("at", "model", "version", "action", "actor", "detail")
    list_filter = ("action", "model")
    search_fields = ("model__name", "actor", "detail")
    list_select_related = ("model",)
    date_hierarchy = "at"

