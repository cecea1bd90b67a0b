"""Dynamic batching: many requests, one forward pass (after MLServer's AdaptiveBatcher).

One ``Batcher`` wraps one runtime per (version, device) per process, with one thread that runs
every forward pass: a caller only queues its arrays and waits (``await run(...)`` on an event
loop, ``submit(...).result(timeout)`` in a thread), so no event loop ever computes.

* A request that finds the batcher idle is taken at once: batching costs no wait at low load.
* Requests that arrive while a batch computes queue up and form the next batch, up to
  ``max_batch_size`` instances. A partial batch waits for more only while its oldest request is
  younger than ``max_batch_delay_ms`` (and only if that request arrived while the batcher was busy).
* With concurrent clients (batches of 2+ requests lately), a partial batch also waits, after a
  forward, up to min(``max_batch_delay_ms``, half a forward) for the requests that forward's
  answers free up: closed-loop clients otherwise split into two half-full batches that alternate
  (docs/benchmarks.md). A lone client never waits.
* Requests are batched together only when their per-instance shapes and dtypes match
  (variable dimensions differ between requests).
* The queue is bounded (``max_queue_size`` requests): a full queue raises ``Overloaded`` at once
  (a 503 with Retry-After), never an unbounded wait.
* A request whose caller gave up (``Pending.cancel()``, a timeout, a client gone) is dropped,
  not computed.
* A failing forward fails only the requests of its batch, with the model's error; the thread
  keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from typing import Any

import numpy as np

from .memory import IDLE_RELEASE_AFTER_S, release_free_memory
from .pending import Arrays, BatcherStats, BatcherStopped, Finish, Overloaded, Pending, signature_of

logger = logging.getLogger(__name__)

class Batcher:
    """Gather requests into batches for one predict function, on one thread."""

    def __init__(
        self,
        predict: Callable[[Arrays], Arrays],
        *,
        max_batch_size: int = 32,
        max_batch_delay_ms: float = 5.0,
        max_queue_size: int = 256,
        name: str = "batcher",
        on_batch: Callable[[int, int, float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        gather_after_forward: bool = True,
    ):
        self.predict = predict
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_delay = max(0.0, float(max_batch_delay_ms)) / 1000.0
        self.max_queue_size = max(1, int(max_queue_size))
        self.name = name
        self.on_batch = on_batch  # called (requests, instances, seconds) after each forward
        # Called with the requests left waiting as the thread takes each batch (the queue-depth gauge):
        # once per batch, where a write per request cost the event loop a gauge write each.
        self.on_depth = on_depth
        self.stats = BatcherStats()
        self._queue: deque[Pending] = deque()
        self._queued_n = 0  # instances in the queue (cancelled ones until they are removed)
        self._gathering = False  # the batcher thread waits for a partial batch to fill
        self._cond = threading.Condition()
        self._busy = False  # the thread is computing a batch
        self._stopping = False
        self._compute_ewma = 0.0  # seconds per forward, smoothed
        self._requests_ewma = 0.0  # requests per batch, smoothed
        self._free_since = 0.0  # when the last forward ended
        self._computed_since_release = False  # a forward ran since free heap memory was last released
        self.gather_after_forward = gather_after_forward
        self._thread = threading.Thread(target=self._run, name=f"batcher:{name}", daemon=True)
        self._thread.start()

    # ---- client side -------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def submit(self, arrays: Arrays, *, waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future] | None = None,
               finish: Finish | None = None) -> Pending:
        """Queue a request (arrays with the instances on axis 0) and return its Pending at once;
        Overloaded when the queue is full, BatcherStopped once stopped."""
        n = len(next(iter(arrays.values()))) if arrays else 0
        with self._cond:
            if self._stopping:
                raise BatcherStopped(f"{self.name} is stopped")
            if len(self._queue) >= self.max_queue_size:
                self.stats.rejected += 1
                raise Overloaded(
                    f"{self.name}: {len(self._queue)} requests already queued (max_queue_size "
                    f"{self.max_queue_size}); retry shortly",
                    retry_after=1,
                )
            idle = not self._busy and not self._queue
            pending = Pending(arrays, n, signature_of(arrays), time.perf_counter(), wait_for_more=not idle,
                              lock=self._cond, waiter=waiter, future=None if waiter is not None else Future(),
                              finish=finish)
            self._queue.append(pending)
            self._queued_n += n
            # A batcher gathering a partial batch is woken when the batch can be full (else at its
            # deadline): one wake-up per batch, not one per arrival, each of which takes the GIL
            # from the thread that is serving requests.
            if not self._gathering or self._queued_n >= self.max_batch_size:
                self._cond.notify()
        return pending

    async def run(self, arrays: Arrays, *, timeout: float | None, finish: Finish | None = None) -> Pending:
        """Queue a request and wait for its batch without blocking the event loop; return the
        finished Pending (its outputs: ``pending.outputs()``). The model's own error is raised
        as it is; TimeoutError after `timeout` seconds. A request given up (timeout, cancellation)
        while still queued is never computed."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        pending = self.submit(arrays, waiter=(loop, done), finish=finish)
        # A timer that fails `done`, rather than asyncio.timeout() (which cancels the task and turns the
        # cancellation back into a TimeoutError): the same outcome at about half the cost per request.
        timer = loop.call_later(timeout, _expire, done) if timeout is not None else None
        try:
            await done
        except TimeoutError:
            pending.cancel()  # still queued: never computed
            raise TimeoutError(f"no result within {timeout:.1f} s") from None
        except asyncio.CancelledError:
            pending.cancel()  # the client went away
            raise
        finally:
            if timer is not None:
                timer.cancel()
        pending.outputs()  # the model's own error, raised here
        return pending

    def stop(self, timeout: float = 10.0) -> None:
        """Finish what is queued, then stop the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # ---- batcher thread -------------------------------------------------------------------
    def _take(self) -> list[Pending] | None:
        """Wait for, then remove and return, the next batch (None when stopping with nothing left;
        an empty list when idle for IDLE_RELEASE_AFTER_S since a forward pass)."""
        with self._cond:
            while True:
                while not self._queue:
                    if self._stopping:
                        return None
                    if self._computed_since_release:
                        if not self._cond.wait(IDLE_RELEASE_AFTER_S) and not self._queue:
                            self._computed_since_release = False
                            return []
                        continue
                    self._cond.wait()
                head = self._queue[0]
                batch, total = self._compatible(head)
                wait_until = head.enqueued + self.max_delay if head.wait_for_more else 0.0
                if self.gather_after_forward and self._requests_ewma >= 2.0:
                    # Concurrent clients: after a forward, wait a little for the requests its
                    # answers free up, rather than alternate between two half-full batches.
                    wait_until = max(wait_until, self._free_since + min(self.max_delay, self._compute_ewma / 2))
                if total < self.max_batch_size and wait_until and self.max_delay and not self._stopping:
                    remaining = wait_until - time.perf_counter()
                    if remaining > 0:
                        self._gathering = True
                        try:
                            self._cond.wait(remaining)
                        finally:
                            self._gathering = False
                        continue  # re-gather: more may have arrived, or the head was cancelled
                for p in batch:
                    self._queue.remove(p)
                    self._queued_n -= p.n
                live = [p for p in batch if p.start()]
                self.stats.dropped += len(batch) - len(live)
                if live:
                    self._busy = True
                    return live

    def _compatible(self, head: Pending) -> tuple[list[Pending], int]:
        batch, total = [head], head.n
        if self.max_batch_size > 1:
            for p in list(self._queue)[1:]:
                if total >= self.max_batch_size:
                    break
                if p.signature == head.signature and total + p.n <= self.max_batch_size:
                    batch.append(p)
                    total += p.n
        return batch, total

    def _run(self) -> None:
        while True:
            batch = self._take()
            if batch is None:
                return
            if not batch:  # idle since its last forward: what the batches freed goes back to the OS
                release_free_memory()
                continue
            if self.on_depth is not None:
                try:
                    self.on_depth(len(self._queue))
                except Exception:  # noqa: BLE001 - observers never break serving
                    logger.exception("%s: on_depth observer failed", self.name)
            self._compute(batch)
            with self._cond:
                # Requests that arrive from now on, to an empty queue, run at once.
                self._busy = False

    def _compute(self, batch: list[Pending]) -> None:
        started = time.perf_counter()
        total = sum(p.n for p in batch)
        try:
            if len(batch) == 1:
                inputs = batch[0].arrays
            else:
                inputs = {k: np.concatenate([p.arrays[k] for p in batch]) for k in batch[0].arrays}
            outputs = self.predict(inputs)
        except Exception as exc:  # noqa: BLE001 - the model's error goes to its own requests
            self.stats.failures += 1
            logger.warning("%s: a batch of %d request(s) failed: %s", self.name, len(batch), exc)
            finished = time.perf_counter()
            for p in batch:
                p.started, p.finished, p.batch_size = started, finished, total
                p.resolve(error=exc)
            _wake(batch)
            return
        finished = time.perf_counter()
        self._compute_ewma = 0.9 * self._compute_ewma + 0.1 * (finished - started) if self._compute_ewma else finished - started
        self._requests_ewma = 0.9 * self._requests_ewma + 0.1 * len(batch)
        self._free_since = finished
        self._computed_since_release = True
        self.stats.exec_count += 1
        self.stats.inference_count += total
        self.stats.request_count += len(batch)
        # Observed before any request has its answer: a client that reads the metrics after its
        # response finds its batch counted.
        if self.on_batch is not None:
            try:
                self.on_batch(len(batch), total, finished - started)
            except Exception:  # noqa: BLE001 - observers never break serving
                logger.exception("%s: on_batch observer failed", self.name)
        offset = 0
        for p in batch:
            p.started, p.finished, p.batch_size = started, finished, total
            part = {k: v[offset : offset + p.n] for k, v in outputs.items()}
            offset += p.n
            p.resolve(part)
        _finish(batch, outputs, total)
        _wake(batch)


def _finish(batch: list[Pending], outputs: Arrays, total: int) -> None:
    """Finish the batch's requests that asked for it (``Finish``): one call for the requests of each key,
    on their outputs together; a call that fails leaves its requests to their callers."""
    groups: dict[Any, list[Pending]] = {}
    for p in batch:
        if p.finish is not None:
            groups.setdefault(p.finish.key, []).append(p)
    if not groups or not total:
        return
    per_instance = sum(v.size for v in outputs.values()) / total
    for group in groups.values():
        finish = group[0].finish
        assert finish is not None
        if per_instance * max(p.n for p in group) > finish.max_elements:
            continue
        t0 = time.perf_counter()
        n = sum(p.n for p in group)
        try:
            if len(group) == len(batch):
                results = finish.fn(outputs, n)
            else:
                parts = [p.value for p in group]
                results = finish.fn({k: np.concatenate([part[k] for part in parts]) for k in outputs}, n)
        except Exception:  # noqa: BLE001 - each request is finished again by its caller, which reports it
            continue
        if len(results) != n:  # not one result per instance: its callers finish each request
            continue
        seconds = time.perf_counter() - t0
        offset = 0
        for p in group:
            p.results, p.finish_seconds = results[offset : offset + p.n], seconds
            offset += p.n


def _wake(batch: list[Pending]) -> None:
    """Wake the event loops awaiting a finished batch: one call per loop, whatever its number of requests."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future]] = {}
    for p in batch:
        if p.waiter is not None:
            by_loop.setdefault(p.waiter[0], []).append(p.waiter[1])
    for loop, waiters in by_loop.items():
        try:
            loop.call_soon_threadsafe(_set_done, waiters)
        except RuntimeError:  # that loop is closed: its callers are gone
            pass


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _set_done(waiters: list[asyncio.Future]) -> None:
    for waiter in waiters:
        if not waiter.done():  # a caller that timed out or was cancelled meanwhile
            waiter.set_result(None)


__all__ = ["Batcher", "BatcherStopped", "CancelledError", "Finish", "Overloaded", "Pending", "signature_of"]
