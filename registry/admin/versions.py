"""Versions in the admin: upload (validated in a separate process), read-only pages, actions to
re-validate, archive, pre-load and unload; the hardware targets."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from .. import loading, services
from ..models import HardwareTarget, ModelVersion

CODE_FORMAT_WARNING = (
    "TorchScript and torch.export (.pt2) archives contain a program that runs on this server when "
    "the file is loaded: only upload them from people you trust with shell access. They are accepted "
    "only while INFERENCE_ALLOW_CODE_ARTIFACTS is on (now: {state}) and you hold the permission "
    "'Can upload TorchScript / torch.export artifacts'. Safetensors weights with an allowlisted "
    "architecture run no code from the file."
)


def _json_field(label: str, *, required: bool = True, initial: Any = None, help_text: str = "") -> forms.JSONField:
    return forms.JSONField(
        label=label,
        required=required,
        initial=initial,
        help_text=help_text,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80, "style": "font-family: monospace"}),
    )


class ModelVersionUploadForm(forms.ModelForm):
    """Upload a new version; registering (with validation in a separate process) happens in clean()."""

    model_name = forms.SlugField(label="Model", help_text="An existing model's name, or a new one to create it.")
    artifact_file = forms.FileField(label="Artifact")
    format = forms.ChoiceField(choices=ModelVersion.Format.choices, initial="safetensors")
    architecture = forms.ChoiceField(required=False, help_text="For the weight formats: an allowlisted nn.Module.")
    architecture_args = _json_field("Architecture arguments", required=False, initial=dict,
                                    help_text='JSON, e.g. {"in_features": 4, "hidden": [16], "out_features": 3}')
    inputs = _json_field("Inputs", help_text='[{"name": "input", "datatype": "FP32", "shape": [4]}] '
                         "(batch dimension implicit; -1 for a variable dimension)")
    outputs = _json_field("Outputs", help_text='[{"name": "output", "datatype": "FP32", "shape": [3]}]')
    preprocess = _json_field("Preprocess steps", required=False, initial=list,
                             help_text='e.g. [{"step": "normalize", "mean": [...], "std": [...]}]')
    postprocess = _json_field("Postprocess steps", required=False, initial=list,
                              help_text='e.g. [{"step": "softmax"}, {"step": "labels", "labels": [...]}]')
    example = _json_field("Example instance", required=False,
                          help_text="One instance as a client sends it; run through pipeline and model at validation.")
    max_batch_size = forms.IntegerField(min_value=1, max_value=4096, initial=32)
    max_batch_delay_ms = forms.FloatField(min_value=0, max_value=10000, initial=5)
    max_queue_size = forms.IntegerField(min_value=1, initial=256)
    hardware = forms.ModelChoiceField(queryset=HardwareTarget.objects.filter(enabled=True), to_field_name="name")
    aliases = forms.CharField(required=False, help_text="Aliases to point at this version once it is ready, e.g. production")

    class Meta:
        model = ModelVersion
        fields: list[str] = []

    def __init__(self, *args: Any, request: HttpRequest | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.request = request
        self.fields["architecture"].choices = [("", "---")] + [(a, a) for a in settings.INFERENCE_ARCHITECTURES]
        self.fields["format"].help_text = CODE_FORMAT_WARNING.format(
            state="on" if settings.INFERENCE_ALLOW_CODE_ARTIFACTS else "off"
        )
        if not self.initial.get("hardware"):
            self.initial["hardware"] = "cpu"

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.errors:
            return data
        config = {
            "format": data["format"],
            "architecture": data.get("architecture") or "",
            "architecture_args": data.get("architecture_args") or {},
            "inputs": data["inputs"],
            "outputs": data["outputs"],
            "preprocess": data.get("preprocess") or [],
            "postprocess": data.get("postprocess") or [],
            "batching": {
                "max_batch_size": data["max_batch_size"],
                "max_batch_delay_ms": data["max_batch_delay_ms"],
                "max_queue_size": data["max_queue_size"],
            },
            "hardware": data["hardware"].name,
        }
        if data.get("example") is not None:
            config["example"] = data["example"]
        aliases = [a.strip() for a in (data.get("aliases") or "").split(",") if a.strip()]
        user = self.request.user if self.request else None
        try:
            self.instance = services.model_version_register(
                model_name=data["model_name"],
                artifact=data["artifact_file"],
                config=config,
                created_by=user,
                may_upload_code=bool(user and user.has_perm("registry.upload_code_artifact")),
                aliases=aliases,
            )
        except ValidationError as exc:
            raise ValidationError(exc.messages) from exc
        return data



@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    list_display = ("__str__", "model", "version", "format", "status_badge", "alias_list", "hardware", "archived", "pinned",
                    "created_at")
    list_filter = ("status", "format", "hardware", "archived", "pinned", "model")
    search_fields = ("model__name", "sha256", "architecture")
    list_select_related = ("model", "hardware")
    ordering = ("model__name", "-version")
    actions = ["revalidate", "archive", "load", "unload"]
    readonly_fields = (
        "model", "version", "status", "status_error", "validated_at", "format", "architecture",
        "architecture_args_json", "input_schema_json", "output_schema_json", "preprocess_json", "postprocess_json",
        "example_json", "max_batch_size", "max_batch_delay_ms", "max_queue_size", "hardware", "artifact_name",
        "sha256", "size_bytes", "archived", "pinned", "created_by", "created_by_key", "created_at",
    )

    def get_form(self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any):
        if obj is not None:
            return super().get_form(request, obj, change=change, **kwargs)

        class RequestForm(ModelVersionUploadForm):
            def __init__(self, *args: Any, **kw: Any):
                super().__init__(*args, request=request, **kw)

        return RequestForm

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        if obj is None:
            return list(ModelVersionUploadForm.base_fields)
        return list(self.readonly_fields)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        return self.readonly_fields if obj is not None else ()

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).prefetch_related("aliases")

    def save_model(self, request: HttpRequest, obj: ModelVersion, form: Any, change: bool) -> None:
        # The form's clean() registered the version through the service; nothing to save.
        if obj.pk is None:  # pragma: no cover - clean() always registers or raises
            raise ValidationError("The version was not registered.")

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # archive instead: rows referenced by aliases and history stay

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj: ModelVersion) -> str:
        colours = {"ready": "#1a7f37", "failed": "#cf222e", "registered": "#9a6700"}
        return format_html('<b style="color:{}">{}</b>', colours.get(obj.status, "#000"), obj.get_status_display())

    @admin.display(description="aliases")
    def alias_list(self, obj: ModelVersion) -> str:
        return ", ".join(a.name for a in obj.aliases.all()) or "—"

    @admin.display(description="artifact")
    def artifact_name(self, obj: ModelVersion) -> str:
        return obj.artifact.name

    def _json(self, value: Any) -> str:
        return format_html("<pre>{}</pre>", json.dumps(value, indent=2))

    @admin.display(description="architecture args")
    def architecture_args_json(self, obj: ModelVersion) -> str:
        return self._json(obj.architecture_args)

    @admin.display(description="inputs")
    def input_schema_json(self, obj: ModelVersion) -> str:
        return self._json(obj.input_schema)

    @admin.display(description="outputs")
    def output_schema_json(self, obj: ModelVersion) -> str:
        return self._json(obj.output_schema)

    @admin.display(description="preprocess")
    def preprocess_json(self, obj: ModelVersion) -> str:
        return self._json(obj.preprocess)

    @admin.display(description="postprocess")
    def postprocess_json(self, obj: ModelVersion) -> str:
        return self._json(obj.postprocess)

    @admin.display(description="example")
    def example_json(self, obj: ModelVersion) -> str:
        return self._json(obj.example)

    # Both actions change the version (its status, its serving): they need the "change" permission
    # (Django hides them from, and refuses their POST for, a user who only views versions).
    @admin.action(description="Validate again (in a separate process)", permissions=["change"])
    def revalidate(self, request: HttpRequest, queryset: QuerySet) -> None:
        for version in queryset.select_related("model", "hardware"):
            services.model_version_validate(version=version, actor=services.actor_for(user=request.user))
            level = messages.SUCCESS if version.status == ModelVersion.Status.READY else messages.ERROR
            self.message_user(request, f"{version}: {version.status} {version.status_error}".strip(), level)

    @admin.action(description="Archive (stop serving; refused while an alias points to it)", permissions=["change"])
    def archive(self, request: HttpRequest, queryset: QuerySet) -> None:
        for version in queryset.select_related("model"):
            try:
                services.model_version_archive(version=version, actor=services.actor_for(user=request.user))
                self.message_user(request, f"{version} archived.", messages.SUCCESS)
            except ValidationError as exc:
                self.message_user(request, "; ".join(exc.messages), messages.ERROR)

    # Triton's model control, per version (registry.loading): every process follows within about a second.
    @admin.action(description="Pre-load in every process (before a canary's split moves)", permissions=["change"])
    def load(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._load_control(request, queryset, loading.version_load, "pre-loaded in every web process")

    @admin.action(description="Unload from every process (refused while an alias points to it)", permissions=["change"])
    def unload(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._load_control(request, queryset, loading.version_unload, "unloaded from every process")

    def _load_control(self, request: HttpRequest, queryset: QuerySet, act: Any, done: str) -> None:
        for version in queryset.select_related("model"):
            try:
                act(version=version, actor=services.actor_for(user=request.user))
                self.message_user(request, f"{version} {done}.", messages.SUCCESS)
            except ValidationError as exc:
                self.message_user(request, "; ".join(exc.messages), messages.ERROR)



@admin.register(HardwareTarget)
class HardwareTargetAdmin(admin.ModelAdmin):
    list_display = ("name", "device_type", "device_index", "cpu_threads", "enabled")
    list_filter = ("device_type", "enabled")
    search_fields = ("name",)
