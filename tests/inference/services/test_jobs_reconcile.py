"""The reconciler queues a job's task again when, and only when, that task is gone: neither waiting in
the broker (a backlog) nor taken by a live pusher; once per lease, at the front of the queue."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from django_q.brokers import get_broker

from inference.jobs import brokers
from inference.jobs.keeper import renew_taken
from inference.models import InferenceJob
from inference.services import jobs as job_services
from tests.conftest import small_mlp
from tests.inference.support import ready

pytestmark = pytest.mark.django_db


@pytest.fixture
def queued(monkeypatch):
    sent: list[tuple[str, bool]] = []
    monkeypatch.setattr(job_services.queueing, "enqueue", lambda pk, front=False: sent.append((str(pk), front)))
    version = ready(small_mlp(0), model_name="iris")
    job, _ = job_services.job_submit(version=version, instances=[[1, 2, 3, 4]])
    sent.clear()  # the submit's own task
    return job, sent


@pytest.fixture
def broker(settings):
    queue = get_broker(settings.Q_CLUSTER["name"])
    queue.purge_queue()
    yield queue
    queue.purge_queue()


def _age(job, **fields):
    InferenceJob.objects.filter(pk=job.pk).update(**fields)


def _ago(settings, leases: float):
    return timezone.now() - timedelta(seconds=settings.INFERENCE_JOB_LEASE_SECONDS * leases)


def test_a_job_whose_task_is_gone_is_queued_again_at_the_front_once_per_lease(queued, settings, broker):
    job, sent = queued
    assert job_services.jobs_reconcile()["queued"] == 0  # just submitted: its task may be on its way
    _age(job, created_at=_ago(settings, 1.1))
    assert job_services.jobs_reconcile()["queued"] == 1
    assert job_services.jobs_reconcile()["queued"] == 0  # the next run leaves it alone for a lease
    assert sent == [(str(job.pk), True)]
    _age(job, requeued_at=_ago(settings, 1.1))  # a lease later still neither in the broker nor taken
    assert job_services.jobs_reconcile()["queued"] == 1
    assert sent == [(str(job.pk), True)] * 2


def test_a_job_waiting_behind_a_backlog_is_never_queued_again(settings, broker, django_capture_on_commit_callbacks):
    version = ready(small_mlp(0), model_name="iris")
    with django_capture_on_commit_callbacks(execute=True):
        jobs = [job_services.job_submit(version=version, instances=[[1, 2, 3, 4]])[0] for _ in range(3)]
    InferenceJob.objects.filter(pk__in=[j.pk for j in jobs]).update(created_at=_ago(settings, 100))
    assert broker.queue_size() == 3
    assert brokers.waiting_job_ids() == {str(j.pk) for j in jobs}
    assert job_services.jobs_reconcile()["queued"] == 0
    assert broker.queue_size() == 3


def test_a_taken_job_waits_while_its_pusher_lives_and_is_queued_again_once_it_died(
        settings, broker, django_capture_on_commit_callbacks):
    version = ready(small_mlp(0), model_name="iris")
    with django_capture_on_commit_callbacks(execute=True):
        job, _ = job_services.job_submit(version=version, instances=[[1, 2, 3, 4]])
    _age(job, created_at=_ago(settings, 100))
    tasks = broker.dequeue()  # as the pusher does: the job is marked taken by this process
    assert len(tasks) == 1
    job.refresh_from_db()
    assert job.taken_by == brokers.pusher_id() and job.taken_until > timezone.now()
    assert job_services.jobs_reconcile()["queued"] == 0
    _age(job, taken_until=timezone.now() - timedelta(seconds=1))
    assert renew_taken([brokers.os.getpid()]) == 1  # its cluster vouches for it: the pusher lives
    assert job_services.jobs_reconcile()["queued"] == 0
    with django_capture_on_commit_callbacks(execute=True):
        later, _ = job_services.job_submit(version=version, instances=[[1, 2, 3, 4]])
    _age(job, taken_until=timezone.now() - timedelta(seconds=1))  # not renewed: the pusher died
    assert job_services.jobs_reconcile()["queued"] == 1
    # At the front: ahead of the task queued before it.
    assert brokers.job_ids([broker.dequeue()[0][1]]) == {str(job.pk)}
    assert brokers.job_ids([broker.dequeue()[0][1]]) == {str(later.pk)}


def test_a_running_job_whose_lease_expired_is_queued_again_once_per_lease(queued, settings, broker):
    job, sent = queued
    now = timezone.now()
    _age(job, status="running", attempts=1, created_at=_ago(settings, 10), started_at=_ago(settings, 5),
         lease_expires_at=now - timedelta(seconds=1))
    assert job_services.jobs_reconcile()["running"] == 1
    assert job_services.jobs_reconcile()["running"] == 0
    assert sent == [(str(job.pk), True)]
    # Claimed again by the re-queued task, whose worker died too: the new lease expires, queued again.
    _age(job, requeued_at=_ago(settings, 1.1), lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert job_services.jobs_reconcile()["running"] == 1
    assert sent == [(str(job.pk), True)] * 2


def test_a_broker_down_during_reconcile_loses_nothing(queued, settings, monkeypatch, broker):
    job, _ = queued

    def down(pk, front=False):
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(job_services.queueing, "enqueue", down)
    _age(job, created_at=_ago(settings, 2))
    assert job_services.jobs_reconcile()["queued"] == 1  # logged, no exception
    assert InferenceJob.objects.get(pk=job.pk).status == "queued"

    def unreadable():
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(brokers, "waiting_job_ids", unreadable)
    _age(job, requeued_at=_ago(settings, 2))
    assert job_services.jobs_reconcile()["queued"] == 0  # logged: cannot tell whether its task is there
    assert InferenceJob.objects.get(pk=job.pk).status == "queued"
