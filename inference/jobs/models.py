"""The background job row: the source of truth for a job (DESIGN.md, "Background jobs")."""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q

CALLBACK_URL_MAX_LENGTH = 500


def job_file_path(instance: InferenceJob, filename: str) -> str:
    return f"jobs/{instance.pk}/{filename}"


class InferenceJob(models.Model):
    """A batch of predictions computed by a django-q2 worker; tasks get only its id."""

    class Status(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"
        CANCELLED = "cancelled", "cancelled"

    class InputFormat(models.TextChoices):
        JSON = "json", "JSON instances"
        JSONL = "jsonl", "JSONL file"
        CSV = "csv", "CSV file"

    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    model = models.ForeignKey("registry.RegisteredModel", on_delete=models.PROTECT, related_name="jobs")
    version = models.ForeignKey("registry.ModelVersion", on_delete=models.PROTECT, related_name="jobs")
    api_key = models.ForeignKey(
        "inference.APIKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs"
    )
    key_prefix = models.CharField(max_length=16, blank=True, db_index=True)
    submitted_by = models.CharField(max_length=200, blank=True, help_text="key:<name> (<prefix>), user:<name> or system")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    cancel_requested = models.BooleanField(default=False)
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=3)
    progress_done = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    input_format = models.CharField(max_length=8, choices=InputFormat.choices, default=InputFormat.JSON)
    input_file = models.FileField(upload_to=job_file_path, max_length=255)
    input_bytes = models.BigIntegerField(default=0)
    parameters = models.JSONField(null=True, blank=True)
    result_file = models.FileField(upload_to=job_file_path, max_length=255, blank=True)
    error = models.TextField(blank=True)
    idempotency_key = models.CharField(max_length=200, blank=True)
    request_sha256 = models.CharField(max_length=64, blank=True)
    callback_url = models.URLField(max_length=CALLBACK_URL_MAX_LENGTH, blank=True)
    callback_status = models.CharField(max_length=200, blank=True)
    worker = models.CharField(max_length=200, blank=True, help_text="host:pid of the last worker that ran it")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(
        null=True, blank=True, db_index=True,
        help_text="A running job whose worker stops renewing this is taken over by the reconciler.",
    )
    requeued_at = models.DateTimeField(
        null=True, blank=True,
        help_text="When its task was last queued again (by the reconciler, a retry, a failed attempt).",
    )
    taken_by = models.CharField(max_length=200, blank=True,
                                help_text="host:pid of the pusher that took its task from the broker")
    taken_until = models.DateTimeField(
        null=True, blank=True,
        help_text="Until when that pusher's cluster vouches for the task (renewed while the pusher lives).",
    )

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "inference job"
        constraints = [
            models.UniqueConstraint(
                fields=["key_prefix", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="job_idempotency_key_unique_per_key",
            ),
            models.CheckConstraint(condition=Q(progress_done__lte=models.F("progress_total")) | Q(progress_total=0),
                                   name="job_progress_within_total"),
        ]
        indexes = [models.Index(fields=["status", "lease_expires_at"], name="job_status_lease")]

    def __str__(self) -> str:
        return f"job {self.pk} ({self.status})"

    @classmethod
    def claimable(cls, now=None) -> Q:
        """Jobs a run may take: queued, or running with an expired lease (their run is gone)."""
        from django.utils import timezone

        now = now or timezone.now()
        return Q(status=cls.Status.QUEUED) | Q(status=cls.Status.RUNNING, lease_expires_at__lt=now)

    @property
    def finished(self) -> bool:
        return self.status in self.FINISHED
