"""Monitoring: /metrics after known traffic, access log lines, request records and their
rollups, retention, payload capture, and the records' writer thread."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings as django_settings
from django.contrib.auth import get_user_model
from prometheus_client.parser import text_string_to_metric_families

from inference.monitoring import records
from inference.monitoring.logs import JsonFormatter, key_prefix_var, request_id_var
from inference.monitoring.models import RequestRecord, RequestRollup
from inference.monitoring.rollups import percentile, purge_monitoring, rollup_requests
from registry.models import RegisteredModel
from tests.inference.support import ROWS, error_of, make_key

PREDICT = "/api/v1/models/iris/predict"
PREDICT_V2 = "/api/v1/models/iris/versions/2/predict"
TOKEN = "scrape-token-for-tests"


@pytest.fixture(autouse=True)
def _empty_buffer():
    """Records buffered by other tests' requests are not this test's."""
    records.BUFFER.clear()
    yield
    records.BUFFER.clear()


@pytest.fixture
def scrape(client, settings):
    settings.INFERENCE_METRICS_TOKEN = TOKEN

    def _scrape() -> dict[tuple[str, tuple], float]:
        response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200, response.content
        assert response["Content-Type"].startswith("text/plain")
        out = {}
        for family in text_string_to_metric_families(response.content.decode()):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    return _scrape


def value(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(after: dict, before: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


# ---- /metrics ---------------------------------------------------------------------------------------

def test_metrics_count_exactly_the_traffic_sent(api, iris, key, scrape):
    api.post(PREDICT, {"instances": ROWS[:1]}, key)  # load v1 first: its label children exist from here on
    before = scrape()
    for _ in range(5):
        assert api.post(PREDICT, {"instances": ROWS[:2]}, key).status_code == 200
    for _ in range(2):
        assert api.post(PREDICT_V2, {"instances": ROWS}, key).status_code == 200
    for _ in range(3):  # resolved to v1, refused by its schema
        assert api.post(PREDICT, {"instances": [[1.0, 2.0]]}, key).status_code == 400
    after = scrape()

    v1, v2 = {"model": "iris", "version": "1"}, {"model": "iris", "version": "2"}
    assert delta(after, before, "inference_request_total", status="200", **v1) == 5
    assert delta(after, before, "inference_request_total", status="200", **v2) == 2
    assert delta(after, before, "inference_request_total", status="400", **v1) == 3
    assert delta(after, before, "inference_count_total", **v1) == 10  # instances
    assert delta(after, before, "inference_count_total", **v2) == 6
    # One request at a time: one forward pass each, so the effective batch is the request's size.
    assert delta(after, before, "inference_exec_count_total", **v1) == 5
    assert delta(after, before, "inference_exec_count_total", **v2) == 2
    assert delta(after, before, "inference_request_duration_seconds_count", **v1) == 8
    assert delta(after, before, "inference_queue_duration_seconds_count", **v1) == 5  # only computed requests
    assert delta(after, before, "inference_compute_duration_seconds_count", **v2) == 2
    assert delta(after, before, "inference_request_duration_seconds_sum", **v1) > 0
    assert ("inference_queue_depth", tuple(sorted(v1.items()))) in after
    assert value(after, "inference_loaded_models") >= 2
    assert value(after, "inference_model_load_duration_seconds_count", **v2) >= 1
    assert value(after, "inference_broker_up") == 1


def test_rate_limit_rejections_are_counted(api, iris, scrape):
    limited = make_key("slow", rate="2/d")  # a day: the window never rolls over mid-test
    before = scrape()
    statuses = [api.post(PREDICT, {"instances": ROWS[:1]}, limited).status_code for _ in range(4)]
    assert statuses == [200, 200, 429, 429]
    after = scrape()
    assert delta(after, before, "inference_ratelimit_rejected_total", model="iris") == 2


def test_jobs_by_status_and_broker_queue_are_read_at_scrape_time(iris, scrape):
    from django_q.brokers import get_broker

    from inference.jobs.models import InferenceJob
    from registry.models import ModelVersion

    version = ModelVersion.objects.get(model__name="iris", version=1)
    for status, n in (("queued", 3), ("running", 1), ("failed", 2)):
        for _ in range(n):
            InferenceJob.objects.create(model=version.model, version=version, status=status, input_file="x.json")
    metrics = scrape()
    assert value(metrics, "inference_jobs", status="queued") == 3
    assert value(metrics, "inference_jobs", status="running") == 1
    assert value(metrics, "inference_jobs", status="failed") == 2
    assert value(metrics, "inference_jobs", status="succeeded") == 0
    assert value(metrics, "inference_broker_queue_size") == get_broker().queue_size()


def test_metrics_need_a_staff_session_or_the_token(client, db, settings):
    settings.INFERENCE_METRICS_TOKEN = TOKEN
    anonymous = client.get("/metrics")
    assert anonymous.status_code == 401
    assert anonymous["WWW-Authenticate"] == "Bearer"
    assert error_of(anonymous)["code"] == "not_authenticated"
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    user = get_user_model().objects.create_user("viewer", password="pw-for-tests")
    client.force_login(user)
    assert client.get("/metrics").status_code == 401
    user.is_staff = True
    user.save()
    assert client.get("/metrics").status_code == 200


def _child(code: str, multiproc_dir: str) -> int:
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=multiproc_dir, PYTHONPATH=str(django_settings.BASE_DIR))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def test_metrics_add_up_over_worker_processes_and_forget_dead_ones(client, db, settings, tmp_path, monkeypatch):
    """Two 'workers' write their metrics files; /metrics sums them; gunicorn's child_exit drops a
    dead worker's live gauge (queue depth) while its counters keep counting."""
    import importlib.util

    settings.INFERENCE_METRICS_TOKEN = TOKEN
    code = ("import os; from inference.monitoring import metrics as m\n"
            "m.REQUESTS.labels('mp', '1', '200').inc({n}); m.QUEUE_DEPTH.labels('mp', '1').set({n})\n"
            "print(os.getpid())")
    pid_a = _child(code.format(n=3), str(tmp_path))
    _child(code.format(n=4), str(tmp_path))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))

    def scrape() -> str:
        return client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).content.decode()

    text = scrape()
    assert 'inference_request_total{model="mp",status="200",version="1"} 7.0' in text
    assert 'inference_queue_depth{model="mp",version="1"} 7.0' in text
    assert "inference_jobs" in text  # the scrape-time figures come with the aggregated ones

    spec = importlib.util.spec_from_file_location("gunicorn_conf", django_settings.BASE_DIR / "deploy" / "gunicorn.conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    conf.child_exit(None, type("Worker", (), {"pid": pid_a})())
    text = scrape()
    assert 'inference_queue_depth{model="mp",version="1"} 4.0' in text
    assert 'inference_request_total{model="mp",status="200",version="1"} 7.0' in text


# ---- access log ---------------------------------------------------------------------------------------

@pytest.fixture
def access_lines():
    """The JSON lines the `inference.access` logger writes (through the platform's formatter)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("inference.access")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_one_json_access_line_per_request_with_its_id_and_key_prefix_never_the_key(api, iris, key, access_lines):
    ok = api.post(PREDICT, {"instances": ROWS[:2]}, key, headers={"X-Request-ID": "req-ok-1"})
    bad = api.post(PREDICT_V2, {"instances": [[1.0]]}, key)
    assert ok.status_code == 200 and bad.status_code == 400
    lines = access_lines()
    assert len(lines) == 2
    first, second = lines
    prefix = key.split(".")[0]
    assert first["request_id"] == "req-ok-1" == ok["X-Request-ID"]
    assert second["request_id"] == bad["X-Request-ID"]
    assert (first["model"], first["version"], first["status"], first["batch_size"], first["instances"]) == ("iris", 1, 200, 2, 2)
    assert (second["version"], second["status"], second["error_code"]) == (2, 400, bad.json()["error"]["code"])
    assert first["key_prefix"] == second["key_prefix"] == prefix
    assert first["latency_ms"] > 0 and first["level"] == "INFO" and first["logger"] == "inference.access"
    assert first["ts"].endswith("Z")
    secret = key.split(".", 1)[1]
    assert all(secret not in json.dumps(line) for line in lines)


def test_json_formatter_puts_the_current_request_id_on_every_line():
    formatter = JsonFormatter()
    record = logging.LogRecord("inference.x", logging.WARNING, __file__, 1, "loaded %s", ("iris",), None)
    record.extra_field = {"a": 1}
    token, key_token = request_id_var.set("rid-42"), key_prefix_var.set("abc123")
    try:
        line = json.loads(formatter.format(record))
    finally:
        request_id_var.reset(token)
        key_prefix_var.reset(key_token)
    assert line["message"] == "loaded iris" and line["level"] == "WARNING"
    assert line["request_id"] == "rid-42" and line["key_prefix"] == "abc123"
    assert line["extra_field"] == {"a": 1}
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = json.loads(formatter.format(record))
    assert "ValueError: boom" in line["exc"] and "request_id" not in line


def test_the_access_lines_fast_path_writes_what_the_formatter_would(api, iris, key, monkeypatch):
    """As LOGGING configures it (background writer + JSON formatter only), an access line skips
    the LogRecord; it must be the very line the formatter writes for that record. With any other
    handler attached (pytest's own, here) the regular logging path runs."""
    from inference.monitoring.logs import BackgroundStreamHandler
    from inference.monitoring.observe import AccessRecord, _fast_sinks, access_logger

    formatter = JsonFormatter()
    fields = {"request_id": "r1", "key_prefix": "p", "model": "iris", "version": 1, "status": 200,
              "latency_ms": 1.5, "batch_size": 2, "instances": 1, "error_code": None}
    created = 1_800_000_000.25
    slow = formatter.format(AccessRecord("inference.access", "predict", created, dict(fields)))
    assert formatter.format_fields("inference.access", "INFO", "predict", created, fields) == slow

    assert _fast_sinks() is None  # pytest's capture handlers are attached
    stream = io.StringIO()
    handler = BackgroundStreamHandler(stream)
    handler.setFormatter(formatter)
    monkeypatch.setattr(access_logger, "handlers", [handler])
    assert _fast_sinks() == [handler]
    response = api.post(PREDICT, {"instances": ROWS[:1]}, key, headers={"X-Request-ID": "fast-1"})
    handler.flush()
    line = json.loads(stream.getvalue())
    assert line["request_id"] == "fast-1" == response["X-Request-ID"]
    assert (line["logger"], line["level"], line["message"], line["status"]) == ("inference.access", "INFO", "predict", 200)
    handler.addFilter(lambda record: True)  # a filter needs the record: back to the regular path
    assert _fast_sinks() is None


def test_the_background_handler_writes_lines_in_order_without_blocking_the_caller():
    from inference.monitoring.logs import BackgroundStreamHandler

    stream = io.StringIO()
    handler = BackgroundStreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tests.background")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        assert handler.lock is None  # emit takes no lock
        for i in range(50):
            logger.info("line %d", i)
        assert handler._thread is not None
        logger.warning("now")  # a warning wakes the writer at once
        deadline = time.monotonic() + 5
        while '"now"' not in stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        handler.flush()
        lines = [json.loads(line) for line in stream.getvalue().splitlines()]
        assert [line["message"] for line in lines] == [f"line {i}" for i in range(50)] + ["now"]
    finally:
        logger.removeHandler(handler)
        logger.propagate = True


def test_a_forked_child_logs_through_the_background_handler(tmp_path):
    """qcluster forks its workers: logging re-inits every handler's lock in the child (this one
    has none, which used to print an AttributeError per fork) and the child writes its lines."""
    from inference.monitoring.logs import BackgroundStreamHandler

    path = tmp_path / "log.txt"
    with open(path, "a", buffering=1) as stream:
        handler = BackgroundStreamHandler(stream)
        handler.setFormatter(JsonFormatter())
        logger = logging.getLogger("tests.fork")
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(logging.INFO)
        try:
            logger.info("parent")
            handler.flush()
            pid = -1
            err_r, err_w = os.pipe()
            saved_stderr, saved_hook = os.dup(2), sys.unraisablehook
            os.dup2(err_w, 2)  # before the fork: the fork handlers run inside os.fork()
            sys.unraisablehook = lambda u: os.write(2, f"unraisable: {u.exc_type.__name__}: {u.exc_value}".encode())
            try:
                pid = os.fork()
                if pid == 0:  # the child: what a qcluster worker does
                    logger.warning("child")
                    handler.flush()
                    os._exit(0)
            finally:
                if pid != 0:
                    sys.unraisablehook = saved_hook
                    os.dup2(saved_stderr, 2)
                    os.close(saved_stderr)
            os.close(err_w)
            os.waitpid(pid, 0)
            with os.fdopen(err_r) as err:
                stderr = err.read()
        finally:
            logger.removeHandler(handler)
            logger.propagate = True
    assert stderr == "", stderr
    assert [json.loads(line)["message"] for line in path.read_text().splitlines()] == ["parent", "child"]


# ---- request records -------------------------------------------------------------------------------------

def test_requests_are_buffered_then_written_in_bulk_never_on_the_request_path(
    api, iris, key, django_assert_num_queries
):
    api.post(PREDICT, {"instances": ROWS[:1]}, key)  # warm: key lookup, version resolution, load
    records.BUFFER.clear()
    responses = []
    with django_assert_num_queries(0):  # the request path itself touches no database
        for i in range(4):
            responses.append(api.post(PREDICT, {"instances": ROWS[: 1 + i % 2]}, key))
        responses.append(api.post(PREDICT, {"instances": "nope"}, key))
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 400]
    assert RequestRecord.objects.count() == 0
    assert len(records.BUFFER) == 5

    assert records.flush() == 5
    rows = {r.request_id: r for r in RequestRecord.objects.all()}
    assert set(rows) == {r["X-Request-ID"] for r in responses}
    ok = rows[responses[1]["X-Request-ID"]]
    assert (ok.model, ok.version, ok.status, ok.instances, ok.batch_size) == ("iris", 1, 200, 2, 2)
    assert ok.key_prefix == key.split(".")[0]
    assert ok.latency_ms > 0 and ok.compute_ms > 0 and ok.queue_ms >= 0
    assert ok.request_payload is None and ok.response_payload is None  # capture is off by default
    failed = rows[responses[4]["X-Request-ID"]]
    assert (failed.status, failed.error_code, failed.instances) == (400, "invalid_input", 0)
    assert abs((ok.at - datetime.now(UTC)).total_seconds()) < 60


def test_payloads_are_captured_only_for_models_that_switch_it_on(
    api, iris, key, django_capture_on_commit_callbacks
):
    api.post(PREDICT, {"instances": ROWS[:1]}, key)
    model = RegisteredModel.objects.get(name="iris")
    with django_capture_on_commit_callbacks(execute=True):  # as the admin's save commits
        model.capture_payloads = True
        model.save()
    records.BUFFER.clear()
    body = {"instances": ROWS[:2]}
    response = api.post(PREDICT, body, key)
    failed = api.post(PREDICT, {"instances": [[1, 2]]}, key)
    records.flush()
    captured = RequestRecord.objects.get(request_id=response["X-Request-ID"])
    assert captured.request_payload == body
    assert captured.response_payload == response.json()
    refused = RequestRecord.objects.get(request_id=failed["X-Request-ID"])
    assert refused.request_payload == {"instances": [[1, 2]]} and refused.response_payload is None


def test_an_oversized_payload_is_replaced_by_a_note(api, iris, key, settings, django_capture_on_commit_callbacks):
    settings.INFERENCE_CAPTURE_MAX_BYTES = 64
    with django_capture_on_commit_callbacks(execute=True):
        model = RegisteredModel.objects.get(name="iris")
        model.capture_payloads = True
        model.save()
    response = api.post(PREDICT, {"instances": ROWS * 4}, key)
    records.flush()
    row = RequestRecord.objects.get(request_id=response["X-Request-ID"])
    assert "INFERENCE_CAPTURE_MAX_BYTES" in row.request_payload["not_captured"]


def test_a_full_buffer_drops_new_records_and_counts_them(settings, scrape, db):
    settings.INFERENCE_RECORDS_BUFFER_MAX = 3
    before = scrape()
    for i in range(5):
        records.add(_entry(time.time(), request_id=f"r{i}"))
    assert len(records.BUFFER) == 3
    assert delta(scrape(), before, "inference_request_records_dropped_total") == 2
    assert records.flush() == 3
    assert sorted(RequestRecord.objects.values_list("request_id", flat=True)) == ["r0", "r1", "r2"]


def test_a_failed_write_keeps_the_records_for_the_next_flush(db, monkeypatch):
    for i in range(3):
        records.add(_entry(time.time(), request_id=f"k{i}"))

    def down(entries):
        raise RuntimeError("database is down")

    monkeypatch.setattr(records, "write", down)
    assert records.flush() == 0
    assert len(records.BUFFER) == 3
    monkeypatch.undo()
    assert records.flush() == 3
    assert RequestRecord.objects.count() == 3


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_the_writer_thread_flushes_by_itself(settings):
    settings.INFERENCE_RECORDS_FLUSH_THREAD = True
    settings.INFERENCE_RECORDS_FLUSH_SECONDS = 0.05
    buffer = records.RecordBuffer()
    try:
        for i in range(5):
            buffer.add(_entry(time.time(), request_id=f"t{i}"))
        deadline = time.monotonic() + 10
        while RequestRecord.objects.count() < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert RequestRecord.objects.count() == 5
        settings.INFERENCE_RECORDS_FLUSH_SIZE = 3  # a full batch wakes the thread at once
        settings.INFERENCE_RECORDS_FLUSH_SECONDS = 30
        time.sleep(0.1)  # let it go back to sleep with the long interval
        for i in range(3):
            buffer.add(_entry(time.time(), request_id=f"s{i}"))
        deadline = time.monotonic() + 10
        while RequestRecord.objects.count() < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert RequestRecord.objects.count() == 8
    finally:
        buffer.stop()
    assert buffer.written == 8 and buffer._thread is None


# ---- rollups --------------------------------------------------------------------------------------------

def _entry(at: float, *, model="iris", version=1, status=200, latency_ms=10.0, batch=4, depth=0, request_id="r"):
    return records.Entry(at, request_id, model, version, "pfx", status, "" if status < 400 else "x",
                         latency_ms / 1000.0, 0.001, 0.002, 1, batch, depth, None)


def test_percentiles_from_buckets_are_within_the_bucket_width():
    latencies = [float(i) for i in range(1, 1001)]  # 1..1000 ms
    buckets: dict[int, int] = {}
    for ms in latencies:
        b = records.latency_bucket(ms)
        buckets[b] = buckets.get(b, 0) + 1
    for q, exact in ((0.5, 500), (0.95, 950), (0.99, 990)):
        assert abs(percentile(buckets, q, max_ms=1000.0) - exact) / exact < 0.1
    assert percentile({}, 0.5) is None
    assert percentile(buckets, 1.0, max_ms=1000.0) == 1000.0


def test_rollups_summarise_each_minute_of_each_version(db):
    minute = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    t0 = minute.timestamp()
    entries = [_entry(t0 + 1 + i * 0.5, latency_ms=float(i + 1), batch=2 + i % 3, depth=i % 4) for i in range(100)]
    entries += [_entry(t0 + 10, status=400), _entry(t0 + 11, status=503), _entry(t0 + 12, status=503)]
    entries += [_entry(t0 + 61, version=2, latency_ms=50.0)]  # next minute, other version
    entries += [_entry(t0 + 5, version=None, status=404, model="iris", batch=0)]
    records.write(entries)

    assert rollup_requests(now=minute + timedelta(minutes=1, seconds=30)) == 3
    first = RequestRollup.objects.get(model="iris", version=1, minute=minute)
    assert first.count == 103
    assert (first.client_errors, first.server_errors) == (1, 2)
    assert abs(first.p50_ms - 50) / 50 < 0.12
    assert abs(first.p99_ms - 99) / 99 < 0.12
    assert first.latency_max_ms == 100.0
    assert first.batched == 103 and first.mean_batch_size == pytest.approx(
        (sum(2 + i % 3 for i in range(100)) + 3 * 4) / 103)
    assert first.queue_depth_max == 3
    second = RequestRollup.objects.get(model="iris", version=2)
    assert second.minute == minute + timedelta(minutes=1) and second.count == 1 and second.p50_ms <= 50.0
    unresolved = RequestRollup.objects.get(model="iris", version=0)
    assert (unresolved.count, unresolved.client_errors, unresolved.batched) == (1, 1, 0)

    # Idempotent, and late records of a minute still in the window are counted on the next run.
    records.write([_entry(t0 + 30, latency_ms=5.0)])
    assert rollup_requests(now=minute + timedelta(minutes=1, seconds=45)) == 3
    assert RequestRollup.objects.count() == 3
    assert RequestRollup.objects.get(model="iris", version=1, minute=minute).count == 104


def test_the_scheduled_tasks_roll_up_and_purge(db, settings):
    from django_q.models import Schedule

    from inference import tasks

    assert Schedule.objects.get(func="inference.tasks.rollup_requests").minutes == 1
    assert Schedule.objects.get(func="inference.tasks.purge_monitoring").schedule_type == "H"
    now = time.time()
    records.write([_entry(now), _entry(now - 9 * 86400), _entry(now - 30 * 86400)])
    assert tasks.rollup_requests() == 1
    old = RequestRollup.objects.create(minute=datetime.now(UTC) - timedelta(days=100), model="iris", version=1, count=1)
    settings.INFERENCE_RECORDS_RETENTION_DAYS = 7
    assert tasks.purge_monitoring() == {"records": 2, "rollups": 1, "shadow_rollups": 0}
    assert RequestRecord.objects.count() == 1
    assert not RequestRollup.objects.filter(pk=old.pk).exists()
    assert purge_monitoring() == {"records": 0, "rollups": 0, "shadow_rollups": 0}


def test_rollups_of_real_traffic(api, iris, key):
    for _ in range(6):
        api.post(PREDICT, {"instances": ROWS[:3]}, key)
    api.post(PREDICT, {"instances": [[0.0]]}, key)
    records.flush()
    assert rollup_requests() >= 1
    rows = RequestRollup.objects.filter(model="iris", version=1)
    assert sum(r.count for r in rows) == 7
    assert sum(r.client_errors for r in rows) == 1
    assert sum(r.batch_size_sum for r in rows) / sum(r.batched for r in rows) == 3.0


def test_reports_run_together_count_their_requests_once_per_counter():
    """observe.HeldReports runs many requests' reports at once: their request counters get one inc(n)
    each at the end (metrics.counted_together), the same totals as one inc per request."""
    from prometheus_client import REGISTRY

    from inference.monitoring.metrics import VersionMetrics
    from inference.monitoring.observe import HeldReports

    def count(status: str) -> float:
        return REGISTRY.get_sample_value("inference_request_total",
                                         {"model": "together", "version": "3", "status": status}) or 0.0

    metrics = VersionMetrics("together", 3)
    before_ok, before_refused = count("200"), count("429")
    seen_meanwhile: list[float] = []
    held = HeldReports()
    held.pending = [lambda: metrics.request(200, {"total": 0.01}) for _ in range(5)]
    held.pending += [lambda: metrics.request(429, {}), lambda: seen_meanwhile.append(count("200"))]
    held.run()
    assert seen_meanwhile == [before_ok]  # counted at the end, not one by one
    assert count("200") == before_ok + 5 and count("429") == before_refused + 1
    metrics.request(200, {})  # a report run on its own: counted at once
    assert count("200") == before_ok + 6
