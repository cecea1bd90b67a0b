"""Open Inference Protocol (KServe v2 / Triton) tensors over HTTP: JSON and binary, in and out.

Decoding checks every tensor's declared shape against its data *before* allocating
anything for it: a claimed shape of a billion elements with four values of data is a 400,
not a gigabyte. With Triton's binary tensor data extension the request body is a JSON
header of ``Inference-Header-Content-Length`` bytes followed by the raw tensors, in input
order, each ``binary_data_size`` bytes (BYTES elements are 4-byte little-endian lengths
followed by the bytes).

What the outputs hold (tensors after the tensor steps, label outputs, Triton's classification
extension) is decided in ``oip_outputs``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from registry.schemas import DATATYPES

# v2 datatype -> numpy dtype (BYTES: object array of bytes/str).
NUMPY = {name: np.dtype(np_name) for name, np_name in DATATYPES.items() if name != "BYTES"}
FROM_NUMPY = {v.str: k for k, v in NUMPY.items()}
MAX_RANK = 16
MAX_SPAN = 2**40  # elements a shape may describe, counting its non-zero dimensions


class ProtocolError(ValueError):
    """A malformed inference request (a 400)."""

    status_code = 400
    error_code = "invalid_input"


@dataclass
class InferRequest:
    id: str | None
    parameters: dict[str, Any]
    inputs: dict[str, np.ndarray]
    outputs: list[dict[str, Any]] | None  # requested outputs, None = all
    binary_output: bool = False  # request-level binary_data_output
    input_parameters: dict[str, dict] = field(default_factory=dict)


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_RANK:
        raise ProtocolError(f"{where}: shape must be a list of at most {MAX_RANK} dimensions")
    for d in value:
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise ProtocolError(f"{where}: shape dimensions must be non-negative integers, got {value}")
    # No data can fill more; and numpy refuses even an empty array whose other dims overflow it.
    if math.prod(d for d in value if d) > MAX_SPAN:
        raise ProtocolError(f"{where}: shape {value} is larger than any tensor this server takes")
    return tuple(value)


def _decode_bytes_elements(raw: bytes, count: int, where: str) -> np.ndarray:
    if count * 4 > len(raw):  # every element has a 4-byte length: refuse before allocating
        raise ProtocolError(f"{where}: {len(raw)} bytes of data cannot hold {count} BYTES elements")
    out = np.empty(count, dtype=object)
    offset = 0
    for i in range(count):
        if offset + 4 > len(raw):
            raise ProtocolError(f"{where}: binary BYTES data ends before element {i}")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise ProtocolError(f"{where}: BYTES element {i} claims {length} bytes past the end of its data")
        out[i] = raw[offset : offset + length]
        offset += length
    if offset != len(raw):
        raise ProtocolError(f"{where}: {len(raw) - offset} bytes of binary data left after {count} BYTES elements")
    return out


def _contains_bool(value: Any) -> bool:
    """Whether a nested list holds a true/false (numpy would quietly read it as 1/0); iterative."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bool):
            return True
        if isinstance(item, list):
            stack.extend(item)
    return False


def _json_data(data: Any, datatype: str, shape: tuple[int, ...], count: int, where: str,
               maybe_bools: bool = True) -> np.ndarray:
    if not isinstance(data, list):
        raise ProtocolError(f"{where}: data must be a list (flat or nested row-major)")
    if datatype == "BYTES":
        arr = np.asarray(data, dtype=object).reshape(-1)
        if arr.size != count:
            raise ProtocolError(f"{where}: shape {list(shape)} holds {count} elements, the data has {arr.size}")
        if not all(isinstance(v, str) for v in arr):
            raise ProtocolError(f"{where}: BYTES data must be strings")
        return arr.reshape(shape)
    try:
        arr = np.asarray(data)
    except (ValueError, OverflowError):
        raise ProtocolError(f"{where}: data is ragged or holds values that are not {datatype}") from None
    if arr.size != count:
        raise ProtocolError(f"{where}: shape {list(shape)} holds {count} elements, the data has {arr.size}")
    kind, target = arr.dtype.kind, NUMPY[datatype]
    if datatype == "BOOL":
        if kind != "b" and arr.size:
            raise ProtocolError(f"{where}: BOOL data must be true/false")
    elif kind not in "iuf" and arr.size:
        raise ProtocolError(f"{where}: {datatype} data must be numbers")
    elif maybe_bools and _contains_bool(data):
        raise ProtocolError(f"{where}: {datatype} data must be numbers, not true/false")
    elif target.kind in "iu":
        if kind == "f":
            raise ProtocolError(f"{where}: {datatype} data must be integers")
        info = np.iinfo(target)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise ProtocolError(f"{where}: values outside the {datatype} range")
    with np.errstate(over="ignore", invalid="ignore"):
        return arr.astype(target, copy=False).reshape(shape)


def parse_infer_request(body: bytes, header_length: int | None) -> InferRequest:
    """Return the decoded request, or raise ProtocolError saying what is wrong."""
    if header_length is not None:
        if header_length < 0 or header_length > len(body):
            raise ProtocolError(
                f"Inference-Header-Content-Length is {header_length} but the body has {len(body)} bytes"
            )
        header, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        header, binary = body, memoryview(b"")
    try:
        request = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"the request is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise ProtocolError("the request must be a JSON object")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError('"inputs" must be a non-empty list of tensors')
    params = request.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError('"parameters" must be an object')
    decoded: dict[str, np.ndarray] = {}
    input_params: dict[str, dict] = {}
    maybe_bools = b"true" in header or b"false" in header  # else no data can hold a bool: skip the scan
    offset = 0
    for i, tensor in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(tensor, dict):
            raise ProtocolError(f"{where} must be an object with name, shape, datatype and data")
        name, datatype = tensor.get("name"), tensor.get("datatype")
        if not isinstance(name, str) or not name:
            raise ProtocolError(f"{where}: name is required")
        where = f"input {name!r}"
        if name in decoded:
            raise ProtocolError(f"{where} is given twice")
        if not isinstance(datatype, str) or datatype not in DATATYPES:
            raise ProtocolError(f"{where}: datatype {datatype!r} is not one of {', '.join(DATATYPES)}")
        shape = _shape(tensor.get("shape"), where)
        count = math.prod(shape)
        tparams = tensor.get("parameters") or {}
        if not isinstance(tparams, dict):
            raise ProtocolError(f"{where}: parameters must be an object")
        input_params[name] = tparams
        size = tparams.get("binary_data_size")
        if size is not None:
            if "data" in tensor:
                raise ProtocolError(f"{where} has both data and binary_data_size")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ProtocolError(f"{where}: binary_data_size must be a non-negative integer")
            if offset + size > len(binary):
                raise ProtocolError(f"{where}: binary_data_size {size} goes past the end of the body")
            raw = bytes(binary[offset : offset + size])
            offset += size
            if datatype == "BYTES":
                arr = _decode_bytes_elements(raw, count, where).reshape(shape)
            else:
                dtype = NUMPY[datatype]
                if size != count * dtype.itemsize:
                    raise ProtocolError(
                        f"{where}: shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes, "
                        f"binary_data_size says {size}"
                    )
                arr = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)  # a writable copy
        else:
            if "data" not in tensor:
                raise ProtocolError(f"{where} has no data (and no binary_data_size)")
            arr = _json_data(tensor["data"], datatype, shape, count, where, maybe_bools)
        decoded[name] = arr
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    outputs = request.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
            raise ProtocolError('"outputs" must be a list of {"name": ...} objects')
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ProtocolError('"id" must be a string')
    return InferRequest(
        id=request_id, parameters=params, inputs=decoded, outputs=outputs,
        binary_output=bool(params.get("binary_data_output", False)), input_parameters=input_params,
    )


def tensor_metadata(specs: list[dict]) -> list[dict]:
    """A schema's tensors as the protocol describes them: shapes include the batch dimension (-1)."""
    return [{"name": s["name"], "datatype": s["datatype"], "shape": [-1, *s["shape"]]} for s in specs]


def _encode_bytes_elements(arr: np.ndarray) -> bytes:
    parts = []
    for v in arr.reshape(-1):
        b = v if isinstance(v, (bytes, bytearray)) else str(v).encode()
        parts.append(struct.pack("<I", len(b)) + b)
    return b"".join(parts)


def encode_infer_response(
    *, model_name: str, model_version: str, request_id: str | None, tensors: dict[str, np.ndarray],
    requested: list[dict[str, Any]] | None, binary_default: bool,
) -> tuple[bytes, int | None]:
    """Return (body, Inference-Header-Content-Length or None) for an inference response."""
    if requested is None:
        selected = [(name, {}) for name in tensors]
    else:
        selected = []
        for out in requested:
            if out["name"] not in tensors:
                raise ProtocolError(f"unknown output {out['name']!r}; the model returns {sorted(tensors)}")
            selected.append((out["name"], out.get("parameters") or {}))
    header_outputs, blobs = [], []
    for name, params in selected:
        arr = tensors[name]
        binary = bool(params.get("binary_data", binary_default))
        datatype = "BYTES" if arr.dtype == object else FROM_NUMPY.get(arr.dtype.str, None)
        if datatype is None:
            arr = arr.astype(np.float32)
            datatype = "FP32"
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(arr.shape)}
        if binary:
            blob = _encode_bytes_elements(arr) if datatype == "BYTES" else np.ascontiguousarray(arr).astype(
                arr.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            values = arr.reshape(-1)
            if datatype == "BYTES":
                entry["data"] = [v.decode("utf-8", "replace") if isinstance(v, (bytes, bytearray)) else v for v in values]
            else:
                entry["data"] = values.tolist()
        header_outputs.append(entry)
    response = {"model_name": model_name, "model_version": model_version, "outputs": header_outputs}
    if request_id is not None:
        response["id"] = request_id
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
