"""The reconciler: queue again the task of a job that was lost (django-q2 schedule, every minute)."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import F, Q
from django.utils import timezone

from ...jobs.models import InferenceJob
from . import queueing

logger = logging.getLogger("inference.jobs")


def jobs_reconcile() -> dict[str, int]:
    """Re-queue jobs whose task was lost: running with an expired lease, or queued too long; and the
    validation of versions left `registered` too long (the registry API's background validation).

    A job's task is queued again once, then not before INFERENCE_JOB_REQUEUE_AFTER has passed
    (``requeued_at``): behind a long backlog the re-queued task may simply not have run yet, and
    queueing it at every run would grow the backlog with copies (each would find the job taken
    and do nothing, but only after waiting their turn)."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=settings.INFERENCE_JOB_REQUEUE_AFTER)
    not_requeued_lately = Q(requeued_at__isnull=True) | Q(requeued_at__lt=cutoff)
    stale_running = list(
        InferenceJob.objects.filter(status=InferenceJob.Status.RUNNING, lease_expires_at__lt=now)
        .filter(not_requeued_lately | Q(requeued_at__lt=F("lease_expires_at")))
        .values_list("pk", flat=True)
    )
    for pk in stale_running:
        # A cancel that the dead worker never saw ends the job here.
        if InferenceJob.objects.filter(pk=pk, status=InferenceJob.Status.RUNNING, lease_expires_at__lt=now,
                                       cancel_requested=True).update(
            status=InferenceJob.Status.CANCELLED, finished_at=now, lease_expires_at=None
        ):
            queueing.after_finish(InferenceJob.objects.get(pk=pk))
            continue
        if InferenceJob.objects.filter(pk=pk, status=InferenceJob.Status.RUNNING, lease_expires_at__lt=now).update(
            error="a worker stopped while running it (its lease expired)", requeued_at=now,
        ):
            queueing.enqueue_committed(pk)
    stale_queued = list(
        InferenceJob.objects.filter(status=InferenceJob.Status.QUEUED, created_at__lt=cutoff)
        .filter(Q(started_at__isnull=True) | Q(started_at__lt=cutoff)).filter(not_requeued_lately)
        .values_list("pk", flat=True)
    )
    for pk in stale_queued:
        if InferenceJob.objects.filter(pk=pk, status=InferenceJob.Status.QUEUED).update(requeued_at=now):
            queueing.enqueue_committed(pk)
    if stale_running or stale_queued:
        logger.warning("reconciler re-queued %d running job(s) with expired leases and %d queued job(s)",
                       len(stale_running), len(stale_queued))
    # Versions uploaded through the registry API whose validation task was lost.
    from inference.services.registry import versions_requeue_stale

    return {"running": len(stale_running), "queued": len(stale_queued), "versions": versions_requeue_stale()}
