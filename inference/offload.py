"""Where a request's blocking and CPU-heavy work runs, so that an event loop only parses,
authenticates and waits.

Three ways to call sync code from the async request path (``inference.services.predict``):

* ``await without_blocking(fn, *args, **kwargs)``: for a function that can usually answer from
  this process's memory (a key verified a moment ago, a resolved version, a loaded model). It is
  called at once with ``may_block=False``; if it would have to wait (the database, the shared
  cache, loading a model) it raises ``WouldBlock`` before doing anything, and is called again,
  with ``may_block=True``, where blocking is allowed (``blocking``). A WouldBlock that names what
  it waits for (``WouldBlock(key)``: a key's prefix, a rate's lease, the registry's generation)
  is waited for once per event loop: the calls that miss while one such call is in its thread
  wait for it, then answer from memory (a memo ends for every request in flight at once: without
  this each of them would take a thread, and a lease of requests would be taken once per request).
* ``await blocking(fn, *args, **kwargs)``: database, cache and file I/O, model loads.
* ``await compute(fn, *args, heavy=..., **kwargs)``: decoding, pre/post-processing, tensor
  conversion. ``heavy=False`` (within the caller's budget, e.g. a small JSON body) runs it at
  once; ``heavy=True`` off the loop.

Where "off the loop" is depends on who runs the loop:

* The web server's front (``inference_platform.front``) gives each web process two bounded pools
  as it starts (``configure``): INFERENCE_IO_THREADS threads for blocking calls (each keeps its
  own database connection and cache clients, as Django keeps them per thread) and
  INFERENCE_COMPUTE_THREADS for heavy compute. At most INFERENCE_COMPUTE_QUEUE calls wait for a
  compute thread; past that a request is refused at once (503 overloaded), never queued without
  bound.
* Anywhere else the loop serves one request or one job chunk (Django's WSGI handler running an
  async view through ``async_to_sync``, a background job's ``asyncio.run``, the test client):
  blocking calls go back to the calling thread (``sync_to_async(thread_sensitive=True)``, Django's
  own rule: the request's database connection and transaction), and compute runs at once.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from .errors import ErrorCode, ServiceUnavailable
from .monitoring.logs import key_prefix_var, request_id_var

T = TypeVar("T")


class WouldBlock(Exception):
    """Raised by a ``may_block=False`` call that cannot answer without waiting (nothing was done).

    `key` (hashable) names what the call waits for, when another call that waits for the same will
    let it answer from memory (``without_blocking`` then waits for that one)."""

    def __init__(self, key: Hashable | None = None):
        super().__init__(key)
        self.key = key


# (event loop, WouldBlock key) -> the futures of the calls waiting for the one in its thread.
_in_flight: dict[tuple[asyncio.AbstractEventLoop, Hashable], list[asyncio.Future]] = {}
FOLLOW_LIMIT = 3  # waits for others' calls before a call goes to a thread itself


class Pools:
    """A web process's threads for blocking calls and for heavy compute (``configure``)."""

    def __init__(self, *, io_threads: int, compute_threads: int, compute_queue: int):
        self.io = ThreadPoolExecutor(max(1, io_threads), thread_name_prefix="io")
        self.compute = ThreadPoolExecutor(max(1, compute_threads), thread_name_prefix="compute")
        self.compute_queue = max(1, compute_queue)
        self.waiting = 0  # compute calls submitted and not finished
        self.lock = threading.Lock()

    def done(self, _future: Future) -> None:
        with self.lock:
            self.waiting -= 1

    def shutdown(self) -> None:
        self.io.shutdown(wait=False, cancel_futures=True)
        self.compute.shutdown(wait=False, cancel_futures=True)


_pools: Pools | None = None


def configure(*, io_threads: int, compute_threads: int, compute_queue: int) -> Pools:
    """Give this process its pools (the web server's front, once per process as it starts)."""
    global _pools
    if _pools is not None:
        _pools.shutdown()
    _pools = Pools(io_threads=io_threads, compute_threads=compute_threads, compute_queue=compute_queue)
    return _pools


def unconfigure() -> None:
    """Back to running off-loop work in the calling thread (tests)."""
    global _pools
    if _pools is not None:
        _pools.shutdown()
    _pools = None


def _in_request_context(request_id: str, key_prefix: str, io: bool, fn: Callable[[], T]) -> T:
    """Run fn in a pool thread with the request's log context (its id, its key's prefix)."""
    tokens = request_id_var.set(request_id), key_prefix_var.set(key_prefix)
    try:
        return fn()
    finally:
        request_id_var.reset(tokens[0])
        key_prefix_var.reset(tokens[1])
        if io:
            close_old_connections()  # as at the end of a request: a broken or aged connection goes


def _submit(executor: ThreadPoolExecutor, fn: Callable[[], T], *, io: bool) -> Future:
    # The pool thread runs fn in its own context, not a copy of the request's: Django's cache clients
    # (kept per context) then live as long as the thread, not one request.
    return executor.submit(_in_request_context, request_id_var.get(), key_prefix_var.get(), io, fn)


async def blocking(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Call fn where it may block (database, cache, files, model loads); return its result."""
    call = functools.partial(fn, *args, **kwargs)
    if _pools is None:
        return await sync_to_async(call, thread_sensitive=True)()
    return await asyncio.wrap_future(_submit(_pools.io, call, io=True))


async def without_blocking(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Call fn(..., may_block=False) at once; if it raises WouldBlock, fn(..., may_block=True) via ``blocking``,
    unless a call that waits for the same (``WouldBlock.key``) is in its thread: then wait for that one and
    call fn(..., may_block=False) again (at most FOLLOW_LIMIT times)."""
    for waits in range(FOLLOW_LIMIT + 1):
        try:
            return fn(*args, may_block=False, **kwargs)
        except WouldBlock as exc:
            key = exc.key
        if key is None or waits == FOLLOW_LIMIT:
            break
        loop = asyncio.get_running_loop()
        waiting = _in_flight.get((loop, key))
        if waiting is None:
            break
        woken = loop.create_future()
        waiting.append(woken)
        await woken
    if key is None:
        return await blocking(fn, *args, may_block=True, **kwargs)
    name = (asyncio.get_running_loop(), key)
    leads = name not in _in_flight
    if leads:
        _in_flight[name] = []
    try:
        return await blocking(fn, *args, may_block=True, **kwargs)
    finally:
        if leads:
            for woken in _in_flight.pop(name):
                if not woken.done():  # a waiter cancelled meanwhile
                    woken.set_result(None)


async def compute(fn: Callable[..., T], /, *args: Any, heavy: bool, **kwargs: Any) -> T:
    """Call CPU-bound fn: at once when not `heavy`, else in the compute pool (503 when too many wait)."""
    pools = _pools
    if not heavy or pools is None:
        return fn(*args, **kwargs)
    with pools.lock:
        if pools.waiting >= pools.compute_queue:
            raise ServiceUnavailable(
                f"{pools.waiting} requests are already waiting for a compute thread (INFERENCE_COMPUTE_QUEUE "
                f"{pools.compute_queue}); retry shortly", retry_after=1, code=ErrorCode.OVERLOADED)
        pools.waiting += 1
    future = _submit(pools.compute, functools.partial(fn, *args, **kwargs), io=False)
    future.add_done_callback(pools.done)  # counted until the thread is done, even if the client left
    # A request cancelled while its call still waits for a thread cancels the call (wrap_future).
    return await asyncio.wrap_future(future)
