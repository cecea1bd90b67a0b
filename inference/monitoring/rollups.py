"""Per-minute rollups of the request records, their retention, and the series the admin charts.

``rollup_requests()`` (django-q2 schedule, every minute) recomputes the rollups of the
last ``INFERENCE_ROLLUP_LOOKBACK_MINUTES`` minutes, the current one included, from the
records: two GROUP BY queries (figures per minute; requests per latency bucket per
minute) and one upsert. Recomputing is idempotent, so records that arrive late (each web
process flushes every few seconds) are counted on the next run.

Latency percentiles are estimated from the bucket counts (10 % wide buckets, linear
interpolation inside a bucket, never above the largest latency seen), the way Prometheus'
``histogram_quantile`` does; bucket counts add up, so any range of minutes has percentiles
too, not only single minutes.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Max, Min, Q, Sum
from django.db.models.functions import TruncMinute
from django.utils import timezone

from .models import RequestRecord, RequestRollup, ShadowRollup
from .records import bucket_upper_ms

PERCENTILES = (("p50_ms", 0.50), ("p95_ms", 0.95), ("p99_ms", 0.99))


def percentile(buckets: dict[int, int], q: float, *, max_ms: float | None = None) -> float | None:
    """Estimate the q-quantile (0..1) of latencies counted in `buckets` ({index: requests}); None if empty."""
    total = sum(buckets.values())
    if not total:
        return None
    rank = q * total
    seen = 0
    estimate = bucket_upper_ms(max(buckets))
    for index in sorted(buckets):
        n = buckets[index]
        if n and seen + n >= rank:
            low = bucket_upper_ms(index - 1) if index > 0 else 0.0
            estimate = low + (bucket_upper_ms(index) - low) * ((rank - seen) / n)
            break
        seen += n
    return min(estimate, max_ms) if max_ms is not None else estimate


def _minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def rollup_requests(*, now: datetime | None = None, minutes: int | None = None) -> int:
    """Recompute the rollups of the last `minutes` minutes (the current one included); return rows written."""
    now = now or timezone.now()
    minutes = settings.INFERENCE_ROLLUP_LOOKBACK_MINUTES if minutes is None else minutes
    end = _minute(now) + timedelta(minutes=1)
    start = end - timedelta(minutes=max(1, minutes))
    records = RequestRecord.objects.filter(at__gte=start, at__lt=end).order_by().annotate(m=TruncMinute("at"))
    errors_4xx = Q(status__gte=400, status__lt=500)
    batched = Q(batch_size__gt=0)
    figures = records.values("model", "version", "m").annotate(
        count=Count("id"),
        client_errors=Count("id", filter=errors_4xx),
        server_errors=Count("id", filter=Q(status__gte=500)),
        n_instances=Sum("instances"),
        latency_sum=Sum("latency_ms"),
        latency_max=Max("latency_ms"),
        batch_sum=Sum("batch_size", filter=batched),
        n_batched=Count("id", filter=batched),
        depth_sum=Sum("queue_depth"),
        depth_max=Max("queue_depth"),
    )
    histograms: dict[tuple, dict[int, int]] = defaultdict(dict)
    for row in records.values("model", "version", "m", "latency_bucket").annotate(n=Count("id")):
        histograms[(row["model"], row["version"], row["m"])][row["latency_bucket"]] = row["n"]
    rollups = []
    for row in figures:
        buckets = histograms.get((row["model"], row["version"], row["m"]), {})
        latency_max = row["latency_max"] or 0.0
        rollup = RequestRollup(
            minute=row["m"], model=row["model"], version=row["version"] or 0, count=row["count"],
            client_errors=row["client_errors"], server_errors=row["server_errors"],
            instances=row["n_instances"] or 0, latency_sum_ms=row["latency_sum"] or 0.0, latency_max_ms=latency_max,
            latency_buckets={str(k): v for k, v in sorted(buckets.items())},
            batch_size_sum=row["batch_sum"] or 0, batched=row["n_batched"],
            queue_depth_sum=row["depth_sum"] or 0, queue_depth_max=row["depth_max"] or 0,
        )
        for name, q in PERCENTILES:
            setattr(rollup, name, percentile(buckets, q, max_ms=latency_max) or 0.0)
        rollup.updated_at = now
        rollups.append(rollup)
    if rollups:
        update = [f.name for f in RequestRollup._meta.concrete_fields
                  if f.name not in ("id", "model", "version", "minute")]
        RequestRollup.objects.bulk_create(rollups, update_conflicts=True,
                                          unique_fields=["model", "version", "minute"], update_fields=update)
    return len(rollups)


def purge_monitoring(*, now: datetime | None = None) -> dict[str, int]:
    """Delete records and rollups (shadow comparisons too) older than their retention settings; return how many
    of each."""
    now = now or timezone.now()
    records_before = now - timedelta(days=settings.INFERENCE_RECORDS_RETENTION_DAYS)
    rollups_before = now - timedelta(days=settings.INFERENCE_ROLLUPS_RETENTION_DAYS)
    records, _ = RequestRecord.objects.filter(at__lt=records_before).delete()
    rollups, _ = RequestRollup.objects.filter(minute__lt=rollups_before).delete()
    shadow_rollups, _ = ShadowRollup.objects.filter(minute__lt=rollups_before).delete()
    return {"records": records, "rollups": rollups, "shadow_rollups": shadow_rollups}


# ---- series for the admin ---------------------------------------------------------------------------

RANGES = {
    # name: (label, length, minutes per point)
    "1h": ("last hour", timedelta(hours=1), 1),
    "24h": ("last 24 hours", timedelta(hours=24), 15),
}


@dataclass
class _Acc:
    count: int = 0
    client_errors: int = 0
    server_errors: int = 0
    instances: int = 0
    latency_sum: float = 0.0
    latency_max: float = 0.0
    batch_sum: int = 0
    batched: int = 0
    depth_sum: int = 0
    depth_max: int = 0
    buckets: dict[int, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, r: RequestRollup) -> None:
        self.count += r.count
        self.client_errors += r.client_errors
        self.server_errors += r.server_errors
        self.instances += r.instances
        self.latency_sum += r.latency_sum_ms
        self.latency_max = max(self.latency_max, r.latency_max_ms)
        self.batch_sum += r.batch_size_sum
        self.batched += r.batched
        self.depth_sum += r.queue_depth_sum
        self.depth_max = max(self.depth_max, r.queue_depth_max)
        for k, v in r.latency_buckets.items():
            self.buckets[int(k)] += v

    def figures(self, seconds: float) -> dict[str, Any]:
        n = self.count
        out: dict[str, Any] = {
            "requests": n,
            "rps": n / seconds if seconds else 0.0,
            "client_errors": self.client_errors,
            "server_errors": self.server_errors,
            "error_rate": 100.0 * (self.client_errors + self.server_errors) / n if n else 0.0,
            "server_error_rate": 100.0 * self.server_errors / n if n else 0.0,
            "mean_ms": self.latency_sum / n if n else None,
            "max_ms": self.latency_max if n else None,
            "mean_batch": self.batch_sum / self.batched if self.batched else None,
            "mean_queue": self.depth_sum / n if n else None,
            "max_queue": self.depth_max if n else None,
        }
        for name, q in PERCENTILES:
            out[name] = percentile(self.buckets, q, max_ms=self.latency_max) if n else None
        return out


def _round(value: Any, digits: int = 6) -> Any:
    return round(value, digits) if isinstance(value, float) and math.isfinite(value) else value


def series(*, range_name: str = "1h", now: datetime | None = None, model: str | None = None,
           version: int | None = None) -> list[dict[str, Any]]:
    """Return, per model version with traffic in the range, its summary and one point per slot.

    Each item: ``{"model", "version", "summary": {...}, "points": [{"t": epoch seconds, ...}]}``;
    a slot without traffic has zero requests and no latency (a gap in the charts).
    """
    _, length, step = RANGES[range_name]
    now = now or timezone.now()
    end = _minute(now) + timedelta(minutes=1)
    start = end - length
    rows = RequestRollup.objects.filter(minute__gte=start, minute__lt=end)
    if model is not None:
        rows = rows.filter(model=model)
    if version is not None:
        rows = rows.filter(version=version)
    step_s = step * 60
    start_ts = int(start.timestamp())
    slots = int(length.total_seconds()) // step_s
    per: dict[tuple[str, int], dict[int, _Acc]] = defaultdict(lambda: defaultdict(_Acc))
    totals: dict[tuple[str, int], _Acc] = defaultdict(_Acc)
    for r in rows.order_by("minute"):
        key = (r.model, r.version)
        slot = (int(r.minute.timestamp()) - start_ts) // step_s
        per[key][slot].add(r)
        totals[key].add(r)
    out = []
    for key in sorted(per):
        points = []
        for slot in range(slots):
            acc = per[key].get(slot, _Acc())
            point = {k: _round(v) for k, v in acc.figures(step_s).items()}
            point["t"] = start_ts + slot * step_s
            points.append(point)
        summary = {k: _round(v) for k, v in totals[key].figures(length.total_seconds()).items()}
        out.append({"model": key[0], "version": key[1], "summary": summary, "points": points,
                    "step_minutes": step})
    return out


def version_summaries(*, model: str, versions: list[int], range_name: str = "1h",
                      now: datetime | None = None) -> dict[int, dict[str, Any]]:
    """Each of `model`'s `versions` over the range, from its rollups: the figures of ``series``'s summary
    (requests, error rate, p50/p95/p99 ...), a version without traffic at zero requests and no latency."""
    _, length, _ = RANGES[range_name]
    now = now or timezone.now()
    end = _minute(now) + timedelta(minutes=1)
    totals: dict[int, _Acc] = {n: _Acc() for n in versions}
    for r in RequestRollup.objects.filter(model=model, version__in=versions, minute__gte=end - length, minute__lt=end):
        totals[r.version].add(r)
    return {n: {k: _round(v) for k, v in acc.figures(length.total_seconds()).items()} for n, acc in totals.items()}


def shadow_summary(*, model: str, since: datetime, until: datetime | None = None) -> list[dict[str, Any]]:
    """Return, per (primary version, shadow version) of `model` with shadow traffic from `since` (to `until`),
    the comparison counts added up (``ShadowRollup``, per minute, from ``inference.services.shadow``).

    Each item: ``{"model", "primary_version", "shadow_version", "compared", "agreed", "agreement"
    (agreed / compared, None when nothing was compared), "mean_abs_diff" (None likewise), "dropped",
    "failed", "first_minute", "last_minute"}``; counts are predictions; newest pairs first."""
    rows = ShadowRollup.objects.filter(model=model, minute__gte=_minute(since))
    if until is not None:
        rows = rows.filter(minute__lte=until)
    sums = rows.order_by().values("primary_version", "shadow_version").annotate(
        compared=Sum("compared"), agreed=Sum("agreed"), abs_diff_sum=Sum("abs_diff_sum"),
        abs_diff_count=Sum("abs_diff_count"), dropped=Sum("dropped"), failed=Sum("failed"),
        first_minute=Min("minute"), last_minute=Max("minute"),
    )
    out = []
    for row in sums:
        compared, elements = row["compared"] or 0, row["abs_diff_count"] or 0
        out.append({
            "model": model, "primary_version": row["primary_version"], "shadow_version": row["shadow_version"],
            "compared": compared, "agreed": row["agreed"] or 0,
            "agreement": (row["agreed"] or 0) / compared if compared else None,
            "mean_abs_diff": (row["abs_diff_sum"] or 0.0) / elements if elements else None,
            "dropped": row["dropped"] or 0, "failed": row["failed"] or 0,
            "first_minute": row["first_minute"], "last_minute": row["last_minute"],
        })
    out.sort(key=lambda r: (r["last_minute"], r["primary_version"], r["shadow_version"]), reverse=True)
    return out
