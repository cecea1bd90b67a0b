"""Shadow comparisons: how a shadow version's answers compare with the primary's, counted per minute.

``compare`` judges one request's two sets of numeric outputs (what the Open Inference Protocol
answers: the model's outputs after the tensor post-processing steps): per prediction, whether the
top-1 agrees (the same label where a ``labels`` step names the classes, else the same argmax of the
labelled, else the first, output; for a one-value output, the same value), and the absolute
difference of every numeric output element.

``ShadowTally`` is a process's per-minute counters of those comparisons (and of the copies dropped or
failed), added to by the shadow thread (``inference.services.shadow``) and written by ``flush``:
an update with ``F()`` increments of the minute's ``ShadowRollup`` row, created when missing, so
that several processes flushing the same minute add up rather than overwrite each other. A flush
that fails keeps its counts for the next one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from . import metrics

logger = logging.getLogger("inference.shadow")


class ShadowMismatch(Exception):
    """The shadow's outputs cannot be compared with the primary's (other names, shapes or counts)."""


@dataclass
class Comparison:
    """One request's comparison: predictions compared, of them agreeing, and the absolute differences."""

    compared: int
    agreed: int
    abs_diff_sum: float
    abs_diff_count: int


def _numeric(arr: Any) -> bool:
    return isinstance(arr, np.ndarray) and (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_)


def _top1(values: np.ndarray, n: int) -> np.ndarray:
    """Per prediction: the argmax over its values, or (one value each) the value itself."""
    flat = values.reshape(n, -1)
    if flat.shape[1] == 1:
        return flat[:, 0]
    return flat.argmax(axis=1)


def _agree(p: np.ndarray, s: np.ndarray, n: int, p_labels: Sequence[str] | None,
           s_labels: Sequence[str] | None) -> int:
    flat = p.reshape(n, -1)
    top_p, top_s = _top1(p, n), _top1(s, n)
    if flat.shape[1] == 1:  # one value per prediction (a score, a class index): the same value
        if np.issubdtype(top_p.dtype, np.floating) or np.issubdtype(top_s.dtype, np.floating):
            return int(np.isclose(top_p.astype(np.float64), top_s.astype(np.float64), rtol=1e-5, atol=1e-8).sum())
        return int((top_p == top_s).sum())
    if p_labels and s_labels:  # the same class name, even if the two versions list classes differently
        names_p = [p_labels[i] if i < len(p_labels) else None for i in top_p.tolist()]
        names_s = [s_labels[i] if i < len(s_labels) else None for i in top_s.tolist()]
        return sum(1 for a, b in zip(names_p, names_s) if a is not None and a == b)
    return int((top_p == top_s).sum())


def compare(primary: Mapping[str, Any], shadow: Mapping[str, Any], *, n: int, output_names: Sequence[str],
            primary_labels: Mapping[str, Sequence[str]] | None = None,
            shadow_labels: Mapping[str, Sequence[str]] | None = None) -> Comparison:
    """Compare one request's numeric outputs (`n` predictions); raise ShadowMismatch when they cannot be.

    `output_names` are the primary's declared outputs, in order: the top-1 is judged on the output a
    ``labels`` step names (`primary_labels`: output -> class names), else on the first numeric one.
    The mean absolute difference covers every numeric output both answered."""
    common = [name for name in primary if _numeric(primary[name]) and name in shadow]
    if not common:
        raise ShadowMismatch(f"no numeric output in common (primary {sorted(primary)}, shadow {sorted(shadow)})")
    abs_sum, count = 0.0, 0
    for name in common:
        p, s = primary[name], shadow[name]
        if not _numeric(s) or p.shape != s.shape or p.shape[:1] != (n,):
            raise ShadowMismatch(f"output {name!r}: primary {p.dtype}{list(p.shape)}, shadow "
                                 f"{getattr(s, 'dtype', type(s).__name__)}{list(getattr(s, 'shape', []))}")
        abs_sum += float(np.abs(p.astype(np.float64) - s.astype(np.float64)).sum())
        count += int(p.size)
    labelled = next((name for name in (primary_labels or {}) if name in common), None)
    judged = labelled or next((name for name in output_names if name in common), common[0])
    agreed = _agree(primary[judged], shadow[judged], n, (primary_labels or {}).get(judged),
                    (shadow_labels or {}).get(judged))
    return Comparison(compared=n, agreed=agreed, abs_diff_sum=abs_sum, abs_diff_count=count)


# ---- per-minute counters ------------------------------------------------------------------------------

FIELDS = ("compared", "agreed", "abs_diff_sum", "abs_diff_count", "dropped", "failed")
Key = tuple[str, int, int, int]  # model, primary version, shadow version, minute (epoch seconds)


class ShadowTally:
    """This process's shadow counts per (model, primary, shadow, minute), until flushed (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[Key, list[float]] = {}

    def _add(self, model: str, primary: int, shadow: int, values: Sequence[float]) -> bool:
        """Add `values` (in FIELDS order); return whether this minute's key is new here (for logging)."""
        minute = int(time.time()) // 60 * 60
        key = (model, int(primary), int(shadow), minute)
        with self._lock:
            row = self._counts.get(key)
            new = row is None
            if row is None:
                row = self._counts[key] = [0, 0, 0.0, 0, 0, 0]
            for i, v in enumerate(values):
                row[i] += v
        return new

    def compared(self, model: str, primary: int, shadow: int, result: Comparison) -> None:
        self._add(model, primary, shadow, (result.compared, result.agreed, result.abs_diff_sum,
                                           result.abs_diff_count, 0, 0))
        labels = (model, str(primary), str(shadow))
        metrics.SHADOW_REQUESTS.labels(*labels, "compared").inc()
        if result.agreed:
            metrics.SHADOW_PREDICTIONS.labels(*labels, "agreed").inc(result.agreed)
        if result.compared - result.agreed:
            metrics.SHADOW_PREDICTIONS.labels(*labels, "disagreed").inc(result.compared - result.agreed)
        metrics.SHADOW_ABS_DIFF.labels(*labels).inc(result.abs_diff_sum)
        metrics.SHADOW_DIFF_ELEMENTS.labels(*labels).inc(result.abs_diff_count)

    def dropped(self, model: str, primary: int, shadow: int, predictions: int) -> None:
        self._add(model, primary, shadow, (0, 0, 0.0, 0, predictions, 0))
        metrics.SHADOW_REQUESTS.labels(model, str(primary), str(shadow), "dropped").inc()

    def failed(self, model: str, primary: int, shadow: int, predictions: int, reason: str) -> None:
        """Count a copy that could not be compared; the first failure of a minute is logged."""
        if self._add(model, primary, shadow, (0, 0, 0.0, 0, 0, predictions)):
            logger.warning("shadow %s v%s (for v%s) failed: %s (counted in ShadowRollup.failed; logged once a "
                           "minute)", model, shadow, primary, reason)
        metrics.SHADOW_REQUESTS.labels(model, str(primary), str(shadow), "failed").inc()

    def _after_fork(self) -> None:
        """In a forked child: nothing inherited to add twice."""
        self._lock = threading.Lock()
        self._counts = {}

    def pending(self) -> dict[Key, list[float]]:
        with self._lock:
            return {k: list(v) for k, v in self._counts.items()}

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()

    def flush(self) -> int:
        """Add the counts to their ShadowRollup rows; return how many rows were written. A failure keeps
        the counts for the next flush (and raises)."""
        with self._lock:
            taken, self._counts = self._counts, {}
        if not taken:
            return 0
        try:
            for key, values in taken.items():
                add_to_rollup(key, values)
        except Exception:
            with self._lock:  # put them back, added to what arrived meanwhile
                for key, values in taken.items():
                    row = self._counts.setdefault(key, [0, 0, 0.0, 0, 0, 0])
                    for i, v in enumerate(values):
                        row[i] += v
            raise
        return len(taken)


def add_to_rollup(key: Key, values: Sequence[float]) -> None:
    """Add one minute's counts to its row: an atomic increment, the row created first when missing
    (a concurrent creation by another process is retried as an increment)."""
    from django.db import IntegrityError, transaction
    from django.db.models import F
    from django.utils import timezone

    from .models import ShadowRollup

    model, primary, shadow, minute = key
    lookup = {"model": model[:63], "primary_version": primary, "shadow_version": shadow,
              "minute": datetime.fromtimestamp(minute, UTC)}
    increments = {name: F(name) + value for name, value in zip(FIELDS, values)}
    increments["updated_at"] = timezone.now()  # update() skips auto_now
    if ShadowRollup.objects.filter(**lookup).update(**increments):
        return
    try:
        with transaction.atomic():
            ShadowRollup.objects.create(**lookup, **dict(zip(FIELDS, values)))
    except IntegrityError:  # another process created it first
        ShadowRollup.objects.filter(**lookup).update(**increments)


TALLY = ShadowTally()
os.register_at_fork(after_in_child=TALLY._after_fork)
