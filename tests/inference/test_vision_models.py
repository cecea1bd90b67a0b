"""torchvision networks end to end: a ResNet-18 (weights from a seed, saved as safetensors)
registered through the registry service, validated in its subprocess on an example image through
the whole pipeline (decode, resize, center crop, ImageNet normalisation), then served over v1 and
v2 with PNG and JPEG images of other sizes than the model's."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from inference.pipeline.base import Pipeline, StepContext
from registry.architectures import ResNet18, ResNet50
from tests.conftest import safetensors_bytes

from .support import make_key

pytestmark = pytest.mark.django_db

LABELS = ["tench", "goldfish", "shark", "tiger shark", "hammerhead", "electric ray", "stingray", "cock", "hen",
          "ostrich"]
PREPROCESS = [
    {"step": "image", "mode": "RGB"},
    {"step": "resize", "size": 256},
    {"step": "center_crop", "size": 224},
    {"step": "normalize", "preset": "imagenet"},
]


def photo(width: int, height: int, fmt: str = "PNG", seed: int = 0) -> str:
    """A smooth random picture, base64-encoded as the image step takes it."""
    small = (np.random.default_rng(seed).random((8, 8, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def vision_config(architecture: str, num_classes: int, **changes) -> dict:
    cfg = {
        "format": "safetensors",
        "architecture": f"registry.architectures.{architecture}",
        "architecture_args": {"num_classes": num_classes},
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [3, 224, 224]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [num_classes]}],
        "preprocess": PREPROCESS,
        "postprocess": [{"step": "softmax"}, {"step": "topk", "k": 3}, {"step": "labels", "labels": LABELS}],
        "batching": {"max_batch_size": 8, "max_batch_delay_ms": 2},
        "hardware": "cpu",
    }
    cfg.update(changes)
    return cfg


def register(name: str, module: torch.nn.Module, config: dict):
    from registry.services import model_version_register

    return model_version_register(model_name=name, artifact=io.BytesIO(safetensors_bytes(module)), config=config,
                                  aliases=["production"], task="image-classification")


def expected_probabilities(module: torch.nn.Module, images: list[str]) -> np.ndarray:
    """What the module computes on the images as the pipeline prepares them (in this process)."""
    arr = np.empty(len(images), dtype=object)
    arr[:] = images
    x = Pipeline(PREPROCESS, stage="preprocess")({"image": arr}, StepContext())["image"]
    with torch.inference_mode():
        return torch.softmax(module(torch.from_numpy(x)), dim=1).numpy()


def test_resnet18_from_a_state_dict_registers_validates_and_answers_v1_and_v2(api):
    torch.manual_seed(0)
    module = ResNet18(num_classes=10).eval()
    version = register("resnet18", module, vision_config("ResNet18", 10, example=photo(320, 240, "JPEG")))
    assert (version.status, version.status_error) == ("ready", "")  # validated on the example image, in its subprocess
    key = make_key("vision", rate="1000/s")
    images = [photo(300, 200, "PNG", seed=1), photo(180, 240, "JPEG", seed=2)]  # landscape and portrait
    expected = expected_probabilities(module, images)

    r = api.post("/api/v1/models/resnet18/predict", {"instances": images}, key)
    assert r.status_code == 200, r.content
    predictions = r.json()["predictions"]
    assert len(predictions) == 2 and [len(top) for top in predictions] == [3, 3]
    for top, probabilities in zip(predictions, expected, strict=True):
        best = np.argsort(-probabilities, kind="stable")[:3]
        assert [item["index"] for item in top] == best.tolist()
        assert [item["label"] for item in top] == [LABELS[i] for i in best]
        np.testing.assert_allclose([item["score"] for item in top], probabilities[best], atol=1e-5)

    r = api.post("/v2/models/resnet18/infer", {"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
                                                           "data": images}]}, key)
    assert r.status_code == 200, r.content
    outputs = {o["name"]: o for o in r.json()["outputs"]}
    assert (outputs["logits"]["datatype"], outputs["logits"]["shape"]) == ("FP32", [2, 10])
    probabilities = np.array(outputs["logits"]["data"], dtype=np.float32).reshape(2, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert outputs["logits_label"]["data"] == [LABELS[i] for i in expected.argmax(axis=1)]

    r = api.post("/api/v1/models/resnet18/predict", {"instances": [images[0], "bm90IGFuIGltYWdl"]}, key)
    assert r.status_code == 400  # "not an image", base64-encoded
    assert r.json()["error"]["details"]["path"] == "instances[1]"


def test_resnet50_registers_and_validates_within_the_default_limits(settings):
    """25.6 M parameters (0.1 GB): under INFERENCE_MAX_PARAMETERS and within the validation
    process's default address-space limit (INFERENCE_VALIDATION_MEMORY_BYTES, 8 GiB)."""
    assert (settings.INFERENCE_MAX_PARAMETERS, settings.INFERENCE_VALIDATION_MEMORY_BYTES) == (500_000_000, 8 * 2**30)
    torch.manual_seed(0)
    version = register("resnet50", ResNet50().eval(), vision_config("ResNet50", 1000, postprocess=[{"step": "softmax"}]))
    assert (version.status, version.status_error) == ("ready", "")
