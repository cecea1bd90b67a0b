"""Between JSON and tensors: decode request instances into numpy arrays, validated.

Conversion is done by numpy on whole lists (no per-element Python loop on the hot
path), except for a few plain numbers (``_few_numbers``). Every refusal is an
``InputError`` carrying the path of the offending field, e.g. ``instances[3].pixels``,
and a stable code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.core.signals import setting_changed

from registry.schemas import DATATYPES, TensorSpec

from .conf import hot

_INT_KINDS = "iu"


class InputError(ValueError):
    """The request's data does not fit the model's input schema (a 400; 413 for a request over a
    per-request budget)."""

    def __init__(self, message: str, *, path: str = "", code: str = "invalid_input", status: int = 400):
        super().__init__(message)
        self.path = path
        self.code = code
        self.status = status


@dataclass(frozen=True)
class Limits:
    max_instances: int
    max_elements: int  # per tensor
    max_request_elements: int = 2**62  # all the request's tensors together
    allow_nonfinite: bool = False

    @classmethod
    def from_settings(cls, *, allow_nonfinite: bool = False) -> Limits:
        """The limits the settings give (remembered until a setting changes: asked for on every request)."""
        limits = _limits.get(allow_nonfinite)
        if limits is None:
            limits = _limits[allow_nonfinite] = cls(
                max_instances=hot.INFERENCE_MAX_INSTANCES,
                max_elements=hot.INFERENCE_MAX_TENSOR_ELEMENTS,
                max_request_elements=hot.INFERENCE_MAX_REQUEST_ELEMENTS,
                allow_nonfinite=allow_nonfinite,
            )
        return limits


_limits: dict[bool, Limits] = {}


def _forget_limits(**_: Any) -> None:
    _limits.clear()


setting_changed.connect(_forget_limits, dispatch_uid="inference.tensors.forget_limits")


def check_request_elements(arrays: Mapping[str, np.ndarray], limits: Limits) -> None:
    """413 (InputError) when the request's tensors hold more elements together than the per-request budget."""
    total = sum(arr.size for arr in arrays.values() if arr.dtype != object)
    if total > limits.max_request_elements:
        raise InputError(
            f"the request's tensors hold {total} elements together, over the limit of "
            f"{limits.max_request_elements} per request (INFERENCE_MAX_REQUEST_ELEMENTS)",
            path="instances", code="payload_too_large", status=413,
        )


def _shape_matches(actual: Sequence[int], declared: Sequence[int]) -> bool:
    return len(actual) == len(declared) and all(d == -1 or a == d for a, d in zip(actual, declared))


def _first_bad_instance(values: list[Any], spec: TensorSpec, key_path: str) -> str:
    """Return the path of the first instance whose shape differs from the first one's (error path only)."""
    try:
        ref = np.shape(values[0])
    except ValueError:
        return f"instances[0]{key_path}"
    for i, v in enumerate(values):
        try:
            if np.shape(v) != ref:
                return f"instances[{i}]{key_path}"
        except ValueError:
            return f"instances[{i}]{key_path}"
    return f"instances{key_path}"


def _has_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, list):
        return any(_has_bool(v) for v in value)
    return False


def _locate(values: list[Any], key_path: str, bad: Callable[[Any], bool]) -> str:
    """Return the path of the first scalar for which `bad` is true (error path only)."""

    def walk(value: Any, path: str) -> str | None:
        if isinstance(value, list):
            for j, v in enumerate(value):
                found = walk(v, f"{path}[{j}]")
                if found is not None:
                    return found
            return None
        return path if bad(value) else None

    for i, v in enumerate(values):
        found = walk(v, f"instances[{i}]{key_path}")
        if found is not None:
            return found
    return f"instances[*]{key_path}" if key_path else "instances"


def _any_leaf(value: Any, bad: Callable[[Any], bool]) -> bool:
    if isinstance(value, list):
        return any(_any_leaf(v, bad) for v in value)
    return bad(value)


def _not_number(v: Any) -> bool:
    return isinstance(v, bool) or not isinstance(v, (int, float))


def _not_int(v: Any) -> bool:
    return isinstance(v, bool) or not isinstance(v, int)


MaybeBools = bool | Callable[[], bool]


# Up to this many numbers, a float input of one dimension per instance is checked by Python before one
# np.array call: for a small model's request (iris: 4 numbers) numpy's checks on whole arrays
# (asarray, errstate, astype, isfinite) cost several times more than looking at each number.
FEW_NUMBERS = 256
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_FLOAT_MAX = {np.dtype(t): float(np.finfo(t).max) for t in (np.float16, np.float32, np.float64)}


def _few_numbers(values: list[Any], spec: TensorSpec, target: np.dtype, limits: Limits) -> np.ndarray | None:
    """`values` as an array of `target` when they are rows of the declared width holding only finite int and
    float numbers (no bool) that `target` holds, and at most FEW_NUMBERS of them; else None, and the general
    path converts them or says what is wrong."""
    limit = _FLOAT_MAX.get(target)
    first = values[0]
    if limit is None or len(spec.shape) != 1 or type(first) is not list:
        return None
    width = spec.shape[0] if spec.shape[0] != -1 else len(first)
    if len(values) * width > min(FEW_NUMBERS, limits.max_elements):
        return None
    for row in values:
        if type(row) is not list or len(row) != width:
            return None
        for v in row:
            t = type(v)
            if t is float:
                if not -limit <= v <= limit:  # NaN fails the comparison too
                    return None
            elif t is not int or not (-limit <= v <= limit and _INT64_MIN <= v <= _INT64_MAX):
                return None  # numpy makes objects of an int beyond 64 bits: the general path decides
    return np.array(values, dtype=target)


def _convert(values: list[Any], spec: TensorSpec, limits: Limits, key_path: str, maybe_bools: MaybeBools) -> np.ndarray:
    target = np.dtype(DATATYPES[spec.datatype])
    few = _few_numbers(values, spec, target, limits)
    if few is not None:
        return few
    where = f"instances[*]{key_path}" if key_path else "instances"
    try:
        arr = np.asarray(values)
    except (ValueError, OverflowError):
        raise InputError(
            f"instances do not have the same shape: each must be {list(spec.shape)} (-1: any length)",
            path=_first_bad_instance(values, spec, key_path),
            code="invalid_shape",
        ) from None
    if arr.size > limits.max_elements:
        raise InputError(
            f"{spec.name!r} has {arr.size} elements, over the limit of {limits.max_elements} per tensor",
            path=where,
            code="too_many_elements",
        )
    if not _shape_matches(arr.shape[1:], spec.shape):
        raise InputError(
            f"{spec.name!r} must have shape {list(spec.shape)} per instance (-1: any length), got {list(arr.shape[1:])}",
            path=_first_bad_instance(values, spec, key_path) if arr.dtype == object else where,
            code="invalid_shape",
        )
    kind = arr.dtype.kind
    if target.kind in _INT_KINDS and kind in "fO" and not _any_leaf(values, _not_int):
        # only integers, some beyond 64 bits (numpy made floats or objects of them)
        info = np.iinfo(target)
        if _any_leaf(values, lambda v: not info.min <= v <= info.max):
            raise InputError(
                f"{spec.name!r} has values outside the {spec.datatype} range [{info.min}, {info.max}]",
                path=_locate(values, key_path, lambda v: not info.min <= v <= info.max),
                code="out_of_range",
            )
        return np.array(values, dtype=target)
    if spec.datatype == "BYTES":
        if kind not in "UO" or not all(isinstance(v, str) for v in np.asarray(values, dtype=object).reshape(-1)):
            raise InputError(
                f"{spec.name!r} must hold strings",
                path=_locate(values, key_path, lambda v: not isinstance(v, str)),
                code="invalid_datatype",
            )
        return arr.astype(object)
    if kind in "UOS":
        bad_int = target.kind in _INT_KINDS
        info = np.iinfo(target) if bad_int else None
        raise InputError(
            f"{spec.name!r} must hold numbers ({spec.datatype}); found a string, a null, or a number too large "
            "to represent",
            path=_locate(
                values,
                key_path,
                lambda v: _not_number(v) or (info is not None and isinstance(v, int) and not info.min <= v <= info.max),
            ),
            code="invalid_datatype",
        )
    if spec.datatype == "BOOL":
        if kind != "b":
            raise InputError(
                f"{spec.name!r} must hold true/false values",
                path=_locate(values, key_path, lambda v: not isinstance(v, bool)),
                code="invalid_datatype",
            )
        return arr
    if kind == "b" or ((maybe_bools() if callable(maybe_bools) else maybe_bools) and _has_bool(values)):
        raise InputError(
            f"{spec.name!r} must hold numbers ({spec.datatype}), not true/false",
            path=_locate(values, key_path, lambda v: isinstance(v, bool)),
            code="invalid_datatype",
        )
    if target.kind in _INT_KINDS:
        if kind == "f":
            raise InputError(
                f"{spec.name!r} must hold integers ({spec.datatype})",
                path=_locate(values, key_path, _not_int),
                code="invalid_datatype",
            )
        info = np.iinfo(target)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise InputError(
                f"{spec.name!r} has values outside the {spec.datatype} range [{info.min}, {info.max}]",
                path=_locate(values, key_path, lambda v: not info.min <= v <= info.max),
                code="out_of_range",
            )
        return arr.astype(target, copy=False)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow to inf is caught just below
        out = arr.astype(target, copy=False)
    if not limits.allow_nonfinite and out.size and not np.isfinite(out).all():
        limit = float(np.finfo(target).max)
        raise InputError(
            f"{spec.name!r} holds a value that is NaN, infinite, or too large for {spec.datatype}",
            path=_locate(values, key_path, lambda v: not (-limit <= v <= limit)),
            code="non_finite",
        )
    return out


def decode_instances(
    instances: Any,
    inputs: Sequence[TensorSpec],
    *,
    limits: Limits,
    raw_inputs: set[str] = frozenset(),
    maybe_bools: MaybeBools = True,
) -> dict[str, np.ndarray]:
    """Return {input name: array with the instances stacked on axis 0}, or raise InputError.

    `raw_inputs` are inputs that a decoding step (e.g. image) turns into tensors: their
    values are passed through as an object array, one value per instance.
    `maybe_bools=False` (or a callable answering False, asked only when numbers are converted) skips
    the scan for true/false among numbers (the caller knows the
    body has no such token).
    """
    if not isinstance(instances, list) or not instances:
        raise InputError("instances must be a non-empty list", path="instances")
    if len(instances) > limits.max_instances:
        raise InputError(
            f"{len(instances)} instances is over the limit of {limits.max_instances} per request",
            path="instances",
            code="too_many_instances",
        )
    names = [s.name for s in inputs]
    columns: dict[str, list[Any]]
    if len(inputs) == 1 and not isinstance(instances[0], Mapping):
        columns = {names[0]: instances}
        key_paths = {names[0]: ""}
    else:
        columns = {n: [] for n in names}
        for i, inst in enumerate(instances):
            if not isinstance(inst, Mapping):
                raise InputError(
                    f"this model has inputs {names}: each instance must be an object with those keys",
                    path=f"instances[{i}]",
                )
            if inst.keys() != columns.keys():
                missing = sorted(set(names) - set(inst))
                extra = sorted(set(inst) - set(names))
                raise InputError(
                    f"instance keys must be exactly {names}" + (f"; missing {missing}" if missing else "")
                    + (f"; unknown {extra}" if extra else ""),
                    path=f"instances[{i}]",
                )
            for n in names:
                columns[n].append(inst[n])
        key_paths = {n: f".{n}" for n in names}
    arrays: dict[str, np.ndarray] = {}
    for spec in inputs:
        values = columns[spec.name]
        if spec.name in raw_inputs:
            arr = np.empty(len(values), dtype=object)
            arr[:] = values
            arrays[spec.name] = arr
        else:
            arrays[spec.name] = _convert(values, spec, limits, key_paths[spec.name], maybe_bools)
    check_request_elements(arrays, limits)
    return arrays


def check_model_inputs(arrays: Mapping[str, np.ndarray], inputs: Sequence[TensorSpec]) -> None:
    """Raise InputError unless the preprocessed arrays match the declared input tensors."""
    for spec in inputs:
        arr = arrays.get(spec.name)
        if arr is None:
            raise InputError(f"preprocessing produced no {spec.name!r} tensor", path=spec.name)
        if arr.dtype == object and arr.ndim == 1 and all(isinstance(i, np.ndarray) for i in arr):
            raise InputError(
                f"after preprocessing, {spec.name!r} holds images of different sizes "
                f"({', '.join('x'.join(map(str, i.shape)) for i in arr[:4])}), the model takes {list(spec.shape)}: "
                "send one image per request, or end the preprocess with a step that gives them one size "
                "(center_crop, or resize to [height, width])",
                path=spec.name,
                code="invalid_shape",
            )
        if not _shape_matches(arr.shape[1:], spec.shape):
            raise InputError(
                f"after preprocessing, {spec.name!r} has shape {list(arr.shape[1:])}, "
                f"the model takes {list(spec.shape)}",
                path=spec.name,
                code="invalid_shape",
            )


def check_input_arrays(
    arrays: Mapping[str, np.ndarray], inputs: Sequence[TensorSpec], *, limits: Limits, raw_inputs: set[str] = frozenset()
) -> int:
    """Check decoded input tensors (batch dimension first) against the schema; return the batch size.

    Inputs that a decoding step turns into tensors (`raw_inputs`) must be BYTES, one
    element per instance.
    """
    names = [s.name for s in inputs]
    if set(arrays) != set(names):
        missing, extra = sorted(set(names) - set(arrays)), sorted(set(arrays) - set(names))
        raise InputError(
            f"the model takes inputs {names}" + (f"; missing {missing}" if missing else "")
            + (f"; unknown {extra}" if extra else ""),
            path="inputs",
        )
    n = None
    for spec in inputs:
        arr = arrays[spec.name]
        if arr.ndim == 0:
            raise InputError(f"{spec.name!r} needs a batch dimension first", path=spec.name, code="invalid_shape")
        if n is None:
            n = arr.shape[0]
        elif arr.shape[0] != n:
            raise InputError(f"all inputs must have the same batch size; {spec.name!r} has {arr.shape[0]}, not {n}",
                             path=spec.name, code="invalid_shape")
        if arr.size > limits.max_elements:
            raise InputError(f"{spec.name!r} has {arr.size} elements, over the limit of {limits.max_elements}",
                             path=spec.name, code="too_many_elements")
        if spec.name in raw_inputs:
            if arr.dtype != object or arr.size != n:
                raise InputError(f"{spec.name!r} takes one encoded value (BYTES) per instance", path=spec.name,
                                 code="invalid_datatype")
            continue
        if arr.dtype != np.dtype(DATATYPES[spec.datatype]):
            raise InputError(f"{spec.name!r} must be {spec.datatype}", path=spec.name, code="invalid_datatype")
        if not _shape_matches(arr.shape[1:], spec.shape):
            raise InputError(
                f"{spec.name!r} must have shape [batch, {', '.join(map(str, spec.shape))}] (-1: any length), "
                f"got {list(arr.shape)}",
                path=spec.name, code="invalid_shape",
            )
        if arr.dtype.kind == "f" and not limits.allow_nonfinite and arr.size and not np.isfinite(arr).all():
            raise InputError(f"{spec.name!r} holds NaN or infinite values", path=spec.name, code="non_finite")
    check_request_elements(arrays, limits)
    if not n:
        raise InputError("the batch is empty", path="inputs", code="invalid_shape")
    if n > limits.max_instances:
        raise InputError(f"a batch of {n} is over the limit of {limits.max_instances}", path="inputs",
                         code="too_many_instances")
    return n
