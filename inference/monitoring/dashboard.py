"""What the admin's monitoring pages show: series from the rollups, jobs, the django-q2 cluster.

Read-side only (selectors); the views render it. Every figure comes from the database,
the broker or the cluster's published status, never from this process's memory alone, so
any web process shows the same page.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.db.models import Count
from django.utils import timezone

from .rollups import RANGES, series, shadow_summary, version_summaries


def job_counts(*, since: datetime) -> list[dict[str, Any]]:
    """Jobs per status: all of them, and those created since `since`."""
    from ..jobs.models import InferenceJob

    total = dict.fromkeys(InferenceJob.Status.values, 0)
    recent = dict.fromkeys(InferenceJob.Status.values, 0)
    for row in InferenceJob.objects.order_by().values("status").annotate(n=Count("pk")):
        total[row["status"]] = row["n"]
    for row in InferenceJob.objects.filter(created_at__gte=since).order_by().values("status").annotate(n=Count("pk")):
        recent[row["status"]] = row["n"]
    return [{"status": s, "total": total[s], "recent": recent[s]} for s in InferenceJob.Status.values]


def cluster_status() -> dict[str, Any]:
    """The django-q2 clusters that published a status (django_q.status.Stat) and the broker's queue."""
    from django_q.status import Stat

    from .readiness import _timed, check_broker

    out: dict[str, Any] = {"clusters": [], "error": "", "broker": _timed(check_broker, "broker_unreachable")}
    try:
        stats = Stat.get_all()
    except Exception as exc:  # noqa: BLE001 - the page still renders, saying why
        out["error"] = f"{type(exc).__name__}: {exc}"
        return out
    now = timezone.now()
    for stat in sorted(stats, key=lambda s: (getattr(s, "host", ""), str(getattr(s, "cluster_id", "")))):
        tob = getattr(stat, "tob", None)
        timestamp = getattr(stat, "timestamp", None)
        out["clusters"].append({
            "cluster_id": str(getattr(stat, "cluster_id", "")),
            "host": getattr(stat, "host", ""),
            "pid": getattr(stat, "pid", None),
            "status": str(getattr(stat, "status", "")),
            "workers": list(getattr(stat, "workers", []) or []),
            "reincarnations": getattr(stat, "reincarnations", 0),
            "task_q_size": getattr(stat, "task_q_size", 0),
            "done_q_size": getattr(stat, "done_q_size", 0),
            "uptime_s": (now - tob).total_seconds() if tob else None,
            "seen_s_ago": (now - timestamp).total_seconds() if timestamp else None,
        })
    return out


def task_outcomes(*, since: datetime) -> dict[str, int]:
    """django-q2 tasks that finished since `since`: successes and failures (its own result table)."""
    from django_q.models import Task

    done = Task.objects.filter(stopped__gte=since)
    return {"succeeded": done.filter(success=True).count(), "failed": done.filter(success=False).count()}


def chart_data(item: dict[str, Any]) -> dict[str, Any]:
    """Columns for the charts of one model version (uPlot's shape: x values, then one list per series)."""
    points = item["points"]
    return {
        "title": f"{item['model']} v{item['version']}" if item["version"] else f"{item['model']} (no version)",
        "step_minutes": item["step_minutes"],
        "t": [p["t"] for p in points],
        **{k: [p[k] for p in points] for k in (
            "rps", "p50_ms", "p95_ms", "p99_ms", "error_rate", "server_error_rate", "mean_batch", "mean_queue",
            "max_queue",
        )},
    }


def version_panels(*, range_name: str, model: str | None = None, version: int | None = None,
                   now: datetime | None = None) -> list[dict[str, Any]]:
    """One panel per model version with traffic: summary, chart columns, and the table rows with traffic."""
    panels = []
    for i, item in enumerate(series(range_name=range_name, model=model, version=version, now=now)):
        panels.append({
            "key": f"mv-{i}",
            "model": item["model"],
            "version": item["version"],
            "summary": item["summary"],
            "chart": chart_data(item),
            "rows": [p | {"at": datetime.fromtimestamp(p["t"], UTC)} for p in item["points"] if p["requests"]],
            "step_minutes": item["step_minutes"],
        })
    return panels


def range_choice(value: str | None) -> str:
    return value if value in RANGES else "1h"


def dashboard(*, range_name: str) -> dict[str, Any]:
    """Everything the monitoring page shows."""
    label, length, step = RANGES[range_name]
    now = timezone.now()
    since = now - length
    return {
        "range": range_name,
        "range_label": label,
        "ranges": [{"name": k, "label": v[0]} for k, v in RANGES.items()],
        "step_minutes": step,
        "panels": version_panels(range_name=range_name, now=now),
        "jobs": job_counts(since=since),
        "cluster": cluster_status(),
        "tasks": task_outcomes(since=since),
        "generated_at": now,
    }


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.2f} ms"


def release_rows(*, model: str, versions: list[int], shadow: int | None, range_name: str,
                 now: datetime | None = None) -> list[dict[str, Any]]:
    """The rows that compare an alias's versions side by side on the model's admin page:
    ``[{"label", "values": {version: text}}]``, from the per-minute rollups over the range.

    Request figures are per version, whichever alias (or pinned number) the requests came through.
    For the `shadow` (one of `versions`), its comparison with the versions that answered (the others):
    agreement (same top-1), mean absolute difference, predictions compared, copies dropped and failed."""
    figures = version_summaries(model=model, versions=versions, range_name=range_name, now=now)
    rows = (
        ("requests", lambda f: f"{f['requests']:,}"),
        ("p50 latency", lambda f: _ms(f["p50_ms"])),
        ("p99 latency", lambda f: _ms(f["p99_ms"])),
        ("error rate", lambda f: f"{f['error_rate']:.2f} %" if f["requests"] else "—"),
        ("5xx rate", lambda f: f"{f['server_error_rate']:.2f} %" if f["requests"] else "—"),
    )
    out = [{"label": label, "values": {n: show(figures[n]) for n in versions}} for label, show in rows]
    if shadow is not None:
        out += _shadow_rows(model=model, shadow=shadow, primaries=[n for n in versions if n != shadow],
                            range_name=range_name, now=now)
    return out


def _shadow_rows(*, model: str, shadow: int, primaries: list[int], range_name: str,
                 now: datetime | None) -> list[dict[str, Any]]:
    """The shadow column's comparison rows (``rollups.shadow_summary``, per primary that answered)."""
    now = now or timezone.now()
    pairs = [p for p in shadow_summary(model=model, since=now - RANGES[range_name][1], until=now)
             if p["shadow_version"] == shadow and p["primary_version"] in primaries]
    pairs.sort(key=lambda p: p["primary_version"])
    compared, agreed = sum(p["compared"] for p in pairs), sum(p["agreed"] for p in pairs)

    def per_primary(key: str, show: Any) -> str:
        # Counts add up over the primaries; the mean difference is shown per primary (one mean each).
        shown = [(p["primary_version"], show(p[key])) for p in pairs if p[key] is not None]
        if len(shown) == 1:
            return shown[0][1]
        return " · ".join(f"v{n}: {text}" for n, text in shown) or "—"

    rows = (
        ("shadow: agreement with the primary", f"{100 * agreed / compared:.2f} %" if compared else "—"),
        ("shadow: mean abs diff", per_primary("mean_abs_diff", lambda v: f"{v:.4g}")),
        ("shadow: predictions compared", f"{compared:,}"),
        ("shadow: dropped (queue full)", f"{sum(p['dropped'] for p in pairs):,}"),
        ("shadow: failed", f"{sum(p['failed'] for p in pairs):,}"),
    )
    return [{"label": label, "values": {shadow: text}} for label, text in rows]
