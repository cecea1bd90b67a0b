"""Reads of background jobs: a job's state as clients and callbacks see it, a key's own jobs, results."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from django.db.models import Count, Q, QuerySet, Sum

from ..errors import NotFound
from .models import InferenceJob


def job_url(job: InferenceJob) -> str:
    return f"/api/v1/jobs/{job.pk}"


def job_state(job: InferenceJob) -> dict[str, Any]:
    """A job's state: the body of GET /api/v1/jobs/{id}, and what its completion callback POSTs."""
    return {
        "id": str(job.pk),
        "status": job.status,
        "model": job.model.name,
        "version": job.version.version,
        "progress": {"done": job.progress_done, "total": job.progress_total},
        "attempts": job.attempts,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "error": job.error or None,
        "url": job_url(job),
        "result_url": f"{job_url(job)}/result" if job.status == InferenceJob.Status.SUCCEEDED else None,
    }


def own_job(*, key_prefix: str, job_id: str) -> InferenceJob:
    """The key's job; another key's job is NotFound, like one that does not exist."""
    try:
        pk = uuid.UUID(str(job_id))
    except ValueError:
        raise NotFound(f"No job {job_id!r}.") from None
    job = InferenceJob.objects.select_related("model", "version").filter(pk=pk, key_prefix=key_prefix).first()
    if job is None:
        raise NotFound(f"No job {job_id!r}.")
    return job


def jobs_of_key(*, key_prefix: str, status: str | None = None) -> QuerySet[InferenceJob]:
    """A key's jobs, newest first."""
    qs = InferenceJob.objects.select_related("model", "version").filter(key_prefix=key_prefix)
    return qs.filter(status=status) if status else qs


def job_predictions(job: InferenceJob) -> list[Any]:
    """A finished job's predictions (from its result file)."""
    with job.result_file.open("rb") as fh:
        return [orjson.loads(line) for line in fh if line.strip()]


def key_job_usage(*, key_prefix: str) -> tuple[int, int]:
    """(jobs queued or running, bytes of stored input files) of a key's jobs: what its per-key limits count."""
    usage = InferenceJob.objects.filter(key_prefix=key_prefix).aggregate(
        active=Count("pk", filter=Q(status__in=[InferenceJob.Status.QUEUED, InferenceJob.Status.RUNNING])),
        stored=Sum("input_bytes", filter=~Q(input_file="")),
    )
    return usage["active"] or 0, usage["stored"] or 0
