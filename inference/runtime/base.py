"""The runtime contract: load / warm-up / predict / unload, device and memory (after MLServer's MLModel).

A runtime turns one registered version into something that maps a batch of input
tensors to a batch of output tensors. Everything that can be decided once (device,
threads, code path) is decided in ``load()``, never per request. INFERENCE_RUNTIMES
chooses the class for each artifact format (``pytorch``: PyTorchRuntime, ``onnx``:
OnnxRuntime), so a third runtime is a new module and a line of settings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from registry.schemas import DATATYPES, TensorSpec


class ModelNotReady(Exception):
    """The version cannot serve here (its device is missing, or it failed to load)."""


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
    cpu_threads: int = 1  # intra-op threads of each forward pass on the CPU (the hardware target's)
    allow_code: bool | None = None
    warmup: bool = True
    optimizer: str = "none"  # applied at load: a name in optimizers.OPTIMIZERS (settings.INFERENCE_OPTIMIZERS)


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


class Runtime:
    """Base class of model runtimes. Subclasses implement load, predict and unload.

    A runtime is built from a ``LoadSpec``: all it needs to load one version, independent of the
    database. The batcher calls ``predict`` with a batch (axis 0) of arrays named as the version's
    inputs and gets arrays named as its outputs.
    """

    #: Bytes of memory the loaded model holds (parameters and buffers, or a graph's initializers);
    #: the cache bounds the sum of these.
    nbytes: int = 0
    #: Where the model runs once loaded: ``str(device)`` is "cpu", "cuda:0", "mps".
    device: Any = "cpu"

    def __init__(self, spec: Any = None) -> None:
        self.spec = spec
        self.ready = False

    def load(self) -> None:
        """Load the model, place it on its device, set `nbytes` and `ready`, then call `warm_up()`.

        Raise ModelNotReady with the reason when it cannot serve here (device missing, bad artifact):
        never a silent fallback to another device."""
        raise NotImplementedError("subclasses of Runtime must provide a load() method")

    def warm_up(self) -> None:
        """Run one batch of zeros of the declared shapes (with `spec.warmup`), so the first request
        pays for no lazy initialisation. Skipped when an input is BYTES (no zero value to make)."""
        spec = self.spec
        if spec is None or not getattr(spec, "warmup", True):
            return
        if any(s.datatype == "BYTES" for s in spec.inputs):
            return
        self.predict(zeros_for(spec.inputs))

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Return the outputs of one forward pass over a batch (axis 0) of inputs."""
        raise NotImplementedError("subclasses of Runtime must provide a predict() method")

    def unload(self) -> None:
        """Release the model's memory; `ready` becomes False."""
        self.ready = False
