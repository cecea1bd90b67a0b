"""The embedded mode's shared cache (inference_platform.cache.SharedDiskCache).

What django-ratelimit and the key lookups rely on: ``add`` only when absent (or expired),
an atomic ``incr`` across threads and processes, values readable by another process.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import pytest

from inference_platform.cache import SharedDiskCache


def _cache(directory: Path) -> SharedDiskCache:
    return SharedDiskCache(str(directory), {"SHARDS": 4, "DATABASE_TIMEOUT": 1.0})


def test_add_only_when_absent_or_expired(tmp_path):
    cache = _cache(tmp_path)
    assert cache.add("k", 1, timeout=60) is True
    assert cache.add("k", 5, timeout=60) is False
    assert cache.get("k") == 1
    assert cache.add("short", 1, timeout=0.2) is True
    time.sleep(0.3)
    assert cache.add("short", 7, timeout=60) is True  # the expired one no longer counts
    assert cache.get("short") == 7


def test_incr_counts_every_thread(tmp_path):
    cache = _cache(tmp_path)
    cache.add("n", 0, timeout=60)

    def count():
        for _ in range(200):
            cache.incr("n")

    threads = [threading.Thread(target=count) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert cache.get("n") == 1600


def _count_in_child(directory: str, times: int) -> None:
    cache = _cache(Path(directory))
    for _ in range(times):
        if not cache.add("shared", 1, timeout=60):
            cache.incr("shared")


def test_processes_share_one_count(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    children = [ctx.Process(target=_count_in_child, args=(str(tmp_path), 150)) for _ in range(3)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    assert _cache(tmp_path).get("shared") == 450


def test_close_after_a_request_keeps_the_cache_usable(tmp_path):
    cache = _cache(tmp_path)
    cache.set("a", {"b": 1})
    cache.close()  # what Django's request_finished does
    assert cache.get("a") == {"b": 1}
    cache.set("a", {"b": 2})
    assert cache.get("a") == {"b": 2}


def test_incr_of_a_missing_or_expired_counter_raises_as_django_documents(tmp_path):
    cache = _cache(tmp_path)
    with pytest.raises(ValueError):
        cache.incr("never-set")
    cache.set("short", 3, timeout=0.2)
    assert cache.incr("short") == 4
    time.sleep(0.3)
    with pytest.raises(ValueError):
        cache.incr("short")
    assert cache.get("short") is None


def test_incr_keeps_the_expiry_and_handles_other_values(tmp_path):
    cache = _cache(tmp_path)
    cache.set("window", 1, timeout=0.4)
    assert [cache.incr("window") for _ in range(3)] == [2, 3, 4]
    assert cache.incr("window", 10) == 14
    time.sleep(0.5)
    assert cache.get("window") is None  # counting did not extend the window
    cache.set("f", 1.5, timeout=60)  # not an integer: the library's own incr
    assert cache.incr("f") == 2.5
    cache.set("big", 2**40, timeout=60)
    assert cache.incr("big") == 2**40 + 1
    cache.set("n", 5, timeout=60, version=2)  # versions are separate keys
    assert cache.incr("n", version=2) == 6
    assert cache.get("n") is None
