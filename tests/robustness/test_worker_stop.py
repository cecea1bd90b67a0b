"""Stopping the worker: every way of stopping `manage.py qcluster` (and `deploy/run.sh`) ends every
process within the graceful timeout, and a job it was running is left for the reconciler.

The patterns: SIGINT or SIGTERM to the command, or to its whole process group (what
`systemctl stop` does with its default KillMode, and `kill -TERM -- -PGID`), twice in a row,
and during a running job. Before the fix, SIGTERM to the group left `manage.py qcluster` hung
for good (django-q2's Cluster.stop waited in a signal handler for a sentinel the same SIGTERM
had killed), and deploy/run.sh waited on it.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from inference.jobs.models import InferenceJob
from inference.services.jobs import job_submit
from tests.helpers import JOB_ARCHS, SlowMLP
from tests.inference.support import config, ready
from tests.processes import Cluster, Process, WebServer, group_pids, session_pids

pytestmark = [pytest.mark.slow]

STOP_TIMEOUT = 4  # INFERENCE_WORKER_STOP_TIMEOUT in these tests
ENV = {"INFERENCE_WORKERS": "2", "INFERENCE_WORKER_STOP_TIMEOUT": str(STOP_TIMEOUT),
       "INFERENCE_EXTRA_ARCHITECTURES": ",".join(JOB_ARCHS), "INFERENCE_JOB_CHUNK_SIZE": "10",
       "INFERENCE_JOB_LEASE_SECONDS": "3", "PYTHONFAULTHANDLER": "1"}

PATTERNS = {
    "INT-group": [("group", signal.SIGINT)],
    "TERM-group": [("group", signal.SIGTERM)],
    "TERM-command": [("command", signal.SIGTERM)],
    "INT-command": [("command", signal.SIGINT)],
    "TERM-group-twice": [("group", signal.SIGTERM), ("group", signal.SIGTERM)],
}


def _send(process: Process, pattern: list[tuple[str, int]]) -> None:
    for target, signum in pattern:
        if target == "group":
            process.signal_group(signum)
        else:
            process.proc.send_signal(signum)
        time.sleep(0.2)


def _describe(pids) -> list[str]:
    out = []
    for pid in sorted(pids):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out.append(f"{pid} (ppid {stat[1]}, {Path(f'/proc/{pid}/wchan').read_text()}): "
                       f"{Path(f'/proc/{pid}/cmdline').read_text().replace(chr(0), ' ')}")
        except OSError:
            out.append(f"{pid} (gone)")
    return out


def _wait_gone(alive, timeout: float) -> float:
    """Seconds until `alive()` is empty; AssertionError naming what is left after `timeout`."""
    start = time.monotonic()
    while alive():
        if time.monotonic() - start > timeout:
            described = _describe(alive())
            for pid in alive():  # PYTHONFAULTHANDLER: each dumps its threads' stacks to its log
                os.kill(pid, signal.SIGABRT)
            raise AssertionError(f"still alive after {timeout} s: {described}")
        time.sleep(0.1)
    return time.monotonic() - start


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_every_way_of_stopping_the_qcluster_ends_every_process_in_time(pattern, tmp_path):
    cluster = Cluster(tmp_path / "media", env=ENV)
    cluster.start()
    try:
        deadline = time.monotonic() + 30
        while len(cluster.pids()) < 5:  # the command, the sentinel, 2 workers, the pusher, the monitor
            assert time.monotonic() < deadline, f"the cluster did not start its processes:\n{cluster.log_tail()}"
            time.sleep(0.1)
        pgid = cluster.pid
        _send(cluster, PATTERNS[pattern])
        took = _wait_gone(lambda: group_pids(pgid), STOP_TIMEOUT + 3)
        assert cluster.wait(1) == 0, cluster.log_tail()
        print(f"{pattern}: stopped in {took:.1f} s")
    finally:
        cluster.stop(timeout=1)


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_group_sigterm_during_a_job_stops_in_time_and_leaves_the_job_to_the_reconciler(tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.INFERENCE_ARCHITECTURES = [*settings.INFERENCE_ARCHITECTURES, *JOB_ARCHS]
    settings.INFERENCE_JOB_CHUNK_SIZE = 10
    settings.INFERENCE_JOB_LEASE_SECONDS = 3
    module = SlowMLP(4, [8], 3, delay=0.5).eval()
    version = ready(module, config(architecture="tests.helpers.SlowMLP", architecture_args={
        "in_features": 4, "hidden": [8], "out_features": 3, "delay": 0.5}), model_name="stopped")
    job, _ = job_submit(version=version, instances=[[0.1, 0.2, 0.3, 0.4]] * 100, submitted_by="test")  # 10 x 0.5 s
    cluster = Cluster(settings.MEDIA_ROOT, env=ENV)
    cluster.start()
    try:
        deadline = time.monotonic() + 30
        while not InferenceJob.objects.filter(pk=job.pk, status="running", progress_done__gte=10).exists():
            assert time.monotonic() < deadline, cluster.log_tail()
            time.sleep(0.1)
        pgid = cluster.pid
        cluster.signal_group(signal.SIGTERM)
        took = _wait_gone(lambda: group_pids(pgid), STOP_TIMEOUT + 3)
        print(f"TERM-group mid-job: stopped in {took:.1f} s")
    finally:
        cluster.stop(timeout=1)
    job.refresh_from_db()
    assert job.status == "running" and job.attempts == 1 and job.progress_done < 100  # left, not finished, not lost
    # The next cluster runs it again once its lease has expired.
    cluster = Cluster(settings.MEDIA_ROOT, env=ENV)
    cluster.start()
    try:
        deadline = time.monotonic() + 60
        while not InferenceJob.objects.filter(pk=job.pk, status="succeeded").exists():
            assert time.monotonic() < deadline, (InferenceJob.objects.filter(pk=job.pk).values().first(),
                                                 cluster.log_tail())
            time.sleep(0.2)
    finally:
        cluster.stop(timeout=1)
    job.refresh_from_db()
    assert job.attempts == 2
    assert len(list((Path(settings.MEDIA_ROOT) / "jobs" / str(job.pk)).glob("result-*"))) == 1


class RunSh(WebServer):
    """`deploy/run.sh` (what `make run` starts: the web server and a qcluster), ready once it answers."""

    log_name = "run.log"
    name = "deploy/run.sh"

    def command(self) -> list[str]:
        # bash cannot trap a signal that was ignored when it started, and a suite started in the
        # background from a script (`nohup make test &`) ignores SIGINT: env execs bash (the same
        # pid) with SIGINT at its default, as a terminal's Ctrl-C finds it.
        return ["env", "--default-signal=INT", "bash", "deploy/run.sh"]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@pytest.mark.parametrize("pattern", ["TERM-group", "INT-command", "TERM-group-twice"])
def test_every_way_of_stopping_deploy_run_sh_ends_every_process_in_time(pattern, tmp_path):
    web = RunSh(tmp_path / "media", env={**ENV, "PY": sys.executable, "WEB_GRACEFUL_TIMEOUT": "3",
                                         "STOP_TIMEOUT": "8"})
    web.start(timeout=90)
    try:
        deadline = time.monotonic() + 30
        while len(session_pids(web.pid)) < 7:  # run.sh, the web server (+ its process), the qcluster's 6
            assert time.monotonic() < deadline, f"{session_pids(web.pid)}\n{web.log_tail()}"
            time.sleep(0.1)
        sid = web.pid
        _send(web, PATTERNS[pattern])
        took = _wait_gone(lambda: session_pids(sid), 8 + 3)
        print(f"run.sh {pattern}: stopped in {took:.1f} s")
    finally:
        web.stop(timeout=1)
