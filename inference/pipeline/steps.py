"""Built-in pipeline steps (see base.py for the contract).

Pre: ``normalize``, ``reshape``, ``cast``, and the image steps (images.py): ``image``
(decoding), ``resize`` and ``center_crop``. Post: ``softmax``, ``argmax``, ``topk``,
``labels``, ``round``. All work on whole numpy arrays (the batch dimension first), never
per element in Python.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from registry.schemas import DATATYPES

from .base import Arrays, Step, StepConfigError, StepContext, StepInputError
from .images import IMAGE_STEPS, ImageDecode, as_batch

__all__ = ["ImageDecode"]  # it lived here before images.py: the old import path keeps working


def _numbers(value: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise StepConfigError(f"{what} must be a number or a list of numbers") from exc
    if arr.ndim > 1 or not np.all(np.isfinite(arr)):
        raise StepConfigError(f"{what} must be a finite number or a flat list of them")
    return arr


# Mean and std per RGB channel of ImageNet's training images, on pixels / 255: what torchvision's
# classification weights were trained with (their transforms' Normalize).
PRESETS = {"imagenet": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])}


class Normalize(Step):
    """x -> (x - mean) / std, per feature along `axis` of each instance (default: the last).

    ``preset: "imagenet"`` stands for ImageNet's mean and std per channel, along axis 0 (the
    channels of a CHW image) unless `axis` says otherwise.
    """

    name = "normalize"

    def __init__(self, mean: Any = None, std: Any = None, input: str | None = None, axis: int | None = None,
                 preset: str | None = None):
        if preset is not None:
            if preset not in PRESETS:
                raise StepConfigError(f"preset must be one of {', '.join(PRESETS)}, not {preset!r}")
            if mean is not None or std is not None:
                raise StepConfigError(f"preset {preset!r} sets mean and std: give either the preset or both of them")
            mean, std = PRESETS[preset]
            axis = 0 if axis is None else axis
        elif mean is None or std is None:
            raise StepConfigError('normalize needs mean and std (or a preset, such as "imagenet")')
        self.mean = _numbers(mean, "mean")
        self.std = _numbers(std, "std")
        if np.any(self.std == 0):
            raise StepConfigError("std must not contain zeros")
        if self.mean.size > 1 and self.std.size > 1 and self.mean.size != self.std.size:
            raise StepConfigError("mean and std must have the same length")
        self.input = input
        if isinstance(axis, bool) or not isinstance(axis, (int, type(None))):
            raise StepConfigError("axis must be an integer")
        self.axis = -1 if axis is None else axis

    def _normalize(self, x: np.ndarray, key: str) -> np.ndarray:
        """(x - mean) / std for a batch x (the batch dimension first)."""
        x = x.astype(np.float32, copy=False)
        mean, std = self.mean, self.std
        if max(mean.size, std.size) > 1:
            axis = self.axis if self.axis < 0 else self.axis + 1  # skip the batch dimension
            if not -x.ndim < axis < x.ndim or x.shape[axis] != max(mean.size, std.size):
                raise StepInputError(
                    f"normalize expects {max(mean.size, std.size)} values along axis {self.axis} of "
                    f"{key!r}, got shape {list(x.shape[1:])}",
                    path=key,
                )
            shape = [1] * x.ndim
            shape[axis] = -1
            mean, std = mean.reshape(shape), std.reshape(shape)
        return (x - mean) / std

    def __call__(self, data: Arrays, ctx: StepContext) -> Arrays:
        key = self.pick(data, self.input, kind="input")
        x = data[key]
        out = dict(data)
        if x.dtype == object and all(isinstance(i, np.ndarray) for i in x):  # images of different sizes (images.py)
            out[key] = as_batch([self._normalize(i[None], key)[0] for i in x])
        else:
            out[key] = self._normalize(x, key)
        return out


class Reshape(Step):
    """Reshape each instance to `shape` (the batch dimension is kept)."""

    name = "reshape"

    def __init__(self, shape: list[int], input: str | None = None):
        if not isinstance(shape, list) or not all(isinstance(d, int) and (d == -1 or d > 0) for d in shape):
            raise StepConfigError("shape must be a list of positive integers (at most one -1)")
        if shape.count(-1) > 1:
            raise StepConfigError("shape may contain at most one -1")
        self.shape = shape
        self.input = input

    def __call__(self, data: Arrays, ctx: StepContext) -> Arrays:
        key = self.pick(data, self.input, kind="input")
        x = data[key]
        try:
            reshaped = x.reshape((x.shape[0], *self.shape))
        except ValueError as exc:
            raise StepInputError(
                f"cannot reshape {key!r} of shape {list(x.shape[1:])} to {self.shape}", path=key
            ) from exc
        out = dict(data)
        out[key] = reshaped
        return out


class Cast(Step):
    """Cast one tensor to an Open Inference Protocol datatype (e.g. FP32, INT64)."""

    name = "cast"

    def __init__(self, datatype: str, input: str | None = None):
        if datatype not in DATATYPES or datatype == "BYTES":
            raise StepConfigError(f"datatype must be one of {', '.join(d for d in DATATYPES if d != 'BYTES')}")
        self.dtype = np.dtype(DATATYPES[datatype])
        self.input = input

    def __call__(self, data: Arrays, ctx: StepContext) -> Arrays:
        key = self.pick(data, self.input, kind="input")
        out = dict(data)
        out[key] = data[key].astype(self.dtype)
        return out


class Softmax(Step):
    """Turn logits into probabilities along `axis` (default: the last)."""

    name = "softmax"

    def __init__(self, output: str | None = None, axis: int = -1):
        self.output = output
        self.axis = int(axis)

    def __call__(self, data: Arrays, ctx: StepContext) -> Arrays:
        key = self.pick(data, self.output, kind="output")
        x = data[key].astype(np.float32, copy=False)
        x = x - x.max(axis=self.axis, keepdims=True)
        e = np.exp(x)
        out = dict(data)
        out[key] = e / e.sum(axis=self.axis, keepdims=True)
        return out


class Argmax(Step):
    """Replace scores by the index of the highest one along `axis`."""

    name = "argmax"

    def __init__(self, output: str | None = None, axis: int = -1):
        self.output = output
        self.axis = int(axis)

    def __call__(self, data: Arrays, ctx: StepContext) -> Arrays:
        key = self.pick(data, self.output, kind="output")
        out = dict(data)
        out[key] = data[key].argmax(axis=self.axis)
        return out


def _top_k(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise ValueError("top_k must be an integer from 1 to 1000")
    return value


class TopK(Step):
    """Keep the k best classes per instance: [{"index": i, "score": s}, ...], best first.

    A request may ask for another k with ``{"parameters": {"top_k": n}}``.
    """

    name = "topk"
    structures = True
    request_parameters = {"top_k": _top_k}

    def __init__(self, k: int = 5, output: str | None = None):
        try:
            self.k = _top_k(k)
        except ValueError as exc:
            raise StepConfigError(str(exc).replace("top_k", "k")) from exc
        self.output = output

    def __call__(self, data: Arrays, ctx: StepContext) -> list[Any]:
        key = self.pick(data, self.output, kind="output")
        scores = data[key].reshape(len(data[key]), -1)
        k = min(ctx.parameters.get("top_k", self.k), scores.shape[1])
        idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(scores, idx, axis=1)
        return [
            [{"index": i, "score": s} for i, s in zip(ri, rs)]
            for ri, rs in zip(idx.tolist(), top.tolist())
        ]


class Labels(Step):
    """Name classes: indices -> labels; top-k lists gain "label"; scores -> best {"label", "score"}."""

    name = "labels"
    structures = True

    def __init__(self, labels: list[str], output: str | None = None):
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise StepConfigError("labels must be a non-empty list of strings")
        self.labels = labels
        self.output = output

    def _label(self, index: int) -> str:
        return self.labels[index] if 0 <= index < len(self.labels) else str(index)

    def __call__(self, data: Any, ctx: StepContext) -> Any:
        if isinstance(data, list):  # after topk
            return [
                [{**item, "label": self._label(item["index"])} for item in row] if isinstance(row, list) else row
                for row in data
            ]
        key = self.pick(data, self.output, kind="output")
        values = data[key]
        if values.dtype.kind in "iu":
            return [self._label(i) for i in values.reshape(-1).tolist()]
        scores = values.reshape(len(values), -1)
        return [
            {"label": self._label(i), "score": s}
            for i, s in zip(scores.argmax(axis=1).tolist(), scores.max(axis=1).tolist())
        ]


class Round(Step):
    """Round floating outputs to `decimals` places (smaller responses, stable tests)."""

    name = "round"

    def __init__(self, decimals: int = 4, output: str | None = None):
        if isinstance(decimals, bool) or not isinstance(decimals, int) or not 0 <= decimals <= 12:
            raise StepConfigError("decimals must be an integer from 0 to 12")
        self.decimals = decimals
        self.output = output

    def __call__(self, data: Any, ctx: StepContext) -> Any:
        if isinstance(data, list):
            return _round_json(data, self.decimals)
        key = self.pick(data, self.output, kind="output")
        out = dict(data)
        if data[key].dtype.kind == "f":
            out[key] = np.round(data[key], self.decimals)
        return out


def _round_json(value: Any, decimals: int) -> Any:
    if isinstance(value, float):
        return round(value, decimals)
    if isinstance(value, list):
        return [_round_json(v, decimals) for v in value]
    if isinstance(value, dict):
        return {k: _round_json(v, decimals) for k, v in value.items()}
    return value


BUILTIN_STEPS: list[type[Step]] = [Normalize, Reshape, Cast, *IMAGE_STEPS, Softmax, Argmax, TopK, Labels, Round]
