"""The lean reference server: the least a batching Python server does per request, under granian.

What the platform's predict path does, less everything a platform adds: an API key checked once and
then remembered, the body parsed by orjson, one numpy array normalised, a batcher thread that runs
the model on up to 32 queued requests and wakes the event loop once per batch, softmax and labels,
and the response written by orjson. No Django, no registry, no rate limits, no validation beyond
numpy's, no metrics, logs or records. Same weights as the platform (safetensors), 1 torch thread,
granian's RSGI with uvloop, WEB_CONCURRENCY processes (2), as the platform runs.

    ARTIFACT=iris.safetensors ARCH_ARGS='{...}' granian --interface rsgi --workers 2 --loop uvloop \
        bench.servers.lean:app

It is not a server anyone should deploy (it checks almost nothing); ``bench.request_cost --lean``
runs it beside the platform so that the platform's cost per request reads against what Python and
granian need at the least on the same machine.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import threading
from collections import deque

import numpy as np
import orjson
import torch
from safetensors.torch import load_file

from registry.architectures import MLP

torch.set_num_threads(1)

MODEL = MLP(**json.loads(os.environ["ARCH_ARGS"]))
MODEL.load_state_dict(load_file(os.environ["ARTIFACT"]))
MODEL.eval()
MEAN = np.array(json.loads(os.environ.get("MEAN", "[0, 0, 0, 0]")), np.float32)
STD = np.array(json.loads(os.environ.get("STD", "[1, 1, 1, 1]")), np.float32)
LABELS = json.loads(os.environ.get("LABELS", '["setosa", "versicolor", "virginica"]'))
KEY = os.environ.get("LEAN_KEY", "lean.secret")
KEY_HASH = hashlib.sha256(KEY.encode()).hexdigest()
MAX_BATCH = 32
JSON = [("content-type", "application/json")]


class Batcher(threading.Thread):
    """Runs queued requests in batches of up to MAX_BATCH; wakes each batch's loop once."""

    def __init__(self) -> None:
        super().__init__(name="batcher", daemon=True)
        self.queue: deque = deque()
        self.cond = threading.Condition()

    def submit(self, loop: asyncio.AbstractEventLoop, x: np.ndarray, done: asyncio.Future) -> None:
        with self.cond:
            self.queue.append((loop, x, done))
            self.cond.notify()

    def run(self) -> None:
        while True:
            with self.cond:
                while not self.queue:
                    self.cond.wait()
                batch = [self.queue.popleft() for _ in range(min(MAX_BATCH, len(self.queue)))]
            x = torch.from_numpy(np.concatenate([item[1] for item in batch]))
            with torch.inference_mode():
                y = torch.softmax(MODEL(x), dim=1).numpy()
            results = [{"label": LABELS[int(row.argmax())], "probabilities": row.tolist()} for row in y]
            batch[0][0].call_soon_threadsafe(_wake, [item[2] for item in batch], results)


def _wake(futures: list[asyncio.Future], results: list[dict]) -> None:
    for future, result in zip(futures, results):
        if not future.done():
            future.set_result(result)


BATCHER = Batcher()
BATCHER.start()


class App:
    def __init__(self) -> None:
        self.verified: set[str] = set()

    async def __rsgi__(self, scope, protocol) -> None:
        if scope.path == "/healthz":
            protocol.response_bytes(200, JSON, b'{"status":"ok"}')
            return
        key = scope.headers.get("authorization", "").removeprefix("Api-Key ")
        if key not in self.verified:
            if not hmac.compare_digest(hashlib.sha256(key.encode()).hexdigest(), KEY_HASH):
                protocol.response_bytes(401, JSON, b'{"error":"not authenticated"}')
                return
            self.verified.add(key)
        try:
            x = (np.array(orjson.loads(await protocol())["instances"], np.float32) - MEAN) / STD
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            protocol.response_bytes(400, JSON, b'{"error":"bad input"}')
            return
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        BATCHER.submit(loop, x, done)
        prediction = await done
        protocol.response_bytes(200, JSON, orjson.dumps({"model": "iris", "predictions": [prediction]}))


app = App()
