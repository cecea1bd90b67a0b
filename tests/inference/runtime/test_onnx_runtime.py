"""The ONNX runtime: outputs equal the source model's, threads and devices from the target, the
checks of the artifact on every load, warm-up, and onnxruntime imported only where it serves."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import onnxruntime
import pytest
from django.conf import settings

from inference.pipeline.served import ServedVersion, runtime_class
from inference.runtime.base import LoadSpec, ModelNotReady, Runtime
from inference.runtime.onnx_runtime import OnnxRuntime
from inference.runtime.pytorch import PyTorchRuntime
from registry.schemas import parse_tensor_schema
from tests.conftest import small_mlp
from tests.inference.support import ROWS, forward
from tests.onnx_models import graph_bytes, sklearn_iris_onnx, torch_onnx_bytes

IN = parse_tensor_schema([{"name": "input", "datatype": "FP32", "shape": [4]}], where="inputs")
OUT = parse_tensor_schema([{"name": "output", "datatype": "FP32", "shape": [3]}], where="outputs")


def onnx_spec(data: bytes, **changes) -> LoadSpec:
    fields = dict(label="onnx v1", read_artifact=lambda: data, format="onnx", inputs=IN, outputs=OUT,
                  sha256=hashlib.sha256(data).hexdigest())
    fields.update(changes)
    return LoadSpec(**fields)


def test_the_format_chooses_the_runtime_through_the_setting():
    assert settings.INFERENCE_RUNTIMES["onnx"] == "inference.runtime.onnx_runtime.OnnxRuntime"
    assert runtime_class("onnx") is OnnxRuntime and runtime_class("safetensors") is PyTorchRuntime
    assert issubclass(OnnxRuntime, Runtime) and issubclass(PyTorchRuntime, Runtime)


def test_outputs_equal_the_torch_modules_within_1e_4():
    module = small_mlp(3)
    runtime = OnnxRuntime(onnx_spec(torch_onnx_bytes(module)))
    runtime.load()
    assert runtime.ready and str(runtime.device) == "cpu"
    # The memory footprint: the graph's weights, as many bytes as the module's parameters.
    assert runtime.nbytes == sum(p.numel() * p.element_size() for p in module.parameters())
    for rows in (ROWS[:1], ROWS, ROWS * 7):  # batches of 1, 3 and 21 through the dynamic batch axis
        out = runtime.predict({"input": np.array(rows, dtype=np.float64)})  # cast to the declared FP32
        assert out["output"].dtype == np.float32 and out["output"].shape == (len(rows), 3)
        np.testing.assert_allclose(out["output"], forward(module, rows), rtol=1e-4, atol=1e-4)
    runtime.unload()
    assert not runtime.ready and runtime.session is None
    with pytest.raises(ModelNotReady, match="not loaded"):
        runtime.predict({"input": np.zeros((1, 4), np.float32)})


def test_outputs_equal_scikit_learns_predict_proba():
    pipe, data = sklearn_iris_onnx()
    spec = onnx_spec(data, inputs=parse_tensor_schema([{"name": "X", "datatype": "FP32", "shape": [4]}], where="i"),
                     outputs=parse_tensor_schema([{"name": "probabilities", "datatype": "FP32", "shape": [3]},
                                                  {"name": "label", "datatype": "INT64", "shape": []}], where="o"))
    runtime = OnnxRuntime(spec)
    runtime.load()
    x = np.array(ROWS, dtype=np.float32)
    out = runtime.predict({"X": x})
    np.testing.assert_allclose(out["probabilities"], pipe.predict_proba(x), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(out["label"], pipe.predict(x))


@pytest.mark.parametrize("threads", [1, 3])
def test_threads_per_session_follow_the_hardware_target(threads):
    runtime = OnnxRuntime(onnx_spec(torch_onnx_bytes(), cpu_threads=threads))
    runtime.load()
    options = runtime.session.get_session_options()
    assert options.intra_op_num_threads == threads and options.inter_op_num_threads == 1


def test_load_warms_up_once_unless_told_not_to(monkeypatch):
    calls = []
    real = OnnxRuntime.predict
    monkeypatch.setattr(OnnxRuntime, "predict", lambda self, inputs: calls.append(inputs) or real(self, inputs))
    OnnxRuntime(onnx_spec(torch_onnx_bytes())).load()
    assert [list(c) for c in calls] == [["input"]] and calls[0]["input"].shape == (1, 4)
    OnnxRuntime(onnx_spec(torch_onnx_bytes(), warmup=False)).load()
    assert len(calls) == 1


def test_cuda_is_not_ready_without_the_cuda_provider(monkeypatch):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ModelNotReady, match="^cuda not available"):
        OnnxRuntime(onnx_spec(torch_onnx_bytes(), device_type="cuda")).load()


def test_cuda_is_never_a_silent_fallback_to_the_cpu(monkeypatch):
    """A build that lists the CUDA provider but cannot start it (no GPU, no CUDA libraries): not ready."""
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(ModelNotReady, match="cuda"):
        OnnxRuntime(onnx_spec(torch_onnx_bytes(), device_type="cuda")).load()


def test_other_devices_are_not_ready():
    with pytest.raises(ModelNotReady, match="mps not available to the ONNX runtime"):
        OnnxRuntime(onnx_spec(torch_onnx_bytes(), device_type="mps")).load()


def test_every_load_checks_the_sha256_and_the_graph():
    data = torch_onnx_bytes()
    with pytest.raises(ModelNotReady, match="sha256 mismatch"):
        OnnxRuntime(onnx_spec(data, sha256="0" * 64)).load()
    with pytest.raises(ModelNotReady, match="outside the standard domains: com.example::MatMul"):
        OnnxRuntime(onnx_spec(graph_bytes(domain="com.example"))).load()
    with pytest.raises(ModelNotReady, match="external files"):
        OnnxRuntime(onnx_spec(graph_bytes(external=True))).load()
    with pytest.raises(ModelNotReady, match="Corrupt or truncated ONNX"):
        OnnxRuntime(onnx_spec(data[: len(data) // 2])).load()


def test_a_served_onnx_version_runs_its_pipelines():
    module = small_mlp(1)
    served = ServedVersion(onnx_spec(torch_onnx_bytes(module)), postprocess=[{"step": "softmax"}])
    served.load()
    predictions = served.predict_direct(ROWS)
    logits = forward(module, ROWS)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(predictions, expected, rtol=1e-4, atol=1e-5)


def test_onnxruntime_is_imported_only_by_a_process_that_serves_onnx():
    code = ("import sys, django; django.setup(); import inference.pool, inference.views, inference.validation; "
            "import inference.runtime.pytorch; print('onnxruntime' in sys.modules, 'onnx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=settings.BASE_DIR,
                         env={"DJANGO_SETTINGS_MODULE": "inference_platform.settings", "PATH": "/usr/bin:/bin"},
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]
