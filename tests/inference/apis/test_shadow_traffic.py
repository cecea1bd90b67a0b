"""Shadow traffic end to end: requests through an alias with a shadow answer exactly as without it,
while the shadow version runs a copy in this process's shadow thread and the comparison lands in
ShadowRollup (v1 and v2); a full shadow queue drops copies and a failing shadow is counted, neither
touching the client's answer.

Real small MLPs ("iris": v1 production, v2 staging; more versions per test) through the real loader,
the real batchers and the real shadow thread. Only the full-queue test holds that thread back.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from inference.keys import APIKey
from inference.monitoring.models import ShadowRollup
from inference.monitoring.rollups import shadow_summary
from inference.monitoring.shadow import TALLY
from inference.pool import get_pool
from inference.services import shadow
from registry.models import ModelVersion
from tests.conftest import small_mlp
from tests.inference.support import ROWS, config, forward, make_key, ready

pytestmark = pytest.mark.django_db

V2_BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 4], "data": ROWS}]}


@pytest.fixture(autouse=True)
def _fresh_shadow_thread():
    shadow.RUNNER.stop()
    TALLY.clear()
    yield
    shadow.RUNNER.stop()
    TALLY.clear()


@pytest.fixture
def manage(db) -> dict:
    return {"Authorization": f"Api-Key {make_key('deploy', scope=APIKey.Scope.MANAGE, rate='10000/s')}"}


@pytest.fixture
def infer(db) -> dict:
    return {"Authorization": f"Api-Key {make_key('client', rate='100000/s')}"}


@pytest.fixture
def point(client, manage, django_capture_on_commit_callbacks):
    """PUT an alias body; the move is announced, so this process's memo forgets the old route."""
    def put(body, alias="canary"):
        with django_capture_on_commit_callbacks(execute=True):
            r = client.put(f"/api/v1/models/iris/aliases/{alias}", json.dumps(body), content_type="application/json",
                           headers=manage)
        assert r.status_code == 200, r.content
        return r.json()
    return put


def predict(client, headers, rows=ROWS, ref="canary"):
    r = client.post(f"/api/v1/models/iris/versions/{ref}/predict", json.dumps({"instances": rows}),
                    content_type="application/json", headers=headers)
    assert r.status_code == 200, r.content
    body = r.json()
    body.pop("id")
    return body


def infer_v2(client, headers, body=V2_BODY, ref="canary"):
    r = client.post(f"/v2/models/iris/versions/{ref}/infer", json.dumps(body), content_type="application/json",
                    headers=headers)
    assert r.status_code == 200, r.content
    body = r.json()
    body.pop("id", None)
    return body


def rollup(primary: int, shadow_version: int) -> dict:
    """The counts written for (primary, shadow) once the thread is idle and this process flushed."""
    assert shadow.wait_idle(30)
    shadow.flush()
    [row] = shadow_summary(model="iris", since=ShadowRollup.objects.earliest("minute").minute)
    assert (row["primary_version"], row["shadow_version"]) == (primary, shadow_version)
    return row


def test_a_100_percent_shadow_with_the_same_weights_answers_as_without_and_agrees(client, iris, infer, point):
    twin = ready(small_mlp(0), model_name="iris")  # v1's weights
    point({"version": 1})
    without = [predict(client, infer) for _ in range(3)]
    point({"version": 1, "shadow": {"version": twin.version, "percent": 100}})
    for _ in range(5):
        assert predict(client, infer) == without[0]  # body and version: v1's answer, nothing of the shadow
        assert shadow.wait_idle(30)  # one copy per shadow batch: the same arithmetic as the primary's
    assert without[0]["version"] == 1 and all(w == without[0] for w in without)
    row = rollup(1, twin.version)
    assert (row["compared"], row["agreed"], row["dropped"], row["failed"]) == (15, 15, 0, 0)
    assert row["agreement"] == 1.0 and row["mean_abs_diff"] == 0.0
    assert ShadowRollup.objects.get().abs_diff_count == 15 * 3  # every output element compared


def test_a_shadow_with_other_weights_disagrees_as_much_as_the_models_do(client, iris, infer, point):
    rows = np.random.default_rng(7).normal(0, 3, size=(40, 4)).astype(np.float32).tolist()
    ours, theirs = forward(iris[1], rows), forward(iris[2], rows)
    agree = int((ours.argmax(1) == theirs.argmax(1)).sum())
    assert 0 < agree < len(rows)  # the two models do disagree on these rows
    point({"version": 1, "shadow": {"version": 2, "percent": 100}})
    assert predict(client, infer, rows=rows)["version"] == 1
    row = rollup(1, 2)
    assert (row["compared"], row["agreed"], row["failed"]) == (40, agree, 0)
    assert row["agreement"] == pytest.approx(agree / 40) and row["agreement"] < 1
    assert row["mean_abs_diff"] == pytest.approx(float(np.abs(ours - theirs).mean()), rel=1e-4)
    assert row["mean_abs_diff"] > 0


def test_v2_with_a_shadow_answers_as_without_and_compares(client, iris, infer, point):
    point({"version": 1})
    without = infer_v2(client, infer)
    point({"version": 1, "shadow": {"version": 2, "percent": 100}})
    for _ in range(3):
        assert infer_v2(client, infer) == without
    assert without["model_version"] == "1"
    ours, theirs = forward(iris[1], ROWS), forward(iris[2], ROWS)
    row = rollup(1, 2)
    assert (row["compared"], row["failed"], row["dropped"]) == (9, 0, 0)
    assert row["agreed"] == 3 * int((ours.argmax(1) == theirs.argmax(1)).sum())
    assert row["mean_abs_diff"] == pytest.approx(float(np.abs(ours - theirs).mean()), rel=1e-4)


def test_a_full_shadow_queue_drops_copies_and_counts_them_without_failing_requests(client, iris, infer, point,
                                                                                    settings, monkeypatch):
    settings.INFERENCE_SHADOW_QUEUE = 1
    entered, release = threading.Event(), threading.Event()
    real = shadow.run_copies

    def held(copies):  # the shadow thread, busy with its first copy until released
        entered.set()
        release.wait(30)
        real(copies)

    monkeypatch.setattr(shadow, "run_copies", held)
    point({"version": 1, "shadow": {"version": 2, "percent": 100}})
    answers = [predict(client, infer)]
    assert entered.wait(10)
    answers += [predict(client, infer) for _ in range(4)]  # one waits in the queue, three are dropped
    assert all(a == answers[0] and a["version"] == 1 for a in answers)
    release.set()
    row = rollup(1, 2)
    assert (row["compared"], row["dropped"], row["failed"]) == (2 * 3, 3 * 3, 0)


def test_a_shadow_that_raises_does_not_touch_the_client_and_is_counted_failed(client, iris, infer, point):
    point({"version": 1})
    without = predict(client, infer)
    point({"version": 1, "shadow": {"version": 2, "percent": 100}})
    loaded = get_pool().loaded(ModelVersion.objects.select_related("model", "hardware").get(version=2))

    def broken(arrays):
        raise RuntimeError("the shadow's forward failed")

    loaded.batcher.predict = broken
    assert [predict(client, infer) for _ in range(3)] == [without] * 3
    assert infer_v2(client, infer)["model_version"] == "1"
    row = rollup(1, 2)
    assert (row["compared"], row["failed"], row["dropped"]) == (0, 4 * 3, 0)
    assert row["agreement"] is None and row["mean_abs_diff"] is None


def test_a_shadow_that_answers_other_shapes_is_counted_failed(client, iris, infer, point):
    # Declared with 3 outputs per instance like v1, its model answers 5: the comparison is refused.
    from registry.architectures import MLP

    lying = ready(MLP(4, [8], 5).eval(), config(architecture_args={"in_features": 4, "hidden": [8],
                                                                    "out_features": 5}), model_name="iris")
    point({"version": 1, "shadow": {"version": lying.version, "percent": 100}})
    assert predict(client, infer)["version"] == 1
    row = rollup(1, lying.version)
    assert (row["compared"], row["failed"]) == (0, 3)


def test_a_shadow_with_its_own_preprocessing_prepares_the_request_itself(client, iris, infer, point):
    # The shadow scales its input by 2 before the same weights as v1: it must see the raw request, not v1's
    # prepared arrays (which would make it agree exactly).
    scaled = ready(small_mlp(0), config(preprocess=[{"step": "normalize", "mean": [0, 0, 0, 0],
                                                     "std": [0.5, 0.5, 0.5, 0.5]}]), model_name="iris")
    point({"version": 1, "shadow": {"version": scaled.version, "percent": 100}})
    predict(client, infer)
    ours, theirs = forward(iris[1], ROWS), forward(iris[1], (np.array(ROWS) * 2).tolist())
    row = rollup(1, scaled.version)
    assert row["failed"] == 0
    assert row["mean_abs_diff"] == pytest.approx(float(np.abs(ours - theirs).mean()), rel=1e-4)


def test_a_shadow_of_a_share_copies_about_that_share(client, iris, infer, point):
    point({"version": 1, "shadow": {"version": 2, "percent": 20}})
    n = 300
    for _ in range(n):
        predict(client, infer, rows=ROWS[:1])
    row = rollup(1, 2)
    # Binomial, 5 sigma: 60 +- 35 of 300.
    assert abs(row["compared"] + row["dropped"] - n * 0.2) <= 5 * (n * 0.2 * 0.8) ** 0.5, row


def test_without_a_shadow_nothing_is_copied(client, iris, infer, point):
    point({"version": 1})
    predict(client, infer)
    assert shadow.wait_idle(5)
    assert shadow.flush() == 0 and not ShadowRollup.objects.exists()
