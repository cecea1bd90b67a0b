"""Per-key rate limits counted in the shared cache, in leases for fast keys.

The count is django-ratelimit's: a fixed window per key (its ``_get_window``, with the key's
jitter), a counter in ``RATELIMIT_USE_CACHE`` under django-ratelimit's cache key, so every web
process on every machine counts against one number. Counting one request at a time costs a
shared-cache write per request (an ``add`` and an ``incr``: a SQLite write in embedded mode, a
Redis round trip with Redis) on the request path (docs/benchmarks.md).

So a process takes its share of a key's window in leases: one ``incr`` by ``n`` reserves ``n``
requests, which the process then spends from memory. ``n`` is 1% of the key's limit (at most
``MAX_LEASE``), so a key with a limit under 200 per window is counted one request at a time,
exactly as before. A lease never reserves past the limit: more than ``limit`` requests per
window are never served, whatever the number of processes. What a lease costs is the other
way: requests a process reserved and did not use by the window's end are not available to
the other processes, at most 1% of the limit per process.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import caches
from django_ratelimit import ALL
from django_ratelimit.core import EXPIRATION_FUDGE, _get_window, _make_cache_key, _split_rate

from .offload import WouldBlock

MAX_LEASE = 512
MAX_LEASES = 4096  # leases held before those of ended windows are dropped (one per key, per client address)


@dataclass
class Usage:
    """The outcome of counting one request: allowed or not, and seconds until the window ends."""

    allowed: bool
    time_left: int


class CacheUnavailable(Exception):
    """The shared cache could not count (the caller fails open)."""


def lease_size(limit: int) -> int:
    return max(1, min(MAX_LEASE, limit // 100))


@dataclass
class _Lease:
    cache_key: str
    left: int  # requests reserved and not yet used
    ends: int  # the window's end (epoch seconds): then the lease is worth nothing
    rate: tuple[int, int] = (0, 0)  # (limit, period) it was counted at
    exhausted: bool = False  # the window's limit is reached: refuse without asking the cache

    def counts(self, window: int, rate: tuple[int, int]) -> bool:
        """Whether this lease counts `window` at `rate`: the same shared counter (its cache key is made of
        the group, the value, the rate and the window's end)."""
        return self.ends == window and self.rate == rate


_rates: dict[str, tuple[int, int]] = {}


def split_rate(rate: str) -> tuple[int, int]:
    """(limit, period in seconds) of a rate such as "100/s", parsed once per process."""
    parsed = _rates.get(rate)
    if parsed is None:
        parsed = _split_rate(rate)
        if len(_rates) < MAX_LEASES:
            _rates[rate] = parsed
    return parsed


class LeasedRateLimiter:
    """Count requests against per-key rates; one instance per process (``limiter``)."""

    def __init__(self) -> None:
        self._leases: dict[tuple[str, str], _Lease] = {}  # per group and counted value (a key's prefix, an address)
        self._lock = threading.Lock()

    def hit(self, group: str, value: str, rate: str, *, may_block: bool = True) -> Usage:
        """Count one request of `value` (a key's prefix, a client's address) in `group` at `rate`; raise
        CacheUnavailable if it cannot be counted.

        With `may_block` False, a request that this process's lease cannot answer raises WouldBlock
        before anything is counted (the shared cache would have to be asked)."""
        parsed = split_rate(rate)
        limit, period = parsed
        window = _get_window(value, period)
        time_left = window - int(time.time())
        with self._lock:
            lease = self._leases.get((group, value))
            if lease is not None and lease.counts(window, parsed):
                if lease.left > 0:  # before `exhausted`: another thread's last grant may still be here
                    lease.left -= 1
                    return Usage(True, time_left)
                if lease.exhausted:
                    return Usage(False, time_left)
        if not may_block:
            raise WouldBlock(("rate", group, value))  # one reservation per lease at a time (offload.without_blocking)
        # The shared counter's name (a hash), only when the cache is asked: not per request.
        cache_key = _make_cache_key(group, window, rate, value, ALL)
        size = lease_size(limit)
        granted = self._reserve(cache_key, size, limit, period)
        with self._lock:
            lease = self._leases.get((group, value))
            if lease is None or not lease.counts(window, parsed):
                if len(self._leases) >= MAX_LEASES:
                    self._drop_ended()
                lease = self._leases[(group, value)] = _Lease(cache_key, 0, window, parsed)
            if granted == 0:
                lease.exhausted = True
                return Usage(False, time_left)
            lease.left += granted - 1  # this request takes one
        return Usage(True, time_left)

    def spent(self, group: str, value: str, rate: str) -> int:
        """Seconds left in the window if this process already knows `value`'s rate in `group` is used up
        for it (a count it made was refused), else 0. From memory only: it never asks the cache."""
        parsed = split_rate(rate)
        window = _get_window(value, parsed[1])
        with self._lock:
            lease = self._leases.get((group, value))
            if lease is not None and lease.counts(window, parsed) and lease.exhausted and lease.left <= 0:
                return max(1, window - int(time.time()))
        return 0

    @staticmethod
    def _reserve(cache_key: str, size: int, limit: int, period: int) -> int:
        """Add `size` to the window's shared count; return how many of those are within the limit."""
        cache = caches[settings.RATELIMIT_USE_CACHE]
        try:
            if cache.add(cache_key, size, period + EXPIRATION_FUDGE):
                count = size
            else:
                try:
                    count = cache.incr(cache_key, size)
                except ValueError:  # the counter expired between add and incr: it starts again
                    count = size if cache.add(cache_key, size, period + EXPIRATION_FUDGE) else None
        except Exception as exc:  # noqa: BLE001 - the caller fails open
            raise CacheUnavailable(str(exc)) from exc
        if count is None or count is False:
            raise CacheUnavailable("the cache returned no count")
        return max(0, min(size, limit - (count - size)))

    def _drop_ended(self) -> None:
        now = int(time.time())
        for name in [name for name, lease in self._leases.items() if lease.ends <= now]:
            del self._leases[name]

    def forget(self) -> None:
        """Drop every lease of this process (tests; a lease left unused is simply not spent)."""
        with self._lock:
            self._leases.clear()


limiter = LeasedRateLimiter()
