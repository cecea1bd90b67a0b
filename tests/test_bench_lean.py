"""The lean reference server of bench.request_cost (bench.servers.lean): it answers as the platform's
iris demo does, so that its cost per request is that of the same work."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
from types import SimpleNamespace

import numpy as np
import orjson
import pytest

from inference.demo import train_iris


class Protocol:
    """An RSGI protocol object: the request's body, and the response it was given."""

    def __init__(self, body: bytes):
        self.body, self.response = body, None

    async def __call__(self) -> bytes:
        return self.body

    def response_bytes(self, status: int, headers: list, body: bytes) -> None:
        self.response = (status, dict(headers), body)


@pytest.fixture(scope="module")
def lean(tmp_path_factory):
    demo = train_iris()
    path = tmp_path_factory.mktemp("lean") / "iris.safetensors"
    path.write_bytes(demo.safetensors_bytes())
    normalize = demo.config["preprocess"][0]
    labels = next(s["labels"] for s in demo.config["postprocess"] if s["step"] == "labels")
    env = {"ARTIFACT": str(path), "ARCH_ARGS": json.dumps(demo.config["architecture_args"]),
           "MEAN": json.dumps(normalize["mean"]), "STD": json.dumps(normalize["std"]), "LABELS": json.dumps(labels)}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        sys.modules.pop("bench.servers.lean", None)
        yield importlib.import_module("bench.servers.lean")
    sys.modules.pop("bench.servers.lean", None)


def ask(module, body: bytes, key: str = "lean.secret") -> tuple[int, dict, bytes]:
    scope = SimpleNamespace(path="/predict", headers={"authorization": f"Api-Key {key}"})
    protocol = Protocol(body)
    asyncio.run(module.app.__rsgi__(scope, protocol))
    return protocol.response


def test_the_lean_server_labels_iris_rows_as_the_demo_model_does(lean):
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]  # a setosa, a virginica (rows 1 and 146 of the table)
    for row, label in zip(rows, ["setosa", "virginica"]):
        status, _, body = ask(lean, orjson.dumps({"instances": [row]}))
        prediction = orjson.loads(body)["predictions"][0]
        assert status == 200 and prediction["label"] == label
        assert np.isclose(sum(prediction["probabilities"]), 1.0, atol=1e-5)


def test_the_lean_server_refuses_a_wrong_key_and_a_body_without_instances(lean):
    assert ask(lean, b'{"instances": [[1, 2, 3, 4]]}', key="lean.wrong")[0] == 401
    assert ask(lean, b'{"rows": []}')[0] == 400
    assert ask(lean, b"not json")[0] == 400
