"""``compile``: ``torch.compile`` (TorchInductor), dynamic in the batch dimension, compiled at load.

``torch.compile`` compiles on a module's first call, and again for an input it has not seen
the like of (one row is specialised apart from the others). Both happen here, on the example,
one row and a third batch size, so that requests find every kernel built; requests bring
ordinary tensors under ``inference_mode`` with the target's thread count, and the warm-up
does the same, since a compiled module guards on all three. Compiling takes seconds per model
(a C++ compiler runs), and that is load time; without a working C++ toolchain it fails and
the module is served as loaded.

Freezing (weights folded into the compiled graph as constants, which lets Inductor use
oneDNN's prepacked linear and convolution kernels) is asked for through the public
``options={"freezing": True}``. In torch 2.13 that is not enough on its own: Dynamo decides
whether parameters become constants of the graph from the process-wide Inductor setting,
which only the ``TORCHINDUCTOR_FREEZING=1`` environment variable sets without touching
private attributes. Without it the weights stay inputs of the compiled graph (outputs are
still right). With it, the frozen weights live in torch's compile cache, which keeps them after
the version is unloaded (only ``torch.compiler.reset()`` clears it, for every model at once),
so a process that loads and unloads versions grows. docs/benchmarks.md measures both.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Optimizer, check_batches, differs, failure, forward, logger, plain


class CompileOptimizer(Optimizer):
    """Serve ``torch.compile(module, dynamic=True, options={"freezing": True})``, warmed up."""

    name = "compile"

    def optimize(self, module: Any, example_inputs: list[torch.Tensor], *, label: str) -> Any:
        if not isinstance(module, nn.Module) or isinstance(module, torch.jit.ScriptModule):
            return plain(module, label, self.name, f"{type(module).__name__} is not a Python nn.Module")
        batches = check_batches(example_inputs)
        try:
            want = [forward(module, inputs) for inputs in batches]
        except Exception:  # noqa: BLE001 - the plain module's own error is reported by its warm-up
            return module
        try:
            compiled = torch.compile(module, dynamic=True, options={"freezing": True})
            reason = differs(compiled, batches, want)  # compiles: at load, not on the first request
        except Exception as exc:  # noqa: BLE001 - no C++ compiler, an unsupported op ...: serve it as loaded
            reason = failure(exc)
        if reason:
            return plain(module, label, self.name, reason)
        sizes = ", ".join(str(inputs[0].shape[0]) for inputs in batches if inputs)
        logger.info("%s: compiled by torch.compile (warmed up at batch sizes %s)", label, sizes)
        return compiled
