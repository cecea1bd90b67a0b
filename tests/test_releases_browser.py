"""Releases on a model's admin page in a real browser: Debian's chromium (Playwright) against a live server.

Two ready versions of "iris" (real safetensors files of small MLPs) and per-minute rollups for
both. A staff user who may change aliases sets a 90/10 split with the form, sees both versions'
figures side by side, promotes the candidate to 100 % and rolls back to the split, each in one
click. A staff user who may only view sees the same figures with no form and no button.
Screenshots are kept under var/screenshots/.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils import timezone

from inference.monitoring.models import RequestRollup, ShadowRollup
from inference.monitoring.records import bucket_upper_ms
from registry import services
from registry.models import AliasEvent, ModelAlias
from tests.conftest import small_mlp
from tests.inference.support import ready
from tests.test_admin_browser import SCREENSHOTS, browser, login, site  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

VIEW = ("view_registeredmodel", "view_modelalias", "view_modelversion", "view_aliasevent")


def staff_user(name: str, *codenames: str) -> None:
    user = get_user_model().objects.create_user(name, password="s3cret-pass", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))


@pytest.fixture
def iris(site):  # noqa: F811 - the fixture imported above
    """iris v1 (production) and v2, with traffic in the rollups: v1 300 requests, v2 40 (2 errors)."""
    v1 = ready(small_mlp(0), model_name="iris", aliases=["production"])
    ready(small_mlp(1), model_name="iris")
    minute = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=2)
    for version, count, errors, bucket in ((1, 300, 0, 40), (2, 40, 2, 55)):
        RequestRollup.objects.create(
            minute=minute, model="iris", version=version, count=count, server_errors=errors, instances=count,
            latency_sum_ms=count * bucket_upper_ms(bucket), latency_max_ms=bucket_upper_ms(bucket),
            latency_buckets={str(bucket): count},
        )
    return v1.model


def column(page, row: str) -> list[str]:
    """The cells of one row of production's side-by-side table."""
    cells = page.locator(f"#alias-production table.release-comparison tr:has(th:text-is('{row}')) td")
    return [c.strip() for c in cells.all_inner_texts()]


def test_operator_splits_promotes_and_rolls_back_in_the_browser(browser, site, iris):  # noqa: F811
    staff_user("operator", *VIEW, "change_modelalias")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    login(page, site, "operator", "s3cret-pass")
    model_page = f"{site}/admin/registry/registeredmodel/{iris.pk}/change/"
    page.goto(model_page)
    targets = page.locator("#alias-production .release-targets")
    assert targets.inner_text() == "v1"
    assert column(page, "requests") == ["300"]

    # A 90/10 split with the form; a first try at 90/5 is shown back with the error, nothing saved.
    page.click("#alias-production summary")
    page.fill("#id_production_weight_1", "90")
    page.fill("#id_production_weight_2", "5")
    assert page.is_checked("#id_production_form input[name=primary][value='1']")
    page.locator("#alias-production").screenshot(path=str(SCREENSHOTS / "admin-releases-form.png"))
    page.click("#id_production_form input[type=submit]")
    page.wait_for_url("**/aliases/set/")
    assert "The weights of a split sum to 100 (they sum to 95)." in page.locator("ul.errorlist").inner_text()
    assert page.input_value("#id_production_weight_2") == "5"
    page.screenshot(path=str(SCREENSHOTS / "admin-releases-form-error.png"), full_page=True)
    assert AliasEvent.objects.filter(model=iris, alias="production").count() == 1
    page.fill("#id_production_weight_2", "10")
    page.click("#id_production_form input[type=submit]")
    page.wait_for_url("**/change/#alias-production")
    assert targets.inner_text() == "v1 90 % · v2 10 %"
    assert page.locator("ul.messagelist").inner_text() == "Saved: iris@production → v1 90 % · v2 10 %."
    headers = page.locator("#alias-production table.release-comparison thead th[data-version]").all_text_contents()
    assert [h.split()[0] for h in headers] == ["v1", "v2"] and "candidate" in headers[1]
    assert column(page, "traffic share") == ["90 %", "10 %"]
    assert column(page, "requests") == ["300", "40"]
    assert column(page, "error rate") == ["0.00 %", "5.00 %"]
    assert all(cell.endswith(" ms") for cell in column(page, "p50 latency") + column(page, "p99 latency"))
    page.locator("#releases").screenshot(path=str(SCREENSHOTS / "admin-releases-split.png"))

    # Promote the candidate: one click.
    page.click("#alias-production button.release-promote[data-version='2']")
    page.wait_for_url("**/change/#alias-production")
    assert targets.inner_text() == "v2"
    assert page.locator("ul.messagelist").inner_text() == "Promoted: iris@production → v2."
    assert column(page, "traffic share") == ["100 %"] and column(page, "requests") == ["40"]
    assert page.locator("#alias-production button.release-promote").count() == 0
    alias = ModelAlias.objects.select_related("version").get(model=iris, name="production")
    assert (alias.version.version, alias.split) == (2, None)

    # Roll back to the split: one click.
    page.click("#alias-production button.release-roll-back")
    page.wait_for_url("**/change/#alias-production")
    assert targets.inner_text() == "v1 90 % · v2 10 %"
    assert page.locator("ul.messagelist").inner_text() == "Rolled back: iris@production → v1 90 % · v2 10 %."
    assert column(page, "requests") == ["300", "40"]
    history = page.locator("#alias_events-group").inner_text()
    assert history.count("user:operator") == 3 and "v1 90 % · v2 10 %" in history
    assert AliasEvent.objects.filter(model=iris, alias="production", actor="user:operator").count() == 3
    page.screenshot(path=str(SCREENSHOTS / "admin-releases-rolled-back.png"), full_page=True)
    assert not errors, errors


def test_view_only_staff_see_the_figures_without_forms_or_buttons(browser, site, iris):  # noqa: F811
    staff_user("viewer", *VIEW)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    login(page, site, "viewer", "s3cret-pass")
    page.goto(f"{site}/admin/registry/registeredmodel/{iris.pk}/change/")
    assert page.locator("#alias-production .release-targets").inner_text() == "v1"
    assert column(page, "requests") == ["300"]
    releases = page.locator("#releases")
    assert releases.locator("form").count() == 0 and releases.locator("button").count() == 0
    assert releases.locator("input").count() == 0
    assert "You may view these aliases, not change them" in releases.inner_text()
    releases.screenshot(path=str(SCREENSHOTS / "admin-releases-view-only.png"))


def test_operator_sees_the_shadow_beside_the_primary_and_promotes_it(browser, site, iris):  # noqa: F811
    v3 = ready(small_mlp(2), model_name="iris")
    services.alias_set(model=iris, alias="production", version=iris.versions.get(version=1), shadow=(v3, 20))
    minute = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=2)
    ShadowRollup.objects.create(minute=minute, model="iris", primary_version=1, shadow_version=3, compared=60,
                                agreed=57, abs_diff_sum=1.5, abs_diff_count=180, dropped=2, failed=0)
    staff_user("operator", *VIEW, "change_modelalias")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    login(page, site, "operator", "s3cret-pass")
    page.goto(f"{site}/admin/registry/registeredmodel/{iris.pk}/change/")
    targets = page.locator("#alias-production .release-targets")
    assert targets.inner_text() == "v1 + shadow v3 20 %"
    assert column(page, "traffic share") == ["100 %", "copy of 20 %"]
    assert column(page, "shadow: agreement with the primary") == ["—", "95.00 %"]
    assert column(page, "shadow: mean abs diff") == ["—", "0.008333"]
    assert column(page, "shadow: dropped (queue full)") == ["—", "2"]
    page.click("#alias-production summary")
    assert page.input_value("#id_production_shadow_version") == "3"
    assert page.input_value("#id_production_shadow_percent") == "20"
    page.locator("#releases").screenshot(path=str(SCREENSHOTS / "admin-releases-shadow.png"))
    page.click("#alias-production button.release-promote[data-version='3']")
    page.wait_for_url("**/change/#alias-production")
    assert targets.inner_text() == "v3"
    alias = ModelAlias.objects.select_related("version").get(model=iris, name="production")
    assert (alias.version.version, alias.shadow) == (3, None)
