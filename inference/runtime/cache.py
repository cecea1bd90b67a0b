"""The per-process cache of loaded versions, bounded by bytes, least recently used evicted.

``ModelCache.get(key, factory)`` returns a loaded entry (``inference.pool.Entry``: anything with
``nbytes`` and ``close()``). Thread-safe: concurrent requests for a cold version wait for one load, never
start two. When the weights held pass ``capacity_bytes``, the least recently used
entries are unloaded (their batchers finish what is queued first). A version that could
not load (e.g. "cuda not available") is remembered for a few seconds so that a burst of
requests does not retry the load for each one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Protocol

from .base import ModelNotReady

logger = logging.getLogger(__name__)

FAILURE_TTL = 5.0


class Entry(Protocol):
    """What the cache holds: the bytes it counts against its capacity, and how to unload it."""

    nbytes: int
    load_seconds: float

    def close(self) -> None: ...


class ModelCache:
    def __init__(self, capacity_bytes: int, *, on_change: Callable[[ModelCache], None] | None = None):
        self.capacity_bytes = int(capacity_bytes)
        self.on_change = on_change
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, Entry] = OrderedDict()
        self._loading: dict[Hashable, Future] = {}
        self._failures: dict[Hashable, tuple[float, Exception]] = {}
        self.loads = 0
        self.evictions = 0

    @property
    def total_bytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._entries)

    def entries(self) -> list[tuple[Hashable, Entry]]:
        with self._lock:
            return list(self._entries.items())

    def peek(self, key: Hashable) -> Entry | None:
        return self._entries.get(key)

    def hit(self, key: Hashable) -> Entry | None:
        """The loaded entry for `key`, counted as just used (least recently used goes first), or None."""
        entry = self._entries.get(key)
        if entry is not None:
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
        return entry

    def get(self, key: Hashable, factory: Callable[[], Entry]) -> Entry:
        """Return the loaded entry for `key`, loading it with `factory()` once if absent."""
        entry = self.hit(key)
        if entry is not None:
            return entry
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry
            failed = self._failures.get(key)
            if failed is not None:
                if time.monotonic() - failed[0] < FAILURE_TTL:
                    raise failed[1]
                del self._failures[key]
            future = self._loading.get(key)
            owner = future is None
            if owner:
                future = Future()
                self._loading[key] = future
        if not owner:
            return future.result()
        try:
            started = time.perf_counter()
            entry = factory()
            entry.load_seconds = time.perf_counter() - started
        except Exception as exc:
            with self._lock:
                del self._loading[key]
                if isinstance(exc, ModelNotReady):
                    self._failures[key] = (time.monotonic(), exc)
            future.set_exception(exc)
            raise
        with self._lock:
            self._entries[key] = entry
            del self._loading[key]
            self.loads += 1
            evicted = self._evict_locked(keep=key)
        future.set_result(entry)
        for old_key, old in evicted:
            logger.info("Unloading %s to stay within INFERENCE_MODEL_CACHE_BYTES (%d bytes)", old_key, self.capacity_bytes)
            old.close()
        self._changed()
        return entry

    def _evict_locked(self, *, keep: Hashable) -> list[tuple[Hashable, Entry]]:
        evicted = []
        while self.total_bytes > self.capacity_bytes and len(self._entries) > 1:
            oldest = next(iter(self._entries))
            if oldest == keep:
                break
            evicted.append((oldest, self._entries.pop(oldest)))
            self.evictions += 1
        return evicted

    def discard(self, key: Hashable) -> bool:
        """Unload one entry (e.g. its version was archived); return whether it was loaded."""
        with self._lock:
            entry = self._entries.pop(key, None)
            self._failures.pop(key, None)
        if entry is not None:
            entry.close()
            self._changed()
        return entry is not None

    def clear(self) -> None:
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
            self._failures.clear()
        for entry in entries:
            entry.close()
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change(self)
            except Exception:  # noqa: BLE001
                logger.exception("model cache observer failed")
