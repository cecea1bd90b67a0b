"""The image steps: ``image`` decodes PNG/JPEG; ``resize`` and ``center_crop`` shape the result.

The geometry steps do what torchvision's ``transforms.Resize`` and ``CenterCrop`` do, so that a version
serving a torchvision classifier declares torchvision's preprocessing as steps::

    {"step": "image", "mode": "RGB"}              decode; each image keeps its size; pixels / 255, CHW
    {"step": "resize", "size": 256}                the shorter side to 256, the aspect ratio kept
    {"step": "center_crop", "size": 224}           the central 224x224
    {"step": "normalize", "preset": "imagenet"}    ImageNet's mean and std, per channel

Images are CHW float arrays (the image step's default layout). The images of one request
may differ in size: between these steps they travel as a 1-D object array of CHW arrays (a
ragged batch), and a step that gives them all one size (center_crop, or resize to
[height, width]) stacks them into one (n, C, H, W) array again.

Resizing is bilinear (or bicubic) with antialiasing, as PIL resizes and torchvision with it;
it works on the decoded floats where torchvision resizes PIL's 8-bit pixels, so the two
differ by PIL's rounding to 8 bits after each of its two passes (at most a level, 1/255 of
the pixel scale) and by bicubic's overshoot, which PIL clips to 0..255 and this step keeps.
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
from typing import Any

import numpy as np
from django.conf import settings

from .base import Arrays, Step, StepConfigError, StepContext, StepInputError

MAX_SIDE = 8192


def _side(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_SIDE


def _size(value: Any, *, one_side: str) -> int | tuple[int, int]:
    """`value` as a side (int) or (height, width); StepConfigError otherwise."""
    if _side(value):
        return value
    if isinstance(value, list) and len(value) == 2 and all(_side(d) for d in value):
        return value[0], value[1]
    raise StepConfigError(f"size must be an integer ({one_side}) or [height, width], each from 1 to {MAX_SIDE} pixels")


def image_list(x: np.ndarray, key: str, step: str) -> list[np.ndarray]:
    """The images of a batch: the rows of an (n, C, H, W) array or the items of a ragged batch."""
    if x.dtype == object:
        items = list(x)
        if not all(isinstance(i, np.ndarray) and i.ndim == 3 and i.dtype.kind == "f" for i in items):
            raise StepConfigError(f"{step} works on decoded images: put it after the image step")
        return items
    if x.ndim != 4:
        raise StepInputError(
            f"{step} expects images of shape [channels, height, width], got {list(x.shape[1:])}", path=key
        )
    return list(x)


def as_batch(images: list[np.ndarray]) -> np.ndarray:
    """One (n, C, H, W) array when the images share a shape, else a ragged batch (1-D object array)."""
    if images and all(i.shape == images[0].shape for i in images):
        return np.stack(images)
    batch = np.empty(len(images), dtype=object)
    for i, image in enumerate(images):  # one by one: numpy would try to broadcast a list of arrays
        batch[i] = image
    return batch


def check_pixels(sizes: list[tuple[int, int]], key: str, step: str) -> None:
    """Refuse output images past INFERENCE_IMAGE_MAX_PIXELS each or INFERENCE_MAX_REQUEST_PIXELS
    together (413), before any is allocated: a resize can make a small image huge."""
    limit = getattr(settings, "INFERENCE_IMAGE_MAX_PIXELS", 4096 * 4096)
    for i, (h, w) in enumerate(sizes):
        if h * w > limit:
            raise StepInputError(f"{step} would make image {i} {w}x{h} pixels, over the limit of {limit} pixels",
                                 path=key, code="image_too_large", status=413)
    budget = settings.INFERENCE_MAX_REQUEST_PIXELS
    if sum(h * w for h, w in sizes) > budget:
        raise StepInputError(f"{step} would make the request's images over {budget} pixels together "
                             "(INFERENCE_MAX_REQUEST_PIXELS)", path=key, code="payload_too_large", status=413)


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

    Without `size`, each image keeps its own: the ``resize`` and ``center_crop`` steps
    (images.py) then give them the model's, as torchvision's transforms do; images of
    different sizes in one request travel to them as a ragged batch.
    """

    name = "image"
    decodes_input = True

    def __init__(
        self,
        size: list[int] | None = None,
        mode: str = "RGB",
        input: str | None = None,
        scale: float = 255.0,
        invert: bool = False,
        layout: str = "CHW",
        max_pixels: int | None = None,
    ):
        if size is not None and not (isinstance(size, list) and len(size) == 2
                                     and all(isinstance(d, int) and 1 <= d <= 8192 for d in size)):
            raise StepConfigError("size must be [height, width] in pixels (or left out: each image keeps its own)")
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
                if self.size is not None and img.size != (self.size[1], self.size[0]):
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
        out[key] = as_batch(images) if images else np.zeros((0,), np.float32)
        return out


class Resize(Step):
    """Resize each image: `size` an integer makes the shorter side that long and keeps the aspect
    ratio (the longer side truncated, as torchvision does; `max_size` caps it); `size`
    [height, width] makes every image that size. Bilinear or bicubic, antialiased."""

    name = "resize"
    MODES = ("bilinear", "bicubic")

    def __init__(self, size: Any, interpolation: str = "bilinear", max_size: int | None = None,
                 input: str | None = None):
        self.size = _size(size, one_side="the shorter side")
        if interpolation not in self.MODES:
            raise StepConfigError(f"interpolation must be one of {', '.join(self.MODES)}, not {interpolation!r}")
        if max_size is not None:
            if not isinstance(self.size, int):
                raise StepConfigError("max_size applies only when size is an integer (the shorter side)")
            if not _side(max_size) or max_size <= self.size:
                raise StepConfigError(f"max_size must be an integer above size ({self.size}), at most {MAX_SIDE}")
        self.interpolation = interpolation
        self.max_size = max_size
        self.input = input

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after resizing an image of this size (torchvision's _compute_resized_output_size)."""
        if not isinstance(self.size, int):
            return self.size
        short, long = sorted((height, width))
        new_short, new_long = self.size, int(self.size * long / short)
        if self.max_size is not None and new_long > self.max_size:
            new_short, new_long = int(self.max_size * new_short / new_long), self.max_size
        return (new_long, new_short) if width <= height else (new_short, new_long)

    def _resize(self, images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        import torch
        from torch.nn import functional

        with torch.inference_mode():
            out = functional.interpolate(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)), size=size,
                                         mode=self.interpolation, align_corners=False, antialias=True)
        return out.numpy()

    def __call__(self, data: Arrays, ctx: StepContext) -> Arrays:
        key = self.pick(data, self.input, kind="input")
        images = image_list(data[key], key, self.name)
        sizes = [self.output_size(*img.shape[1:]) for img in images]
        check_pixels(sizes, key, self.name)
        out = dict(data)
        if data[key].dtype != object and len(set(sizes)) == 1:  # one size in, one out: one call for the batch
            same = sizes[0] == data[key].shape[2:]
            out[key] = data[key] if same else self._resize(data[key], sizes[0])
            return out
        out[key] = as_batch([img if size == img.shape[1:] else self._resize(img[None], size)[0]
                             for img, size in zip(images, sizes)])
        return out


class CenterCrop(Step):
    """Cut the central `size` (an integer: a square; or [height, width]) out of each image, padding
    with zeros first where an image is smaller (torchvision's CenterCrop)."""

    name = "center_crop"

    def __init__(self, size: Any, input: str | None = None):
        size = _size(size, one_side="a square's side")
        self.size = (size, size) if isinstance(size, int) else size
        self.input = input

    def _crop(self, image: np.ndarray) -> np.ndarray:
        ch, cw = self.size
        _, h, w = image.shape
        if ch > h or cw > w:
            top, left = max(0, (ch - h) // 2), max(0, (cw - w) // 2)
            bottom, right = max(0, (ch - h + 1) // 2), max(0, (cw - w + 1) // 2)
            image = np.pad(image, ((0, 0), (top, bottom), (left, right)))
            _, h, w = image.shape
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        return image[:, top:top + ch, left:left + cw]

    def __call__(self, data: Arrays, ctx: StepContext) -> Arrays:
        key = self.pick(data, self.input, kind="input")
        images = image_list(data[key], key, self.name)
        check_pixels([self.size] * len(images), key, self.name)
        out = dict(data)
        out[key] = np.stack([self._crop(img) for img in images]) if images else data[key]
        return out


IMAGE_STEPS: list[type[Step]] = [ImageDecode, Resize, CenterCrop]
