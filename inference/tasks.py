"""django-q2 task entry points. They take ids, never payloads, and call a service."""

from __future__ import annotations


def run_job(job_id: str) -> str:
    from .jobs.services import job_run

    return job_run(job_id)


def reconcile_jobs() -> dict[str, int]:
    from .jobs.services import jobs_reconcile

    return jobs_reconcile()


def deliver_callback(job_id: str, attempt: int = 1) -> str:
    from .jobs.callbacks import deliver

    return deliver(job_id, attempt)
