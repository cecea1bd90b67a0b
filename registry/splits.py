"""Weighted aliases (canaries): the rules a split must follow before an alias takes it.

A split is a list of (version, weight): integer weights from 1 to 100 that sum to 100, each
version at most once, every version ready, not archived and of the same input schema (a client
of the alias must not see its request refused by one version and served by another). The first
entry is the alias's primary target (``ModelAlias.version``). Which version answers a request is
decided on the serving side (``inference.routing``); the registry only stores the split.

A shadow (``shadow_check``) is one more version that receives a copy of a share of the alias's
requests (1..100 percent) off the request path, to be compared with the answers clients got: it
must be ready, not archived, take the same inputs as the alias's primary and not be one of the
alias's own targets (a version that answers clients cannot also shadow them).
"""

from __future__ import annotations

from collections.abc import Sequence

from django.core.exceptions import ValidationError

from .models import ModelAlias, ModelVersion, RegisteredModel

MAX_TARGETS = 10
TOTAL_WEIGHT = 100


def servable_check(version: ModelVersion, *, code: str, not_ready: str, archived: str) -> None:
    """Refuse `version` as it is in the database now unless it is ready and not archived (codes
    ``<code>_not_ready``, ``<code>_archived``; the messages end with `not_ready` / `archived`)."""
    version.refresh_from_db(fields=["status", "archived", "input_schema"])
    if version.status != ModelVersion.Status.READY:
        raise ValidationError(f"{version} is {version.status}, not ready: {not_ready}", code=f"{code}_not_ready")
    if version.archived:
        raise ValidationError(f"{version} is archived: {archived}", code=f"{code}_archived")


def split_check(*, model: RegisteredModel, split: Sequence[tuple[ModelVersion, int]]) -> list[dict[str, int]]:
    """Return the split as stored (``[{"version": N, "weight": W}, ...]``) or raise ValidationError
    (code ``invalid_split``: the weights or the list; ``split_not_ready``, ``split_archived``,
    ``split_schema_mismatch``: a version). Judges the versions as they are in the database now."""
    if not split or len(split) > MAX_TARGETS:
        raise ValidationError(f"A split lists 1 to {MAX_TARGETS} versions.", code="invalid_split")
    numbers = [version.version for version, _ in split]
    if len(set(numbers)) != len(numbers):
        raise ValidationError(f"A split lists each version once (got versions {numbers}).", code="invalid_split")
    for version, weight in split:
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= TOTAL_WEIGHT:
            raise ValidationError(f"The weight of version {version.version} must be an integer from 1 to 100 "
                                  f"(got {weight!r}).", code="invalid_split")
    total = sum(weight for _, weight in split)
    if total != TOTAL_WEIGHT:
        raise ValidationError(f"The weights of a split sum to 100 (they sum to {total}).", code="invalid_split")
    schema = None
    for version, _ in split:
        if version.model_id != model.pk:
            raise ValidationError(f"{version} is not a version of {model.name}.", code="invalid_split")
        servable_check(version, code="split", not_ready="only validated versions can be in a split.",
                       archived="it cannot be in a split.")
        if schema is None:
            schema = version.input_schema
        elif version.input_schema != schema:
            raise ValidationError(
                f"{version} takes different inputs than v{split[0][0].version}: every version of a split "
                "must have the same input schema (one client's request must fit each).",
                code="split_schema_mismatch")
    return [{"version": version.version, "weight": weight} for version, weight in split]


MAX_SHADOW_PERCENT = 100


def shadow_check(*, model: RegisteredModel, shadow: tuple[ModelVersion, int],
                 targets: Sequence[ModelVersion]) -> dict[str, int]:
    """Return the shadow as stored (``{"version": N, "percent": P}``) or raise ValidationError (code
    ``invalid_shadow``: the percent, or a version of another model or among `targets`, the alias's own;
    ``shadow_not_ready``, ``shadow_archived``, ``shadow_schema_mismatch``). `targets` come first in
    the alias (the primary first); the shadow must take the primary's inputs."""
    version, percent = shadow
    if isinstance(percent, bool) or not isinstance(percent, int) or not 1 <= percent <= MAX_SHADOW_PERCENT:
        raise ValidationError(f"The shadow's percent must be an integer from 1 to 100 (got {percent!r}).",
                              code="invalid_shadow")
    if version.model_id != model.pk:
        raise ValidationError(f"{version} is not a version of {model.name}.", code="invalid_shadow")
    if any(target.pk == version.pk for target in targets):
        raise ValidationError(f"{version} already answers this alias's requests: a shadow is another version.",
                              code="invalid_shadow")
    servable_check(version, code="shadow", not_ready="only a validated version can shadow an alias.",
                   archived="it cannot shadow an alias.")
    primary = targets[0]
    primary.refresh_from_db(fields=["input_schema"])
    if version.input_schema != primary.input_schema:
        raise ValidationError(
            f"{version} takes different inputs than v{primary.version}: a shadow must take the primary's input "
            "schema (it is sent the same requests).", code="shadow_schema_mismatch")
    return {"version": version.version, "percent": percent}


def aliases_naming(version: ModelVersion) -> list[str]:
    """The names of the aliases that point at `version`: as their primary target, in their split or as
    their shadow (each sends it requests)."""
    names = set(ModelAlias.objects.filter(version=version).values_list("name", flat=True))
    for name, split, shadow in ModelAlias.objects.filter(model_id=version.model_id).exclude(
            split__isnull=True, shadow__isnull=True).values_list("name", "split", "shadow"):
        if any(int(t["version"]) == version.version for t in split or ()):
            names.add(name)
        if shadow and int(shadow["version"]) == version.version:
            names.add(name)
    return sorted(names)
