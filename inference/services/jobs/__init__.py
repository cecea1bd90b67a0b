"""Background jobs: submit, run (in a django-q2 worker), cancel, retry, reconcile.

Guarantees, and how:

* Nothing submitted is lost: the job row is committed before its task is queued
  (``transaction.on_commit``); a task that is lost anyway (a crash between the two, a pusher
  or a whole cluster dying with it, the Redis broker dropping it) is re-queued by the
  reconciler (``reconcile``): it finds jobs whose task is neither in the broker nor taken
  by a live pusher.
* A job runs at most once at a time and produces one result: a run starts by *claiming*
  the row with a conditional UPDATE (queued, or running with an expired lease), and ends
  with another (still running, same attempt). A second delivery of a finished or running
  job does nothing; a superseded run's result file is discarded.
* Attempts are counted on the row: a job whose worker dies every time ends ``failed``
  after ``max_attempts`` (django-q2 alone would retry it forever).
* Inputs and results live in files under the storage backend, not in the row.

Modules: ``queueing`` (a job's task, the broker), ``submit`` (checks and the row), ``control``
(cancel, retry), ``run`` (one delivery, in a worker), ``reconcile`` (lost tasks).
"""

from .control import job_cancel, job_retry
from .limits import JobLimitReached, StoredBytesFull, TooManyJobs
from .queueing import JobConflict, job_queue, worker_id
from .reconcile import jobs_reconcile, jobs_recover
from .run import job_run
from .submit import check_parameters, job_request_submit, job_submit

__all__ = [
    "JobConflict", "JobLimitReached", "StoredBytesFull", "TooManyJobs", "check_parameters", "job_cancel", "job_queue", "job_request_submit", "job_retry", "job_run",
    "job_submit", "jobs_reconcile", "jobs_recover", "worker_id",
]
