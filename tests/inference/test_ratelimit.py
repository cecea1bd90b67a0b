"""Rate limits counted in leases (inference.ratelimit) against the real shared cache.

Each ``LeasedRateLimiter`` stands for one web process: two of them on one cache are two
processes counting one key. What must hold: never more than the limit per window, whatever
the processes and threads; slow keys counted one request at a time; a new window counts
from zero; a cache that cannot count is reported, so that the caller fails open.
"""

from __future__ import annotations

import threading
import types

import pytest
from django.core.cache import cache

from inference.ratelimit import MAX_LEASE, CacheUnavailable, LeasedRateLimiter, lease_size


@pytest.fixture
def clock(monkeypatch):
    """django-ratelimit's clock, moved by hand (its windows) and the limiter's (time left)."""
    import django_ratelimit.core

    import inference.ratelimit

    now = [1_700_000_000.0]
    fake = types.SimpleNamespace(time=lambda: now[0])
    monkeypatch.setattr(django_ratelimit.core, "time", fake)
    monkeypatch.setattr(inference.ratelimit, "time", fake)
    return now


def allowed(limiter: LeasedRateLimiter, n: int, rate: str, key: str = "abc") -> int:
    return sum(limiter.hit("api", key, rate).allowed for _ in range(n))


def test_lease_sizes():
    assert [lease_size(n) for n in (1, 5, 199, 200, 1000, 6400, 10**7)] == [1, 1, 1, 2, 10, 64, MAX_LEASE]


def test_a_slow_key_is_counted_one_request_at_a_time_in_the_shared_cache(clock):
    process_a, process_b = LeasedRateLimiter(), LeasedRateLimiter()
    assert allowed(process_a, 3, "5/m") == 3
    assert allowed(process_b, 2, "5/m") == 2
    refused = process_a.hit("api", "abc", "5/m")
    assert not refused.allowed and 1 <= refused.time_left <= 60
    assert not process_b.hit("api", "abc", "5/m").allowed
    assert allowed(process_b, 5, "5/m", key="other") == 5  # the count is per key


def test_processes_taking_turns_serve_exactly_the_limit(clock):
    processes = [LeasedRateLimiter(), LeasedRateLimiter()]
    served = 0
    for i in range(1200):
        served += processes[i % 2].hit("api", "abc", "1000/h").allowed
    assert served == 1000  # lease 10: reserved in tens, never past the limit


def test_a_lease_left_unused_elsewhere_costs_at_most_one_lease(clock):
    process_a, process_b = LeasedRateLimiter(), LeasedRateLimiter()
    assert process_a.hit("api", "abc", "1000/h").allowed  # reserves 10, uses 1
    assert allowed(process_b, 1200, "1000/h") == 990
    assert allowed(process_a, 20, "1000/h") == 9  # what it had reserved, then refused


def test_threads_of_one_process_never_pass_the_limit(clock):
    limiter = LeasedRateLimiter()
    counts: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        n = allowed(limiter, 400, "2000/d")
        with lock:
            counts.append(n)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counts) == 2000


def test_a_new_window_counts_from_zero(clock):
    limiter = LeasedRateLimiter()
    assert allowed(limiter, 10, "4/s") == 4
    clock[0] += 1
    assert allowed(limiter, 10, "4/s") == 4


def test_a_cache_that_cannot_count_is_reported(monkeypatch, clock):
    def broken(*args, **kwargs):
        raise ConnectionError("cache down")

    monkeypatch.setattr(cache, "add", broken)
    with pytest.raises(CacheUnavailable, match="cache down"):
        LeasedRateLimiter().hit("api", "abc", "5/m")


def test_a_counter_that_expired_between_add_and_incr_starts_again(monkeypatch, clock):
    limiter = LeasedRateLimiter()
    assert limiter.hit("api", "abc", "5/m").allowed
    real_add = cache.add
    calls = []

    def add_after_expiry(key, value, timeout=None, version=None):
        calls.append(value)
        if len(calls) == 1:  # the window's counter is still there for this add...
            return False
        return real_add(key, value, timeout, version=version)

    def incr_of_gone(key, delta=1, version=None):
        cache.delete(key)  # ... and gone when incr comes
        raise ValueError(f"Key '{key}' not found")

    monkeypatch.setattr(cache, "add", add_after_expiry)
    monkeypatch.setattr(cache, "incr", incr_of_gone)
    assert limiter.hit("api", "abc", "5/m").allowed
    assert calls == [1, 1]
