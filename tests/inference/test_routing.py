"""The picker of weighted aliases (inference.routing): deterministic buckets, shares, sticky keys."""

from __future__ import annotations

import math
from collections import Counter
from types import SimpleNamespace

import pytest

from inference.routing import Route, key_bucket

V3, V4 = SimpleNamespace(pk=3, version=3), SimpleNamespace(pk=4, version=4)


def test_buckets_map_to_versions_by_cumulative_weight():
    route = Route([(V3, 90), (V4, 10)])
    assert [route.at(b).version for b in (0, 1, 89)] == [3, 3, 3]
    assert [route.at(b).version for b in (90, 95, 99)] == [4, 4, 4]
    # Over every bucket, each version gets exactly its weight.
    assert Counter(route.at(b).version for b in range(100)) == {3: 90, 4: 10}
    three = Route([(V3, 33), (V4, 33), (SimpleNamespace(pk=5, version=5), 34)])
    assert Counter(three.at(b).version for b in range(100)) == {3: 33, 4: 33, 5: 34}


def test_one_version_is_always_that_version():
    route = Route([(V3, 100)])
    assert {route.pick().version for _ in range(50)} == {3}
    assert route.pick("any-key") is V3 and route.primary is V3


def test_a_split_with_a_version_left_out_routes_over_the_rest():
    route = Route([(V3, 90)])  # v4 (10) was archived after the split was set
    assert route.total == 90 and route.pick("k") is V3


def test_a_routing_key_always_gets_the_same_version_and_keys_spread_by_weight():
    route = Route([(V3, 90), (V4, 10)])
    for key in ("user-1", "user-2", "tenant/42", "é"):
        assert len({route.pick(key).version for _ in range(20)}) == 1
        assert route.pick(key) is route.at(key_bucket(key))
    counts = Counter(route.pick(f"user-{i}").version for i in range(5_000))
    n, p = 5_000, 0.10
    assert abs(counts[4] - n * p) <= 5 * math.sqrt(n * p * (1 - p)), counts


def test_key_bucket_is_stable_and_in_range():
    assert key_bucket("user-1") == key_bucket("user-1")
    assert all(0 <= key_bucket(f"k{i}") < 100 for i in range(1_000))
    assert key_bucket("k", 7) < 7


@pytest.mark.parametrize("picks", [10_000, 100_000])
def test_a_90_10_split_lands_on_its_weights(picks):
    """The issue's measure: 10,000 picks of a 90/10 split land within +-1 % of the weights. The
    bound asserted is binomial 5 sigma (1.5 % at 10,000 picks, 0.47 % at 100,000), so it cannot flake;
    at 100,000 picks that is inside the issue's +-1 %."""
    route = Route([(V3, 90), (V4, 10)])
    share = sum(route.pick().version == 4 for _ in range(picks)) / picks
    assert abs(share - 0.10) <= 5 * math.sqrt(0.09 / picks), share
    if picks >= 100_000:
        assert abs(share - 0.10) <= 0.01
