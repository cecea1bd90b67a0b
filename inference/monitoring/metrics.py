"""Prometheus metrics (prometheus_client), named after Triton's where they mean the same.

The effective batch size of a version is ``inference_count / exec_count``
(``inference_count_total`` counts instances, ``inference_exec_count_total`` forward
passes). With ``PROMETHEUS_MULTIPROC_DIR`` set (several web processes:
``inference_platform.serve`` sets it), the client library writes per-process files and
``/metrics`` aggregates them; a stopping process marks its live gauges dead
(``at_exit`` in ``inference_platform.front``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = Counter(
    "inference_request", "Predict requests by model, version and HTTP status.", ["model", "version", "status"]
)
INFERENCE_COUNT = Counter("inference_count", "Instances computed (samples).", ["model", "version"])
EXEC_COUNT = Counter("inference_exec_count", "Forward passes (batches) executed.", ["model", "version"])
REQUEST_SECONDS = Histogram(
    "inference_request_duration_seconds", "Time from request parsed to response ready.", ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_SECONDS = Histogram(
    "inference_queue_duration_seconds", "Time a request waited in its batcher's queue.", ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
COMPUTE_SECONDS = Histogram(
    "inference_compute_duration_seconds", "Forward-pass time of the batch a request ran in.", ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "inference_queue_depth", "Requests waiting in a batcher's queue.", ["model", "version"], multiprocess_mode="livesum"
)
RATELIMIT_REJECTED = Counter("inference_ratelimit_rejected", "Requests refused with 429.", ["model"])
RATELIMIT_FAIL_OPEN = Counter(
    "inference_ratelimit_fail_open", "Requests let through because the rate-limit cache was unreachable."
)
AUTH_FAILURES_THROTTLED = Counter(
    "inference_auth_failures_throttled",
    "Requests refused with 429 because their address failed authentication too often (INFERENCE_AUTH_FAILURE_RATE).",
)
MODEL_LOAD_SECONDS = Histogram(
    "inference_model_load_duration_seconds", "Time to load a version (read, verify, build, warm up).",
    ["model", "version"], buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60),
)
LOADED_MODELS = Gauge("inference_loaded_models", "Versions loaded in this process.", multiprocess_mode="livesum")
RECORDS_WRITTEN = Counter("inference_request_records_written", "Request records written to the database.")
RECORDS_DROPPED = Counter(
    "inference_request_records_dropped", "Request records dropped: the buffer was full (database slow or down)."
)
RECORDS_WRITE_FAILURES = Counter("inference_request_records_write_failures", "Bulk writes of request records that failed.")


# Requests counted by the reports being run together (``counted_together``), added to their counters at the end.
_counts: ContextVar[dict[Any, int] | None] = ContextVar("inference_request_counts", default=None)


@contextmanager
def counted_together() -> Iterator[None]:
    """Count the requests reported inside with one ``inc(n)`` per counter, at the end: with several web
    processes each ``inc`` is a write to a shared file under a lock (prometheus_client's multiprocess
    mode), and the front runs the reports of many requests at once (``observe.HeldReports``).
    Histograms have no such call: each request's durations are observed one by one."""
    counts: dict[Any, int] = {}
    token = _counts.set(counts)
    try:
        yield
    finally:
        _counts.reset(token)
        for child, n in counts.items():
            child.inc(n)


class VersionMetrics:
    """The label children of one served version, resolved once at load (not per request)."""

    def __init__(self, model: str, version: int | str):
        labels = (model, str(version))
        self.model, self.version = labels
        self.inference_count = INFERENCE_COUNT.labels(*labels)
        self.exec_count = EXEC_COUNT.labels(*labels)
        self.request_seconds = REQUEST_SECONDS.labels(*labels)
        self.queue_seconds = QUEUE_SECONDS.labels(*labels)
        self.compute_seconds = COMPUTE_SECONDS.labels(*labels)
        self.queue_depth = QUEUE_DEPTH.labels(*labels)
        self._depth: int | None = None  # the value this process last set queue_depth to
        self._depth_lock = threading.Lock()
        self._status: dict[int, Counter] = {}

    def set_queue_depth(self, depth: int) -> None:
        """Set the queue-depth gauge (the batcher's thread, as it takes each batch: ``Batcher.on_depth``),
        unless it holds `depth` already: a multiprocess gauge's write takes a lock and a write to its file."""
        with self._depth_lock:
            if depth != self._depth:
                self.queue_depth.set(depth)
                self._depth = depth

    def on_batch(self, requests: int, instances: int, seconds: float) -> None:
        self.exec_count.inc()
        self.inference_count.inc(instances)

    def request(self, status: int, timings: dict[str, float]) -> None:
        child = self._status.get(status)
        if child is None:
            child = self._status[status] = REQUESTS.labels(self.model, self.version, str(status))
        counts = _counts.get()
        if counts is None:
            child.inc()
        else:
            counts[child] = counts.get(child, 0) + 1
        if "total" in timings:
            self.request_seconds.observe(timings["total"])
        if "queue" in timings:
            self.queue_seconds.observe(timings["queue"])
            self.compute_seconds.observe(timings["compute"])


def observe_request(model: str, version: int | None, status: int, timings: dict[str, float], metrics: VersionMetrics | None) -> None:
    """Count one predict request (metrics resolved at load when the version is known)."""
    if metrics is not None:
        metrics.request(status, timings)
    else:
        REQUESTS.labels(model, str(version or ""), str(status)).inc()

# Shadow traffic (inference.services.shadow): what happened to the copies of requests sent to a shadow version.
SHADOW_REQUESTS = Counter(
    "inference_shadow_requests",
    "Requests copied to a shadow version, by outcome: compared, dropped (shadow queue full), failed.",
    ["model", "primary", "shadow", "outcome"],
)
SHADOW_PREDICTIONS = Counter(
    "inference_shadow_predictions", "Predictions compared with a shadow's, by top-1 agreement (agreed, disagreed).",
    ["model", "primary", "shadow", "agreement"],
)
SHADOW_ABS_DIFF = Counter(
    "inference_shadow_abs_diff", "Sum of |primary - shadow| over the numeric output elements compared.",
    ["model", "primary", "shadow"],
)
SHADOW_DIFF_ELEMENTS = Counter(
    "inference_shadow_diff_elements", "Numeric output elements compared (the mean absolute difference is "
    "inference_shadow_abs_diff_total / inference_shadow_diff_elements_total).", ["model", "primary", "shadow"],
)
