"""Shadow versions of an alias through the registry API and services: set, validated, cleared, in the
history; a version that shadows an alias is kept (not archived, not unloaded) like a target.

Real small MLPs ("iris": v1 production, v2 staging, v3 without alias), the real loader.
"""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ValidationError

from inference.keys import APIKey
from registry.models import AliasEvent, ModelAlias, ModelVersion
from registry.services import alias_set, model_version_archive
from tests.conftest import small_mlp
from tests.inference.support import config, error_of, make_key, ready

pytestmark = pytest.mark.django_db


@pytest.fixture
def manage(db) -> dict:
    return {"Authorization": f"Api-Key {make_key('deploy', scope=APIKey.Scope.MANAGE, rate='10000/s')}"}


@pytest.fixture
def v3(iris):
    return ready(small_mlp(3), model_name="iris")


def put(client, headers, body, alias="canary"):
    return client.put(f"/api/v1/models/iris/aliases/{alias}", json.dumps(body), content_type="application/json",
                      headers=headers)


def aliases() -> list:
    return list(ModelAlias.objects.order_by("pk").values_list("name", "version_id", "split", "shadow"))


def test_put_a_shadow_shows_it_records_it_and_a_put_without_it_clears_it(client, iris, v3, manage):
    r = put(client, manage, {"version": 1, "shadow": {"version": 3, "percent": 20}})
    assert r.status_code == 200, r.content
    assert r.json()["shadow"] == {"version": 3, "percent": 20} and r.json()["version"] == 1
    got = client.get("/api/v1/models/iris/aliases/canary", headers=manage).json()
    assert got["shadow"] == {"version": 3, "percent": 20}
    assert got["history"][0]["to_shadow"] == {"version": 3, "percent": 20} and got["history"][0]["from_shadow"] is None
    # The same body again is no move: nothing recorded.
    assert put(client, manage, {"version": 1, "shadow": {"version": 3, "percent": 20}}).status_code == 200
    assert AliasEvent.objects.filter(alias="canary").count() == 1
    # A PUT replaces the alias: without "shadow" it has none.
    r = put(client, manage, {"version": 1})
    assert r.status_code == 200 and r.json()["shadow"] is None
    assert ModelAlias.objects.get(name="canary").shadow is None
    events = list(AliasEvent.objects.filter(alias="canary").order_by("id").values_list(
        "from_version", "to_version", "from_shadow", "to_shadow"))
    assert events == [(None, 1, None, {"version": 3, "percent": 20}), (1, 1, {"version": 3, "percent": 20}, None)]
    # "shadow": null is the same as no shadow.
    assert put(client, manage, {"version": 1, "shadow": None}).json()["shadow"] is None


def test_a_split_with_a_shadow(client, iris, v3, manage):
    split = [{"version": 1, "weight": 90}, {"version": 2, "weight": 10}]
    r = put(client, manage, {"split": split, "shadow": {"version": 3, "percent": 100}})
    assert r.status_code == 200, r.content
    assert r.json()["split"] == split and r.json()["shadow"] == {"version": 3, "percent": 100}
    # A target of the split cannot also be its shadow.
    r = put(client, manage, {"split": split, "shadow": {"version": 2, "percent": 10}})
    assert r.status_code == 400 and error_of(r)["details"]["reason"] == "invalid_shadow"
    assert ModelAlias.objects.get(name="canary").shadow == {"version": 3, "percent": 100}


@pytest.mark.parametrize("shadow, reason, path", [
    ({"version": 3, "percent": 0}, "invalid_shadow", "shadow.percent"),
    ({"version": 3, "percent": 101}, "invalid_shadow", "shadow.percent"),
    ({"version": 3, "percent": 20.0}, "invalid_shadow", "shadow.percent"),
    ({"version": 3, "percent": "20"}, "invalid_shadow", "shadow.percent"),
    ({"version": 3, "percent": True}, "invalid_shadow", "shadow.percent"),
    ({"version": "3", "percent": 20}, "invalid_shadow", "shadow.version"),
    ({"version": 0, "percent": 20}, "invalid_shadow", "shadow.version"),
    ({"version": 3}, "invalid_shadow", "shadow"),
    ({"version": 3, "percent": 20, "extra": 1}, "invalid_shadow", "shadow"),
    ([3, 20], "invalid_shadow", "shadow"),
    (3, "invalid_shadow", "shadow"),
    ({"version": 9, "percent": 20}, "unknown_version", "shadow.version"),
    ({"version": 1, "percent": 20}, "invalid_shadow", "shadow"),  # the primary itself
])
def test_a_bad_shadow_is_400_with_its_path_and_changes_nothing(client, iris, v3, manage, shadow, reason, path):
    before = aliases()
    r = put(client, manage, {"version": 1, "shadow": shadow}, alias="production")
    assert r.status_code == 400, r.content
    err = error_of(r)
    assert err["details"]["reason"] == reason and err["details"]["path"] == path and err["message"]
    assert aliases() == before
    assert not AliasEvent.objects.filter(to_shadow__isnull=False).exists()


def test_an_unready_archived_or_differently_shaped_shadow_is_400(client, iris, manage):
    failed = ready(small_mlp(4), model_name="iris")
    ModelVersion.objects.filter(pk=failed.pk).update(status=ModelVersion.Status.FAILED)
    archived = ready(small_mlp(5), model_name="iris")
    model_version_archive(version=archived)
    from registry.architectures import MLP
    wide = config(architecture_args={"in_features": 5, "hidden": [8], "out_features": 3},
                  inputs=[{"name": "input", "datatype": "FP32", "shape": [5]}])
    different = ready(MLP(5, [8], 3).eval(), wide, model_name="iris")
    for version, reason in ((failed, "shadow_not_ready"), (archived, "shadow_archived"),
                            (different, "shadow_schema_mismatch")):
        r = put(client, manage, {"version": 1, "shadow": {"version": version.version, "percent": 20}})
        assert r.status_code == 400, r.content
        assert error_of(r)["details"]["reason"] == reason and error_of(r)["details"]["path"] == "shadow"
    assert not ModelAlias.objects.filter(name="canary").exists()


def test_the_service_validates_and_clears_a_shadow(iris, v3):
    v1 = ModelVersion.objects.get(model__name="iris", version=1)
    alias = alias_set(model=v1.model, alias="canary", version=v1, shadow=(v3, 50), actor="test")
    assert alias.shadow == {"version": 3, "percent": 50} and alias.shadow_target == (3, 50)
    with pytest.raises(ValidationError) as exc:
        alias_set(model=v1.model, alias="canary", version=v1, shadow=(v3, 0), actor="test")
    assert exc.value.code == "invalid_shadow"
    with pytest.raises(ValidationError) as exc:
        alias_set(model=v1.model, alias="canary", version=v1, shadow=(v1, 10), actor="test")
    assert exc.value.code == "invalid_shadow"
    assert ModelAlias.objects.get(name="canary").shadow == {"version": 3, "percent": 50}
    assert alias_set(model=v1.model, alias="canary", version=v1, actor="test").shadow is None


def test_a_shadow_version_cannot_be_archived_or_unloaded_while_it_shadows(client, iris, v3, manage):
    assert put(client, manage, {"version": 1, "shadow": {"version": 3, "percent": 20}}).status_code == 200
    for action in ("archive", "unload"):
        r = client.post(f"/api/v1/models/iris/versions/3/{action}", headers=manage)
        assert r.status_code == 409 and "canary" in error_of(r)["message"], (action, r.content)
    assert client.delete("/api/v1/models/iris/aliases/canary", headers=manage).status_code == 204
    last = AliasEvent.objects.filter(alias="canary").order_by("-id").first()
    assert last.action == "delete" and last.from_shadow == {"version": 3, "percent": 20}
    assert client.post("/api/v1/models/iris/versions/3/archive", headers=manage).status_code == 200
