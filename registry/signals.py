"""Signals the registry sends; the serving side listens (the registry never imports it)."""

import logging

from django.db import transaction
from django.dispatch import Signal

logger = logging.getLogger("registry")

#: Sent after a committed change that can alter which version serves a request
#: (a version registered, validated or archived; an alias set or removed).
registry_changed = Signal()

GENERATION_CACHE_KEY = "registry:generation"


def generation_cache():
    """The cache that holds the registry generation, shared by every process that serves.

    With REDIS_URL that is the default (Redis) cache. In embedded mode the default cache is
    in-process, which would hide a change made by another process on this machine (a
    `qcluster` marking an uploaded version ready, `manage.py` moving an alias) from the web
    process: settings give a file cache in the data dir for it (``CACHES["registry"]``).
    """
    from django.conf import settings
    from django.core.cache import caches

    return caches["registry" if "registry" in settings.CACHES else "default"]


def announce_change() -> None:
    """After commit, bump the shared registry generation and tell this process's listeners.

    Serving processes compare the generation to decide whether their resolved versions are stale,
    so a change made in one process (a promotion, a version validated, a model's serving settings
    saved) is seen by all of them.
    """

    from .models import RegisteredModel

    def bump() -> None:
        try:
            shared = generation_cache()
            if not shared.add(GENERATION_CACHE_KEY, 1, timeout=None):
                shared.incr(GENERATION_CACHE_KEY)
        except Exception:  # noqa: BLE001 - serving processes fall back to their poll interval
            logger.warning("could not bump the registry generation in the cache")
        registry_changed.send(sender=RegisteredModel)

    transaction.on_commit(bump)
