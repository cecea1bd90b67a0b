"""Request paths written once, run by a blocking caller or by the async front.

A request path that has to wait (for its batch to be computed, for a model to load) is a
generator: it yields what it waits for, a ``Batch`` or a ``Blocking`` call, and is sent the
result (or has the exception thrown in at the ``yield``, where its ``except`` clauses map it
to an API error). Two drivers run such a generator:

* ``run(steps)`` waits by blocking the calling thread: WSGI views, background jobs, tests.
* ``await run_async(steps)`` waits by awaiting, so that one event loop serves every request
  of the web process (``inference_platform.front``): a request waiting for its batch is a
  suspended coroutine, not a thread.

The code between two waits runs where the driver runs it; for the async front that is the
event loop's thread, so it must be short: parsing, validation, tensor conversion, and the
rare database read of a cache miss (see ``inference_platform.front``). Anything long, such as
loading a model, is yielded as ``Blocking`` and runs in a thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from .runtime.batcher import INLINE_DRAIN_BELOW_S, Arrays, Batcher, Pending

T = TypeVar("T")


@dataclass
class Batch:
    """Compute `arrays` in `batcher`'s next batch; the result is the finished Pending."""

    batcher: Batcher
    arrays: Arrays
    timeout: float | None

    def wait(self) -> Pending:
        return self.batcher.run(self.arrays, self.timeout)

    async def wait_async(self) -> Pending:
        # On the loop, a fast model's forward runs inline (as on an idle WSGI thread); a
        # slower one too when this request is alone (see Batcher.begin); otherwise it goes
        # to the batcher thread while the loop serves other requests.
        pending = self.batcher.begin(self.arrays, inline_below_s=INLINE_DRAIN_BELOW_S, alone=loop_is_idle())
        if not pending.future.done():
            try:
                await asyncio.wait_for(asyncio.wrap_future(pending.future), self.timeout)
            except TimeoutError:
                pending.cancel()  # still queued: it is never computed
                raise TimeoutError(f"no result within {self.timeout:.1f} s") from None
            except asyncio.CancelledError:
                pending.cancel()  # the client went away
                raise
        pending.future.result(0)  # the model's own error, raised as Batcher.run raises it
        return pending


def loop_is_idle() -> bool:
    """Whether the running event loop has no other callback ready to run (no other request's
    task to step, no request that arrived meanwhile): the caller is alone.

    Reads asyncio's ``BaseEventLoop._ready``, the queue of ready callbacks; a loop without it
    (uvloop) is never taken to be idle, which only means no lone request is computed inline.
    """
    ready = getattr(asyncio.get_running_loop(), "_ready", None)
    return ready is not None and not ready


@dataclass
class Blocking:
    """Call `fn` (blocking: a model load, a file read); the result is its return value."""

    fn: Callable[[], Any]

    def wait(self) -> Any:
        return self.fn()

    async def wait_async(self) -> Any:
        return await asyncio.to_thread(_in_worker_thread, self.fn)


def _in_worker_thread(fn: Callable[[], Any]) -> Any:
    from django.db import connections

    try:
        return fn()
    finally:
        connections.close_all()  # this thread's own connections (an executor thread: none kept)


Wait = Batch | Blocking
Steps = Generator[Wait, Any, T]


def run(steps: Steps[T]) -> T:
    """Run a request path to its end, blocking this thread while it waits."""
    try:
        wait = next(steps)
        while True:
            try:
                result = wait.wait()
            except Exception as exc:  # noqa: BLE001 - handed to the path, which maps or re-raises it
                wait = steps.throw(exc)
            else:
                wait = steps.send(result)
    except StopIteration as stop:
        return stop.value


async def run_async(steps: Steps[T]) -> T:
    """Run a request path to its end on the event loop, awaiting while it waits."""
    try:
        wait = next(steps)
        while True:
            try:
                result = await wait.wait_async()
            except asyncio.CancelledError:
                steps.close()  # GeneratorExit at the yield: its observers record a cancelled request
                raise
            except Exception as exc:  # noqa: BLE001
                wait = steps.throw(exc)
            else:
                wait = steps.send(result)
    except StopIteration as stop:
        return stop.value
