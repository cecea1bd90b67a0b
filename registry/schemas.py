"""Tensor schemas and version configs: parsing and structural validation.

A version's config is the JSON that `register_model --config`, the admin form and the
registry API all take (DESIGN.md, "Operator commands")::

    {"format": "safetensors", "architecture": "registry.architectures.MLP",
     "architecture_args": {...}, "inputs": [...], "outputs": [...],
     "preprocess": [...], "postprocess": [...],
     "batching": {"max_batch_size": 32, "max_batch_delay_ms": 5, "max_queue_size": 256},
     "hardware": "cpu", "example": {...}}

Everything here is pure: no database, no torch. A bad config raises Django's
``ValidationError`` with a message that names the offending field.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from django.core.exceptions import ValidationError

# Open Inference Protocol datatypes -> numpy dtype names (BYTES: raw bytes/strings).
DATATYPES: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",
}

FORMATS = ("safetensors", "state_dict", "torchscript", "torch_export", "onnx")
CODE_FORMATS = ("torchscript", "torch_export")
TORCH_FORMATS = ("safetensors", "state_dict", "torchscript", "torch_export")  # registry.artifacts.load_module
WEIGHT_FORMATS = ("safetensors", "state_dict")

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,63}$")
MAX_RANK = 8
MAX_DIM = 2**31 - 1

CONFIG_KEYS = {
    "format",
    "architecture",
    "architecture_args",
    "inputs",
    "outputs",
    "preprocess",
    "postprocess",
    "batching",
    "hardware",
    "example",
    "description",
}
BATCHING_KEYS = {"max_batch_size", "max_batch_delay_ms", "max_queue_size"}


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a schema; `shape` excludes the implicit batch dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass
class Batching:
    max_batch_size: int = 32
    max_batch_delay_ms: float = 5.0
    max_queue_size: int = 256


@dataclass
class VersionConfig:
    """A parsed, structurally valid version config."""

    format: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    architecture: str = ""
    architecture_args: dict[str, Any] = field(default_factory=dict)
    preprocess: list[dict[str, Any]] = field(default_factory=list)
    postprocess: list[dict[str, Any]] = field(default_factory=list)
    batching: Batching = field(default_factory=Batching)
    hardware: str = "cpu"
    example: Any = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "architecture": self.architecture,
            "architecture_args": self.architecture_args,
            "inputs": [t.as_dict() for t in self.inputs],
            "outputs": [t.as_dict() for t in self.outputs],
            "preprocess": self.preprocess,
            "postprocess": self.postprocess,
            "batching": asdict(self.batching),
            "hardware": self.hardware,
            "example": self.example,
        }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_tensor_schema(value: Any, *, where: str) -> list[TensorSpec]:
    """Return the tensors of a schema list, or raise ValidationError naming the field."""
    if not isinstance(value, list) or not value:
        raise ValidationError(f"{where} must be a non-empty list of tensors.", code="invalid_schema")
    specs: list[TensorSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        path = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise ValidationError(f"{path} must be an object with name, datatype and shape.", code="invalid_schema")
        unknown = set(item) - {"name", "datatype", "shape"}
        if unknown:
            raise ValidationError(f"{path} has unknown keys: {sorted(unknown)}.", code="invalid_schema")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValidationError(
                f"{path}.name must be 1-64 characters of letters, digits, '_', '.', '-', starting with a letter or '_'.",
                code="invalid_schema",
            )
        if name in seen:
            raise ValidationError(f"{path}.name {name!r} is used twice.", code="invalid_schema")
        seen.add(name)
        datatype = item.get("datatype")
        if not isinstance(datatype, str) or datatype not in DATATYPES:
            raise ValidationError(
                f"{path}.datatype {datatype!r} is not one of {', '.join(DATATYPES)}.", code="invalid_schema"
            )
        shape = item.get("shape")
        if not isinstance(shape, list) or len(shape) > MAX_RANK:
            raise ValidationError(
                f"{path}.shape must be a list of at most {MAX_RANK} dimensions "
                "(the batch dimension is implicit).",
                code="invalid_schema",
            )
        for j, dim in enumerate(shape):
            if not _is_int(dim) or not (dim == -1 or 1 <= dim <= MAX_DIM):
                raise ValidationError(
                    f"{path}.shape[{j}] is {dim!r}: a dimension is a positive integer, or -1 for a variable one.",
                    code="invalid_schema",
                )
        specs.append(TensorSpec(name=name, datatype=datatype, shape=tuple(shape)))
    return specs


def _parse_steps(value: Any, *, where: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValidationError(f"{where} must be a list of steps.", code="invalid_pipeline")
    for i, step in enumerate(value):
        if not isinstance(step, dict) or not isinstance(step.get("step"), str):
            raise ValidationError(
                f'{where}[{i}] must be an object with a "step" name, e.g. {{"step": "softmax"}}.',
                code="invalid_pipeline",
            )
    return value


def _parse_batching(value: Any) -> Batching:
    if value is None:
        return Batching()
    if not isinstance(value, dict):
        raise ValidationError("batching must be an object.", code="invalid_batching")
    unknown = set(value) - BATCHING_KEYS
    if unknown:
        raise ValidationError(f"batching has unknown keys: {sorted(unknown)}.", code="invalid_batching")
    b = Batching()
    if "max_batch_size" in value:
        v = value["max_batch_size"]
        if not _is_int(v) or not 1 <= v <= 4096:
            raise ValidationError("batching.max_batch_size must be an integer from 1 to 4096.", code="invalid_batching")
        b.max_batch_size = v
    if "max_batch_delay_ms" in value:
        v = value["max_batch_delay_ms"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 10_000:
            raise ValidationError("batching.max_batch_delay_ms must be a number from 0 to 10000.", code="invalid_batching")
        b.max_batch_delay_ms = float(v)
    if "max_queue_size" in value:
        v = value["max_queue_size"]
        if not _is_int(v) or not 1 <= v <= 1_000_000:
            raise ValidationError("batching.max_queue_size must be an integer from 1 to 1000000.", code="invalid_batching")
        b.max_queue_size = v
    return b


def parse_version_config(raw: Any) -> VersionConfig:
    """Return the VersionConfig of a raw config dict, or raise ValidationError."""
    if not isinstance(raw, dict):
        raise ValidationError("The config must be a JSON object.", code="invalid_config")
    unknown = set(raw) - CONFIG_KEYS
    if unknown:
        raise ValidationError(
            f"The config has unknown keys: {sorted(unknown)}. Known keys: {sorted(CONFIG_KEYS)}.",
            code="invalid_config",
        )
    fmt = raw.get("format")
    if fmt not in FORMATS:
        raise ValidationError(f"format {fmt!r} is not one of {', '.join(FORMATS)}.", code="invalid_format")
    architecture = raw.get("architecture") or ""
    args = raw.get("architecture_args") or {}
    if fmt in WEIGHT_FORMATS:
        if not isinstance(architecture, str) or not architecture:
            raise ValidationError(
                f"format {fmt!r} holds weights only: the config must name an architecture "
                "(a dotted path from INFERENCE_ARCHITECTURES).",
                code="invalid_architecture",
            )
        if not isinstance(args, dict):
            raise ValidationError("architecture_args must be an object.", code="invalid_architecture")
    elif architecture:
        raise ValidationError(
            f"format {fmt!r} carries its own program: leave architecture out.", code="invalid_architecture"
        )
    hardware = raw.get("hardware", "cpu")
    if not isinstance(hardware, str) or not hardware:
        raise ValidationError("hardware must be the name of a hardware target.", code="invalid_hardware")
    return VersionConfig(
        format=fmt,
        architecture=architecture,
        architecture_args=args,
        inputs=parse_tensor_schema(raw.get("inputs"), where="inputs"),
        outputs=parse_tensor_schema(raw.get("outputs"), where="outputs"),
        preprocess=_parse_steps(raw.get("preprocess"), where="preprocess"),
        postprocess=_parse_steps(raw.get("postprocess"), where="postprocess"),
        batching=_parse_batching(raw.get("batching")),
        hardware=hardware,
        example=raw.get("example"),
    )
