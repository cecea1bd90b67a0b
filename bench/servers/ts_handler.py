"""TorchServe handler for the benchmark MLP: JSON {"instances": [...]} in, predictions out.

Built into a .mar by the harness with the same safetensors weights; 1 torch thread.
"""

import json
import os

import torch
from safetensors.torch import load_file
from ts.torch_handler.base_handler import BaseHandler


def build_mlp(in_features, hidden, out_features):
    sizes = [in_features, *hidden, out_features]
    layers = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        if i:
            layers.append(torch.nn.ReLU())
        layers.append(torch.nn.Linear(a, b))
    return torch.nn.Sequential(*layers)


class MLPHandler(BaseHandler):
    def initialize(self, context):
        torch.set_num_threads(1)
        model_dir = context.system_properties.get("model_dir")
        with open(os.path.join(model_dir, "arch.json")) as fh:
            args = json.load(fh)
        self.model = build_mlp(**args)
        self.model.load_state_dict(load_file(os.path.join(model_dir, "model.safetensors")))
        self.model.eval()
        self.initialized = True

    def preprocess(self, data):
        self.counts = []
        rows = []
        for item in data:
            body = item.get("body") or item.get("data")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body)
            instances = body["instances"]
            self.counts.append(len(instances))
            rows.extend(instances)
        return torch.tensor(rows, dtype=torch.float32)

    def inference(self, x):
        with torch.inference_mode():
            return self.model(x)

    def postprocess(self, y):
        out, offset = [], 0
        values = y.tolist()
        for n in self.counts:
            out.append({"predictions": values[offset : offset + n]})
            offset += n
        return out
