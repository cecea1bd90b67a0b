"""Writes of models and versions: create, register (checked, validated, stored atomically), validate again, archive."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from typing import IO, Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from ..artifacts import (
    ArtifactError,
    TooManyParameters,
    architecture_class,
    check_container,
    check_parameter_count,
    read_fileobj,
    sha256_of,
)
from ..models import HardwareTarget, ModelAlias, ModelVersion, RegisteredModel, RegistryEvent
from ..schemas import CODE_FORMATS, WEIGHT_FORMATS, VersionConfig, parse_version_config
from ..signals import announce_change
from ..splits import aliases_naming
from ..validation import ValidationOutcome, validate_in_subprocess
from .aliases import alias_set
from .common import actor_for, check_name, record

logger = logging.getLogger("registry")


def model_get_or_create(
    *, name: str, description: str = "", task: str = "", actor: str = "system"
) -> RegisteredModel:
    """Return the model called `name`, creating it (validated, recorded) if it does not exist."""
    try:
        return RegisteredModel.objects.get(name=name)
    except RegisteredModel.DoesNotExist:
        pass
    try:
        return model_create(name=name, description=description, task=task, actor=actor)
    except ValidationError as exc:
        if exc.code != "exists":
            raise
        return RegisteredModel.objects.get(name=name)  # created concurrently


def model_create(*, name: str, description: str = "", task: str = "", actor: str = "system") -> RegisteredModel:
    """Create a model and record who did; raise ValidationError (code "exists" if the name is taken)."""
    check_name(name, "model")
    if RegisteredModel.objects.filter(name=name).exists():
        raise ValidationError(f"A model named {name!r} already exists.", code="exists")
    model = RegisteredModel(name=name, description=description, task=task)
    model.full_clean(validate_unique=False)
    try:
        with transaction.atomic():
            model.save()
            record(model, RegistryEvent.Action.MODEL_CREATED, actor)
            announce_change()
    except IntegrityError:  # created concurrently
        raise ValidationError(f"A model named {name!r} already exists.", code="exists") from None
    return model


def _hardware_target(name: str) -> HardwareTarget:
    try:
        target = HardwareTarget.objects.get(name=name)
    except HardwareTarget.DoesNotExist:
        known = ", ".join(HardwareTarget.objects.values_list("name", flat=True)) or "none"
        raise ValidationError(
            f"hardware {name!r} is not a hardware target (known: {known}).", code="invalid_hardware"
        ) from None
    if not target.enabled:
        raise ValidationError(f"hardware target {name!r} is disabled.", code="invalid_hardware")
    return target


def config_check(*, raw_config: Any, may_upload_code: bool) -> tuple[VersionConfig, HardwareTarget]:
    """Return the parsed config and its hardware target, or raise ValidationError.

    Checks everything that needs no artifact: structure, allowlisted architecture, known
    target, and whether a code format may be uploaded at all.
    """
    cfg = parse_version_config(raw_config)
    if cfg.format in CODE_FORMATS:
        if not settings.INFERENCE_ALLOW_CODE_ARTIFACTS:
            raise ValidationError(
                f"format {cfg.format!r} runs code from the file when loaded, and code artifacts are "
                "disabled on this platform (INFERENCE_ALLOW_CODE_ARTIFACTS). Upload safetensors "
                "weights with an allowlisted architecture instead.",
                code="code_artifacts_disabled",
            )
        if not may_upload_code:
            raise ValidationError(
                f"format {cfg.format!r} runs code from the file when loaded; uploading it needs the "
                "'Can upload TorchScript / torch.export artifacts' permission.",
                code="code_artifacts_forbidden",
            )
    if cfg.format in WEIGHT_FORMATS:
        try:
            architecture_class(cfg.architecture)
            # Counted from the arguments, nothing allocated, none of the class's code run here (an
            # architecture without its own parameter_count is counted in the validation process).
            check_parameter_count(cfg.architecture, cfg.architecture_args, build=False)
        except TooManyParameters as exc:
            raise ValidationError(str(exc), code="too_many_parameters") from exc
        except ArtifactError as exc:
            raise ValidationError(str(exc), code="invalid_architecture") from exc
    return cfg, _hardware_target(cfg.hardware)


@contextmanager
def _local_copy(data: bytes):
    fd, path = tempfile.mkstemp(prefix="artifact-", suffix=".bin")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        yield path
    finally:
        os.unlink(path)


def _validate_bytes(*, data: bytes, config: dict[str, Any], allow_code: bool) -> ValidationOutcome:
    with _local_copy(data) as path:
        return validate_in_subprocess(config=config, artifact_path=path, allow_code=allow_code)


def model_version_register(
    *,
    model_name: str,
    artifact: IO[bytes],
    config: Any,
    created_by: Any = None,
    created_by_key: Any = None,
    may_upload_code: bool = False,
    aliases: Iterable[str] = (),
    validate: bool = True,
    description: str = "",
    task: str = "",
    expected_sha256: str = "",
) -> ModelVersion:
    """Register the next version of `model_name` (creating the model if new) and return it.

    With ``validate=True`` the artifact is loaded and its example run in a separate
    process first; a failure raises ValidationError and nothing is written. With
    ``validate=False`` the version is stored as ``registered`` for
    ``model_version_validate`` to decide later (the registry API's background path).
    With ``expected_sha256`` the artifact's digest must match it. Raise ValidationError
    for any bad artifact or config; nothing is stored then.
    """
    RegisteredModel._meta.get_field("name").run_validators(model_name)
    check_name(model_name, "model")
    expected_sha256 = (expected_sha256 or "").strip().lower()
    if expected_sha256 and not re.fullmatch(r"[0-9a-f]{64}", expected_sha256):
        raise ValidationError("sha256 must be 64 hexadecimal digits.", code="invalid_sha256")
    cfg, target = config_check(raw_config=config, may_upload_code=may_upload_code)
    aliases = list(aliases)
    for alias in aliases:
        ModelAlias._meta.get_field("name").run_validators(alias)
    if aliases and not validate:
        raise ValidationError("An alias can only point to a validated version.", code="not_ready")
    try:
        data = read_fileobj(artifact, max_bytes=settings.INFERENCE_MAX_ARTIFACT_BYTES)
    except ArtifactError as exc:
        raise ValidationError(str(exc), code="artifact_too_large") from exc
    if not data:
        raise ValidationError("The artifact file is empty.", code="invalid_artifact")
    if not validate:
        # Stored before it is loaded (validated in the background): refuse now what is plainly not
        # a file of the declared format, rather than store it to fail later.
        try:
            check_container(data, cfg.format)
        except ArtifactError as exc:
            raise ValidationError(str(exc), code="invalid_artifact") from exc
    digest = sha256_of([data])
    if expected_sha256 and digest != expected_sha256:
        raise ValidationError(
            f"sha256 mismatch: the uploaded artifact hashes to {digest}, not the expected {expected_sha256}. "
            "The file was damaged or is not the one meant; nothing was stored.",
            code="sha256_mismatch",
        )
    allow_code = cfg.format in CODE_FORMATS  # config_check already refused it otherwise
    status, error = ModelVersion.Status.REGISTERED, ""
    if validate:
        outcome = _validate_bytes(data=data, config=cfg.as_dict(), allow_code=allow_code)
        if not outcome.ok:
            raise ValidationError(f"Validation failed: {outcome.error}", code="validation_failed")
        status = ModelVersion.Status.READY

    actor = actor_for(user=created_by, api_key=created_by_key)
    model = model_get_or_create(name=model_name, description=description, task=task, actor=actor)
    version: ModelVersion | None = None
    try:
        with transaction.atomic():
            # Lock the model row: version numbers are handed out one at a time.
            RegisteredModel.objects.select_for_update().filter(pk=model.pk).first()
            number = (model.versions.aggregate(n=Max("version"))["n"] or 0) + 1
            version = ModelVersion(
                model=model,
                version=number,
                sha256=digest,
                size_bytes=len(data),
                format=cfg.format,
                architecture=cfg.architecture,
                architecture_args=cfg.architecture_args,
                input_schema=[t.as_dict() for t in cfg.inputs],
                output_schema=[t.as_dict() for t in cfg.outputs],
                preprocess=cfg.preprocess,
                postprocess=cfg.postprocess,
                example=cfg.example,
                max_batch_size=cfg.batching.max_batch_size,
                max_batch_delay_ms=cfg.batching.max_batch_delay_ms,
                max_queue_size=cfg.batching.max_queue_size,
                hardware=target,
                status=status,
                status_error=error,
                validated_at=timezone.now() if validate else None,
                created_by=created_by if getattr(created_by, "is_authenticated", False) else None,
                created_by_key=actor_for(api_key=created_by_key, default="") if created_by_key else "",
            )
            version.artifact.save("artifact", ContentFile(data), save=False)
            version.full_clean()
            version.save()
            record(model, RegistryEvent.Action.VERSION_REGISTERED, actor, version=number,
                    detail=f"{cfg.format}, sha256 {digest}, {len(data)} bytes, {status}")
            for alias in aliases:
                alias_set(model=model, alias=alias, version=version, actor=actor)
            announce_change()
    except Exception:
        if version is not None and version.artifact.name:
            version.artifact.storage.delete(version.artifact.name)
        raise
    return version


def _stored_version_outcome(version: ModelVersion) -> ValidationOutcome:
    if version.format in CODE_FORMATS and not settings.INFERENCE_ALLOW_CODE_ARTIFACTS:
        # The switch as it is now decides, not as it was at upload: nothing from the file is loaded.
        return ValidationOutcome(False, (
            f"Not validated: format {version.format!r} runs code from the file when loaded, and code artifacts "
            "are disabled on this platform (INFERENCE_ALLOW_CODE_ARTIFACTS); nothing was loaded or run."))
    try:
        with version.artifact.open("rb") as fh:
            data = fh.read()
    except OSError as exc:
        return ValidationOutcome(False, f"The artifact file cannot be read: {exc}")
    if sha256_of([data]) != version.sha256:
        return ValidationOutcome(False, "sha256 mismatch: the stored artifact changed after registration.")
    return _validate_bytes(data=data, config=version.config, allow_code=version.format in CODE_FORMATS)


def model_version_validate(*, version: ModelVersion, actor: str = "system") -> ModelVersion:
    """Validate a stored version in a separate process and record `ready` or `failed` (a code
    format while INFERENCE_ALLOW_CODE_ARTIFACTS is off fails without being loaded)."""
    outcome = _stored_version_outcome(version)
    version.status = ModelVersion.Status.READY if outcome.ok else ModelVersion.Status.FAILED
    version.status_error = "" if outcome.ok else outcome.error
    version.validated_at = timezone.now()
    with transaction.atomic():
        version.save(update_fields=["status", "status_error", "validated_at"])
        record(version.model, RegistryEvent.Action.VERSION_VALIDATED, actor, version=version.version,
                detail=version.status if outcome.ok else f"{version.status}: {outcome.error}")
        announce_change()
    return version


@transaction.atomic
def model_version_archive(*, version: ModelVersion, actor: str = "system") -> ModelVersion:
    """Archive a version (it stops serving); refused while an alias points to it. Archiving twice is a no-op."""
    RegisteredModel.objects.select_for_update().filter(pk=version.model_id).first()  # see alias_set
    names = aliases_naming(version)  # as primary target, in a split or as a shadow
    if names:
        raise ValidationError(
            f"{version} is the target of alias(es) {', '.join(sorted(names))}: move them first.", code="alias_target"
        )
    version.refresh_from_db(fields=["archived"])
    if version.archived:
        return version
    version.archived = True
    version.pinned = False  # an archived version is unloaded everywhere (inference.loadctl)
    version.save(update_fields=["archived", "pinned"])
    record(version.model, RegistryEvent.Action.VERSION_ARCHIVED, actor, version=version.version)
    announce_change()
    return version
