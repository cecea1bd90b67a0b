"""Reads from the registry: which version a request means, what a key may see."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from .models import ModelAlias, ModelVersion, RegisteredModel

DEFAULT_ALIAS = "production"


def model_list(*, names: list[str] | None = None) -> QuerySet[RegisteredModel]:
    """Return models (optionally only `names`) with their versions and aliases prefetched."""
    qs = RegisteredModel.objects.prefetch_related(
        Prefetch("versions", queryset=ModelVersion.objects.select_related("hardware").order_by("-version")),
        Prefetch("aliases", queryset=ModelAlias.objects.select_related("version")),
    )
    if names is not None:
        qs = qs.filter(name__in=names)
    return qs


def version_resolve(*, model: RegisteredModel, ref: str | int | None = None) -> ModelVersion | None:
    """Return the version `ref` names: a number, an alias, or (None) the production alias, else the newest ready one.

    Archived versions are never returned.
    """
    live = ModelVersion.objects.select_related("model", "hardware").filter(model=model, archived=False)
    if ref is None:
        alias = ModelAlias.objects.filter(model=model, name=DEFAULT_ALIAS).values_list("version_id", flat=True).first()
        if alias is not None:
            return live.filter(pk=alias).first()
        return live.filter(status=ModelVersion.Status.READY).order_by("-version").first()
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
        return live.filter(version=int(ref)).first()
    alias = ModelAlias.objects.filter(model=model, name=ref).values_list("version_id", flat=True).first()
    return live.filter(pk=alias).first() if alias is not None else None
