"""Background jobs end to end, with a real `manage.py qcluster` process on the test database.

Runs on the embedded stack (SQLite + ORM broker) and, in the services run, on PostgreSQL
with the Redis broker (whatever INFERENCE_BROKER says). Models are real small MLPs
registered through the registry; the worker loads them itself, lazily.
"""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from django.db import connection
from django.test import Client

from inference.jobs.models import InferenceJob
from inference.keys import api_key_create
from inference.services.jobs import jobs_reconcile
from registry.models import ModelVersion
from tests.conftest import IRIS_CONFIG, safetensors_bytes, small_mlp
from tests.helpers import JOB_ARCHS, register
from tests.processes import Cluster

pytestmark = [pytest.mark.django_db(transaction=True, serialized_rollback=True), pytest.mark.slow]

LEASE = 3
JOB_ENV = {
    "INFERENCE_JOB_TIMEOUT": "6",
    "INFERENCE_JOB_RETRY": "8",  # the ORM broker redelivers a dead worker's task after this
    "INFERENCE_JOB_LEASE_SECONDS": str(LEASE),
    "INFERENCE_JOB_CHUNK_SIZE": "10",
    "INFERENCE_WORKERS": "2",
    "INFERENCE_EXTRA_ARCHITECTURES": ",".join(JOB_ARCHS),
    "DJANGO_LOG_LEVEL": "WARNING",
}


@pytest.fixture(scope="module")
def media_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("jobs-data") / "media"


@pytest.fixture(autouse=True)
def _job_settings(settings, media_root):
    settings.MEDIA_ROOT = media_root  # shared with the worker process
    settings.ALLOWED_HOSTS = ["testserver"]
    settings.INFERENCE_ARCHITECTURES = [*settings.INFERENCE_ARCHITECTURES, *JOB_ARCHS]
    settings.INFERENCE_JOB_LEASE_SECONDS = LEASE
    settings.INFERENCE_JOB_CHUNK_SIZE = 10
    settings.INFERENCE_JOB_REQUEUE_AFTER = 600


@pytest.fixture(scope="module")
def cluster(media_root, django_db_setup):
    """One cluster for the module (starting one costs seconds); tests may stop and restart it.

    It starts after the test database exists (django_db_setup), or it would open a file
    that pytest-django then replaces.
    """
    c = Cluster(media_root, JOB_ENV)
    c.start()
    yield c
    c.stop()


@pytest.fixture
def key():
    _, plain = api_key_create(name="jobs", rate="100000/s")
    return plain


@pytest.fixture
def client(key) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Api-Key {key}")


def _ready(name: str, config: dict, module: torch.nn.Module) -> ModelVersion:
    version = register(safetensors_bytes(module), config, model_name=name, validate=False)
    ModelVersion.objects.filter(pk=version.pk).update(status=ModelVersion.Status.READY)
    version.refresh_from_db()
    from registry import services

    services.alias_set(model=version.model, alias="production", version=version)
    return version


@pytest.fixture
def mlp():
    module = small_mlp()
    _ready("mlp", json.loads(json.dumps(IRIS_CONFIG)), module)
    return module


def _arch_config(path: str, **args) -> dict:
    config = json.loads(json.dumps(IRIS_CONFIG))
    config["architecture"] = path
    config["architecture_args"] = {**config["architecture_args"], **args}
    return config


@pytest.fixture
def slow():
    from tests.helpers import SlowMLP

    module = SlowMLP(4, [8], 3, delay=0.1)
    torch.manual_seed(0)
    _ready("slow", _arch_config("tests.helpers.SlowMLP", delay=0.1), module)
    return module


@pytest.fixture
def killer():
    from tests.helpers import KillerMLP

    module = KillerMLP(4, [8], 3)
    _ready("killer", _arch_config("tests.helpers.KillerMLP"), module)
    return module


def _rows(n: int, seed: int = 0) -> list[list[float]]:
    return np.random.default_rng(seed).uniform(-2, 2, (n, 4)).round(3).tolist()


def _forward(module, rows) -> np.ndarray:
    with torch.inference_mode():
        return module(torch.tensor(rows, dtype=torch.float32)).numpy()


def _submit(client: Client, model: str, rows, **headers) -> dict:
    r = client.post(f"/api/v1/models/{model}/jobs", json.dumps({"instances": rows}), content_type="application/json",
                    **headers)
    assert r.status_code in (200, 202), r.content
    return r.json()


def _wait(client: Client, job_id: str, until=lambda s: s["status"] in ("succeeded", "failed", "cancelled"),
          timeout: float = 60, cluster: Cluster | None = None) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.get(f"/api/v1/jobs/{job_id}").json()
        if until(status):
            return status
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} stuck at {status}" + (f"\n{cluster.log_tail()}" if cluster else ""))


# --- submit, poll, result -------------------------------------------------------------------------


def test_submit_poll_result_gives_the_models_predictions(client, mlp, cluster):
    rows = _rows(25)
    accepted = _submit(client, "mlp", rows)
    assert accepted["status"] == "queued" and accepted["url"] == f"/api/v1/jobs/{accepted['id']}"
    status = _wait(client, accepted["id"], cluster=cluster)
    assert status["status"] == "succeeded", status
    assert status["progress"] == {"done": 25, "total": 25}
    assert status["attempts"] == 1 and status["started_at"] and status["finished_at"]
    result = client.get(f"/api/v1/jobs/{accepted['id']}/result").json()
    assert (result["model"], result["version"], result["id"]) == ("mlp", 1, accepted["id"])
    np.testing.assert_allclose(result["predictions"], _forward(mlp, rows), rtol=1e-5, atol=1e-6)


def test_a_jsonl_file_job_moves_its_progress_and_downloads_one_prediction_a_line(client, slow, cluster):
    rows = _rows(60, seed=1)
    upload = io.BytesIO(b"".join(json.dumps(r).encode() + b"\n" for r in rows))
    upload.name = "batch.jsonl"
    r = client.post("/api/v1/models/slow/jobs", {"file": upload})
    assert r.status_code == 202, r.content
    job_id = r.json()["id"]
    seen = set()
    status = _wait(client, job_id, until=lambda s: seen.add(s["progress"]["done"]) or s["status"] == "succeeded",
                   cluster=cluster)
    assert status["progress"] == {"done": 60, "total": 60}
    assert len({d for d in seen if 0 < d < 60}) >= 2, f"progress did not move in steps: {sorted(seen)}"
    download = client.get(f"/api/v1/jobs/{job_id}/result")
    assert download["Content-Type"] == "application/jsonl"
    lines = b"".join(download.streaming_content).decode().splitlines()
    np.testing.assert_allclose([json.loads(line) for line in lines], _forward(slow, rows), rtol=1e-5, atol=1e-6)


def test_a_csv_file_job(client, mlp, cluster):
    rows = _rows(7, seed=2)
    upload = io.BytesIO(("a,b,c,d\n" + "\n".join(",".join(str(v) for v in r) for r in rows)).encode())
    upload.name = "rows.csv"
    job_id = client.post("/api/v1/models/mlp/jobs", {"file": upload}).json()["id"]
    assert _wait(client, job_id, cluster=cluster)["status"] == "succeeded"
    lines = b"".join(client.get(f"/api/v1/jobs/{job_id}/result").streaming_content).decode().splitlines()
    np.testing.assert_allclose([json.loads(line) for line in lines], _forward(mlp, rows), rtol=1e-5, atol=1e-6)


def test_a_bad_row_fails_the_job_with_the_reason(client, mlp, cluster):
    # JSON instances are checked at submit, as predict checks them: a 400, no job.
    r = client.post("/api/v1/models/mlp/jobs", json.dumps({"instances": [[1, 2, 3, 4], [1, 2, 3]]}),
                    content_type="application/json")
    assert r.status_code == 400 and r.json()["error"]["details"]["path"] == "instances[1]", r.content
    # A file's first chunk (10 rows here) is checked at submit; a bad row after it fails the job in the worker.
    rows = [json.dumps(r) for r in _rows(15)]
    rows[12] = "[1, 2, 3]"
    upload = io.BytesIO(("\n".join(rows) + "\n").encode())
    upload.name = "rows.jsonl"
    job_id = client.post("/api/v1/models/mlp/jobs", {"file": upload}).json()["id"]
    status = _wait(client, job_id, cluster=cluster)
    assert status["status"] == "failed"
    assert "shape" in status["error"] and "instance 12 (line 13), at instances[12]" in status["error"], status
    assert client.get(f"/api/v1/jobs/{job_id}/result").status_code == 409


# --- cancel -----------------------------------------------------------------------------------------


def test_a_job_cancelled_while_queued_never_runs(client, mlp, cluster):
    cluster.stop()
    try:
        job_id = _submit(client, "mlp", _rows(5))["id"]  # no cluster: it stays queued
        r = client.post(f"/api/v1/jobs/{job_id}/cancel")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
    finally:
        cluster.start()
    probe = _submit(client, "mlp", _rows(1))["id"]  # queued after the cancelled one's task
    assert _wait(client, probe, cluster=cluster)["status"] == "succeeded"
    job = InferenceJob.objects.get(pk=job_id)
    assert job.status == "cancelled" and job.attempts == 0 and not job.result_file
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 409


def test_a_running_job_stops_at_the_next_chunk(client, slow, cluster):
    job_id = _submit(client, "slow", _rows(200, seed=3))["id"]
    _wait(client, job_id, until=lambda s: s["progress"]["done"] >= 10, cluster=cluster)
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 200
    status = _wait(client, job_id, cluster=cluster)
    assert status["status"] == "cancelled"
    assert 10 <= status["progress"]["done"] < 200
    assert client.get(f"/api/v1/jobs/{job_id}/result").status_code == 409


# --- idempotency, ownership --------------------------------------------------------------------------


def test_the_same_idempotency_key_and_body_return_the_same_job(client, mlp):
    rows = _rows(3)
    first = client.post("/api/v1/models/mlp/jobs", json.dumps({"instances": rows}), content_type="application/json",
                        HTTP_IDEMPOTENCY_KEY="deploy-42")
    again = client.post("/api/v1/models/mlp/jobs", json.dumps({"instances": rows}), content_type="application/json",
                        HTTP_IDEMPOTENCY_KEY="deploy-42")
    other = client.post("/api/v1/models/mlp/jobs", json.dumps({"instances": _rows(3, seed=9)}),
                        content_type="application/json", HTTP_IDEMPOTENCY_KEY="deploy-42")
    assert first.status_code == 202 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert other.status_code == 409 and other.json()["error"]["code"] == "conflict"
    assert InferenceJob.objects.count() == 1


def test_another_keys_job_is_404(client, mlp):
    job_id = _submit(client, "mlp", _rows(2))["id"]
    _, other_key = api_key_create(name="other")
    other = Client(HTTP_AUTHORIZATION=f"Api-Key {other_key}")
    for path in ("", "/result"):
        r = other.get(f"/api/v1/jobs/{job_id}{path}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert other.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 404
    assert other.get("/api/v1/jobs").json()["jobs"] == []
    assert [j["id"] for j in client.get("/api/v1/jobs").json()["jobs"]] == [job_id]
    assert client.get("/api/v1/jobs/not-a-uuid").status_code == 404


# --- faults ------------------------------------------------------------------------------------------


def _worker_pid(job_id: str, timeout: float = 30) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = InferenceJob.objects.get(pk=job_id)
        if job.status == "running" and job.worker:
            return int(job.worker.rsplit(":", 1)[1])
        time.sleep(0.05)
    raise AssertionError("the job never started")


def _recover(client: Client, job_id: str, cluster: Cluster, timeout: float = 90) -> dict:
    """Wait for the job to finish, running the reconciler as its schedule would (every lease)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.get(f"/api/v1/jobs/{job_id}").json()
        if status["status"] in ("succeeded", "failed", "cancelled"):
            return status
        jobs_reconcile()
        time.sleep(LEASE / 2)
    raise AssertionError(f"job {job_id} not recovered: {status}\n{cluster.log_tail()}")


def test_a_worker_killed_mid_job_does_not_lose_it_and_it_completes_once(client, slow, cluster, media_root):
    rows = _rows(300, seed=4)  # 30 chunks of 0.1 s: killed well before the end
    job_id = _submit(client, "slow", rows)["id"]
    _wait(client, job_id, until=lambda s: s["progress"]["done"] >= 10, cluster=cluster)
    os.kill(_worker_pid(job_id), signal.SIGKILL)
    status = _recover(client, job_id, cluster)
    assert status["status"] == "succeeded", status
    assert status["attempts"] == 2
    result = client.get(f"/api/v1/jobs/{job_id}/result").json()
    np.testing.assert_allclose(result["predictions"], _forward(slow, rows), rtol=1e-5, atol=1e-6)
    results = sorted(p.name for p in (media_root / "jobs" / job_id).glob("result-*"))
    assert results == ["result-2.jsonl"]  # one result, from the run that finished
    time.sleep(2)  # a late redelivery of the killed task finds the job finished and does nothing
    assert InferenceJob.objects.get(pk=job_id).attempts == 2


def test_a_job_that_kills_its_worker_every_time_fails_after_max_attempts(client, killer, cluster):
    job_id = _submit(client, "killer", [[666, 0, 0, 0]])["id"]
    status = _recover(client, job_id, cluster, timeout=120)
    assert status["status"] == "failed"
    assert "Gave up after 3 attempts" in status["error"]
    assert InferenceJob.objects.get(pk=job_id).attempts == 4  # the 4th claim gives up without running
    # The cluster survived its dead workers: the next job runs.
    job_ok = _submit(client, "killer", [[1, 2, 3, 4]])["id"]
    assert _wait(client, job_ok, cluster=cluster)["status"] == "succeeded"


def test_200_jobs_from_16_threads_give_200_rows_and_200_results(client, key, mlp, cluster, media_root, settings):
    settings.INFERENCE_JOB_MAX_QUEUED_PER_KEY = 1000  # one key, 200 jobs at once
    ids: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def submit(i: int) -> None:
        try:
            c = Client(HTTP_AUTHORIZATION=f"Api-Key {key}")
            for j in range(i, 200, 16):
                job = _submit(c, "mlp", [[float(j), 0, 0, 0]])
                with lock:
                    ids.append(job["id"])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    assert len(ids) == 200 == len(set(ids))
    assert InferenceJob.objects.count() == 200
    deadline = time.time() + 120
    while InferenceJob.objects.filter(status="succeeded").count() < 200 and time.time() < deadline:
        time.sleep(0.5)
    assert InferenceJob.objects.filter(status="succeeded").count() == 200, cluster.log_tail()
    # Exactly one result each. (Not "attempts == 1": with a 3 s lease on a loaded 2-core
    # machine a claim can expire and be taken again; the claim protocol keeps the result single.)
    for job_id in InferenceJob.objects.values_list("id", flat=True):
        assert len(list((media_root / "jobs" / str(job_id)).glob("result-*"))) == 1, job_id
    for job in InferenceJob.objects.all():
        with job.input_file.open("rb") as fh:
            instance = json.loads(fh.read())
        with job.result_file.open("rb") as fh:
            (line,) = fh.read().splitlines()
        np.testing.assert_allclose(json.loads(line), _forward(mlp, [instance])[0], rtol=1e-5, atol=1e-6)


def test_the_reconciler_is_scheduled_on_the_cluster():
    from django_q.models import Schedule

    schedule = Schedule.objects.get(func="inference.tasks.reconcile_jobs")
    assert schedule.schedule_type == Schedule.MINUTES and schedule.minutes == 1 and schedule.repeats < 0


def test_the_cluster_itself_runs_a_dead_workers_job_again_on_either_broker(client, slow, cluster):
    """django-q2's Redis broker drops the task of a dead worker, and the ORM broker redelivers it
    only after INFERENCE_JOB_RETRY seconds; the qcluster's own reconciler (its keeper, every lease / 4)
    queues the job again once its lease expires, on either broker, with no help from outside."""
    rows = _rows(300, seed=5)
    job_id = _submit(client, "slow", rows)["id"]
    _wait(client, job_id, until=lambda s: s["progress"]["done"] >= 10, cluster=cluster)
    os.kill(_worker_pid(job_id), signal.SIGKILL)
    killed = time.time()
    status = _wait(client, job_id, until=lambda s: s["attempts"] >= 2, timeout=2 * LEASE + 5, cluster=cluster)
    assert time.time() - killed < 2 * LEASE + 5, status
    status = _wait(client, job_id, timeout=60, cluster=cluster)
    assert status["status"] == "succeeded" and status["attempts"] == 2
