"""The admin's monitoring page and each version's charts, fed by the rollups; staff only."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone

from inference.jobs.models import InferenceJob
from inference.monitoring import records
from inference.monitoring.models import RequestRecord, RequestRollup
from inference.monitoring.rollups import rollup_requests
from registry.models import ModelVersion
from tests.inference.support import ROWS

PAGE = "/admin/monitoring/"


@pytest.fixture(autouse=True)
def _empty_buffer():
    records.BUFFER.clear()
    yield
    records.BUFFER.clear()


@pytest.fixture
def staff(client, db):
    user = get_user_model().objects.create_user("ops", password="pw-for-tests", is_staff=True)
    client.force_login(user)
    return client


def chart_data(html: str, title: str) -> dict:
    for blob in re.findall(r'<script id="mv-\d+-data" type="application/json">(.*?)</script>', html, re.S):
        data = json.loads(blob)
        if data["title"] == title:
            return data
    raise AssertionError(f"no chart data for {title}")


def test_rollups_feed_the_page(staff, iris):
    minute = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=5)
    RequestRollup.objects.create(
        minute=minute, model="iris", version=1, count=120, client_errors=6, server_errors=3, instances=240,
        latency_sum_ms=600.0, latency_max_ms=40.0, latency_buckets={"40": 100, "50": 20},
        p50_ms=5.0, p95_ms=12.0, p99_ms=13.0, batch_size_sum=480, batched=120, queue_depth_sum=60, queue_depth_max=7,
    )
    response = staff.get(PAGE)
    assert response.status_code == 200
    html = response.content.decode()
    assert "iris v1" in html
    data = chart_data(html, "iris v1")
    assert len(data["t"]) == 60 and data["step_minutes"] == 1
    i = data["t"].index(int(minute.timestamp()))
    assert data["rps"][i] == 2.0  # 120 requests in that minute
    assert data["error_rate"][i] == 7.5 and data["server_error_rate"][i] == 2.5
    assert data["mean_batch"][i] == 4.0 and data["max_queue"][i] == 7 and data["mean_queue"][i] == 0.5
    assert records.bucket_upper_ms(39) < data["p50_ms"][i] <= records.bucket_upper_ms(40)
    assert data["p50_ms"][i - 1] is None and data["rps"][i - 1] == 0  # no traffic: a gap, zero requests
    # The same figures without JavaScript: the summary table and the per-minute table.
    assert '<td class="num">120</td>' in html and '<td class="num">7.50</td>' in html
    assert minute.strftime("%Y-%m-%d %H:%M") in html
    for kind in ("rps", "latency", "errors", "batch", "queue"):
        assert f'data-kind="{kind}"' in html
    assert "inference/vendor/uplot/uPlot.iife.min.js" in html and "cdn" not in html.lower()

    day = staff.get(PAGE, {"range": "24h"}).content.decode()
    data = chart_data(day, "iris v1")
    assert len(data["t"]) == 96 and data["step_minutes"] == 15
    assert sum(n for n in data["rps"] if n) == pytest.approx(120 / 900, rel=1e-3)


def test_page_after_real_traffic_rolled_up(staff, iris, api, key):
    for _ in range(5):
        api.post("/api/v1/models/iris/predict", {"instances": ROWS[:2]}, key)
    api.post("/api/v1/models/iris/versions/2/predict", {"instances": [[1.0]]}, key)
    assert records.flush() == 6
    rollup_requests()
    html = staff.get(PAGE).content.decode()
    v1, v2 = chart_data(html, "iris v1"), chart_data(html, "iris v2")
    assert sum(n * 60 for n in v1["rps"]) == pytest.approx(5, rel=1e-3)
    assert max(n for n in v1["mean_batch"] if n is not None) == 2.0
    assert max(v2["error_rate"]) == 100.0


def test_jobs_and_worker_cluster_on_the_page(staff, iris, monkeypatch):
    from django_q.status import Stat

    version = ModelVersion.objects.get(model__name="iris", version=1)
    for status in ("queued", "queued", "succeeded"):
        InferenceJob.objects.create(model=version.model, version=version, status=status, input_file="x.json")
    monkeypatch.setattr(Stat, "get_all", staticmethod(lambda broker=None: []))
    html = staff.get(PAGE).content.decode()
    jobs = html[html.index('id="jobs"'):html.index('id="cluster"')]
    assert re.search(r"queued</a></td>\s*<td class=\"num\">2</td>", jobs)
    assert re.search(r"succeeded</a></td>\s*<td class=\"num\">1</td>", jobs)
    assert "No cluster is running" in html and "Broker:" in html

    class FakeStat:
        cluster_id, host, pid, status = "c0ffee", "worker-host-1", 4242, "Idle"
        workers, reincarnations, task_q_size, done_q_size = [5001, 5002], 0, 0, 0
        tob = timezone.now() - timedelta(minutes=3)
        timestamp = timezone.now()

    monkeypatch.setattr(Stat, "get_all", staticmethod(lambda broker=None: [FakeStat()]))
    html = staff.get(PAGE).content.decode()
    assert "worker-host-1" in html and "5001, 5002" in html and "No cluster is running" not in html


def test_a_cluster_heartbeat_from_another_process_is_visible(staff, db):
    """The cluster publishes its Stat through the broker's cache (a file cache in embedded mode):
    what a qcluster process writes there, the web process reads."""
    from django_q.brokers import get_broker
    from django_q.signing import SignedPackage
    from django_q.status import Stat, Status

    status = Status(pid=777, cluster_id="heartbeat-test")
    status.workers, status.status, status.tob = [801, 802], "Idle", timezone.now()
    get_broker().set_stat(Stat.get_key("heartbeat-test"), SignedPackage.dumps(status, True), 30)
    try:
        html = staff.get(PAGE).content.decode()
        assert "heartbeat-test" in html and "801, 802" in html
    finally:
        get_broker().get_cache().delete(Stat.get_key("heartbeat-test"))


def test_staff_only(client, db):
    assert client.get(PAGE).status_code == 302
    assert "/admin/login/" in client.get(PAGE)["Location"]
    client.force_login(get_user_model().objects.create_user("viewer", password="pw-for-tests"))
    assert "/admin/login/" in client.get(PAGE)["Location"]


def test_index_links_to_the_page_and_a_version_shows_its_own_charts(staff, iris):
    staff.force_login(get_user_model().objects.create_superuser("root", password="pw-for-tests"))
    index = staff.get("/admin/").content.decode()
    assert f'href="{PAGE}"' in index
    now = timezone.now().replace(second=0, microsecond=0)
    for version, count in ((1, 30), (2, 50)):
        RequestRollup.objects.create(minute=now - timedelta(minutes=2), model="iris", version=version, count=count,
                                     latency_buckets={"30": count}, latency_max_ms=2.0, batched=count,
                                     batch_size_sum=count)
    v1 = ModelVersion.objects.get(model__name="iris", version=1)
    response = staff.get(f"/admin/registry/modelversion/{v1.pk}/change/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "Monitoring: iris v1" in html
    data = chart_data(html, "iris v1")
    assert sum(n * 60 for n in data["rps"]) == pytest.approx(30, rel=1e-3)
    with pytest.raises(AssertionError):
        chart_data(html, "iris v2")
    day = staff.get(f"/admin/registry/modelversion/{v1.pk}/change/", {"monitoring": "24h"}).content.decode()
    assert chart_data(day, "iris v1")["step_minutes"] == 15


def test_request_records_are_listed_read_only_and_found_by_id(staff, db):
    records.write([records.Entry(datetime.now(UTC).timestamp(), "find-me-123", "iris", 1, "pfx", 200, "", 0.002,
                                 0.0001, 0.001, 1, 1, 0, None)])
    record = RequestRecord.objects.get()
    listing = staff.get("/admin/inference/requestrecord/", {"q": "find-me-123"})
    assert listing.status_code == 403  # plain staff without the view permission

    admin = get_user_model().objects.create_superuser("root", password="pw-for-tests")
    staff.force_login(admin)
    listing = staff.get("/admin/inference/requestrecord/", {"q": "find-me-123"}).content.decode()
    assert "find-me-123" in listing
    assert staff.get("/admin/inference/requestrecord/add/").status_code == 403
    detail = staff.get(f"/admin/inference/requestrecord/{record.pk}/change/")
    assert detail.status_code == 200 and b'name="_save"' not in detail.content
