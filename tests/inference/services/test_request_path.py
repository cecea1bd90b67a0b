"""The async request path (inference.services.predict) and where its work runs (inference.offload).

What is tested: a function that can answer from memory runs at once and a miss goes to a thread;
heavy compute leaves the event loop and its queue is bounded; pool threads carry the request's log
context; a request whose client left is observed as 499 and leaves its batcher's queue; a waiting
request keeps its parsed body only to capture it.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref

import numpy as np
import pytest

from inference import offload
from inference.errors import ModelFailed, ServiceUnavailable
from inference.monitoring.logs import request_id_var
from inference.offload import WouldBlock
from inference.pipeline.base import Step
from inference.pool import get_pool
from inference.selectors import memo
from inference.services import predict as predict_service
from tests.fakes import echo_rows
from tests.inference.support import ROWS


@pytest.fixture
def pools():
    """This process with a web process's pools (as the front configures them), for one test."""
    configured = offload.configure(io_threads=2, compute_threads=1, compute_queue=2)
    yield configured
    offload.unconfigure()


def memoized(seen: list):
    """A may_block function: answers from 'memory' only for 'hit'."""

    def read(name: str, *, may_block: bool = True) -> tuple[str, str]:
        if name != "hit" and not may_block:
            raise WouldBlock
        seen.append((name, may_block))
        return name, threading.current_thread().name

    return read


def test_without_blocking_answers_from_memory_on_the_loop_and_sends_a_miss_to_an_io_thread(pools):
    seen: list = []
    read = memoized(seen)

    async def main():
        loop_thread = threading.current_thread().name
        hit = await offload.without_blocking(read, "hit")
        miss = await offload.without_blocking(read, "miss")
        return loop_thread, hit, miss

    loop_thread, hit, miss = asyncio.run(main())
    assert hit == ("hit", loop_thread)
    assert miss[0] == "miss" and miss[1].startswith("io") and miss[1] != loop_thread
    assert seen == [("hit", False), ("miss", True)]  # the miss did nothing before it went to a thread


class KeyedMemo:
    """A may_block function with a memo that one blocking read fills (gated), its misses keyed."""

    def __init__(self, *, fail_first: bool = False):
        self.memo: dict[str, str] = {}
        self.reads: list[str] = []
        self.gate = threading.Event()
        self.fail_first = fail_first

    def __call__(self, name: str, *, may_block: bool = True) -> str:
        if name in self.memo:
            return self.memo[name]
        if not may_block:
            raise WouldBlock(("memo", name))
        self.reads.append(threading.current_thread().name)
        self.gate.wait(10)
        if self.fail_first and len(self.reads) == 1:
            raise ConnectionError("the cache is down")
        self.memo[name] = f"value of {name}"
        return self.memo[name]


def test_misses_that_wait_for_the_same_read_take_one_thread_and_then_answer_from_memory(pools):
    read = KeyedMemo()

    async def main():
        calls = [asyncio.ensure_future(offload.without_blocking(read, "k")) for _ in range(20)]
        other = asyncio.ensure_future(offload.without_blocking(read, "other"))  # another key: its own read
        await asyncio.sleep(0.05)
        in_flight = len(read.reads)
        read.gate.set()
        return in_flight, await asyncio.gather(*calls), await other

    in_flight, values, other = asyncio.run(main())
    assert in_flight == 2  # "k" once, "other" once, however many callers
    assert values == ["value of k"] * 20 and other == "value of other"
    assert len(read.reads) == 2 and all(t.startswith("io") for t in read.reads)
    assert offload._in_flight == {}


def test_a_failed_read_fails_its_caller_only_and_the_waiting_calls_read_again(pools):
    read = KeyedMemo(fail_first=True)

    async def main():
        first = asyncio.ensure_future(offload.without_blocking(read, "k"))
        await asyncio.sleep(0.02)
        rest = [asyncio.ensure_future(offload.without_blocking(read, "k")) for _ in range(5)]
        cancelled = asyncio.ensure_future(offload.without_blocking(read, "k"))
        await asyncio.sleep(0.02)
        cancelled.cancel()  # a client gone while it waits: the others go on
        read.gate.set()
        return await asyncio.gather(first, *rest, return_exceptions=True), cancelled

    (first, *rest), cancelled = asyncio.run(main())
    assert isinstance(first, ConnectionError)
    assert rest == ["value of k"] * 5 and cancelled.cancelled()
    assert len(read.reads) == 2  # the failed read, then one read for the five that waited
    assert offload._in_flight == {}


def test_a_miss_without_a_key_always_takes_its_own_thread(pools):
    seen: list = []
    read = memoized(seen)

    async def main():
        return await asyncio.gather(*(offload.without_blocking(read, "miss") for _ in range(3)))

    assert [name for name, _ in asyncio.run(main())] == ["miss"] * 3
    assert seen == [("miss", True)] * 3


def test_without_pools_a_miss_runs_in_the_calling_thread(settings):
    """Django's WSGI handler (async_to_sync) and jobs: blocking calls go back to the caller's thread."""
    from asgiref.sync import async_to_sync

    offload.unconfigure()
    seen: list = []

    async def main():
        return await offload.without_blocking(memoized(seen), "miss")

    assert async_to_sync(main)() == ("miss", threading.current_thread().name)


def test_heavy_compute_leaves_the_loop_light_compute_stays(pools):
    async def main():
        loop_thread = threading.current_thread().name
        light = await offload.compute(lambda: threading.current_thread().name, heavy=False)
        heavy = await offload.compute(lambda: threading.current_thread().name, heavy=True)
        return loop_thread, light, heavy

    loop_thread, light, heavy = asyncio.run(main())
    assert light == loop_thread and heavy.startswith("compute") and heavy != loop_thread


def test_the_compute_queue_is_bounded_and_a_refusal_is_a_503_at_once(pools):
    release = threading.Event()

    def work():
        release.wait(10)
        return "done"

    async def main():
        running = [asyncio.ensure_future(offload.compute(work, heavy=True)) for _ in range(2)]  # 1 runs, 1 waits
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        with pytest.raises(ServiceUnavailable) as refused:
            await offload.compute(work, heavy=True)
        refused_after = time.perf_counter() - t0
        release.set()
        return await asyncio.gather(*running), refused.value, refused_after

    done, refused, refused_after = asyncio.run(main())
    assert done == ["done", "done"]
    assert refused.error_code == "overloaded" and refused.headers["Retry-After"] == "1"
    assert "INFERENCE_COMPUTE_QUEUE" in refused.message and refused_after < 1.0
    assert pools.waiting == 0


def test_pool_threads_log_with_the_requests_id(pools):
    async def main():
        request_id_var.set("req-42")
        io_id = await offload.blocking(request_id_var.get)
        compute_id = await offload.compute(request_id_var.get, heavy=True)
        return io_id, compute_id, await offload.blocking(lambda: threading.current_thread().name)

    io_id, compute_id, _ = asyncio.run(main())
    assert io_id == compute_id == "req-42"
    assert asyncio.run(offload.blocking(request_id_var.get)) == ""  # reset after each call


@pytest.mark.django_db
def test_a_request_cancelled_while_waiting_is_observed_as_499_and_leaves_the_queue(iris, monkeypatch, fake_runtime):
    seen = []
    monkeypatch.setattr(predict_service, "observe", lambda outcome: seen.append(outcome))
    gated = fake_runtime("gated")
    loaded = get_pool().loaded(memo.version(memo.model("iris"), None))

    def request():
        return predict_service.predict(model_name="iris", ref=None, key=None, body={"instances": ROWS})

    async def until(condition) -> None:
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.005)

    async def main():
        first = asyncio.ensure_future(request())
        await until(gated.entered.is_set)  # it holds the batcher's thread
        second = asyncio.ensure_future(request())
        await until(lambda: loaded.batcher.queue_depth == 1)  # queued behind it
        second.cancel()  # what the server does when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await second
        gated.gate.set()
        answer = await first
        await until(lambda: loaded.batcher.stats.dropped > 0)  # the batcher thread reaches the cancelled one
        return answer

    np.testing.assert_allclose(asyncio.run(main())["predictions"], echo_rows(ROWS, 3), rtol=1e-6)
    assert [n for n, _ in gated.forwards] == [len(ROWS)]  # the cancelled request was never computed
    assert sorted(o.status for o in seen) == [200, 499]
    assert [o.error_code for o in seen if o.status == 499] == ["cancelled"]
    deadline = time.monotonic() + 5
    while loaded.batcher.queue_depth and time.monotonic() < deadline:  # the batcher's thread reaches it
        time.sleep(0.01)
    assert loaded.batcher.stats.dropped == 1 and loaded.batcher.stats.request_count == 1


class Rows(list):
    """A list a weak reference can watch (the parsed JSON of `instances` is a plain list)."""


@pytest.mark.django_db
@pytest.mark.parametrize("capture", [False, True])
def test_while_a_predict_waits_for_its_batch_the_parsed_body_is_kept_only_to_be_captured(iris, capture,
                                                                                         fake_runtime):
    """The parsed JSON (a Python object per number) is dropped once converted to arrays, unless
    the model captures payloads: a web process's heap does not hold every waiting request's body."""
    from registry.models import RegisteredModel

    RegisteredModel.objects.filter(name="iris").update(capture_payloads=capture)
    memo.forget()
    gated = fake_runtime("gated")
    get_pool().loaded(memo.version(memo.model("iris"), None))  # read in this thread: its transaction has the rows
    instances = Rows(list(row) for row in ROWS[:2])
    alive = weakref.ref(instances)
    body = {"instances": instances}
    del instances

    async def main():
        nonlocal body
        task = asyncio.ensure_future(predict_service.predict(model_name="iris", ref=None, key=None, body=body,
                                                             request_id="r1"))
        body = None
        assert await asyncio.to_thread(gated.entered.wait, 10)
        gc.collect()
        kept = alive() is not None
        gated.gate.set()
        return kept, await task

    kept, response = asyncio.run(main())
    assert kept == capture
    assert response["id"] == "r1"
    np.testing.assert_allclose(response["predictions"], echo_rows(ROWS[:2], 3), rtol=1e-6)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_with_the_fronts_pools_the_event_loop_never_computes(pools, digits_demo, monkeypatch):
    """A request for an image model, as the front serves it: the registry read and the model load (with its
    warm-up forward) go to an I/O thread, decoding the images to a compute thread, the request's forward to
    the batcher's thread; the loop's thread does none of them."""
    from inference.pipeline.steps import ImageDecode
    from inference.runtime.pytorch import PyTorchRuntime
    from tests.inference.support import register_demo

    register_demo(digits_demo)
    threads: dict[str, list[str]] = {"decode": [], "forward": [], "load": []}
    for cls, name, kind in ((ImageDecode, "__call__", "decode"), (PyTorchRuntime, "predict", "forward"),
                            (PyTorchRuntime, "load", "load")):
        real = getattr(cls, name)

        def spy(self, *args, _real=real, _kind=kind, **kwargs):
            threads[_kind].append(threading.current_thread().name)
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, spy)
    from inference.demo import digit_png_base64, digits_split

    _, _, images, labels = digits_split()
    body = {"instances": [digit_png_base64(image) for image in images[:4]]}

    async def main():
        response = await predict_service.predict(model_name="digits", ref=None, key=None, body=body)
        return threading.current_thread().name, response

    loop_thread, response = asyncio.run(main())
    assert [p[0]["label"] for p in response["predictions"]] == [str(label) for label in labels[:4]]
    assert [t[:2] for t in threads["load"]] == ["io"]
    assert [t[:7] for t in threads["decode"]] == ["compute"]
    assert threads["forward"][-1].startswith("batcher:digits")  # the ones before: the load's warm-up, in io
    assert loop_thread not in threads["load"] + threads["decode"] + threads["forward"]


class Explode(Step):
    """An operator's postprocess step that fails on a row summing to 99 or more (EchoRuntime's first value)."""

    name = "explode"

    def __call__(self, data, ctx):
        key = self.pick(data, None, kind="output")
        if np.any(data[key][:, 0] >= 99):
            raise ValueError("cannot postprocess 99")
        return data


@pytest.mark.django_db
def test_postprocess_runs_once_per_batch_on_the_batchers_thread_and_a_failure_stays_with_its_request(
        settings, fake_runtime, monkeypatch):
    """v1 requests without parameters that share a forward are postprocessed by one call, on the batcher's
    thread, each answer as if alone; a request with parameters is postprocessed by itself; a batch whose
    postprocess fails is postprocessed again request by request, so only the bad one fails."""
    from inference.pipeline.base import Pipeline
    from tests.conftest import small_mlp
    from tests.inference.support import config, ready

    settings.INFERENCE_PIPELINE_STEPS = {"explode": f"{__name__}.Explode"}
    labels = ["a", "b", "c"]
    ready(small_mlp(0), config(postprocess=[{"step": "explode"}, {"step": "softmax"},
                                            {"step": "topk", "k": 2}, {"step": "labels", "labels": labels}]),
          model_name="post", aliases=["production"])
    gated = fake_runtime("gated")
    loaded = get_pool().loaded(memo.version(memo.model("post"), None))
    calls: list[tuple[int, str]] = []
    real = Pipeline.__call__

    def spy(self, data, ctx):
        if self is loaded.served.post:
            calls.append((len(next(iter(data.values()))), threading.current_thread().name))
        return real(self, data, ctx)

    monkeypatch.setattr(Pipeline, "__call__", spy)
    rows = [[[float(i), 0.0, 0.0, 0.0]] * (1 + i % 2) for i in range(6)]

    def body(i: int) -> dict:
        return {"instances": rows[i], **({"parameters": {"top_k": 1}} if i == 5 else {})}

    async def main(bodies):
        first = asyncio.ensure_future(predict_service.predict(model_name="post", ref=None, key=None, body=bodies[0]))
        assert await asyncio.to_thread(gated.entered.wait, 10)  # the first holds the batcher's thread
        rest = [asyncio.ensure_future(predict_service.predict(model_name="post", ref=None, key=None, body=b))
                for b in bodies[1:]]
        deadline = time.monotonic() + 10
        while loaded.batcher.queue_depth < len(rest):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        gated.gate.set()
        return await asyncio.gather(first, *rest, return_exceptions=True), threading.current_thread().name

    answers, loop_thread = asyncio.run(main([body(i) for i in range(6)]))
    for i, answer in enumerate(answers):
        alone = loaded.served.predict_direct(body(i)["instances"], body(i).get("parameters"))
        assert answer["predictions"] == alone, i
    assert len(answers[5]["predictions"][0]) == 1  # its own top_k
    batcher_thread = f"batcher:{loaded.batcher.name}"
    # The first alone (on the batcher's thread), the four without parameters in one call there, the
    # one with parameters by itself, on the loop; then the direct calls above.
    assert calls[:3] == [(1, batcher_thread), (sum(len(r) for r in rows[1:5]), batcher_thread),
                         (len(rows[5]), loop_thread)]

    # One request that cannot be postprocessed among others: it alone fails, with the step's error.
    calls.clear()
    gated.gate.clear()
    gated.entered.clear()
    bad = {"instances": [[99.0, 0.0, 0.0, 0.0]]}
    answers, loop_thread = asyncio.run(main([body(0), body(1), bad, body(3)]))
    assert isinstance(answers[2], ModelFailed) and "cannot postprocess 99" in answers[2].message
    for i, answer in zip((0, 1, 3), (answers[0], answers[1], answers[3])):
        assert answer["predictions"] == loaded.served.predict_direct(body(i)["instances"]), i
    # The batch's call, which failed; then each of its requests again, by itself, on the loop.
    queued = [len(rows[1]), 1, len(rows[3])]
    assert calls[1] == (sum(queued), batcher_thread)
    assert sorted(calls[2:5]) == sorted((n, loop_thread) for n in queued)
