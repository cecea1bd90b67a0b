"""Bad weighted-alias bodies (hypothesis): whatever `split` a management key PUTs, the registry API
answers 200 (a valid split, stored as sent) or a 400 in the v1 error shape that changes nothing:
never a 500, never a half-written alias or a history entry for a refused split."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from inference.keys import APIKey
from registry.models import AliasEvent, ModelAlias
from tests.inference.support import make_key

pytestmark = pytest.mark.django_db

ODD = st.one_of(st.none(), st.booleans(), st.text(max_size=4), st.floats(allow_nan=True),
                st.integers(-(2**40), 2**40), st.lists(st.integers(), max_size=2))
VERSIONS = st.one_of(st.sampled_from([1, 2, 3, 0, -1, 99, 2**31, 2**63, "1", 1.0, True]), ODD)
WEIGHTS = st.one_of(st.integers(-150, 150), st.sampled_from([0, 10, 50, 90, 100, 10.0, "10", True, 2**63]), ODD)
ENTRY = st.one_of(
    st.fixed_dictionaries({"version": VERSIONS, "weight": WEIGHTS}),
    st.fixed_dictionaries({"version": VERSIONS, "weight": WEIGHTS}, optional={"shadow": ODD, "Weight": ODD}),
    ODD,
)
SPLITS = st.one_of(st.lists(ENTRY, max_size=4), ODD, st.dictionaries(st.text(max_size=3), ODD, max_size=2))


def _state():
    return (list(ModelAlias.objects.order_by("pk").values_list("name", "version_id", "split")),
            AliasEvent.objects.count())


@hsettings(max_examples=150, deadline=None, derandomize=True, database=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(split=SPLITS)
@example(split=[{"version": 1, "weight": 90}, {"version": 2, "weight": 10}])
@example(split=[{"version": 1, "weight": 90}, {"version": 2, "weight": 10.5}])
def test_any_split_body_is_stored_as_sent_or_refused_cleanly(client, iris, split):
    headers = {"Authorization": f"Api-Key {make_key('deploy', scope=APIKey.Scope.MANAGE, rate='100000/s')}"}
    before = _state()
    r = client.put("/api/v1/models/iris/aliases/canary", json.dumps({"split": split}),
                   content_type="application/json", headers=headers)
    assert r.status_code in (200, 400), r.content
    if r.status_code == 400:
        error = r.json()["error"]
        assert error["code"] and error["message"]
        assert _state() == before
    else:
        row = ModelAlias.objects.get(model__name="iris", name="canary")
        assert [{"version": n, "weight": w} for n, w in row.targets] == split
        assert sum(w for _, w in row.targets) == 100
