"""Artifacts: from bytes on storage to an ``nn.Module``, safely.

Formats, safest first (DESIGN.md, "Domain model"):

* ``safetensors`` + an allowlisted architecture: a flat table of tensors; loading runs no
  code from the file.
* ``state_dict`` + an allowlisted architecture: ``torch.load(weights_only=True)``, which
  only rebuilds tensors and plain containers and refuses any other pickled object.
* ``torchscript`` and ``torch_export``: programs. Loading them executes code from the
  file, so they load only while ``INFERENCE_ALLOW_CODE_ARTIFACTS`` is on.
* ``onnx``: a graph of standard operators (registry.onnx_artifacts); no code from the file
  runs, custom operator domains and external data are refused. The ONNX runtime loads it.

Whole-model pickles (``torch.save(model)``) are refused in every format. The sha256 of the
bytes is checked before any of them are interpreted.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
from collections.abc import Iterable, Mapping
from typing import IO, Any

from django.conf import settings
from django.utils.module_loading import import_string

from .schemas import CODE_FORMATS, FORMATS, TORCH_FORMATS

CHUNK = 1024 * 1024


class ArtifactError(Exception):
    """The artifact cannot be turned into a model; the message says why and what to do."""


def sha256_of(chunks: Iterable[bytes]) -> str:
    """Return the hex sha256 of a stream of byte chunks."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def read_fileobj(fileobj: IO[bytes], *, max_bytes: int | None = None) -> bytes:
    """Return the whole content of a binary file object, refusing more than max_bytes."""
    fileobj.seek(0)
    data = fileobj.read() if max_bytes is None else fileobj.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:
        raise ArtifactError(
            f"The artifact is larger than INFERENCE_MAX_ARTIFACT_BYTES ({max_bytes} bytes)."
        )
    return data


def sniff(data: bytes) -> str:
    """Return what the bytes look like: 'zip', 'pickle', 'safetensors', 'onnx' or 'unknown'."""
    if data[:4] == b"PK\x03\x04":
        return "zip"  # torch.save (new format), TorchScript and .pt2 are zip archives
    if len(data) >= 9:
        # Checked before pickle: a header length such as 0x0180 starts with the byte 0x80 too.
        (header_len,) = struct.unpack("<Q", data[:8])
        if 2 <= header_len <= len(data) - 8 and data[8:9] == b"{":
            return "safetensors"
    if data[:1] == b"\x80" and len(data) > 1 and data[1] <= 5:
        return "pickle"
    if data[:1] == b"\x08":
        return "onnx"  # a protobuf ModelProto: field 1 (ir_version, a varint) comes first
    return "unknown"


# What the first bytes of each format's file look like (sniff()).
CONTAINERS = {"safetensors": ("safetensors",), "state_dict": ("zip", "pickle"), "torchscript": ("zip",),
              "torch_export": ("zip",), "onnx": ("onnx",)}


def check_container(data: bytes, format: str) -> None:
    """Raise ArtifactError unless the bytes look like a file of `format` (no loading: the first bytes)."""
    kind = sniff(data)
    if kind not in CONTAINERS.get(format, ()):
        raise ArtifactError(
            f"The artifact is not a {format} file (its first bytes look like {kind} data): a damaged or "
            "truncated file, or the wrong format in the config."
        )


def architecture_class(path: str) -> type:
    """Return the nn.Module class at a dotted path, if the allowlist holds it."""
    allowed = list(getattr(settings, "INFERENCE_ARCHITECTURES", []))
    if path not in allowed:
        raise ArtifactError(
            f"Architecture {path!r} is not in the allowlist (INFERENCE_ARCHITECTURES): "
            f"use one of {', '.join(allowed)} or ask an operator to add the class."
        )
    try:
        return import_string(path)
    except ImportError as exc:
        raise ArtifactError(f"Architecture {path!r} is allowlisted but cannot be imported: {exc}") from exc


class TooManyParameters(ArtifactError):
    """The architecture, built with these arguments, would hold more than INFERENCE_MAX_PARAMETERS."""


def parameter_count(path: str, args: Mapping[str, Any], *, build: bool = True) -> int | None:
    """How many parameters (and buffers) architecture `path` built with `args` holds, found
    without allocating them: the class's own ``parameter_count(**args)`` when it defines one,
    else (with `build`) the module built on the ``meta`` device (shapes, no storage). None
    when it cannot be counted so, or the arguments do not build it (building it for real
    then says why). `build=False` runs none of the class's ``__init__``: what a process that
    must not run it (the one registering a version) uses."""
    cls = architecture_class(path)
    counter = vars(cls).get("parameter_count")  # the class's own: a subclass may add layers
    if not callable(counter) and not build:
        return None
    try:
        if callable(counter):
            return int(counter(**dict(args)))
        import torch

        with torch.device("meta"):
            module = cls(**dict(args))
        return sum(t.numel() for t in [*module.parameters(), *module.buffers()])
    except Exception:  # noqa: BLE001 - bad arguments: the real build reports them
        return None


def check_parameter_count(path: str, args: Mapping[str, Any], *, build: bool = True) -> None:
    """Raise TooManyParameters when the architecture would hold more than INFERENCE_MAX_PARAMETERS."""
    limit = getattr(settings, "INFERENCE_MAX_PARAMETERS", 0)
    count = parameter_count(path, args, build=build) if limit else None
    if count is not None and count > limit:
        raise TooManyParameters(
            f"{path} with these architecture_args has {count:,} parameters, over the limit of {limit:,} "
            f"(INFERENCE_MAX_PARAMETERS; {count * 4 / 2**30:,.1f} GiB in FP32): check architecture_args, or ask "
            "an operator to raise the limit."
        )


def build_architecture(path: str, args: Mapping[str, Any]) -> Any:
    """Return a fresh instance of an allowlisted architecture (its size checked before it is built)."""
    cls = architecture_class(path)
    check_parameter_count(path, args)
    try:
        return cls(**dict(args))
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}(**architecture_args) failed: {exc}") from exc


def _load_tensors_safetensors(data: bytes) -> dict[str, Any]:
    kind = sniff(data)
    if kind != "safetensors":
        raise ArtifactError(
            f"Not a safetensors file (it looks like {kind} data). Save weights with "
            "safetensors.torch.save_file(model.state_dict(), path), or declare the right format."
        )
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    try:
        return st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ArtifactError(f"Corrupt or truncated safetensors file: {exc}") from exc


def _load_tensors_state_dict(data: bytes) -> dict[str, Any]:
    import torch

    if sniff(data) not in ("zip", "pickle"):
        raise ArtifactError("Not a torch.save file: save the weights with torch.save(model.state_dict(), path).")
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ArtifactError(
            "Refused: the file holds pickled Python objects other than tensors (for example a "
            "whole model saved with torch.save(model)); only weights are accepted. Save "
            f"model.state_dict() or use safetensors. ({first})"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        if "TorchScript" in str(exc):
            raise ArtifactError(
                "This is a TorchScript archive, not a state_dict: it holds code. Save "
                "model.state_dict() instead, or declare format 'torchscript' (code artifacts must be enabled)."
            ) from exc
        raise ArtifactError(f"Corrupt or truncated state_dict file: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]  # a training checkpoint that wraps the weights
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise ArtifactError("The state_dict file must hold a mapping of parameter names to tensors.")
    return dict(obj)


def _load_weights(module: Any, tensors: dict[str, Any], architecture: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ArtifactError(
            f"The weights do not match {architecture}: missing keys {missing[:10]}, unexpected keys "
            f"{unexpected[:10]}. Check architecture_args against the model that was trained."
        )
    wrong = [
        f"{k}: file {tuple(tensors[k].shape)} vs architecture {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(tensors[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise ArtifactError(f"The weights do not match {architecture}: shape mismatch {wrong[:5]}.")
    module.load_state_dict(tensors, strict=True)


def check_sha256(data: bytes, expected_sha256: str | None) -> None:
    """Raise ArtifactError unless the bytes hash to the sha256 the registry recorded (None: not checked)."""
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256:
            raise ArtifactError(
                f"sha256 mismatch: the stored artifact hashes to {actual}, the registry recorded "
                f"{expected_sha256}. The file was changed or damaged after registration; register it again."
            )


def load_module(
    data: bytes,
    *,
    format: str,
    architecture: str = "",
    architecture_args: Mapping[str, Any] | None = None,
    expected_sha256: str | None = None,
    allow_code: bool | None = None,
) -> Any:
    """Return the ``nn.Module`` (in eval mode, on the CPU) that an artifact's bytes hold.

    Raise ArtifactError with the reason when the bytes do not match the sha256, the
    format, or the architecture, or when a code format is not allowed.
    """
    import torch

    check_sha256(data, expected_sha256)
    if format not in FORMATS:
        raise ArtifactError(f"Unknown artifact format {format!r}; known: {', '.join(FORMATS)}.")
    if format not in TORCH_FORMATS:
        raise ArtifactError(f"Format {format!r} is not a PyTorch artifact: the runtime of its format loads it "
                            "(INFERENCE_RUNTIMES).")
    if allow_code is None:
        allow_code = settings.INFERENCE_ALLOW_CODE_ARTIFACTS
    if format in CODE_FORMATS:
        if not allow_code:
            raise ArtifactError(
                f"Format {format!r} executes code from the file when loaded and code artifacts are "
                "disabled. Export weights (safetensors) with an allowlisted architecture, or have an "
                "operator set INFERENCE_ALLOW_CODE_ARTIFACTS=true."
            )
        if sniff(data) != "zip":
            raise ArtifactError(f"Not a {format} archive (expected a zip file).")
        try:
            if format == "torchscript":
                module = torch.jit.load(io.BytesIO(data), map_location="cpu")
            else:
                module = torch.export.load(io.BytesIO(data)).module()
        except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad archive
            raise ArtifactError(f"Cannot load the {format} archive: {type(exc).__name__}: {exc}") from exc
    else:
        tensors = _load_tensors_safetensors(data) if format == "safetensors" else _load_tensors_state_dict(data)
        module = build_architecture(architecture, architecture_args or {})
        _load_weights(module, tensors, architecture)
    try:
        module.eval()
    except (AttributeError, NotImplementedError):
        pass  # exported programs are already in inference form and refuse eval()
    return module
