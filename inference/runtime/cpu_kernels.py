"""Large linear layers on the CPU with oneDNN's packed weights.

PyTorch computes ``nn.Linear`` on the CPU with a BLAS GEMM on the weight as stored. oneDNN
(``torch.utils.mkldnn.MkldnnLinear``, here in ``PackedLinear``) keeps the weight in its own blocked layout, packed once
at load, which for a large layer at the batch sizes that dynamic batching forms is much
faster: a 4096x4096 layer with 1 thread took 8.8 ms instead of 13.7 ms at batch 8, 16.7
instead of 26.9 at batch 32 (docs/benchmarks.md). At batch 1 oneDNN is the slower one, so a
single row is computed by PyTorch over the same weight memory (``PackedLinear``). For a small layer
it is slower: each call converts its input and output (~60 µs). So only fp32 layers with at
least ``MIN_WEIGHT_NUMEL`` weights are packed (2048x1024, 512x4096 and up). At that size oneDNN
is about as fast as PyTorch (512x4096, 1 thread: 1.13x at batch 32, 0.92x at batch 8) and the
process is smaller: PyTorch's BLAS keeps a ~9 MB buffer for such a weight after a batch, a
packed weight needs none (the benchmark's web process: 446-456 MiB instead of 459-467).

oneDNN keeps a compiled kernel for each batch size it sees (~0.7 MB each: 22 MB for the 32
sizes of a 4096x4096 layer), so a packed layer pads its rows to a multiple of ``ROW_MULTIPLE``
(1 and 2 rows as they are): at most 10 kernels for batches up to 32, for a few rows of
compute.

A packed module is checked before it is kept: a random example of the declared inputs must
give the same outputs as the plain module (to float32 rounding); if not, or if anything
fails, the plain layers are put back and the version serves as before (logged).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

logger = logging.getLogger("inference.runtime")

MIN_WEIGHT_NUMEL = 1 << 21  # 2048 x 1024, 512 x 4096
ROW_MULTIPLE = 4


class PackedLinear(nn.Module):
    """A linear layer computed by oneDNN with its weight packed at load; rows padded to ROW_MULTIPLE.

    A single row is computed by PyTorch's own GEMV instead, on the same weight memory (oneDNN
    keeps a 2-D weight in row-major order, read here as a dense tensor without a copy): at
    batch 1 oneDNN is the slower of the two (4096x4096, 1 thread: 4.29 vs 3.85 ms).
    """

    def __init__(self, dense: nn.Linear):
        super().__init__()
        from torch.utils.mkldnn import MkldnnLinear

        self.in_features, self.out_features = dense.in_features, dense.out_features
        self.packed = MkldnnLinear(dense, torch.float)
        self.row_weight, self.row_bias = _dense_view(self.packed.weight, dense.weight), None
        if self.row_weight is not None and dense.bias is not None:
            self.row_bias = _dense_view(self.packed.bias, dense.bias)
            if self.row_bias is None:  # no view of the bias: no single-row path either
                self.row_weight = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.shape[0]
        if rows == 1 and x.dim() == 2 and self.row_weight is not None and not x.is_mkldnn:
            return torch.nn.functional.linear(x, self.row_weight, self.row_bias)
        if x.dim() != 2 or rows <= 2 or rows % ROW_MULTIPLE == 0:
            return self.packed(x)
        padded = torch.nn.functional.pad(x, (0, 0, 0, ROW_MULTIPLE - rows % ROW_MULTIPLE))
        return self.packed(padded)[:rows]


def _dense_view(mkldnn_weight: torch.Tensor, dense_weight: torch.Tensor) -> torch.Tensor | None:
    """A dense tensor over an oneDNN weight's (or bias's) memory (no copy), or None unless it reads
    exactly as the dense one (oneDNN's layout is row-major for a 2-D tensor, as checked here).

    The view does not own the memory: it lives as long as the PackedLinear that holds both."""
    import ctypes

    try:
        address = torch.ops.mkldnn.data_ptr(mkldnn_weight)
        buffer = (ctypes.c_float * mkldnn_weight.numel()).from_address(address)
        view = torch.frombuffer(buffer, dtype=torch.float32).view(dense_weight.shape)
        if view.equal(dense_weight.detach()):
            return view
    except Exception:  # noqa: BLE001 - no view: every batch size goes to oneDNN
        logger.debug("no dense view of a packed weight", exc_info=True)
    return None


def _candidates(module: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    """Every place a large fp32 layer is held: (parent, attribute name, layer). A layer held under
    two names, or by two parents, is listed at each, so that every reference is replaced (else
    one name would keep the plain weight alive beside the packed one)."""
    found = []
    for parent in module.modules():
        for name, child in parent._modules.items():  # named_children() would skip a second name
            if (
                type(child) is nn.Linear  # a subclass may compute differently
                and child.weight.dtype == torch.float32
                and child.weight.numel() >= MIN_WEIGHT_NUMEL
                and child.weight.device.type == "cpu"
                and not (child._forward_hooks or child._forward_pre_hooks)
            ):
                found.append((parent, name, child))
    return found


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in _tensors(item)]
    return []


def _same(got: Any, want: Any) -> bool:
    a, b = _tensors(got), _tensors(want)
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


def pack_large_linears(module: Any, run_example: Callable[[Any], Any], *, label: str = "model") -> int:
    """Replace `module`'s large fp32 ``nn.Linear`` layers with oneDNN-packed ones; return how many
    distinct layers were packed.

    `run_example(module)` computes a fixed example with the module; the packed module must give
    the plain module's outputs on it, else every layer is put back and 0 is returned.
    """
    if not isinstance(module, nn.Module) or isinstance(module, torch.jit.ScriptModule):
        return 0
    if not torch.backends.mkldnn.is_available():
        return 0
    found = _candidates(module)
    if not found:
        return 0
    try:
        with torch.inference_mode():
            want = run_example(module)
    except Exception:  # noqa: BLE001 - the plain module's own error is reported by its warm-up
        return 0
    packed: dict[int, nn.Module] = {}
    try:
        with torch.inference_mode():
            for parent, name, child in found:
                if id(child) not in packed:  # a layer used twice is packed once
                    packed[id(child)] = PackedLinear(child)
                setattr(parent, name, packed[id(child)])
            ok = _same(run_example(module), want)
        reason = "its outputs differ from the plain layers'"
    except Exception as exc:  # noqa: BLE001 - unsupported here: serve the plain layers
        ok, reason = False, f"{type(exc).__name__}: {exc}"
    if not ok:
        for parent, name, child in found:
            setattr(parent, name, child)
        logger.warning("%s: linear layers not packed for oneDNN (%s); serving them as they are", label, reason)
        return 0
    # A layer used at several places is one packed layer: counted once.
    logger.info("%s: %d linear layer(s) packed for oneDNN", label, len(packed))
    return len(packed)
