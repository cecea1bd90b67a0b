"""The registry's domain: what a model *is* (DESIGN.md, "Domain model").

Rows are written through ``registry.services`` only; these classes hold fields,
constraints and small derived properties.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q

from .schemas import FORMATS

# Model and alias names. (The validator's `$` also matches before a final newline, so code
# that must refuse "name\n" matches NAME_PATTERN whole: selectors.is_registry_name.)
NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}"
slug_validator = RegexValidator(
    rf"^{NAME_PATTERN}$",
    "Use 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit.",
)


class HardwareTarget(models.Model):
    """Where a version runs: a device and, for the CPU, torch's intra-op thread count."""

    class DeviceType(models.TextChoices):
        CPU = "cpu", "CPU"
        CUDA = "cuda", "CUDA GPU"
        MPS = "mps", "Apple MPS"

    name = models.CharField(max_length=63, unique=True, validators=[slug_validator])
    device_type = models.CharField(max_length=8, choices=DeviceType.choices, default=DeviceType.CPU)
    device_index = models.PositiveSmallIntegerField(default=0, help_text="GPU ordinal (cuda:N); ignored for cpu.")
    cpu_threads = models.PositiveSmallIntegerField(
        default=1,
        validators=[MinValueValidator(1)],
        help_text=(
            "torch intra-op threads for each batcher of a version on this target. One thread "
            "per batcher is usually fastest: several batchers then use several cores without "
            "fighting over them."
        ),
    )
    enabled = models.BooleanField(default=True)
    description = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.CheckConstraint(condition=Q(cpu_threads__gte=1), name="hardware_cpu_threads_positive")]

    def __str__(self) -> str:
        return self.name

    @property
    def device(self) -> str:
        """Return the torch device string, e.g. 'cpu' or 'cuda:1'."""
        if self.device_type == self.DeviceType.CPU:
            return "cpu"
        if self.device_type == self.DeviceType.MPS:
            return "mps"
        return f"cuda:{self.device_index}"


class RegisteredModel(models.Model):
    """A named model; its versions hold the artifacts."""

    name = models.CharField(max_length=63, unique=True, validators=[slug_validator])
    description = models.TextField(blank=True)
    task = models.CharField(
        max_length=40, blank=True, help_text="What the model does, e.g. classification, regression, embedding."
    )
    capture_payloads = models.BooleanField(
        default=False, help_text="Keep request and response payloads in request records for this model."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "model"
        permissions = [
            (
                "upload_code_artifact",
                "Can upload TorchScript / torch.export artifacts (they run code when loaded)",
            )
        ]

    def __str__(self) -> str:
        return self.name


def artifact_upload_to(instance: ModelVersion, filename: str) -> str:
    # A fresh name per upload: a stored artifact is never overwritten in place.
    suffix = {"safetensors": "safetensors", "state_dict": "pt", "torchscript": "pt", "torch_export": "pt2", "onnx": "onnx"}
    return f"artifacts/{instance.model.name}/{uuid.uuid4().hex}.{suffix.get(instance.format, 'bin')}"


class ModelVersion(models.Model):
    """One numbered, immutable version of a model: artifact, schema, pipeline, batching, target."""

    class Status(models.TextChoices):
        REGISTERED = "registered", "Registered (validating)"
        READY = "ready", "Ready"
        FAILED = "failed", "Failed"

    class Format(models.TextChoices):
        SAFETENSORS = "safetensors", "safetensors + architecture"
        STATE_DICT = "state_dict", "state_dict (weights only) + architecture"
        TORCHSCRIPT = "torchscript", "TorchScript (runs code from the file)"
        TORCH_EXPORT = "torch_export", "torch.export .pt2 (runs code from the file)"
        ONNX = "onnx", "ONNX graph (standard operators, served by ONNX Runtime)"

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    artifact = models.FileField(upload_to=artifact_upload_to, max_length=255)
    sha256 = models.CharField(max_length=64)
    size_bytes = models.BigIntegerField(default=0)
    format = models.CharField(max_length=16, choices=Format.choices)
    architecture = models.CharField(max_length=255, blank=True)
    architecture_args = models.JSONField(default=dict, blank=True)
    input_schema = models.JSONField(default=list)
    output_schema = models.JSONField(default=list)
    preprocess = models.JSONField(default=list, blank=True)
    postprocess = models.JSONField(default=list, blank=True)
    example = models.JSONField(null=True, blank=True)
    max_batch_size = models.PositiveIntegerField(default=32, validators=[MinValueValidator(1)])
    max_batch_delay_ms = models.FloatField(default=5.0, validators=[MinValueValidator(0)])
    max_queue_size = models.PositiveIntegerField(default=256, validators=[MinValueValidator(1)])
    hardware = models.ForeignKey(HardwareTarget, on_delete=models.PROTECT, related_name="versions")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.REGISTERED)
    status_error = models.TextField(blank=True)
    validated_at = models.DateTimeField(null=True, blank=True)
    archived = models.BooleanField(default=False)
    pinned = models.BooleanField(
        default=False,
        help_text="Pre-loaded: kept loaded in every web process (set by `load`, cleared by `unload` or archiving).",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_by_key = models.CharField(max_length=150, blank=True, help_text="Name of the API key that uploaded it.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["model__name", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["model", "version"], name="version_unique_per_model"),
            models.CheckConstraint(condition=Q(version__gte=1), name="version_number_positive"),
            models.CheckConstraint(condition=Q(format__in=FORMATS), name="version_format_known"),
            models.CheckConstraint(condition=Q(max_batch_size__gte=1), name="version_max_batch_size_positive"),
            models.CheckConstraint(condition=Q(max_queue_size__gte=1), name="version_max_queue_size_positive"),
            models.CheckConstraint(condition=Q(max_batch_delay_ms__gte=0), name="version_batch_delay_nonnegative"),
        ]

    def __str__(self) -> str:
        return f"{self.model.name} v{self.version}"

    @property
    def config(self) -> dict:
        """Return the version's config in the shape `register_model --config` takes."""
        return {
            "format": self.format,
            "architecture": self.architecture,
            "architecture_args": self.architecture_args,
            "inputs": self.input_schema,
            "outputs": self.output_schema,
            "preprocess": self.preprocess,
            "postprocess": self.postprocess,
            "batching": {
                "max_batch_size": self.max_batch_size,
                "max_batch_delay_ms": self.max_batch_delay_ms,
                "max_queue_size": self.max_queue_size,
            },
            "hardware": self.hardware.name,
            "example": self.example,
        }


class ModelAlias(models.Model):
    """A named pointer from a model to one of its versions (production, staging, ...), or to a
    weighted split of several (a canary): ``split`` is then ``[{"version": N, "weight": W}, ...]``
    (version numbers, integer weights summing to 100) and ``version`` is its first entry, the
    primary target, so that every reader of ``alias.version`` keeps working. ``split`` is null for
    an alias that points at one version (100 %).

    ``shadow`` (null: none) is ``{"version": N, "percent": P}``: a share P (1..100) of the alias's
    requests is also sent to version N after the client has its answer, and the two answers are
    compared (``inference.shadow``); the shadow never answers a client."""

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="aliases")
    name = models.CharField(max_length=63, validators=[slug_validator])
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="aliases")
    split = models.JSONField(null=True, blank=True, default=None,
                             help_text='Weighted targets, e.g. [{"version": 3, "weight": 90}, {"version": 4, '
                                       '"weight": 10}]; empty: all requests go to `version`.')
    shadow = models.JSONField(null=True, blank=True, default=None,
                              help_text='A version that gets a copy of a share of the requests, off the request path, '
                                        'e.g. {"version": 4, "percent": 20}; empty: no shadow.')
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model__name", "name"]
        verbose_name = "alias"
        verbose_name_plural = "aliases"
        constraints = [models.UniqueConstraint(fields=["model", "name"], name="alias_unique_per_model")]

    def __str__(self) -> str:
        return f"{self.model.name}@{self.name}"

    @property
    def targets(self) -> list[tuple[int, int]]:
        """(version number, weight) of each target: the split, else [(version, 100)]."""
        if self.split:
            return [(int(t["version"]), int(t["weight"])) for t in self.split]
        return [(self.version.version, 100)]

    @property
    def shadow_target(self) -> tuple[int, int] | None:
        """(version number, percent) of the shadow, or None."""
        if self.shadow:
            return int(self.shadow["version"]), int(self.shadow["percent"])
        return None


class AliasEvent(models.Model):
    """One move of an alias: the history of promotions and rollbacks."""

    class Action(models.TextChoices):
        SET = "set", "set"
        DELETE = "delete", "delete"

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="alias_events")
    alias = models.CharField(max_length=63)
    action = models.CharField(max_length=8, choices=Action.choices)
    from_version = models.PositiveIntegerField(null=True, blank=True)
    to_version = models.PositiveIntegerField(null=True, blank=True)
    from_split = models.JSONField(null=True, blank=True, default=None, help_text="The split before (null: one version).")
    to_split = models.JSONField(null=True, blank=True, default=None, help_text="The split set (null: one version).")
    from_shadow = models.JSONField(null=True, blank=True, default=None, help_text="The shadow before (null: none).")
    to_shadow = models.JSONField(null=True, blank=True, default=None, help_text="The shadow set (null: none).")
    actor = models.CharField(max_length=200, help_text="user:<username> or key:<key name> (prefix)")
    at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.model.name}@{self.alias}: {self.from_version} -> {self.to_version}"


class RegistryEvent(models.Model):
    """One change to a model other than an alias move: who did what, when (the admin's history).

    Alias moves have their own history (AliasEvent); together the two are the complete
    record of who changed the registry.
    """

    class Action(models.TextChoices):
        MODEL_CREATED = "model_created", "model created"
        VERSION_REGISTERED = "version_registered", "version registered"
        VERSION_VALIDATED = "version_validated", "version validated"
        VERSION_ARCHIVED = "version_archived", "version archived"
        VERSION_LOADED = "version_loaded", "version pre-loaded in every process"
        VERSION_UNLOADED = "version_unloaded", "version unloaded from every process"

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="events")
    version = models.PositiveIntegerField(null=True, blank=True)
    action = models.CharField(max_length=24, choices=Action.choices)
    actor = models.CharField(max_length=200, help_text="user:<username>, key:<key name> (<prefix>) or system")
    detail = models.CharField(max_length=500, blank=True)
    at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name = "registry event"

    def __str__(self) -> str:
        target = f"{self.model.name} v{self.version}" if self.version else self.model.name
        return f"{target}: {self.get_action_display()} by {self.actor}"
