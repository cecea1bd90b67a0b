"""Keeping each process's loaded versions in step with the registry (load and unload everywhere).

A version stays loaded in a process only while something sends requests to it: an alias (as its
version or in its split), the model's default route (production, else the newest ready version),
or its ``pinned`` mark (``registry.loading``: an operator's "load"). ``reconcile`` unloads every
other version this process holds (archived, moved away from, unpinned) and, in a web process, loads
the pinned ones. It reads the database: it runs on the ``loadctl`` thread, never on an event loop.

Web processes start a ``Watcher`` thread as they start (``inference_platform.front``): it reads the
shared registry generation every INFERENCE_REGISTRY_POLL_SECONDS and reconciles when it moved, so an
archive, an alias move or a load/unload reaches every web process within about a second. A worker
(qcluster) calls ``check`` before each job: it unloads there, at its next job, and never pre-loads.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from django.conf import settings
from django.db import close_old_connections

from registry.models import ModelVersion
from registry.signals import GENERATION_CACHE_KEY, generation_cache

from .pool import ServingPool, cache_key, get_pool
from .selectors import memo

logger = logging.getLogger("inference.runtime")


def wanted(version: ModelVersion) -> bool:
    """Whether some request may be sent to `version` (so it stays loaded): pinned, aliased or the default."""
    if version.archived or version.status != ModelVersion.Status.READY:
        return False
    if version.pinned or version.pk in memo.aliased(version.model):
        return True
    default = memo.route(version.model, None)
    return default is not None and version in default


def reconcile(pool: ServingPool | None = None, *, load_pinned: bool = True) -> dict[str, list[str]]:
    """Unload the versions no request is sent to any more; load the pinned ones (`load_pinned`). Blocks."""
    pool = pool or get_pool()
    memo.forget()  # judge from the registry as it is now
    held = {key[0]: key for key, _entry in pool.cache.entries()}
    unloaded, loaded = [], []
    rows = {v.pk: v for v in ModelVersion.objects.select_related("model", "hardware").filter(pk__in=held)}
    for pk, key in held.items():
        version = rows.get(pk)
        if version is None or not wanted(version):
            if pool.cache.discard(key):
                unloaded.append(str(version) if version is not None else f"version id {pk}")
    if load_pinned:
        pinned = ModelVersion.objects.select_related("model", "hardware").filter(
            pinned=True, archived=False, status=ModelVersion.Status.READY).order_by("model__name", "version")
        for version in pinned:
            if pool.cache.peek(cache_key(version)) is None and pool.preload_one(version):
                loaded.append(str(version))
    if unloaded or loaded:
        logger.info("Registry changed: unloaded %s, pre-loaded %s in this process", unloaded or "nothing",
                    loaded or "nothing")
    return {"unloaded": unloaded, "loaded": loaded}


def _generation() -> Any:
    try:
        return generation_cache().get(GENERATION_CACHE_KEY)
    except Exception:  # noqa: BLE001 - cache down: nothing to compare; try again at the next poll
        return None


class Watcher:
    """Polls the registry generation; reconciles this process when it moves (see the module doc)."""

    def __init__(self, *, load_pinned: bool = True) -> None:
        self.load_pinned = load_pinned
        self.generation: Any = _generation()
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def check(self) -> dict[str, list[str]] | None:
        """Reconcile if the generation moved since the last check; None when it did not."""
        with self.lock:
            generation = _generation()
            if generation is None or generation == self.generation:
                return None
            self.generation = generation
            try:
                return reconcile(load_pinned=self.load_pinned)
            except Exception:  # noqa: BLE001 - database down: the next move retries; requests still serve
                logger.exception("Could not reconcile the loaded models with the registry; retrying at the "
                                 "next registry change")
                self.generation = None
                return None

    def run(self) -> None:
        while not self.stop.wait(settings.INFERENCE_REGISTRY_POLL_SECONDS):
            try:
                self.check()
            finally:
                close_old_connections()  # this thread's own connection: a broken or aged one goes

    def start(self) -> Watcher:
        threading.Thread(target=self.run, name="loadctl", daemon=True).start()
        return self


_worker_watcher: Watcher | None = None


def check_in_worker() -> None:
    """Before a job (qcluster): unload what the registry no longer sends requests to (no pre-loading)."""
    global _worker_watcher
    if _worker_watcher is None:
        _worker_watcher = Watcher(load_pinned=False)
    _worker_watcher.check()
