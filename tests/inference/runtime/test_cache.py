"""The per-process cache of loaded versions (inference.runtime.cache.ModelCache), with fake entries."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from inference.pool import Loaded
from inference.runtime import cache as cache_module
from inference.runtime.base import ModelNotReady
from inference.runtime.batcher import Batcher, BatcherStopped
from inference.runtime.cache import ModelCache


class FakeServed:
    def __init__(self, name: str):
        self.name = name
        self.unloaded = False

    def unload(self) -> None:
        self.unloaded = True


def fake_entry(name: str, nbytes: int) -> Loaded:
    return Loaded(
        served=FakeServed(name),
        batcher=Batcher(lambda a: {"y": a["x"] + 1}, name=name),
        nbytes=nbytes,
        load_seconds=0.0,
    )


class Factory:
    """Counts its calls; builds fake entries (optionally slowly, or failing)."""

    def __init__(self, name: str, nbytes: int = 100, *, sleep: float = 0.0, error: Exception | None = None):
        self.name, self.nbytes, self.sleep, self.error = name, nbytes, sleep, error
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self) -> Loaded:
        with self.lock:
            self.calls += 1
        if self.sleep:
            time.sleep(self.sleep)
        if self.error is not None:
            raise self.error
        return fake_entry(self.name, self.nbytes)


def closed(entry: Loaded) -> bool:
    """Closed: the served version unloaded and the batcher stopped."""
    if not entry.served.unloaded:
        return False
    try:
        entry.batcher.submit({"x": np.zeros((1, 1))})
    except BatcherStopped:
        return not entry.batcher._thread.is_alive()
    return False


@pytest.fixture
def made():
    caches: list[ModelCache] = []
    yield caches
    for c in caches:
        c.clear()


def test_lru_eviction_by_bytes_and_get_refreshes_recency(made):
    c = ModelCache(capacity_bytes=250)
    made.append(c)
    a = c.get("a", Factory("a", 100))
    b = c.get("b", Factory("b", 100))
    assert c.keys() == ["a", "b"] and c.total_bytes == 200
    assert c.get("a", Factory("a-again")) is a  # a hit refreshes "a": "b" is now least recently used
    third = Factory("c", 100)
    entry_c = c.get("c", third)
    assert third.calls == 1
    assert sorted(c.keys()) == ["a", "c"]
    assert c.total_bytes == 200 <= c.capacity_bytes
    assert c.evictions == 1
    assert closed(b)
    assert not closed(a) and not closed(entry_c)
    # an evicted version loads again on its next use
    again = Factory("b", 100)
    c.get("b", again)
    assert again.calls == 1
    assert "a" not in c.keys()  # "a" was the least recently used this time
    assert closed(a)


def test_a_hit_is_a_loaded_entry_counted_as_used_and_never_a_load(made):
    """``hit`` (the request path's lookup, ``ServingPool.loaded_now``) refreshes recency as ``get`` does."""
    c = ModelCache(capacity_bytes=250)
    made.append(c)
    a = c.get("a", Factory("a", 100))
    c.get("b", Factory("b", 100))
    assert c.hit("nope") is None and c.keys() == ["a", "b"]  # nothing loaded for a miss
    assert c.hit("a") is a and c.keys() == ["b", "a"]
    c.get("c", Factory("c", 100))
    assert sorted(c.keys()) == ["a", "c"]  # "b", used least recently, went


def test_an_entry_larger_than_the_capacity_still_serves_alone(made):
    c = ModelCache(capacity_bytes=50)
    made.append(c)
    small = c.get("small", Factory("small", 10))
    big = c.get("big", Factory("big", 500))
    assert c.keys() == ["big"]
    assert closed(small) and not closed(big)


def test_concurrent_gets_of_a_cold_key_load_it_once(made):
    c = ModelCache(capacity_bytes=10_000)
    made.append(c)
    factory = Factory("cold", sleep=0.2)
    barrier = threading.Barrier(16)
    got: list[Loaded] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            got.append(c.get("cold", factory))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    assert factory.calls == 1
    assert len(got) == 16 and all(e is got[0] for e in got)
    assert c.loads == 1
    assert got[0].load_seconds >= 0.2


def test_waiters_on_a_failing_load_get_its_error(made):
    c = ModelCache(capacity_bytes=10_000)
    made.append(c)
    factory = Factory("broken", sleep=0.2, error=ModelNotReady("cuda not available"))
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            c.get("broken", factory)
        except ModelNotReady as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert factory.calls == 1
    assert len(errors) == 8 and all("cuda not available" in str(e) for e in errors)
    assert c.keys() == []


def test_a_model_not_ready_failure_is_remembered_for_failure_ttl(made, monkeypatch):
    monkeypatch.setattr(cache_module, "FAILURE_TTL", 0.3)
    c = ModelCache(capacity_bytes=10_000)
    made.append(c)
    factory = Factory("gpu", error=ModelNotReady("cuda not available"))
    for _ in range(5):
        with pytest.raises(ModelNotReady, match="cuda not available"):
            c.get("gpu", factory)
    assert factory.calls == 1  # the burst did not retry the load
    time.sleep(0.35)
    with pytest.raises(ModelNotReady):
        c.get("gpu", factory)
    assert factory.calls == 2  # past the TTL, the load is tried again
    time.sleep(0.35)
    working = Factory("gpu")
    assert c.get("gpu", working).served.name == "gpu"  # once it can load, it does
    assert working.calls == 1 and c.keys() == ["gpu"]


def test_other_load_errors_are_not_remembered(made):
    c = ModelCache(capacity_bytes=10_000)
    made.append(c)
    factory = Factory("flaky", error=OSError("disk hiccup"))
    for _ in range(3):
        with pytest.raises(OSError):
            c.get("flaky", factory)
    assert factory.calls == 3
    assert c.get("flaky", Factory("flaky")).served.name == "flaky"


def test_discard_and_clear_close_their_entries(made):
    changes = []
    c = ModelCache(capacity_bytes=10_000, on_change=lambda cache: changes.append(sorted(cache.keys())))
    made.append(c)
    entries = {k: c.get(k, Factory(k)) for k in ("a", "b", "c")}
    assert entries["a"].batcher.submit({"x": np.array([[1.0]])}).result(5)["y"].tolist() == [[2.0]]
    assert c.discard("a") is True
    assert closed(entries["a"]) and "a" not in c.keys()
    assert c.discard("a") is False
    assert not closed(entries["b"])
    c.clear()
    assert c.keys() == [] and c.total_bytes == 0
    assert closed(entries["b"]) and closed(entries["c"])
    assert changes[-2:] == [["b", "c"], []]


def test_discard_forgets_a_remembered_failure(made):
    c = ModelCache(capacity_bytes=10_000)
    made.append(c)
    failing = Factory("v", error=ModelNotReady("artifact unreadable"))
    with pytest.raises(ModelNotReady):
        c.get("v", failing)
    c.discard("v")
    fixed = Factory("v")
    c.get("v", fixed)
    assert fixed.calls == 1
