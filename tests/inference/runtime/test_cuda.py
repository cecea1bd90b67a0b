"""CUDA serving paths on a real GPU (`pytest -m cuda`; deselected by default, run on a GPU host).

The CPU-only behaviour of the same code (a cuda target answers 503 "cuda not available")
is tested in the default run.
"""

from __future__ import annotations

import io
import json
import threading

import numpy as np
import pytest
import torch

from inference.pool import get_pool, reset_pool
from registry import services
from registry.models import HardwareTarget
from tests.conftest import IRIS_CONFIG, safetensors_bytes, small_mlp

pytestmark = [pytest.mark.cuda, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def _fresh_pool(settings):
    settings.ALLOWED_HOSTS = ["testserver"]
    reset_pool()
    yield
    reset_pool()


def _register(name: str, target: str) -> None:
    config = json.loads(json.dumps(IRIS_CONFIG))
    config["hardware"] = target
    config["batching"] = {"max_batch_size": 16, "max_batch_delay_ms": 5}
    services.model_version_register(
        model_name=name, artifact=io.BytesIO(safetensors_bytes(small_mlp())), config=config, aliases=["production"]
    )


def _client():
    from django.test import Client

    from inference.keys import api_key_create

    _, plain = api_key_create(name="gpu-test")
    return Client(HTTP_AUTHORIZATION=f"Api-Key {plain}")


def test_cuda_target_serves_on_the_gpu_with_cpu_equal_predictions():
    assert torch.cuda.is_available(), "run this marker on a GPU host"
    HardwareTarget.objects.create(name="gpu0", device_type="cuda", device_index=0)
    _register("mlp-gpu", "gpu0")
    _register("mlp-cpu", "cpu")
    client = _client()
    x = np.random.default_rng(0).standard_normal((8, 4)).round(3).tolist()
    body = json.dumps({"instances": x})
    gpu = client.post("/api/v1/models/mlp-gpu/predict", body, content_type="application/json")
    cpu = client.post("/api/v1/models/mlp-cpu/predict", body, content_type="application/json")
    assert gpu.status_code == 200, gpu.content
    assert cpu.status_code == 200, cpu.content
    np.testing.assert_allclose(gpu.json()["predictions"], cpu.json()["predictions"], atol=1e-4)
    entries = {served.model_name: served for _, e in get_pool().cache.entries() for served in [e.served]}
    assert entries["mlp-gpu"].runtime.device.type == "cuda"
    assert next(entries["mlp-gpu"].runtime.module.parameters()).is_cuda
    assert entries["mlp-cpu"].runtime.device.type == "cpu"


def test_missing_gpu_index_is_not_ready_not_moved():
    assert torch.cuda.is_available(), "run this marker on a GPU host"
    index = torch.cuda.device_count()
    HardwareTarget.objects.create(name="gpu-missing", device_type="cuda", device_index=index)
    _register("mlp-missing", "gpu-missing")
    response = _client().post(
        "/api/v1/models/mlp-missing/predict", json.dumps({"instances": [[0, 0, 0, 0]]}), content_type="application/json"
    )
    assert response.status_code == 503
    assert f"cuda:{index} not available" in response.json()["error"]["message"]
    assert response["Retry-After"]


def test_gpu_batcher_forms_batches_and_answers_each_caller():
    assert torch.cuda.is_available(), "run this marker on a GPU host"
    HardwareTarget.objects.create(name="gpu0", device_type="cuda", device_index=0)
    _register("mlp-gpu", "gpu0")
    client = _client()
    reference = small_mlp()
    results: dict[int, list] = {}
    errors: list = []

    def call(i: int) -> None:
        try:
            x = [[float(i), 1.0, -1.0, 0.5]]
            r = client.post("/api/v1/models/mlp-gpu/predict", json.dumps({"instances": x}), content_type="application/json")
            assert r.status_code == 200, r.content
            results[i] = r.json()["predictions"][0]
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with torch.inference_mode():
        for i, pred in results.items():
            expected = reference(torch.tensor([[float(i), 1.0, -1.0, 0.5]])).numpy()[0]
            np.testing.assert_allclose(pred, expected, atol=1e-4)
    (_, entry), = get_pool().cache.entries()
    assert entry.batcher.stats.request_count >= 32
