"""Request instances -> validated arrays (inference.tensors.decode_instances): codes and paths."""

from __future__ import annotations

import numpy as np
import pytest

from inference.tensors import InputError, Limits, check_model_inputs, decode_instances
from registry.schemas import parse_tensor_schema

LIMITS = Limits(max_instances=8, max_elements=64)


def specs(*tensors: tuple[str, str, list[int]]):
    return parse_tensor_schema([{"name": n, "datatype": d, "shape": s} for n, d, s in tensors], where="inputs")


FP32_4 = specs(("input", "FP32", [4]))


def refused(instances, inputs, limits: Limits = LIMITS) -> InputError:
    with pytest.raises(InputError) as info:
        decode_instances(instances, inputs, limits=limits)
    return info.value


def test_good_instances_become_one_array_per_input():
    out = decode_instances([[1, 2, 3, 4], [5.5, 6, 7, 8]], FP32_4, limits=LIMITS)
    assert list(out) == ["input"]
    assert out["input"].dtype == np.float32 and out["input"].shape == (2, 4)
    assert out["input"].tolist() == [[1, 2, 3, 4], [5.5, 6, 7, 8]]


@pytest.mark.parametrize(
    "instances, path",
    [
        ([[1, 2, 3]], "instances"),  # wrong length, same for all instances
        ([[[1, 2, 3, 4]]], "instances"),  # wrong rank
        ([1, 2], "instances"),  # scalars where vectors go
    ],
)
def test_wrong_shape_or_rank(instances, path):
    err = refused(instances, FP32_4)
    assert err.code == "invalid_shape"
    assert err.path == path
    assert "[4]" in str(err)


@pytest.mark.parametrize(
    "instances, path",
    [
        ([[1, 2, 3, 4], [1, 2, 3]], "instances[1]"),
        ([[1, 2, 3, 4], [1, 2, 3, 4], [1, [2], 3, 4]], "instances[2]"),
        ([[1, 2, 3, 4], [1, 2, 3, [4, 5]]], "instances[1]"),
    ],
)
def test_ragged_instances_name_the_first_instance_that_differs(instances, path):
    err = refused(instances, FP32_4)
    assert (err.code, err.path) == ("invalid_shape", path)


@pytest.mark.parametrize(
    "instances, path",
    [
        ([[1, 2, 3, 4], [1, 2, "x", 4]], "instances[1][2]"),
        ([["1", 2, 3, 4]], "instances[0][0]"),
        ([[1, 2, 3, 4], [1, 2, None, 4]], "instances[1][2]"),
        ([[1, 2, 3, {"a": 1}]], "instances[0][3]"),
    ],
)
def test_strings_nulls_and_objects_where_numbers_go(instances, path):
    err = refused(instances, FP32_4)
    assert (err.code, err.path) == ("invalid_datatype", path)


@pytest.mark.parametrize(
    "instances, path",
    [([[1, 2, True, 4]], "instances[0][2]"), ([[1, 2, 3, 4], [False, 2, 3, 4]], "instances[1][0]")],
)
def test_bools_where_numbers_go(instances, path):
    err = refused(instances, FP32_4)
    assert (err.code, err.path) == ("invalid_datatype", path)
    assert "true/false" in str(err)


def test_all_bools_where_numbers_go():
    err = refused([[True, False, True, False]], FP32_4)
    assert (err.code, err.path) == ("invalid_datatype", "instances[0][0]")


INT64_2 = specs(("input", "INT64", [2]))
INT32_2 = specs(("input", "INT32", [2]))


def test_int64_values_decode_exactly():
    out = decode_instances([[2**63 - 1, -(2**63)], [1, 2]], INT64_2, limits=LIMITS)
    assert out["input"].dtype == np.int64
    assert out["input"].tolist() == [[2**63 - 1, -(2**63)], [1, 2]]


@pytest.mark.parametrize(
    "instances, path",
    [
        ([[2**63, 1]], "instances[0][0]"),
        ([[1, 2**63]], "instances[0][1]"),
        ([[1, 2], [3, 2**63]], "instances[1][1]"),
        ([[1, 2**70]], "instances[0][1]"),
        ([[-(2**63) - 1, 1]], "instances[0][0]"),
    ],
)
def test_int64_overflow_is_out_of_range_at_its_path(instances, path):
    err = refused(instances, INT64_2)
    assert err.path == path
    assert err.code == "out_of_range", f"{err.code}: {err}"


def test_uint64_values_above_the_int64_range_are_accepted():
    out = decode_instances([[1, 2**63 + 1], [2**64 - 1, 0]], specs(("input", "UINT64", [2])), limits=LIMITS)
    assert out["input"].dtype == np.uint64
    assert out["input"].tolist() == [[1, 2**63 + 1], [2**64 - 1, 0]]


def test_negative_value_for_an_unsigned_input():
    err = refused([[1, 2], [3, -1]], specs(("input", "UINT8", [2])))
    assert (err.code, err.path) == ("out_of_range", "instances[1][1]")


def test_float_for_an_int32_input():
    err = refused([[1, 2], [3, 4.5]], INT32_2)
    assert (err.code, err.path) == ("invalid_datatype", "instances[1][1]")


@pytest.mark.parametrize("value, path", [(2**31, "instances[0][1]"), (-(2**31) - 1, "instances[0][1]")])
def test_out_of_int32_range(value, path):
    err = refused([[1, value]], INT32_2)
    assert (err.code, err.path) == ("out_of_range", path)
    assert "INT32" in str(err)


def test_int32_limits_are_accepted():
    out = decode_instances([[2**31 - 1, -(2**31)]], INT32_2, limits=LIMITS)
    assert out["input"].dtype == np.int32 and out["input"].tolist() == [[2**31 - 1, -(2**31)]]


@pytest.mark.parametrize(
    "value", [1e39, -1e39, float("nan"), float("inf")], ids=["over-fp32-max", "under-fp32-min", "nan", "inf"]
)
def test_non_finite_fp32(value):
    err = refused([[1, 2, 3, 4], [1, 2, value, 4]], FP32_4)
    assert (err.code, err.path) == ("non_finite", "instances[1][2]")


def test_1e39_is_fine_for_fp64():
    out = decode_instances([[1e39, 0]], specs(("x", "FP64", [2])), limits=LIMITS)
    assert out["x"].dtype == np.float64 and out["x"][0, 0] == 1e39


TWO_INPUTS = specs(("a", "FP32", [2]), ("b", "INT64", [1]))


def test_multi_input_instances_are_objects():
    out = decode_instances([{"a": [1, 2], "b": [3]}, {"b": [4], "a": [5, 6]}], TWO_INPUTS, limits=LIMITS)
    assert out["a"].tolist() == [[1, 2], [5, 6]] and out["a"].dtype == np.float32
    assert out["b"].tolist() == [[3], [4]] and out["b"].dtype == np.int64


@pytest.mark.parametrize(
    "instances, path, words",
    [
        ([{"a": [1, 2], "b": [3]}, {"a": [1, 2]}], "instances[1]", "missing ['b']"),
        ([{"a": [1, 2], "b": [3], "c": 1}], "instances[0]", "unknown ['c']"),
        ([{"a": [1, 2], "b": [3]}, [1, 2]], "instances[1]", "object"),
    ],
)
def test_multi_input_missing_or_extra_keys(instances, path, words):
    err = refused(instances, TWO_INPUTS)
    assert (err.code, err.path) == ("invalid_input", path)
    assert words in str(err)


def test_multi_input_errors_name_the_input():
    err = refused([{"a": [1, 2], "b": [3]}, {"a": [1, "x"], "b": [3]}], TWO_INPUTS)
    assert (err.code, err.path) == ("invalid_datatype", "instances[1].a[1]")
    err = refused([{"a": [1, 2], "b": [3]}, {"a": [1, 2], "b": [1.5]}], TWO_INPUTS)
    assert (err.code, err.path) == ("invalid_datatype", "instances[1].b[0]")


def test_too_many_instances():
    err = refused([[1, 2, 3, 4]] * 9, FP32_4)
    assert (err.code, err.path) == ("too_many_instances", "instances")
    assert decode_instances([[1, 2, 3, 4]] * 8, FP32_4, limits=LIMITS)["input"].shape == (8, 4)


def test_too_many_elements():
    variable = specs(("input", "FP32", [-1]))
    err = refused([[0.0] * 65], variable)
    assert err.code == "too_many_elements"
    assert "64" in str(err)
    assert decode_instances([[0.0] * 32, [1.0] * 32], variable, limits=LIMITS)["input"].shape == (2, 32)


@pytest.mark.parametrize("instances", [[], {}, "x", None])
def test_instances_must_be_a_non_empty_list(instances):
    err = refused(instances, FP32_4)
    assert err.path == "instances"


def test_bool_inputs():
    flags = specs(("flags", "BOOL", [3]))
    out = decode_instances([[True, False, True], [False, False, False]], flags, limits=LIMITS)
    assert out["flags"].dtype == np.bool_ and out["flags"].tolist() == [[True, False, True], [False] * 3]
    err = refused([[True, False, True], [True, 1, False]], flags)
    assert (err.code, err.path) == ("invalid_datatype", "instances[1][1]")


def test_bytes_inputs():
    text = specs(("text", "BYTES", [-1]))
    out = decode_instances([["a", "bc"], ["déf", ""]], text, limits=LIMITS)
    assert out["text"].dtype == object and out["text"].tolist() == [["a", "bc"], ["déf", ""]]
    err = refused([["a", "b"], [1, 2]], text)
    assert (err.code, err.path) == ("invalid_datatype", "instances[1][0]")


@pytest.mark.parametrize("odd", [4, 2.5, True, None], ids=["int", "float", "bool", "null"])
def test_a_non_string_among_strings_is_refused_for_bytes_inputs(odd):
    # never silently turned into the string "4", "2.5" or "True"
    err = refused([["a", "b"], ["c", odd]], specs(("text", "BYTES", [-1])))
    assert (err.code, err.path) == ("invalid_datatype", "instances[1][1]")


def test_variable_dimensions():
    seq = specs(("seq", "FP32", [-1, 2]))
    out = decode_instances([[[1, 2], [3, 4], [5, 6]]], seq, limits=LIMITS)
    assert out["seq"].shape == (1, 3, 2)
    out = decode_instances([[[1, 2]], [[3, 4]]], seq, limits=LIMITS)
    assert out["seq"].shape == (2, 1, 2)
    err = refused([[[1, 2, 3]]], seq)
    assert err.code == "invalid_shape"
    # within one request the instances must agree (they are one tensor)
    err = refused([[[1, 2]], [[1, 2], [3, 4]]], seq)
    assert (err.code, err.path) == ("invalid_shape", "instances[1]")


def test_check_model_inputs_after_preprocessing():
    check_model_inputs({"input": np.zeros((2, 4), np.float32)}, FP32_4)
    with pytest.raises(InputError) as info:
        check_model_inputs({"input": np.zeros((2, 5), np.float32)}, FP32_4)
    assert info.value.code == "invalid_shape"
    with pytest.raises(InputError, match="no 'input' tensor"):
        check_model_inputs({}, FP32_4)


def test_the_limits_of_the_settings_follow_a_change_of_them(settings):
    settings.INFERENCE_MAX_INSTANCES = 3
    first = Limits.from_settings()
    assert first.max_instances == 3 and Limits.from_settings() is first  # remembered
    assert Limits.from_settings(allow_nonfinite=True).allow_nonfinite
    settings.INFERENCE_MAX_INSTANCES = 5
    assert Limits.from_settings().max_instances == 5 and not Limits.from_settings().allow_nonfinite
