"""The reconciler queues a job's task again when, and only when, that task is gone: neither waiting in
the broker (a backlog) nor taken by a live pusher; once per lease, at the front of the queue."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import OperationalError
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


# --- a run whose database is unreachable when its task arrives --------------------------------------------


def _unreachable(monkeypatch, failures: int | None):
    """Make the claim's database call fail `failures` times (None: always) as an outage does."""
    from django.db import OperationalError

    from inference.services.jobs import run

    real = run._claim
    calls = {"n": 0}

    def claim(job_id):
        calls["n"] += 1
        if failures is None or calls["n"] <= failures:
            raise OperationalError("the connection is closed")
        return real(job_id)

    monkeypatch.setattr(run, "_claim", claim)
    monkeypatch.setattr(run.time, "sleep", lambda seconds: None)
    # The test's own connection is fine (and holds its transaction): count the resets instead.
    monkeypatch.setattr(run.db, "close_old_connections", lambda: calls.__setitem__("closed", calls["closed"] + 1))
    calls["closed"] = 0
    return calls


def test_a_taken_job_whose_run_finds_the_database_down_waits_for_it_and_runs(
        settings, broker, monkeypatch, django_capture_on_commit_callbacks):
    version = ready(small_mlp(0), model_name="iris")
    with django_capture_on_commit_callbacks(execute=True):
        job, _ = job_services.job_submit(version=version, instances=[[1, 2, 3, 4]])
    assert len(broker.dequeue()) == 1  # the pusher took it: marked taken, renewed while that pusher lives
    calls = _unreachable(monkeypatch, failures=3)
    assert job_services.job_run(job.pk) == "succeeded"
    assert calls["n"] == 4 and calls["closed"] == 3  # each failure dropped the connection before trying again
    job.refresh_from_db()
    assert (job.status, job.attempts, job.taken_by) == ("succeeded", 1, "")


def test_a_run_that_never_reaches_the_database_hands_its_task_back_to_the_front(
        settings, broker, monkeypatch, django_capture_on_commit_callbacks):
    settings.INFERENCE_JOB_TIMEOUT = 0  # no wait: hand back at the first failure
    version = ready(small_mlp(0), model_name="iris")
    with django_capture_on_commit_callbacks(execute=True):
        job, _ = job_services.job_submit(version=version, instances=[[1, 2, 3, 4]])
        other, _ = job_services.job_submit(version=version, instances=[[1, 2, 3, 4]])
    tasks = broker.dequeue()
    assert brokers.job_ids(payload for _, payload in tasks) == {str(job.pk)}
    _unreachable(monkeypatch, failures=None)
    assert job_services.job_run(job.pk).startswith("handed back")
    assert InferenceJob.objects.get(pk=job.pk).status == "queued"  # nothing written
    # Its task waits again, ahead of the one submitted after it: the next run takes it first.
    assert brokers.waiting_job_ids() == {str(job.pk), str(other.pk)}
    assert brokers.job_ids(payload for _, payload in broker.dequeue()) == {str(job.pk)}


def test_a_pusher_whose_mark_fails_drops_its_broken_connection(monkeypatch, settings):
    from django.db import OperationalError

    closed = []
    monkeypatch.setattr(brokers.db, "close_old_connections", lambda: closed.append(True))

    class Down:
        def filter(self, *args, **kwargs):
            raise OperationalError("the connection is closed")

    monkeypatch.setattr(InferenceJob, "objects", Down())
    brokers.mark_taken([brokers.SignedPackage.dumps({"func": brokers.RUN_JOB, "args": ["a-job"]})])
    assert closed == [True]  # the next dequeue's mark reconnects


def test_a_run_that_can_hand_its_task_back_nowhere_gives_up_past_its_deadline(
        settings, broker, monkeypatch, django_capture_on_commit_callbacks):
    settings.INFERENCE_JOB_TIMEOUT = 0
    version = ready(small_mlp(0), model_name="iris")
    with django_capture_on_commit_callbacks(execute=True):
        job, _ = job_services.job_submit(version=version, instances=[[1, 2, 3, 4]])
    broker.dequeue()
    _unreachable(monkeypatch, failures=None)

    def refused(*args, **kwargs):
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(job_services.queueing, "enqueue", refused)
    with pytest.raises(OperationalError):
        job_services.job_run(job.pk)
    assert InferenceJob.objects.get(pk=job.pk).status == "queued"


def test_a_run_whose_hand_back_fails_claims_once_the_database_is_back(
        settings, broker, monkeypatch, django_capture_on_commit_callbacks):
    settings.INFERENCE_JOB_TIMEOUT = 100  # hand back after 25 s, give up after 90 s (time is faked below)
    version = ready(small_mlp(0), model_name="iris")
    with django_capture_on_commit_callbacks(execute=True):
        job, _ = job_services.job_submit(version=version, instances=[[1, 2, 3, 4]])
    broker.dequeue()
    from inference.services.jobs import run

    clock = {"now": 0.0}
    monkeypatch.setattr(run.time, "monotonic", lambda: clock["now"])
    calls = _unreachable(monkeypatch, failures=8)
    monkeypatch.setattr(run.time, "sleep", lambda seconds: clock.__setitem__("now", clock["now"] + 10))
    offers = []

    def refused(*args, **kwargs):
        offers.append(clock["now"])
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(job_services.queueing, "enqueue", refused)
    assert job_services.job_run(job.pk) == "succeeded"
    assert calls["n"] == 9 and offers == [30.0, 40.0, 50.0, 60.0, 70.0]  # tried to hand back from 25 s on
