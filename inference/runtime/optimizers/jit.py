"""``jit``: TorchScript, frozen and optimised for inference.

``torch.jit.freeze`` turns the weights into constants of the graph and
``torch.jit.optimize_for_inference`` rewrites it for them (on the CPU: convolutions on oneDNN
with their weights converted once, linear layers on pre-transposed weights, fused
elementwise ops). The module is scripted; where scripting fails it is traced on the example
inputs, and a trace records one run, so it is checked on other batch sizes before it is kept.
``optimize_for_inference`` leaves the original weights in the graph beside the transposed
copies it computes with: the module holds its linear weights twice.
TorchScript is deprecated upstream in favour of ``torch.compile`` (torch warns at each load);
it stays here because it compiles in a fraction of a second, where ``compile`` takes seconds.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Optimizer, check_batches, differs, failure, forward, logger, plain


class JitOptimizer(Optimizer):
    """Serve ``optimize_for_inference(freeze(script or trace(module)))``."""

    name = "jit"

    def optimize(self, module: Any, example_inputs: list[torch.Tensor], *, label: str) -> Any:
        if not isinstance(module, nn.Module):
            return plain(module, label, self.name, f"{type(module).__name__} is not an nn.Module")
        batches = check_batches(example_inputs)
        try:
            want = [forward(module, inputs) for inputs in batches]
        except Exception:  # noqa: BLE001 - the plain module's own error is reported by its warm-up
            return module
        try:
            scripted, how = _script(module, example_inputs)
            optimized = torch.jit.optimize_for_inference(torch.jit.freeze(scripted))
            reason = differs(optimized, batches, want)
        except Exception as exc:  # noqa: BLE001 - not scriptable or freezable here: serve it as loaded
            reason = failure(exc)
        if reason:
            return plain(module, label, self.name, reason)
        logger.info("%s: served as TorchScript (%s), frozen and optimised for inference", label, how)
        return optimized


def _script(module: nn.Module, example_inputs: list[torch.Tensor]) -> tuple[torch.jit.ScriptModule, str]:
    """Return `module` as TorchScript and how it was made: scripted, or traced on the example."""
    if isinstance(module, torch.jit.ScriptModule):  # a TorchScript artifact
        return module, "as loaded"
    try:
        return torch.jit.script(module), "scripted"
    except Exception:  # noqa: BLE001 - Python that TorchScript cannot compile: record a run instead
        return torch.jit.trace(module, tuple(example_inputs), strict=False, check_trace=False), "traced"
