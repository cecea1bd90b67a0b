"""The runtime contract: load / predict / unload / ready (after MLServer's MLModel).

A runtime turns one registered version into something that maps a batch of input
tensors to a batch of output tensors. Everything that can be decided once (device,
threads, code path) is decided in ``load()``, never per request.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class ModelNotReady(Exception):
    """The version cannot serve here (its device is missing, or it failed to load)."""


class Runtime:
    """Base class of model runtimes. Subclasses implement load, predict and unload.

    A runtime is built from a ``LoadSpec`` (inference.runtime.pytorch): all it needs to load one
    version, independent of the database. INFERENCE_RUNTIMES chooses the class for each format.
    """

    #: Bytes of memory the loaded model holds (parameters and buffers); the cache
    #: bounds the sum of these.
    nbytes: int = 0

    def __init__(self, spec: Any = None) -> None:
        self.spec = spec
        self.ready = False

    def load(self) -> None:
        """Load the model, place it on its device and warm it up; set `ready`."""
        raise NotImplementedError("subclasses of Runtime must provide a load() method")

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Return the outputs of one forward pass over a batch (axis 0) of inputs."""
        raise NotImplementedError("subclasses of Runtime must provide a predict() method")

    def unload(self) -> None:
        """Release the model's memory; `ready` becomes False."""
        self.ready = False
