"""Reads from the registry: which version a request means, what a key may see."""

from __future__ import annotations

import re
from typing import Any

from django.db.models import Prefetch, QuerySet

from .models import NAME_PATTERN, ModelAlias, ModelVersion, RegisteredModel

DEFAULT_ALIAS = "production"
_NAME_RE = re.compile(NAME_PATTERN)
# Version numbers fit a PositiveIntegerField everywhere.
MAX_VERSION = 2**31 - 1


def is_registry_name(value: Any) -> bool:
    """Whether `value` can be the name of a model or an alias (else no row can match it: a lookup
    is skipped, so that a name with a NUL or 10 kB of text never reaches the database)."""
    return isinstance(value, str) and _NAME_RE.fullmatch(value) is not None


def version_number(ref: Any) -> int | None:
    """Return the version number `ref` means (an int, or a string of ASCII digits), or None when it is
    not one that can exist (a bool, out of range, "²")."""
    if isinstance(ref, bool):
        return None
    if isinstance(ref, str):
        if not (ref.isascii() and ref.isdigit()) or len(ref) > 10:
            return None
        ref = int(ref)
    if isinstance(ref, int) and 1 <= ref <= MAX_VERSION:
        return ref
    return None


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
        number = version_number(ref)
        return live.filter(version=number).first() if number is not None else None
    if not is_registry_name(ref):
        return None
    alias = ModelAlias.objects.filter(model=model, name=ref).values_list("version_id", flat=True).first()
    return live.filter(pk=alias).first() if alias is not None else None


def targets_resolve(*, model: RegisteredModel, ref: str | int | None = None) -> list[tuple[ModelVersion, int]]:
    """Return the (version, weight) pairs `ref` names: an alias's split (weights summing to 100, its primary
    first), else the one version ``version_resolve`` returns at 100; [] if none. A version of a split that
    is no longer live is left out (the weights of the rest then sum to less than 100)."""
    if ref is not None and not isinstance(ref, int) and not (isinstance(ref, str) and ref.isdigit()):
        if not is_registry_name(ref):
            return []
        row = ModelAlias.objects.filter(model=model, name=ref).values_list("split", flat=True).first()
        if row:
            weights = {int(t["version"]): int(t["weight"]) for t in row}
            live = {v.version: v for v in ModelVersion.objects.select_related("model", "hardware").filter(
                model=model, archived=False, version__in=list(weights))}
            return [(live[n], w) for n, w in weights.items() if n in live]
    elif ref is None:
        row = ModelAlias.objects.filter(model=model, name=DEFAULT_ALIAS).values_list("split", flat=True).first()
        if row:
            return targets_resolve(model=model, ref=DEFAULT_ALIAS)
    version = version_resolve(model=model, ref=ref)
    return [(version, 100)] if version is not None else []


def shadow_resolve(*, model: RegisteredModel, ref: str | int | None = None) -> tuple[ModelVersion, int] | None:
    """Return (version, percent) of the shadow of the alias `ref` names (None: the production alias), or None:
    a version number has no shadow, nor an alias without one or whose shadow is no longer live."""
    if ref is None:
        ref = DEFAULT_ALIAS
    elif isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()) or not is_registry_name(ref):
        return None
    shadow = ModelAlias.objects.filter(model=model, name=ref).values_list("shadow", flat=True).first()
    if not shadow:
        return None
    version = ModelVersion.objects.select_related("model", "hardware").filter(
        model=model, archived=False, version=int(shadow["version"])).first()
    return (version, int(shadow["percent"])) if version is not None else None


def alias_candidates(alias: ModelAlias) -> list[int]:
    """The version numbers `alias` could promote: each version of its split other than the primary,
    then its shadow's."""
    numbers = [n for n, _ in alias.targets if n != alias.version.version] if alias.split else []
    shadow = alias.shadow_target
    return numbers + [shadow[0]] if shadow is not None and shadow[0] not in numbers else numbers
