"""Structured logs: one JSON object a line, with the current request's id.

``JsonFormatter`` (LOGGING's ``json`` formatter) writes ``ts``, ``level``, ``logger``,
``message``, the id of the request being served and its API key's prefix (``request_id``,
``key_prefix``: context variables set by ``RequestIdMiddleware`` and the API key
authentication), every ``extra={...}`` field, and
the traceback as ``exc``. The predict path's access log (logger ``inference.access``)
is one such line per request; see ``monitoring.observe``.

``BackgroundStreamHandler`` (LOGGING's ``console`` handler) writes the lines from one
background thread, so that a request thread never waits on a log write.

This module is imported while logging is configured: it must not import Django models.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from contextvars import ContextVar
from typing import Any

import orjson

#: The id of the request this thread (or task) is serving; "" outside a request.
request_id_var: ContextVar[str] = ContextVar("request_id", default="")
#: The prefix of the API key that authenticated it (never the key); "" if none.
key_prefix_var: ContextVar[str] = ContextVar("key_prefix", default="")

# Attributes every LogRecord has: anything else on a record came from `extra`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


def _default(value: Any) -> Any:
    return str(value)


class JsonFormatter(logging.Formatter):
    """Format a record as one line of JSON (orjson; numpy values and odd objects as strings)."""

    _second = -1
    _second_text = ""

    def _timestamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:  # strftime once per second, not per line
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            out["request_id"] = request_id
            key_prefix = key_prefix_var.get()
            if key_prefix:
                out["key_prefix"] = key_prefix
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(out, default=_default, option=_OPTIONS).decode()

    def format_fields(self, name: str, levelname: str, message: str, created: float, fields: dict[str, Any]) -> str:
        """The line ``format()`` writes for a record with these attributes and `fields` as its
        extra, without building the record (the access log's fast path)."""
        out: dict[str, Any] = {"ts": self._timestamp(created), "level": levelname, "logger": name, "message": message}
        out.update(fields)
        return orjson.dumps(out, default=_default, option=_OPTIONS).decode()


_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class BackgroundStreamHandler(logging.StreamHandler):
    """A StreamHandler that never makes the logging thread wait on I/O or on other loggers.

    ``emit`` formats the record in the caller's thread and appends the line to a deque (one
    atomic operation: no handler lock); one background thread per process writes what has
    queued, many lines per ``write``, every ``FLUSH_SECONDS`` — at once for a WARNING or
    worse — and ``flush()`` (called by ``logging.shutdown`` at interpreter exit) writes the
    rest. granian's web processes end without ``atexit`` (forked by multiprocessing): their
    lifespan shutdown (``at_exit`` in ``inference_platform.front``) calls ``flush()``.
    A plain StreamHandler takes its lock and makes a ``write`` system call for every line:
    with dozens of request threads each logging an access line, they queue on that lock,
    and each write hands the GIL to another thread.
    """

    FLUSH_SECONDS = 0.2
    MAX_LINES = 100_000  # past this many unwritten lines (stream blocked), new ones are dropped

    def __init__(self, stream: Any = None):
        super().__init__(stream)
        self.lock = None  # Handler.acquire()/release() do nothing without one
        self._after_fork()
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self._lines: deque[str] = deque()
        self._wake = threading.Event()
        self._write_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def _at_fork_reinit(self) -> None:
        """logging re-creates every handler's lock in a forked child (a qcluster worker); this
        handler has none — _after_fork, registered above, gives the child its own queue."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - logging never raises into the caller
            self.handleError(record)
            return
        self.emit_line(line, record.levelno)

    def emit_line(self, line: str, levelno: int = logging.INFO) -> None:
        """Queue an already formatted line."""
        lines = self._lines
        if len(lines) >= self.MAX_LINES:
            self.dropped += 1
            return
        lines.append(line)
        if self._thread is None:
            self._start()
        if levelno >= logging.WARNING:
            self._wake.set()

    def _start(self) -> None:
        with self._write_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait(self.FLUSH_SECONDS)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Write every queued line now (one write), then flush the stream."""
        with self._write_lock:
            lines = self._lines
            n = len(lines)
            stream = self.stream
            if stream is None:
                return
            try:
                if n:
                    stream.write("\n".join([lines.popleft() for _ in range(n)]) + self.terminator)
                if hasattr(stream, "flush"):
                    stream.flush()
            except Exception:  # noqa: BLE001 - e.g. a closed stream at interpreter exit
                pass
