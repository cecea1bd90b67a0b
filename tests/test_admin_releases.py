"""Releases on a model's admin page (Django's test client): each alias with its split, the form that
edits it (errors shown, nothing written), promote and roll back, the side-by-side figures from the
rollups, and who may do what (``registry.change_modelalias``; view-only staff read the panel only).

Real small MLPs registered as versions of "iris" through the registry's helpers.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from inference.monitoring.models import RequestRollup, ShadowRollup
from inference.monitoring.records import bucket_upper_ms
from registry import services
from registry.models import AliasEvent, ModelAlias, ModelVersion
from tests.conftest import small_mlp
from tests.inference.support import config, ready

pytestmark = pytest.mark.django_db

SPLIT_90_10 = [{"version": 1, "weight": 90}, {"version": 2, "weight": 10}]
VIEW = ("view_registeredmodel", "view_modelalias", "view_modelversion")
CHANGE = (*VIEW, "change_modelalias")


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def iris(db):
    """iris v1 (production, 100 %) and v2, both ready, the same schema."""
    v1 = ready(small_mlp(0), model_name="iris", aliases=["production"])
    ready(small_mlp(1), model_name="iris")
    return v1.model


@pytest.fixture
def staff(client, django_user_model):
    """A client logged in as a staff user holding exactly the given permission codenames."""

    def login(*codenames: str, name: str = "ops"):
        user = django_user_model.objects.create_user(name, password="pw-staff-12345", is_staff=True)
        user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))
        assert user.user_permissions.count() == len(codenames)
        client.force_login(user)
        return client

    return login


def page_url(model) -> str:
    return reverse("admin:registry_registeredmodel_change", args=[model.pk])


def url(model, what: str) -> str:
    return reverse(f"admin:registry_registeredmodel_alias_{what}", args=[model.pk])


def split_form(primary: int, **weights: int) -> dict:
    return {"name": "production", "primary": primary, **{f"weight_{k[1:]}": w for k, w in weights.items()}}


def production():
    return ModelAlias.objects.select_related("version").get(name="production")


def messages_of(response) -> list[str]:
    """The messages a response added (those of earlier redirects, never shown, are still stored)."""
    return [str(m) for m in get_messages(response.wsgi_request)][-1:]


def rollup(minutes_ago: int, version: int, count: int, errors: int, bucket: int) -> None:
    minute = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=minutes_ago)
    RequestRollup.objects.create(
        minute=minute, model="iris", version=version, count=count, server_errors=errors, instances=count,
        latency_sum_ms=count * bucket_upper_ms(bucket), latency_max_ms=bucket_upper_ms(bucket),
        latency_buckets={str(bucket): count},
    )


def comparison(html: str, alias: str = "production") -> dict[str, list[str]]:
    """The side-by-side table of one alias's panel: {row label: [cell per version]}, with the header row."""
    block = re.search(rf'<div class="release" id="alias-{alias}".*?</table>', html, re.S).group(0)
    header = re.findall(r'<th data-version="(\d+)">', block)
    rows = {"versions": header}
    for label, cells in re.findall(r"<tr[^>]*><th>([^<]+)</th>(.*?)</tr>", block, re.S):
        rows[label] = [c.strip() for c in re.findall(r"<td>(.*?)</td>", cells, re.S)]
    return rows


def test_the_panel_compares_the_split_versions_from_the_rollups(iris, staff):
    services.alias_set(model=iris, alias="production", split=[(iris.versions.get(version=1), 90),
                                                             (iris.versions.get(version=2), 10)])
    rollup(3, 1, count=180, errors=0, bucket=40)
    rollup(2, 1, count=20, errors=2, bucket=40)
    rollup(2, 2, count=25, errors=1, bucket=60)
    rollup(90, 2, count=1000, errors=1000, bucket=60)  # outside the last hour
    client = staff(*CHANGE)
    html = client.get(page_url(iris)).content.decode()
    table = comparison(html)
    assert table["versions"] == ["1", "2"]
    assert table["traffic share"] == ["90 %", "10 %"]
    assert table["requests"] == ["200", "25"]
    assert table["error rate"] == ["1.00 %", "4.00 %"] and table["5xx rate"] == ["1.00 %", "4.00 %"]
    for version, bucket in ((0, 40), (1, 60)):
        for row in ("p50 latency", "p99 latency"):
            ms = float(table[row][version].removesuffix(" ms").replace(",", ""))
            assert bucket_upper_ms(bucket - 1) < ms <= bucket_upper_ms(bucket), (row, version, ms)
    assert "production → <span class=\"release-targets\">v1 90 % · v2 10 %</span>" in html
    # The last 24 hours count the older minute too.
    day = comparison(client.get(page_url(iris) + "?releases=24h").content.decode())
    assert day["requests"] == ["200", "1,025"]


def test_a_version_without_traffic_shows_zero_requests_and_no_latency(iris, staff):
    html = staff(*CHANGE).get(page_url(iris)).content.decode()
    table = comparison(html)
    assert table["versions"] == ["1"] and table["requests"] == ["0"]
    assert table["p50 latency"] == ["—"] and table["error rate"] == ["—"]


def test_set_a_split_with_the_form(iris, staff):
    client = staff(*CHANGE)
    response = client.post(url(iris, "set"), split_form(1, v1=90, v2=10))
    assert response.status_code == 302 and response["Location"].endswith("#alias-production")
    alias = production()
    assert (alias.version.version, alias.split) == (1, SPLIT_90_10)
    event = AliasEvent.objects.filter(alias="production").latest("id")
    assert (event.from_version, event.from_split, event.to_split, event.actor) == (1, None, SPLIT_90_10, "user:ops")
    assert messages_of(response) == ["Saved: iris@production → v1 90 % · v2 10 %."]
    # v2 as the primary: the split's order follows (the primary first).
    client.post(url(iris, "set"), split_form(2, v1=30, v2=70))
    assert production().split == [{"version": 2, "weight": 70}, {"version": 1, "weight": 30}]
    # One version at 100 %: a plain alias again.
    client.post(url(iris, "set"), split_form(1, v1=100, v2=0))
    assert (production().version.version, production().split) == (1, None)


@pytest.mark.parametrize(("form", "message"), [
    (split_form(1, v1=90, v2=5), "The weights of a split sum to 100 (they sum to 95)."),
    (split_form(2, v1=100, v2=0), "The primary version (v2) needs a weight above 0"),
    (split_form(1, v1=90, v2=110), "Ensure this value is less than or equal to 100."),
    (split_form(1, v1=90, v2=-10), "Ensure this value is greater than or equal to 0."),
    (split_form(7, v1=100), "Select a valid choice."),
])
def test_form_errors_show_on_the_form_and_nothing_is_written(iris, staff, form, message):
    client = staff(*CHANGE)
    events = AliasEvent.objects.count()
    response = client.post(url(iris, "set"), form)
    assert response.status_code == 200
    html = response.content.decode()
    assert message in html and 'class="errornote"' in html and "errorlist" in html
    assert AliasEvent.objects.count() == events and (production().version.version, production().split) == (1, None)


def test_a_version_that_is_not_ready_is_refused_by_the_form(iris, staff):
    v3 = ready(small_mlp(2), model_name="iris")
    ModelVersion.objects.filter(pk=v3.pk).update(status=ModelVersion.Status.FAILED)
    response = staff(*CHANGE).post(url(iris, "set"), split_form(1, v1=90, v3=10))
    assert response.status_code == 200
    assert "iris v3 is failed, not ready" in response.content.decode()
    assert production().split is None and AliasEvent.objects.count() == 1


def test_a_version_with_other_inputs_is_refused_by_the_form(iris, staff):
    cfg = config()
    cfg["inputs"][0]["name"] = "features"
    ready(small_mlp(2), cfg, model_name="iris")
    response = staff(*CHANGE).post(url(iris, "set"), split_form(1, v1=90, v3=10))
    assert response.status_code == 200 and "same input schema" in response.content.decode()
    assert production().split is None


def test_create_an_alias_from_the_page(iris, staff):
    client = staff(*CHANGE)
    form = {"new": "1", "name": "canary", "primary": 2, "weight_1": 50, "weight_2": 50}
    assert client.post(url(iris, "set"), form).status_code == 302
    canary = ModelAlias.objects.get(name="canary")
    assert canary.split == [{"version": 2, "weight": 50}, {"version": 1, "weight": 50}]
    # The same name again, from the new-alias form, is refused rather than moving the alias.
    response = client.post(url(iris, "set"), {**form, "weight_1": 0, "weight_2": 100})
    assert response.status_code == 200 and "already has an alias &#x27;canary&#x27;" in response.content.decode()
    for bad in ("Bad Name", "x" * 64):
        response = client.post(url(iris, "set"), {**form, "name": bad})
        assert response.status_code == 200 and "errorlist" in response.content.decode()
    assert ModelAlias.objects.count() == 2


def test_promote_then_roll_back_with_one_click_each(iris, staff):
    client = staff(*CHANGE)
    client.post(url(iris, "set"), split_form(1, v1=90, v2=10))
    html = client.get(page_url(iris)).content.decode()
    assert html.count('class="button release-promote"') == 1 and "Promote v2 to 100 %" in html
    assert "Roll back to the previous target (v1)" in html

    response = client.post(url(iris, "promote"), {"name": "production", "version": "2"})
    assert response.status_code == 302
    assert (production().version.version, production().split) == (2, None)
    assert messages_of(response) == ["Promoted: iris@production → v2."]
    html = client.get(page_url(iris)).content.decode()
    assert "release-promote" not in html  # one version: no candidate
    assert "Roll back to the previous target (v1 90 % · v2 10 %)" in html

    response = client.post(url(iris, "roll_back"), {"name": "production"})
    assert (production().version.version, production().split) == (1, SPLIT_90_10)
    assert messages_of(response) == ["Rolled back: iris@production → v1 90 % · v2 10 %."]
    moves = list(AliasEvent.objects.filter(alias="production").order_by("id").values_list("to_split", "actor"))
    assert moves[-3:] == [(SPLIT_90_10, "user:ops"), (None, "user:ops"), (SPLIT_90_10, "user:ops")]


def test_refused_promote_and_roll_back_say_why_and_change_nothing(iris, staff):
    client = staff(*CHANGE)
    response = client.post(url(iris, "promote"), {"name": "production", "version": "2"})
    assert response.status_code == 302
    assert messages_of(response) == ["v2 is not a candidate of iris@production (its candidates: none: it points "
                                     "at one version, without a shadow)."]
    response = client.post(url(iris, "roll_back"), {"name": "production"})
    assert messages_of(response) == ["iris@production has no previous target to roll back to."]
    response = client.post(url(iris, "promote"), {"name": "production", "version": "two"})
    assert messages_of(response) == ["Say which version to promote (a version number)."]
    response = client.post(url(iris, "roll_back"), {"name": "nope"})
    assert messages_of(response) == ["iris has no alias 'nope'."]
    assert AliasEvent.objects.count() == 1 and (production().version.version, production().split) == (1, None)


def test_view_only_staff_see_the_panel_read_only_and_cannot_post(iris, staff):
    services.alias_set(model=iris, alias="production", split=[(iris.versions.get(version=1), 90),
                                                             (iris.versions.get(version=2), 10)])
    rollup(2, 1, count=40, errors=0, bucket=40)
    client = staff(*VIEW)
    html = client.get(page_url(iris)).content.decode()
    assert comparison(html)["requests"] == ["40", "0"]  # the figures, read-only
    assert "v1 90 % · v2 10 %" in html and "You may view these aliases, not change them" in html
    panel = html[html.index('<div class="module" id="releases">'):html.index('<form method="post" id="registeredmodel_form"')]
    assert "<form" not in panel and "<button" not in panel and "<input" not in panel
    for absent in ("Promote", "Roll back", "Save split", "New alias"):
        assert absent not in panel, absent
    events = AliasEvent.objects.count()
    for what, form in (("set", split_form(1, v1=100, v2=0)), ("promote", {"name": "production", "version": "2"}),
                       ("roll_back", {"name": "production"})):
        assert client.post(url(iris, what), form).status_code == 403, what
    assert client.get(url(iris, "set") + "?name=production").status_code == 403
    assert AliasEvent.objects.count() == events and production().split == SPLIT_90_10


def test_changing_the_model_is_not_changing_its_aliases(iris, staff):
    client = staff(*VIEW, "change_registeredmodel")
    assert "release-promote" not in client.get(page_url(iris)).content.decode()
    assert client.post(url(iris, "set"), split_form(1, v1=90, v2=10)).status_code == 403
    assert production().split is None


def test_the_release_views_need_a_staff_login(iris, client):
    response = client.post(url(iris, "set"), split_form(1, v1=90, v2=10))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert production().split is None


def test_the_edit_page_shows_the_alias_form(iris, staff):
    response = staff(*CHANGE).get(url(iris, "set") + "?name=production")
    html = response.content.decode()
    assert response.status_code == 200 and "Now: production → v1" in html
    assert 'name="weight_1"' in html and 'name="weight_2"' in html and 'value="100"' in html
    assert staff(*CHANGE, name="ops2").get(url(iris, "set") + "?name=nope").status_code == 404


# --- The shadow ---------------------------------------------------------------------------------


@pytest.fixture
def shadowed(iris):
    """production = v1 with v3 as a 20 % shadow (v2 also ready)."""
    v3 = ready(small_mlp(2), model_name="iris")
    services.alias_set(model=iris, alias="production", version=iris.versions.get(version=1), shadow=(v3, 20))
    return iris


def shadow_rollup(minutes_ago: int, primary: int, **counts) -> None:
    minute = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=minutes_ago)
    ShadowRollup.objects.create(minute=minute, model="iris", primary_version=primary, shadow_version=3, **counts)


def test_the_shadow_column_shows_agreement_mean_abs_diff_and_dropped(shadowed, staff):
    rollup(2, 1, count=100, errors=0, bucket=40)
    shadow_rollup(3, 1, compared=150, agreed=141, abs_diff_sum=6.0, abs_diff_count=450, dropped=4, failed=1)
    shadow_rollup(2, 1, compared=50, agreed=49, abs_diff_sum=2.0, abs_diff_count=150, dropped=0, failed=0)
    shadow_rollup(2, 2, compared=999, agreed=0, abs_diff_sum=9.0, abs_diff_count=9)  # v2 is not in this alias
    html = staff(*CHANGE).get(page_url(shadowed)).content.decode()
    table = comparison(html)
    assert table["versions"] == ["1", "3"] and table["traffic share"] == ["100 %", "copy of 20 %"]
    assert '<th data-version="3">v3 <span class="release-role">shadow</span>' in html
    assert table["shadow: agreement with the primary"] == ["—", "95.00 %"]  # 190 of 200
    assert table["shadow: mean abs diff"] == ["—", "0.01333"]  # 8.0 / 600
    assert table["shadow: predictions compared"] == ["—", "200"]
    assert table["shadow: dropped (queue full)"] == ["—", "4"] and table["shadow: failed"] == ["—", "1"]
    assert "production → <span class=\"release-targets\">v1 + shadow v3 20 %</span>" in html
    assert "Promote v3 to 100 %" in html
    # The form says what the shadow is now, so that saving the split keeps it.
    assert '<option value="3" selected>v3</option>' in html and 'name="shadow_percent" value="20"' in html


def test_saving_the_split_keeps_the_shadow_the_form_carries(shadowed, staff):
    client = staff(*CHANGE)
    form = {**split_form(1, v1=90, v2=10), "shadow_version": "3", "shadow_percent": "20"}
    assert client.post(url(shadowed, "set"), form).status_code == 302
    alias = production()
    assert (alias.split, alias.shadow) == (SPLIT_90_10, {"version": 3, "percent": 20})
    # No shadow chosen: the alias has none afterwards (a set replaces the alias).
    client.post(url(shadowed, "set"), {**split_form(1, v1=90, v2=10), "shadow_version": ""})
    assert production().shadow is None
    event = AliasEvent.objects.filter(alias="production").latest("id")
    assert (event.from_shadow, event.to_shadow) == ({"version": 3, "percent": 20}, None)


@pytest.mark.parametrize(("extra", "message"), [
    ({"shadow_version": "3"}, "Say which share of the requests (1 to 100 %) the shadow v3 gets a copy of."),
    ({"shadow_version": "3", "shadow_percent": "0"}, "Ensure this value is greater than or equal to 1."),
    ({"shadow_version": "2", "shadow_percent": "20"}, "iris v2 already answers this alias&#x27;s requests"),
])
def test_shadow_errors_show_on_the_form(shadowed, staff, extra, message):
    events = AliasEvent.objects.count()
    response = staff(*CHANGE).post(url(shadowed, "set"), {**split_form(1, v1=90, v2=10), **extra})
    assert response.status_code == 200 and message in response.content.decode()
    assert AliasEvent.objects.count() == events and production().shadow == {"version": 3, "percent": 20}


def test_promote_the_shadow_then_roll_back(shadowed, staff):
    client = staff(*CHANGE)
    response = client.post(url(shadowed, "promote"), {"name": "production", "version": "3"})
    assert messages_of(response) == ["Promoted: iris@production → v3."]
    assert (production().version.version, production().shadow) == (3, None)
    assert "Roll back to the previous target (v1 + shadow v3 20 %)" in client.get(page_url(shadowed)).content.decode()
    response = client.post(url(shadowed, "roll_back"), {"name": "production"})
    assert messages_of(response) == ["Rolled back: iris@production → v1 + shadow v3 20 %."]
    assert (production().version.version, production().shadow) == (1, {"version": 3, "percent": 20})


def test_the_alias_form_says_that_saving_one_version_drops_the_split_and_shadow(shadowed, staff):
    client = staff(*CHANGE)
    alias = production()
    change = reverse("admin:registry_modelalias_change", args=[alias.pk])
    assert "removes its split and shadow" in client.get(change).content.decode()
    # Saved there anyway: the alias is that one version, and the history says what it was before.
    v2 = shadowed.versions.get(version=2)
    assert client.post(change, {"version": v2.pk}).status_code == 302
    alias = production()
    assert (alias.version.version, alias.split, alias.shadow) == (2, None, None)
    event = AliasEvent.objects.filter(alias="production").latest("id")
    assert event.from_shadow == {"version": 3, "percent": 20}
    services.alias_set(model=shadowed, alias="production", version=v2)
    assert "removes its split and shadow" not in client.get(change).content.decode()  # nothing to drop now
