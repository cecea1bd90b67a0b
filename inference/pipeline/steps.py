"""Built-in pipeline steps (see base.py for the contract).

Pre: ``normalize``, ``reshape``, ``cast``, ``image``. Post: ``softmax``, ``argmax``,
``topk``, ``labels``, ``round``. All work on whole numpy arrays (the batch dimension
first), never per element in Python.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
from typing import Any

import numpy as np
from django.conf import settings

from registry.schemas import DATATYPES

from .base import Arrays, Step, StepConfigError, StepContext, StepInputError


def _numbers(value: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise StepConfigError(f"{what} must be a number or a list of numbers") from exc
    if arr.ndim > 1 or not np.all(np.isfinite(arr)):
        raise StepConfigError(f"{what} must be a finite number or a flat list of them")
    return arr


class Normalize(Step):
    """x -> (x - mean) / std, per feature along `axis` of each instance (default: the last)."""

    name = "normalize"

    def __init__(self, mean: Any, std: Any, input: str | None = None, axis: int = -1):
        self.mean = _numbers(mean, "mean")
        self.std = _numbers(std, "std")
        if np.any(self.std == 0):
            raise StepConfigError("std must not contain zeros")
        if self.mean.size > 1 and self.std.size > 1 and self.mean.size != self.std.size:
            raise StepConfigError("mean and std must have the same length")
        self.input = input
        self.axis = int(axis)

    def __call__(self, data: Arrays, ctx: StepContext) -> Arrays:
        key = self.pick(data, self.input, kind="input")
        x = data[key].astype(np.float32, copy=False)
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
        out = dict(data)
        out[key] = (x - mean) / std
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


# Bytes of an encoded image read to find its dimensions before anything is decoded: a PNG's are
# at a fixed place (its IHDR chunk), a JPEG's frame header comes after its EXIF and tables, usually
# well within HEADER_PREFIX_BYTES; a longer header is read whole.
PNG_HEADER_BYTES = 24
HEADER_PREFIX_BYTES = 4096
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG from its first 24 bytes (signature, then the IHDR chunk); None for
    anything else. What the bytes claim is only the budget's measure: decoding checks the rest."""
    if len(head) < PNG_HEADER_BYTES or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


class ImageDecode(Step):
    """Decode base64 PNG/JPEG (or raw v2 BYTES) into the declared image tensor.

    Each instance's value is an encoded image. It is opened with Pillow, refused when
    its pixel count exceeds `max_pixels` (a decompression-bomb guard checked before any
    pixel is decoded), converted to `mode` ("L" grey, "RGB"), resized to `size` [H, W],
    optionally inverted, divided by `scale`, and laid out as CHW (default) or HWC.
    """

    name = "image"
    decodes_input = True

    def __init__(
        self,
        size: list[int],
        mode: str = "RGB",
        input: str | None = None,
        scale: float = 255.0,
        invert: bool = False,
        layout: str = "CHW",
        max_pixels: int | None = None,
    ):
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(d, int) and 1 <= d <= 8192 for d in size)):
            raise StepConfigError("size must be [height, width] in pixels")
        if mode not in ("L", "RGB", "RGBA"):
            raise StepConfigError('mode must be "L", "RGB" or "RGBA"')
        if layout not in ("CHW", "HWC"):
            raise StepConfigError('layout must be "CHW" or "HWC"')
        if not isinstance(scale, (int, float)) or scale <= 0:
            raise StepConfigError("scale must be a positive number")
        self.size = size
        self.mode = mode
        self.input = input
        self.scale = float(scale)
        self.invert = bool(invert)
        self.layout = layout
        self.max_pixels = int(max_pixels or getattr(settings, "INFERENCE_IMAGE_MAX_PIXELS", 4096 * 4096))

    @staticmethod
    def _raw(value: Any, path: str, prefix: int | None = None) -> bytes:
        """The encoded image's bytes (with `prefix`: about its first `prefix` bytes only, which hold
        a PNG's header and most JPEGs' dimensions)."""
        if isinstance(value, str):
            if prefix is not None:
                value = value[: (prefix // 3) * 4]
            try:
                return base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise StepInputError("not valid base64", path=path) from exc
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value[:prefix] if prefix is not None else value)
        raise StepInputError("an image must be a base64 string", path=path)

    def _size(self, raw: bytes, path: str, *, cut: bool = False) -> tuple[int, int] | None:
        """(width, height) from the image's header; None when `raw`, `cut` short, ends before its header does."""
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(raw)) as img:
                if img.format not in ("PNG", "JPEG", "MPO"):
                    raise StepInputError(f"unsupported image format {img.format}; send PNG or JPEG", path=path)
                return img.size
        except StepInputError:
            raise
        except Image.DecompressionBombError as exc:
            raise StepInputError(
                f"image is over the limit of {self.max_pixels} pixels ({exc})", path=path, code="image_too_large"
            ) from exc
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            if cut:
                return None
            raise StepInputError(f"cannot decode the image: {exc}", path=path) from exc

    def _pixels(self, value: Any, path: str) -> int:
        """The image's pixel count, read from its header alone (no pixel decoded, most of a base64
        string not even decoded); refused past max_pixels."""
        size = _png_size(self._raw(value, path, prefix=PNG_HEADER_BYTES))  # a PNG: its IHDR, 24 bytes in
        if size is None:
            head = self._raw(value, path, prefix=HEADER_PREFIX_BYTES)
            size = self._size(head, path, cut=len(head) < len(value) * (3 / 4 if isinstance(value, str) else 1) - 3)
        if size is None:  # a header longer than the prefix (a JPEG with a large EXIF block)
            size = self._size(self._raw(value, path), path)
        w, h = size
        if w * h > self.max_pixels:
            raise StepInputError(
                f"image of {w}x{h} pixels is over the limit of {self.max_pixels} pixels",
                path=path,
                code="image_too_large",
            )
        return w * h

    def _decode(self, raw: bytes, path: str) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(raw)) as img:
                if img.mode.startswith("I;16"):
                    img = Image.fromarray((np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8), "L")
                img = img.convert(self.mode)
                if img.size != (self.size[1], self.size[0]):
                    img = img.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
                arr = np.asarray(img, dtype=np.float32)
        except Image.DecompressionBombError as exc:
            raise StepInputError(
                f"image is over the limit of {self.max_pixels} pixels ({exc})", path=path, code="image_too_large"
            ) from exc
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise StepInputError(f"cannot decode the image: {exc}", path=path) from exc
        if self.invert:
            arr = 255.0 - arr
        arr = arr / self.scale
        if arr.ndim == 2:
            arr = arr[:, :, None]
        return np.ascontiguousarray(arr.transpose(2, 0, 1)) if self.layout == "CHW" else arr

    def __call__(self, data: Arrays, ctx: StepContext) -> Arrays:
        """Decode every image of the request, after checking from their headers alone that each is
        within max_pixels and all of them together within INFERENCE_MAX_REQUEST_PIXELS (413)."""
        key = self.pick(data, self.input, kind="input")
        values = data[key].reshape(len(data[key]), -1)
        suffix = "" if len(ctx.inputs) == 1 else f".{key}"
        total = 0
        for i, row in enumerate(values):
            if row.size != 1:
                raise StepInputError("each instance must hold exactly one image", path=f"instances[{i}]{suffix}")
            total += self._pixels(row[0], f"instances[{i}]{suffix}")
        budget = settings.INFERENCE_MAX_REQUEST_PIXELS
        if total > budget:
            raise StepInputError(
                f"the request's {len(values)} images hold {total} pixels together, over the limit of {budget} "
                "pixels per request (INFERENCE_MAX_REQUEST_PIXELS); send fewer or smaller images per request",
                path=f"instances{suffix}", code="payload_too_large", status=413,
            )
        images = [self._decode(self._raw(row[0], path), path)
                  for i, row in enumerate(values) for path in [f"instances[{i}]{suffix}"]]
        out = dict(data)
        out[key] = np.stack(images) if images else np.zeros((0,), np.float32)
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


BUILTIN_STEPS: list[type[Step]] = [Normalize, Reshape, Cast, ImageDecode, Softmax, Argmax, TopK, Labels, Round]
