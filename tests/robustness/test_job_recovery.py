"""A job whose task was taken by a cluster process that then died runs again within 2 leases, never twice
at once (a real qcluster; INFERENCE_JOB_LEASE_SECONDS=3).

* the worker running a job is SIGKILLed: its lease expires, the cluster's keeper runs the
  reconciler, the job's task is queued again at the front, a new worker claims it;
* the pusher holding a job's task (taken from the broker, not yet handed to a worker) is
  SIGKILLed: the task is gone (Redis) or locked for ``retry`` seconds (ORM); the job's
  *taken* mark is no longer renewed, the reconciler queues it again within ~1.25 leases.

Before: the reconciler re-queued a queued job only after INFERENCE_JOB_REQUEUE_AFTER (600 s),
and ran once a minute. Runs on both brokers (ORM embedded, Redis on the services).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from django.utils import timezone

from inference.jobs.models import InferenceJob
from inference.services.jobs import job_submit
from tests.helpers import JOB_ARCHS, SlowMLP
from tests.inference.support import config, ready
from tests.processes import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

LEASE = 3
ENV = {"INFERENCE_EXTRA_ARCHITECTURES": ",".join(JOB_ARCHS), "INFERENCE_JOB_CHUNK_SIZE": "10",
       "INFERENCE_JOB_LEASE_SECONDS": str(LEASE), "INFERENCE_JOB_TIMEOUT": "60", "INFERENCE_JOB_RETRY": "70",
       "INFERENCE_WORKERS": "1", "INFERENCE_WORKER_STOP_TIMEOUT": "1"}


@pytest.fixture
def slow(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.INFERENCE_ARCHITECTURES = [*settings.INFERENCE_ARCHITECTURES, *JOB_ARCHS]
    settings.INFERENCE_JOB_LEASE_SECONDS = LEASE
    settings.INFERENCE_JOB_CHUNK_SIZE = 10
    module = SlowMLP(4, [8], 3, delay=0.2).eval()
    return ready(module, config(architecture="tests.helpers.SlowMLP", architecture_args={
        "in_features": 4, "hidden": [8], "out_features": 3, "delay": 0.2}), model_name="recovered")


def _submit(version, rows: int):
    return job_submit(version=version, instances=[[0.1, 0.2, 0.3, 0.4]] * rows, submitted_by="test")[0]


def _until(condition, timeout: float, what, cluster: Cluster):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"{what()}\n{cluster.log_tail()}"
        time.sleep(0.05)
    return found


def _row(job):
    return InferenceJob.objects.filter(pk=job.pk).values(
        "status", "attempts", "worker", "taken_by", "requeued_at", "started_at", "progress_done").first()


def _one_result(job):
    job.refresh_from_db()
    assert job.status == "succeeded", _row(job)
    assert len(list((Path(job.result_file.storage.location) / "jobs" / str(job.pk)).glob("result-*"))) == 1


def test_a_job_whose_worker_is_killed_runs_again_within_two_leases(slow, settings):
    job = _submit(slow, 200)  # 20 chunks of 0.2 s
    cluster = Cluster(settings.MEDIA_ROOT, env=ENV)
    cluster.start()
    try:
        _until(lambda: InferenceJob.objects.filter(pk=job.pk, status="running", progress_done__gte=20).exists(),
               60, lambda: _row(job), cluster)
        worker = int(_row(job)["worker"].rsplit(":", 1)[1])
        os.kill(worker, signal.SIGKILL)
        killed = timezone.now()
        _until(lambda: InferenceJob.objects.filter(pk=job.pk, attempts=2).exists(), 2 * LEASE + 2,
               lambda: _row(job), cluster)
        restarted = _row(job)["started_at"]
        _until(lambda: InferenceJob.objects.filter(pk=job.pk, status="succeeded").exists(), 60,
               lambda: _row(job), cluster)
    finally:
        cluster.stop()
    assert (restarted - killed).total_seconds() < 2 * LEASE, (killed, restarted)
    assert _row(job)["attempts"] == 2
    _one_result(job)


def test_a_job_whose_task_the_pusher_held_when_killed_runs_again_within_two_leases(slow, settings):
    # One worker (a local queue of 1 task): while it runs `busy`, `waiting` sits in the local queue
    # and the pusher holds `held`, blocked until there is room.
    busy = _submit(slow, 100)  # 10 chunks of 0.2 s
    cluster = Cluster(settings.MEDIA_ROOT, env=ENV)
    cluster.start()
    try:
        _until(lambda: InferenceJob.objects.filter(pk=busy.pk, status="running").exists(), 60,
               lambda: _row(busy), cluster)
        waiting = _submit(slow, 10)
        held = _submit(slow, 10)
        taken = _until(lambda: InferenceJob.objects.filter(pk=held.pk).exclude(taken_by="").values_list(
            "taken_by", flat=True).first(), 10, lambda: (_row(waiting), _row(held)), cluster)
        assert InferenceJob.objects.get(pk=busy.pk).status == "running", "the test needs the worker busy"
        pusher = int(taken.rsplit(":", 1)[1])
        os.kill(pusher, signal.SIGKILL)
        killed = timezone.now()
        # Queued again (its task was with the dead pusher), run once the worker is free.
        _until(lambda: InferenceJob.objects.filter(pk__in=[busy.pk, waiting.pk, held.pk],
                                                   status="succeeded").count() == 3, 60,
               lambda: [_row(j) for j in (busy, waiting, held)], cluster)
    finally:
        cluster.stop()
    row = _row(held)
    assert row["requeued_at"] > killed and (row["started_at"] - killed).total_seconds() < 2 * LEASE, (killed, row)
    for job in (busy, waiting, held):
        assert _row(job)["attempts"] == 1  # each ran once: never twice
        _one_result(job)


# --- soak: each kind of process killed KILLS times under load --------------------------------------------------


def _children(pid: int) -> list[int]:
    from inference.jobs.keeper import live_children

    return live_children(pid)


@pytest.mark.soak
def test_recovery_time_after_killing_each_kind_of_cluster_process(settings, tmp_path):
    """30+ jobs of 2,000 rows (iris-shaped, 8 chunks of 256 at 0.1 s) on a 2-worker cluster; kill a worker, the
    pusher, the monitor, the whole cluster, KILLS (5) times each; report the worst time from a kill to every job the
    killed process held running again (the monitor holds none: time to the next job start). Figures go to
    var/recovery-results.json; INFERENCE_JOB_LEASE_SECONDS=RECOVERY_LEASE (10)."""
    import json

    from django.conf import settings as django_settings

    kills, lease = int(os.environ.get("KILLS", "5")), int(os.environ.get("RECOVERY_LEASE", "10"))
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.INFERENCE_ARCHITECTURES = [*settings.INFERENCE_ARCHITECTURES, *JOB_ARCHS]
    settings.INFERENCE_JOB_LEASE_SECONDS = lease
    env = {**ENV, "INFERENCE_WORKERS": "2", "INFERENCE_JOB_LEASE_SECONDS": str(lease), "INFERENCE_JOB_CHUNK_SIZE": "256"}
    version = ready(SlowMLP(4, [8], 3, delay=0.1).eval(), config(
        architecture="tests.helpers.SlowMLP",
        architecture_args={"in_features": 4, "hidden": [8], "out_features": 3, "delay": 0.1}), model_name="soak")
    jobs: list[str] = []

    def top_up():
        while InferenceJob.objects.filter(pk__in=jobs, status="queued").count() < 12:
            jobs.extend(str(_submit(version, 2000).pk) for _ in range(6))

    def started_after(ids, when):
        return InferenceJob.objects.filter(pk__in=ids, started_at__gt=when).count() == len(ids)

    cluster = Cluster(settings.MEDIA_ROOT, env=env)
    jobs.extend(str(_submit(version, 2000).pk) for _ in range(30))
    cluster.start()
    times: dict[str, list[float]] = {"worker": [], "pusher": [], "monitor": [], "cluster": []}
    try:
        for kind in times:
            while len(times[kind]) < kills:
                top_up()
                sentinels = _children(cluster.pid)
                children = _children(sentinels[0]) if sentinels else []
                if len(children) < 4:  # 2 workers, the pusher, the monitor: still starting
                    time.sleep(0.2)
                    continue
                rows = InferenceJob.objects.filter(pk__in=jobs)
                if kind == "worker":
                    running = [r for r in rows.filter(status="running").values("id", "worker")
                               if int(r["worker"].rsplit(":", 1)[1]) in children]
                    if not running:
                        time.sleep(0.1)
                        continue
                    victim, held = int(running[0]["worker"].rsplit(":", 1)[1]), [running[0]["id"]]
                elif kind == "pusher":
                    taken = [r for r in rows.filter(status="queued").exclude(taken_by="").values("id", "taken_by")
                             if int(r["taken_by"].rsplit(":", 1)[1]) in children]
                    if not taken:
                        time.sleep(0.1)
                        continue
                    victim = int(taken[-1]["taken_by"].rsplit(":", 1)[1])
                    held = [r["id"] for r in taken if r["taken_by"] == taken[-1]["taken_by"]]
                elif kind == "monitor":
                    known = {int(v.rsplit(":", 1)[1]) for v in [*rows.values_list("worker", flat=True),
                                                                 *rows.values_list("taken_by", flat=True)] if v}
                    unknown = [pid for pid in children if pid not in known]
                    if len(unknown) != 1:
                        time.sleep(0.2)
                        continue
                    victim, held = unknown[0], []
                else:
                    victim = None
                    held = [r["id"] for r in rows.filter(status__in=["queued", "running"]).values("id", "status",
                                                                                                  "taken_by", "worker")
                            if r["status"] == "running" or r["taken_by"]]
                killed = timezone.now()
                if victim is None:
                    cluster.kill()
                    cluster.start()
                else:
                    os.kill(victim, signal.SIGKILL)
                if held:
                    _until(lambda h=held, k=killed: started_after(h, k), 4 * lease + 60, lambda h=held: h, cluster)
                    first_starts = InferenceJob.objects.filter(pk__in=held).values_list("started_at", flat=True)
                    took = max((start - killed).total_seconds() for start in first_starts)
                else:
                    _until(lambda k=killed: InferenceJob.objects.filter(pk__in=jobs, started_at__gt=k).exists(), 60,
                           lambda: "no job started", cluster)
                    took = (InferenceJob.objects.filter(pk__in=jobs, started_at__gt=killed).order_by("started_at")
                            .values_list("started_at", flat=True).first() - killed).total_seconds()
                times[kind].append(round(took, 2))
                time.sleep(1)
        _until(lambda: not InferenceJob.objects.filter(pk__in=jobs, status__in=["queued", "running"]).exists(),
               600, lambda: "jobs left", cluster)
    finally:
        cluster.stop()
    rows = list(InferenceJob.objects.filter(pk__in=jobs).values("id", "status", "attempts"))
    result = {"lease_s": lease, "kills_per_kind": kills, "jobs": len(rows),
              "succeeded": sum(r["status"] == "succeeded" for r in rows),
              "attempts": {n: sum(r["attempts"] == n for r in rows) for n in sorted({r["attempts"] for r in rows})},
              "seconds_to_running_again": times, "worst": {k: max(v) for k, v in times.items()},
              "broker": django_settings.INFERENCE_BROKER}
    out = Path(django_settings.BASE_DIR) / "var" / "recovery-results.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    assert result["succeeded"] == len(rows)
    for job_id in (r["id"] for r in rows):
        assert len(list((Path(settings.MEDIA_ROOT) / "jobs" / str(job_id)).glob("result-*"))) == 1
    for kind in ("worker", "pusher", "cluster"):
        assert max(times[kind]) < 2 * lease, (kind, times[kind])
