"""Serializers that describe the API's bodies for OpenAPI (drf-spectacular).

The request path parses bodies itself (orjson + numpy, see tensors.py) for speed;
these classes document the same shapes and are checked against real responses in the
tests.
"""

from __future__ import annotations

from rest_framework import serializers

JOB_STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"]  # InferenceJob.Status


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable error code, e.g. invalid_input, not_found, rate_limited.")
    message = serializers.CharField(help_text="What happened and what to do.")
    details = serializers.DictField(help_text="E.g. the path of the offending field: instances[3].pixels.")


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


class TensorSpecSerializer(serializers.Serializer):
    name = serializers.CharField()
    datatype = serializers.CharField(help_text="Open Inference Protocol datatype: FP32, INT64, BOOL, BYTES ...")
    shape = serializers.ListField(child=serializers.IntegerField(), help_text="Per instance; -1 is variable.")


class VersionSerializer(serializers.Serializer):
    version = serializers.IntegerField()
    status = serializers.ChoiceField(choices=["registered", "ready", "failed"])
    ready = serializers.BooleanField()
    error = serializers.CharField(allow_null=True)
    format = serializers.CharField()
    inputs = TensorSpecSerializer(many=True)
    outputs = TensorSpecSerializer(many=True)
    parameters = serializers.ListField(child=serializers.CharField(), help_text="Request parameters accepted.")
    hardware = serializers.CharField()
    aliases = serializers.ListField(child=serializers.CharField())
    created_at = serializers.DateTimeField()


class ModelSerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    task = serializers.CharField()
    aliases = serializers.DictField(child=serializers.IntegerField(), help_text="alias -> version number")
    versions = VersionSerializer(many=True)


class ModelListSerializer(serializers.Serializer):
    models = ModelSerializer(many=True)


class PredictRequestSerializer(serializers.Serializer):
    instances = serializers.ListField(
        child=serializers.JSONField(),
        help_text="One entry per prediction: a nested list for a one-input model, or an object "
        "{input_name: value} for several inputs.",
    )
    parameters = serializers.DictField(required=False, help_text='Options the version allows, e.g. {"top_k": 3}.')
    id = serializers.JSONField(required=False, help_text="Accepted and ignored (Open Inference Protocol clients "
                               "send one); the response's id is the request id.")


class PredictResponseSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="The request id (X-Request-ID).")
    model = serializers.CharField()
    version = serializers.IntegerField()
    predictions = serializers.ListField(child=serializers.JSONField())


class JobSubmitSerializer(serializers.Serializer):
    instances = serializers.ListField(child=serializers.JSONField(), help_text="As for predict.")
    parameters = serializers.DictField(required=False)
    version = serializers.CharField(required=False, help_text="Version number or alias (default: production).")
    callback_url = serializers.URLField(required=False, help_text=(
        "POSTed the final state, signed (allowlisted hosts at public addresses only; needs INFERENCE_CALLBACK_SECRET "
        "on the server; redirects are not followed)."))


class JobUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="JSONL (one instance per line) or CSV (one-input models; numeric rows).")
    format = serializers.ChoiceField(choices=["jsonl", "csv"], required=False)
    parameters = serializers.CharField(required=False, help_text="JSON object.")
    version = serializers.CharField(required=False)
    callback_url = serializers.URLField(required=False)


class JobAcceptedSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.CharField()
    url = serializers.CharField()


class ProgressSerializer(serializers.Serializer):
    done = serializers.IntegerField()
    total = serializers.IntegerField()


class JobStatusSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=JOB_STATUSES)
    model = serializers.CharField()
    version = serializers.IntegerField()
    progress = ProgressSerializer()
    attempts = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    error = serializers.CharField(allow_null=True)
    url = serializers.CharField()
    result_url = serializers.CharField(allow_null=True)


class JobListQuerySerializer(serializers.Serializer):
    """The query of GET /api/v1/jobs: validated, so that a bad value is a 400 naming it."""

    status = serializers.ChoiceField(choices=JOB_STATUSES, required=False, allow_blank=True,
                                     help_text="Only the jobs in this status (empty: all).")
    limit = serializers.IntegerField(required=False, default=50, min_value=1, max_value=500)
    offset = serializers.IntegerField(required=False, default=0, min_value=0, max_value=2**31 - 1)


class JobListSerializer(serializers.Serializer):
    jobs = JobStatusSerializer(many=True)
    limit = serializers.IntegerField()
    offset = serializers.IntegerField()


class JobResultSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    model = serializers.CharField()
    version = serializers.IntegerField()
    predictions = serializers.ListField(child=serializers.JSONField())


# ---- Registry API (management keys) -------------------------------------------------------------


class ModelCreateSerializer(serializers.Serializer):
    name = serializers.RegexField(r"^[a-z0-9][a-z0-9_-]{0,62}$", max_length=63,
                                  help_text="1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit.")
    description = serializers.CharField(required=False, allow_blank=True)
    task = serializers.CharField(required=False, allow_blank=True, max_length=40,
                                 help_text="e.g. classification, regression.")


class VersionUploadSerializer(serializers.Serializer):
    artifact = serializers.FileField(help_text="The artifact: safetensors or state_dict weights, an ONNX graph (or, "
                                     "where allowed, a TorchScript / torch.export archive).")
    config = serializers.CharField(help_text="The version's config as JSON (a form field or a file part): the fields "
                                   "of `register_model --config` (format, architecture, architecture_args, inputs, "
                                   "outputs, preprocess, postprocess, batching, hardware, example).")
    sha256 = serializers.CharField(required=False, help_text="Expected sha256 of the artifact (hex); a mismatch "
                                   "is a 400 and nothing is stored.")


class ManagedVersionSerializer(VersionSerializer):
    model = serializers.CharField()
    sha256 = serializers.CharField()
    size_bytes = serializers.IntegerField()
    archived = serializers.BooleanField()
    pinned = serializers.BooleanField(help_text="Pre-loaded in every web process (POST .../load; .../unload clears it).")
    validated_at = serializers.DateTimeField(allow_null=True)
    created_by = serializers.CharField(help_text="key:<name> (<prefix>), user:<name> or system.")
    url = serializers.CharField()


class SplitTargetSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=1)
    weight = serializers.IntegerField(min_value=1, max_value=100, help_text="Percent of requests (integers, sum 100).")


class ShadowSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=1, help_text="A ready version of this model that no target is.")
    percent = serializers.IntegerField(min_value=1, max_value=100,
                                       help_text="The share of the alias's requests the shadow also runs.")


class AliasSetSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=1, required=False,
                                       help_text="A ready, unarchived version of this model (100 %).")
    split = SplitTargetSerializer(many=True, required=False,
                                  help_text="Instead of version: weighted versions (a canary), the first is primary.")
    shadow = ShadowSerializer(required=False, allow_null=True,
                              help_text="A version that also runs this share of the requests, off the request "
                                        "path, compared with the answers (absent or null: none).")


class AliasEventSerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    action = serializers.ChoiceField(choices=["set", "delete"])
    from_version = serializers.IntegerField(allow_null=True)
    to_version = serializers.IntegerField(allow_null=True)
    from_split = SplitTargetSerializer(many=True, allow_null=True, required=False)
    to_split = SplitTargetSerializer(many=True, allow_null=True, required=False)
    from_shadow = ShadowSerializer(allow_null=True, required=False)
    to_shadow = ShadowSerializer(allow_null=True, required=False)
    actor = serializers.CharField()


class AliasSerializer(serializers.Serializer):
    model = serializers.CharField()
    alias = serializers.CharField()
    version = serializers.IntegerField(help_text="The primary target (the first of the split).")
    split = SplitTargetSerializer(many=True, help_text="Where requests go, by weight ([{version, weight: 100}] "
                                  "for a plain alias).")
    shadow = ShadowSerializer(allow_null=True, help_text="The shadow version and its share, or null.")
    previous_version = serializers.IntegerField(allow_null=True, required=False,
                                                help_text="PUT only: the version it pointed to before (null: new).")
    updated_at = serializers.DateTimeField()
    history = AliasEventSerializer(many=True, required=False, help_text="GET only: the latest moves, newest first.")
