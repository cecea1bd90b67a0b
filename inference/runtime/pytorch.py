"""The PyTorch runtime: a registered version's artifact, on its device, under inference_mode."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from registry.artifacts import ArtifactError, load_module
from registry.schemas import DATATYPES, TensorSpec

from .base import ModelNotReady, Runtime
from .cpu_kernels import pack_large_linears
from .devices import check_available, device_string, use_threads


@dataclass
class LoadSpec:
    """All a runtime needs to load one version, independent of the database."""

    label: str  # e.g. "iris v3", for messages
    read_artifact: Callable[[], bytes]
    format: str
    inputs: Sequence[TensorSpec]
    outputs: Sequence[TensorSpec]
    sha256: str | None = None
    architecture: str = ""
    architecture_args: Mapping[str, Any] = field(default_factory=dict)
    device_type: str = "cpu"
    device_index: int = 0
    cpu_threads: int = 1
    allow_code: bool | None = None
    warmup: bool = True
    pack_linear: bool = True  # large fp32 linear layers on the CPU: oneDNN's packed weights (cpu_kernels)


def zeros_for(specs: Sequence[TensorSpec], batch: int = 1) -> dict[str, np.ndarray]:
    """Return zero arrays of the declared shapes (-1 dims as 1) with a batch dimension."""
    return {
        s.name: np.zeros((batch, *[d if d > 0 else 1 for d in s.shape]), dtype=DATATYPES[s.datatype])
        for s in specs
        if s.datatype != "BYTES"
    }


def random_for(specs: Sequence[TensorSpec], batch: int = 2) -> dict[str, np.ndarray]:
    """Return fixed random arrays of the declared shapes (-1 dims as 1): normal floats, zero integers."""
    rng = np.random.default_rng(0)
    out = {}
    for name, arr in zeros_for(specs, batch).items():
        out[name] = rng.standard_normal(arr.shape).astype(arr.dtype) if arr.dtype.kind == "f" else arr
    return out


class PyTorchRuntime(Runtime):
    """Run an ``nn.Module`` loaded by the registry's loader on the target's device."""

    def __init__(self, spec: LoadSpec):
        super().__init__()
        self.spec = spec
        self.device = torch.device("cpu")
        self.module: Any = None
        self.packed_layers = 0  # linear layers packed for oneDNN (cpu_kernels)
        self.input_names = [s.name for s in spec.inputs]
        self.input_dtypes = {s.name: np.dtype(DATATYPES[s.datatype]) for s in spec.inputs if s.datatype != "BYTES"}
        self.output_names = [s.name for s in spec.outputs]

    def load(self) -> None:
        spec = self.spec
        check_available(spec.device_type, spec.device_index)  # raises ModelNotReady: never a silent fallback
        self.device = torch.device(device_string(spec.device_type, spec.device_index))
        try:
            data = spec.read_artifact()
        except OSError as exc:
            raise ModelNotReady(f"{spec.label}: the artifact cannot be read: {exc}") from exc
        try:
            module = load_module(
                data,
                format=spec.format,
                architecture=spec.architecture,
                architecture_args=spec.architecture_args,
                expected_sha256=spec.sha256,
                allow_code=spec.allow_code,
            )
        except ArtifactError as exc:
            raise ModelNotReady(f"{spec.label}: {exc}") from exc
        del data
        self.module = module.to(self.device) if hasattr(module, "to") else module
        self.nbytes = sum(t.numel() * t.element_size() for t in _tensors_of(self.module))
        if spec.pack_linear and self.device.type == "cpu":
            example = random_for(spec.inputs)
            use_threads(spec.cpu_threads)
            self.packed_layers = pack_large_linears(
                self.module, lambda m: m(*[self._to_tensor(n, example[n]) for n in self.input_names]), label=spec.label
            )
        self.ready = True
        if spec.warmup:
            self.predict(zeros_for(spec.inputs))

    def _to_tensor(self, name: str, arr: np.ndarray) -> torch.Tensor:
        dtype = self.input_dtypes.get(name)
        if dtype is not None and arr.dtype != dtype:
            arr = arr.astype(dtype)
        t = torch.from_numpy(np.ascontiguousarray(arr))
        return t.to(self.device, non_blocking=True) if self.device.type != "cpu" else t

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.ready:
            raise ModelNotReady(f"{self.spec.label} is not loaded")
        if self.device.type == "cpu":
            use_threads(self.spec.cpu_threads)
        args = [self._to_tensor(n, inputs[n]) for n in self.input_names]
        with torch.inference_mode():
            out = self.module(*args)
        return self._outputs(out)

    def _outputs(self, out: Any) -> dict[str, np.ndarray]:
        if isinstance(out, torch.Tensor):
            values = [out]
        elif isinstance(out, Mapping):
            missing = [n for n in self.output_names if n not in out]
            if missing:
                raise RuntimeError(f"the model returned outputs {sorted(out)}, the schema declares {self.output_names}")
            values = [out[n] for n in self.output_names]
        elif isinstance(out, (tuple, list)):
            values = list(out)
        else:
            raise RuntimeError(f"the model returned {type(out).__name__}, not tensors")
        if len(values) != len(self.output_names):
            raise RuntimeError(
                f"the model returned {len(values)} output(s), the schema declares {len(self.output_names)}"
            )
        return {n: v.detach().to("cpu").numpy() for n, v in zip(self.output_names, values)}

    def unload(self) -> None:
        self.module = None
        self.ready = False
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _tensors_of(module: Any) -> list[torch.Tensor]:
    if hasattr(module, "state_dict"):
        try:
            return [t for t in module.state_dict().values() if isinstance(t, torch.Tensor)]
        except Exception:  # noqa: BLE001 - exported programs may not support state_dict()
            pass
    return []
