"""End to end with the real demo models: trained, registered through the registry (validated in
its subprocess), served over the v1 API; the answers checked against the datasets' own labels."""

from __future__ import annotations

import numpy as np
import pytest

from inference.demo import digit_png_base64, digits_split

from .support import make_key, register_demo

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo_key() -> str:
    return make_key("demo", rate="1000/s")


def test_iris_answers_the_species_of_dataset_rows(api, iris_demo, demo_key):
    from sklearn.datasets import load_iris

    version = register_demo(iris_demo)
    assert version.status == "ready" and version.version == 1
    data = load_iris()
    rows = list(range(0, 150, 5))  # 30 rows, 10 of each species
    instances = data.data[rows].tolist()
    truth = [str(data.target_names[t]) for t in data.target[rows]]

    r = api.post("/api/v1/models/iris/predict", {"instances": instances}, demo_key)
    assert r.status_code == 200, r.content
    body = r.json()
    assert (body["model"], body["version"]) == ("iris", 1)
    predictions = body["predictions"]
    assert len(predictions) == 30
    assert all(set(p) == {"label", "score"} and 0 < p["score"] <= 1 for p in predictions)
    labels = [p["label"] for p in predictions]
    assert set(labels) <= set(map(str, data.target_names))
    accuracy = np.mean([a == b for a, b in zip(labels, truth, strict=True)])
    assert accuracy >= 0.9, list(zip(labels, truth, strict=True))

    # one row at a time gives the same answers as the batch
    for i in (0, 10, 20):
        single = api.post("/api/v1/models/iris/predict", {"instances": [instances[i]]}, demo_key).json()
        assert single["predictions"] == [predictions[i]]


def test_iris_onnx_is_scikit_learns_model_served_by_the_onnx_runtime(api, iris_onnx_demo, demo_key):
    from sklearn.datasets import load_iris

    from inference.pool import get_pool
    from inference.runtime.onnx_runtime import OnnxRuntime

    version = register_demo(iris_onnx_demo)  # validated in its subprocess: the graph checked against the config
    assert (version.status, version.format, version.model.name) == ("ready", "onnx", "iris-onnx")
    data = load_iris()
    rows = list(range(0, 150, 5))
    x = data.data[rows]
    r = api.post("/api/v1/models/iris-onnx/predict", {"instances": x.tolist()}, demo_key)
    assert r.status_code == 200, r.content
    predictions = r.json()["predictions"]
    assert isinstance(get_pool().loaded(version).served.runtime, OnnxRuntime)
    # The same answers as the scikit-learn pipeline it was converted from.
    proba = iris_onnx_demo.source.predict_proba(x.astype(np.float32))
    assert [p["label"] for p in predictions] == [str(data.target_names[i]) for i in proba.argmax(1)]
    np.testing.assert_allclose([p["score"] for p in predictions], proba.max(1), atol=1e-4)
    truth = [str(data.target_names[t]) for t in data.target[rows]]
    assert np.mean([p["label"] == t for p, t in zip(predictions, truth, strict=True)]) >= 0.9


def test_digits_answers_held_out_handwritten_digits(api, digits_demo, demo_key):
    register_demo(digits_demo)
    _, _, images, targets = digits_split()  # the held-out 20% the model never saw
    images, targets = images[:50], targets[:50]
    pngs = [digit_png_base64(img) for img in images]

    r = api.post("/api/v1/models/digits/predict", {"instances": pngs[:25]}, demo_key)
    assert r.status_code == 200, r.content
    predictions = r.json()["predictions"]
    for png in pngs[25:]:  # and one image per request
        one = api.post("/api/v1/models/digits/versions/production/predict", {"instances": [png]}, demo_key)
        assert one.status_code == 200
        predictions += one.json()["predictions"]

    assert len(predictions) == 50
    for top in predictions:  # top 3 by default, best first, labelled
        assert len(top) == 3
        assert [set(item) for item in top] == [{"index", "score", "label"}] * 3
        assert [item["label"] for item in top] == [str(item["index"]) for item in top]
        scores = [item["score"] for item in top]
        assert scores == sorted(scores, reverse=True)
    best = [int(top[0]["label"]) for top in predictions]
    accuracy = np.mean(np.array(best) == targets)
    assert accuracy >= 0.9, accuracy

    r = api.post("/api/v1/models/digits/predict", {"instances": pngs[:10], "parameters": {"top_k": 1}}, demo_key)
    assert r.status_code == 200
    top1 = r.json()["predictions"]
    assert [len(top) for top in top1] == [1] * 10
    assert [top[0]["label"] for top in top1] == [top[0]["label"] for top in predictions[:10]]

    r = api.post("/api/v1/models/digits/predict", {"instances": pngs[:1], "parameters": {"top_k": 0}}, demo_key)
    assert r.status_code == 400
    assert r.json()["error"]["details"]["path"] == "parameters.top_k"

    r = api.post("/api/v1/models/digits/predict", {"instances": [pngs[0], "not an image"]}, demo_key)
    assert r.status_code == 400
    assert r.json()["error"]["details"]["path"].startswith("instances[1]")
