"""Serializers that describe the API's bodies for OpenAPI (drf-spectacular).

The request path parses bodies itself (orjson + numpy, see tensors.py) for speed;
these classes document the same shapes and are checked against real responses in the
tests.
"""

from __future__ import annotations

from rest_framework import serializers


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


class PredictResponseSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="The request id (X-Request-ID).")
    model = serializers.CharField()
    version = serializers.IntegerField()
    predictions = serializers.ListField(child=serializers.JSONField())
