"""A job's task on the broker: which queue, queueing it (a broker that is down loses nothing), the
completion callback, and the lease a running job holds."""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from ...jobs.models import InferenceJob

logger = logging.getLogger("inference.jobs")


def worker_id() -> str:
    """host:pid of the calling process (computed per call: workers are forked)."""
    return f"{socket.gethostname()}:{os.getpid()}"


class JobConflict(Exception):
    """The request conflicts with the job's state (e.g. cancel a finished job, reuse an idempotency key)."""


def job_queue(job_id: Any) -> str | None:
    """Return the django-q2 queue of a job's task: its hardware target's (INFERENCE_JOB_QUEUES), or
    None for the default queue."""
    queues = settings.INFERENCE_JOB_QUEUES
    if not queues:
        return None
    target = InferenceJob.objects.filter(pk=job_id).values_list("version__hardware__name", flat=True).first()
    return queues.get(target)


def current_queue() -> str | None:
    """The queue this qcluster serves (None: the default one), known without the database."""
    from django_q.conf import Conf

    return None if Conf.CLUSTER_NAME == settings.Q_CLUSTER["name"] else Conf.CLUSTER_NAME


def enqueue(job_id: Any, *, front: bool = False, queue: str | None | object = ...) -> None:
    """Queue the job's task on its queue (looked up unless given); `front`: ahead of the tasks
    waiting there (a re-run)."""
    from django_q.tasks import async_task

    options: dict[str, Any] = {"ack_failure": True}
    if queue is ...:
        queue = job_queue(job_id)
    if queue:
        options["cluster"] = queue  # django-q2's name for a queue: only workers of that cluster take it
    if front:
        from ...jobs.brokers import front_broker

        options["broker"] = front_broker(queue)
    async_task("inference.tasks.run_job", str(job_id), task_name=f"job-{job_id}", q_options=options)


def enqueue_committed(job_id: Any, *, front: bool = False) -> None:
    """Queue the task of a job whose row is committed; a broker that is down loses nothing.

    The row is the source of truth: when the task cannot be queued (the Redis broker is
    unreachable, say), the job stays ``queued`` and the reconciler queues it once the broker
    answers (its task is neither in the broker nor taken). The request that submitted it still
    succeeds (202): failing it would make the client submit a second job."""
    try:
        enqueue(job_id, front=front)
    except Exception as exc:  # noqa: BLE001 - the broker's error, whatever its client raises
        logger.warning(
            "job %s is saved but its task could not be queued (%s: %s); the reconciler will queue it "
            "once the broker answers (INFERENCE_JOB_LEASE_SECONDS, %d s, after)", job_id, type(exc).__name__, exc,
            settings.INFERENCE_JOB_LEASE_SECONDS,
        )


def lease() -> timezone.datetime:
    return timezone.now() + timedelta(seconds=settings.INFERENCE_JOB_LEASE_SECONDS)


def after_finish(job: InferenceJob) -> None:
    if job.callback_url:
        from django_q.tasks import async_task

        transaction.on_commit(lambda: async_task("inference.tasks.deliver_callback", str(job.pk), 1))
