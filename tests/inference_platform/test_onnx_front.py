"""An ONNX model end to end through the real web server (granian + the front): v1 predict and the
Open Inference Protocol through tritonclient (JSON and binary tensors), answers equal to the
source models' (the PyTorch module it was exported from, the scikit-learn pipeline)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.http as triton

from tests.conftest import small_mlp
from tests.helpers import ready_version
from tests.inference.support import ROWS, forward, make_key
from tests.inference_platform.test_front import call
from tests.onnx_models import onnx_config, sklearn_iris_onnx, torch_onnx_bytes
from tests.processes import WebServer

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def test_onnx_models_over_v1_and_tritonclient(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    module = small_mlp(2)
    ready_version(torch_onnx_bytes(module), onnx_config(), model_name="mlp-onnx")
    pipe, sk_bytes = sklearn_iris_onnx()
    ready_version(sk_bytes, onnx_config(inputs=[{"name": "X", "datatype": "FP32", "shape": [4]}],
                                        outputs=[{"name": "probabilities", "datatype": "FP32", "shape": [3]}]),
                  model_name="sk-onnx")
    key = make_key("onnx", rate="100000/s")
    auth = {"Authorization": f"Api-Key {key}"}
    web = WebServer(settings.MEDIA_ROOT)
    web.start()
    try:
        body = json.dumps({"instances": ROWS}).encode()
        status, _, raw = call(web.url, "/api/v1/models/mlp-onnx/predict", data=body,
                              headers={**auth, "Content-Type": "application/json"})
        assert status == 200, raw
        np.testing.assert_allclose(json.loads(raw)["predictions"], forward(module, ROWS), rtol=1e-4, atol=1e-4)

        client = triton.InferenceServerClient(url=web.url.removeprefix("http://"), network_timeout=30)
        x = np.array(ROWS * 3, dtype=np.float32)
        for model, input_name, output_name, expected in (
            ("mlp-onnx", "input", "output", forward(module, x.tolist())),
            ("sk-onnx", "X", "probabilities", pipe.predict_proba(x)),
        ):
            for binary in (False, True):
                tensor = triton.InferInput(input_name, list(x.shape), "FP32")
                tensor.set_data_from_numpy(x, binary_data=binary)
                result = client.infer(model, [tensor], headers=dict(auth),  # tritonclient adds to the dict
                                      outputs=[triton.InferRequestedOutput(output_name, binary_data=binary)])
                got = result.as_numpy(output_name)
                assert got.shape == (len(x), 3) and got.dtype == np.float32, (model, binary)
                np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=f"{model} binary={binary}")
            metadata = client.get_model_metadata(model, headers=dict(auth))
            assert metadata["inputs"] == [{"name": input_name, "datatype": "FP32", "shape": [-1, 4]}]
    finally:
        web.stop()
