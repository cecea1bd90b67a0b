"""Writes of aliases: point one at a version, a weighted split or with a shadow; promote, roll back, delete."""

from __future__ import annotations

from collections.abc import Sequence

from django.core.exceptions import ValidationError
from django.db import transaction

from ..models import AliasEvent, ModelAlias, ModelVersion, RegisteredModel
from ..selectors import alias_candidates
from ..signals import announce_change
from ..splits import shadow_check, split_check
from .common import check_name


@transaction.atomic
def alias_set(*, model: RegisteredModel, alias: str, version: ModelVersion | None = None,
              split: Sequence[tuple[ModelVersion, int]] | None = None,
              shadow: tuple[ModelVersion, int] | None = None, actor: str = "system") -> ModelAlias:
    """Point `model@alias` at `version` (promote or roll back), or at a weighted `split` of versions
    (a canary: ``registry.splits``), with an optional `shadow` (version, percent) that gets a copy of
    that share of the requests; record the move (with split and shadow) in the alias history.

    A set replaces the whole alias (PUT): without `shadow` the alias has none afterwards. Setting
    what the alias already is records nothing."""
    if (version is None) == (split is None):
        raise ValidationError("Point an alias at a version or at a split.", code="invalid_split")
    ModelAlias._meta.get_field("name").run_validators(alias)
    check_name(alias, "alias")
    # Lock the model row (alias moves and archiving of one model take turns on it), then judge
    # the versions as they are now, not as the caller read them.
    RegisteredModel.objects.select_for_update().filter(pk=model.pk).first()
    stored: list[dict[str, int]] | None = None
    if split is not None:
        stored = split_check(model=model, split=split)
        if len(stored) == 1:
            stored = None  # one version at 100 % is a plain alias
    version = split[0][0] if split is not None else version
    if version is None:  # unreachable: checked above (for type checkers)
        raise ValidationError("Point an alias at a version or at a split.", code="invalid_split")
    if version.model_id != model.pk:
        raise ValidationError(f"{version} is not a version of {model.name}.", code="wrong_model")
    version.refresh_from_db(fields=["status", "status_error", "archived"])
    if version.status != ModelVersion.Status.READY:
        raise ValidationError(
            f"{version} is {version.status}, not ready: only a validated version can take an alias.",
            code="not_ready",
        )
    if version.archived:
        raise ValidationError(f"{version} is archived.", code="archived")
    stored_shadow: dict[str, int] | None = None
    if shadow is not None:
        targets = [v for v, _ in split] if split is not None else [version]
        stored_shadow = shadow_check(model=model, shadow=shadow, targets=targets)
    current = ModelAlias.objects.filter(model=model, name=alias).select_related("version").first()
    if (current is not None and current.version_id == version.pk and (current.split or None) == stored
            and (current.shadow or None) == stored_shadow):
        return current
    previous = current.version.version if current is not None else None
    previous_split = current.split if current is not None else None
    previous_shadow = current.shadow if current is not None else None
    if current is None:
        current = ModelAlias.objects.create(model=model, name=alias, version=version, split=stored,
                                            shadow=stored_shadow)
    else:
        current.version, current.split, current.shadow = version, stored, stored_shadow
        current.save(update_fields=["version", "split", "shadow", "updated_at"])
    AliasEvent.objects.create(
        model=model, alias=alias, action=AliasEvent.Action.SET, from_version=previous,
        to_version=version.version, from_split=previous_split, to_split=stored, from_shadow=previous_shadow,
        to_shadow=stored_shadow, actor=actor,
    )
    announce_change()
    return current


def _alias_locked(model: RegisteredModel, alias: str) -> ModelAlias:
    """Lock the model row (one alias change at a time, see alias_set) and return `model@alias` as it is now."""
    RegisteredModel.objects.select_for_update().filter(pk=model.pk).first()
    current = ModelAlias.objects.filter(model=model, name=alias).select_related("version").first()
    if current is None:
        raise ValidationError(f"{model.name} has no alias {alias!r}.", code="no_alias")
    return current


def _version_numbered(model: RegisteredModel, number: int) -> ModelVersion:
    version = ModelVersion.objects.filter(model=model, version=number).select_related("model").first()
    if version is None:
        raise ValidationError(f"{model.name} has no version {number}.", code="unknown_version")
    return version


@transaction.atomic
def alias_promote(*, model: RegisteredModel, alias: str, version_number: int, actor: str = "system") -> ModelAlias:
    """Send all of `model@alias`'s traffic to its candidate `version_number` (a version of its split
    other than the primary, or its shadow): split and shadow are cleared. Recorded in the alias
    history like any move.

    Refused (ValidationError, nothing changed) for an alias without a split or a shadow, or a version
    that is not one of its candidates: pointing an alias at any other version is a move, not a promotion."""
    current = _alias_locked(model, alias)
    candidates = alias_candidates(current)
    if version_number not in candidates:
        offered = ", ".join(f"v{n}" for n in candidates) or "none: it points at one version, without a shadow"
        raise ValidationError(
            f"v{version_number} is not a candidate of {model.name}@{alias} (its candidates: {offered}).",
            code="not_a_candidate",
        )
    return alias_set(model=model, alias=alias, version=_version_numbered(model, version_number), actor=actor)


@transaction.atomic
def alias_roll_back(*, model: RegisteredModel, alias: str, actor: str = "system") -> ModelAlias:
    """Point `model@alias` back where it pointed before its latest move (the ``from_*`` of its latest
    AliasEvent: one version or a split, and the shadow it had), recorded as a move of its own (so rolling back twice
    returns to where the first roll back started).

    Refused (ValidationError, nothing changed) when the alias has no previous target (its latest
    move created it) or a previous version is no longer ready or is archived."""
    current = _alias_locked(model, alias)
    last = AliasEvent.objects.filter(model=model, alias=alias).order_by("-at", "-id").first()
    if last is None or last.from_version is None:
        raise ValidationError(f"{model.name}@{alias} has no previous target to roll back to.",
                              code="no_previous_target")
    try:
        shadow = None
        if last.from_shadow:
            shadow = (_version_numbered(model, int(last.from_shadow["version"])), int(last.from_shadow["percent"]))
        if last.from_split:
            split = [(_version_numbered(model, int(t["version"])), int(t["weight"])) for t in last.from_split]
            return alias_set(model=model, alias=alias, split=split, shadow=shadow, actor=actor)
        return alias_set(model=model, alias=alias, version=_version_numbered(model, last.from_version),
                         shadow=shadow, actor=actor)
    except ValidationError as exc:
        raise ValidationError(f"Cannot roll back {current} to its previous target: {'; '.join(exc.messages)}",
                              code=getattr(exc, "code", None) or "invalid") from exc


@transaction.atomic
def alias_delete(*, model: RegisteredModel, alias: str, actor: str = "system") -> bool:
    """Remove `model@alias`; return whether it existed. The removal is recorded."""
    RegisteredModel.objects.select_for_update().filter(pk=model.pk).first()  # one alias change at a time
    current = ModelAlias.objects.select_for_update().filter(model=model, name=alias).select_related("version").first()
    if current is None:
        return False
    AliasEvent.objects.create(
        model=model, alias=alias, action=AliasEvent.Action.DELETE, from_version=current.version.version,
        from_split=current.split, from_shadow=current.shadow, to_version=None, actor=actor,
    )
    current.delete()
    announce_change()
    return True
