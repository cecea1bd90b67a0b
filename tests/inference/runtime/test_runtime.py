"""The PyTorch runtime: devices (never a silent fallback), threads per target, warm-up."""

from __future__ import annotations

import io
import threading

import numpy as np
import pytest
import torch

from inference.pool import get_pool
from inference.runtime import devices, pytorch
from inference.runtime.base import ModelNotReady
from inference.runtime.pytorch import LoadSpec, PyTorchRuntime
from registry.models import HardwareTarget, ModelVersion
from registry.schemas import parse_tensor_schema
from registry.services import model_version_register
from tests.conftest import safetensors_bytes, small_mlp
from tests.inference.support import ROWS, config, error_of, forward, ready

# --- devices -------------------------------------------------------------------------------------


def test_cuda_is_not_ready_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelNotReady, match="^cuda not available$"):
        devices.check_available("cuda")
    with pytest.raises(ModelNotReady, match="cuda not available"):
        devices.check_available("cuda", 1)


def test_cuda_device_index_is_checked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    devices.check_available("cuda", 0)  # one GPU: cuda:0 exists
    with pytest.raises(ModelNotReady, match=r"cuda:1 not available \(1 GPU\(s\) here\)"):
        devices.check_available("cuda", 1)


def test_other_devices(monkeypatch):
    devices.check_available("cpu")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ModelNotReady, match="mps not available"):
        devices.check_available("mps")
    with pytest.raises(ModelNotReady, match="unknown device type 'tpu'"):
        devices.check_available("tpu")
    assert devices.device_string("cuda", 2) == "cuda:2"
    assert devices.device_string("cpu") == "cpu"


# --- the runtime ---------------------------------------------------------------------------------

SPECS_IN = parse_tensor_schema([{"name": "input", "datatype": "FP32", "shape": [4]}], where="inputs")
SPECS_OUT = parse_tensor_schema([{"name": "output", "datatype": "FP32", "shape": [3]}], where="outputs")


def spec_for(module: torch.nn.Module, **changes) -> LoadSpec:
    data = safetensors_bytes(module)
    fields = dict(
        label="test v1",
        read_artifact=lambda: data,
        format="safetensors",
        inputs=SPECS_IN,
        outputs=SPECS_OUT,
        architecture="registry.architectures.MLP",
        architecture_args={"in_features": 4, "hidden": [8], "out_features": 3},
    )
    fields.update(changes)
    return LoadSpec(**fields)


@pytest.fixture
def forwards(monkeypatch):
    """Record every forward pass of modules the runtime loads: (thread name, input shape, torch threads)."""
    seen: list[tuple[str, tuple, int]] = []
    real = pytorch.load_module

    def spying_load_module(*args, **kwargs):
        module = real(*args, **kwargs)

        def hook(mod, inputs, output):
            seen.append((threading.current_thread().name, tuple(inputs[0].shape), torch.get_num_threads()))

        module.register_forward_hook(hook)
        return module

    monkeypatch.setattr(pytorch, "load_module", spying_load_module)
    return seen


def test_load_warms_up_with_one_forward(forwards):
    module = small_mlp(0)
    runtime = PyTorchRuntime(spec_for(module))
    assert not runtime.ready
    runtime.load()
    assert runtime.ready
    assert [shape for _, shape, _ in forwards] == [(1, 4)]  # the warm-up: zeros of the declared shape
    out = runtime.predict({"input": np.array(ROWS, np.float32)})
    np.testing.assert_allclose(out["output"], forward(module, ROWS), rtol=1e-5, atol=1e-6)
    assert len(forwards) == 2
    assert runtime.nbytes == sum(p.numel() * 4 for p in module.parameters())


def test_no_warm_up_when_switched_off(forwards):
    runtime = PyTorchRuntime(spec_for(small_mlp(0), warmup=False))
    runtime.load()
    assert runtime.ready and forwards == []


def test_unload_makes_the_runtime_not_ready():
    runtime = PyTorchRuntime(spec_for(small_mlp(0), warmup=False))
    runtime.load()
    runtime.unload()
    assert not runtime.ready and runtime.module is None
    with pytest.raises(ModelNotReady, match="not loaded"):
        runtime.predict({"input": np.zeros((1, 4), np.float32)})


def test_a_cuda_runtime_never_falls_back_to_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    read = []
    runtime = PyTorchRuntime(spec_for(small_mlp(0), device_type="cuda", read_artifact=lambda: read.append(1) or b""))
    with pytest.raises(ModelNotReady, match="cuda not available"):
        runtime.load()
    assert not runtime.ready and runtime.module is None
    assert read == []  # refused before the artifact was even read


def test_an_unreadable_or_tampered_artifact_is_not_ready():
    def unreadable() -> bytes:
        raise FileNotFoundError("artifact gone")

    with pytest.raises(ModelNotReady, match="cannot be read"):
        PyTorchRuntime(spec_for(small_mlp(0), read_artifact=unreadable)).load()
    with pytest.raises(ModelNotReady, match="test v1"):
        PyTorchRuntime(spec_for(small_mlp(0), sha256="0" * 64)).load()


# --- through the pool and the API ------------------------------------------------------------------


@pytest.mark.django_db
def test_a_cuda_version_on_a_machine_without_cuda_is_503_not_ready(api, key, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    HardwareTarget.objects.create(name="gpu", device_type="cuda", device_index=0)
    # registered and validated through the registry (validation runs on the CPU, in its subprocess)
    version = model_version_register(
        model_name="gpu-model",
        artifact=io.BytesIO(safetensors_bytes(small_mlp(0))),
        config=config(hardware="gpu"),
        aliases=["production"],
    )
    assert version.status == ModelVersion.Status.READY
    loads = []
    real = pytorch.load_module
    monkeypatch.setattr(pytorch, "load_module", lambda *a, **k: loads.append(1) or real(*a, **k))
    for _ in range(2):
        r = api.post("/api/v1/models/gpu-model/predict", {"instances": ROWS}, key)
        assert r.status_code == 503
        err = error_of(r)
        assert err["code"] == "model_not_ready"
        assert "model not ready: cuda not available" in err["message"]
        assert int(r["Retry-After"]) >= 1
        assert err["details"] == {"model": "gpu-model", "version": 1}
    assert loads == []  # nothing was loaded, on the CPU or anywhere
    pool = get_pool()
    assert pool.cache.keys() == []
    assert (version.pk, "cuda:0") in pool.cache._failures  # remembered: the burst did not retry


@pytest.mark.django_db
@pytest.mark.parametrize("threads", [1, 3])
def test_the_targets_cpu_threads_apply_to_every_forward(api, key, forwards, threads):
    # A forward runs on the batcher thread, or inline in the request thread when the
    # batcher is idle; either way with the target's thread count.
    HardwareTarget.objects.create(name=f"cpu-{threads}", device_type="cpu", cpu_threads=threads)
    module = small_mlp(0)
    ready(module, config(hardware=f"cpu-{threads}"), model_name="threads", aliases=["production"])
    r = api.post("/api/v1/models/threads/predict", {"instances": ROWS}, key)
    assert r.status_code == 200
    np.testing.assert_allclose(r.json()["predictions"], forward(module, ROWS), rtol=1e-5, atol=1e-6)
    # something else in the process changes torch's thread count between requests
    torch.set_num_threads(threads + 1)
    assert api.post("/api/v1/models/threads/predict", {"instances": ROWS[:2]}, key).status_code == 200
    in_batcher = [(name, n) for name, shape, n in forwards if shape[0] in (2, 3)]
    assert len(in_batcher) == 2
    for _name, n in in_batcher:
        assert n == threads
    # the loading request ran the warm-up forward first
    assert forwards[0][1] == (1, 4)


@pytest.mark.django_db
def test_a_version_is_loaded_once_and_reused(api, key, iris, forwards):
    for _ in range(3):
        assert api.post("/api/v1/models/iris/predict", {"instances": ROWS}, key).status_code == 200
    pool = get_pool()
    assert pool.cache.loads == 1
    assert [shape for _, shape, _ in forwards] == [(1, 4), (3, 4), (3, 4), (3, 4)]
    assert api.post("/api/v1/models/iris/versions/staging/predict", {"instances": ROWS}, key).status_code == 200
    assert pool.cache.loads == 2
