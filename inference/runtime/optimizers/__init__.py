"""Load-time optimisers, by name: the runtime applies the one its LoadSpec names once, at load
(``PyTorchRuntime.load``); the request path calls the module it returned and does not know which
one it was. Which name a hardware target gets is a setting (INFERENCE_OPTIMIZERS), read above the
runtime (``inference.pipeline.served.optimizer_for``).
"""

from __future__ import annotations

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


__all__ = ["OPTIMIZERS", "Optimizer"]
