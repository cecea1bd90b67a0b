"""Weighted aliases (canaries) through the API: PUT a split, requests routed by weight (v1 and v2),
sticky routing by X-Routing-Key, the split in the alias history, jobs pinned to one version.

Real small MLPs ("iris": v1 production, v2 staging, the same input schema), the real loader.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest

from inference.jobs.models import InferenceJob
from inference.keys import APIKey
from inference.routing import key_bucket
from registry.models import AliasEvent, ModelAlias
from tests.conftest import small_mlp
from tests.inference.support import ROWS, config, error_of, make_key, ready

pytestmark = pytest.mark.django_db

SPLIT_90_10 = [{"version": 1, "weight": 90}, {"version": 2, "weight": 10}]


@pytest.fixture
def manage(db) -> dict:
    return {"Authorization": f"Api-Key {make_key('deploy', scope=APIKey.Scope.MANAGE, rate='10000/s')}"}


@pytest.fixture
def infer(db) -> dict:
    return {"Authorization": f"Api-Key {make_key('client', rate='100000/s')}"}


def put(client, headers, body, alias="canary", model="iris"):
    return client.put(f"/api/v1/models/{model}/aliases/{alias}", json.dumps(body), content_type="application/json",
                      headers=headers)


def predict(client, headers, ref="canary", **extra):
    r = client.post(f"/api/v1/models/iris/versions/{ref}/predict", json.dumps({"instances": ROWS[:1]}),
                    content_type="application/json", headers={**headers, **extra})
    assert r.status_code == 200, r.content
    return r.json()


def test_put_a_split_shows_it_and_records_it_in_the_history(client, iris, manage):
    r = put(client, manage, {"split": SPLIT_90_10})
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["version"] == 1 and body["split"] == SPLIT_90_10 and body["previous_version"] is None
    got = client.get("/api/v1/models/iris/aliases/canary", headers=manage).json()
    assert got["version"] == 1 and got["split"] == SPLIT_90_10
    assert got["history"][0]["to_split"] == SPLIT_90_10 and got["history"][0]["actor"].startswith("key:deploy")
    # Back to one version: the split is gone, the history keeps both moves.
    r = put(client, manage, {"version": 2})
    assert r.status_code == 200 and r.json()["split"] == [{"version": 2, "weight": 100}]
    assert r.json()["previous_version"] == 1
    assert ModelAlias.objects.get(name="canary").split is None
    events = list(AliasEvent.objects.filter(alias="canary").order_by("id").values_list(
        "from_version", "to_version", "from_split", "to_split"))
    assert events == [(None, 1, None, SPLIT_90_10), (1, 2, SPLIT_90_10, None)]


def test_a_plain_version_put_works_as_before(client, iris, manage, infer):
    r = put(client, manage, {"version": 2}, alias="production")
    assert r.status_code == 200 and r.json()["version"] == 2 and r.json()["previous_version"] == 1
    assert {predict(client, infer, ref="production")["version"] for _ in range(5)} == {2}
    assert {predict(client, infer, ref="staging")["version"] for _ in range(5)} == {2}
    assert client.get("/api/v1/models/iris/aliases/production", headers=manage).json()["split"] == [
        {"version": 2, "weight": 100}]


def test_requests_through_a_90_10_alias_are_routed_by_weight(client, iris, manage, infer):
    assert put(client, manage, {"split": SPLIT_90_10}).status_code == 200
    n = 2_000
    counts = Counter(predict(client, infer)["version"] for _ in range(n))
    assert set(counts) == {1, 2}
    # Binomial 5 sigma: 200 +- 67 of 2,000 for the 10 % version.
    assert abs(counts[2] - n * 0.1) <= 5 * math.sqrt(n * 0.1 * 0.9), counts
    # A client pins a version by number, as before.
    assert {predict(client, infer, ref="2")["version"] for _ in range(10)} == {2}


def test_the_production_split_serves_requests_that_name_no_version(client, iris, manage, infer):
    assert put(client, manage, {"split": [{"version": 1, "weight": 50}, {"version": 2, "weight": 50}]},
               alias="production").status_code == 200
    seen = set()
    for _ in range(200):
        r = client.post("/api/v1/models/iris/predict", json.dumps({"instances": ROWS[:1]}),
                        content_type="application/json", headers=infer)
        assert r.status_code == 200, r.content
        seen.add(r.json()["version"])
    assert seen == {1, 2}


def test_the_same_routing_key_always_gets_the_same_version(client, iris, manage, infer):
    assert put(client, manage, {"split": SPLIT_90_10}).status_code == 200
    for user in ("alice", "bob", "carol"):
        expected = 1 if key_bucket(user) < 90 else 2
        assert {predict(client, infer, **{"X-Routing-Key": user})["version"] for _ in range(10)} == {expected}
    spread = {predict(client, infer, **{"X-Routing-Key": f"user-{i}"})["version"] for i in range(100)}
    assert spread == {1, 2}


def test_v2_model_version_says_which_version_answered(client, iris, manage, infer):
    assert put(client, manage, {"split": SPLIT_90_10}).status_code == 200
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": ROWS[0]}]}
    users = [u for u in (f"u{i}" for i in range(200)) if key_bucket(u) >= 90][:2] + ["alice"]
    for user in users:
        r = client.post("/v2/models/iris/versions/canary/infer", json.dumps(body), content_type="application/json",
                        headers={**infer, "X-Routing-Key": user})
        assert r.status_code == 200, r.content
        assert r.json()["model_version"] == ("2" if key_bucket(user) >= 90 else "1")


def test_a_job_through_a_split_is_pinned_to_one_of_its_versions(client, iris, manage, infer, monkeypatch, settings):
    monkeypatch.setattr("django_q.tasks.async_task", lambda *args, **kwargs: None)
    settings.INFERENCE_JOB_MAX_QUEUED_PER_KEY = 100
    assert put(client, manage, {"split": [{"version": 1, "weight": 50}, {"version": 2, "weight": 50}]}).status_code == 200
    versions = set()
    for _ in range(60):
        r = client.post("/api/v1/models/iris/jobs", json.dumps({"instances": ROWS, "version": "canary"}),
                        content_type="application/json", headers=infer)
        assert r.status_code == 202, r.content
        versions.add(InferenceJob.objects.get(pk=r.json()["id"]).version.version)
    assert versions == {1, 2}
    user = next(u for u in (f"u{i}" for i in range(100)) if key_bucket(u) >= 50)
    r = client.post("/api/v1/models/iris/jobs", json.dumps({"instances": ROWS, "version": "canary"}),
                    content_type="application/json", headers={**infer, "X-Routing-Key": user})
    assert InferenceJob.objects.get(pk=r.json()["id"]).version.version == 2


def test_a_version_in_a_split_cannot_be_archived(client, iris, manage):
    assert put(client, manage, {"split": SPLIT_90_10}, alias="canary").status_code == 200
    r = client.post("/api/v1/models/iris/versions/2/archive", headers=manage)
    assert r.status_code == 409 and "canary" in error_of(r)["message"]


def test_a_split_version_is_loaded_on_demand_by_any_key(client, iris, manage, infer,
                                                        django_capture_on_commit_callbacks):
    v3 = ready(small_mlp(3), model_name="iris")  # no alias: an all-models key may not load it by number
    r = client.post("/api/v1/models/iris/versions/3/predict", json.dumps({"instances": ROWS[:1]}),
                    content_type="application/json", headers=infer)
    assert r.status_code == 503
    with django_capture_on_commit_callbacks(execute=True):  # the move is announced: this process forgets
        assert put(client, manage, {"split": [{"version": 1, "weight": 1}, {"version": v3.version, "weight": 99}]}
                   ).status_code == 200
    assert predict(client, infer, ref="3")["version"] == 3


@pytest.mark.parametrize("split, reason", [
    ([{"version": 1, "weight": 90}, {"version": 2, "weight": 20}], "invalid_split"),   # sums to 110
    ([{"version": 1, "weight": 50}, {"version": 2, "weight": 40}], "invalid_split"),   # sums to 90
    ([{"version": 1, "weight": 110}, {"version": 2, "weight": -10}], "invalid_split"),  # negative
    ([{"version": 1, "weight": 100}, {"version": 2, "weight": 0}], "invalid_split"),   # zero
    ([{"version": 1, "weight": 90.0}, {"version": 2, "weight": 10}], "invalid_split"),  # not an integer
    ([{"version": 1, "weight": "90"}, {"version": 2, "weight": 10}], "invalid_split"),
    ([{"version": 1, "weight": True}, {"version": 2, "weight": 99}], "invalid_split"),
    ([{"version": 1, "weight": 50}, {"version": 1, "weight": 50}], "invalid_split"),   # duplicate
    ([{"version": 1, "weight": 90}, {"version": 9, "weight": 10}], "unknown_version"),
    ([{"version": 1, "weight": 90}, {"version": "2", "weight": 10}], "invalid_split"),
    ([{"version": 1, "weight": 90}, {"version": 2}], "invalid_split"),
    ([{"version": 1, "weight": 90}, {"version": 2, "weight": 10, "shadow": 1}], "invalid_split"),
    ([], "invalid_split"),
    ({"version": 1, "weight": 100}, "invalid_split"),
    ([1, 2], "invalid_split"),
])
def test_a_bad_split_is_400_and_changes_nothing(client, iris, manage, split, reason):
    before = list(ModelAlias.objects.order_by("pk").values_list("name", "version_id", "split"))
    r = put(client, manage, {"split": split}, alias="production")
    assert r.status_code == 400, r.content
    err = error_of(r)
    assert err["details"]["reason"] == reason and err["message"]
    assert list(ModelAlias.objects.order_by("pk").values_list("name", "version_id", "split")) == before
    assert not AliasEvent.objects.filter(to_split__isnull=False).exists()


def test_a_split_of_unready_archived_or_differently_shaped_versions_is_400(client, iris, manage):
    from registry.models import ModelVersion
    from registry.services import model_version_archive

    other = ready(small_mlp(4), model_name="iris")
    ModelVersion.objects.filter(pk=other.pk).update(status=ModelVersion.Status.FAILED)
    archived = ready(small_mlp(5), model_name="iris")
    model_version_archive(version=archived)
    wide = config(architecture_args={"in_features": 5, "hidden": [8], "out_features": 3},
                  inputs=[{"name": "input", "datatype": "FP32", "shape": [5]}])
    from registry.architectures import MLP
    different = ready(MLP(5, [8], 3).eval(), wide, model_name="iris")
    for version, reason in ((other, "split_not_ready"), (archived, "split_archived"),
                            (different, "split_schema_mismatch")):
        r = put(client, manage, {"split": [{"version": 1, "weight": 90}, {"version": version.version, "weight": 10}]})
        assert r.status_code == 400, r.content
        assert error_of(r)["details"]["reason"] == reason, r.content
    assert not ModelAlias.objects.filter(name="canary").exists()
    assert not AliasEvent.objects.filter(alias="canary").exists()


def test_removing_a_split_alias_records_the_split_it_had(client, iris, manage):
    assert put(client, manage, {"split": SPLIT_90_10}).status_code == 200
    assert client.delete("/api/v1/models/iris/aliases/canary", headers=manage).status_code == 204
    last = AliasEvent.objects.filter(alias="canary").order_by("-id").first()
    assert (last.action, last.from_version, last.from_split, last.to_version) == ("delete", 1, SPLIT_90_10, None)
    # Removed, v2 (in no other alias's split) can be archived again.
    assert client.post("/api/v1/models/iris/versions/2/archive", headers=manage).status_code == 409  # staging
    assert put(client, manage, {"version": 1}, alias="staging").status_code == 200
    assert client.post("/api/v1/models/iris/versions/2/archive", headers=manage).status_code == 200
