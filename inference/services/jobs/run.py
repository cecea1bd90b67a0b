"""One delivery of a job's task, in a django-q2 worker: claim the row, predict chunk by chunk, finish."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from typing import Any

import orjson
from django import db
from django.conf import settings
from django.core.files.base import File
from django.db.models import F
from django.utils import timezone

from ...jobs.inputs import JobInputError, chunks, stored_instances
from ...jobs.models import InferenceJob
from . import queueing
from .checks import locate

logger = logging.getLogger("inference.jobs")

RESULT_SPOOL_BYTES = 8 * 1024**2


def _claim(job_id: Any) -> InferenceJob | None:
    """Take the job for this run, or return None when another run has it or it is finished."""
    now = timezone.now()
    updated = InferenceJob.objects.filter(InferenceJob.claimable(now), pk=job_id, cancel_requested=False).update(
        status=InferenceJob.Status.RUNNING, attempts=F("attempts") + 1, started_at=now, progress_done=0,
        lease_expires_at=queueing.lease(), worker=queueing.worker_id(), taken_by="", taken_until=None,  # its lease vouches now
    )
    if not updated:
        # A job cancelled while queued but never picked up is already final; nothing to do.
        return None
    return InferenceJob.objects.select_related("version__model", "version__hardware", "model").get(pk=job_id)


def _claim_when_reachable(job_id: Any) -> tuple[InferenceJob | None, bool]:
    """Claim the job, waiting for the database while it is unreachable; return (job, claimed).

    The task in hand is the job's only copy, and its pusher's *taken* mark (renewed by the
    cluster while that pusher lives) keeps the reconciler from queuing another: a run that gave
    up here would lose the job until the cluster stops. So it reconnects and tries again (the
    database is what every task needs: nothing else could run meanwhile), and past
    ``claim_wait()`` hands the task back to the broker, at the front, if the broker takes it (the
    ORM broker is that same database), else goes on trying both until ``give_up_after()``.
    (False: not claimed, handed back.)"""
    started = time.monotonic()
    pause = 0.25
    while True:
        try:
            return _claim(job_id), True
        except (db.OperationalError, db.InterfaceError) as exc:
            db.close_old_connections()  # a connection that failed is dropped; the next query reconnects
            waited = time.monotonic() - started
            if waited >= claim_wait():
                try:
                    queueing.enqueue(job_id, front=True, queue=queueing.current_queue())
                except Exception as refused:  # noqa: BLE001 - the broker's error, whatever its client raises
                    if waited >= give_up_after():
                        logger.error("job %s: neither the database (%s) nor the broker (%s) answered for %.0f s; "
                                     "its task is dropped, and the job waits, queued, until this qcluster restarts "
                                     "(then the reconciler queues it)", job_id, exc, refused, waited)
                        raise exc from refused
                else:
                    logger.warning("job %s: the database is still unreachable after %.0f s (%s: %s); its task went "
                                   "back to the front of its queue", job_id, waited, type(exc).__name__, exc)
                    return None, False
            logger.warning("job %s: cannot claim it, the database is unreachable (%s: %s); trying again in %.1f s",
                           job_id, type(exc).__name__, exc, pause)
            time.sleep(pause)
            pause = min(pause * 2, 2.0)


def claim_wait() -> float:
    """How long a run waits for the database before handing its task back."""
    return min(300.0, settings.INFERENCE_JOB_TIMEOUT / 4)


def give_up_after() -> float:
    """How long a run that cannot hand its task back either keeps trying: inside the task's
    timeout (django-q2 kills a worker past it)."""
    return settings.INFERENCE_JOB_TIMEOUT * 0.9


def _finish(job: InferenceJob, attempt: int, **fields: Any) -> bool:
    """Record the end of this run, only if it still owns the job; return whether it did."""
    fields.setdefault("finished_at", timezone.now())
    fields["lease_expires_at"] = None
    done = InferenceJob.objects.filter(pk=job.pk, status=InferenceJob.Status.RUNNING, attempts=attempt).update(**fields)
    if done:
        job.refresh_from_db()
        queueing.after_finish(job)
    return bool(done)


def job_run(job_id: Any) -> str:
    """Run one delivery of a job's task; return what happened (for the task's result)."""
    job, claimed = _claim_when_reachable(job_id)
    if not claimed:
        return "handed back: the database is unreachable"
    if job is None:
        return "skipped: already running elsewhere, finished or cancelled"
    attempt = job.attempts
    if attempt > job.max_attempts:
        _finish(job, attempt, status=InferenceJob.Status.FAILED,
                error=f"Gave up after {job.max_attempts} attempts: its worker stopped each time "
                      f"({job.error or 'no error was reported'}).")
        return "failed: too many attempts"
    from inference.errors import APIError
    from inference.loadctl import check_in_worker
    from inference.pool import get_pool
    from inference.services.predict import predict_instances

    result_name = f"jobs/{job.pk}/result-{attempt}.jsonl"
    storage = job.result_file.storage
    lines_named = job.input_format != InferenceJob.InputFormat.JSON  # a client's file: its line numbers
    try:
        check_in_worker()  # unload here what the registry archived or moved away from (inference.loadctl)
        loaded = get_pool().loaded(job.version)
        # The result is spooled to a temporary file past RESULT_SPOOL_BYTES: a large job's predictions
        # are not all held in memory, like its input (read a line and a chunk at a time).
        with tempfile.SpooledTemporaryFile(max_size=RESULT_SPOOL_BYTES) as buffer:
            done = 0
            for rows in chunks(stored_instances(job), settings.INFERENCE_JOB_CHUNK_SIZE):
                chunk = [instance for _, instance in rows]
                try:
                    predictions = asyncio.run(predict_instances(loaded, chunk, job.parameters,
                                                                timeout=settings.INFERENCE_JOB_TIMEOUT))
                except APIError as exc:  # named in the whole input, not in the chunk
                    where, _, _ = locate(exc.details.get("path", ""), offset=done, size=len(chunk),
                                         lines=[line for line, _ in rows] if lines_named else None)
                    raise JobInputError(f"{where}: {exc.message}") from exc
                del chunk, rows
                buffer.write(b"".join(orjson.dumps(p, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
                                      for p in predictions))
                done += len(predictions)
                still_mine = InferenceJob.objects.filter(
                    pk=job.pk, status=InferenceJob.Status.RUNNING, attempts=attempt
                ).update(progress_done=done, lease_expires_at=queueing.lease())
                if not still_mine:
                    return "superseded: another run took the job over"
                if InferenceJob.objects.filter(pk=job.pk, cancel_requested=True).exists():
                    _finish(job, attempt, status=InferenceJob.Status.CANCELLED)
                    return "cancelled"
            buffer.seek(0)
            saved = storage.save(result_name, File(buffer, name="result.jsonl"))
        if not _finish(job, attempt, status=InferenceJob.Status.SUCCEEDED, result_file=saved, error=""):
            storage.delete(saved)
            return "superseded: another run finished the job"
        return "succeeded"
    except (APIError, JobInputError, ValueError) as exc:
        # The input (or the model's answer to it) is wrong: running again will not help.
        _finish(job, attempt, status=InferenceJob.Status.FAILED, error=getattr(exc, "message", None) or str(exc))
        return "failed"
    except Exception as exc:  # noqa: BLE001 - anything else may pass on another attempt
        logger.exception("job %s attempt %d failed", job.pk, attempt)
        error = f"attempt {attempt}: {type(exc).__name__}: {exc}"
        if attempt >= job.max_attempts:
            _finish(job, attempt, status=InferenceJob.Status.FAILED, error=error)
            return "failed"
        if _finish(job, attempt, status=InferenceJob.Status.QUEUED, error=error, finished_at=None,
                   requeued_at=timezone.now()):
            queueing.enqueue(job.pk)
        return "requeued"
