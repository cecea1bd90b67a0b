"""Dynamic batching (inference.runtime.batcher.Batcher) under real concurrency, with fake models."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from inference.runtime.batcher import Batcher, BatcherStopped, Finish, Overloaded

WAIT = 10.0  # seconds any single result may take before a test gives up


class FakeModel:
    """predict(x) = concat(x * 2, x[:, :1]): each row answers with its own id column.

    Records every forward: its input array, thread name and batch size. `gate`, when set,
    holds every forward until it is opened; `started` fires when a forward begins.
    """

    def __init__(self, *, delay: float = 0.0, gate: threading.Event | None = None, fail_on: float | None = None):
        self.delay = delay
        self.gate = gate
        self.fail_on = fail_on
        self.started = threading.Event()
        self.lock = threading.Lock()
        self.seen: list[np.ndarray] = []
        self.threads: list[str] = []

    def __call__(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = arrays["x"]
        with self.lock:
            self.seen.append(x.copy())
            self.threads.append(threading.current_thread().name)
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT), "the test never opened the gate"
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and np.any(x == self.fail_on):
            raise ValueError(f"the model cannot take {self.fail_on}")
        return {"y": np.concatenate([x * 2, x[:, :1]], axis=1)}

    @property
    def batch_sizes(self) -> list[int]:
        return [len(x) for x in self.seen]

    def seen_values(self) -> set[float]:
        return {float(v) for x in self.seen for v in x[:, 0]}


def expected(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x * 2, x[:, :1]], axis=1)


@pytest.fixture
def batchers():
    """Batchers made by a test; stopped at its end."""
    made: list[Batcher] = []

    def make(predict, **kwargs) -> Batcher:
        b = Batcher(predict, **kwargs)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop(timeout=5)


def run_threads(n: int, target) -> list[BaseException]:
    """Run target(i) on n threads started together; return the exceptions they raised."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        try:
            barrier.wait()
            target(i)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a client thread hung"
    return errors


def test_32_concurrent_clients_each_get_their_own_answer_from_shared_batches(batchers):
    fake = FakeModel(delay=0.01)
    b = batchers(fake, max_batch_size=16, max_batch_delay_ms=20, max_queue_size=256, name="fake")
    results: dict[int, np.ndarray] = {}
    inputs: dict[int, np.ndarray] = {}

    def client(i: int) -> None:
        rows = i % 3 + 1  # 1 to 3 instances per request: slicing must respect each request's rows
        x = np.array([[i * 10 + r, i + 0.5, -i] for r in range(rows)], dtype=np.float32)
        inputs[i] = x
        results[i] = b.submit({"x": x}).result(WAIT)["y"]

    assert run_threads(32, client) == []
    for i in range(32):
        np.testing.assert_array_equal(results[i], expected(inputs[i]))
    total_rows = sum(len(x) for x in inputs.values())
    assert sum(fake.batch_sizes) == total_rows
    assert max(fake.batch_sizes) > 3, f"no request shared a forward: {fake.batch_sizes}"
    assert b.stats.exec_count == len(fake.seen) < 32
    assert b.stats.request_count == 32
    assert b.stats.inference_count == total_rows
    assert max(fake.batch_sizes) <= 16
    assert b.stats.failures == b.stats.dropped == b.stats.rejected == 0
    # every forward ran on the batcher's own thread
    assert set(fake.threads) == {"batcher:fake"}


def test_an_idle_batcher_runs_a_lone_request_at_once(batchers):
    fake = FakeModel()
    b = batchers(fake, max_batch_size=32, max_batch_delay_ms=500)
    for i in range(3):
        x = np.array([[float(i), 1.0]], dtype=np.float32)
        t0 = time.perf_counter()
        out = b.submit({"x": x}).result(WAIT)
        elapsed = time.perf_counter() - t0
        np.testing.assert_array_equal(out["y"], expected(x))
        assert elapsed < 0.25, f"a lone request waited {elapsed * 1000:.0f} ms (max_batch_delay_ms is 500)"
    assert fake.batch_sizes == [1, 1, 1]


def test_max_batch_size_1_runs_each_request_alone(batchers):
    fake = FakeModel(delay=0.005)
    b = batchers(fake, max_batch_size=1, max_batch_delay_ms=50)
    out: dict[int, np.ndarray] = {}

    def client(i: int) -> None:
        out[i] = b.submit({"x": np.array([[float(i), 0.0]], dtype=np.float32)}).result(WAIT)["y"]

    assert run_threads(12, client) == []
    assert fake.batch_sizes == [1] * 12
    assert b.stats.exec_count == 12
    for i in range(12):
        assert out[i].tolist() == [[2.0 * i, 0.0, float(i)]]


def test_requests_of_different_shapes_or_dtypes_never_share_a_forward(batchers):
    gate = threading.Event()
    fake = FakeModel(gate=gate)
    b = batchers(fake, max_batch_size=64, max_batch_delay_ms=1)
    first = b.submit({"x": np.zeros((1, 3), np.float32)})
    assert fake.started.wait(WAIT)
    kinds = [((1, 3), np.float32), ((1, 5), np.float32), ((1, 3), np.int64), ((2, 5), np.float32)]
    pending = []
    for i in range(16):
        shape, dtype = kinds[i % len(kinds)]
        x = (np.arange(np.prod(shape)).reshape(shape) + 100 * i).astype(dtype)
        pending.append((x, b.submit({"x": x})))
    gate.set()
    first.result(WAIT)
    for x, p in pending:
        y = p.result(WAIT)["y"]
        assert y.dtype == x.dtype  # an int64 request was never upcast by sharing with float32 ones
        np.testing.assert_array_equal(y, expected(x))
    later = fake.seen[1:]
    signatures = [(x.shape[1:], x.dtype) for x in later]
    # one forward per kind of request: (3,) float32, (5,) float32 (1- and 2-row requests), (3,) int64
    assert sorted((s, str(d)) for s, d in signatures) == sorted([((3,), "float32"), ((5,), "float32"), ((3,), "int64")])
    assert sorted(len(x) for x in later) == [4, 4, 4 + 8]
    assert b.stats.failures == 0


def test_a_full_queue_is_refused_at_once_with_retry_after(batchers):
    gate = threading.Event()
    fake = FakeModel(gate=gate)
    b = batchers(fake, max_batch_size=8, max_batch_delay_ms=0, max_queue_size=2)
    running = b.submit({"x": np.array([[1.0]], np.float32)})
    assert fake.started.wait(WAIT)
    queued = [b.submit({"x": np.array([[float(v)]], np.float32)}) for v in (2, 3)]
    assert b.queue_depth == 2
    t0 = time.perf_counter()
    with pytest.raises(Overloaded) as info:
        b.submit({"x": np.array([[4.0]], np.float32)})
    assert time.perf_counter() - t0 < 1.0  # refused at once (nothing would free the queue: the gate is shut)
    assert info.value.retry_after >= 1
    assert "max_queue_size" in str(info.value)
    assert b.stats.rejected == 1
    gate.set()
    assert running.result(WAIT)["y"].tolist() == [[2.0, 1.0]]
    assert [p.result(WAIT)["y"].tolist() for p in queued] == [[[4.0, 2.0]], [[6.0, 3.0]]]
    assert 4.0 not in fake.seen_values()
    # once drained, the batcher takes requests again
    assert b.submit({"x": np.array([[5.0]], np.float32)}).result(WAIT)["y"].tolist() == [[10.0, 5.0]]


def test_a_failing_batch_fails_only_its_own_requests_and_the_batcher_keeps_serving(batchers):
    gate = threading.Event()
    fake = FakeModel(gate=gate, fail_on=-1.0)
    b = batchers(fake, max_batch_size=8, max_batch_delay_ms=0)
    first = b.submit({"x": np.array([[1.0, 1.0]], np.float32)})
    assert fake.started.wait(WAIT)
    bad = b.submit({"x": np.array([[-1.0, 0.0]], np.float32)})
    bad_neighbour = b.submit({"x": np.array([[7.0, 0.0]], np.float32)})  # same shape: same batch as `bad`
    other_shape = b.submit({"x": np.array([[8.0, 0.0, 0.0]], np.float32)})  # another batch
    gate.set()
    assert first.result(WAIT)["y"].tolist() == [[2.0, 2.0, 1.0]]
    for p in (bad, bad_neighbour):
        with pytest.raises(ValueError, match="the model cannot take -1.0"):
            p.result(WAIT)
    assert other_shape.result(WAIT)["y"].tolist() == [[16.0, 0.0, 0.0, 8.0]]
    assert b.stats.failures == 1
    # the thread survived: later requests are served
    assert b._thread.is_alive()
    for v in (9.0, 10.0):
        assert b.submit({"x": np.array([[v, 0.0]], np.float32)}).result(WAIT)["y"].tolist() == [[2 * v, 0.0, v]]
    # a failing model does not poison the count of successful forwards
    assert b.stats.exec_count == 4


def test_a_request_cancelled_while_queued_is_never_computed(batchers):
    gate = threading.Event()
    fake = FakeModel(gate=gate)
    b = batchers(fake, max_batch_size=8, max_batch_delay_ms=0)
    slow = b.submit({"x": np.array([[1.0]], np.float32)})
    assert fake.started.wait(WAIT)
    given_up = b.submit({"x": np.array([[42.0]], np.float32)})
    with pytest.raises(TimeoutError):
        given_up.result(0.05)  # the caller stops waiting while the slow batch computes
    kept = b.submit({"x": np.array([[43.0]], np.float32)})
    gate.set()
    assert slow.result(WAIT)["y"].tolist() == [[2.0, 1.0]]
    assert kept.result(WAIT)["y"].tolist() == [[86.0, 43.0]]
    assert given_up.cancelled() and given_up.future.cancelled()
    assert 42.0 not in fake.seen_values()
    assert b.stats.dropped == 1
    assert b.stats.request_count == 2


def test_stop_finishes_queued_work_then_refuses_new_requests(batchers):
    gate = threading.Event()
    fake = FakeModel(gate=gate)
    b = batchers(fake, max_batch_size=1, max_batch_delay_ms=0)
    pending = [b.submit({"x": np.array([[float(v)]], np.float32)}) for v in (1, 2, 3)]
    assert fake.started.wait(WAIT)
    stopper = threading.Thread(target=b.stop)
    stopper.start()
    time.sleep(0.05)
    assert stopper.is_alive()  # stop() waits for the queued work
    with pytest.raises(BatcherStopped):
        b.submit({"x": np.array([[9.0]], np.float32)})
    gate.set()
    stopper.join(WAIT)
    assert not stopper.is_alive()
    assert [p.result(0)["y"].tolist() for p in pending] == [[[2.0, 1.0]], [[4.0, 2.0]], [[6.0, 3.0]]]
    assert not b._thread.is_alive()
    assert 9.0 not in fake.seen_values()


def test_on_batch_observer_sees_each_forward_and_cannot_break_serving(batchers):
    calls = []

    def observer(requests: int, instances: int, seconds: float) -> None:
        calls.append((requests, instances))
        raise RuntimeError("observer bug")

    b = batchers(FakeModel(), max_batch_size=8, on_batch=observer)
    out = b.submit({"x": np.array([[1.0], [2.0]], np.float32)}).result(WAIT)
    assert out["y"].tolist() == [[2.0, 1.0], [4.0, 2.0]]
    assert b.submit({"x": np.array([[3.0]], np.float32)}).result(WAIT)["y"].tolist() == [[6.0, 3.0]]
    assert calls == [(1, 2), (1, 1)]


def test_on_depth_sees_the_requests_left_waiting_at_each_batch_and_cannot_break_serving(batchers):
    gate = threading.Event()
    depths = []

    def observer(depth: int) -> None:
        depths.append((depth, threading.current_thread().name))
        raise RuntimeError("observer bug")

    fake = FakeModel(gate=gate)
    b = batchers(fake, max_batch_size=2, max_batch_delay_ms=0, on_depth=observer, name="depth")
    first = b.submit({"x": np.array([[1.0]], np.float32)})
    assert fake.started.wait(WAIT)
    rest = [b.submit({"x": np.array([[float(v)]], np.float32)}) for v in (2, 3, 4, 5, 6)]
    gate.set()
    assert [p.result(WAIT)["y"].tolist() for p in [first, *rest]] == [[[2.0 * v, v]] for v in range(1, 7)]
    # Taken alone; then 2 of the 5 waiting (3 left), 2 more (1 left), the last (none left).
    assert [d for d, _ in depths] == [0, 3, 1, 0]
    assert {t for _, t in depths} == {"batcher:depth"}

def test_awaiting_coroutines_share_batches_and_the_event_loop_never_computes(batchers):
    """Many requests awaiting `run` on one event loop: each gets its own rows back, batches form, and
    every forward runs on the batcher's thread, never on the loop's."""
    fake = FakeModel(delay=0.002)
    b = batchers(fake, max_batch_size=8, max_batch_delay_ms=2, max_queue_size=1024, name="shared")

    async def clients() -> tuple[list[np.ndarray], list[np.ndarray], str]:
        xs = [np.full((1 + i % 2, 2), float(i), np.float32) for i in range(200)]
        pendings = await asyncio.gather(*[b.run({"x": x}, timeout=WAIT) for x in xs])
        return xs, [p.outputs()["y"] for p in pendings], threading.current_thread().name

    xs, ys, loop_thread = asyncio.run(clients())
    for x, y in zip(xs, ys):
        np.testing.assert_array_equal(y, expected(x))
    assert set(fake.threads) == {"batcher:shared"} and loop_thread not in fake.threads
    assert max(fake.batch_sizes) > 1  # batches did form
    assert b.stats.request_count == 200


class Finisher:
    """A postprocess the batcher runs for its requests: labels each row "row <first value>"; records
    each call's batch size and thread; fails on a row whose first value is `fail_on`."""

    def __init__(self, fail_on: float | None = None, short: bool = False):
        self.calls: list[tuple[int, str]] = []
        self.fail_on = fail_on
        self.short = short  # returns one result too few

    def __call__(self, outputs: dict[str, np.ndarray], n: int) -> list:
        self.calls.append((n, threading.current_thread().name))
        y = outputs["y"]
        assert len(y) == n
        if self.fail_on is not None and np.any(y[:, -1] == self.fail_on):
            raise ValueError("postprocess failed")
        return [f"row {row[-1]:g}" for row in y][: n - 1 if self.short else n]


def _first_then_together(b: Batcher, fake: FakeModel, gate: threading.Event, first: tuple, rest: list[tuple]) -> list:
    """Run `first` alone (its forward held by `gate`), then `rest`, which queue meanwhile and share the
    next batch; each item is (x, finish). Return every Pending, first first."""
    gate.clear()
    fake.started.clear()

    async def clients():
        head = asyncio.ensure_future(b.run({"x": first[0]}, timeout=WAIT, finish=first[1]))
        assert await asyncio.to_thread(fake.started.wait, WAIT)
        asyncio.get_running_loop().call_later(0.05, gate.set)
        others = await asyncio.gather(*[b.run({"x": x}, timeout=WAIT, finish=f) for x, f in rest])
        return [await head, *others]

    return asyncio.run(clients())


def test_requests_of_one_kind_are_finished_on_the_batchers_thread_by_one_call_per_batch(batchers):
    gate = threading.Event()
    fake = FakeModel(gate=gate)
    b = batchers(fake, max_batch_size=32, max_batch_delay_ms=50, name="fin")
    finisher = Finisher()
    finish = Finish(key="k", fn=finisher, max_elements=100)
    xs = [np.full((1 + i % 3, 2), float(i), np.float32) for i in range(12)]
    pendings = _first_then_together(b, fake, gate, (xs[0], finish), [(x, finish) for x in xs[1:]])
    for x, p in zip(xs, pendings):
        assert p.results == [f"row {x[0, 0]:g}"] * len(x)  # its own rows, in order
        np.testing.assert_array_equal(p.outputs()["y"], expected(x))  # the raw outputs stay
    assert fake.batch_sizes == [1, sum(len(x) for x in xs[1:])]
    assert finisher.calls == [(1, "batcher:fin"), (sum(len(x) for x in xs[1:]), "batcher:fin")]


def test_finishing_falls_back_to_the_caller_where_it_cannot_be_done_for_the_batch(batchers):
    gate = threading.Event()
    fake = FakeModel(gate=gate)
    b = batchers(fake, max_batch_size=32, max_batch_delay_ms=50, name="fin2")

    def batch(finishes: list[Finish | None], values: list[float]) -> list:
        first = (np.full((1, 2), -9.0, np.float32), None)  # holds the thread while the others queue
        rest = [(np.full((1, 2), v, np.float32), f) for v, f in zip(values, finishes)]
        got = _first_then_together(b, fake, gate, first, rest)[1:]
        assert len(fake.seen[-1]) == len(values)  # they did share one forward
        return got

    # Different keys: one call per request, each finished.
    a, c = Finisher(), Finisher()
    got = batch([Finish("a", a, 100), Finish("c", c, 100)], [1.0, 2.0])
    assert [p.results for p in got] == [["row 1"], ["row 2"]] and len(a.calls) == len(c.calls) == 1
    # One key, the batch's call fails: each request is left to its caller (results None, outputs there).
    failing = Finisher(fail_on=4.0)
    got = batch([Finish("f", failing, 100)] * 2, [3.0, 4.0])
    assert [p.results for p in got] == [None, None] and len(failing.calls) == 1
    np.testing.assert_array_equal(got[1].outputs()["y"], expected(np.full((1, 2), 4.0, np.float32)))
    # Not one result per instance: left to the callers.
    short = Finisher(short=True)
    assert [p.results for p in batch([Finish("s", short, 100)] * 2, [5.0, 6.0])] == [None, None]
    # Outputs over the budget (3 elements per row here): not finished on the batcher's thread at all.
    small = Finisher()
    assert [p.results for p in batch([Finish("b", small, 2)] * 2, [7.0, 8.0])] == [None, None]
    assert small.calls == []
    # A request without a Finish in the batch: the other is still finished, by its own call.
    mixed = Finisher()
    got = batch([None, Finish("m", mixed, 100)], [9.0, 10.0])
    assert got[0].results is None and got[1].results == ["row 10"] and mixed.calls == [(1, "batcher:fin2")]


def test_run_raises_the_models_error_and_times_out_without_computing_later(batchers):
    gate = threading.Event()
    fake = FakeModel(gate=gate, fail_on=-1.0)
    b = batchers(fake, max_batch_size=1, max_batch_delay_ms=0)

    async def scenario() -> None:
        first = asyncio.ensure_future(b.run({"x": np.zeros((1, 1), np.float32)}, timeout=WAIT))
        assert await asyncio.to_thread(fake.started.wait, WAIT)  # the first holds the batcher's thread
        with pytest.raises(TimeoutError):  # the second waits in the queue, gives up after 50 ms
            await b.run({"x": np.full((1, 1), 7.0, np.float32)}, timeout=0.05)
        cancelled = asyncio.ensure_future(b.run({"x": np.full((1, 1), 8.0, np.float32)}, timeout=WAIT))
        await asyncio.sleep(0.01)
        cancelled.cancel()  # a client gone while queued
        await asyncio.sleep(0.01)
        gate.set()
        await first
        with pytest.raises(ValueError, match="cannot take -1.0"):
            await b.run({"x": np.full((1, 1), -1.0, np.float32)}, timeout=WAIT)

    asyncio.run(scenario())
    assert 7.0 not in fake.seen_values() and 8.0 not in fake.seen_values()  # given up while queued: never computed
    assert b.stats.dropped == 2


def test_with_concurrent_clients_a_batch_waits_for_the_requests_a_forward_frees():
    """Closed-loop clients (each sends its next request when answered) would otherwise split into
    two half-full batches that alternate: after a forward, the batcher waits (up to
    min(max_batch_delay, half a forward)) for the requests its answers free up."""
    import time

    import numpy as np

    from inference.runtime.batcher import Batcher

    def sizes(gather: bool) -> list[int]:
        seen: list[int] = []
        b = Batcher(lambda a: (seen.append(len(a["x"])), {"y": a["x"]})[1], max_batch_size=8,
                    max_batch_delay_ms=200, gather_after_forward=gather)
        try:
            b._requests_ewma, b._compute_ewma = 4.0, 0.4  # as after batches of 4 requests, 400 ms each
            b._free_since = time.perf_counter()  # a forward just ended
            first = b.submit({"x": np.zeros((1, 2))})  # to an idle batcher
            time.sleep(0.02)
            second = b.submit({"x": np.zeros((1, 2))})  # a client whose answer just came back
            first.result(5), second.result(5)
        finally:
            b.stop()
        return seen

    assert sizes(gather=True) == [2]
    assert sizes(gather=False) == [1, 1]


def test_a_gathering_batcher_runs_as_soon_as_its_batch_is_full(batchers):
    """While it waits for a partial batch to fill, the batcher is woken by the arrival that fills it
    (not by each arrival), and then runs at once, long before its deadline."""
    fake = FakeModel()
    b = batchers(fake, max_batch_size=4, max_batch_delay_ms=3000, name="gather")
    gate = threading.Event()
    fake.gate = gate
    first = b.submit({"x": np.array([[0.0]], dtype=np.float32)})  # to an idle batcher: runs alone
    assert fake.started.wait(WAIT)
    # queued behind it: they gather (up to 3 s) for the batch of 4
    x = [np.array([[float(i)], [float(i) + 0.5]], dtype=np.float32) if i == 1 else np.array([[float(i)]], dtype=np.float32)
         for i in range(1, 4)]
    t0 = time.perf_counter()
    rest = [b.submit({"x": x[0]})]  # the batcher is busy: this one waits for company
    gate.set()
    time.sleep(0.1)  # the batcher now gathers: 2 of 4 instances
    rest += [b.submit({"x": x[1]}), b.submit({"x": x[2]})]  # the third fills it
    for pending, xi in zip(rest, x):
        np.testing.assert_array_equal(pending.result(WAIT)["y"], expected(xi))
    elapsed = time.perf_counter() - t0
    first.result(WAIT)
    assert fake.batch_sizes == [1, 4], fake.batch_sizes
    assert elapsed < 1.0, f"the full batch waited {elapsed:.2f} s for its 3 s deadline"


def test_an_idle_batcher_gives_freed_heap_memory_back_once_per_idle_spell(batchers, monkeypatch):
    """After its forward passes, a batcher idle for IDLE_RELEASE_AFTER_S asks the C library to
    return freed heap memory to the OS: once per idle spell, not every IDLE_RELEASE_AFTER_S."""
    from inference.runtime import batcher as batcher_module

    released: list[float] = []
    monkeypatch.setattr(batcher_module, "IDLE_RELEASE_AFTER_S", 0.05)
    monkeypatch.setattr(batcher_module, "release_free_memory", lambda: released.append(time.perf_counter()))
    fake = FakeModel()
    b = batchers(fake, name="release")
    time.sleep(0.3)
    assert released == []  # nothing computed yet: nothing to give back
    b.submit({"x": np.array([[1.0]], dtype=np.float32)}).result(WAIT)
    deadline = time.perf_counter() + WAIT
    while not released and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert len(released) == 1
    time.sleep(0.3)  # still idle: no second release
    assert len(released) == 1
    np.testing.assert_array_equal(b.submit({"x": np.array([[2.0]], dtype=np.float32)}).result(WAIT)["y"],
                                  expected(np.array([[2.0]], dtype=np.float32)))
    while len(released) < 2 and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert len(released) == 2


def test_release_free_memory_gives_freed_heap_pages_back_through_glibc():
    """On this Linux (glibc) the call reaches malloc_trim, which returns freed pages from inside
    the heap (not only its top) to the OS."""
    from inference.runtime import memory

    assert memory._malloc_trim is not None
    blocks = [bytearray(4000) for _ in range(8000)]  # ~32 MB from malloc's heap (under the mmap threshold)
    keep = blocks[-1]  # holds the top of the heap: only a trim can give back what lies below it
    del blocks
    assert memory.release_free_memory() is True
    assert len(keep) == 4000


def test_the_allocator_policy_caps_malloc_arenas_unless_the_operator_chose(monkeypatch):
    """limit_arenas() is MALLOC_ARENA_MAX from inside the process (glibc's mallopt); an operator's own
    MALLOC_ARENA_MAX wins."""
    from inference.runtime import memory

    calls = []
    monkeypatch.setattr(memory, "_mallopt", lambda param, value: calls.append((param, value)) or 1)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert memory.limit_arenas() is True and calls == [(memory.M_ARENA_MAX, memory.ARENA_MAX)]
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert memory.limit_arenas() is False and len(calls) == 1


def test_an_event_loop_callers_request_has_no_thread_future_and_a_finished_one_cannot_be_cancelled(batchers):
    b = batchers(FakeModel(), max_batch_size=8)

    async def one():
        return await b.run({"x": np.array([[1.0]], np.float32)}, timeout=WAIT)

    awaited = asyncio.run(one())
    assert awaited.future is None  # woken through its loop: no lock and condition of its own
    assert awaited.outputs()["y"].tolist() == [[2.0, 1.0]] and not awaited.cancel()
    threaded = b.submit({"x": np.array([[2.0]], np.float32)})
    assert threaded.future is not None and threaded.result(WAIT)["y"].tolist() == [[4.0, 2.0]]
    assert not threaded.cancel() and not threaded.cancelled()
