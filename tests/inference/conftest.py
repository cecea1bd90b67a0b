"""Fixtures of the serving-side tests: a fresh serving pool per test, API keys, a JSON client,
small real models registered in the test's database, fake runtimes (tests/fakes.py), and the demo
models trained once."""

from __future__ import annotations

import pytest
import torch

from inference.pool import reset_pool
from tests import fakes
from tests.conftest import small_mlp

from .support import Api, make_key, ready


@pytest.fixture(autouse=True)
def _fresh_pool():
    """Each test starts (and ends) with an empty serving pool: nothing loaded leaks across tests."""
    reset_pool()
    yield
    reset_pool()


@pytest.fixture(autouse=True)
def _test_hosts(settings):
    settings.ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """Loading a version sets torch's threads in the loading thread; give the count back."""
    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


@pytest.fixture
def fake_runtime(settings):
    """Serve every artifact format with a fake runtime of tests/fakes.py for this test:
    ``fake_runtime("slow", delay=0.5)`` sets INFERENCE_RUNTIMES and returns the runtime class (its
    parameters, `forwards`, a gated one's `gate` and `entered`). Versions load with it from then on;
    at the end of the test every held forward is let go, before the pool is reset."""
    made: list[type[fakes.FakeRuntime]] = []

    def serve(kind: str, **params) -> type[fakes.FakeRuntime]:
        cls = fakes.runtime(kind, **params)
        settings.INFERENCE_RUNTIMES = {fmt: cls for fmt in settings.INFERENCE_RUNTIMES}
        made.append(cls)
        return cls

    yield serve
    for cls in made:
        cls.release()


@pytest.fixture
def api(client) -> Api:
    return Api(client)


@pytest.fixture
def key(db) -> str:
    """An inference key that sees every model, at a rate no test reaches."""
    return make_key("all-models", rate="10000/s")


@pytest.fixture
def iris(db):
    """Model "iris": v1 (production) and v2 (staging), two different small MLPs (raw outputs).

    Returns {1: module, 2: module}."""
    m1, m2 = small_mlp(0), small_mlp(1)
    ready(m1, model_name="iris", aliases=["production"])
    ready(m2, model_name="iris", aliases=["staging"])
    return {1: m1, 2: m2}


def _train(trainer):
    """Train with one torch thread: on a small shared CI machine two OpenMP threads contending
    with other processes make these tiny models train ten times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return trainer()
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def iris_demo():
    from inference.demo import train_iris

    return _train(train_iris)


@pytest.fixture(scope="session")
def digits_demo():
    from inference.demo import train_digits

    return _train(train_digits)


@pytest.fixture(scope="session")
def iris_onnx_demo():
    from inference.demo import train_iris_onnx

    return _train(train_iris_onnx)
