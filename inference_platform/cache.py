"""The embedded mode's shared cache: diskcache's Django backend, in the data dir.

Every web process on the machine (``WEB_CONCURRENCY`` of them) opens the same SQLite
files, so rate-limit counters (atomic ``incr``) and API-key lookups are shared between
processes exactly as with Redis, without a server to run, and cheaper than a Redis round trip
(docs/benchmarks.md).

Three changes to the library's backend, each through its public methods:

* ``add`` of a key that exists answers False from a read, without a write transaction
  (the rate limiter adds before it counts).
* Writes of one process go one at a time (a lock per process). SQLite lets one writer
  in at a time and makes the others sleep and retry (1, 2, 5, 10 ... ms), which under
  concurrent writers of one process puts those sleeps on the tail latency
  (docs/benchmarks.md). With the lock at most one thread per process waits on SQLite, and
  the others wait on the lock, which wakes them at once.
* Django closes every cache at the end of each request (``request_finished`` →
  ``close_caches``), which for diskcache means closing and reopening the SQLite
  connections of every shard on every request. The connections are per thread and stay
  valid, so ``close`` keeps them; they are closed at process exit.
"""

from __future__ import annotations

import threading

from diskcache import DjangoCache
from django.core.cache.backends.base import DEFAULT_TIMEOUT

_write_lock = threading.Lock()


class SharedDiskCache(DjangoCache):
    """diskcache.DjangoCache with one writer per process and connections kept across requests."""

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None, **kwargs):
        # django-ratelimit calls add() before every incr(); once the window's counter exists
        # that add is a no-op, so answer it with a read (no write lock in WAL mode).
        if self.has_key(key, version=version):
            return False
        with _write_lock:
            return super().add(key, value, timeout, version, **kwargs)

    def set(self, *args, **kwargs):
        with _write_lock:
            return super().set(*args, **kwargs)

    def incr(self, key, delta=1, version=None, default=None, retry=True):
        with _write_lock:
            return super().incr(key, delta, version=version, default=default, retry=retry)

    def delete(self, *args, **kwargs):
        with _write_lock:
            return super().delete(*args, **kwargs)

    def close(self, **kwargs) -> None:
        """Keep the connections: Django calls this after every request."""
