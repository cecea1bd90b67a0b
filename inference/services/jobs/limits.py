"""Per-key limits on background jobs: how many a key may have queued or running, and how many bytes
of input files its jobs may keep stored. One key cannot fill the queue or the disk for all."""

from __future__ import annotations

from typing import Any

from django.conf import settings

from ...jobs.selectors import key_job_usage

RETRY_AFTER = 30  # seconds a client over its queued-jobs limit is asked to wait (a job's chunk or more)


class JobLimitReached(Exception):
    """A key is at one of its job limits; `details` say which, with the numbers."""

    def __init__(self, message: str, *, details: dict[str, Any]):
        super().__init__(message)
        self.details = details


class TooManyJobs(JobLimitReached):
    """The key has INFERENCE_JOB_MAX_QUEUED_PER_KEY jobs queued or running (a 429 over REST)."""


class StoredBytesFull(JobLimitReached):
    """The key's stored job inputs plus this one would pass INFERENCE_JOB_MAX_STORED_BYTES_PER_KEY (a 413)."""


def check_key_limits(*, key_prefix: str, new_bytes: int | None) -> None:
    """Raise TooManyJobs or StoredBytesFull unless the key may submit a job of `new_bytes` of input.

    `new_bytes` None (a retry, which stores nothing) checks the queued-jobs limit only. Jobs submitted
    without a key (from Python, inside the deployment) are not limited."""
    if not key_prefix:
        return
    active, stored = key_job_usage(key_prefix=key_prefix)
    queued_limit = settings.INFERENCE_JOB_MAX_QUEUED_PER_KEY
    if active >= queued_limit:
        raise TooManyJobs(
            f"This API key has {active} jobs queued or running, its limit (INFERENCE_JOB_MAX_QUEUED_PER_KEY="
            f"{queued_limit}); submit more once some finish, or cancel some.",
            details={"queued_or_running": active, "limit": queued_limit, "retry_after": RETRY_AFTER},
        )
    bytes_limit = settings.INFERENCE_JOB_MAX_STORED_BYTES_PER_KEY
    if new_bytes is not None and stored + new_bytes > bytes_limit:
        raise StoredBytesFull(
            f"This API key's jobs keep {stored:,} bytes of input files; {new_bytes:,} more would pass its limit of "
            f"{bytes_limit:,} (INFERENCE_JOB_MAX_STORED_BYTES_PER_KEY).",
            details={"stored_bytes": stored, "job_bytes": new_bytes, "limit": bytes_limit},
        )
