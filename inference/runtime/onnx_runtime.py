"""The ONNX runtime: a registered ``onnx`` version served by ONNX Runtime (``onnxruntime``).

The artifact is checked by the registry's loader first (registry.onnx_artifacts: sha256, size,
standard operator domains only, no external data, inputs and outputs matching the config with a
dynamic batch dimension); only then does ONNX Runtime build a session from the bytes. No custom-op
library is ever registered, so no code from outside the graph runs.

Devices follow the hardware target, as the PyTorch runtime's do: ``cpu`` runs on the CPU execution
provider with the target's ``cpu_threads`` intra-op threads per session; ``cuda`` runs on the CUDA
execution provider, and is not ready with the reason ("cuda not available") when that provider is
missing or does not start, never moved to the CPU silently. ``onnxruntime`` is imported here only,
when an ONNX version loads: processes that serve no ONNX model never import it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from registry.artifacts import ArtifactError
from registry.onnx_artifacts import initializer_bytes, load_onnx
from registry.schemas import DATATYPES

from .base import LoadSpec, ModelNotReady, Runtime
from .devices import device_string

logger = logging.getLogger("inference.runtime")

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"


def providers_for(device_type: str, device_index: int, available: list[str]) -> list[Any]:
    """The execution providers of a session on a target, or ModelNotReady with the reason."""
    if device_type == "cpu":
        return [CPU_PROVIDER]
    if device_type == "cuda":
        if CUDA_PROVIDER not in available:
            raise ModelNotReady("cuda not available (onnxruntime has no CUDAExecutionProvider here: install "
                                "onnxruntime-gpu on GPU hosts)")
        return [(CUDA_PROVIDER, {"device_id": device_index})]
    raise ModelNotReady(f"{device_type} not available to the ONNX runtime (cpu and cuda only)")


class OnnxRuntime(Runtime):
    """Run an ONNX graph in an ``onnxruntime.InferenceSession`` on the target's device."""

    def __init__(self, spec: LoadSpec):
        super().__init__(spec)
        self.session: Any = None
        self.device = "cpu"
        self.input_dtypes = {s.name: np.dtype(DATATYPES[s.datatype]) for s in spec.inputs}
        self.output_names = [s.name for s in spec.outputs]

    def load(self) -> None:
        import onnxruntime as ort

        spec = self.spec
        providers = providers_for(spec.device_type, spec.device_index, ort.get_available_providers())
        try:
            data = spec.read_artifact()
        except OSError as exc:
            raise ModelNotReady(f"{spec.label}: the artifact cannot be read: {exc}") from exc
        try:
            model = load_onnx(data, inputs=spec.inputs, outputs=spec.outputs, expected_sha256=spec.sha256)
        except ArtifactError as exc:
            raise ModelNotReady(f"{spec.label}: {exc}") from exc
        nbytes = initializer_bytes(model) or len(data)
        del model
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(spec.cpu_threads))  # the hardware target's, like torch's
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: ORT's warnings would flood the service log
        try:
            session = ort.InferenceSession(data, sess_options=options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own types for a graph it cannot run
            raise ModelNotReady(f"{spec.label}: ONNX Runtime cannot load the graph: {exc}") from exc
        del data
        if spec.device_type == "cuda" and session.get_providers()[0] != CUDA_PROVIDER:
            raise ModelNotReady(f"cuda not available (onnxruntime could not start its CUDA execution provider "
                                f"for cuda:{spec.device_index}; it offered {session.get_providers()})")
        self.session = session
        self.device = device_string(spec.device_type, spec.device_index)
        self.nbytes = nbytes
        self.ready = True
        logger.debug("%s: ONNX session on %s with %s", spec.label, self.device, session.get_providers())
        self.warm_up()

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.ready:
            raise ModelNotReady(f"{self.spec.label} is not loaded")
        feed = {}
        for name, dtype in self.input_dtypes.items():
            arr = inputs[name]
            if arr.dtype != dtype:
                arr = arr.astype(dtype)
            feed[name] = np.ascontiguousarray(arr)
        values = self.session.run(self.output_names, feed)
        return {name: np.asarray(value) for name, value in zip(self.output_names, values)}

    def unload(self) -> None:
        self.session = None
        self.ready = False
