"""ONNX artifacts for tests, built here from seeded models (nothing downloaded)."""

from __future__ import annotations

import io
import json
import warnings
from typing import Any

import numpy as np
import torch

from tests.conftest import IRIS_CONFIG, small_mlp

ONNX_CONFIG = {**{k: v for k, v in IRIS_CONFIG.items() if k not in ("architecture", "architecture_args")},
               "format": "onnx"}


def onnx_config(**changes: Any) -> dict:
    """The small MLP's config (4 -> 8 -> 3, raw outputs) for its ONNX export, changed."""
    cfg = json.loads(json.dumps(ONNX_CONFIG))
    cfg.update(changes)
    return cfg


def torch_onnx_bytes(module: torch.nn.Module | None = None, *, dynamic: bool = True, features: int = 4) -> bytes:
    """The module (default: tests.conftest.small_mlp) exported by torch.onnx.export, batch axis dynamic or fixed."""
    module = module if module is not None else small_mlp()
    buf = io.BytesIO()
    axes = {"input": {0: "batch"}, "output": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():  # the TorchScript-based exporter (dynamo=False) is deprecated, not gone
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module.eval(), (torch.zeros(1, features),), buf, input_names=["input"],
                          output_names=["output"], dynamic_axes=axes, dynamo=False)
    return buf.getvalue()


def graph_bytes(*, domain: str = "", external: bool = False, batch: str | int = "batch") -> bytes:
    """A hand-built graph output = input @ W (4 -> 3): a custom-domain node, external data, a fixed batch."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 3), dtype=np.float32), name="W")
    if external:
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "../../etc/passwd"), ("offset", "0"), ("length", "48")):
            entry = weight.external_data.add()
            entry.key, entry.value = key, value
    node = helper.make_node("MatMul", ["input", "W"], ["output"], domain=domain)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 3])],
        initializer=[weight],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(graph, opset_imports=opsets)
    return model.SerializeToString()


def sklearn_iris_onnx() -> tuple[Any, bytes]:
    """(a fitted scikit-learn pipeline on iris, its skl2onnx conversion with probabilities as a tensor)."""
    from skl2onnx import to_onnx
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_iris()
    x = data.data.astype(np.float32)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, data.target)
    onx = to_onnx(pipe, x[:1], options={"zipmap": False}, target_opset=17)
    return pipe, onx.SerializeToString()
