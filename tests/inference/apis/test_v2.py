"""The Open Inference Protocol with a real client: tritonclient.http against a live server.

The server is pytest-django's live_server (a real HTTP server in a thread, on the test
database); every call goes through tritonclient as a Triton or KServe user would make it.
"""

from __future__ import annotations

import base64
import json
import struct
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from registry.models import HardwareTarget
from tests.helpers import TwoTowerNet
from tests.inference.support import ROWS, config, forward, make_key, ready, register_demo

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

TWO_TOWER = "tests.helpers.TwoTowerNet"


@pytest.fixture
def client(live_server):
    return triton.InferenceServerClient(url=live_server.url.removeprefix("http://"), network_timeout=30)


@pytest.fixture
def auth(db) -> dict:
    return {"Authorization": f"Api-Key {make_key('triton', rate='100000/s')}"}


def h(auth: dict) -> dict:
    return dict(auth)  # tritonclient writes into the headers dict it is given


@pytest.fixture
def mlp(db):
    from tests.conftest import small_mlp

    module = small_mlp(0)
    ready(module, model_name="mlp", aliases=["production"])
    return module


@pytest.fixture
def two_tower(db, settings):
    settings.INFERENCE_ARCHITECTURES = [*settings.INFERENCE_ARCHITECTURES, TWO_TOWER]
    module = TwoTowerNet().eval()
    cfg = config(
        architecture=TWO_TOWER, architecture_args={},
        inputs=[{"name": "a", "datatype": "FP32", "shape": [2]}, {"name": "b", "datatype": "INT64", "shape": [3]}],
        outputs=[{"name": "score", "datatype": "FP32", "shape": [2]}, {"name": "hidden", "datatype": "FP32", "shape": [8]}],
    )
    ready(module, cfg, model_name="towers", aliases=["production"])
    return module


def _input(name: str, arr: np.ndarray, datatype: str, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput(name, list(arr.shape), datatype)
    tensor.set_data_from_numpy(arr, binary_data=binary)
    return tensor


X = np.array(ROWS, dtype=np.float32)


def test_server_metadata_and_health(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "inference-platform" and "binary_tensor_data" in meta["extensions"]


def test_model_metadata_and_readiness(client, auth, mlp, two_tower):
    meta = client.get_model_metadata("towers", headers=h(auth))
    assert meta["platform"] == "pytorch" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "a", "datatype": "FP32", "shape": [-1, 2]},
                              {"name": "b", "datatype": "INT64", "shape": [-1, 3]}]
    assert [o["name"] for o in meta["outputs"]] == ["score", "hidden"]
    assert client.get_model_metadata("mlp", model_version="1", headers=h(auth))["inputs"][0]["shape"] == [-1, 4]
    assert client.is_model_ready("mlp", headers=h(auth))
    assert client.is_model_ready("mlp", model_version="production", headers=h(auth))


def test_a_model_whose_device_is_missing_is_not_ready(client, auth):
    from tests.conftest import small_mlp

    HardwareTarget.objects.create(name="gpu", device_type="cuda")
    ready(small_mlp(0), config(hardware="gpu"), model_name="gpu-mlp", aliases=["production"])
    if torch.cuda.is_available():  # on a GPU host this model is ready; the CPU-only case is the point here
        assert client.is_model_ready("gpu-mlp", headers=h(auth))
    else:
        assert not client.is_model_ready("gpu-mlp", headers=h(auth))
        with pytest.raises(InferenceServerException) as info:
            client.infer("gpu-mlp", [_input("input", X, "FP32", True)], headers=h(auth))
        assert info.value.status() == "503" and "cuda not available" in info.value.message()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_one_input_model(client, auth, mlp, binary):
    result = client.infer("mlp", [_input("input", X, "FP32", binary)], headers=h(auth),
                          outputs=[triton.InferRequestedOutput("output", binary_data=binary)])
    np.testing.assert_allclose(result.as_numpy("output"), forward(mlp, ROWS), rtol=1e-5, atol=1e-6)
    assert result.get_response()["model_name"] == "mlp" and result.get_response()["model_version"] == "1"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_two_inputs_and_requested_output_subsets(client, auth, two_tower, binary):
    a = np.array([[0.5, -1.0], [2.0, 0.25]], dtype=np.float32)
    b = np.array([[1, 2, 3], [0, -4, 7]], dtype=np.int64)
    inputs = [_input("a", a, "FP32", binary), _input("b", b, "INT64", binary)]
    with torch.inference_mode():
        score, hidden = two_tower(torch.from_numpy(a), torch.from_numpy(b))
    everything = client.infer("towers", inputs, headers=h(auth), request_id="req-7")
    assert everything.get_response()["id"] == "req-7"
    np.testing.assert_allclose(everything.as_numpy("score"), score.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(everything.as_numpy("hidden"), hidden.numpy(), rtol=1e-5, atol=1e-6)
    only = client.infer("towers", inputs, headers=h(auth),
                        outputs=[triton.InferRequestedOutput("hidden", binary_data=binary)])
    assert [o["name"] for o in only.get_response()["outputs"]] == ["hidden"]
    assert only.as_numpy("score") is None


def _v1(live_server, auth, model: str, instances: list) -> list:
    request = urllib.request.Request(
        f"{live_server.url}/api/v1/models/{model}/predict", data=json.dumps({"instances": instances}).encode(),
        headers={**auth, "Content-Type": "application/json"},
    )
    return json.loads(urllib.request.urlopen(request).read())["predictions"]


IRIS_LABELS = ["setosa", "versicolor", "virginica"]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value  # tritonclient: bytes if binary, else str


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_a_classifier_answers_fp32_probabilities_and_labels_equal_to_v1(client, auth, iris_demo, live_server, binary):
    """softmax -> labels -> round: v2 answers the softmax's FP32 tensor plus an `output_label` BYTES
    output (not one JSON string per row); the metadata lists exactly those outputs."""
    register_demo(iris_demo)
    v2 = client.infer("iris", [_input("input", X, "FP32", binary)], headers=h(auth),
                      outputs=[triton.InferRequestedOutput("output", binary_data=binary),
                               triton.InferRequestedOutput("output_label", binary_data=binary)])
    probabilities, labels = v2.as_numpy("output"), v2.as_numpy("output_label")
    from_v1 = _v1(live_server, auth, "iris", ROWS)
    assert probabilities.dtype == np.float32 and probabilities.shape == (3, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probabilities.max(axis=1), [p["score"] for p in from_v1], atol=5e-5)  # v1 rounds to 4
    assert [IRIS_LABELS[i] for i in probabilities.argmax(axis=1)] == [p["label"] for p in from_v1]
    assert [_text(v) for v in labels] == [p["label"] for p in from_v1] == ["setosa", "virginica", "versicolor"]
    meta = client.get_model_metadata("iris", headers=h(auth))
    assert meta["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 3]},
                               {"name": "output_label", "datatype": "BYTES", "shape": [-1]}]
    everything = client.infer("iris", [_input("input", X, "FP32", binary)], headers=h(auth)).get_response()["outputs"]
    assert [(o["name"], o["datatype"], o["shape"][1:]) for o in everything] == [
        (o["name"], o["datatype"], o["shape"][1:]) for o in meta["outputs"]]


def _classes(strings: np.ndarray) -> list[list[tuple[float, int, str]]]:
    return [[(float(v), int(i), rest[0] if rest else None)
             for v, i, *rest in (_text(s).split(":") for s in row)] for row in strings]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_extension_answers_score_index_label_strings(client, auth, iris_demo, mlp, live_server, binary):
    """Triton's classification extension: InferRequestedOutput(class_count=k) -> BYTES [batch, k] of
    "value:index:label", best first; "value:index" for a model without labels."""
    register_demo(iris_demo)
    probabilities = client.infer("iris", [_input("input", X, "FP32", True)], headers=h(auth)).as_numpy("output")
    result = client.infer("iris", [_input("input", X, "FP32", binary)], headers=h(auth),
                          outputs=[triton.InferRequestedOutput("output", binary_data=binary, class_count=2)])
    top2 = result.as_numpy("output")
    assert top2.shape == (3, 2) and result.get_response()["outputs"][0]["datatype"] == "BYTES"
    classes = _classes(top2)
    best_first = np.argsort(-probabilities, axis=1, kind="stable")[:, :2]
    assert [[i for _, i, _ in row] for row in classes] == best_first.tolist()
    assert [[label for _, _, label in row] for row in classes] == [[IRIS_LABELS[i] for i in r] for r in best_first]
    np.testing.assert_allclose([[v for v, _, _ in row] for row in classes],
                               np.take_along_axis(probabilities, best_first, axis=1), rtol=1e-6)
    assert [row[0][2] for row in classes] == [p["label"] for p in _v1(live_server, auth, "iris", ROWS)]
    # more classes than the model has: all of them; a model without labels: "value:index"
    everything = client.infer("iris", [_input("input", X, "FP32", binary)], headers=h(auth),
                              outputs=[triton.InferRequestedOutput("output", binary_data=binary, class_count=9)])
    assert everything.as_numpy("output").shape == (3, 3)
    raw = client.infer("mlp", [_input("input", X, "FP32", binary)], headers=h(auth),
                       outputs=[triton.InferRequestedOutput("output", binary_data=binary, class_count=1)])
    logits = forward(mlp, ROWS)
    assert [[(i, label) for _, i, label in row] for row in _classes(raw.as_numpy("output"))] == [
        [(int(i), None)] for i in logits.argmax(axis=1)]
    for bad in (0, "two", True):
        body = json.dumps({"inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP32", "data": ROWS}],
                           "outputs": [{"name": "output", "parameters": {"classification": bad}}]}).encode()
        status, answer = _raw(live_server, auth, body)
        assert status == 400 and "classification" in answer["error"], (bad, answer)
    assert "classification" in client.get_server_metadata()["extensions"]


def test_an_image_model_takes_raw_png_bytes(client, auth, digits_demo, live_server):
    """softmax -> topk -> labels: v2 answers the FP32 probabilities and each image's top label."""
    from inference.demo import digit_png_base64, digits_split

    register_demo(digits_demo)
    _, _, images, labels = digits_split()
    pngs = np.array([base64.b64decode(digit_png_base64(x)) for x in images[:20]], dtype=np.object_)
    result = client.infer("digits", [_input("image", pngs, "BYTES", True)], headers=h(auth))
    probabilities = result.as_numpy("logits")
    assert probabilities.dtype == np.float32 and probabilities.shape == (20, 10)
    best = [_text(v) for v in result.as_numpy("logits_label")]
    assert best == [str(i) for i in probabilities.argmax(axis=1)]
    assert sum(b == str(y) for b, y in zip(best, labels[:20])) >= 18
    from_v1 = _v1(live_server, auth, "digits", [digit_png_base64(x) for x in images[:20]])
    assert best == [top[0]["label"] for top in from_v1]


def test_errors_unknown_model_bad_shape_and_auth(client, auth, mlp):
    cases = [
        (lambda: client.infer("nope", [_input("input", X, "FP32", True)], headers=h(auth)), "404", "nope"),
        (lambda: client.infer("mlp", [_input("input", X, "FP32", True)], model_version="9", headers=h(auth)), "404", "9"),
        (lambda: client.infer("mlp", [_input("input", X[:, :3].copy(), "FP32", True)], headers=h(auth)), "400", "shape"),
        (lambda: client.infer("mlp", [_input("wrong", X, "FP32", True)], headers=h(auth)), "400", "input"),
        (lambda: client.infer("mlp", [_input("input", X.astype(np.float64), "FP64", True)], headers=h(auth)), "400", "FP32"),
        (lambda: client.infer("mlp", [_input("input", X, "FP32", True)]), "401", "API key"),
        (lambda: client.infer("mlp", [_input("input", X, "FP32", True)], headers={"Authorization": "Api-Key x.y"}),
         "401", "Invalid"),
        (lambda: client.get_model_metadata("mlp"), "401", "API key"),
    ]
    for call, status, words in cases:
        with pytest.raises(InferenceServerException) as info:
            call()
        assert info.value.status() == status, (status, info.value.message())
        assert words in info.value.message()
    # the server still answers the next good request
    assert client.infer("mlp", [_input("input", X, "FP32", True)], headers=h(auth)).as_numpy("output").shape == (3, 3)


def _raw(live_server, auth, body: bytes, header_length: int | None = None, model: str = "mlp") -> tuple[int, dict]:
    headers = {**auth}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = str(header_length)
    request = urllib.request.Request(f"{live_server.url}/v2/models/{model}/infer", data=body, headers=headers)
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_shapes_and_binary_headers_that_lie_are_400_before_allocation(live_server, auth, mlp):
    def header(inputs: list) -> bytes:
        return json.dumps({"inputs": inputs}).encode()

    huge = header([{"name": "input", "shape": [1_000_000_000, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}])
    status, body = _raw(live_server, auth, huge)
    assert status == 400 and "holds 4000000000 elements, the data has 4" in body["error"]
    payload = np.ones((2, 4), np.float32).tobytes()
    lying_size = header([{"name": "input", "shape": [2, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}])
    status, body = _raw(live_server, auth, lying_size + payload[:16], len(lying_size))
    assert status == 400 and "needs 32 bytes" in body["error"]
    past_end = header([{"name": "input", "shape": [2, 4], "datatype": "FP32", "parameters": {"binary_data_size": 320}}])
    status, body = _raw(live_server, auth, past_end + payload, len(past_end))
    assert status == 400 and "past the end" in body["error"]
    status, body = _raw(live_server, auth, past_end + payload, 10_000)
    assert status == 400 and "Inference-Header-Content-Length" in body["error"]
    bytes_claim = header([{"name": "input", "shape": [10**9], "datatype": "BYTES", "parameters": {"binary_data_size": 8}}])
    status, body = _raw(live_server, auth, bytes_claim + struct.pack("<I", 4) + b"abcd", len(bytes_claim))
    assert status == 400 and "cannot hold" in body["error"]
    status, body = _raw(live_server, auth, b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]
    good = header([{"name": "input", "shape": [2, 4], "datatype": "FP32", "parameters": {"binary_data_size": 32}}])
    status, body = _raw(live_server, auth, good + payload, len(good))
    assert status == 200 and body["outputs"][0]["shape"] == [2, 3]


def test_the_tritonclient_snippet_in_the_docs_gets_predictions(live_server, auth, iris_demo, capsys):
    import re
    from pathlib import Path

    from django.conf import settings

    register_demo(iris_demo)
    text = (Path(settings.BASE_DIR) / "docs" / "clients.md").read_text()
    snippet = re.search(r"<!-- snippet: tritonclient -->\s*```python\n(.*?)```", text, re.S).group(1)
    key = auth["Authorization"].split()[1]
    code = snippet.replace("127.0.0.1:8000", live_server.url.removeprefix("http://")).replace("YOUR_KEY", key)
    exec(compile(code, "docs/clients.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "setosa" in printed and "virginica" in printed
