"""The one observation point of an inference request: metrics, access log line, request record.

``services.observed()`` calls ``observe(outcome)`` once per request (v1 predict, v2
infer), however it ends. Everything here is O(µs) and touches no database: label
children were resolved at load (``VersionMetrics``), the log line is formatted and queued
for the log writer thread, the record is one ``deque.append`` (``monitoring.records``
writes it later, in bulk).

``INFERENCE_MONITORING_ENABLED = False`` turns all three off (the benchmark's baseline);
``INFERENCE_REQUEST_RECORDS`` and ``INFERENCE_ACCESS_LOG`` turn off one each.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from ..conf import hot
from . import records
from .logs import BackgroundStreamHandler, JsonFormatter, key_prefix_var, request_id_var
from .metrics import counted_together, observe_request

access_logger = logging.getLogger("inference.access")
logger = logging.getLogger("inference.monitoring")
_INFO = logging.INFO

# The reports of the request being served, where its server holds them until the response is sent.
_held: ContextVar[list[Callable[[], None]] | None] = ContextVar("inference_reports_held", default=None)

# How long the front's loop keeps answered requests' reports before it runs them together, and how many
# it keeps at most. Run one by one, each report ran cold between two requests, on the loop a lone
# client's next request waits for; run together they are one warm loop (docs/benchmarks.md). The
# metrics, access lines and records of a process are so up to this late.
REPORTS_EVERY = 0.05
REPORTS_MAX = 1024


def report(fn: Callable[[], None]) -> None:
    """Run `fn` (a request's observation: ``observe`` and the hooks) now, or once the response has
    been handed to the server where the server holds reports (``reports_after_response``)."""
    held = _held.get()
    if held is None:
        fn()
    else:
        held.append(fn)


def _run(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - a report never touches a response
        logger.exception("reporting a request failed")


class HeldReports:
    """The reports of requests the front has answered, run together on its event loop: every
    REPORTS_EVERY seconds, as soon as REPORTS_MAX wait, and as the process stops (``run_held_reports``)."""

    def __init__(self) -> None:
        self.pending: list[Callable[[], None]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.taking = threading.Lock()  # the loop's timer and a stopping process's thread may both run them

    def add(self, fns: list[Callable[[], None]], loop: asyncio.AbstractEventLoop) -> None:
        if loop is not self.loop:  # another loop than the one the timer is on (tests: one per asyncio.run)
            self.run()
            self.loop, self.timer = loop, None
        self.pending.extend(fns)  # one call under the GIL: a run() from another thread takes them or not
        if len(self.pending) >= REPORTS_MAX:
            self.run()
        elif self.timer is None:
            self.timer = loop.call_later(REPORTS_EVERY, self.on_timer)

    def on_timer(self) -> None:
        self.timer = None
        self.run()

    def run(self) -> None:
        """Run every report held (on the loop, or from another thread once the loop serves no more)."""
        with self.taking:
            pending, self.pending = self.pending, []
        with counted_together():
            for fn in pending:
                _run(fn)


_front_reports = HeldReports()


def run_held_reports() -> None:
    """Run the reports the front holds now: as its process stops, and in tests."""
    _front_reports.run()


@contextmanager
def reports_after_response() -> Iterator[None]:
    """Hold the reports of the request served inside: the web server's front sends the response inside
    the block. A lone client's request then does not wait for its own metrics, access line, record and
    hooks; on an event loop they are held further, and run with other requests' (``HeldReports``).
    A report that fails is logged; it never touches the response."""
    held: list[Callable[[], None]] = []
    token = _held.set(held)
    try:
        yield
    finally:
        _held.reset(token)
        if held:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not on a loop: now
                for fn in held:
                    _run(fn)
            else:
                _front_reports.add(held, loop)


class AccessRecord(logging.LogRecord):
    """The access line's LogRecord, built in about a microsecond.

    ``logger.info()`` spends most of a line's cost looking up the caller's frame and the
    thread and process names (docs/benchmarks.md); an access line needs none of them, so it is built from
    fixed defaults and handed to ``logger.handle()``: same handlers, filters and
    formatters as any other record (every standard attribute is there, for %-style formats).
    """

    _defaults = {
        "args": (), "exc_info": None, "exc_text": None, "stack_info": None, "pathname": __file__,
        "filename": "observe.py", "module": "observe", "funcName": "observe", "lineno": 0, "thread": None,
        "threadName": None, "process": None, "processName": None, "taskName": None, "relativeCreated": 0.0,
        "levelno": _INFO, "levelname": "INFO",
    }

    def __init__(self, name: str, msg: str, created: float, fields: dict[str, Any]):  # no super().__init__()
        now = created
        d = self.__dict__
        d.update(self._defaults)
        d["name"] = name
        d["msg"] = msg
        d["created"] = now
        d["msecs"] = (now - int(now)) * 1000.0
        d.update(fields)


def _fast_sinks() -> list[Any] | None:
    """The access logger's handlers when a line can skip the LogRecord: all of them the
    platform's own (background writer, JSON format, no filters), as LOGGING configures them."""
    handlers = access_logger.handlers
    if not handlers or access_logger.filters or access_logger.propagate:
        return None
    for h in handlers:
        if not (isinstance(h, BackgroundStreamHandler) and type(h.formatter) is JsonFormatter and not h.filters
                and h.level <= _INFO):
            return None
    return handlers


def observe(outcome: Any, *, count: bool = True, record: bool = True) -> None:
    """Report one finished request (a ``services.PredictOutcome``)."""
    if not hot.INFERENCE_MONITORING_ENABLED:
        return
    timings = outcome.timings
    loaded = outcome.loaded
    if count:
        observe_request(outcome.model, outcome.version, outcome.status, timings,
                        loaded.metrics if loaded is not None else None)
    request_id = outcome.request_id or request_id_var.get()
    key_prefix = outcome.key_prefix or key_prefix_var.get()
    latency = timings.get("total", 0.0)
    now = outcome.finished_at or time.time()  # when the request ended: its report may run later
    if access_logger.isEnabledFor(_INFO):
        fields = {
            "request_id": request_id, "key_prefix": key_prefix, "model": outcome.model, "version": outcome.version,
            "status": outcome.status, "latency_ms": round(latency * 1000.0, 3), "batch_size": outcome.batch_size,
            "instances": outcome.instances, "error_code": outcome.error_code or None,
        }
        sinks = _fast_sinks()
        if sinks is not None:  # the same line JsonFormatter writes, without building a LogRecord
            for h in sinks:
                h.emit_line(h.formatter.format_fields("inference.access", "INFO", "predict", now, fields))
        else:
            access_logger.handle(AccessRecord("inference.access", "predict", now, fields))
    if record and hot.INFERENCE_REQUEST_RECORDS:
        # A plain tuple in records.Entry's field order: cheaper than the NamedTuple, and the
        # garbage collector stops tracking it.
        records.add((
            now, request_id, outcome.model, outcome.version, key_prefix, outcome.status, outcome.error_code,
            latency, timings.get("queue"), timings.get("compute"), outcome.instances, outcome.batch_size,
            outcome.queue_depth, outcome.payload,
        ))
