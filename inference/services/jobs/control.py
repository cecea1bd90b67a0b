"""Cancel and retry a job."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from ...jobs.models import InferenceJob
from . import queueing
from .limits import check_key_limits
from .queueing import JobConflict


def job_cancel(*, job: InferenceJob) -> InferenceJob:
    """Cancel a job: a queued one never runs; a running one stops at its next chunk boundary."""
    now = timezone.now()
    if InferenceJob.objects.filter(pk=job.pk, status=InferenceJob.Status.QUEUED).update(
        status=InferenceJob.Status.CANCELLED, cancel_requested=True, finished_at=now
    ):
        job.refresh_from_db()
        queueing.after_finish(job)
        return job
    if InferenceJob.objects.filter(pk=job.pk, status=InferenceJob.Status.RUNNING).update(cancel_requested=True):
        job.refresh_from_db()
        return job
    job.refresh_from_db()
    raise JobConflict(f"The job is {job.status}; only queued or running jobs can be cancelled.")


def job_retry(*, job: InferenceJob, key_limits: bool = False) -> InferenceJob:
    """Run a failed or cancelled job again from the start (attempts reset). With `key_limits` (the jobs
    API), a key at INFERENCE_JOB_MAX_QUEUED_PER_KEY gets TooManyJobs: a retry queues a job too."""
    with transaction.atomic():
        if key_limits:
            check_key_limits(key_prefix=job.key_prefix, new_bytes=None)
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
        transaction.on_commit(lambda: queueing.enqueue_committed(job.pk))
    job.refresh_from_db()
    return job
