"""Load-time optimisers (inference.runtime.optimizers): oneDNN's packed linear layers alone, each
optimiser through the real loader and runtime, their fallbacks, and how settings choose one."""

from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from django.conf import settings as django_settings
from torch import nn

from inference.pipeline.served import ServedVersion, optimizer_for
from inference.runtime.base import ModelNotReady
from inference.runtime.optimizers import OPTIMIZERS, Optimizer, compile, jit
from inference.runtime.optimizers.onednn import MIN_WEIGHT_NUMEL, OneDNNOptimizer, pack_large_linears
from inference.runtime.pytorch import LoadSpec, PyTorchRuntime
from registry.architectures import MLP, SmallCNN
from registry.models import HardwareTarget
from registry.schemas import parse_tensor_schema
from tests.conftest import safetensors_bytes, small_mlp
from tests.inference.support import config, ready

# TorchScript warns that it is deprecated at each use; the jit optimiser uses it knowingly.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

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


def test_the_runtime_packs_a_cpu_model_it_loads_with_the_onednn_optimizer():
    module = wide_mlp(3)
    packed, plain = PyTorchRuntime(spec(module, optimizer="onednn")), PyTorchRuntime(spec(module))
    packed.load()
    plain.load()
    assert (packed.optimizer_applied, plain.optimizer_applied) == ("onednn", "none")
    assert kinds(packed.module) == ["Linear", "PackedLinear", "Linear"]
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


def test_a_layer_whose_hook_changes_its_outputs_is_left_plain_with_its_hook(caplog):
    """Replacing a layer would drop its forward hooks: a hook that changes the outputs makes the packed
    module differ on the example, so nothing is packed and the hook still runs."""
    plain = wide_mlp()
    hooked = copy.deepcopy(plain)
    hooked[2].register_forward_hook(lambda module, args, out: out + 1.0)  # the packable 2048x1024 layer
    assert pack_large_linears(hooked, example(hooked), label="hooked") == 0
    assert kinds(hooked) == ["Linear", "Linear", "Linear"]
    assert "hooked: linear layers not packed" in caplog.text
    x = torch.randn(3, 16)
    with torch.inference_mode():
        assert not np.allclose(hooked(x).numpy(), plain(x).numpy())  # the hook still acts


# --- every optimiser, through the loader and the runtime -------------------------------------------

MODELS = {
    # name: (module, architecture, architecture_args, input shape, output shape)
    "mlp": (lambda: small_mlp(4), "MLP", {"in_features": 4, "hidden": [8], "out_features": 3}, [4], [3]),
    "cnn": (lambda: (torch.manual_seed(4), SmallCNN().eval())[1], "SmallCNN", {}, [1, 8, 8], [10]),
}


def runtime_for(model: str, optimizer: str) -> tuple[nn.Module, PyTorchRuntime]:
    """The plain module and a runtime that loads its safetensors bytes with `optimizer`."""
    make, architecture, args, in_shape, out_shape = MODELS[model]
    module = make()
    data = safetensors_bytes(module)
    return module, PyTorchRuntime(LoadSpec(
        label=f"{model} v1", read_artifact=lambda: data, format="safetensors",
        inputs=parse_tensor_schema([{"name": "input", "datatype": "FP32", "shape": in_shape}], where="inputs"),
        outputs=parse_tensor_schema([{"name": "output", "datatype": "FP32", "shape": out_shape}], where="outputs"),
        architecture=f"registry.architectures.{architecture}", architecture_args=args, optimizer=optimizer,
    ))


def assert_plain_outputs(runtime: PyTorchRuntime, module: nn.Module, batches=(1, 5)) -> None:
    shape = MODELS["mlp" if isinstance(module, MLP) else "cnn"][3]
    for batch in batches:
        rows = np.random.default_rng(batch).standard_normal((batch, *shape)).astype(np.float32)
        with torch.inference_mode():
            want = module(torch.from_numpy(rows)).numpy()
        np.testing.assert_allclose(runtime.predict({"input": rows})["output"], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize(("optimizer", "applied"), [("none", "none"), ("onednn", "none"), ("jit", "jit")])
def test_each_optimizer_gives_the_plain_outputs_at_batch_1_and_5(model, optimizer, applied):
    module, runtime = runtime_for(model, optimizer)
    runtime.load()
    assert runtime.optimizer_applied == applied  # onednn: no layer of these is large enough to pack
    assert isinstance(runtime.module, torch.jit.ScriptModule) == (optimizer == "jit")
    assert_plain_outputs(runtime, module)


def test_compile_is_warmed_up_at_load_and_gives_the_plain_outputs():
    module, runtime = runtime_for("mlp", "compile")
    runtime.load()
    assert runtime.optimizer_applied == "compile"
    assert_plain_outputs(runtime, module)
    failures = []

    def batcher():  # requests are computed on a batcher thread: nothing is compiled there
        try:
            with torch.compiler.set_stance("fail_on_recompile"):
                assert_plain_outputs(runtime, module, batches=(1, 7, 32))
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    thread = threading.Thread(target=batcher)
    thread.start()
    thread.join()
    assert failures == []


def test_the_optimizers_are_registered_under_their_names():
    assert {name: cls.name for name, cls in OPTIMIZERS.items()} == {n: n for n in ("none", "onednn", "jit", "compile")}
    with pytest.raises(NotImplementedError, match="subclasses of Optimizer must provide an optimize"):
        Optimizer().optimize(nn.Identity(), [torch.zeros(1)], label="x")


def test_onednn_leaves_a_module_on_another_device_unchanged():
    module = wide_mlp()
    assert OneDNNOptimizer().optimize(module, [torch.zeros(2, 16, device="meta")], label="wide") is module
    assert kinds(module) == ["Linear", "Linear", "Linear"]


# --- fallbacks: a failed optimisation serves the module as loaded ---------------------------------


def test_jit_whose_outputs_differ_falls_back_to_the_plain_module(monkeypatch, caplog):
    monkeypatch.setattr(jit.torch.jit, "optimize_for_inference", lambda m: torch.jit.script(nn.Identity()))
    module, runtime = runtime_for("mlp", "jit")
    with caplog.at_level(logging.WARNING, logger="inference.runtime"):
        runtime.load()
    assert runtime.optimizer_applied == "none" and isinstance(runtime.module, MLP)
    assert "mlp v1: optimizer jit not applied (its outputs differ from the plain module's at batch 2)" in caplog.text
    assert_plain_outputs(runtime, module)


def test_compile_that_fails_falls_back_to_the_plain_module(monkeypatch, caplog):
    def no_toolchain(*args, **kwargs):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\n(a long compiler log)")

    monkeypatch.setattr(compile.torch, "compile", no_toolchain)
    module, runtime = runtime_for("mlp", "compile")
    with caplog.at_level(logging.WARNING, logger="inference.runtime"):
        runtime.load()
    assert runtime.optimizer_applied == "none" and isinstance(runtime.module, MLP)
    assert "optimizer compile not applied (RuntimeError: InvalidCxxCompiler: No working C++ compiler found)" in caplog.text
    assert_plain_outputs(runtime, module)


def test_an_optimizer_that_raises_does_not_fail_the_load(monkeypatch, caplog):
    def broken(self, module, example_inputs, *, label):
        raise ValueError("a bug in an optimizer")

    monkeypatch.setattr(jit.JitOptimizer, "optimize", broken)
    module, runtime = runtime_for("mlp", "jit")
    with caplog.at_level(logging.WARNING, logger="inference.runtime"):
        runtime.load()
    assert runtime.ready and runtime.optimizer_applied == "none"
    assert "mlp v1: optimizer jit failed; serving the module as loaded" in caplog.text
    assert_plain_outputs(runtime, module)


class Unscriptable(nn.Module):
    """TorchScript cannot compile it (a generator expression); a trace of it works at any batch size."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 3)])

    def forward(self, x):
        return sum(layer(x)[:, :3] for layer in self.layers)


class BatchBound(Unscriptable):
    """Its trace keeps the example's batch size (a Python int taken from a shape)."""

    def forward(self, x):
        return super().forward(x) + torch.zeros(int(x.shape[0]), 1)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_jit_traces_a_module_it_cannot_script_and_checks_other_batch_sizes(caplog):
    x = [torch.randn(2, 4)]
    traced = jit.JitOptimizer().optimize(Unscriptable().eval(), x, label="traced v1")
    assert isinstance(traced, torch.jit.ScriptModule)
    bound = BatchBound().eval()
    with caplog.at_level(logging.WARNING, logger="inference.runtime"):
        assert jit.JitOptimizer().optimize(bound, x, label="bound v1") is bound
    assert "bound v1: optimizer jit not applied (its outputs differ from the plain module's at batch 1)" in caplog.text


# --- choosing one: settings.INFERENCE_OPTIMIZERS ----------------------------------------------------


def test_optimizer_for_looks_up_the_target_name_then_the_device_type(settings):
    settings.INFERENCE_OPTIMIZERS = {"cpu": "onednn", "big-cpu": "jit", "cuda": "compile"}
    assert optimizer_for(target_name="big-cpu", device_type="cpu") == "jit"
    assert optimizer_for(target_name="small-cpu", device_type="cpu") == "onednn"
    assert optimizer_for(target_name="gpu", device_type="cuda") == "compile"
    assert optimizer_for(target_name="apple", device_type="mps") == "none"
    settings.INFERENCE_OPTIMIZERS = {}
    assert optimizer_for(target_name="cpu", device_type="cpu") == "none"


def test_the_default_is_onednn_on_the_cpu():
    assert django_settings.INFERENCE_OPTIMIZERS == {"cpu": "onednn"}


@pytest.mark.django_db
def test_a_served_version_gets_its_targets_optimizer(settings):
    settings.INFERENCE_OPTIMIZERS = {"cpu": "onednn", "big-cpu": "jit"}
    HardwareTarget.objects.create(name="big-cpu", device_type="cpu")
    version = ready(small_mlp(0), config(hardware="big-cpu"), model_name="big")
    assert ServedVersion.from_version(version).spec.optimizer == "jit"


def test_an_unknown_optimizer_is_not_loaded():
    with pytest.raises(ModelNotReady, match="unknown optimizer 'fast' \\(one of none, onednn, jit, compile\\)"):
        runtime_for("mlp", "fast")[1].load()


def test_unknown_names_in_inference_optimizers_are_refused_at_start(tmp_path):
    from inference_platform import settings as settings_module

    assert settings_module._OPTIMIZER_NAMES == tuple(OPTIMIZERS)  # settings checks names without importing torch
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "INFERENCE_BROKER")}
    env.update(INFERENCE_DATA_DIR=str(tmp_path), INFERENCE_OPTIMIZERS="cpu=jit,big-cpu=fast",
               DJANGO_SETTINGS_MODULE="inference_platform.settings")
    proc = subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=Path(django_settings.BASE_DIR),
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "ImproperlyConfigured: INFERENCE_OPTIMIZERS names unknown optimizers {'big-cpu': 'fast'}; " \
           "the optimizers are none, onednn, jit, compile." in proc.stderr
