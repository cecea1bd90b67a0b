"""Request paths as steps (inference.steps): the same generator run blocking and on an event loop.

A real Batcher around a fake forward function (numpy, sleeps to be slow): what is tested is
waiting, error mapping and cancellation, not a model.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from inference import steps
from inference.errors import ModelFailed, ServiceUnavailable
from inference.runtime.batcher import INLINE_DRAIN_BELOW_S, Batcher
from inference.services import observed


def doubling(delay: float = 0.0, fail: bool = False):
    threads: list[str] = []

    def predict(arrays):
        threads.append(threading.current_thread().name)
        if delay:
            time.sleep(delay)
        if fail:
            raise RuntimeError("the model broke")
        return {"y": arrays["x"] * 2}

    predict.threads = threads
    return predict


def path(batcher: Batcher, x: np.ndarray, timeout: float = 5.0) -> steps.Steps[np.ndarray]:
    """A minimal request path: wait for the batch, map errors as services.run_prepared_steps does."""
    try:
        pending = yield steps.Batch(batcher, {"x": x}, timeout)
        return pending.future.result(0)["y"]
    except TimeoutError as exc:
        raise ServiceUnavailable(f"timed out: {exc}") from exc
    except Exception as exc:  # noqa: BLE001
        raise ModelFailed(str(exc)) from exc


X = np.arange(6, dtype=np.float32).reshape(3, 2)


@pytest.fixture
def batcher_factory():
    made: list[Batcher] = []

    def make(predict, **kwargs) -> Batcher:
        b = Batcher(predict, max_batch_delay_ms=2, **kwargs)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


def test_the_same_steps_give_the_same_answer_blocking_and_awaited(batcher_factory):
    batcher = batcher_factory(doubling())
    blocking = steps.run(path(batcher, X))
    awaited = asyncio.run(steps.run_async(path(batcher, X)))
    np.testing.assert_array_equal(blocking, X * 2)
    np.testing.assert_array_equal(awaited, X * 2)


def test_a_model_error_is_thrown_into_the_steps_and_mapped_by_them(batcher_factory):
    batcher = batcher_factory(doubling(fail=True))
    with pytest.raises(ModelFailed, match="the model broke"):
        steps.run(path(batcher, X))
    with pytest.raises(ModelFailed, match="the model broke"):
        asyncio.run(steps.run_async(path(batcher, X)))


def test_an_awaited_batch_past_its_timeout_is_dropped_and_mapped(batcher_factory):
    batcher = batcher_factory(doubling(delay=0.3))

    async def main():
        first = asyncio.ensure_future(steps.run_async(path(batcher, X)))
        await asyncio.sleep(0.05)  # the first batch is computing: the second waits in the queue
        with pytest.raises(ServiceUnavailable, match="timed out"):
            await steps.run_async(path(batcher, X, timeout=0.05))
        return await first

    np.testing.assert_array_equal(asyncio.run(main()), X * 2)
    time.sleep(0.4)
    assert batcher.stats.dropped == 1 and batcher.stats.request_count == 1


def test_many_awaiting_requests_share_batches_on_one_thread(batcher_factory):
    predict = doubling(delay=0.01)
    batcher = batcher_factory(predict, max_batch_size=32)

    async def main():
        return await asyncio.gather(*[steps.run_async(path(batcher, X[i:i + 1] + i)) for i in range(64)])

    results = asyncio.run(main())
    for i, y in enumerate(results):
        np.testing.assert_array_equal(y, (X[i:i + 1] + i) * 2)
    assert batcher.stats.request_count == 64
    assert batcher.stats.exec_count <= 8, batcher.stats  # batched, not one forward per request


def test_on_the_loop_only_a_fast_model_runs_inline(batcher_factory):
    fast, slow = doubling(), doubling(delay=2 * INLINE_DRAIN_BELOW_S)
    fast_batcher, slow_batcher = batcher_factory(fast), batcher_factory(slow)
    for _ in range(3):  # the first forward of each is on the batcher thread: its speed is not known yet
        asyncio.run(steps.run_async(path(fast_batcher, X)))
        asyncio.run(steps.run_async(path(slow_batcher, X)))
    loop_thread = threading.current_thread().name
    assert fast.threads[0].startswith("batcher") and fast.threads[-1] == loop_thread
    assert all(name.startswith("batcher") for name in slow.threads), slow.threads
    # Blocking callers compute inline whenever the batcher is idle, as before.
    steps.run(path(slow_batcher, X))
    assert slow.threads[-1] == loop_thread


def test_a_blocking_call_runs_in_a_thread_when_awaited():
    seen = []
    caller = threading.current_thread()

    def load():
        seen.append(threading.current_thread())
        return "loaded"

    def with_load():
        value = yield steps.Blocking(load)
        return value

    assert asyncio.run(steps.run_async(with_load())) == "loaded" and seen[-1] is not caller
    assert steps.run(with_load()) == "loaded" and seen[-1] is caller


@pytest.mark.django_db
def test_a_request_cancelled_while_waiting_is_observed_as_499_and_leaves_the_queue(batcher_factory, monkeypatch):
    from inference import services

    seen = []
    monkeypatch.setattr(services, "observe", lambda outcome: seen.append(outcome))
    monkeypatch.setattr(services, "run_hooks", lambda outcome: None)
    batcher = batcher_factory(doubling(delay=0.3))

    def observed_path(x):
        with observed("m"):
            return (yield from path(batcher, x))

    async def main():
        first = asyncio.ensure_future(steps.run_async(observed_path(X)))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(steps.run_async(observed_path(X)))
        await asyncio.sleep(0.05)
        second.cancel()  # what the server does when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await second
        await first

    asyncio.run(main())
    time.sleep(0.4)
    assert sorted(o.status for o in seen) == [200, 499]
    assert [o.error_code for o in seen if o.status == 499] == ["cancelled"]
    assert batcher.stats.dropped == 1 and batcher.stats.request_count == 1
