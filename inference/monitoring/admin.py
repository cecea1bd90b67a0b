"""The admin's monitoring: the dashboard page, request records, and each version's own charts.

* ``/admin/monitoring/`` (``monitoring_view``, staff only): requests/s, p50/p95/p99 latency,
  error rate, mean batch size and queue depth per model version over the last hour or day
  (from the per-minute rollups), job counts by status, the django-q2 clusters and their
  workers. Charts are drawn by uPlot, served from this app's static files; every figure is
  in a table under its chart, so the page reads without JavaScript.
* A version's change page shows the same charts for that version alone.
* A model's change page compares each alias's versions side by side (requests, p50/p99 latency,
  error rates; a shadow's agreement with the primary, mean abs diff, dropped) beside its split
  and shadow, promote and roll back (``registry.admin.releases``).
* Request records are listed read-only (find a request by its id; captured payloads).
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from registry.admin import ModelVersionAdmin, RegisteredModelAdmin
from registry.admin.releases import ReleaseFigures
from registry.models import ModelVersion, RegisteredModel

from .dashboard import dashboard, range_choice, release_rows, version_panels
from .models import RequestRecord
from .rollups import RANGES


def monitoring_view(request: HttpRequest) -> HttpResponse:
    """The monitoring page (wrapped by ``admin.site.admin_view``: staff only)."""
    range_name = range_choice(request.GET.get("range"))
    context = {
        **admin.site.each_context(request),
        "title": "Monitoring",
        **dashboard(range_name=range_name),
    }
    return TemplateResponse(request, "admin/inference/monitoring.html", context)


@admin.register(RequestRecord)
class RequestRecordAdmin(admin.ModelAdmin):
    """Read-only request history (bulk-written; purged after INFERENCE_RECORDS_RETENTION_DAYS)."""

    list_display = ("at", "request_id", "model", "version", "key_prefix", "status", "error_code", "latency_ms",
                    "batch_size", "instances")
    search_fields = ("=request_id", "=model", "=key_prefix")
    list_filter = ("status",)
    show_full_result_count = False  # no second COUNT(*) over a large table
    fields = ("at", "request_id", "model", "version", "key_prefix", "status", "error_code", "latency_ms",
              "queue_ms", "compute_ms", "instances", "batch_size", "queue_depth", "request_payload",
              "response_payload")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_superuser


class MonitoredModelVersionAdmin(ModelVersionAdmin):
    """The registry's version admin, with the version's own monitoring charts on its page."""

    change_form_template = "admin/inference/modelversion_change_form.html"

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> HttpResponse:
        extra_context = dict(extra_context or {})
        version = self.get_object(request, object_id)
        if version is not None:
            range_name = range_choice(request.GET.get("monitoring"))
            extra_context.update({
                "monitoring_range": range_name,
                "monitoring_panels": version_panels(range_name=range_name, model=version.model.name,
                                                    version=version.version),
            })
        return super().change_view(request, object_id, form_url, extra_context)


class MonitoredRegisteredModelAdmin(RegisteredModelAdmin):
    """The registry's model admin, with each alias's versions compared from the per-minute rollups."""

    def release_figures(self, request: HttpRequest, model: RegisteredModel) -> ReleaseFigures:
        range_name = range_choice(request.GET.get("releases"))
        return ReleaseFigures(
            rows=lambda numbers, shadow: release_rows(model=model.name, versions=numbers, shadow=shadow,
                                                      range_name=range_name),
            ranges=[{"name": name, "label": label, "url": f"?releases={name}", "selected": name == range_name}
                    for name, (label, _, _) in RANGES.items()],
            note=f"{RANGES[range_name][0]}, from the per-minute rollups, per version (every request it answered)",
        )


for registered, model_admin in ((ModelVersion, MonitoredModelVersionAdmin),
                                (RegisteredModel, MonitoredRegisteredModelAdmin)):
    if admin.site.is_registered(registered):
        admin.site.unregister(registered)
    admin.site.register(registered, model_admin)
