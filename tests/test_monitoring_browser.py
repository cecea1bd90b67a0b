"""The monitoring page in a real browser: Debian's chromium (Playwright) against a live server.

Real predict traffic goes over HTTP to the live server; its request records are flushed and
rolled up; an operator logs in, opens the monitoring page and a version's page, and sees the
charts drawn (uPlot canvases, no console errors). Without JavaScript the same figures are in
the tables. Screenshots are kept under var/screenshots/.
"""

from __future__ import annotations

import json
import urllib.request

import pytest
from django.contrib.auth import get_user_model

from inference.monitoring import records
from inference.monitoring.rollups import rollup_requests
from inference.pool import reset_pool
from registry.models import ModelVersion
from tests.conftest import small_mlp
from tests.inference.support import ROWS, make_key, ready
from tests.test_admin_browser import SCREENSHOTS, browser, login, site  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


@pytest.fixture
def traffic(site):  # noqa: F811 - the fixture imported above
    """iris v1 (production) and v2 with real requests over HTTP, flushed and rolled up."""
    reset_pool()
    records.BUFFER.clear()
    ready(small_mlp(0), model_name="iris", aliases=["production"])
    ready(small_mlp(1), model_name="iris", aliases=["staging"])
    key = make_key("browser", rate="100000/s")

    def post(path: str, body: dict) -> int:
        request = urllib.request.Request(f"{site}{path}", data=json.dumps(body).encode(), method="POST",
                                         headers={"Authorization": f"Api-Key {key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    statuses = [post("/api/v1/models/iris/predict", {"instances": ROWS[: 1 + i % 3]}) for i in range(30)]
    statuses += [post("/api/v1/models/iris/versions/2/predict", {"instances": ROWS}) for _ in range(10)]
    statuses += [post("/api/v1/models/iris/predict", {"instances": [[1.0]]}) for _ in range(3)]
    assert statuses.count(200) == 40 and statuses.count(400) == 3
    assert records.flush() == 43
    assert rollup_requests() >= 2
    yield
    reset_pool()


def test_operator_sees_the_monitoring_charts(browser, site, traffic):  # noqa: F811
    get_user_model().objects.create_superuser("operator", "", "s3cret-pass")
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    login(page, site, "operator", "s3cret-pass")

    page.click("#monitoring-link a.section")
    page.wait_for_url("**/admin/monitoring/")
    page.wait_for_selector(".mon-charts.mon-ready")
    assert page.locator(".mon-chart[data-drawn=true] canvas").count() == 10  # 5 charts x 2 versions
    assert page.locator(".mon-chart .u-title").first.inner_text() == "Requests/s"
    summary = page.locator("table.mon-summary").inner_text()
    assert "iris" in summary and "v1" in summary and "v2" in summary
    page.screenshot(path=str(SCREENSHOTS / "admin-monitoring.png"), full_page=True)

    page.click("text=Last 24 hours")
    page.wait_for_selector(".mon-charts.mon-ready")
    assert page.locator(".mon-chart[data-drawn=true] canvas").count() == 10

    v1 = ModelVersion.objects.get(model__name="iris", version=1)
    page.goto(f"{site}/admin/registry/modelversion/{v1.pk}/change/")
    page.wait_for_selector("#monitoring .mon-charts.mon-ready")
    assert page.locator("#monitoring .mon-chart[data-drawn=true] canvas").count() == 5
    assert "iris v1" in page.locator("#monitoring").inner_text()
    page.locator("#monitoring").screenshot(path=str(SCREENSHOTS / "admin-version-monitoring.png"))
    assert not errors, errors


def test_the_page_reads_without_javascript(browser, site, traffic):  # noqa: F811
    get_user_model().objects.create_superuser("operator", "", "s3cret-pass")
    context = browser.new_context(java_script_enabled=False)
    page = context.new_page()
    login(page, site, "operator", "s3cret-pass")
    page.goto(f"{site}/admin/monitoring/")
    assert page.locator("canvas").count() == 0
    rows = page.locator("table.mon-summary tbody tr")
    assert rows.count() == 2
    v1 = rows.nth(0).inner_text().split()
    assert v1[:3] == ["iris", "v1", "33"]  # 30 answered + 3 refused by the schema
    page.locator("details summary").first.click()  # per-minute figures, no script needed
    assert page.locator("details[open] table tbody tr").count() >= 1
    page.screenshot(path=str(SCREENSHOTS / "admin-monitoring-no-js.png"), full_page=True)
    context.close()
