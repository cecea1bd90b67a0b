"""The reconciler: run again every job whose task is gone, and only those (DESIGN.md, "Background jobs").

A job may be run by a task when it is *claimable*: queued, or running with an expired lease
(its worker stopped renewing it). Its task is somewhere, or gone:

* waiting in the broker (behind a backlog): it will run; nothing to do;
* taken by a pusher (``taken_by``/``taken_until``, set by ``inference.jobs.brokers`` when the
  pusher dequeues it, renewed by that pusher's cluster while the pusher lives): in that
  cluster's hands; nothing to do;
* neither: gone (its pusher or its whole cluster died, Redis lost it, the broker was down when
  it was submitted, the worker running it died). The reconciler queues it again, at the
  *front* of the queue, and marks when (``requeued_at``) so that it waits one lease before
  judging that task lost in turn.

Each qcluster runs ``jobs_recover`` every INFERENCE_JOB_LEASE_SECONDS / 4
(``inference.jobs.keeper``); the minute schedule (``jobs_reconcile``) stays as a fallback. A job runs again within about 1.25 leases of losing its
task, and never twice at once: the run claims the row with a conditional UPDATE, and a task
queued twice (two reconcilers, a race with a pusher) finds the job taken and does nothing.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from ...jobs.models import InferenceJob
from . import queueing

logger = logging.getLogger("inference.jobs")


def jobs_reconcile() -> dict[str, int]:
    """``jobs_recover``, and re-validate versions left `registered` (the registry API's background
    validation; no more often than the minute schedule that runs this). Return how many of each."""
    from ..registry import versions_requeue_stale

    return {**jobs_recover(), "versions": versions_requeue_stale()}


def jobs_recover() -> dict[str, int]:
    """Queue again the tasks of claimable jobs that are neither waiting in a broker nor taken by a live
    pusher; end running jobs cancelled while their worker was dead. Return how many, running and queued."""
    now = timezone.now()
    lease = timedelta(seconds=settings.INFERENCE_JOB_LEASE_SECONDS)
    expired = Q(status=InferenceJob.Status.RUNNING, lease_expires_at__lt=now)
    for pk in InferenceJob.objects.filter(expired, cancel_requested=True).values_list("pk", flat=True):
        # A cancel that the dead worker never saw ends the job here.
        if InferenceJob.objects.filter(expired, pk=pk, cancel_requested=True).update(
            status=InferenceJob.Status.CANCELLED, finished_at=now, lease_expires_at=None
        ):
            queueing.after_finish(InferenceJob.objects.get(pk=pk))
    lost = (
        InferenceJob.claimable(now) & Q(cancel_requested=False)
        & (Q(taken_until__isnull=True) | Q(taken_until__lt=now))
        & Q(created_at__lt=now - lease) & (Q(requeued_at__isnull=True) | Q(requeued_at__lt=now - lease))
    )
    candidates = dict(InferenceJob.objects.filter(lost).values_list("pk", "status"))
    counts = {"running": 0, "queued": 0}
    if candidates:
        from ...jobs.brokers import waiting_job_ids

        try:
            waiting = waiting_job_ids()
        except Exception as exc:  # noqa: BLE001 - the broker's error, whatever its client raises
            logger.warning("reconciler: cannot list the tasks waiting in the broker (%s: %s); %d job(s) may have "
                           "lost their task, checked again at the next run", type(exc).__name__, exc, len(candidates))
            waiting = None
        for pk, status in candidates.items():
            if waiting is None or str(pk) in waiting:
                continue
            fields = {"requeued_at": now, "taken_by": "", "taken_until": None}
            if status == InferenceJob.Status.RUNNING:
                fields["error"] = "a worker stopped while running it (its lease expired)"
            if InferenceJob.objects.filter(lost, pk=pk).update(**fields):  # one reconciler wins
                counts[status] += 1
                queueing.enqueue_committed(pk, front=True)
    if counts["running"] or counts["queued"]:
        logger.warning("reconciler queued again the tasks of %d running job(s) with expired leases and %d queued "
                       "job(s) whose tasks were neither in the broker nor taken by a live pusher",
                       counts["running"], counts["queued"])
    return counts
