"""Fault injection (issue 9, item 6): the platform's real processes, broken on purpose.

* SIGKILL of a qcluster worker mid-job, again and again: 0 jobs lost, 0 results twice
  (3 kills in the default run, 20 in ``make soak``).
* SQLite busy: many threads of a real web server and two qcluster workers writing at once:
  no "database is locked", no 5xx.
* The broker down when a job is submitted: 202 all the same, the row waits, the reconciler
  queues it (in-process, both runs).
* Redis killed and restarted under load (a private ``redis-server`` on a free port, never
  the shared one): rate limits fail open while it is gone (counted in
  ``inference_ratelimit_fail_open_total``), jobs submitted meanwhile are kept and run once
  it is back, limits count again.
* PostgreSQL cut and restored under load (a TCP forwarder between the platform and
  PostgreSQL that the test closes and reopens; the shared server is never stopped): 503
  ``database_unavailable`` with Retry-After while it is gone, never a 500, and the same
  processes serve again once it is back.

The Redis and PostgreSQL faults are marked ``services`` (PostgreSQL run only); the rest runs
in both runs. See docs/reliability.md for what each shows.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from inference.jobs.models import InferenceJob
from inference.keys import api_key_create
from inference.services.jobs import job_submit, jobs_reconcile
from tests.conftest import small_mlp
from tests.deploy.support import TcpProxy, call_json
from tests.helpers import JOB_ARCHS, SlowMLP
from tests.inference.support import config, forward, ready
from tests.processes import Cluster, Process, WebServer, free_port

from .loadgen import Load

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

TOKEN = "faults-metrics-token"
JOB_ENV = {
    "INFERENCE_EXTRA_ARCHITECTURES": ",".join(JOB_ARCHS),
    "INFERENCE_WORKERS": "2",
    "INFERENCE_JOB_CHUNK_SIZE": "10",
    "INFERENCE_JOB_TIMEOUT": "60",
    "INFERENCE_JOB_RETRY": "70",
    "INFERENCE_METRICS_TOKEN": TOKEN,
    # The loads here submit jobs from one key faster than a 2-worker cluster runs them (or while it
    # cannot): more than INFERENCE_JOB_MAX_QUEUED_PER_KEY (20) are queued at once.
    "INFERENCE_JOB_MAX_QUEUED_PER_KEY": "100000",
}


@pytest.fixture(autouse=True)
def _settings(settings, tmp_path):
    settings.INFERENCE_ARCHITECTURES = [*settings.INFERENCE_ARCHITECTURES, *JOB_ARCHS]
    settings.INFERENCE_JOB_CHUNK_SIZE = 10
    settings.INFERENCE_JOB_MAX_ATTEMPTS = 10
    settings.INFERENCE_JOB_REQUEUE_AFTER = 600


def _key(rate: str = "100000/s") -> str:
    return api_key_create(name=f"faults-{rate}", rate=rate)[1]


def _slow_model(name: str, delay: float = 0.05) -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    module = SlowMLP(4, [8], 3, delay=delay).eval()
    cfg = config(architecture="tests.helpers.SlowMLP",
                 architecture_args={"in_features": 4, "hidden": [8], "out_features": 3, "delay": delay})
    return module, ready(module, cfg, model_name=name, aliases=["production"])


def _rows(n: int, seed: int) -> list[list[float]]:
    return np.random.default_rng(seed).uniform(-2, 2, (n, 4)).round(3).tolist()


def _wait_jobs(ids, *, timeout: float, reconcile_every: float = 1.0, logs=lambda: "") -> dict[str, dict]:
    """Run the reconciler (as its schedule would, faster) until every job is finished; return the rows."""
    deadline = time.time() + timeout
    while True:
        rows = {str(r["id"]): r for r in InferenceJob.objects.filter(pk__in=ids).values(
            "id", "status", "attempts", "error", "worker", "result_file")}
        if len(rows) == len(set(ids)) and all(r["status"] in ("succeeded", "failed", "cancelled")
                                              for r in rows.values()):
            return rows
        if time.time() > deadline:
            pending = [r for r in rows.values() if r["status"] not in ("succeeded", "failed", "cancelled")]
            raise AssertionError(f"{len(pending)} job(s) not finished after {timeout} s: {pending[:5]}\n{logs()}")
        jobs_reconcile()
        time.sleep(reconcile_every)


def _assert_one_correct_result(job_ids, inputs: dict[str, list], module) -> None:
    media = Path(django_settings.MEDIA_ROOT)
    for job_id in job_ids:
        results = sorted((media / "jobs" / job_id).glob("result-*"))
        assert len(results) == 1, (job_id, results)  # one result: no job completed twice
        job = InferenceJob.objects.get(pk=job_id)
        assert job.result_file.name == f"jobs/{job_id}/{results[0].name}"
        predictions = [json.loads(line) for line in results[0].read_text().splitlines()]
        np.testing.assert_allclose(predictions, forward(module, inputs[job_id]), rtol=1e-5, atol=1e-6)


def _metric(url: str, name: str) -> float:
    request = urllib.request.Request(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    text = urllib.request.urlopen(request, timeout=30).read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name)


# --- 1. SIGKILL a worker mid-job, N times ------------------------------------------------------------------


@pytest.mark.parametrize("kills", [
    pytest.param(3, id="3-kills"),
    pytest.param(20, id="20-kills", marks=pytest.mark.soak),
])
def test_workers_killed_mid_job_lose_no_job_and_no_job_completes_twice(kills, tmp_path, settings):
    lease = 5 if kills <= 3 else 8  # renewed after every chunk; under load a short lease only costs reruns
    settings.INFERENCE_JOB_LEASE_SECONDS = lease
    settings.MEDIA_ROOT = tmp_path / "media"
    cluster = Cluster(settings.MEDIA_ROOT, env={**JOB_ENV, "INFERENCE_JOB_LEASE_SECONDS": str(lease)})
    module, version = _slow_model("killed")
    inputs: dict[str, list] = {}

    def submit(n: int) -> None:
        for _ in range(n):
            rows = _rows(200, seed=len(inputs))  # 20 chunks of ~0.05 s
            job, _ = job_submit(version=version, instances=rows, submitted_by="faults")
            inputs[str(job.pk)] = rows

    submit(min(kills + 4, 8))
    cluster.start()
    killed: list[tuple[str, int]] = []
    try:
        deadline = time.time() + 60 + 12 * kills
        last_reconcile = 0.0
        while len(killed) < kills:
            assert time.time() < deadline, f"only {len(killed)} kills: {killed}\n{cluster.log_tail()}"
            if time.time() - last_reconcile > 1:
                jobs_reconcile()
                last_reconcile = time.time()
            pgroup = cluster.pids()
            running = list(InferenceJob.objects.filter(
                pk__in=list(inputs), status="running", progress_done__gte=10, progress_done__lte=170,
            ).values("id", "worker", "attempts").order_by("attempts"))
            target = next((j for j in running if j["worker"] and int(j["worker"].rsplit(":", 1)[1]) in pgroup
                           and int(j["worker"].rsplit(":", 1)[1]) != cluster.pid), None)
            if target is None:
                if not InferenceJob.objects.filter(pk__in=list(inputs), status="queued").exists():
                    submit(2)  # keep work in the queue until every kill is done
                time.sleep(0.05)
                continue
            pid = int(target["worker"].rsplit(":", 1)[1])
            os.kill(pid, signal.SIGKILL)  # a worker process of our cluster, mid-job
            killed.append((str(target["id"]), pid))
            time.sleep(0.5)  # the sentinel replaces the worker
        rows = _wait_jobs(list(inputs), timeout=120 + 6 * kills, logs=cluster.log_tail)
        assert cluster.proc.poll() is None, "the cluster itself died"
    finally:
        cluster.stop()
    statuses = {r["status"] for r in rows.values()}
    assert statuses == {"succeeded"}, [r for r in rows.values() if r["status"] != "succeeded"]
    for job_id, _ in killed:
        assert rows[job_id]["attempts"] >= 2, rows[job_id]  # the killed run did not count as done
    _assert_one_correct_result(list(inputs), inputs, module)
    # Late redeliveries (the ORM broker's, the reconciler's extra tasks) change nothing.
    jobs_reconcile()
    assert {str(r["id"]): r for r in InferenceJob.objects.filter(pk__in=list(inputs)).values(
        "id", "status", "attempts", "error", "worker", "result_file")} == rows
    logging.getLogger(__name__).warning("kill test: %d kills, %d jobs, attempts %s", len(killed), len(inputs),
                                        sorted(r["attempts"] for r in rows.values()))


# --- 2. concurrent writers: SQLite busy -------------------------------------------------------------------


def test_concurrent_job_submissions_and_workers_never_answer_database_is_locked(tmp_path, settings):
    """16 client threads submit jobs and predict through one web server while two
    qcluster workers write progress and results and the reconciler runs: on SQLite, writers
    queue on the busy timeout (IMMEDIATE transactions, WAL) instead of failing."""
    settings.MEDIA_ROOT = tmp_path / "media"
    env = {**JOB_ENV, "WEB_THREADS": "16", "INFERENCE_JOB_LEASE_SECONDS": "30", "WEB_GRACEFUL_TIMEOUT": "2"}
    web, cluster = WebServer(settings.MEDIA_ROOT, env=env), Cluster(settings.MEDIA_ROOT, env=env)
    module = small_mlp(0)
    ready(module, config(), model_name="busy", aliases=["production"])
    key = _key()
    cluster.start()
    web.start(timeout=90)
    load = Load(web.url, key, "busy", connections=16, job_every=2, list_every=7)
    try:
        load.start()
        deadline = time.time() + 6
        while time.time() < deadline:
            jobs_reconcile()  # one more writer
            time.sleep(0.2)
        load.stop()
        rows = _wait_jobs(load.job_ids, timeout=120, logs=lambda: cluster.log_tail() + web.log_tail())
        logs = web.log_tail() + cluster.log_tail()
    finally:
        load.stop()
        web.stop()
        cluster.stop()
    summary = load.summary()
    assert summary["by_kind"]["job"] == {"202": len(load.job_ids)}, summary["by_kind"]
    assert set(summary["by_kind"]["predict"]) == {"200"}, summary["by_kind"]
    assert set(summary["by_kind"]["list"]) == {"200"}, summary["by_kind"]
    assert len(load.job_ids) >= 100, summary["by_kind"]
    assert "database is locked" not in logs, logs
    assert {r["status"] for r in rows.values()} == {"succeeded"}
    assert {r["attempts"] for r in rows.values()} == {1}


# --- 3. the broker down at submit time ----------------------------------------------------------------------


def test_a_job_submitted_while_the_broker_is_down_is_accepted_kept_and_queued_by_the_reconciler(
        client, settings, monkeypatch, caplog):
    from inference.services import jobs as services

    ready(small_mlp(0), config(), model_name="nobroker", aliases=["production"])
    key = _key()
    queued: list[str] = []

    def broker_down(job_id, front=False):
        raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(services.queueing, "enqueue", broker_down)
    with caplog.at_level(logging.WARNING, logger="inference.jobs"):
        r = client.post("/api/v1/models/nobroker/jobs", {"instances": [[1, 2, 3, 4]]}, content_type="application/json",
                        headers={"Authorization": f"Api-Key {key}"})
    assert r.status_code == 202, r.content
    job_id = r.json()["id"]
    assert InferenceJob.objects.get(pk=job_id).status == "queued"  # the row is the source of truth
    assert any(job_id in m and "could not be queued" in m and "reconciler" in m for m in caplog.messages), \
        caplog.messages
    # The broker is back; the reconciler queues a job whose task is neither in the broker nor taken
    # once it is a lease old (younger, its task may still be on its way).
    monkeypatch.setattr(services.queueing, "enqueue", lambda pk, front=False: queued.append(str(pk)))
    assert jobs_reconcile()["queued"] == 0
    InferenceJob.objects.filter(pk=job_id).update(
        created_at=timezone.now() - timedelta(seconds=settings.INFERENCE_JOB_LEASE_SECONDS + 1))
    assert jobs_reconcile()["queued"] == 1 and queued == [job_id]


# --- 4 and 5. Redis and PostgreSQL restarted under load -------------------------------------------------------


class RedisServer(Process):
    """A private redis-server on a free port (no persistence): killed and started again by the test."""

    log_name = "redis.log"
    name = "the private redis-server"

    def __init__(self, root: Path):
        super().__init__(root / "media")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (apt-get install redis-server): the Redis fault test needs it"
        return [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.media_root.parent)]

    def ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False


class PostgresLink:
    """A forwarder between the platform's processes and PostgreSQL: cut() closes it and every
    connection through it (as a stopped server would), restore() listens on the same port again."""

    def __init__(self, host: str, port: int):
        self.backend = (host, port)
        self.proxy = TcpProxy([self.backend]).start()
        self.port = self.proxy.port
        self.up = True

    def cut(self) -> None:
        if self.up:
            self.proxy.close()
            self.up = False

    def restore(self) -> None:
        if not self.up:
            self.proxy = TcpProxy([self.backend], port=self.port).start()
            self.up = True


class FaultyStack:
    """One web server and one qcluster on a private Redis (cache, rate limits, broker) and on
    PostgreSQL through a PostgresLink."""

    def __init__(self, root: Path):
        self.media_root = root / "media"
        self.redis = RedisServer(root)
        db = connection.settings_dict
        self.link = PostgresLink(db.get("HOST") or "127.0.0.1", int(db.get("PORT") or 5432))
        user = db.get("USER") or ""
        password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
        database_url = f"postgres://{user}{password}@127.0.0.1:{self.link.port}/{db['NAME']}"
        env = {**JOB_ENV, "DATABASE_URL": database_url, "REDIS_URL": self.redis.url, "INFERENCE_BROKER": "redis",
               "WEB_THREADS": "8", "INFERENCE_JOB_LEASE_SECONDS": "10", "DJANGO_CONN_MAX_AGE": "60",
               "WEB_GRACEFUL_TIMEOUT": "2"}
        self.web = WebServer(self.media_root, env=env)
        self.cluster = Cluster(self.media_root, env=env)

    def start(self) -> None:
        self.redis.start(timeout=10)
        self.cluster.start()
        self.web.start(timeout=90)

    def stop(self) -> None:
        for step in (self.web.stop, self.cluster.stop, self.redis.stop, self.link.cut):
            try:
                step()
            except Exception:  # noqa: BLE001 - stop everything, whatever failed
                logging.getLogger(__name__).exception("stopping the faulty stack")

    def logs(self) -> str:
        return f"--- web\n{self.web.log_tail()}\n--- qcluster\n{self.cluster.log_tail()}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, django_db_setup):
    s = FaultyStack(tmp_path_factory.mktemp("faulty-stack"))
    try:
        s.start()
        yield s
    finally:
        s.stop()


@pytest.fixture
def on_stack(stack, settings, monkeypatch):
    """The test process's reconciler queues on the stack's private Redis broker."""
    from django_q.conf import Conf

    settings.MEDIA_ROOT = stack.media_root
    settings.INFERENCE_JOB_REQUEUE_AFTER = 8  # a job queued longer than this had its task lost
    settings.INFERENCE_JOB_LEASE_SECONDS = 10
    monkeypatch.setattr(Conf, "REDIS", stack.redis.url)
    monkeypatch.setattr(Conf, "DJANGO_REDIS", None)
    return stack


def _statuses(rows) -> dict[str, set]:
    out: dict[str, set] = {}
    for _, kind, status, code in rows:
        out.setdefault(kind, set()).add((status, code))
    return out


@pytest.mark.services
def test_redis_killed_under_load_rate_limits_fail_open_and_jobs_go_on_once_it_is_back(on_stack):
    stack = on_stack
    module, _ = _slow_model("redis-fault", delay=0.01)
    key = _key()
    limited = _key(rate="3/m")
    path = "/api/v1/models/redis-fault/predict"
    body = {"instances": [[1, 2, 3, 4]]}
    fail_open_before = _metric(stack.web.url, "inference_ratelimit_fail_open_total")
    load = Load(stack.web.url, key, "redis-fault", connections=4, job_every=20, pause=0.01).start()
    try:
        time.sleep(3)
        down_at = load.now()
        stack.redis.kill()
        time.sleep(1)
        # Fail open: a key limited to 3 a minute gets more while the counters are unreachable.
        during_limited = [call_json(stack.web.url, path, limited, body)[0] for _ in range(6)]
        time.sleep(3)
        up_at = load.now()
        stack.redis.start(timeout=10)  # empty: what it held (counters, queued tasks) is gone
        time.sleep(4)
        load.stop()
        after_limited = [call_json(stack.web.url, path, limited, body)[0] for _ in range(5)]
        fail_open_after = _metric(stack.web.url, "inference_ratelimit_fail_open_total")
        assert stack.cluster.proc.poll() is None and stack.web.proc.poll() is None, stack.logs()
        rows = _wait_jobs(load.job_ids, timeout=90, reconcile_every=2, logs=stack.logs)
        # New work runs on the same cluster, queued on the restarted broker.
        new_job = call_json(stack.web.url, "/api/v1/models/redis-fault/jobs", key, {"instances": _rows(5, 1)})
        assert new_job[0] == 202, new_job
        new_rows = _wait_jobs([new_job[2]["id"]], timeout=60, reconcile_every=5, logs=stack.logs)
    finally:
        load.stop()
    summary = load.summary()
    assert not summary["codes_5xx"], (summary["samples_5xx"], stack.logs())
    during = _statuses(load.between(down_at + 0.5, up_at))
    assert during["predict"] == {(200, "")}, during
    assert during["job"] == {(202, "")}, during  # accepted and kept, the task queued later by the reconciler
    assert during_limited == [200] * 6  # documented fail-open
    assert fail_open_after - fail_open_before >= 6
    assert after_limited[:3] == [200] * 3 and after_limited[3:] == [429, 429]  # counting again
    assert "could not be queued" in stack.web.log_path.read_text(errors="replace"), stack.logs()
    assert {r["status"] for r in rows.values()} == {"succeeded"}, rows
    assert new_rows[new_job[2]["id"]]["status"] == "succeeded"
    assert len(load.job_ids) >= 10


@pytest.mark.services
def test_postgresql_cut_under_load_answers_503_and_the_same_processes_recover(on_stack):
    stack = on_stack
    module, _ = _slow_model("pg-fault", delay=0.01)
    key = _key()
    load = Load(stack.web.url, key, "pg-fault", connections=4, job_every=20, list_every=7, pause=0.01).start()
    try:
        time.sleep(3)
        down_at = load.now()
        stack.link.cut()
        time.sleep(1)
        during_job = call_json(stack.web.url, "/api/v1/models/pg-fault/jobs", key, {"instances": [[1, 2, 3, 4]]})
        time.sleep(4)
        up_at = load.now()
        stack.link.restore()
        time.sleep(6)
        load.stop()
        assert stack.cluster.proc.poll() is None and stack.web.proc.poll() is None, stack.logs()
        accepted = load.job_ids
        rows = _wait_jobs(accepted, timeout=90, reconcile_every=2, logs=stack.logs)
        new_job = call_json(stack.web.url, "/api/v1/models/pg-fault/jobs", key, {"instances": _rows(5, 2)})
        assert new_job[0] == 202, new_job
        new_rows = _wait_jobs([new_job[2]["id"]], timeout=60, reconcile_every=5, logs=stack.logs)
    finally:
        stack.link.restore()
        load.stop()
    status, headers, body = during_job
    assert status == 503 and body["error"]["code"] == "database_unavailable", during_job
    assert int(headers["Retry-After"]) >= 1
    summary = load.summary()
    assert set(summary["codes_5xx"]) <= {"503:database_unavailable"}, (summary["samples_5xx"], stack.logs())
    assert all(s["retry_after"] for s in summary["samples_5xx"])
    during = _statuses(load.between(down_at + 0.5, up_at))
    assert (503, "database_unavailable") in during["job"] | during["list"], during
    # Requests that need no database (a cached key, a loaded model) go on being served.
    assert during["predict"] <= {(200, ""), (503, "database_unavailable")}, during
    after = _statuses(load.between(up_at + 3, load.now()))
    assert after["predict"] == {(200, "")} and after["job"] == {(202, "")} and after["list"] == {(200, "")}, after
    assert {r["status"] for r in rows.values()} == {"succeeded"}, rows
    assert new_rows[new_job[2]["id"]]["status"] == "succeeded"
    assert "Internal Server Error" not in stack.web.log_path.read_text(errors="replace")


# --- 6. a lost database is a 503, on every front door ---------------------------------------------------------


@pytest.mark.parametrize("where", ["v1", "v2", "middleware"])
def test_a_lost_database_answers_503_database_unavailable_with_retry_after(where, client, monkeypatch):
    """What the PostgreSQL fault above shows end to end, on each path that renders errors: DRF's
    exception handler (v1), the Open Inference Protocol's (v2), and handler500 (raised outside a view)."""
    from django.db import OperationalError
    from django.test import Client

    def lost(*args, **kwargs):
        raise OperationalError("connection to server at \"127.0.0.1\", port 5432 failed: Connection refused")

    key = _key()
    if where == "middleware":
        monkeypatch.setattr("inference.middleware.request_id_of", lost)
        client = Client(raise_request_exception=False)
    else:
        monkeypatch.setattr("inference.access.key_info_for_prefix", lost)
    path = "/v2/models/iris/infer" if where == "v2" else "/api/v1/models/iris/predict"
    r = client.post(path, {"instances": [[1, 2, 3, 4]]}, content_type="application/json",
                    headers={"Authorization": f"Api-Key {key}"})
    assert r.status_code == 503, r.content
    assert int(r["Retry-After"]) >= 1 and r["Content-Type"].startswith("application/json")
    if where == "v2":
        assert "database" in r.json()["error"]
    else:
        assert r.json()["error"]["code"] == "database_unavailable"
