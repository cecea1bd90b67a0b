"""Request records and their per-minute rollups (DESIGN.md, "Monitoring").

A ``RequestRecord`` is one predict request as the platform saw it. Records are never
written on the request path: each process buffers them in memory and a background thread
inserts them in bulk (``monitoring.records``). ``RequestRollup`` rows summarise one
minute of one model version; the admin's monitoring pages read only rollups.

Model and version are kept as plain values, not foreign keys: a record outlives the
version it names (archived, deleted), a rejected request may name a model that does not
exist, and a bulk insert needs no lookups.
"""

from __future__ import annotations

from django.db import models


class RequestRecord(models.Model):
    """One predict request: who asked (key prefix, never the key), what for, how it went."""

    at = models.DateTimeField(db_index=True, help_text="When the request finished.")
    request_id = models.CharField(max_length=128, db_index=True)
    model = models.CharField(max_length=63)
    version = models.PositiveIntegerField(null=True, blank=True, help_text="Empty when no version was resolved.")
    key_prefix = models.CharField(max_length=16, blank=True)
    status = models.PositiveSmallIntegerField()
    error_code = models.CharField(max_length=40, blank=True)
    latency_ms = models.FloatField(help_text="From the request parsed to the response ready.")
    latency_bucket = models.SmallIntegerField(default=0, help_text="Index of the rollup's latency bucket.")
    queue_ms = models.FloatField(null=True, blank=True)
    compute_ms = models.FloatField(null=True, blank=True)
    instances = models.PositiveIntegerField(default=0)
    batch_size = models.PositiveIntegerField(default=0, help_text="Instances in the forward pass it ran in.")
    queue_depth = models.PositiveIntegerField(default=0, help_text="Requests queued ahead of it in the batcher.")
    request_payload = models.JSONField(null=True, blank=True)
    response_payload = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-at"]
        verbose_name = "request record"
        # Only `at` (rollups, retention, the admin's date filter) and `request_id` are indexed:
        # each index costs every one of the bulk inserts.

    def __str__(self) -> str:
        return f"{self.request_id} {self.model} v{self.version} {self.status}"


class RequestRollup(models.Model):
    """One minute of one model version: counts, latency histogram, batch and queue figures."""

    minute = models.DateTimeField(db_index=True, help_text="Start of the minute (UTC).")
    model = models.CharField(max_length=63)
    version = models.PositiveIntegerField(default=0, help_text="0: requests that named no servable version.")
    count = models.PositiveIntegerField(default=0)
    client_errors = models.PositiveIntegerField(default=0, help_text="Answers 400-499.")
    server_errors = models.PositiveIntegerField(default=0, help_text="Answers 500-599 (503 overloaded included).")
    instances = models.PositiveIntegerField(default=0)
    latency_sum_ms = models.FloatField(default=0.0)
    latency_max_ms = models.FloatField(default=0.0)
    latency_buckets = models.JSONField(default=dict, help_text="{bucket index: requests}; see monitoring.rollups.")
    p50_ms = models.FloatField(default=0.0)
    p95_ms = models.FloatField(default=0.0)
    p99_ms = models.FloatField(default=0.0)
    batch_size_sum = models.PositiveBigIntegerField(default=0)
    batched = models.PositiveIntegerField(default=0, help_text="Requests that ran in a forward pass.")
    queue_depth_sum = models.PositiveBigIntegerField(default=0)
    queue_depth_max = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-minute", "model", "version"]
        verbose_name = "request rollup (per minute)"
        constraints = [
            models.UniqueConstraint(fields=["model", "version", "minute"], name="rollup_unique_per_minute"),
        ]

    def __str__(self) -> str:
        return f"{self.model} v{self.version} {self.minute:%Y-%m-%d %H:%M}"

    @property
    def errors(self) -> int:
        return self.client_errors + self.server_errors

    @property
    def mean_batch_size(self) -> float:
        return self.batch_size_sum / self.batched if self.batched else 0.0


class ShadowRollup(models.Model):
    """One minute of one shadow comparison: a model's primary version (the one that answered) against the
    version that shadowed it (``inference.services.shadow``).

    Every count is in predictions (instances): ``compared`` were run by both and compared, ``agreed`` of
    them had the same top-1 (label, or argmax of the first numeric output); ``dropped`` were not run by
    the shadow (its queue was full), ``failed`` could not be compared (the shadow raised, timed out, or
    answered other shapes). Each web process adds its counts every few seconds (an atomic increment),
    so several processes add up in one row.
    """

    minute = models.DateTimeField(db_index=True, help_text="Start of the minute (UTC).")
    model = models.CharField(max_length=63)
    primary_version = models.PositiveIntegerField(help_text="The version that answered the clients.")
    shadow_version = models.PositiveIntegerField(help_text="The version that got a copy of the requests.")
    compared = models.PositiveBigIntegerField(default=0)
    agreed = models.PositiveBigIntegerField(default=0)
    abs_diff_sum = models.FloatField(default=0.0, help_text="Sum of |primary - shadow| over the numeric outputs.")
    abs_diff_count = models.PositiveBigIntegerField(default=0, help_text="Output elements in abs_diff_sum.")
    dropped = models.PositiveBigIntegerField(default=0)
    failed = models.PositiveBigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-minute", "model", "primary_version", "shadow_version"]
        verbose_name = "shadow rollup (per minute)"
        constraints = [
            models.UniqueConstraint(fields=["model", "primary_version", "shadow_version", "minute"],
                                    name="shadow_rollup_unique_per_minute"),
        ]

    def __str__(self) -> str:
        return f"{self.model} v{self.primary_version} vs v{self.shadow_version} {self.minute:%Y-%m-%d %H:%M}"

    @property
    def agreement(self) -> float | None:
        return self.agreed / self.compared if self.compared else None

    @property
    def mean_abs_diff(self) -> float | None:
        return self.abs_diff_sum / self.abs_diff_count if self.abs_diff_count else None
