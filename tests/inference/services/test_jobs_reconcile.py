"""The reconciler queues a lost job's task again once, not at every run (no backlog of copies)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from inference.models import InferenceJob
from inference.services import jobs as job_services
from tests.conftest import small_mlp
from tests.inference.support import ready

pytestmark = pytest.mark.django_db


@pytest.fixture
def queued(monkeypatch):
    sent: list[str] = []
    monkeypatch.setattr(job_services.queueing, "enqueue", lambda pk: sent.append(str(pk)))
    version = ready(small_mlp(0), model_name="iris")
    job, _ = job_services.job_submit(version=version, instances=[[1, 2, 3, 4]])
    sent.clear()  # the submit's own task
    return job, sent


def _age(job, **fields):
    InferenceJob.objects.filter(pk=job.pk).update(**fields)


def test_a_job_queued_too_long_is_queued_again_once_per_interval(queued, settings):
    job, sent = queued
    _age(job, created_at=timezone.now() - timedelta(seconds=settings.INFERENCE_JOB_REQUEUE_AFTER + 5))
    assert job_services.jobs_reconcile()["queued"] == 1
    assert job_services.jobs_reconcile()["queued"] == 0  # the next run (a minute later) leaves it alone
    assert job_services.jobs_reconcile()["queued"] == 0
    assert sent == [str(job.pk)]
    # Still queued a whole interval after that: its task was lost again; queued once more.
    _age(job, requeued_at=timezone.now() - timedelta(seconds=settings.INFERENCE_JOB_REQUEUE_AFTER + 1))
    assert job_services.jobs_reconcile()["queued"] == 1
    assert sent == [str(job.pk)] * 2


def test_a_running_job_whose_lease_expired_is_queued_again_once(queued):
    job, sent = queued
    now = timezone.now()
    _age(job, status="running", attempts=1, started_at=now - timedelta(seconds=60),
         lease_expires_at=now - timedelta(seconds=1))
    assert job_services.jobs_reconcile()["running"] == 1
    assert job_services.jobs_reconcile()["running"] == 0
    assert sent == [str(job.pk)]
    # Claimed again by the re-queued task, whose worker died too: the new lease expires, queued again.
    _age(job, requeued_at=timezone.now() - timedelta(seconds=30), lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert job_services.jobs_reconcile()["running"] == 1
    assert sent == [str(job.pk)] * 2


def test_a_broker_down_during_reconcile_loses_nothing(queued, settings, monkeypatch):
    job, _ = queued

    def down(pk):
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(job_services.queueing, "enqueue", down)
    _age(job, created_at=timezone.now() - timedelta(seconds=settings.INFERENCE_JOB_REQUEUE_AFTER + 5))
    assert job_services.jobs_reconcile()["queued"] == 1  # logged, no exception
    assert InferenceJob.objects.get(pk=job.pk).status == "queued"
