"""A model's admin page: its fields, versions and histories, and its releases (each alias's split,
editable, with promote and roll back: ``releases``)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from .. import services
from ..models import AliasEvent, ModelAlias, ModelVersion, RegisteredModel, RegistryEvent
from ..selectors import version_number
from .readonly import ReadOnlyInline
from .releases import (
    CHANGE_ALIASES,
    AliasTargetsForm,
    ReleaseFigures,
    alias_panels,
    describe_alias,
    describe_targets,
    form_ids,
)


class VersionInline(ReadOnlyInline):
    model = ModelVersion
    fields = ("link", "format", "status", "hardware", "archived", "created_at")
    show_change_link = False

    @admin.display(description="version")
    def link(self, obj: ModelVersion) -> str:
        return format_html('<a href="{}">v{}</a>', reverse("admin:registry_modelversion_change", args=[obj.pk]), obj.version)


class AliasEventInline(ReadOnlyInline):
    model = AliasEvent
    verbose_name = "alias move"
    verbose_name_plural = "alias history (promotions and rollbacks)"
    fields = ("at", "alias", "action", "from_target", "to_target", "actor")
    max_num = 0

    @admin.display(description="from")
    def from_target(self, obj: AliasEvent) -> str:
        return describe_targets(obj.from_version, obj.from_split, obj.from_shadow)

    @admin.display(description="to")
    def to_target(self, obj: AliasEvent) -> str:
        return describe_targets(obj.to_version, obj.to_split, obj.to_shadow)


class RegistryEventInline(ReadOnlyInline):
    model = RegistryEvent
    verbose_name = "change"
    verbose_name_plural = "history (models created, versions registered, validated, archived)"
    fields = ("at", "action", "version", "actor", "detail")
    max_num = 0


@admin.register(RegisteredModel)
class RegisteredModelAdmin(admin.ModelAdmin):
    list_display = ("name", "task", "version_count", "alias_list", "updated_at")
    search_fields = ("name", "description", "task")
    list_filter = ("task",)
    fields = ("name", "description", "task", "capture_payloads", "created_at", "updated_at")
    readonly_fields = ("created_at", "updated_at")
    inlines = [VersionInline, AliasEventInline, RegistryEventInline]  # the aliases: the releases panel

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).annotate(n_versions=Count("versions")).prefetch_related("aliases__version")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return (*self.readonly_fields, "name") if obj else self.readonly_fields

    @admin.display(description="versions", ordering="n_versions")
    def version_count(self, obj: RegisteredModel) -> int:
        return obj.n_versions

    @admin.display(description="aliases")
    def alias_list(self, obj: RegisteredModel) -> str:
        return ", ".join(f"{a.name} → {describe_alias(a)}" for a in obj.aliases.all()) or "—"

    # ---- releases ------------------------------------------------------------------------------------

    def get_urls(self) -> list:
        view, prefix = self.admin_site.admin_view, f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path("<path:object_id>/aliases/set/", view(self.alias_set_view), name=f"{prefix}_alias_set"),
            path("<path:object_id>/aliases/promote/", view(self.alias_promote_view), name=f"{prefix}_alias_promote"),
            path("<path:object_id>/aliases/roll-back/", view(self.alias_roll_back_view), name=f"{prefix}_alias_roll_back"),
            *super().get_urls(),
        ]

    def release_figures(self, request: HttpRequest, model: RegisteredModel) -> ReleaseFigures | None:
        """The figures that compare an alias's versions side by side: none here (the registry keeps no
        request figures); the monitoring app's subclass reads them from its per-minute rollups."""
        return None

    def release_context(self, request: HttpRequest, model: RegisteredModel) -> dict[str, Any]:
        may_change = request.user.has_perm(CHANGE_ALIASES)
        figures = self.release_figures(request, model)
        return {
            "releases": alias_panels(model=model, may_change=may_change, figures=figures),
            "release_may_change": may_change,
            "release_new_form": AliasTargetsForm(model=model, auto_id=form_ids(None)) if may_change else None,
            "release_figures": figures,
        }

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra_context = dict(extra_context or {})
        model = self.get_object(request, unquote(object_id))
        if model is not None:
            extra_context.update(self.release_context(request, model))
        return super().change_view(request, object_id, form_url, extra_context)

    def _release_model(self, request: HttpRequest, object_id: str) -> RegisteredModel:
        """The model of a release view, for a user who may change aliases (else 403: a user who
        may only view sees no form and no button, and a forged POST changes nothing)."""
        model = self.get_object(request, unquote(object_id))
        if model is None:
            raise Http404(f"No model with id {object_id!r}.")
        if not self.has_view_or_change_permission(request, model) or not request.user.has_perm(CHANGE_ALIASES):
            raise PermissionDenied
        return model

    def _back(self, model: RegisteredModel, alias: str = "") -> HttpResponseRedirect:
        url = reverse("admin:registry_registeredmodel_change", args=[model.pk], current_app=self.admin_site.name)
        return HttpResponseRedirect(f"{url}#{'alias-' + alias if alias else 'releases'}")

    def alias_set_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Edit an alias's split (or create an alias): its own page, which shows the form's errors;
        saved through ``services.alias_set``, then back to the model's page."""
        model = self._release_model(request, object_id)
        source = request.POST if request.method == "POST" else request.GET
        name = source.get("name", "")
        creating = "new" in source
        alias = None if creating else ModelAlias.objects.filter(model=model, name=name).select_related("version").first()
        if not creating and alias is None:
            raise Http404(f"{model.name} has no alias {name!r}.")
        ids = form_ids(None if creating else name)
        if request.method != "POST":
            form = AliasTargetsForm(model=model, alias=alias, auto_id=ids)
        else:
            form = AliasTargetsForm(request.POST, model=model, alias=alias, auto_id=ids)
            if form.is_valid():
                try:
                    services.alias_set(model=model, alias=form.cleaned_data["name"], split=form.cleaned_data["split"],
                                       shadow=form.cleaned_data["shadow"], actor=services.actor_for(user=request.user))
                except ValidationError as exc:
                    form.add_error(None, exc)
                else:
                    saved = ModelAlias.objects.select_related("version").get(model=model, name=form.cleaned_data["name"])
                    self.message_user(request, f"Saved: {saved} → {describe_alias(saved)}.", messages.SUCCESS)
                    return self._back(model, saved.name)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Alias {model.name}@{name}" if alias else f"New alias of {model.name}",
            "opts": self.opts,
            "original": model,
            "alias": alias,
            "alias_now": describe_alias(alias) if alias else "",
            "form": form,
            "creating": creating,
            "back_url": self._back(model, name if alias else "").url,
        }
        return TemplateResponse(request, "admin/registry/registeredmodel/alias_form.html", context)

    def alias_promote_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._release_action(request, object_id, promote=True)

    def alias_roll_back_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        return self._release_action(request, object_id, promote=False)

    def _release_action(self, request: HttpRequest, object_id: str, *, promote: bool) -> HttpResponse:
        model = self._release_model(request, object_id)
        if request.method != "POST":
            return self._back(model)
        name = request.POST.get("name", "")
        actor = services.actor_for(user=request.user)
        try:
            if promote:
                number = version_number(request.POST.get("version", ""))
                if number is None:
                    raise ValidationError("Say which version to promote (a version number).")
                alias = services.alias_promote(model=model, alias=name, version_number=number, actor=actor)
                done = "Promoted"
            else:
                alias = services.alias_roll_back(model=model, alias=name, actor=actor)
                done = "Rolled back"
        except ValidationError as exc:
            self.message_user(request, "; ".join(exc.messages), messages.ERROR)
            return self._back(model, name)
        alias.refresh_from_db()
        self.message_user(request, f"{done}: {alias} → {describe_alias(alias)}.", messages.SUCCESS)
        return self._back(model, name)
