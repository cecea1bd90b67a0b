"""Load-time optimisers: one per hardware target, chosen by name in settings.INFERENCE_OPTIMIZERS.

The runtime applies the chosen one once, at load (``PyTorchRuntime.load``); the request path
calls the module it returned and does not know which one it was.
"""

from __future__ import annotations

from django.conf import settings

from .base import Optimizer
from .compile import CompileOptimizer
from .jit import JitOptimizer
from .none import NoOptimizer
from .onednn import OneDNNOptimizer

OPTIMIZERS: dict[str, type[Optimizer]] = {
    "none": NoOptimizer,
    "onednn": OneDNNOptimizer,
    "jit": JitOptimizer,
    "compile": CompileOptimizer,
}


def optimizer_for(*, target_name: str, device_type: str) -> str:
    """Return the name of the optimiser for a hardware target: INFERENCE_OPTIMIZERS's entry for the
    target's name, else for its device type, else "none"."""
    chosen = settings.INFERENCE_OPTIMIZERS
    for key in (target_name, device_type):
        if key in chosen:
            return chosen[key]
    return "none"


__all__ = ["OPTIMIZERS", "Optimizer", "optimizer_for"]
