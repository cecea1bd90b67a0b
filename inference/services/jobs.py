"""Background jobs: submit, run (in a django-q2 worker), cancel, retry, reconcile.

Guarantees, and how:

* Nothing submitted is lost: the job row is committed before its task is queued
  (``transaction.on_commit``); a task that is lost anyway (a crash between the two, a pusher
  or a whole cluster dying with it, the Redis broker dropping it) is re-queued by the
  reconciler (``job_recovery``): it finds jobs whose task is neither in the broker nor taken
  by a live pusher.
* A job runs at most once at a time and produces one result: a run starts by *claiming*
  the row with a conditional UPDATE (queued, or running with an expired lease), and ends
  with another (still running, same attempt). A second delivery of a finished or running
  job does nothing; a superseded run's result file is discarded.
* Attempts are counted on the row: a job whose worker dies every time ends ``failed``
  after ``max_attempts`` (django-q2 alone would retry it forever).
* Inputs and results live in files under the storage backend, not in the row.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import socket
from datetime import timedelta
from typing import IO, Any

import orjson
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile, File
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from registry.models import ModelVersion

from ..jobs.inputs import (
    JobInputError,
    JobInputTooLarge,
    chunks,
    count_jsonl,
    csv_rows,
    instances_in,
    jsonl_from_instances,
)
from ..jobs.models import InferenceJob

logger = logging.getLogger("inference.jobs")



def worker_id() -> str:
    """host:pid of the calling process (computed per call: workers are forked)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class JobConflict(Exception):
    """The request conflicts with the job's state (e.g. cancel a finished job, reuse an idempotency key)."""


# ---- submit -------------------------------------------------------------------------------------

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


def job_queue(job_id: Any) -> str | None:
    """Return the django-q2 queue of a job's task: its hardware target's (INFERENCE_JOB_QUEUES), or
    None for the default queue."""
    queues = settings.INFERENCE_JOB_QUEUES
    if not queues:
        return None
    target = InferenceJob.objects.filter(pk=job_id).values_list("version__hardware__name", flat=True).first()
    return queues.get(target)


def _enqueue(job_id: Any, *, front: bool = False) -> None:
    """Queue the job's task on its queue; `front`: ahead of the tasks waiting there (a re-run)."""
    from django_q.tasks import async_task

    options: dict[str, Any] = {"ack_failure": True}
    queue = job_queue(job_id)
    if queue:
        options["cluster"] = queue  # django-q2's name for a queue: only workers of that cluster take it
    if front:
        from ..jobs.brokers import front_broker

        options["broker"] = front_broker(queue)
    async_task("inference.tasks.run_job", str(job_id), task_name=f"job-{job_id}", q_options=options)


def _enqueue_committed(job_id: Any, *, front: bool = False) -> None:
    """Queue the task of a job whose row is committed; a broker that is down loses nothing.

    The row is the source of truth: when the task cannot be queued (the Redis broker is
    unreachable, say), the job stays ``queued`` and the reconciler queues it once the broker
    answers (its task is neither in the broker nor taken). The request that submitted it still
    succeeds (202): failing it would make the client submit a second job."""
    try:
        _enqueue(job_id, front=front)
    except Exception as exc:  # noqa: BLE001 - the broker's error, whatever its client raises
        logger.warning(
            "job %s is saved but its task could not be queued (%s: %s); the reconciler will queue it "
            "once the broker answers (INFERENCE_JOB_LEASE_SECONDS, %d s, after)", job_id, type(exc).__name__, exc,
            settings.INFERENCE_JOB_LEASE_SECONDS,
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
            transaction.on_commit(lambda: _enqueue_committed(job.pk))
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
    from ..errors import InvalidInput
    from ..pipeline.base import Pipeline, StepConfigError, StepInputError, clean_parameters

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
    from .. import selectors
    from ..errors import Conflict, InvalidInput, PayloadTooLarge

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


# ---- cancel, retry --------------------------------------------------------------------------------

def job_cancel(*, job: InferenceJob) -> InferenceJob:
    """Cancel a job: a queued one never runs; a running one stops at its next chunk boundary."""
    now = timezone.now()
    if InferenceJob.objects.filter(pk=job.pk, status=InferenceJob.Status.QUEUED).update(
        status=InferenceJob.Status.CANCELLED, cancel_requested=True, finished_at=now
    ):
        job.refresh_from_db()
        _after_finish(job)
        return job
    if InferenceJob.objects.filter(pk=job.pk, status=InferenceJob.Status.RUNNING).update(cancel_requested=True):
        job.refresh_from_db()
        return job
    job.refresh_from_db()
    raise JobConflict(f"The job is {job.status}; only queued or running jobs can be cancelled.")


def job_retry(*, job: InferenceJob) -> InferenceJob:
    """Run a failed or cancelled job again from the start (attempts reset)."""
    with transaction.atomic():
        updated = InferenceJob.objects.filter(
            pk=job.pk, status__in=[InferenceJob.Status.FAILED, InferenceJob.Status.CANCELLED]
        ).update(
            status=InferenceJob.Status.QUEUED, attempts=0, error="", progress_done=0, cancel_requested=False,
            started_at=None, finished_at=None, lease_expires_at=None, requeued_at=timezone.now(),
            taken_by="", taken_until=None,
        )
        if not updated:
            job.refresh_from_db()
            raise JobConflict(f"The job is {job.status}; only failed or cancelled jobs can be retried.")
        transaction.on_commit(lambda: _enqueue_committed(job.pk))
    job.refresh_from_db()
    return job


# ---- run (in a worker) -----------------------------------------------------------------------------

def _lease() -> timezone.datetime:
    return timezone.now() + timedelta(seconds=settings.INFERENCE_JOB_LEASE_SECONDS)


def _claim(job_id: Any) -> InferenceJob | None:
    """Take the job for this run, or return None when another run has it or it is finished."""
    now = timezone.now()
    updated = InferenceJob.objects.filter(InferenceJob.claimable(now), pk=job_id, cancel_requested=False).update(
        status=InferenceJob.Status.RUNNING, attempts=F("attempts") + 1, started_at=now, progress_done=0,
        lease_expires_at=_lease(), worker=worker_id(), taken_by="", taken_until=None,  # its lease vouches now
    )
    if not updated:
        # A job cancelled while queued but never picked up is already final; nothing to do.
        return None
    return InferenceJob.objects.select_related("version__model", "version__hardware", "model").get(pk=job_id)


def _finish(job: InferenceJob, attempt: int, **fields: Any) -> bool:
    """Record the end of this run, only if it still owns the job; return whether it did."""
    fields.setdefault("finished_at", timezone.now())
    fields["lease_expires_at"] = None
    done = InferenceJob.objects.filter(pk=job.pk, status=InferenceJob.Status.RUNNING, attempts=attempt).update(**fields)
    if done:
        job.refresh_from_db()
        _after_finish(job)
    return bool(done)


def job_run(job_id: Any) -> str:
    """Run one delivery of a job's task; return what happened (for the task's result)."""
    job = _claim(job_id)
    if job is None:
        return "skipped: already running elsewhere, finished or cancelled"
    attempt = job.attempts
    if attempt > job.max_attempts:
        _finish(job, attempt, status=InferenceJob.Status.FAILED,
                error=f"Gave up after {job.max_attempts} attempts: its worker stopped each time "
                      f"({job.error or 'no error was reported'}).")
        return "failed: too many attempts"
    from inference.errors import APIError
    from inference.pool import get_pool
    from inference.services.predict import predict_instances

    result_name = f"jobs/{job.pk}/result-{attempt}.jsonl"
    storage = job.result_file.storage
    try:
        loaded = get_pool().loaded(job.version)
        buffer = io.BytesIO()
        done = 0
        for chunk in chunks(instances_in(job), settings.INFERENCE_JOB_CHUNK_SIZE):
            predictions = asyncio.run(predict_instances(loaded, chunk, job.parameters,
                                                        timeout=settings.INFERENCE_JOB_TIMEOUT))
            buffer.write(b"".join(orjson.dumps(p, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n" for p in predictions))
            done += len(chunk)
            still_mine = InferenceJob.objects.filter(
                pk=job.pk, status=InferenceJob.Status.RUNNING, attempts=attempt
            ).update(progress_done=done, lease_expires_at=_lease())
            if not still_mine:
                return "superseded: another run took the job over"
            if InferenceJob.objects.filter(pk=job.pk, cancel_requested=True).exists():
                _finish(job, attempt, status=InferenceJob.Status.CANCELLED)
                return "cancelled"
        saved = storage.save(result_name, ContentFile(buffer.getvalue()))
        if not _finish(job, attempt, status=InferenceJob.Status.SUCCEEDED, result_file=saved, error=""):
            storage.delete(saved)
            return "superseded: another run finished the job"
        return "succeeded"
    except (APIError, JobInputError, ValueError) as exc:
        # The input (or the model's answer to it) is wrong: running again will not help.
        message = getattr(exc, "message", None) or str(exc)
        path = getattr(exc, "details", {}).get("path") if hasattr(exc, "details") else None
        _finish(job, attempt, status=InferenceJob.Status.FAILED,
                error=f"{message}" + (f" (at {path}, counting instances from the start of a chunk)" if path else ""))
        return "failed"
    except Exception as exc:  # noqa: BLE001 - anything else may pass on another attempt
        logger.exception("job %s attempt %d failed", job.pk, attempt)
        error = f"attempt {attempt}: {type(exc).__name__}: {exc}"
        if attempt >= job.max_attempts:
            _finish(job, attempt, status=InferenceJob.Status.FAILED, error=error)
            return "failed"
        if _finish(job, attempt, status=InferenceJob.Status.QUEUED, error=error, finished_at=None,
                   requeued_at=timezone.now()):
            _enqueue(job.pk)
        return "requeued"


# ---- reconcile: inference.services.job_recovery -----------------------------------------------------

from .job_recovery import jobs_reconcile  # noqa: E402, F401 - its home; callers import it from here too

# ---- results and callbacks -----------------------------------------------------------------------------

def _after_finish(job: InferenceJob) -> None:
    if job.callback_url:
        from django_q.tasks import async_task

        transaction.on_commit(lambda: async_task("inference.tasks.deliver_callback", str(job.pk), 1))
