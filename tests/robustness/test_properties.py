"""Property tests (hypothesis) of the pure validation and decoding functions: whatever the input,
each returns a value or raises its module's clean validation error, never anything else (no
TypeError, OverflowError, RecursionError, MemoryError, numpy's own errors...).

The functions: JSON bodies (``inference.apis.parsing.loads``), v1 instances to tensors
(``inference.tensors.decode_instances``, ``check_input_arrays``), the Open Inference Protocol's
JSON and binary requests (``inference.oip.parse_infer_request``), version configs and
tensor schemas (``registry.schemas``), request parameters (``inference.pipeline.base``), job
input files (``inference.services.jobs``) and the registry's name/version parsing.
"""

from __future__ import annotations

import io
import json
import struct

import numpy as np
from django.core.exceptions import ValidationError
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from inference.apis.parsing import loads
from inference.errors import InvalidInput
from inference.jobs.inputs import JobInputError, count_jsonl, csv_rows
from inference.oip import ProtocolError, parse_infer_request
from inference.pipeline.base import StepInputError, clean_parameters
from inference.pipeline.steps import TopK
from inference.tensors import InputError, Limits, check_input_arrays, decode_instances
from registry.schemas import DATATYPES, TensorSpec, parse_tensor_schema, parse_version_config
from registry.selectors import MAX_VERSION, is_registry_name, version_number

PROPERTIES = hsettings(max_examples=200, deadline=None, derandomize=True, database=None,
                       suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# --- strategies ---------------------------------------------------------------------------------------------

NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -0.0, 2**63, -(2**63) - 1, 2**64, 1e300, -1e300, 3.4e38, 65504.0, 1e-320]),
)
SCALARS = st.one_of(NUMBERS, st.booleans(), st.none(), st.text(max_size=8))
JSON = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=5),
                               st.dictionaries(st.text(max_size=6), children, max_size=4)),
    max_leaves=40,
)
# Nested lists of numbers, mostly regular (the shapes a client means), sometimes ragged.
NUMERIC_ROWS = st.one_of(
    st.integers(1, 4).flatmap(lambda n: st.lists(st.lists(NUMBERS, min_size=n, max_size=n), min_size=1, max_size=4)),
    st.recursive(NUMBERS, lambda c: st.lists(c, max_size=4), max_leaves=20),
    st.lists(JSON, max_size=4),
)
DIMS = st.one_of(st.integers(-3, 5), st.sampled_from([-1, 0, 2**31, 2**63, 2**70, -(2**70)]),
                 st.floats(0, 4), st.text(max_size=2), st.booleans(), st.none())
SPECS = st.builds(
    TensorSpec,
    name=st.sampled_from(["input", "x", "b"]),
    datatype=st.sampled_from(sorted(DATATYPES)),
    shape=st.lists(st.one_of(st.integers(1, 4), st.just(-1)), max_size=3).map(tuple),
)
LIMITS = st.builds(Limits, max_instances=st.integers(1, 64), max_elements=st.integers(1, 512),
                   allow_nonfinite=st.booleans())


# --- JSON bodies --------------------------------------------------------------------------------------------


@PROPERTIES
@given(st.one_of(st.binary(max_size=200), JSON.map(lambda v: json.dumps(v).encode()),
                 st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),
                 st.integers(1, 5000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n)))
@example(b"[" * 100_000 + b"]" * 100_000)
@example(b"1e400")
@example(b"[NaN]")
def test_json_bodies_parse_or_are_malformed(data):
    try:
        loads(data)
    except InvalidInput as exc:
        assert exc.status_code == 400 and exc.error_code == "malformed_json"


# --- v1 instances -------------------------------------------------------------------------------------------


@PROPERTIES
@given(instances=st.one_of(NUMERIC_ROWS, JSON, st.lists(st.dictionaries(st.sampled_from(["input", "x", "b", "z"]),
                                                                          NUMERIC_ROWS, max_size=3), max_size=3)),
       inputs=st.lists(SPECS, min_size=1, max_size=2, unique_by=lambda s: s.name),
       limits=LIMITS, maybe_bools=st.booleans())
@example(instances=[[2**64, 1, 1, 1]], inputs=[TensorSpec("input", "INT64", (4,))],
         limits=Limits(8, 64), maybe_bools=True)
@example(instances=[[1e300, 1, 1, 1]], inputs=[TensorSpec("input", "FP16", (4,))], limits=Limits(8, 64),
         maybe_bools=False)
@example(instances=[[[[[[1]]]]]], inputs=[TensorSpec("input", "FP32", (-1,))], limits=Limits(8, 64),
         maybe_bools=True)
def test_decode_instances_returns_tensors_or_an_input_error(instances, inputs, limits, maybe_bools):
    try:
        arrays = decode_instances(instances, inputs, limits=limits, maybe_bools=maybe_bools)
    except InputError as exc:
        assert isinstance(exc.path, str) and exc.code
        return
    assert set(arrays) == {s.name for s in inputs}
    for spec in inputs:
        arr = arrays[spec.name]
        assert arr.shape[0] == len(instances) <= limits.max_instances
        assert arr.size <= limits.max_elements
        if spec.datatype == "BYTES":
            continue
        assert arr.dtype == np.dtype(DATATYPES[spec.datatype])
        assert len(arr.shape[1:]) == len(spec.shape)
        if arr.dtype.kind == "f" and not limits.allow_nonfinite:
            assert np.isfinite(arr).all()


def _decoded(instances, inputs, limits, maybe_bools):
    try:
        return decode_instances(instances, inputs, limits=limits, maybe_bools=maybe_bools)
    except InputError as exc:
        return (str(exc), exc.path, exc.code, exc.status)


@PROPERTIES
@given(instances=NUMERIC_ROWS.map(lambda rows: rows if isinstance(rows, list) and rows else [rows]),
       datatype=st.sampled_from(["FP16", "FP32", "FP64"]), width=st.one_of(st.integers(0, 4), st.just(-1)),
       limits=LIMITS, maybe_bools=st.booleans())
@example(instances=[[5.1, 3.5, 1.4, 0.2]], datatype="FP32", width=4, limits=Limits(8, 64), maybe_bools=True)
@example(instances=[[True, 1.0]], datatype="FP32", width=2, limits=Limits(8, 64), maybe_bools=False)
@example(instances=[[3.5e38, 1.0]], datatype="FP32", width=2, limits=Limits(8, 64, allow_nonfinite=True),
         maybe_bools=True)
@example(instances=[[2**70, 1]], datatype="FP64", width=-1, limits=Limits(8, 64), maybe_bools=True)
def test_a_few_numbers_decode_as_the_general_path_decodes_them(instances, datatype, width, limits, maybe_bools):
    """Checked by Python (tensors._few_numbers) or by numpy on whole arrays (FEW_NUMBERS = 0): the same array,
    or the same refusal with the same path and code."""
    from inference import tensors

    inputs = [TensorSpec("input", datatype, (width,))]
    fast = _decoded(instances, inputs, limits, maybe_bools)
    saved, tensors.FEW_NUMBERS = tensors.FEW_NUMBERS, 0
    try:
        general = _decoded(instances, inputs, limits, maybe_bools)
    finally:
        tensors.FEW_NUMBERS = saved
    if isinstance(general, tuple):
        assert fast == general
    else:
        assert not isinstance(fast, tuple), fast
        assert fast["input"].dtype == general["input"].dtype and fast["input"].shape == general["input"].shape
        np.testing.assert_array_equal(fast["input"], general["input"])


ARRAYS = st.one_of(
    st.builds(lambda shape, dtype: np.zeros(shape, dtype=dtype),
              st.lists(st.integers(0, 4), max_size=3).map(tuple),
              st.sampled_from(["float32", "float64", "int64", "int8", "bool", "object", "uint8"])),
    st.builds(lambda v: np.asarray(v, dtype=np.float32), st.lists(st.floats(width=32), min_size=1, max_size=8)),
)


@PROPERTIES
@given(arrays=st.dictionaries(st.sampled_from(["input", "x", "b"]), ARRAYS, max_size=3),
       inputs=st.lists(SPECS, min_size=1, max_size=2, unique_by=lambda s: s.name), limits=LIMITS,
       raw=st.sets(st.sampled_from(["input", "x"])))
def test_check_input_arrays_returns_a_batch_size_or_an_input_error(arrays, inputs, limits, raw):
    try:
        n = check_input_arrays(arrays, inputs, limits=limits, raw_inputs=raw)
    except InputError as exc:
        assert exc.code
        return
    assert 1 <= n <= limits.max_instances


# --- Open Inference Protocol -------------------------------------------------------------------------------

TENSORS = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["input", "x"]), st.text(max_size=4), st.integers()),
     "datatype": st.one_of(st.sampled_from(sorted(DATATYPES)), st.text(max_size=5)),
     "shape": st.one_of(st.lists(DIMS, max_size=4), JSON)},
    optional={"data": st.one_of(NUMERIC_ROWS, JSON, st.lists(st.text(max_size=3), max_size=6)),
              "parameters": st.one_of(st.fixed_dictionaries({"binary_data_size": st.one_of(
                  st.integers(-5, 64), st.sampled_from([2**63, 2**70]), st.floats(0, 8), st.booleans())}), JSON)},
)
REQUESTS = st.fixed_dictionaries(
    {"inputs": st.one_of(st.lists(TENSORS, max_size=3), JSON)},
    optional={"id": JSON, "parameters": JSON, "outputs": JSON},
)


@PROPERTIES
@given(request=st.one_of(REQUESTS, JSON), binary=st.binary(max_size=96),
       header_length=st.one_of(st.none(), st.integers(-10, 400), st.just(2**70)))
@example(request={"inputs": [{"name": "input", "shape": [0, 2**70], "datatype": "FP32", "data": []}]},
         binary=b"", header_length=None)
@example(request={"inputs": [{"name": "input", "shape": [2**70, 0], "datatype": "BYTES",
                              "parameters": {"binary_data_size": 0}}]}, binary=b"", header_length=-1)
@example(request={"inputs": [{"name": "input", "shape": [0, 2**62, 2**62], "datatype": "INT8",
                              "parameters": {"binary_data_size": 0}}]}, binary=b"", header_length=-1)
@example(request={"inputs": [{"name": "s", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 8}}]},
         binary=struct.pack("<I", 0) + struct.pack("<I", 2**32 - 1), header_length=-1)
def test_infer_requests_decode_or_are_protocol_errors(request, binary, header_length):
    header = json.dumps(request).encode()
    if header_length == -1:  # the binary extension, with the header's true length
        body, length = header + binary, len(header)
    elif header_length is None:
        body, length = header, None
    else:
        body, length = header + binary, header_length
    try:
        parsed = parse_infer_request(body, length)
    except ProtocolError:
        return
    for name, arr in parsed.inputs.items():
        assert isinstance(name, str) and isinstance(arr, np.ndarray)


@PROPERTIES
@given(st.binary(max_size=300), st.one_of(st.none(), st.integers(-4, 320)))
def test_any_bytes_are_an_infer_request_or_a_protocol_error(body, header_length):
    try:
        parse_infer_request(body, header_length)
    except ProtocolError:
        pass


# --- version configs, schemas, parameters ------------------------------------------------------------------

CONFIGS = st.fixed_dictionaries(
    {},
    optional={
        "format": st.one_of(st.sampled_from(["safetensors", "state_dict", "torchscript", "torch_export"]), JSON),
        "architecture": st.one_of(st.just("registry.architectures.MLP"), JSON),
        "architecture_args": JSON,
        "inputs": st.one_of(st.lists(st.fixed_dictionaries({"name": st.one_of(st.just("input"), JSON),
                                                            "datatype": st.one_of(st.just("FP32"), JSON),
                                                            "shape": st.one_of(st.lists(DIMS, max_size=4), JSON)}),
                                     max_size=3), JSON),
        "outputs": JSON, "preprocess": JSON, "postprocess": JSON,
        "batching": st.one_of(st.dictionaries(st.sampled_from(["max_batch_size", "max_batch_delay_ms",
                                                               "max_queue_size", "other"]), NUMBERS), JSON),
        "hardware": JSON, "example": JSON, "colour": JSON,
    },
)


@PROPERTIES
@given(st.one_of(CONFIGS, JSON))
def test_version_configs_parse_or_are_validation_errors(raw):
    try:
        cfg = parse_version_config(raw)
    except ValidationError as exc:
        assert exc.messages
        return
    assert cfg.inputs and cfg.outputs
    for spec in cfg.inputs + cfg.outputs:
        assert all(d == -1 or 1 <= d <= 2**31 - 1 for d in spec.shape)


@PROPERTIES
@given(st.one_of(st.lists(st.fixed_dictionaries({"name": JSON, "datatype": JSON, "shape": JSON}), max_size=3), JSON))
def test_tensor_schemas_parse_or_are_validation_errors(raw):
    try:
        parse_tensor_schema(raw, where="inputs")
    except ValidationError:
        pass


@PROPERTIES
@given(st.one_of(JSON, st.dictionaries(st.just("top_k"), JSON, max_size=1)))
@example({"top_k": 2**70})
@example({"top_k": True})
def test_request_parameters_are_cleaned_or_refused(raw):
    try:
        cleaned = clean_parameters(raw, TopK.request_parameters)
    except StepInputError as exc:
        assert exc.path.startswith("parameters")
        return
    assert set(cleaned) <= {"top_k"}
    assert all(1 <= v <= 1000 for v in cleaned.values())


# --- job input files, names and version numbers --------------------------------------------------------------


@PROPERTIES
@given(st.one_of(st.binary(max_size=300), st.lists(st.text(max_size=12), max_size=6).map(
    lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass"))))
@example(b"\xff\xfe1,2\n")
@example(b'a,b\n"1,2\n')
@example(b"[" * 5000 + b"\n")
def test_job_files_count_or_are_job_input_errors(data):
    for read in (count_jsonl, lambda f: sum(1 for _ in csv_rows(f))):
        try:
            count = read(io.BytesIO(data))
        except JobInputError:
            continue
        assert count >= 0


@PROPERTIES
@given(JSON)
@example("9" * 40)
@example("\u00b2")
@example("١")
@example(True)
@example(2**31)
def test_version_numbers_and_registry_names_never_raise(value):
    number = version_number(value)
    assert number is None or (isinstance(number, int) and 1 <= number <= MAX_VERSION)
    assert isinstance(is_registry_name(value), bool)
