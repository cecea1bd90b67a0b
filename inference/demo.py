"""Demo models, trained from data that ships with scikit-learn (never downloaded).

* ``iris``: an MLP 4-16-3 on the 150-row iris table; normalize -> model -> softmax ->
  labels, answering {"label": "setosa", "score": ...}.
* ``digits``: the SmallCNN on scikit-learn's 8x8 handwritten digits; clients send a
  base64 PNG, the ``image`` step decodes it; softmax -> topk -> labels.
* ``iris-onnx``: a scikit-learn pipeline (StandardScaler + LogisticRegression) on the iris
  table, converted by ``skl2onnx`` and served by the ONNX runtime; labels -> round, answering
  as ``iris`` does.

Training is seeded and takes a few seconds on one CPU core.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from registry.architectures import MLP, SmallCNN

IRIS_ARCH_ARGS = {"in_features": 4, "hidden": [16], "out_features": 3}
DIGITS_ARCH_ARGS = {"in_channels": 1, "num_classes": 10, "image_size": 8, "channels": [16, 32]}
DIGITS_TRAIN_FRACTION = 0.8


@dataclass
class DemoModel:
    name: str
    description: str
    task: str
    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]
    accuracy: float
    artifact: bytes | None = None  # the file to register when it is not the state_dict's safetensors (ONNX)
    source: Any = None  # the trained model itself (the scikit-learn pipeline of iris-onnx)

    def safetensors_bytes(self) -> bytes:
        from safetensors.torch import save

        return save({k: v.contiguous() for k, v in self.state_dict.items()})

    def artifact_bytes(self) -> bytes:
        """The bytes to register: the ONNX file, or the weights as safetensors."""
        return self.artifact if self.artifact is not None else self.safetensors_bytes()


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float, batch: int | None) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen) if batch else torch.arange(len(x))
        step = batch or len(x)
        for i in range(0, len(x), step):
            idx = order[i : i + step]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()


def train_iris() -> DemoModel:
    """Return the iris classifier, trained on all 150 rows."""
    from sklearn.datasets import load_iris

    torch.manual_seed(0)
    data = load_iris()
    x = data.data.astype(np.float32)
    mean, std = x.mean(axis=0), x.std(axis=0)
    xt = torch.from_numpy((x - mean) / std)
    yt = torch.from_numpy(data.target.astype(np.int64))
    model = MLP(**IRIS_ARCH_ARGS)
    _fit(model, xt, yt, epochs=300, lr=0.05, batch=None)
    with torch.inference_mode():
        accuracy = float((model(xt).argmax(1) == yt).float().mean())
    labels = [str(n) for n in data.target_names]
    config = {
        "format": "safetensors",
        "architecture": "registry.architectures.MLP",
        "architecture_args": IRIS_ARCH_ARGS,
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [4]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [3]}],
        "preprocess": [{"step": "normalize", "mean": mean.round(6).tolist(), "std": std.round(6).tolist()}],
        "postprocess": [{"step": "softmax"}, {"step": "labels", "labels": labels}, {"step": "round", "decimals": 4}],
        "batching": {"max_batch_size": 32, "max_batch_delay_ms": 2, "max_queue_size": 512},
        "hardware": "cpu",
        "example": [5.1, 3.5, 1.4, 0.2],
    }
    return DemoModel(
        name="iris",
        description="Iris species from sepal and petal length/width in cm (MLP 4-16-3, demo).",
        task="classification",
        state_dict=model.state_dict(),
        config=config,
        accuracy=accuracy,
    )


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (train images, train labels, held-out images, held-out labels), images 8x8 in 0..16."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images, target = data.images.astype(np.float32), data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(images))
    cut = int(len(images) * DIGITS_TRAIN_FRACTION)
    tr, te = order[:cut], order[cut:]
    return images[tr], target[tr], images[te], target[te]


def digit_png_base64(image: np.ndarray) -> str:
    """Return an 8x8 digit (values 0..16) as a base64 greyscale PNG, as a client would send it."""
    from PIL import Image

    pixels = np.clip(np.rint(image * 255.0 / 16.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def train_digits() -> DemoModel:
    """Return the digits CNN, trained on 80% of scikit-learn's digits; accuracy on the rest."""
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = digits_split()
    # The image step hands the model pixels / 255, i.e. the 0..16 scale mapped to 0..1.
    xt = torch.from_numpy(x_train / 16.0).unsqueeze(1)
    model = SmallCNN(**DIGITS_ARCH_ARGS)
    _fit(model, xt, torch.from_numpy(y_train), epochs=25, lr=0.01, batch=64)
    with torch.inference_mode():
        pred = model(torch.from_numpy(x_test / 16.0).unsqueeze(1)).argmax(1).numpy()
    accuracy = float((pred == y_test).mean())
    config = {
        "format": "safetensors",
        "architecture": "registry.architectures.SmallCNN",
        "architecture_args": DIGITS_ARCH_ARGS,
        "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 8, 8]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [10]}],
        "preprocess": [{"step": "image", "size": [8, 8], "mode": "L", "scale": 255.0}],
        "postprocess": [
            {"step": "softmax"},
            {"step": "topk", "k": 3},
            {"step": "labels", "labels": [str(i) for i in range(10)]},
            {"step": "round", "decimals": 4},
        ],
        "batching": {"max_batch_size": 32, "max_batch_delay_ms": 2, "max_queue_size": 512},
        "hardware": "cpu",
        "example": digit_png_base64(x_test[0]),
    }
    return DemoModel(
        name="digits",
        description="Handwritten digit (8x8 greyscale PNG, base64) -> top 3 digits (SmallCNN, demo).",
        task="image-classification",
        state_dict=model.state_dict(),
        config=config,
        accuracy=accuracy,
    )


def train_iris_onnx() -> DemoModel:
    """Return the iris classifier of scikit-learn (scaler + logistic regression), converted to ONNX."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_iris()
    x = data.data.astype(np.float32)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, data.target)
    accuracy = float(pipe.score(x, data.target))
    # A dynamic batch dimension (None) and probabilities as a tensor (no ZipMap of dicts).
    onx = to_onnx(pipe, initial_types=[("input", FloatTensorType([None, 4]))], options={"zipmap": False},
                  target_opset=17)
    config = {
        "format": "onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [4]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [3]}],
        "postprocess": [{"step": "labels", "labels": [str(n) for n in data.target_names]},
                        {"step": "round", "decimals": 4}],
        "batching": {"max_batch_size": 32, "max_batch_delay_ms": 2, "max_queue_size": 512},
        "hardware": "cpu",
        "example": [5.1, 3.5, 1.4, 0.2],
    }
    return DemoModel(
        name="iris-onnx",
        description="Iris species (scikit-learn scaler + logistic regression, converted by skl2onnx, "
                    "served by ONNX Runtime; demo).",
        task="classification",
        state_dict={},
        config=config,
        accuracy=accuracy,
        artifact=onx.SerializeToString(),
        source=pipe,
    )


DEMO_TRAINERS = {"iris": train_iris, "digits": train_digits, "iris-onnx": train_iris_onnx}
