"""Request paths as steps (inference.steps): the same generator run blocking and on an event loop.

A real Batcher around a fake forward function (numpy, sleeps to be slow): what is tested is
waiting, error mapping and cancellation, not a model.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref

import numpy as np
import pytest

from inference import steps
from inference.errors import ModelFailed, ServiceUnavailable
from inference.runtime.batcher import INLINE_ALONE_BELOW_S, INLINE_DRAIN_BELOW_S, LONE_CLIENT_BELOW, Batcher
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


async def busy_loop_path(batcher: Batcher, x: np.ndarray):
    """Run `path` while another task is ready on the loop: the request is not alone."""
    async def other():
        await asyncio.sleep(0)

    task = asyncio.get_running_loop().create_task(other())  # ready: scheduled, not yet run
    try:
        return await steps.run_async(path(batcher, x))
    finally:
        await task


def test_on_the_loop_a_fast_model_runs_inline_a_slower_one_only_when_alone(batcher_factory):
    fast, slow = doubling(), doubling(delay=2 * INLINE_DRAIN_BELOW_S)
    slowest = doubling(delay=INLINE_ALONE_BELOW_S + 0.01)
    fast_batcher, slow_batcher, slowest_batcher = batcher_factory(fast), batcher_factory(slow), batcher_factory(slowest)
    for _ in range(3):  # busy loop: a fast model inline, a slower one on its batcher thread
        asyncio.run(busy_loop_path(fast_batcher, X))
        asyncio.run(busy_loop_path(slow_batcher, X))
    loop_thread = threading.current_thread().name
    # The first forward of each is on the batcher thread: its speed is not known yet.
    assert fast.threads[0].startswith("batcher") and fast.threads[-1] == loop_thread
    assert all(name.startswith("batcher") for name in slow.threads), slow.threads
    # Alone on the loop (the lone client at concurrency 1): the slower model inline too, with
    # no hand-off to its thread and back; one slower than INLINE_ALONE_BELOW_S never.
    for _ in range(2):
        asyncio.run(steps.run_async(path(slow_batcher, X)))
        asyncio.run(steps.run_async(path(slowest_batcher, X)))
    assert slow.threads[-1] == loop_thread
    assert all(name.startswith("batcher") for name in slowest.threads), slowest.threads
    # Blocking callers compute inline whenever the batcher is idle, as before (once its thread
    # has marked the last batch done: the result is handed over just before that).
    deadline = time.monotonic() + 5
    while slowest_batcher._busy and time.monotonic() < deadline:
        time.sleep(0.005)
    steps.run(path(slowest_batcher, X))
    assert slowest.threads[-1] == loop_thread


def test_a_loop_alone_does_not_compute_inline_under_concurrent_load(batcher_factory):
    """Once batches hold several requests (concurrent clients), a request that finds the loop
    idle still goes to the batcher thread: a loop that computed would read no more requests
    meanwhile, and every forward would be of one request."""
    slow = doubling(delay=2 * INLINE_DRAIN_BELOW_S)
    batcher = batcher_factory(slow, max_batch_size=8)

    async def burst():
        return await asyncio.gather(*[steps.run_async(path(batcher, X[:1] + i)) for i in range(16)])

    for _ in range(6):
        asyncio.run(burst())
    assert batcher._requests_ewma >= LONE_CLIENT_BELOW, batcher._requests_ewma
    before = len(slow.threads)
    y = asyncio.run(steps.run_async(path(batcher, X)))
    np.testing.assert_array_equal(y, X * 2)
    assert len(slow.threads) == before + 1 and slow.threads[-1].startswith("batcher"), slow.threads[before:]


def test_loop_is_idle_sees_other_ready_tasks():
    async def check():
        alone = steps.loop_is_idle()
        task = asyncio.get_running_loop().create_task(asyncio.sleep(0))
        crowded = steps.loop_is_idle()
        await task
        return alone, crowded

    assert asyncio.run(check()) == (True, False)


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


class Rows(list):
    """A list a weak reference can watch (the parsed JSON of `instances` is a plain list)."""


@pytest.mark.django_db
@pytest.mark.parametrize("capture", [False, True])
def test_while_a_predict_waits_for_its_batch_the_parsed_body_is_kept_only_to_be_captured(iris, capture):
    """The parsed JSON (a Python object per number) is dropped once converted to arrays, unless
    the model captures payloads: a web process's heap does not hold every waiting request's body."""
    from inference import services
    from inference.runtime.pool import get_pool
    from registry.models import RegisteredModel

    from .support import ROWS

    RegisteredModel.objects.filter(name="iris").update(capture_payloads=capture)
    get_pool().invalidate()
    instances = Rows(list(row) for row in ROWS[:2])
    alive = weakref.ref(instances)
    request = services.predict_steps(model_name="iris", ref=None, body={"instances": instances}, request_id="r1")
    del instances
    wait = next(request)
    while not isinstance(wait, steps.Batch):  # the model's first load is a Blocking wait
        wait = request.send(wait.wait())
    gc.collect()
    assert (alive() is not None) == capture
    try:
        request.send(wait.wait())
    except StopIteration as stop:
        response = stop.value
    assert response["id"] == "r1" and len(response["predictions"]) == 2
