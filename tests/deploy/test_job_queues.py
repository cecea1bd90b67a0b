"""Job queues by hardware target: GPU jobs reach only GPU workers.

INFERENCE_JOB_QUEUES maps hardware targets to django-q2 queues; a worker cluster started
with INFERENCE_WORKER_QUEUE takes only its queue's tasks, every other cluster only the
default queue's. Here the "GPU" is a second CPU target named `edge` (no GPU in CI): two real
`qcluster` processes, one per queue, and jobs for both targets; each job must run on its
own queue's cluster. Runs on the embedded stack (ORM broker) and on the services (Redis).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings as django_settings

from inference.jobs.models import InferenceJob
from inference.services.jobs import job_queue, job_submit
from registry.models import HardwareTarget
from tests.conftest import small_mlp
from tests.inference.support import config, ready
from tests.processes import Cluster

QUEUES = "edge=edge-queue"


def test_a_worker_queue_that_no_target_routes_to_stops_the_process(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERENCE_")}
    env.update(INFERENCE_DATA_DIR=str(tmp_path), INFERENCE_JOB_QUEUES=QUEUES, INFERENCE_WORKER_QUEUE="gpu")
    out = subprocess.run([sys.executable, "-c", "import django; django.setup()"], cwd=django_settings.BASE_DIR,
                         env={**env, "DJANGO_SETTINGS_MODULE": "inference_platform.settings"},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "INFERENCE_WORKER_QUEUE='gpu' is not a queue" in out.stderr


@pytest.mark.django_db
def test_a_jobs_queue_is_its_targets_or_the_default(settings):
    HardwareTarget.objects.create(name="edge")
    edge = ready(small_mlp(0), config(hardware="edge"), model_name="on-edge")
    cpu = ready(small_mlp(0), model_name="on-cpu")
    edge_job, _ = job_submit(version=edge, instances=[[1, 2, 3, 4]])
    cpu_job, _ = job_submit(version=cpu, instances=[[1, 2, 3, 4]])
    settings.INFERENCE_JOB_QUEUES = {}
    assert job_queue(edge_job.pk) is None and job_queue(cpu_job.pk) is None
    settings.INFERENCE_JOB_QUEUES = {"edge": "edge-queue"}
    assert job_queue(edge_job.pk) == "edge-queue" and job_queue(cpu_job.pk) is None


@pytest.fixture(scope="module")
def clusters(tmp_path_factory, django_db_setup):
    media = tmp_path_factory.mktemp("queues") / "media"
    media.mkdir()
    default = Cluster(media, env={"INFERENCE_JOB_QUEUES": QUEUES, "INFERENCE_WORKERS": "2"},
                      log_name="qcluster-default.log")
    edge = Cluster(media, env={"INFERENCE_JOB_QUEUES": QUEUES, "INFERENCE_WORKER_QUEUE": "edge-queue",
                               "INFERENCE_WORKERS": "2"}, log_name="qcluster-edge.log")
    try:
        default.start()
        edge.start()
        yield media, default, edge
    finally:
        default.stop()
        edge.stop()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_jobs_run_only_on_the_workers_of_their_targets_queue(settings, clusters):
    media, default, edge = clusters
    settings.MEDIA_ROOT = media
    settings.INFERENCE_JOB_QUEUES = {"edge": "edge-queue"}
    HardwareTarget.objects.get_or_create(name="edge")
    tag = uuid.uuid4().hex[:6]
    on_edge = ready(small_mlp(0), config(hardware="edge"), model_name=f"edge-{tag}")
    on_cpu = ready(small_mlp(1), model_name=f"cpu-{tag}")
    ids = {"edge": [], "default": []}
    for i in range(6):
        ids["edge"].append(job_submit(version=on_edge, instances=[[i, 0, 0, 0]])[0].pk)
        ids["default"].append(job_submit(version=on_cpu, instances=[[i, 0, 0, 0]])[0].pk)
    groups = {"edge": set(), "default": set()}
    everything = ids["edge"] + ids["default"]
    deadline = time.time() + 90
    while InferenceJob.objects.filter(pk__in=everything, status="succeeded").count() < len(everything):
        groups["edge"] |= edge.pids()
        groups["default"] |= default.pids()
        assert time.time() < deadline, (
            f"{list(InferenceJob.objects.filter(pk__in=everything).values('status', 'worker', 'error'))}\n"
            f"{default.log_tail()}\n{edge.log_tail()}")
        time.sleep(0.2)
    for queue, job_ids in ids.items():
        for job in InferenceJob.objects.filter(pk__in=job_ids):
            pid = int(job.worker.rsplit(":", 1)[1])
            assert pid in groups[queue], f"a job of the {queue} queue ran on {job.worker}; groups: {groups}"
            assert job.attempts == 1 and Path(media, job.result_file.name).is_file()
