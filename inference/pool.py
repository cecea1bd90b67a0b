"""This process's loaded versions: each version served here, with its batcher and metrics.

``get_pool().loaded(version)`` returns a ``Loaded`` entry: the version's pipelines and runtime
(``ServedVersion``), the ``Batcher`` in front of its runtime, and its Prometheus children. Entries
live in a ``ModelCache`` bounded by INFERENCE_MODEL_CACHE_BYTES (least recently used unloaded).
Loading takes seconds: ``loaded(version, may_block=False)`` raises WouldBlock instead, so that an
event loop sends the load to a thread (``inference.offload``).

Models load lazily, in the process that serves them: never before a fork (CUDA cannot be
initialised again in a forked child), never in ``AppConfig.ready()``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from registry.models import ModelVersion, RegisteredModel

from .monitoring import metrics as metrics_module
from .monitoring.metrics import VersionMetrics
from .offload import WouldBlock
from .pipeline.served import ServedVersion
from .runtime.base import ModelNotReady
from .runtime.batcher import Batcher
from .runtime.cache import ModelCache
from .selectors import memo

logger = logging.getLogger("inference.runtime")


@dataclass
class Loaded:
    """A served version with its batcher, as the cache holds it."""

    served: ServedVersion
    batcher: Batcher
    nbytes: int
    load_seconds: float
    metrics: VersionMetrics | None = None  # None with INFERENCE_MONITORING_ENABLED off

    def close(self) -> None:
        self.batcher.stop()
        self.served.unload()


def cache_key(version: ModelVersion) -> tuple[int, str]:
    """The cache key of a version, or ModelNotReady with the reason it cannot be served."""
    if version.status != ModelVersion.Status.READY:
        if version.status == ModelVersion.Status.FAILED:
            raise ModelNotReady(f"{version} failed validation: {version.status_error}")
        raise ModelNotReady(f"{version} is still being validated")
    return held_key(version)


def held_key(version: ModelVersion) -> tuple[int, str]:
    """The key a version's loaded form is held under in this process's cache (whatever its status)."""
    return (version.pk, version.hardware.device)


class ServingPool:
    def __init__(self) -> None:
        self.cache = ModelCache(
            settings.INFERENCE_MODEL_CACHE_BYTES,
            on_change=lambda c: metrics_module.LOADED_MODELS.set(len(c.keys())),
        )

    def loaded(self, version: ModelVersion, *, may_block: bool = True) -> Loaded:
        """The loaded form of a ready version; ModelNotReady with the reason; WouldBlock (with
        `may_block` False) when it is not loaded in this process yet."""
        key = cache_key(version)
        if not may_block and self.cache.peek(key) is None:
            raise WouldBlock(("load", key))
        return self.cache.get(key, lambda: self._load(version))

    def loaded_now(self, version: ModelVersion) -> Loaded | None:
        """The loaded form of `version` if this process holds it (one lookup, nothing to wait for), else None."""
        if version.status != ModelVersion.Status.READY:
            return None
        return self.cache.hit(held_key(version))

    def is_loaded(self, version: ModelVersion) -> bool:
        return self.cache.peek(held_key(version)) is not None

    def preload(self) -> list[ModelVersion]:
        """Load the versions each registered model serves by default (its production alias, every
        version of it when it is a split, and its shadow, else its newest ready version), in name order, then the
        pinned ones, as a web process starts: its first requests then wait for no load.

        Stops before a version whose weights would not fit in INFERENCE_MODEL_CACHE_BYTES beside
        those loaded (the rest load on first use, as without preloading). A version that fails to
        load is logged and skipped: the process starts anyway and answers that model with its error.
        """
        loaded = []
        for model in RegisteredModel.objects.order_by("name"):
            route = memo.route(model, None)
            # Every version of a split (a canary) answers some requests: each is preloaded, and so is the
            # alias's shadow (its first copies would otherwise wait for a load, and be dropped meanwhile).
            versions = [*route.versions, *([route.shadow[0]] if route.shadow else [])] if route is not None else []
            for version in versions:
                if not self._preload_one(version, loaded):
                    return loaded
        # Then the versions an operator pre-loaded (`load`: a canary's candidate before its split moves).
        for version in ModelVersion.objects.select_related("model", "hardware").filter(
                pinned=True, archived=False).order_by("model__name", "version"):
            if not self.is_loaded(version) and not self._preload_one(version, loaded):
                return loaded
        return loaded

    def preload_one(self, version: ModelVersion) -> bool:
        """Load one version as ``preload`` does (skipped when it would not fit, or fails); True if now loaded."""
        self._preload_one(version, [])
        return self.is_loaded(version)

    def _preload_one(self, version: ModelVersion, loaded: list[ModelVersion]) -> bool:
        """Preload one version (see ``preload``); False when the cache is full and preloading stops."""
        if version.status != ModelVersion.Status.READY:
            return True
        if not self.is_loaded(version):
            if self.cache.total_bytes + version.size_bytes > self.cache.capacity_bytes:
                logger.info("Preloading stopped before %s: INFERENCE_MODEL_CACHE_BYTES (%d bytes) is full; "
                            "the remaining models load on their first request", version, self.cache.capacity_bytes)
                return False
            try:
                self.loaded(version)
            except Exception as exc:  # noqa: BLE001 - the process serves the others; requests get the error
                logger.warning("Could not preload %s (%s: %s); its requests will retry the load and report the "
                               "error", version, type(exc).__name__, exc)
                return True
        loaded.append(version)
        return True

    def loaded_versions(self) -> list[dict[str, Any]]:
        """What this process has loaded (readiness, the admin)."""
        return [{"model": entry.served.model_name, "version": entry.served.version, "device": device,
                 "queue_depth": entry.batcher.queue_depth, "bytes": entry.nbytes}
                for (_pk, device), entry in self.cache.entries()]

    def _load(self, version: ModelVersion) -> Loaded:
        served = ServedVersion.from_version(version)
        started = time.perf_counter()
        served.load()
        seconds = time.perf_counter() - started
        name, number = version.model.name, version.version
        logger.info("Loaded %s on %s in %.2f s (%d bytes of weights)", version, version.hardware.device,
                    seconds, served.nbytes)
        # INFERENCE_MONITORING_ENABLED off (the benchmark's baseline): no per-request metrics at all.
        metrics = VersionMetrics(name, number) if settings.INFERENCE_MONITORING_ENABLED else None
        metrics_module.MODEL_LOAD_SECONDS.labels(name, str(number)).observe(seconds)
        batcher = Batcher(
            served.runtime.predict,
            max_batch_size=version.max_batch_size,
            max_batch_delay_ms=version.max_batch_delay_ms,
            max_queue_size=version.max_queue_size,
            name=f"{name}:v{number}@{version.hardware.device}",
            on_batch=metrics.on_batch if metrics is not None else None,
            on_depth=metrics.set_queue_depth if metrics is not None else None,
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
    memo.forget()
    if old is not None:
        old.cache.clear()
