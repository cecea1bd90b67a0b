"""A batcher's requests: what a caller queues (``Pending``), what it asks done with its outputs on the
batcher's thread (``Finish``), and the batcher's refusals (``Overloaded``, ``BatcherStopped``).
``inference.runtime.batcher`` runs them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import numpy as np

Arrays = dict[str, np.ndarray]

class Overloaded(Exception):
    """The batcher's queue is full; the client should retry after `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class BatcherStopped(Exception):
    """The batcher was stopped (its version was unloaded) before the request ran."""


@dataclass(frozen=True, eq=False)
class Finish:
    """What a request's outputs become on the batcher's thread, right after its forward pass.

    ``fn(outputs, n)`` returns one result per instance of `n`. One call finishes the outputs of a
    batch's requests with the same `key` together (a postprocess vectorised over the batch, not run
    once per request on the event loop). Not finished here, and left to their callers as without
    this: requests of a key whose outputs hold more than `max_elements` in one request, and those
    whose call failed or did not give one result per instance (each caller then reports its own
    error)."""

    key: Any
    fn: Callable[[Arrays, int], list]
    max_elements: int


QUEUED, RUNNING, CANCELLED, DONE = "queued", "running", "cancelled", "done"


@dataclass(eq=False)
class Pending:
    """One submitted request: its arrays, when it arrived, and what became of it.

    An event-loop caller (``Batcher.run``) is woken through its `waiter` and reads ``outputs()``; a
    thread's caller (``Batcher.submit``, then ``result``) waits on a ``concurrent.futures.Future``,
    made for it alone: the loop's requests, most of them, need no lock and condition each.
    """

    arrays: Arrays
    n: int
    signature: tuple
    enqueued: float
    wait_for_more: bool
    lock: Any  # the batcher's: a caller's cancel and the batcher's start do not cross
    # An event-loop caller's wake-up: (its loop, the asyncio future it awaits). The batcher wakes each
    # loop once per batch for all of its requests (``_wake``), not once per request.
    waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future] | None = None
    future: Future | None = None  # a thread's caller's (no waiter)
    state: str = QUEUED
    value: Arrays | None = None
    error: BaseException | None = None
    started: float = 0.0  # when its batch began computing
    finished: float = 0.0
    batch_size: int = 0
    finish: Finish | None = None
    results: list | None = None  # what `finish` made of its outputs, when it ran on the batcher's thread
    finish_seconds: float = 0.0

    def result(self, timeout: float | None) -> Arrays:
        """A thread's caller: wait for this request's outputs; on timeout, drop it from the queue and
        raise TimeoutError."""
        assert self.future is not None, "an event-loop caller's request: await Batcher.run instead"
        try:
            return self.future.result(timeout)
        except FutureTimeout:
            self.cancel()  # succeeds only while still queued: then it is never computed
            raise TimeoutError(f"no result within {timeout:.1f} s") from None

    def outputs(self) -> Arrays:
        """The outputs of a request whose batch has run (the model's own error raised)."""
        if self.error is not None:
            raise self.error
        assert self.state == DONE, "outputs() before the batch has run"
        return self.value

    def cancel(self) -> bool:
        """Drop the request if it is still queued (it is then never computed); False once it runs."""
        with self.lock:
            if self.state != QUEUED:
                return False
            self.state = CANCELLED
        if self.future is not None:
            self.future.cancel()
        return True

    def cancelled(self) -> bool:
        return self.state == CANCELLED

    def start(self) -> bool:
        """The batcher takes it (its lock held): False if it was cancelled meanwhile."""
        if self.state != QUEUED:
            return False
        if self.future is not None and not self.future.set_running_or_notify_cancel():
            self.state = CANCELLED  # its caller cancelled the thread future itself
            return False
        self.state = RUNNING
        return True

    def resolve(self, value: Arrays | None = None, error: BaseException | None = None) -> None:
        """The batcher's thread: its outputs, or the model's error."""
        self.value, self.error, self.state = value, error, DONE
        if self.future is not None:
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(value)


def signature_of(arrays: Arrays) -> tuple:
    """Return what must match for two requests to share a batch: names, per-instance shapes, dtypes."""
    return tuple((k, v.shape[1:], v.dtype.str) for k, v in arrays.items())


@dataclass
class BatcherStats:
    exec_count: int = 0  # forward passes
    inference_count: int = 0  # instances computed
    request_count: int = 0
    failures: int = 0
    dropped: int = 0  # cancelled before they ran
    rejected: int = 0  # refused because the queue was full
