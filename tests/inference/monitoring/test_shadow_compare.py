"""The shadow comparison (top-1 agreement, mean absolute difference), the per-minute counters that several
processes add up in one ShadowRollup row, their retention, and the per-request draw of the shadow share.
Plain arrays and fake versions: the end-to-end path is tests/inference/apis/test_shadow_traffic.py."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pytest

from inference.monitoring import shadow as monitoring_shadow
from inference.monitoring.models import ShadowRollup
from inference.monitoring.rollups import purge_monitoring, shadow_summary
from inference.monitoring.shadow import Comparison, ShadowMismatch, ShadowTally, compare
from inference.routing import Route

P = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]], dtype=np.float32)


def test_the_same_outputs_agree_with_no_difference():
    got = compare({"output": P}, {"output": P.copy()}, n=2, output_names=["output"])
    assert got == Comparison(compared=2, agreed=2, abs_diff_sum=0.0, abs_diff_count=6)


def test_top1_and_mean_absolute_difference():
    s = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]], dtype=np.float32)
    got = compare({"output": P}, {"output": s}, n=2, output_names=["output"])
    assert (got.compared, got.agreed, got.abs_diff_count) == (2, 1, 6)
    assert got.abs_diff_sum == pytest.approx(float(np.abs(P - s).sum()))


def test_labels_are_compared_by_name_and_the_labelled_output_is_judged():
    # The shadow lists its classes in another order: the same argmax index is a different class.
    outputs = {"scores": P, "other": np.zeros((2, 2), np.float32)}
    shadow = {"scores": P[:, [1, 0, 2]], "other": np.ones((2, 2), np.float32)}
    got = compare(outputs, shadow, n=2, output_names=["other", "scores"],
                  primary_labels={"scores": ["a", "b", "c"]}, shadow_labels={"scores": ["b", "a", "c"]})
    assert got.agreed == 2 and got.abs_diff_count == 10
    without_names = compare(outputs, shadow, n=2, output_names=["scores", "other"])
    assert without_names.agreed == 0  # by index, both rows changed class


def test_one_value_per_prediction_agrees_on_the_same_value():
    got = compare({"y": np.array([[1], [2]])}, {"y": np.array([[1], [3]])}, n=2, output_names=["y"])
    assert (got.agreed, got.abs_diff_sum) == (1, 1.0)


@pytest.mark.parametrize("shadow", [
    {"output": P[:, :2]},  # other shape
    {"renamed": P},  # no output in common
    {"output": np.array([["a"], ["b"]])},  # not numeric
])
def test_outputs_that_cannot_be_compared_raise(shadow):
    with pytest.raises(ShadowMismatch):
        compare({"output": P}, shadow, n=2, output_names=["output"])


@pytest.mark.django_db
def test_two_processes_flushing_the_same_minute_add_up_in_one_row():
    first, second = ShadowTally(), ShadowTally()
    first.compared("iris", 1, 2, Comparison(compared=3, agreed=2, abs_diff_sum=0.5, abs_diff_count=9))
    second.compared("iris", 1, 2, Comparison(compared=1, agreed=1, abs_diff_sum=0.1, abs_diff_count=3))
    second.dropped("iris", 1, 2, 4)
    second.failed("iris", 1, 2, 2, "boom")
    assert first.flush() == 1 and second.flush() == 1
    row = ShadowRollup.objects.get()
    assert (row.compared, row.agreed, row.abs_diff_count, row.dropped, row.failed) == (4, 3, 12, 4, 2)
    assert row.abs_diff_sum == pytest.approx(0.6)
    [summary] = shadow_summary(model="iris", since=row.minute)
    assert summary["agreement"] == pytest.approx(0.75) and summary["mean_abs_diff"] == pytest.approx(0.05)
    assert (summary["dropped"], summary["failed"]) == (4, 2)
    assert first.flush() == 0  # nothing new: nothing written twice


@pytest.mark.django_db
def test_a_failed_flush_keeps_the_counts_for_the_next(monkeypatch):
    tally = ShadowTally()
    tally.dropped("iris", 1, 2, 5)
    real = monitoring_shadow.add_to_rollup

    def down(key, values):
        raise RuntimeError("database down")

    monkeypatch.setattr(monitoring_shadow, "add_to_rollup", down)
    with pytest.raises(RuntimeError):
        tally.flush()
    tally.dropped("iris", 1, 2, 1)
    monkeypatch.setattr(monitoring_shadow, "add_to_rollup", real)
    assert tally.flush() == 1
    assert ShadowRollup.objects.get().dropped == 6


@pytest.mark.django_db
def test_retention_purges_old_shadow_rollups():
    old = datetime.now(UTC) - timedelta(days=400)
    ShadowRollup.objects.create(minute=old, model="iris", primary_version=1, shadow_version=2, compared=1)
    ShadowRollup.objects.create(minute=datetime.now(UTC).replace(second=0, microsecond=0), model="iris",
                                primary_version=1, shadow_version=2, compared=1)
    assert purge_monitoring()["shadow_rollups"] == 1
    assert ShadowRollup.objects.count() == 1


def test_the_shadow_share_is_drawn_per_request():
    v1, v2 = SimpleNamespace(pk=1), SimpleNamespace(pk=2)
    assert not any(Route([(v1, 100)]).shadows() for _ in range(100))
    assert all(Route([(v1, 100)], shadow=(v2, 100)).shadows() for _ in range(100))
    n = 10_000
    drawn = sum(Route([(v1, 100)], shadow=(v2, 20)).shadows() for _ in range(n))
    assert abs(drawn - n * 0.2) <= 5 * math.sqrt(n * 0.2 * 0.8)
