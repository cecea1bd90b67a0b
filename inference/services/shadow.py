"""Shadow traffic: a copy of a share of an alias's requests, run by its shadow version off the request path.

The request path (``predict.predict`` / ``predict.infer``, once the client's answer is ready) does
two cheap things and nothing else: ``sample(route, version)``, a random draw against the alias's
percent (``Route.shadows``), and for a drawn request ``Copy.offer(...)``, which hands the request's
prepared input arrays and the primary's outputs to this process's bounded queue
(INFERENCE_SHADOW_QUEUE) with ``put_nowait``. A full queue drops the copy and counts it; nothing the
shadow does can delay or fail the client's request.

One daemon thread per process (started with the first copy, so after any fork; a plain thread
works the same under the ASGI front, gunicorn's WSGI threads and a django-q2 worker) takes the
copies, a batch's worth at a time (``gather``: up to INFERENCE_SHADOW_GATHER_MS for a full batch of
the shadow): it makes sure the shadow version is loaded in this
process (``pool.loaded``: a shadow counts as aliased, ``selectors.may_load_on_demand``, and the
production alias's shadow is preloaded), submits every copy to the shadow's own ``Batcher`` (so
copies batch together and with any direct requests to that version, and compete with them
fairly), then post-processes both sides numerically as v2 does (``postprocess_tensors``) and
compares them (``monitoring.shadow.compare``). The counts go to ``monitoring.shadow.TALLY``, which
this thread writes to ``ShadowRollup`` every INFERENCE_SHADOW_FLUSH_SECONDS (when background
writers run: INFERENCE_RECORDS_FLUSH_THREAD; tests call ``flush()``).

A shadow whose preprocess steps are those of the primary gets the primary's prepared arrays as
they are; one that preprocesses differently is given the request's decoded input, kept for the
copies drawn only, and prepares it itself, in this thread.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed

from registry.models import ModelVersion

from ..monitoring.shadow import TALLY, compare
from ..pipeline.base import StepContext, clean_parameters
from ..pipeline.served import Prepared, ServedVersion
from ..pool import get_pool
from ..routing import Route
from ..runtime.batcher import Overloaded

logger = logging.getLogger("inference.shadow")

MAX_IN_FLIGHT = 256  # copies one turn of the thread submits before it waits for their answers


@dataclass(eq=False)
class Copy:
    """One request drawn for its alias's shadow: filled in by the request path, run by the thread."""

    model: str
    primary: ModelVersion
    shadow: ModelVersion
    parameters: Any = None
    raw: tuple[str, Any, Any] | None = None  # ("instances", instances, maybe_bools) | ("arrays", arrays, None)
    # Set by offer(): the primary's served version, prepared input and outputs.
    served: ServedVersion = None  # type: ignore[assignment]
    prepared: Prepared = None  # type: ignore[assignment]
    outputs: dict[str, Any] = None  # type: ignore[assignment]
    numeric: bool = False  # `outputs` are already post-processed numerically (v2), else the model's raw ones

    def primary_outputs(self) -> dict[str, Any]:
        """The primary's numeric outputs (post-processed here, off the request path, for v1)."""
        return self.outputs if self.numeric else self.served.postprocess_tensors(self.outputs, self.prepared)

    @property
    def needs_raw(self) -> bool:
        """Whether the shadow preprocesses differently and needs the request's decoded input."""
        return self.shadow.preprocess != self.primary.preprocess

    def keep_instances(self, instances: Any, parameters: Any, *, maybe_bools: Any = True) -> None:
        """Keep a v1 request's instances and parameters (the instances only if the shadow needs them)."""
        self.parameters = parameters
        if self.needs_raw:
            self.raw = ("instances", instances, maybe_bools)

    def keep_arrays(self, arrays: dict[str, Any], parameters: Any) -> None:
        """Keep a v2 request's decoded input tensors and parameters (the tensors only if the shadow needs them)."""
        self.parameters = parameters
        if self.needs_raw:
            self.raw = ("arrays", arrays, None)

    def offer(self, *, served: ServedVersion, prepared: Prepared, outputs: dict[str, Any], numeric: bool) -> bool:
        """Hand the copy to the shadow thread (never blocks); False when the queue was full (counted)."""
        self.served, self.prepared, self.outputs, self.numeric = served, prepared, outputs, numeric
        return RUNNER.put(self)

    @property
    def labels(self) -> tuple[str, int, int]:
        return self.model, self.primary.version, self.shadow.version


def sample(route: Route, version: ModelVersion) -> Copy | None:
    """A Copy when this request (answered by `version`) is drawn for the route's shadow, else None."""
    if not route.shadows():
        return None
    shadow = route.shadow[0]  # type: ignore[index]  # shadows() is True only with a shadow
    return Copy(model=version.model.name, primary=version, shadow=shadow)


class ShadowRunner:
    """This process's queue of copies and the thread that runs them (started on first use)."""

    def __init__(self) -> None:
        self._init()

    def _init(self) -> None:
        self._queue: queue.Queue[Copy] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._start_lock = threading.Lock()
        self._idle = threading.Condition()
        self._unfinished = 0  # copies queued or running

    # ---- request path --------------------------------------------------------------------------------
    def put(self, copy: Copy) -> bool:
        """Queue a copy without waiting; drop it (counted) when the queue is full."""
        q = self._queue
        if q is None or self._thread is None:
            q = self._start()
        with self._idle:
            self._unfinished += 1
        try:
            q.put_nowait(copy)
        except queue.Full:
            self._done(1)
            TALLY.dropped(*copy.labels, copy.prepared.n)
            return False
        return True

    # ---- the thread ----------------------------------------------------------------------------------
    def _start(self) -> queue.Queue:
        with self._start_lock:
            if self._queue is None or self._thread is None:
                self._queue = queue.Queue(maxsize=max(1, int(settings.INFERENCE_SHADOW_QUEUE)))
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._run, args=(self._queue, self._stop), name="shadow",
                                                daemon=True)
                self._thread.start()
            return self._queue

    def _done(self, n: int) -> None:
        with self._idle:
            self._unfinished -= n
            if self._unfinished <= 0:
                self._idle.notify_all()

    def _run(self, q: queue.Queue, stop: threading.Event) -> None:
        from django.db import close_old_connections, connections

        flushed = time.monotonic()
        try:
            while True:
                copies = gather(q, stop)
                if copies:
                    try:
                        run_copies(copies)
                    except Exception:  # noqa: BLE001 - the thread never dies
                        logger.exception("shadow: a turn failed")
                    finally:
                        self._done(len(copies))
                stopping = stop.is_set() and q.empty()
                if settings.INFERENCE_RECORDS_FLUSH_THREAD and (
                        stopping or time.monotonic() - flushed >= settings.INFERENCE_SHADOW_FLUSH_SECONDS):
                    flushed = time.monotonic()
                    try:
                        close_old_connections()
                        TALLY.flush()
                    except Exception:  # noqa: BLE001 - kept for the next flush
                        logger.exception("shadow: could not write the comparison counts; kept for the next flush")
                if stopping:
                    break
        finally:
            connections.close_all()  # this thread's own

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until every queued copy has been run (tests, benchmarks); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._unfinished > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Run what is queued, then stop the thread (a later copy starts a new one with the current settings)."""
        with self._start_lock:
            thread, stop = self._thread, self._stop
            self._queue, self._thread = None, None
        if thread is not None:
            stop.set()
            thread.join(timeout)

    def _after_fork(self) -> None:
        """In a forked child: no thread yet, no copies of the parent's."""
        self._init()


def gather(q: queue.Queue, stop: threading.Event) -> list[Copy]:
    """The copies of one turn: the first to arrive (waiting up to a flush period), then more until they fill
    a batch of the first one's shadow or INFERENCE_SHADOW_GATHER_MS has passed. A copy's answer is awaited by
    no one, so the thread waits for full batches: a forward pass of a wide model costs about the same for
    4 instances as for 32, and the shadow's forwards then take a share of the machine close to its percent."""
    try:
        copies = [q.get(timeout=settings.INFERENCE_SHADOW_FLUSH_SECONDS)]
    except queue.Empty:
        return []
    target = max(1, copies[0].shadow.max_batch_size)
    instances = copies[0].prepared.n
    deadline = time.monotonic() + settings.INFERENCE_SHADOW_GATHER_MS / 1000.0
    while instances < target and len(copies) < MAX_IN_FLIGHT and not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            copy = q.get(timeout=left)
        except queue.Empty:
            break
        copies.append(copy)
        instances += copy.prepared.n
    return copies


def run_copies(copies: list[Copy]) -> None:
    """Run copies through their shadows' batchers (all submitted, then all awaited) and count the comparisons."""
    pool = get_pool()
    submitted = []
    for copy in copies:
        n = copy.prepared.n
        try:
            loaded = pool.loaded(copy.shadow)
            prepared = shadow_input(copy, loaded.served)
            submitted.append((copy, loaded, prepared, loaded.batcher.submit(prepared.arrays)))
        except Overloaded:  # the shadow's own batcher is full: as for a full shadow queue
            TALLY.dropped(*copy.labels, n)
        except Exception as exc:  # noqa: BLE001 - any failure of the shadow is counted, never raised
            TALLY.failed(*copy.labels, n, f"{type(exc).__name__}: {exc}")
    for copy, loaded, prepared, pending in submitted:
        try:
            theirs = loaded.served.postprocess_tensors(pending.result(settings.INFERENCE_PREDICT_TIMEOUT), prepared)
            result = compare(copy.primary_outputs(), theirs, n=prepared.n,
                             output_names=[spec.name for spec in copy.served.outputs],
                             primary_labels=copy.served.class_labels, shadow_labels=loaded.served.class_labels)
        except Exception as exc:  # noqa: BLE001 - the shadow raised, timed out or answered other shapes (ShadowMismatch)
            TALLY.failed(*copy.labels, prepared.n, f"{type(exc).__name__}: {exc}")
            continue
        TALLY.compared(*copy.labels, result)


def shadow_input(copy: Copy, served: ServedVersion) -> Prepared:
    """The shadow's prepared input: the primary's arrays when both preprocess alike, else prepared anew."""
    if copy.raw is not None:
        kind, value, maybe_bools = copy.raw
        if kind == "instances":
            return served.prepare(value, copy.parameters, maybe_bools=maybe_bools)
        return served.prepare_arrays(value, copy.parameters)
    ctx = StepContext(served.inputs, served.outputs, clean_parameters(copy.parameters, served.parameters))
    return Prepared(copy.prepared.arrays, ctx, copy.prepared.n)


RUNNER = ShadowRunner()
os.register_at_fork(after_in_child=RUNNER._after_fork)


def wait_idle(timeout: float = 30.0) -> bool:
    return RUNNER.wait_idle(timeout)


def flush() -> int:
    """Write this process's comparison counts now (tests, exit); return the rows written."""
    return TALLY.flush()


def _settings_changed(*, setting: str, **_: Any) -> None:
    if setting == "INFERENCE_SHADOW_QUEUE":
        RUNNER.stop()


setting_changed.connect(_settings_changed, dispatch_uid="inference.services.shadow.settings")


@atexit.register
def flush_at_exit() -> None:
    """Write what is counted when the process ends (where background writers run)."""
    if not settings.INFERENCE_RECORDS_FLUSH_THREAD or not TALLY.pending():
        return
    try:
        TALLY.flush()
    except Exception:  # noqa: BLE001 - exiting: report, never raise
        logger.exception("shadow: final flush failed")
