"""MLServer custom runtime for the benchmark MLP (V2 protocol, adaptive batching by MLServer)."""

import json
import os

import numpy as np
import torch
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from safetensors.torch import load_file


def build_mlp(in_features, hidden, out_features):
    sizes = [in_features, *hidden, out_features]
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        if i:
            layers.append(torch.nn.ReLU())
        layers.append(torch.nn.Linear(a, b))
    return torch.nn.Sequential(*layers)


class MLPRuntime(MLModel):
    async def load(self) -> bool:
        torch.set_num_threads(1)
        path, args = json.loads(os.environ["ARTIFACTS"])[self.name]
        self.model = build_mlp(**args)
        self.model.load_state_dict(load_file(path))
        self.model.eval()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32)
        with torch.inference_mode():
            y = self.model(torch.from_numpy(x)).numpy()
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output(name="output", payload=y)])
