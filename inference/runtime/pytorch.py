"""The PyTorch runtime: a registered version's artifact, on its device, under inference_mode."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from registry.artifacts import ArtifactError, load_module
from registry.schemas import DATATYPES

from .base import LoadSpec, ModelNotReady, Runtime, random_for, zeros_for
from .devices import check_available, device_string, use_threads
from .optimizers import OPTIMIZERS

logger = logging.getLogger("inference.runtime")

# LoadSpec and the example makers live in .base (every runtime's); imported from here too.
__all__ = ["LoadSpec", "PyTorchRuntime", "random_for", "zeros_for"]


class PyTorchRuntime(Runtime):
    """Run an ``nn.Module`` loaded by the registry's loader on the target's device."""

    def __init__(self, spec: LoadSpec):
        super().__init__()
        self.spec = spec
        self.device = torch.device("cpu")
        self.module: Any = None
        self.optimizer_applied = "none"  # the optimizer in effect once loaded ("none" after a fallback)
        self.input_names = [s.name for s in spec.inputs]
        self.input_dtypes = {s.name: np.dtype(DATATYPES[s.datatype]) for s in spec.inputs if s.datatype != "BYTES"}
        self.output_names = [s.name for s in spec.outputs]

    def load(self) -> None:
        spec = self.spec
        if spec.optimizer not in OPTIMIZERS:
            raise ModelNotReady(f"{spec.label}: unknown optimizer {spec.optimizer!r} (one of {', '.join(OPTIMIZERS)})")
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
        self.module, self.optimizer_applied = self._optimize(self.module)
        self.ready = True
        self.warm_up()

    def _optimize(self, module: Any) -> tuple[Any, str]:
        """Return the module to serve, made by the spec's optimizer, and the optimizer in effect."""
        spec = self.spec
        if spec.optimizer == "none":
            return module, "none"
        if self.device.type == "cpu":
            use_threads(spec.cpu_threads)  # the count the batcher computes with: compiled code is built for it
        example = random_for(spec.inputs)
        if any(n not in example for n in self.input_names):
            logger.warning("%s: optimizer %s not applied (no example of BYTES inputs)", spec.label, spec.optimizer)
            return module, "none"
        inputs = [self._to_tensor(n, example[n]) for n in self.input_names]
        kinds = _kinds(module)
        try:
            served = OPTIMIZERS[spec.optimizer]().optimize(module, inputs, label=spec.label)
        except Exception:  # noqa: BLE001 - optimizers fall back themselves; a bug in one must not fail the load
            logger.warning("%s: optimizer %s failed; serving the module as loaded", spec.label, spec.optimizer,
                           exc_info=True)
            return module, "none"
        changed = served is not module or _kinds(served) != kinds  # onednn replaces layers in place
        return served, spec.optimizer if changed else "none"

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


def _kinds(module: Any) -> list[type]:
    """The classes of a module's submodules: what an optimizer that works in place changes."""
    return [type(m) for m in module.modules()] if isinstance(module, torch.nn.Module) else [type(module)]


def _tensors_of(module: Any) -> list[torch.Tensor]:
    if hasattr(module, "state_dict"):
        try:
            return [t for t in module.state_dict().values() if isinstance(t, torch.Tensor)]
        except Exception:  # noqa: BLE001 - exported programs may not support state_dict()
            pass
    return []
