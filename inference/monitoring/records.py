"""Request records, buffered in memory per process and written in bulk off the request path.

The request path calls ``add(entry)``: one ``deque.append`` (atomic under the GIL, no
lock), nothing else. A daemon thread, started on first use in each process (so after a
fork), wakes every ``INFERENCE_RECORDS_FLUSH_SECONDS`` or as soon as
``INFERENCE_RECORDS_FLUSH_SIZE`` records wait, and inserts them with multi-row
``INSERT`` statements. What is still buffered when a process stops is flushed then: in a
web process by the ASGI lifespan shutdown (``at_exit`` in ``inference_platform.front``;
granian's processes are forked by multiprocessing and end without running ``atexit``
handlers), under gunicorn by its ``worker_exit`` hook, elsewhere by the ``atexit`` handler
below. The buffer is bounded (``INFERENCE_RECORDS_BUFFER_MAX``): when the database cannot
keep up or is down, new records are dropped and counted
(``inference_request_records_dropped_total``) rather than growing memory; a failed write
is retried on the next flush while the buffer has room.

Tests and one-off scripts call ``flush()`` themselves (``INFERENCE_RECORDS_FLUSH_THREAD``
off).
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
from collections import deque
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson
from django.conf import settings

from ..conf import hot
from . import metrics

logger = logging.getLogger("inference.monitoring")

# Latency buckets of the rollups: bucket i holds latencies in (BASE * RATIO**(i-1), BASE * RATIO**i]
# milliseconds (bucket 0: up to BASE). A 10 % step keeps percentile estimates within ~5 %.
BUCKET_BASE_MS = 0.1
BUCKET_RATIO = 1.1
_LOG_RATIO = math.log(BUCKET_RATIO)
MAX_BUCKET = 200  # ~ 19 000 s


def latency_bucket(latency_ms: float) -> int:
    """Return the rollup bucket index of a latency in milliseconds."""
    if latency_ms <= BUCKET_BASE_MS:
        return 0
    return min(MAX_BUCKET, math.ceil(math.log(latency_ms / BUCKET_BASE_MS) / _LOG_RATIO - 1e-9))


def bucket_upper_ms(index: int) -> float:
    return BUCKET_BASE_MS * BUCKET_RATIO**index


class Entry(NamedTuple):
    """One request as the request path hands it over (converted to a row by the flusher).

    The request path builds a plain tuple in this order (cheaper); this names the fields."""

    at: float  # time.time() when the request finished
    request_id: str
    model: str
    version: int | None
    key_prefix: str
    status: int
    error_code: str
    latency_s: float
    queue_s: float | None
    compute_s: float | None
    instances: int
    batch_size: int
    queue_depth: int
    payload: tuple[Any, Any] | None  # (request body, response body) when capture is on


COLUMNS = (
    "at", "request_id", "model", "version", "key_prefix", "status", "error_code", "latency_ms", "latency_bucket",
    "queue_ms", "compute_ms", "instances", "batch_size", "queue_depth", "request_payload", "response_payload",
)


def _json_ready(value: Any) -> Any:
    """Return a payload as plain JSON values (numpy arrays become lists), or a note when too large."""
    try:
        raw = orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY, default=str)
    except (TypeError, orjson.JSONEncodeError) as exc:
        return {"not_captured": f"not serialisable: {exc}"}
    limit = settings.INFERENCE_CAPTURE_MAX_BYTES
    if len(raw) > limit:
        return {"not_captured": f"{len(raw)} bytes, over INFERENCE_CAPTURE_MAX_BYTES ({limit})"}
    return orjson.loads(raw)


class RecordBuffer:
    """This process's records waiting to be written, and the thread that writes them."""

    def __init__(self) -> None:
        self._items: deque[tuple] = deque()
        self._wake = threading.Event()
        self._flush_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.written = 0
        self.dropped = 0
        self.failures = 0

    def __len__(self) -> int:
        return len(self._items)

    # ---- request path ---------------------------------------------------------------------
    def add(self, entry: tuple) -> None:
        """Buffer one record (O(1), no I/O); drop it, counted, when the buffer is full."""
        items = self._items
        size = len(items)
        if size >= hot.INFERENCE_RECORDS_BUFFER_MAX:
            self.dropped += 1
            metrics.RECORDS_DROPPED.inc()
            return
        items.append(entry)
        if self._thread is None:
            self._start()
        elif size + 1 >= hot.INFERENCE_RECORDS_FLUSH_SIZE and not self._wake.is_set():
            self._wake.set()

    # ---- background thread ---------------------------------------------------------------------
    def _start(self) -> None:
        if not settings.INFERENCE_RECORDS_FLUSH_THREAD:
            return
        with self._start_lock:
            if self._thread is not None:
                return
            self._stopping = False
            self._wake.clear()
            self._thread = threading.Thread(target=self._run, name="request-records", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        from django.db import close_old_connections, connections

        try:
            while True:
                self._wake.wait(settings.INFERENCE_RECORDS_FLUSH_SECONDS)
                self._wake.clear()
                try:
                    close_old_connections()  # this thread's: replace one that went stale or broke
                    self.flush()
                except Exception:  # noqa: BLE001 - the writer thread never dies
                    logger.exception("request records: flush failed")
                if self._stopping:
                    break
        finally:
            connections.close_all()  # this thread's own connections

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the writer thread after a last flush (tests; process exit)."""
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        self._wake.set()
        thread.join(timeout)
        self._thread = None

    def _after_fork(self) -> None:
        """In a forked child: no writer thread yet, nothing inherited to write twice."""
        self._items = deque()
        self._wake = threading.Event()
        self._flush_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._thread = None
        self._stopping = False

    # ---- writing ----------------------------------------------------------------------------------
    def clear(self) -> None:
        self._items.clear()

    def flush(self) -> int:
        """Write every buffered record now; return how many were written."""
        with self._flush_lock:
            items = self._items
            batch = [items.popleft() for _ in range(len(items))]
            if not batch:
                return 0
            try:
                write(batch)
            except Exception as exc:  # noqa: BLE001 - database down: keep them for the next flush
                self.failures += 1
                metrics.RECORDS_WRITE_FAILURES.inc()
                room = settings.INFERENCE_RECORDS_BUFFER_MAX - len(items)
                keep = batch[-room:] if room > 0 else []
                items.extendleft(reversed(keep))
                lost = len(batch) - len(keep)
                if lost:
                    self.dropped += lost
                    metrics.RECORDS_DROPPED.inc(lost)
                logger.warning("request records: could not write %d record(s) (%s); %d kept for the next flush",
                               len(batch), exc, len(keep))
                return 0
            self.written += len(batch)
            metrics.RECORDS_WRITTEN.inc(len(batch))
            return len(batch)


def _row(e: tuple, at_to_db: Any, json_to_db: Any) -> tuple:
    at, request_id, model, version, key_prefix, status, error_code, latency_s, queue_s, compute_s, \
        instances, batch_size, queue_depth, payload = e
    latency_ms = latency_s * 1000.0
    request_payload = response_payload = None
    if payload is not None:
        request_payload = json_to_db(_json_ready(payload[0]))
        response_payload = json_to_db(_json_ready(payload[1]))
    return (
        at_to_db(at), request_id[:128], model[:63], version, key_prefix[:16], status, error_code[:40], latency_ms,
        latency_bucket(latency_ms), None if queue_s is None else queue_s * 1000.0,
        None if compute_s is None else compute_s * 1000.0, instances, batch_size, queue_depth,
        request_payload, response_payload,
    )


CHUNK = 1000


def write(entries: list[tuple]) -> None:
    """Insert records with multi-row INSERT statements: no model instances, no per-row SQL."""
    from django.db import connection, transaction

    from .models import RequestRecord

    meta = RequestRecord._meta
    at_field, json_field = meta.get_field("at"), meta.get_field("request_payload")

    if connection.vendor == "sqlite":
        seconds: dict[int, str] = {}

        def at_to_db(at: float) -> Any:  # what DateTimeField stores on SQLite (naive UTC text), 10x cheaper
            second = int(at)
            text = seconds.get(second)
            if text is None:
                text = seconds[second] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(second))
            return f"{text}.{int((at - second) * 1e6):06d}"
    elif connection.vendor == "postgresql":
        def at_to_db(at: float) -> Any:  # the driver adapts aware datetimes itself
            return datetime.fromtimestamp(at, UTC)
    else:
        def at_to_db(at: float) -> Any:
            return at_field.get_db_prep_value(datetime.fromtimestamp(at, UTC), connection)

    def json_to_db(value: Any) -> Any:
        return json_field.get_db_prep_value(value, connection)

    quote = connection.ops.quote_name
    head = f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(c) for c in COLUMNS)}) VALUES "
    one = f"({', '.join(['%s'] * len(COLUMNS))})"
    # Many rows per statement (as many as the backend takes parameters for): one statement
    # step, so the writer thread gives up the GIL once per statement, not once per row.
    per_statement = max(1, min(CHUNK, connection.ops.bulk_batch_size(COLUMNS, entries)))
    statements: dict[int, str] = {}
    with transaction.atomic(), connection.cursor() as cursor:
        for start in range(0, len(entries), per_statement):
            chunk = entries[start:start + per_statement]
            sql = statements.get(len(chunk)) or statements.setdefault(len(chunk), head + ", ".join([one] * len(chunk)))
            cursor.execute(sql, [v for e in chunk for v in _row(e, at_to_db, json_to_db)])


BUFFER = RecordBuffer()
os.register_at_fork(after_in_child=BUFFER._after_fork)


def add(entry: tuple) -> None:
    BUFFER.add(entry)


def flush() -> int:
    """Write this process's buffered records now (tests, exit hooks); return how many."""
    return BUFFER.flush()


@atexit.register
def flush_at_exit() -> None:
    """Write what is still buffered when the process ends (not where records wait for explicit flushes)."""
    if not len(BUFFER) or not settings.INFERENCE_RECORDS_FLUSH_THREAD:
        return
    try:
        BUFFER.flush()
    except Exception:  # noqa: BLE001 - exiting: report, never raise
        logger.exception("request records: final flush failed")

