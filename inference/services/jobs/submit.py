"""Submit a job: check what can be checked now, store its input, commit its row, then queue its task."""

from __future__ import annotations

import hashlib
from typing import IO, Any

import orjson
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile, File
from django.db import transaction

from registry.models import ModelVersion

from ...jobs.inputs import JobInputError, JobInputTooLarge, count_jsonl, csv_rows, jsonl_from_instances
from ...jobs.models import InferenceJob
from . import queueing
from .queueing import JobConflict


def _callback_allowed(url: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    allowed = settings.INFERENCE_CALLBACK_ALLOWED_HOSTS
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError("callback_url must be an http(s) URL.", code="invalid_callback")
    if parts.hostname not in allowed:
        raise ValidationError(
            f"callback_url host {parts.hostname!r} is not allowed (INFERENCE_CALLBACK_ALLOWED_HOSTS: "
            f"{', '.join(allowed) or 'none'}): an open callback would let clients make this server call anywhere.",
            code="callback_not_allowed",
        )



def job_submit(
    *,
    version: ModelVersion,
    instances: list[Any] | None = None,
    upload: IO[bytes] | None = None,
    input_format: str = InferenceJob.InputFormat.JSON,
    parameters: Any = None,
    api_key: Any = None,
    submitted_by: str = "",
    idempotency_key: str = "",
    callback_url: str = "",
    max_attempts: int | None = None,
) -> tuple[InferenceJob, bool]:
    """Create a queued job for `version` and schedule it; return (job, created).

    Give either JSON `instances` or an `upload` (JSONL or CSV). With an idempotency key,
    the same key and the same input return the existing job (created=False); the same
    key with other input raises JobConflict. The task is queued after the row commits.
    """
    if version.status != ModelVersion.Status.READY or version.archived:
        raise JobConflict(f"{version} is not ready to serve ({version.status}).")
    if callback_url:
        _callback_allowed(callback_url)
    if (instances is None) == (upload is None):
        raise JobInputError("Send either instances or a file.")
    if instances is not None:
        if not isinstance(instances, list) or not instances:
            raise JobInputError("instances must be a non-empty list.")
        data = jsonl_from_instances(instances)
        total = len(instances)
        input_format = InferenceJob.InputFormat.JSON
        content: File = ContentFile(data, name="input.jsonl")
        size = len(data)
    else:
        size = upload.size if hasattr(upload, "size") else len(upload.read())
        if size > settings.INFERENCE_JOB_MAX_FILE_BYTES:
            raise JobInputTooLarge(f"The file is {size} bytes; the limit is {settings.INFERENCE_JOB_MAX_FILE_BYTES} "
                                   "(INFERENCE_JOB_MAX_FILE_BYTES).")
        if input_format == InferenceJob.InputFormat.CSV:
            if len(version.input_schema) != 1:
                raise JobInputError("CSV input is for one-input models; send JSONL objects for several inputs.")
            total = sum(1 for _ in csv_rows(upload))
        else:
            total = count_jsonl(upload)
        if total == 0:
            raise JobInputError("The file holds no instances.")
        upload.seek(0)
        content = File(upload, name=f"input.{'csv' if input_format == 'csv' else 'jsonl'}")
    digest = hashlib.sha256()
    digest.update(f"{version.pk}|{orjson.dumps(parameters).decode()}|".encode())
    content.seek(0)
    for chunk in content.chunks():
        digest.update(chunk)
    request_sha = digest.hexdigest()
    key_prefix = getattr(api_key, "prefix", "") or ""
    if idempotency_key:
        existing = InferenceJob.objects.filter(key_prefix=key_prefix, idempotency_key=idempotency_key).first()
        if existing is not None:
            if existing.request_sha256 != request_sha:
                raise JobConflict("This Idempotency-Key was used for a different request.")
            return existing, False
    from inference.keys import APIKey

    job = InferenceJob(
        model_id=version.model_id,
        version=version,
        api_key=APIKey.objects.filter(pk=getattr(api_key, "id", None)).first() if api_key else None,
        key_prefix=key_prefix,
        submitted_by=submitted_by,
        max_attempts=max_attempts or settings.INFERENCE_JOB_MAX_ATTEMPTS,
        progress_total=total,
        input_format=input_format,
        input_bytes=size,
        parameters=parameters,
        idempotency_key=idempotency_key,
        request_sha256=request_sha,
        callback_url=callback_url,
    )
    content.seek(0)
    job.input_file.save(content.name, content, save=False)
    try:
        with transaction.atomic():
            job.save()
            transaction.on_commit(lambda: queueing.enqueue_committed(job.pk))
    except Exception:
        job.input_file.storage.delete(job.input_file.name)
        if idempotency_key:  # lost a race with an identical submission
            existing = InferenceJob.objects.filter(key_prefix=key_prefix, idempotency_key=idempotency_key).first()
            if existing is not None and existing.request_sha256 == request_sha:
                return existing, False
        raise
    return job, True


def check_parameters(version: ModelVersion, parameters: Any) -> None:
    """InvalidInput now for request parameters the version's pipeline does not take (not a failed job later)."""
    from ...errors import InvalidInput
    from ...pipeline.base import Pipeline, StepConfigError, StepInputError, clean_parameters

    try:
        pre, post = Pipeline(version.preprocess, stage="preprocess"), Pipeline(version.postprocess, stage="postprocess")
    except (StepConfigError, ImportError):
        return  # the job fails with the pipeline's own error
    try:
        clean_parameters(parameters, {**pre.request_parameters, **post.request_parameters})
    except StepInputError as exc:
        raise InvalidInput(str(exc), path=exc.path) from None


def job_request_submit(
    *,
    key: Any,
    model_name: str,
    ref: Any = None,
    instances: list[Any] | None = None,
    upload: IO[bytes] | None = None,
    input_format: str = InferenceJob.InputFormat.JSON,
    parameters: Any = None,
    callback_url: Any = "",
    idempotency_key: str = "",
) -> tuple[InferenceJob, bool]:
    """Submit a job for an API key (the jobs API): resolve the version as predict does, check what can
    be checked now, then ``job_submit``; every refusal is an API error (400, 404, 409, 413, 503)."""
    from ... import selectors
    from ...errors import Conflict, InvalidInput, PayloadTooLarge

    if ref is not None and (isinstance(ref, bool) or not isinstance(ref, (str, int))):
        raise InvalidInput("version must be a version number or an alias name.", path="version")
    if not isinstance(callback_url, str):
        raise InvalidInput("callback_url must be a URL (a string).", path="callback_url")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidInput("parameters must be a JSON object.", path="parameters")
    version = selectors.serving_version(model_name=model_name, ref=ref or None, key=key)
    check_parameters(version, parameters)
    if not idempotency_key.isprintable():
        raise InvalidInput("Idempotency-Key must be printable text.", path="Idempotency-Key")
    try:
        return job_submit(
            version=version, instances=instances, upload=upload, input_format=input_format, parameters=parameters,
            api_key=key, submitted_by=f"key:{key.name} ({key.prefix})",
            idempotency_key=idempotency_key, callback_url=callback_url,
        )
    except JobInputTooLarge as exc:
        raise PayloadTooLarge(str(exc), details={"path": "file", "limit": settings.INFERENCE_JOB_MAX_FILE_BYTES}) from exc
    except JobInputError as exc:
        raise InvalidInput(str(exc), path="file" if upload is not None else "instances") from exc
    except ValidationError as exc:
        raise InvalidInput("; ".join(exc.messages), path="callback_url") from exc
    except JobConflict as exc:
        raise Conflict(str(exc)) from exc
