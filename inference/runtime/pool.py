"""This process's served versions: which version a request means, and its loaded form.

``resolve(model_name, ref)`` answers from a per-process memo that is trusted until the
registry changes: every registry change bumps a generation number in the shared cache
(Redis, or a file cache in the data dir in embedded mode)
(and signals this process at once). The memo re-reads that number at most every
``INFERENCE_REGISTRY_POLL_SECONDS``, so the request path costs no database query, and
a promotion made by another process is seen within that interval.

``loaded(version)`` returns the version's ``Loaded`` entry from the byte-bounded LRU
cache, loading it (and starting its batcher) on first use — inside whichever process
serves, never before a fork. ``preload()`` loads every model's default version as a web
process starts (``INFERENCE_PRELOAD_MODELS``), so that first requests do not wait for a load.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from django.conf import settings

from registry.models import ModelVersion, RegisteredModel
from registry.selectors import version_resolve
from registry.signals import GENERATION_CACHE_KEY, generation_cache

from ..monitoring import metrics as metrics_module
from ..monitoring.metrics import VersionMetrics
from .base import ModelNotReady
from .batcher import Batcher
from .cache import Loaded, ModelCache

logger = logging.getLogger("inference.runtime")

_MISSING = object()
MEMO_MAX = 10_000  # resolved (model, ref) pairs kept; bounded against random refs


class ServingPool:
    def __init__(self) -> None:
        self.cache = ModelCache(
            settings.INFERENCE_MODEL_CACHE_BYTES,
            on_change=lambda c: metrics_module.LOADED_MODELS.set(len(c.keys())),
        )
        self._lock = threading.Lock()
        self._memo: dict[tuple[str, str], Any] = {}
        self._generation: Any = None
        self._checked = 0.0
        self.poll_seconds = float(getattr(settings, "INFERENCE_REGISTRY_POLL_SECONDS", 0.5))

    # ---- resolution ------------------------------------------------------------------------
    def invalidate(self, **_: Any) -> None:
        """Forget resolved versions (the registry changed)."""
        with self._lock:
            self._memo.clear()
            self._checked = 0.0

    def _fresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.poll_seconds:
            return
        try:
            generation = generation_cache().get(GENERATION_CACHE_KEY)
        except Exception:  # noqa: BLE001 - cache down: fall back to re-reading the database
            generation = object()
        with self._lock:
            if generation != self._generation:
                self._memo.clear()
                self._generation = generation
            self._checked = now

    def model(self, name: str) -> RegisteredModel | None:
        self._fresh()
        key = ("model", name)
        found = self._memo.get(key, _MISSING)
        if found is _MISSING:
            found = RegisteredModel.objects.filter(name=name).first()
            self._remember(key, found)
        return found

    def resolve(self, model: RegisteredModel, ref: str | int | None) -> ModelVersion | None:
        """Return the version `ref` names (number, alias, or None for production/newest ready)."""
        self._fresh()
        key = (model.name, "" if ref is None else str(ref))
        found = self._memo.get(key, _MISSING)
        if found is _MISSING:
            found = version_resolve(model=model, ref=ref)
            self._remember(key, found)
        return found

    def _remember(self, key: tuple[str, str], value: Any) -> None:
        if len(self._memo) >= MEMO_MAX:
            self._memo.clear()
        self._memo[key] = value

    # ---- loading -------------------------------------------------------------------------------
    def preload(self) -> list[ModelVersion]:
        """Load the version each registered model serves by default (its production alias, else
        its newest ready version), in name order, as a web process starts: its first requests then
        wait for no load (a 4096-wide MLP takes ~1.3 s; every request of the process waits meanwhile).

        Stops before a version whose weights would not fit in INFERENCE_MODEL_CACHE_BYTES beside
        those loaded (the rest load on first use, as without preloading). A version that fails to
        load is logged and skipped: the process starts anyway and answers that model with its error.
        """
        loaded = []
        for model in RegisteredModel.objects.order_by("name"):
            version = self.resolve(model, None)
            if version is None or version.status != ModelVersion.Status.READY:
                continue
            if self.cache.peek(self._key(version)) is None:
                if self.cache.total_bytes + version.size_bytes > self.cache.capacity_bytes:
                    logger.info("Preloading stopped before %s: INFERENCE_MODEL_CACHE_BYTES (%d bytes) is full; "
                                "the remaining models load on their first request", version, self.cache.capacity_bytes)
                    break
                try:
                    self.loaded(version)
                except Exception as exc:  # noqa: BLE001 - the process serves the others; requests get the error
                    logger.warning("Could not preload %s (%s: %s); its requests will retry the load and report the "
                                   "error", version, type(exc).__name__, exc)
                    continue
            loaded.append(version)
        return loaded

    def loaded(self, version: ModelVersion) -> Loaded:
        """Return the loaded form of a ready version; raise ModelNotReady with the reason."""
        key = self._key(version)
        return self.cache.get(key, lambda: self._load(version))

    def loaded_now(self, version: ModelVersion) -> Loaded | None:
        """Return the loaded form of a ready version if this process holds it (None: loading
        it would block); raise ModelNotReady with the reason."""
        key = self._key(version)
        return self.cache.get(key, lambda: self._load(version)) if self.cache.peek(key) is not None else None

    @staticmethod
    def _key(version: ModelVersion) -> tuple[int, str]:
        if version.status != ModelVersion.Status.READY:
            if version.status == ModelVersion.Status.FAILED:
                raise ModelNotReady(f"{version} failed validation: {version.status_error}")
            raise ModelNotReady(f"{version} is still being validated")
        return (version.pk, version.hardware.device)

    def _load(self, version: ModelVersion) -> Loaded:
        from .served import ServedVersion

        served = ServedVersion.from_version(version)
        started = time.perf_counter()
        served.load()
        seconds = time.perf_counter() - started
        logger.info("Loaded %s on %s in %.2f s (%d bytes of weights)", version, version.hardware.device,
                    seconds, served.nbytes)
        # INFERENCE_MONITORING_ENABLED off (the benchmark's baseline): no per-request metrics at all.
        metrics = VersionMetrics(version.model.name, version.version) if settings.INFERENCE_MONITORING_ENABLED else None
        metrics_module.MODEL_LOAD_SECONDS.labels(version.model.name, str(version.version)).observe(seconds)
        batcher = Batcher(
            served.runtime.predict,
            max_batch_size=version.max_batch_size,
            max_batch_delay_ms=version.max_batch_delay_ms,
            max_queue_size=version.max_queue_size,
            name=f"{version.model.name}:v{version.version}@{version.hardware.device}",
            on_batch=metrics.on_batch if metrics is not None else None,
        )
        return Loaded(served=served, batcher=batcher, nbytes=served.nbytes, load_seconds=seconds, metrics=metrics)


_pool: ServingPool | None = None
_pool_lock = threading.Lock()


def get_pool() -> ServingPool:
    """Return this process's pool, created on first use (after any fork)."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = ServingPool()
    return _pool


def reset_pool() -> None:
    """Unload everything and start afresh (tests; settings changes)."""
    global _pool
    with _pool_lock:
        old, _pool = _pool, None
    if old is not None:
        old.cache.clear()


def on_registry_changed(**kwargs: Any) -> None:
    if _pool is not None:
        _pool.invalidate()


def on_model_saved(**kwargs: Any) -> None:
    """A model row was saved (e.g. payload capture switched in the admin): once committed, every
    process drops its memo, which holds the model rows, and sees the change."""
    from registry.services import _announce_change

    _announce_change()
