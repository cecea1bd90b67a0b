"""The contract of a load-time optimiser, and the output check the optimisers share."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

logger = logging.getLogger("inference.runtime")


class Optimizer:
    """Turn a loaded module into the module to serve, once, at load.

    A subclass sets `name` (the one settings choose it by) and provides `optimize()`. The
    runtime calls it after moving the module to its device and setting its threads, before the
    warm-up; the request path calls whatever module it returned and never asks which optimiser
    made it.
    """

    name = ""

    def optimize(self, module: Any, example_inputs: list[torch.Tensor], *, label: str) -> Any:
        """Return the module to serve in place of `module`.

        `example_inputs` are the module's positional inputs, on its device, with a batch
        dimension. The module returned must give `module`'s outputs on them to float32
        tolerance, at any batch size. Where the optimisation does not apply (another device,
        nothing to optimise) return `module` itself unchanged; where it fails or its outputs
        differ, log a warning saying why and return `module` unchanged. Never raise: a version
        does not fail to load because an optimisation did. `label` names the version in logs.
        """
        raise NotImplementedError("subclasses of Optimizer must provide an optimize() method")


def plain(module: Any, label: str, optimizer: str, reason: str) -> Any:
    """Log why `optimizer` was not applied to `label` and return `module` (served as loaded)."""
    logger.warning("%s: optimizer %s not applied (%s); serving the module as loaded", label, optimizer, reason)
    return module


def failure(exc: BaseException) -> str:
    """Return an exception as a reason for the log: its type and first line (compiler errors run long)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def with_rows(inputs: Sequence[torch.Tensor], rows: int) -> list[torch.Tensor]:
    """Return `inputs` with `rows` rows (cycling through theirs). Call it outside inference_mode:
    requests bring ordinary tensors, and a compiled module guards on the kind."""
    out = []
    for t in inputs:
        if t.dim() == 0 or t.shape[0] == 0:
            out.append(t)
            continue
        reps = -(-rows // t.shape[0])
        out.append(torch.cat([t] * reps)[:rows].clone())
    return out


def check_batches(example_inputs: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Return the inputs an optimised module is checked (and warmed up) on: the example, one
    row (a size that compilers specialise) and a third size, so that a module that holds on to
    the example's batch size is found out at load, not by a request."""
    n = example_inputs[0].shape[0] if example_inputs and example_inputs[0].dim() else 1
    sizes = [n, *(s for s in (1, n + 3) if s != n)]
    return [list(example_inputs) if s == n else with_rows(example_inputs, s) for s in sizes]


def forward(module: Any, inputs: Sequence[torch.Tensor]) -> Any:
    with torch.inference_mode():
        return module(*inputs)


def differs(optimized: Any, batches: Sequence[Sequence[torch.Tensor]], want: Sequence[Any]) -> str | None:
    """Run `optimized` on each batch; return why it does not give `want` (one output per batch), or None."""
    for inputs, expected in zip(batches, want):
        if not same_outputs(forward(optimized, inputs), expected):
            rows = inputs[0].shape[0] if inputs and inputs[0].dim() else 1
            return f"its outputs differ from the plain module's at batch {rows}"
    return None


def tensors(out: Any) -> list[torch.Tensor]:
    """Return the tensors of a module's output (a tensor, or a dict, list or tuple of them)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in tensors(item)]
    return []


def same_outputs(got: Any, want: Any) -> bool:
    """Whether two outputs hold the same tensors: shapes and dtypes equal, floats to float32 rounding."""
    a, b = tensors(got), tensors(want)
    if len(a) != len(b) or not a:
        return False
    for x, y in zip(a, b):
        if x.shape != y.shape or x.dtype != y.dtype:
            return False
        if x.is_floating_point():
            scale = float(y.abs().max()) if y.numel() else 0.0
            if not torch.allclose(x, y, rtol=1e-4, atol=1e-5 * max(1.0, scale)):
                return False
        elif not torch.equal(x, y):
            return False
    return True
