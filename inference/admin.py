"""Admin for the serving side: API keys (the plain key is shown once, at creation)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.http import HttpRequest
from django.utils.html import format_html
from rest_framework_api_key.admin import APIKeyModelAdmin
from rest_framework_api_key.models import APIKey as LibraryAPIKey

from .jobs.models import InferenceJob
from .keys import APIKey, api_keys_revoke, check_code_upload_grant, key_info_forget, may_grant_code_upload
from .monitoring import admin as monitoring_admin  # noqa: F401 - request records, versions' charts

# The library registers its own concrete key model; this platform uses its own.
if admin.site.is_registered(LibraryAPIKey):
    admin.site.unregister(LibraryAPIKey)


@admin.register(APIKey)
class APIKeyAdmin(APIKeyModelAdmin):
    list_display = ("prefix", "name", "scope", "may_upload_code", "rate", "models_list", "created", "expiry_date",
                    "_has_expired", "revoked")
    list_filter = ("scope", "may_upload_code", "revoked", "created", "expiry_date")
    search_fields = ("name", "prefix")
    filter_horizontal = ("allowed_models",)
    actions = ["revoke_keys"]
    fields = ("name", "scope", "may_upload_code", "allowed_models", "rate", "expiry_date", "revoked", "prefix",
              "created")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        fields = (*super().get_readonly_fields(request, obj), "created")
        if obj is not None and obj.revoked:
            fields += ("scope", "may_upload_code", "allowed_models", "rate")
        elif not may_grant_code_upload(request.user):
            fields += ("may_upload_code",)  # not in the form: a posted value is ignored
        return fields

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).prefetch_related("allowed_models")

    def save_model(self, request: HttpRequest, obj: APIKey, form: Any = None, change: bool = False) -> None:
        check_code_upload_grant(request.user, obj)
        if not change:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        key_info_forget(form.instance.prefix)  # allowed models changed after save()

    @admin.action(description="Revoke selected API keys (cannot be undone)", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset) -> None:
        count = api_keys_revoke(queryset)
        self.message_user(request, f"{count} API key(s) revoked: refused from now on.", messages.SUCCESS)

    @admin.display(description="models")
    def models_list(self, obj: APIKey) -> str:
        return ", ".join(m.name for m in obj.allowed_models.all()) or "all"


@admin.register(InferenceJob)
class InferenceJobAdmin(admin.ModelAdmin):
    """Job history: filters, search by id, progress, result download, cancel and retry."""

    list_display = ("short_id", "model", "version_number", "key_prefix", "status", "progress_bar", "attempts",
                    "created_at", "duration")
    list_filter = ("status", "model", "key_prefix", "input_format")
    search_fields = ("=id", "key_prefix", "submitted_by", "idempotency_key")
    date_hierarchy = "created_at"
    list_select_related = ("model", "version")
    actions = ["cancel_jobs", "retry_jobs"]
    fields = ("id", "model", "version", "status", "progress_bar", "attempts", "max_attempts", "error", "submitted_by",
              "key_prefix", "idempotency_key", "input_summary", "parameters", "result_link", "callback_url",
              "callback_status", "worker", "created_at", "started_at", "finished_at", "lease_expires_at")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_superuser

    def get_urls(self):
        from django.urls import path

        return [
            path("<uuid:job_id>/result/", self.admin_site.admin_view(self.result_view), name="inference_job_result"),
            *super().get_urls(),
        ]

    def result_view(self, request: HttpRequest, job_id: Any):
        from django.http import FileResponse, Http404

        job = InferenceJob.objects.filter(pk=job_id).first()
        if job is None or not job.result_file or not self.has_view_permission(request, job):
            raise Http404("No result for this job.")
        return FileResponse(job.result_file.open("rb"), as_attachment=True, filename=f"job-{job.pk}.jsonl")

    @admin.display(description="id", ordering="id")
    def short_id(self, obj: InferenceJob) -> str:
        return str(obj.pk)[:8]

    @admin.display(description="version", ordering="version__version")
    def version_number(self, obj: InferenceJob) -> str:
        return f"v{obj.version.version}"

    @admin.display(description="progress")
    def progress_bar(self, obj: InferenceJob) -> str:
        total = max(obj.progress_total, 1)
        return format_html('<progress value="{}" max="{}" title="{} / {}"></progress> {} / {}', obj.progress_done,
                           total, obj.progress_done, obj.progress_total, obj.progress_done, obj.progress_total)

    @admin.display(description="duration")
    def duration(self, obj: InferenceJob) -> str:
        if obj.started_at and obj.finished_at:
            return f"{(obj.finished_at - obj.started_at).total_seconds():.1f} s"
        return "—"

    @admin.display(description="input")
    def input_summary(self, obj: InferenceJob) -> str:
        return f"{obj.progress_total} instances, {obj.get_input_format_display()}, {obj.input_bytes} bytes"

    @admin.display(description="result")
    def result_link(self, obj: InferenceJob) -> str:
        if not obj.result_file:
            return "—"
        from django.urls import reverse

        return format_html('<a href="{}">download (JSONL, one prediction a line)</a>',
                           reverse("admin:inference_job_result", args=[obj.pk]))

    # Cancel and retry change the job: the "change" permission (a viewer sees neither action).
    @admin.action(description="Cancel (queued: never runs; running: stops at the next chunk)", permissions=["change"])
    def cancel_jobs(self, request: HttpRequest, queryset) -> None:
        from .services.jobs import JobConflict, job_cancel

        for job in queryset:
            try:
                job_cancel(job=job)
                self.message_user(request, f"{job}: cancel requested.", messages.SUCCESS)
            except JobConflict as exc:
                self.message_user(request, f"{job}: {exc}", messages.WARNING)

    @admin.action(description="Retry (failed or cancelled jobs, from the start)", permissions=["change"])
    def retry_jobs(self, request: HttpRequest, queryset) -> None:
        from .services.jobs import JobConflict, job_retry

        for job in queryset:
            try:
                job_retry(job=job)
                self.message_user(request, f"{job}: queued again.", messages.SUCCESS)
            except JobConflict as exc:
                self.message_user(request, f"{job}: {exc}", messages.WARNING)
