"""``none``: the module is served as loaded."""

from __future__ import annotations

from typing import Any

import torch

from .base import Optimizer


class NoOptimizer(Optimizer):
    """Return the module unchanged."""

    name = "none"

    def optimize(self, module: Any, example_inputs: list[torch.Tensor], *, label: str) -> Any:
        return module
