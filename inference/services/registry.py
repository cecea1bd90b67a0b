"""The registry API's business logic: what a management key may do to the registry, and how.

``registry.services`` owns what a model and a version *are* and writes them; this module
adds what only the serving side knows: which API key acts (scope, the models it may see,
whether it may upload code artifacts), and how a new version is validated in the
background (a django-q2 task, queued once the version's row has committed, and queued
again by the jobs reconciler when that task was lost). Every function raises the
platform's API errors (``inference.errors``), so the views only parse and render.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from registry import loading
from registry import services as registry
from registry.models import AliasEvent, ModelAlias, ModelVersion, RegisteredModel
from registry.selectors import is_registry_name, version_number
from registry.splits import aliases_naming

from ..errors import APIError, Conflict, InvalidInput, NotFound, PayloadTooLarge, PermissionDenied
from ..keys import APIKey

logger = logging.getLogger("inference.registry")

VALIDATE_TASK = "inference.tasks.validate_version"


# The registry's ValidationError codes that mean something other than "bad input".
_CONFLICT_CODES = {"exists", "not_ready", "archived", "alias_target"}
_FORBIDDEN_CODES = {"code_artifacts_disabled", "code_artifacts_forbidden"}
_TOO_LARGE_CODES = {"artifact_too_large"}
# Which request field an upload's refusal is about (the rest are about the config).
_UPLOAD_FIELDS = {"invalid_artifact": "artifact", "sha256_mismatch": "artifact", "artifact_too_large": "artifact",
                  "invalid_sha256": "sha256"}


def api_error(exc: ValidationError, *, path: str = "") -> APIError:
    """Return the API error for a registry ValidationError (409, 403, 413, else 400), reason in details."""
    code = getattr(exc, "code", None)
    if code is None and hasattr(exc, "error_list") and exc.error_list:
        code = exc.error_list[0].code
    message = "; ".join(exc.messages)
    details: dict[str, Any] = {"reason": code} if code else {}
    if hasattr(exc, "error_dict"):
        details["fields"] = exc.message_dict
    if code in _CONFLICT_CODES:
        return Conflict(message, details=details)
    if code in _FORBIDDEN_CODES:
        return PermissionDenied(message, details=details)
    if code in _TOO_LARGE_CODES:
        return PayloadTooLarge(message, details={**details, "limit": settings.INFERENCE_MAX_ARTIFACT_BYTES})
    return InvalidInput(message, path=path, details=details)


def actor(key: Any) -> str:
    return registry.actor_for(api_key=key)


# ---- lookups (fresh from the database: the serving pool's memo is for the request path) --------

def managed_model(*, name: str, key: Any) -> RegisteredModel:
    """Return the model if it exists and the key may see it; else NotFound (the same answer for both)."""
    if not is_registry_name(name) or (key is not None and not key.may_see(name)):
        raise NotFound(f"No model named {name!r}.")
    model = RegisteredModel.objects.filter(name=name).first()
    if model is None:
        raise NotFound(f"No model named {name!r}.")
    return model


def managed_version(*, model: RegisteredModel, number: str | int) -> ModelVersion:
    """Return version `number` of the model (archived ones included); NotFound otherwise."""
    if version_number(number) is None:
        raise NotFound(f"Versions are numbered from 1: {number!r} is not a version of {model.name!r} "
                       "(an alias is read at /aliases/{alias}).")
    version = ModelVersion.objects.select_related("model", "hardware", "created_by").filter(
        model=model, version=version_number(number)
    ).first()
    if version is None:
        raise NotFound(f"Model {model.name!r} has no version {number}.")
    return version


def version_aliases(version: ModelVersion) -> list[str]:
    """The aliases that send requests to `version` (as their version or in their split)."""
    return aliases_naming(version)


# ---- models and versions ------------------------------------------------------------------------------

def managed_model_create(*, key: Any, name: str, description: str = "", task: str = "") -> RegisteredModel:
    """Create a model; a key limited to some models may not (it could never see the new one)."""
    if key.models is not None:
        raise PermissionDenied(
            "This key is limited to some models and cannot create one; use a manage key for all models.",
            details={"reason": "key_limited_to_models"},
        )
    try:
        return registry.model_create(name=name, description=description, task=task, actor=actor(key))
    except ValidationError as exc:
        raise api_error(exc, path="name") from exc


def key_may_upload_code(key: Any) -> bool:
    """Whether the key holds may_upload_code, read from the database (never from a cached copy)."""
    return bool(APIKey.objects.filter(pk=key.id).values_list("may_upload_code", flat=True).first())


def version_upload(
    *, key: Any, model: RegisteredModel, artifact: IO[bytes], config: Any, expected_sha256: str = ""
) -> ModelVersion:
    """Store the next version of `model` as `registered` and queue its validation; return it.

    Everything that needs no loading is checked first (config, architecture allowlist,
    code-format rules, size, sha256): a refusal stores nothing. Loading the artifact and
    running its example happen in the background task.
    """
    size = getattr(artifact, "size", None)
    limit = settings.INFERENCE_MAX_ARTIFACT_BYTES
    if size is not None and size > limit:
        raise PayloadTooLarge(
            f"The artifact is {size} bytes; the limit is {limit} (INFERENCE_MAX_ARTIFACT_BYTES).",
            details={"reason": "artifact_too_large", "limit": limit},
        )
    try:
        version = registry.model_version_register(
            model_name=model.name,
            artifact=artifact,
            config=config,
            created_by_key=key,
            may_upload_code=key_may_upload_code(key),
            validate=False,
            expected_sha256=expected_sha256,
        )
    except ValidationError as exc:
        raise api_error(exc, path=_UPLOAD_FIELDS.get(getattr(exc, "code", None) or "", "config")) from exc
    version_id = version.pk
    transaction.on_commit(lambda: enqueue_validation(version_id))
    return version


def version_load(*, key: Any, version: ModelVersion) -> ModelVersion:
    """Pre-load `version` in every web process (pinned); 409 unless it is ready and not archived."""
    try:
        return loading.version_load(version=version, actor=actor(key))
    except ValidationError as exc:
        raise api_error(exc) from exc


def version_unload(*, key: Any, version: ModelVersion) -> ModelVersion:
    """Unload `version` from every process (unpinned); 409 while an alias points at it."""
    try:
        return loading.version_unload(version=version, actor=actor(key))
    except ValidationError as exc:
        raise api_error(exc) from exc


def version_archive(*, key: Any, version: ModelVersion) -> ModelVersion:
    try:
        return registry.model_version_archive(version=version, actor=actor(key))
    except ValidationError as exc:
        raise api_error(exc) from exc


# ---- aliases ---------------------------------------------------------------------------------------------

def _alias_name_check(alias: str) -> None:
    try:
        ModelAlias._meta.get_field("name").run_validators(alias)
        if not is_registry_name(alias):  # the validator's `$` lets "name\n" through
            raise ValidationError("Use 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit.")
    except ValidationError as exc:
        raise InvalidInput(f"Alias {alias!r}: " + "; ".join(exc.messages), path="alias") from None


def _split_versions(model: RegisteredModel, split: Any) -> list[tuple[ModelVersion, int]]:
    """The (version, weight) pairs of a PUT body's `split`, shape and numbers checked (400); the
    registry judges the rest (weights sum, versions ready, same schema: ``registry.splits``)."""
    usage = 'split must be a list like [{"version": 3, "weight": 90}, {"version": 4, "weight": 10}]'
    if not isinstance(split, list) or not split:
        raise InvalidInput(usage + ".", path="split", details={"reason": "invalid_split"})
    pairs = []
    for i, entry in enumerate(split):
        if not isinstance(entry, dict) or set(entry) != {"version", "weight"}:
            raise InvalidInput(f"split[{i}]: {usage}.", path=f"split.{i}", details={"reason": "invalid_split"})
        number, weight = entry["version"], entry["weight"]
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise InvalidInput(f"split[{i}].version must be a version number.", path=f"split.{i}.version",
                               details={"reason": "invalid_split"})
        if isinstance(weight, bool) or not isinstance(weight, int):
            raise InvalidInput(f"split[{i}].weight must be an integer from 1 to 100 (got {weight!r}).",
                               path=f"split.{i}.weight", details={"reason": "invalid_split"})
        try:
            version = managed_version(model=model, number=number)
        except NotFound as exc:
            raise InvalidInput(exc.message, path=f"split.{i}.version", details={"reason": "unknown_version"}) from None
        pairs.append((version, weight))
    return pairs


_SHADOW_CODES = {"invalid_shadow", "shadow_not_ready", "shadow_archived", "shadow_schema_mismatch"}


def _shadow_version(model: RegisteredModel, shadow: Any) -> tuple[ModelVersion, int]:
    """The (version, percent) of a PUT body's `shadow`, shape and numbers checked (400 with the field's
    path); the registry judges the version (ready, same inputs, not a target: ``registry.splits``)."""
    usage = 'shadow must be an object like {"version": 4, "percent": 20}'
    if not isinstance(shadow, dict) or set(shadow) != {"version", "percent"}:
        raise InvalidInput(usage + ".", path="shadow", details={"reason": "invalid_shadow"})
    number, percent = shadow["version"], shadow["percent"]
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise InvalidInput("shadow.version must be a version number.", path="shadow.version",
                           details={"reason": "invalid_shadow"})
    if isinstance(percent, bool) or not isinstance(percent, int) or not 1 <= percent <= 100:
        raise InvalidInput(f"shadow.percent must be an integer from 1 to 100 (got {percent!r}).",
                           path="shadow.percent", details={"reason": "invalid_shadow"})
    try:
        version = managed_version(model=model, number=number)
    except NotFound as exc:
        raise InvalidInput(exc.message, path="shadow.version", details={"reason": "unknown_version"}) from None
    return version, percent


def alias_point(*, key: Any, model: RegisteredModel, alias: str, number: Any = None,
                split: Any = None, shadow: Any = None) -> tuple[ModelAlias, int | None]:
    """Point `model@alias` at version `number` (promote or roll back), or at a weighted `split` (a canary),
    with an optional `shadow` ({"version", "percent"}; None: no shadow, as a PUT replaces the alias);
    return (alias, the version it pointed to before, or None if it is new)."""
    _alias_name_check(alias)
    pairs: list[tuple[ModelVersion, int]] | None = None
    version: ModelVersion | None = None
    if split is not None:
        pairs = _split_versions(model, split)
    else:
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise InvalidInput('The body must be {"version": N} with N a version number.', path="version")
        try:
            version = managed_version(model=model, number=number)
        except NotFound as exc:
            raise InvalidInput(exc.message, path="version", details={"reason": "unknown_version"}) from None
    shadowing = _shadow_version(model, shadow) if shadow is not None else None
    try:
        with transaction.atomic():
            # The lock alias_set takes, taken first so that `previous` is the version this move replaced.
            RegisteredModel.objects.select_for_update().filter(pk=model.pk).first()
            previous = ModelAlias.objects.filter(model=model, name=alias).values_list(
                "version__version", flat=True).first()
            row = registry.alias_set(model=model, alias=alias, version=version, split=pairs, shadow=shadowing,
                                     actor=actor(key))
    except ValidationError as exc:
        code = getattr(exc, "code", None)
        path = "shadow" if code in _SHADOW_CODES else "split" if pairs is not None else "version"
        raise api_error(exc, path=path) from exc
    return row, previous


def alias_get(*, model: RegisteredModel, alias: str) -> ModelAlias:
    if not is_registry_name(alias):
        raise NotFound(f"Model {model.name!r} has no alias {alias!r}.")
    row = ModelAlias.objects.select_related("version").filter(model=model, name=alias).first()
    if row is None:
        raise NotFound(f"Model {model.name!r} has no alias {alias!r}.")
    return row


def alias_history(*, model: RegisteredModel, alias: str, limit: int = 20) -> list[AliasEvent]:
    return list(AliasEvent.objects.filter(model=model, alias=alias)[:limit])


def alias_remove(*, key: Any, model: RegisteredModel, alias: str) -> None:
    if not is_registry_name(alias) or not registry.alias_delete(model=model, alias=alias, actor=actor(key)):
        raise NotFound(f"Model {model.name!r} has no alias {alias!r}.")


# ---- background validation ---------------------------------------------------------------------------------

def enqueue_validation(version_id: int) -> None:
    """Queue the validation task of a version. A broker that is down is logged, not raised:
    the version stays `registered` and the reconciler queues it again."""
    from django_q.tasks import async_task

    try:
        async_task(VALIDATE_TASK, int(version_id), task_name=f"validate-version-{version_id}",
                   q_options={"ack_failure": True})
    except Exception:  # noqa: BLE001 - the reconciler covers a task that was never queued
        logger.exception("could not queue the validation of version id %s; the reconciler will retry", version_id)


def validate_registered(version_id: int) -> str:
    """Validate a `registered` version (in a worker); a version already decided or archived is left alone."""
    version = ModelVersion.objects.select_related("model", "hardware").filter(pk=version_id).first()
    if version is None:
        return "skipped: no such version"
    if version.status != ModelVersion.Status.REGISTERED or version.archived:
        return f"skipped: {version} is {'archived' if version.archived else version.status}"
    version = registry.model_version_validate(version=version, actor="system (background validation)")
    return f"{version}: {version.status}"


def versions_requeue_stale() -> int:
    """Queue again the validation of versions left `registered` longer than INFERENCE_JOB_REQUEUE_AFTER
    (their task was lost); return how many. Called by the jobs reconciler."""
    cutoff = timezone.now() - timedelta(seconds=settings.INFERENCE_JOB_REQUEUE_AFTER)
    stale = list(
        ModelVersion.objects.filter(status=ModelVersion.Status.REGISTERED, archived=False, created_at__lt=cutoff)
        .values_list("pk", flat=True)
    )
    for pk in stale:
        enqueue_validation(pk)
    if stale:
        logger.warning("reconciler re-queued the validation of %d version(s) left registered", len(stale))
    return len(stale)
