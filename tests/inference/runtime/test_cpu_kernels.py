"""Large linear layers packed for oneDNN (inference.runtime.cpu_kernels), alone and through the loader."""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch
from torch import nn

from inference.runtime.cpu_kernels import MIN_WEIGHT_NUMEL, pack_large_linears
from inference.runtime.pytorch import LoadSpec, PyTorchRuntime
from registry.architectures import MLP
from registry.schemas import parse_tensor_schema
from tests.conftest import safetensors_bytes

WIDE, NARROW = 2048, 1024  # 2048 x 1024 = MIN_WEIGHT_NUMEL: the smallest layer that is packed


def wide_mlp(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(in_features=16, hidden=[WIDE, NARROW], out_features=3).eval()


def example(module: nn.Module, batch: int = 4):
    x = torch.randn(batch, 16, generator=torch.Generator().manual_seed(1))
    return lambda m: m(x)


def kinds(module: nn.Module) -> list[str]:
    return [type(m).__name__ for m in module if not isinstance(m, nn.ReLU)]


def test_only_the_large_fp32_layers_are_packed_and_the_outputs_stay_the_same():
    assert WIDE * NARROW == MIN_WEIGHT_NUMEL
    plain, packed = wide_mlp(), copy.deepcopy(wide_mlp())
    assert pack_large_linears(packed, example(packed), label="wide") == 1
    assert kinds(packed) == ["Linear", "PackedLinear", "Linear"]  # 16x2048 and 1024x3 are too small
    for batch in (1, 2, 3, 5, 9, 32):  # 3, 5 and 9 rows are padded to 4, 8 and 12 inside the layer
        x = torch.randn(batch, 16)
        with torch.inference_mode():
            np.testing.assert_allclose(packed(x).numpy(), plain(x).numpy(), rtol=1e-4, atol=1e-5)


class Counting(nn.Module):
    """Wraps a layer's oneDNN module and records the rows of each call."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(len(x))
        return self.inner(x)


def test_a_single_row_is_computed_on_the_packed_weight_memory_without_oneDNN():
    """Batch 1 goes to PyTorch's GEMV over the packed weight's own memory (oneDNN is slower
    there): no copy of the weight, the same outputs; without that view, oneDNN computes it."""
    plain, packed = wide_mlp(), copy.deepcopy(wide_mlp())
    pack_large_linears(packed, example(packed), label="wide")
    layer = packed[2]
    assert layer.row_weight.data_ptr() == torch.ops.mkldnn.data_ptr(layer.packed.weight)  # shared, not copied
    assert layer.row_bias.data_ptr() == torch.ops.mkldnn.data_ptr(layer.packed.bias)
    layer.packed = Counting(layer.packed)
    x = torch.randn(1, 16)
    with torch.inference_mode():
        np.testing.assert_allclose(packed(x).numpy(), plain(x).numpy(), rtol=1e-4, atol=1e-5)
        assert layer.packed.calls == []
        layer.row_weight = None
        np.testing.assert_allclose(packed(x).numpy(), plain(x).numpy(), rtol=1e-4, atol=1e-5)
        packed(torch.randn(4, 16))
    assert layer.packed.calls == [1, 4]


def test_other_dtypes_and_scripted_modules_are_left_alone():
    double = wide_mlp().double()
    assert pack_large_linears(double, lambda m: m(torch.randn(2, 16, dtype=torch.float64))) == 0
    assert kinds(double) == ["Linear", "Linear", "Linear"]
    scripted = torch.jit.script(wide_mlp())
    assert pack_large_linears(scripted, example(scripted)) == 0


def test_outputs_that_differ_put_the_plain_layers_back(caplog):
    module = wide_mlp()
    calls = []

    def run(m):  # the "packed" run answers differently from the plain one
        calls.append(1)
        return torch.full((2, 3), float(len(calls)))

    with caplog.at_level(logging.WARNING, logger="inference.runtime"):
        assert pack_large_linears(module, run, label="odd v1") == 0
    assert kinds(module) == ["Linear", "Linear", "Linear"]
    assert "odd v1: linear layers not packed for oneDNN (its outputs differ" in caplog.text


def test_a_packed_run_that_fails_puts_the_plain_layers_back(caplog):
    module = wide_mlp()
    calls = []

    def run(m):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("no oneDNN kernel for this input")
        return m(torch.randn(2, 16))

    with caplog.at_level(logging.WARNING, logger="inference.runtime"):
        assert pack_large_linears(module, run, label="odd v2") == 0
    assert kinds(module) == ["Linear", "Linear", "Linear"]
    assert "RuntimeError: no oneDNN kernel for this input" in caplog.text
    with torch.inference_mode():
        assert module(torch.randn(1, 16)).shape == (1, 3)


def spec(module: nn.Module, **changes) -> LoadSpec:
    data = safetensors_bytes(module)
    return LoadSpec(**{
        "label": "wide v1", "read_artifact": lambda: data, "format": "safetensors",
        "inputs": parse_tensor_schema([{"name": "input", "datatype": "FP32", "shape": [16]}], where="inputs"),
        "outputs": parse_tensor_schema([{"name": "output", "datatype": "FP32", "shape": [3]}], where="outputs"),
        "architecture": "registry.architectures.MLP",
        "architecture_args": {"in_features": 16, "hidden": [WIDE, NARROW], "out_features": 3},
        **changes,
    })


def test_the_runtime_packs_a_cpu_model_it_loads_unless_told_not_to():
    module = wide_mlp(3)
    packed, plain = PyTorchRuntime(spec(module)), PyTorchRuntime(spec(module, pack_linear=False))
    packed.load()
    plain.load()
    assert (packed.packed_layers, plain.packed_layers) == (1, 0)
    assert packed.nbytes == plain.nbytes  # the weights as loaded, counted once
    rows = np.random.default_rng(2).standard_normal((5, 16)).astype(np.float32)
    got, want = packed.predict({"input": rows})["output"], plain.predict({"input": rows})["output"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    with torch.inference_mode():
        np.testing.assert_allclose(want, module(torch.from_numpy(rows)).numpy(), rtol=1e-6, atol=1e-6)


def test_a_layer_one_row_under_the_threshold_is_left_plain():
    module = MLP(in_features=16, hidden=[WIDE, NARROW - 1], out_features=3).eval()
    assert WIDE * (NARROW - 1) < MIN_WEIGHT_NUMEL
    assert pack_large_linears(module, example(module)) == 0
    assert kinds(module) == ["Linear", "Linear", "Linear"]


class SharedLayer(nn.Module):
    """One large linear layer applied twice (weight tying)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(16, WIDE)
        self.shared = nn.Linear(WIDE, WIDE)
        self.out = nn.Linear(WIDE, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.shared(torch.relu(self.shared(self.inp(x))))))


def test_a_layer_used_twice_is_packed_once_and_counted_once(caplog):
    plain = SharedLayer().eval()
    tied = copy.deepcopy(plain)
    tied.again = tied.shared  # the same layer held under a second name
    tied.block = nn.Sequential(tied.shared)  # ... and by a second parent
    caplog.set_level(logging.INFO, logger="inference.runtime")
    assert pack_large_linears(tied, example(tied), label="tied") == 1
    assert tied.shared is tied.again is tied.block[0]  # every reference replaced: no plain weight left behind
    assert type(tied.shared).__name__ == "PackedLinear"
    assert "tied: 1 linear layer(s) packed" in caplog.text
    x = torch.randn(5, 16)
    with torch.inference_mode():
        np.testing.assert_allclose(tied(x).numpy(), plain(x).numpy(), rtol=1e-4, atol=1e-4)
