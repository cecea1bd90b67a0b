"""``onednn``: large linear layers on the CPU computed by oneDNN, their weights packed at load.

PyTorch computes an fp32 ``nn.Linear`` on the CPU with a BLAS GEMM on the weight as stored.
``torch.utils.mkldnn.MkldnnLinear`` (held by ``PackedLinear``) copies the weight once, at load,
into a oneDNN tensor ("packed" in the names here) and calls oneDNN's inner-product kernel on
it, which for large layers at the batch sizes that dynamic batching forms is faster than the
GEMM; docs/benchmarks.md has the measurements. The copy does not change the layout: for a 2-D
weight the oneDNN tensor is plain row-major memory, like the dense weight (``_dense_view``
checks that before relying on it).

That layout is what the single-row path uses: at batch 1 oneDNN is the slower of the two, so a
single row is computed by PyTorch's GEMV over the oneDNN tensor's own memory, read as a dense
tensor without a copy. Small layers are left alone, because each oneDNN call converts its input
and output and that costs more than a small layer's compute: only fp32 layers with at least
``MIN_WEIGHT_NUMEL`` weights are packed. A packed weight also spares the process the scratch
buffer that PyTorch's BLAS keeps for a large weight after a batch.

oneDNN keeps a compiled kernel for each batch size it sees, so a packed layer pads its rows to
a multiple of ``ROW_MULTIPLE`` (1 and 2 rows as they are): a few kernels for batches up to 32,
for a few rows of compute.

A packed module is checked before it is kept: the example inputs must give the same outputs as
the plain module (to float32 rounding); if not, or if anything fails, the plain layers are put
back and the version serves as before (logged). On another device than the CPU nothing changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .base import Optimizer, same_outputs

logger = logging.getLogger("inference.runtime")

MIN_WEIGHT_NUMEL = 1 << 21  # 2048 x 1024, 512 x 4096
ROW_MULTIPLE = 4


class PackedLinear(nn.Module):
    """A linear layer computed by oneDNN with its weight packed at load; rows padded to ROW_MULTIPLE.

    A single row is computed by PyTorch's own GEMV instead, on the same weight memory (oneDNN
    keeps a 2-D weight in row-major order, read here as a dense tensor without a copy): at
    batch 1 oneDNN is the slower of the two.
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
    one name would keep the plain weight alive beside the packed one).

    A layer with forward hooks would lose them when replaced; PyTorch offers no public way to see
    them, but one that changes the outputs makes the packed module differ from the plain one on the
    example, and then nothing is packed."""
    found, seen = [], set()
    # Every path to every module (remove_duplicate=False): named_children() would skip a second name.
    for path, child in module.named_modules(remove_duplicate=False):
        if not path or not (
            type(child) is nn.Linear  # a subclass may compute differently
            and child.weight.dtype == torch.float32
            and child.weight.numel() >= MIN_WEIGHT_NUMEL
            and child.weight.device.type == "cpu"
        ):
            continue
        parent_path, _, name = path.rpartition(".")
        parent = module.get_submodule(parent_path) if parent_path else module
        if (id(parent), name) not in seen:  # a parent reached by two paths holds the layer once
            seen.add((id(parent), name))
            found.append((parent, name, child))
    return found


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
            ok = same_outputs(run_example(module), want)
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


class OneDNNOptimizer(Optimizer):
    """Pack the large fp32 linear layers of a module on the CPU for oneDNN (``pack_large_linears``)."""

    name = "onednn"

    def optimize(self, module: Any, example_inputs: list[torch.Tensor], *, label: str) -> Any:
        if any(t.device.type != "cpu" for t in example_inputs):
            return module  # oneDNN's packed layers are a CPU kernel
        pack_large_linears(module, lambda m: m(*example_inputs), label=label)
        return module  # its layers replaced in place, or put back
