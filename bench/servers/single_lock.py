"""The single-lock reference server: a minimal Flask app, one global lock around model(x).

The design most tutorials ship. Same weights as the platform (safetensors), 1 torch
thread. Run under gunicorn (gthread) so the HTTP side is threaded like the platform's:

    MODEL=mlp|iris ARTIFACT=path.safetensors gunicorn -w 1 --threads 32 bench.servers.single_lock:app
"""

from __future__ import annotations

import json
import os
import threading

import torch
from flask import Flask, Response, request
from safetensors.torch import load_file

from registry.architectures import MLP

torch.set_num_threads(1)

ARGS = json.loads(os.environ["ARCH_ARGS"])
model = MLP(**ARGS)
model.load_state_dict(load_file(os.environ["ARTIFACT"]))
model.eval()
lock = threading.Lock()

app = Flask(__name__)


@app.post("/predict")
def predict() -> Response:
    x = torch.tensor(request.get_json()["instances"], dtype=torch.float32)
    with lock, torch.inference_mode():
        y = model(x)
    return Response(json.dumps({"predictions": y.tolist()}), content_type="application/json")


@app.get("/healthz")
def healthz() -> Response:
    return Response("ok")
