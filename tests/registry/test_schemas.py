"""parse_version_config / parse_tensor_schema: structure checks with messages naming the field."""

from __future__ import annotations

import copy

import pytest
from django.core.exceptions import ValidationError

from registry.schemas import Batching, TensorSpec, parse_tensor_schema, parse_version_config
from tests.conftest import IRIS_CONFIG


def cfg(**changes) -> dict:
    raw = copy.deepcopy(IRIS_CONFIG)
    for key, value in changes.items():
        if value is _DROP:
            raw.pop(key, None)
        else:
            raw[key] = value
    return raw


_DROP = object()


def error_of(raw) -> str:
    with pytest.raises(ValidationError) as exc:
        parse_version_config(raw)
    return " ".join(exc.value.messages)


# --- Good configs -----------------------------------------------------------------------


def test_good_config_parses_into_its_parts():
    raw = cfg(
        preprocess=[{"step": "normalize", "mean": [0, 0, 0, 0], "std": [1, 1, 1, 1]}],
        postprocess=[{"step": "softmax"}],
        batching={"max_batch_size": 16, "max_batch_delay_ms": 2.5, "max_queue_size": 100},
        example=[1.0, 2.0, 3.0, 4.0],
    )
    parsed = parse_version_config(raw)
    assert parsed.format == "safetensors"
    assert parsed.architecture == "registry.architectures.MLP"
    assert parsed.architecture_args == {"in_features": 4, "hidden": [8], "out_features": 3}
    assert parsed.inputs == [TensorSpec("input", "FP32", (4,))]
    assert parsed.outputs == [TensorSpec("output", "FP32", (3,))]
    assert parsed.preprocess == raw["preprocess"]
    assert parsed.postprocess == [{"step": "softmax"}]
    assert parsed.batching == Batching(max_batch_size=16, max_batch_delay_ms=2.5, max_queue_size=100)
    assert parsed.hardware == "cpu"
    assert parsed.example == [1.0, 2.0, 3.0, 4.0]
    # as_dict round-trips through the parser unchanged
    assert parse_version_config(parsed.as_dict()).as_dict() == parsed.as_dict()


def test_defaults_for_optional_parts():
    parsed = parse_version_config(cfg(batching=_DROP, hardware=_DROP))
    assert parsed.batching == Batching()
    assert parsed.hardware == "cpu"
    assert parsed.preprocess == [] and parsed.postprocess == []
    assert parsed.example is None


def test_variable_dimension_and_several_tensors():
    specs = parse_tensor_schema(
        [
            {"name": "tokens", "datatype": "INT64", "shape": [-1]},
            {"name": "mask", "datatype": "BOOL", "shape": [-1]},
            {"name": "image", "datatype": "UINT8", "shape": [3, 224, 224]},
            {"name": "scalar", "datatype": "FP64", "shape": []},
        ],
        where="inputs",
    )
    assert [s.name for s in specs] == ["tokens", "mask", "image", "scalar"]
    assert specs[0].shape == (-1,)
    assert specs[2].shape == (3, 224, 224)
    assert specs[3].shape == ()


def test_code_formats_need_no_architecture():
    parsed = parse_version_config(cfg(format="torchscript", architecture=_DROP, architecture_args=_DROP))
    assert parsed.format == "torchscript"
    assert parsed.architecture == ""


# --- Bad tensor schemas -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ([{"name": "input", "datatype": "FLOAT32", "shape": [4]}], "inputs[0].datatype"),
        ([{"name": "input", "datatype": "fp32", "shape": [4]}], "inputs[0].datatype"),
        ([{"name": "input", "datatype": "FP32", "shape": [-4]}], "inputs[0].shape[0]"),
        ([{"name": "input", "datatype": "FP32", "shape": [4, 0]}], "inputs[0].shape[1]"),
        ([{"name": "input", "datatype": "FP32", "shape": [-2]}], "inputs[0].shape[0]"),
        ([{"name": "input", "datatype": "FP32", "shape": [2.5]}], "inputs[0].shape[0]"),
        ([{"name": "input", "datatype": "FP32", "shape": [True]}], "inputs[0].shape[0]"),
        ([{"name": "input", "datatype": "FP32", "shape": 4}], "inputs[0].shape"),
        ([{"name": "input", "datatype": "FP32", "shape": "4"}], "inputs[0].shape"),
        ([{"name": "input", "datatype": "FP32", "shape": [1] * 9}], "inputs[0].shape"),
        ([{"name": "input", "datatype": "FP32"}], "inputs[0].shape"),
        (
            [{"name": "a", "datatype": "FP32", "shape": [4]}, {"name": "a", "datatype": "FP32", "shape": [4]}],
            "inputs[1].name",
        ),
        ([{"name": "input", "datatype": "FP32", "shape": [4], "dims": [4]}], "inputs[0] has unknown keys"),
        ([{"name": "9bad", "datatype": "FP32", "shape": [4]}], "inputs[0].name"),
        ([{"datatype": "FP32", "shape": [4]}], "inputs[0].name"),
        (["input"], "inputs[0]"),
        ([], "inputs must be a non-empty list"),
        ({"name": "input", "datatype": "FP32", "shape": [4]}, "inputs must be a non-empty list"),
    ],
)
def test_bad_input_schema_names_the_field(inputs, expected):
    message = error_of(cfg(inputs=inputs))
    assert expected in message


def test_bad_output_schema_names_outputs():
    message = error_of(cfg(outputs=[{"name": "output", "datatype": "COMPLEX", "shape": [3]}]))
    assert "outputs[0].datatype" in message
    assert "'COMPLEX'" in message


def test_duplicate_name_message_names_the_duplicate():
    with pytest.raises(ValidationError) as exc:
        parse_tensor_schema(
            [{"name": "x", "datatype": "FP32", "shape": [1]}, {"name": "x", "datatype": "INT64", "shape": [1]}],
            where="outputs",
        )
    assert "outputs[1].name 'x' is used twice" in exc.value.messages[0]


def test_missing_inputs_or_outputs():
    assert "inputs" in error_of(cfg(inputs=_DROP))
    assert "outputs" in error_of(cfg(outputs=_DROP))


# --- Bad configs ------------------------------------------------------------------------------


def test_unknown_top_level_keys_are_named():
    message = error_of(cfg(batch_size=8, labels=["a"]))
    assert "unknown keys" in message
    assert "'batch_size'" in message and "'labels'" in message


def test_config_must_be_an_object():
    assert "JSON object" in error_of([IRIS_CONFIG])
    assert "JSON object" in error_of("safetensors")


@pytest.mark.parametrize("fmt", ["keras", "pickle", "", None])
def test_unknown_format(fmt):
    message = error_of(cfg(format=fmt))
    assert "format" in message
    assert "safetensors" in message  # says which formats exist


def test_onnx_is_a_format_that_carries_its_own_program():
    assert parse_version_config(cfg(format="onnx", architecture="")).format == "onnx"
    assert "leave architecture out" in error_of(cfg(format="onnx"))


@pytest.mark.parametrize("fmt", ["safetensors", "state_dict"])
@pytest.mark.parametrize("architecture", [_DROP, "", 42])
def test_weight_formats_need_an_architecture(fmt, architecture):
    message = error_of(cfg(format=fmt, architecture=architecture))
    assert "architecture" in message
    assert fmt in message


def test_architecture_args_must_be_an_object():
    assert "architecture_args" in error_of(cfg(architecture_args=[4, 8, 3]))


@pytest.mark.parametrize("fmt", ["torchscript", "torch_export"])
def test_code_formats_refuse_an_architecture(fmt):
    message = error_of(cfg(format=fmt))
    assert "architecture" in message
    assert fmt in message


@pytest.mark.parametrize(
    ("batching", "expected"),
    [
        ({"max_batch_size": 0}, "batching.max_batch_size"),
        ({"max_batch_size": -1}, "batching.max_batch_size"),
        ({"max_batch_size": 5000}, "batching.max_batch_size"),
        ({"max_batch_size": 2.0}, "batching.max_batch_size"),
        ({"max_batch_size": "8"}, "batching.max_batch_size"),
        ({"max_batch_size": True}, "batching.max_batch_size"),
        ({"max_batch_delay_ms": -1}, "batching.max_batch_delay_ms"),
        ({"max_batch_delay_ms": 10_001}, "batching.max_batch_delay_ms"),
        ({"max_batch_delay_ms": "5"}, "batching.max_batch_delay_ms"),
        ({"max_batch_delay_ms": False}, "batching.max_batch_delay_ms"),
        ({"max_queue_size": 0}, "batching.max_queue_size"),
        ({"max_queue_size": 1_000_001}, "batching.max_queue_size"),
        ({"max_queue_size": None}, "batching.max_queue_size"),
        ({"max_batch": 8}, "batching has unknown keys"),
        ([8, 5], "batching must be an object"),
    ],
)
def test_bad_batching_names_the_field(batching, expected):
    assert expected in error_of(cfg(batching=batching))


def test_batching_bounds_are_inclusive():
    parsed = parse_version_config(cfg(batching={"max_batch_size": 4096, "max_batch_delay_ms": 0, "max_queue_size": 1}))
    assert parsed.batching == Batching(max_batch_size=4096, max_batch_delay_ms=0.0, max_queue_size=1)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("preprocess", {"step": "softmax"}, "preprocess must be a list"),
        ("preprocess", [{"name": "softmax"}], "preprocess[0]"),
        ("postprocess", ["softmax"], "postprocess[0]"),
        ("postprocess", [{"step": "softmax"}, {"step": 3}], "postprocess[1]"),
    ],
)
def test_bad_pipeline_names_the_step(field, value, expected):
    assert expected in error_of(cfg(**{field: value}))


@pytest.mark.parametrize("hardware", ["", 3, None])
def test_bad_hardware(hardware):
    assert "hardware" in error_of(cfg(hardware=hardware))
