"""Who can make a web process work: failed authentications are throttled per client address, and
only the versions an alias serves (or a key restricted to the model asks for) are loaded on demand.

Issue 21, items 10 and 11 (docs/reliability.md, "Round 2"). The front reading the body only after
authentication is tested on the real server (tests/inference_platform/test_front.py).
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from inference.pool import get_pool
from registry.services import alias_set
from tests.conftest import small_mlp
from tests.inference.support import ROWS, error_of, make_key, ready

pytestmark = pytest.mark.django_db

PREDICT = "/api/v1/models/iris/predict"


def predict(api, key: str, *, address: str, path: str = PREDICT):
    return api.post(path, {"instances": ROWS}, key, REMOTE_ADDR=address)


def test_failed_authentications_are_throttled_per_address_without_a_lookup(api, settings):
    # An hour's window: five failures cannot straddle two windows within the test.
    settings.INFERENCE_AUTH_FAILURE_RATE = "5/h"
    settings.INFERENCE_KEY_MEMO_SECONDS = 300
    ready(small_mlp(0), aliases=["production"])
    good = make_key("good", rate="10000/s")
    assert predict(api, good, address="10.0.0.5").status_code == 200  # verified before the attack

    for i in range(6):  # five failures allowed; the sixth is over the rate, and is the last one looked up
        r = predict(api, f"guess{i}.secret", address="10.0.0.5")
        assert r.status_code == 401, r.content
    with CaptureQueriesContext(connection) as queries:
        r = predict(api, "guess9.secret", address="10.0.0.5")
    assert r.status_code == 429
    error = error_of(r)
    assert error["code"] == "rate_limited" and "failed authentications" in error["message"]
    assert int(r["Retry-After"]) >= 1
    assert len(queries) == 0, [q["sql"] for q in queries]  # no key lookup for a throttled address
    # A key this process verified still works from that address; other addresses are not throttled;
    # the DRF views refuse the same way.
    assert predict(api, good, address="10.0.0.5").status_code == 200
    assert predict(api, "guess10.secret", address="10.0.0.6").status_code == 401
    assert api.get("/api/v1/models", "guess11.secret", REMOTE_ADDR="10.0.0.5").status_code == 429


def test_failed_authentications_are_not_counted_when_the_rate_is_empty(api, settings):
    settings.INFERENCE_AUTH_FAILURE_RATE = ""
    for i in range(30):
        assert predict(api, f"guess{i}.secret", address="10.0.0.7").status_code == 401


@pytest.fixture
def two_versions(db):
    """iris v1 (production) and v2, ready, that no alias points at; v1 preloaded as the web process does."""
    v1 = ready(small_mlp(0), aliases=["production"])
    v2 = ready(small_mlp(1))
    get_pool().preload()
    return v1, v2


def test_a_version_no_alias_points_at_is_not_loaded_on_demand(api, two_versions, django_capture_on_commit_callbacks):
    v1, v2 = two_versions
    key = make_key("any-model", rate="10000/s")
    r = predict(api, key, address="10.0.1.1", path="/api/v1/models/iris/versions/2/predict")
    assert r.status_code == 503, r.content
    error = error_of(r)
    assert error["code"] == "model_not_ready" and "no alias points at it" in error["message"]
    r = api.get("/v2/models/iris/versions/2/ready", key)
    assert r.json()["ready"] is False and "no alias points at it" in r.json()["error"]
    r = api.post("/v2/models/iris/versions/2/infer", {"inputs": [
        {"name": "input", "shape": [3, 4], "datatype": "FP32", "data": ROWS}]}, key)
    assert r.status_code == 503
    assert not get_pool().is_loaded(v2) and get_pool().is_loaded(v1)  # production was not evicted

    # An alias makes it loadable, and then it answers by number too.
    with django_capture_on_commit_callbacks(execute=True):  # the registry generation moves on commit
        alias_set(model=v2.model, alias="candidate", version=v2)
    assert predict(api, key, address="10.0.1.1", path="/api/v1/models/iris/versions/candidate/predict").status_code == 200
    assert get_pool().is_loaded(v2)
    assert predict(api, key, address="10.0.1.1", path="/api/v1/models/iris/versions/2/predict").status_code == 200


def test_a_key_restricted_to_the_model_may_load_any_of_its_versions(api, two_versions):
    _, v2 = two_versions
    key = make_key("iris-team", rate="10000/s", model_names=["iris"])
    r = predict(api, key, address="10.0.1.2", path="/api/v1/models/iris/versions/2/predict")
    assert r.status_code == 200, r.content
    assert r.json()["version"] == 2 and get_pool().is_loaded(v2)


def test_behind_the_tls_proxy_failures_are_counted_for_the_address_the_proxy_appended(api, settings):
    settings.INFERENCE_AUTH_FAILURE_RATE = "2/h"
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    proxy = {"REMOTE_ADDR": "10.9.9.9", "HTTP_X_FORWARDED_PROTO": "https"}
    for i in range(3):  # the client claims another address each time: the proxy's last entry counts
        r = api.get("/api/v1/models", f"guess{i}.secret", HTTP_X_FORWARDED_FOR=f"1.1.1.{i}, 203.0.113.7", **proxy)
        assert r.status_code == 401
    assert api.get("/api/v1/models", "guess9.secret", HTTP_X_FORWARDED_FOR="203.0.113.7", **proxy).status_code == 429
    # Another client behind the same proxy is not throttled.
    assert api.get("/api/v1/models", "guess9.secret", HTTP_X_FORWARDED_FOR="203.0.113.8", **proxy).status_code == 401


def test_deleting_a_model_revokes_the_keys_that_were_allowed_it_only(api):
    from inference.keys import APIKey
    from registry.models import RegisteredModel

    # A model with versions cannot be deleted (they protect it); one registered without any can.
    RegisteredModel.objects.create(name="iris")
    RegisteredModel.objects.create(name="other")
    only_iris = make_key("iris-only", model_names=["iris"])
    iris_and_other = make_key("both", model_names=["iris", "other"])
    every_model = make_key("every")
    RegisteredModel.objects.get(name="iris").delete()  # as the admin's delete does

    # Before: the iris-only key's list became empty, which means every model (it saw "other").
    r = api.get("/api/v1/models", only_iris)
    assert r.status_code == 401 and "revoked" in error_of(r)["message"]
    assert APIKey.objects.get(prefix=only_iris.partition(".")[0]).revoked
    assert [m["name"] for m in api.get("/api/v1/models", iris_and_other).json()["models"]] == ["other"]
    assert [m["name"] for m in api.get("/api/v1/models", every_model).json()["models"]] == ["other"]
