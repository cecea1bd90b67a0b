"""Submit a job: check what can be checked now, store its input, commit its row, then queue its task."""

from __future__ import annotations

import hashlib
import io
from typing import IO, Any

import orjson
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile, File
from django.db import transaction

from registry.models import ModelVersion

from ...jobs.callbacks import callback_check
from ...jobs.inputs import JobInputError, JobInputTooLarge, file_instances, jsonl_from_instances
from ...jobs.models import InferenceJob
from . import queueing
from .checks import JobInstanceError, check_chunk, served_for_checks
from .limits import StoredBytesFull, TooManyJobs, check_key_limits
from .queueing import JobConflict


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
    key with other input raises JobConflict. The input is checked as predict checks it
    (JSON instances whole, a file's first chunk; JobInputError naming the instance), and a
    key's limits (JobLimitReached) before anything is stored; the task is queued after the
    row commits. A refusal leaves nothing behind: no row, no file, no task.
    """
    if version.status != ModelVersion.Status.READY or version.archived:
        raise JobConflict(f"{version} is not ready to serve ({version.status}).")
    if callback_url:
        callback_check(callback_url)  # the secret is set, the host (and port) allowlisted
    if (instances is None) == (upload is None):
        raise JobInputError("Send either instances or a file.")
    if instances is not None:
        if not isinstance(instances, list) or not instances:
            raise JobInputError("instances must be a non-empty list.")
        input_format = InferenceJob.InputFormat.JSON
        content: File = ContentFile(jsonl_from_instances(instances), name="input.jsonl")
        size = content.size
    else:
        size = upload.size if hasattr(upload, "size") else upload.seek(0, io.SEEK_END)
        if size > settings.INFERENCE_JOB_MAX_FILE_BYTES:
            raise JobInputTooLarge(f"The file is {size} bytes; the limit is {settings.INFERENCE_JOB_MAX_FILE_BYTES} "
                                   "(INFERENCE_JOB_MAX_FILE_BYTES).")
        if input_format == InferenceJob.InputFormat.CSV and len(version.input_schema) != 1:
            raise JobInputError("CSV input is for one-input models; send JSONL objects for several inputs.")
        content = File(upload, name=f"input.{'csv' if input_format == 'csv' else 'jsonl'}")
    request_sha = _request_sha256(version, parameters, content)
    key_prefix = getattr(api_key, "prefix", "") or ""
    if idempotency_key:
        existing = InferenceJob.objects.filter(key_prefix=key_prefix, idempotency_key=idempotency_key).first()
        if existing is not None:
            if existing.request_sha256 != request_sha:
                raise JobConflict("This Idempotency-Key was used for a different request.")
            return existing, False
    check_key_limits(key_prefix=key_prefix, new_bytes=size)  # before the work of reading the input
    served = served_for_checks(version)
    if instances is not None:
        total = len(instances)
        chunk = settings.INFERENCE_JOB_CHUNK_SIZE
        for offset in range(0, total, chunk):
            check_chunk(served, instances[offset:offset + chunk], parameters, offset=offset)
    else:
        total = _count_and_check_file(upload, input_format, served, parameters)
    job = InferenceJob(
        model_id=version.model_id,
        version=version,
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
    # Stored before the transaction: a slow upload to the storage holds no lock. Deleted on any refusal.
    job.input_file.save(content.name, content, save=False)
    try:
        with transaction.atomic():
            job.api_key = _locked_key(api_key)  # concurrent submits of one key count its jobs one at a time
            check_key_limits(key_prefix=key_prefix, new_bytes=size)
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


def _request_sha256(version: ModelVersion, parameters: Any, content: File) -> str:
    digest = hashlib.sha256()
    digest.update(f"{version.pk}|{orjson.dumps(parameters).decode()}|".encode())
    content.seek(0)
    for chunk in content.chunks():
        digest.update(chunk)
    return digest.hexdigest()


def _locked_key(api_key: Any) -> Any:
    """The job's APIKey row, locked until the transaction ends: on PostgreSQL two submits of one key
    count its jobs one after the other. (SQLite has no row locks: two submits at the same instant may
    both pass a limit by one.)"""
    if not api_key:
        return None
    from inference.keys import APIKey

    return APIKey.objects.select_for_update().filter(pk=getattr(api_key, "id", None)).first()


def _count_and_check_file(upload: IO[bytes], input_format: str, served: Any, parameters: Any) -> int:
    """Return the number of instances of an uploaded file, read line by line (JobInputError naming a bad
    line); its first chunk is checked as predict checks instances, the rest as JSON or CSV only."""
    size = settings.INFERENCE_JOB_CHUNK_SIZE
    total = 0
    first: list[tuple[int, Any]] | None = []
    for line, instance in file_instances(upload, input_format):
        total += 1
        if first is not None:
            first.append((line, instance))
            if len(first) == size:
                _check_first(served, first, parameters)
                first = None  # the rest is counted, not held
    if first:
        _check_first(served, first, parameters)
    if total == 0:
        raise JobInputError("The file holds no instances.")
    return total


def _check_first(served: Any, rows: list[tuple[int, Any]], parameters: Any) -> None:
    check_chunk(served, [instance for _, instance in rows], parameters, offset=0, lines=[line for line, _ in rows])


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
    routing_key: str | None = None,
) -> tuple[InferenceJob, bool]:
    """Submit a job for an API key (the jobs API): resolve the version as predict does, check what can
    be checked now, then ``job_submit``; every refusal is an API error (400, 404, 409, 413, 429, 503).
    Through an alias with a split, the job is pinned now to one of its versions, picked by the same
    weights as a request (sticky by `routing_key`): every chunk, retry and requeue runs that version."""
    from ... import selectors
    from ...errors import Conflict, InvalidInput, PayloadTooLarge
    from ...errors import TooManyJobs as TooManyJobsError
    from ...tensors import InputError
    from ..predict import input_error

    if ref is not None and (isinstance(ref, bool) or not isinstance(ref, (str, int))):
        raise InvalidInput("version must be a version number or an alias name.", path="version")
    if not isinstance(callback_url, str):
        raise InvalidInput("callback_url must be a URL (a string).", path="callback_url")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidInput("parameters must be a JSON object.", path="parameters")
    version = selectors.serving_version(model_name=model_name, ref=ref or None, key=key, routing_key=routing_key)
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
    except JobInstanceError as exc:
        if upload is None:  # what predict answers for these instances, the path counted in the whole list
            raise input_error(InputError(exc.reason, path=exc.path, code=exc.code, status=exc.status)) from exc
        raise InvalidInput(str(exc), path="file", code=exc.code, details=exc.details) from exc
    except JobInputError as exc:
        raise InvalidInput(str(exc), path="file" if upload is not None else "instances", details=exc.details) from exc
    except TooManyJobs as exc:
        raise TooManyJobsError(str(exc), retry_after=exc.details["retry_after"], details=exc.details) from exc
    except StoredBytesFull as exc:
        raise PayloadTooLarge(str(exc), details={"path": "file" if upload is not None else "instances",
                                                 **exc.details}) from exc
    except ValidationError as exc:  # the callback URL's: details.reason says why (e.g. callback_secret_not_set)
        raise InvalidInput("; ".join(exc.messages), path="callback_url",
                           details={"reason": exc.error_list[0].code}) from exc
    except JobConflict as exc:
        raise Conflict(str(exc)) from exc
