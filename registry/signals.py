"""Signals the registry sends; the serving side listens (the registry never imports it)."""

from django.dispatch import Signal

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
