"""Deterministic weights for a state_dict, from numpy alone (no torch RNG).

torch's random generators are not promised to give the same numbers across releases, and the
conformance fixtures are written with torchvision's torch (make_reference.py) but read with the
project's: so every tensor is drawn from its own numpy Generator, seeded by (seed, crc32 of its
key), whatever torch is installed and in whatever order the keys come.

The scales keep the input's signal alive to the logits in eval mode (the test checks that the two
inputs get different logits): weights of fan-in f are N(0, 2/f) (He), BatchNorm scales
1 + N(0, 0.1^2), running variances uniform in [0.5, 1.5], biases N(0, 0.1^2), except the
squeeze-excitation's last bias (``fc2.bias``), 1.5 + N(0, 0.1^2): its gates then sit open near
0.8 instead of 0.5, which, compounded over EfficientNet's 16 blocks, left logits that no longer
depended on the input.

Only numpy here: make_reference.py imports this file in a venv with torchvision and nothing of
the project.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import numpy as np

INPUT_SHAPE = (2, 3, 64, 64)


def seeded_tensor(key: str, shape: Iterable[int], dtype: str, seed: int = 0) -> np.ndarray:
    """The deterministic value of the state_dict entry `key` of this shape and dtype ("float32", "int64")."""
    shape = tuple(int(d) for d in shape)
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    if dtype != "float32":  # num_batches_tracked: unused in eval mode
        return np.zeros(shape, dtype=dtype)
    if key.endswith("running_var"):
        value = rng.uniform(0.5, 1.5, shape)
    elif key.endswith("fc2.bias"):  # a squeeze-excitation gate: open
        value = 1.5 + 0.1 * rng.standard_normal(shape)
    elif key.endswith("running_mean") or key.endswith("bias"):
        value = 0.1 * rng.standard_normal(shape)
    elif len(shape) >= 2:  # a convolution or linear weight: N(0, 2/fan_in)
        value = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
    else:  # a BatchNorm scale
        value = 1.0 + 0.1 * rng.standard_normal(shape)
    return value.astype(np.float32)


def seeded_input(seed: int = 1, shape: tuple[int, ...] = INPUT_SHAPE) -> np.ndarray:
    """The fixed input batch the reference outputs were computed on."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def seeded_state_dict(entries: Iterable[tuple[str, Iterable[int], str]], seed: int = 0) -> dict[str, np.ndarray]:
    """{key: array} for (key, shape, dtype) entries, each seeded_tensor()."""
    return {key: seeded_tensor(key, shape, dtype, seed) for key, shape, dtype in entries}
