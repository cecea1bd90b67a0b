"""Fake runtimes for the API and batching tests (after MLServer's tests/fixtures.py).

Each is an ``inference.runtime.base.Runtime`` served the way the real one is: INFERENCE_RUNTIMES
names the class that serves a format, so a registered version goes through the real pool,
batcher, pipelines and error mapping with no model behind it and nothing monkeypatched. The
``fake_runtime`` fixture (tests/inference/conftest.py) serves every format with one of them:

    fake_runtime("echo")                    answer each row from that row's own inputs (echo())
    fake_runtime("slow", delay=0.5)         sleep `delay` seconds per forward, then answer like echo
    fake_runtime("failing")                 raise RuntimeError(message) on every forward...
    fake_runtime("failing", marker=666)     ...or only on a batch holding the value `marker`
    fake_runtime("gated")                   hold every forward until the test sets `gate`;
                                            `entered` is set when one begins

Parameters are class attributes of a subclass made for the test (``runtime(kind, **params)``),
so they never leak into another test; a version's ``architecture_args`` override them for that
version. Every forward is recorded on that class: ``forwards`` holds (batch size, thread name).

Real models stay where users meet them (the demo models, real artifacts through the real
loader); these are for the batching and error paths.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from inference.runtime.base import Runtime
from registry.schemas import DATATYPES, TensorSpec

WAIT = 10.0  # seconds a gated forward waits for its test before it fails


def echo(inputs: dict[str, np.ndarray], outputs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """Return what EchoRuntime answers: for each declared output, row i holds s_i, s_i + 1, s_i + 2, ...
    (s_i: the sum of row i's numeric inputs), in the output's shape (-1 dimensions as 1) and dtype."""
    n = len(next(iter(inputs.values()))) if inputs else 0
    sums = np.zeros(n, np.float64)
    for arr in inputs.values():
        if arr.dtype != object:
            sums += arr.reshape(n, -1).astype(np.float64).sum(axis=1)
    answers = {}
    for spec in outputs:
        shape = tuple(d if d > 0 else 1 for d in spec.shape)
        steps = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
        answers[spec.name] = (sums.reshape((n,) + (1,) * len(shape)) + steps).astype(DATATYPES[spec.datatype])
    return answers


def echo_rows(rows: Sequence[Sequence[float]], width: int) -> list[list[float]]:
    """What EchoRuntime answers for rows of one numeric input and one output of `width` values."""
    return [[float(sum(row)) + j for j in range(width)] for row in rows]


class FakeRuntime(Runtime):
    """Load nothing; answer every batch with echo(). Subclasses change what a forward does first."""

    #: Names of the class attributes a test (or a version's architecture_args) may set.
    parameters: ClassVar[tuple[str, ...]] = ()
    #: (batch size, thread name) of every forward, on the class the fixture made for the test.
    forwards: ClassVar[list[tuple[int, str]]] = []

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        args = getattr(spec, "architecture_args", None) or {}
        for name in self.parameters:
            if name in args:
                setattr(self, name, args[name])

    @classmethod
    def fresh_state(cls) -> dict[str, Any]:
        """Per-test class state (a new subclass gets its own)."""
        return {"forwards": []}

    @classmethod
    def release(cls) -> None:
        """Let every forward still held finish (at the end of a test)."""

    def load(self) -> None:
        self.nbytes = 1
        self.ready = True

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(inputs.values()))) if inputs else 0
        type(self).forwards.append((n, threading.current_thread().name))
        self.forward(inputs)
        return echo(inputs, self.spec.outputs)

    def forward(self, inputs: dict[str, np.ndarray]) -> None:
        """What happens before the answer: nothing here."""


class EchoRuntime(FakeRuntime):
    """Answer each row from its own inputs (see echo()): a test can tell every row got its own answer."""


class SlowRuntime(FakeRuntime):
    """Sleep `delay` seconds per forward, then answer like EchoRuntime."""

    parameters = ("delay",)
    delay: float = 0.2

    def forward(self, inputs: dict[str, np.ndarray]) -> None:
        time.sleep(self.delay)


class FailingRuntime(FakeRuntime):
    """Raise RuntimeError(`message`) on every forward, or (with `marker`) only on a batch that
    holds the value `marker`; other batches are answered like EchoRuntime."""

    parameters = ("message", "marker")
    message: str = "FailingRuntime: this model fails on purpose"
    marker: float | None = None

    def forward(self, inputs: dict[str, np.ndarray]) -> None:
        if self.marker is None or any(
            arr.dtype != object and bool(np.any(arr == self.marker)) for arr in inputs.values()
        ):
            raise RuntimeError(self.message)


class GatedRuntime(FakeRuntime):
    """Hold every forward (the batcher's thread) until the test sets `gate`; `entered` is set when
    a forward begins. Then answer like EchoRuntime."""

    gate: ClassVar[threading.Event] = threading.Event()
    entered: ClassVar[threading.Event] = threading.Event()

    @classmethod
    def fresh_state(cls) -> dict[str, Any]:
        return {**super().fresh_state(), "gate": threading.Event(), "entered": threading.Event()}

    @classmethod
    def release(cls) -> None:
        cls.gate.set()

    def forward(self, inputs: dict[str, np.ndarray]) -> None:
        type(self).entered.set()
        if not type(self).gate.wait(WAIT):
            raise RuntimeError(f"GatedRuntime: the test did not open the gate within {WAIT} s")


KINDS: dict[str, type[FakeRuntime]] = {
    "echo": EchoRuntime,
    "slow": SlowRuntime,
    "failing": FailingRuntime,
    "gated": GatedRuntime,
}


def runtime(kind: str, **params: Any) -> type[FakeRuntime]:
    """Return a new subclass of the `kind` of fake runtime with `params` as its class attributes."""
    base = KINDS[kind]
    unknown = set(params) - set(base.parameters)
    if unknown:
        raise TypeError(f"{base.__name__} takes {list(base.parameters)}, not {sorted(unknown)}")
    return type(base.__name__, (base,), {**base.fresh_state(), **params})
