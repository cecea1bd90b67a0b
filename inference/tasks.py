"""django-q2 task entry points. They take ids, never payloads, and call a service."""

from __future__ import annotations


def run_job(job_id: str) -> str:
    from .services.jobs import job_run

    return job_run(job_id)


def reconcile_jobs() -> dict[str, int]:
    from .services.jobs import jobs_reconcile

    return jobs_reconcile()


def deliver_callback(job_id: str, attempt: int = 1) -> str:
    from .jobs.callbacks import deliver

    return deliver(job_id, attempt)


def validate_version(version_id: int) -> str:
    """Validate a version registered through the registry API (loads it in a separate process)."""
    from .services.registry import validate_registered

    return validate_registered(version_id)


def rollup_requests() -> int:
    """Every minute: roll the last few minutes of request records up into per-minute rows."""
    from .monitoring.rollups import rollup_requests as rollup

    return rollup()


def purge_monitoring() -> dict[str, int]:
    """Hourly: delete request records and rollups past their retention."""
    from .monitoring.rollups import purge_monitoring as purge

    return purge()
