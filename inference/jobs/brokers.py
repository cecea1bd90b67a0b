"""django-q2's ORM and Redis brokers (Q_CLUSTER["broker_class"]), extended for job recovery.

What a pusher does with a task it dequeued when it dies: the ORM broker's task row stays
locked for ``retry`` seconds (INFERENCE_JOB_RETRY, an hour and more), the Redis broker's task
is gone. Either way only the job row can say the task must be queued again, and the
reconciler (``inference.services.jobs.jobs_reconcile``) must tell such a job from one whose
task still waits behind a backlog. So these brokers:

* mark the jobs whose tasks they hand to a pusher *taken* (``taken_by`` = host:pid of the
  pusher, ``taken_until`` = now + INFERENCE_JOB_LEASE_SECONDS); the cluster that pusher
  belongs to renews the mark while the pusher lives (``inference.jobs.keeper``);
* list the jobs whose tasks wait in the broker (``waiting_job_ids``), for the reconciler;
* queue a task at the *front* (``front=True``): a re-queued job runs next, not behind the
  backlog that was submitted after it;
* (ORM) hand tasks out oldest first (django-q2's ORM broker has no order).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django import db
from django.conf import settings
from django.utils import timezone
from django_q.brokers import Broker, get_broker
from django_q.brokers.orm import ORM
from django_q.brokers.redis_broker import Redis
from django_q.signing import BadSignature, SignedPackage

logger = logging.getLogger("inference.jobs")

RUN_JOB = "inference.tasks.run_job"


def pusher_id(pid: int | None = None) -> str:
    return f"{socket.gethostname()}:{pid or os.getpid()}"


def job_ids(payloads: Iterable[Any]) -> set[str]:
    """The job ids of the run_job tasks among signed task payloads (others are skipped)."""
    ids = set()
    for payload in payloads:
        try:
            task = SignedPackage.loads(payload)
        except (BadSignature, TypeError, ValueError):
            continue
        if task.get("func") == RUN_JOB and task.get("args"):
            ids.add(str(task["args"][0]))
    return ids


def mark_taken(payloads: Iterable[Any]) -> None:
    """Mark the jobs of tasks this process (a pusher) has just dequeued as taken by it."""
    from .models import InferenceJob

    ids = job_ids(payloads)
    if not ids:
        return
    try:
        InferenceJob.objects.filter(InferenceJob.claimable(), pk__in=ids).update(
            taken_by=pusher_id(), taken_until=timezone.now() + timedelta(seconds=settings.INFERENCE_JOB_LEASE_SECONDS))
    except Exception as exc:  # noqa: BLE001 - the task is in hand: a lost mark only makes the reconciler queue a copy
        logger.warning("could not mark jobs %s as taken (%s: %s); the reconciler may queue copies of their tasks",
                       ids, type(exc).__name__, exc)
        # django-q2 resets a worker's connections before each task, never a pusher's: without this, a
        # connection broken by a database outage would fail every later mark of this pusher.
        db.close_old_connections()


class RecoveringBroker:
    """What both brokers add (a mixin ahead of django-q2's broker class)."""

    front = False  # queue at the front (set on an instance: ``front_broker``)

    def dequeue(self):
        tasks = super().dequeue()
        if tasks:
            mark_taken(payload for _, payload in tasks)
        return tasks

    def waiting_payloads(self) -> list[Any]:
        raise NotImplementedError


class OrmBroker(RecoveringBroker, ORM):
    @staticmethod
    def get_connection(list_key: str | None = None):
        return ORM.get_connection(list_key).order_by("lock", "id")

    def enqueue(self, task):
        if not self.front:
            return super().enqueue(task)
        # Oldest lock first: a lock in the past puts the task ahead of every waiting one.
        first = self.get_connection().filter(key=self.list_key).values_list("lock", flat=True).first()
        lock = min(first, timezone.now()) - timedelta(seconds=1) if first else timezone.now()
        return self.get_connection().create(key=self.list_key, payload=task, lock=lock).pk

    def waiting_payloads(self) -> list[Any]:
        """Tasks a pusher may take now (a dequeued task's lock is in the future until `retry` passes)."""
        return list(self.get_connection().filter(key=self.list_key, lock__lt=timezone.now())
                    .values_list("payload", flat=True))


class RedisBroker(RecoveringBroker, Redis):
    def enqueue(self, task):
        if self.front:
            return self.connection.lpush(self.list_key, task)  # dequeue pops from the left
        return super().enqueue(task)

    def waiting_payloads(self) -> list[Any]:
        return self.connection.lrange(self.list_key, 0, -1)


def front_broker(queue: str | None) -> Broker:
    """The broker of a queue (None: the default), queueing at the front."""
    broker = get_broker(queue or settings.Q_CLUSTER["name"])
    broker.front = True
    return broker


def queue_names() -> list[str | None]:
    """Every queue a job's task can be on: the default one and INFERENCE_JOB_QUEUES's."""
    return [None, *sorted(set(settings.INFERENCE_JOB_QUEUES.values()))]


def waiting_job_ids() -> set[str]:
    """The jobs whose tasks wait in a broker queue (not yet handed to a pusher)."""
    ids: set[str] = set()
    for queue in queue_names():
        broker = get_broker(queue or settings.Q_CLUSTER["name"])  # not Conf.CLUSTER_NAME: a queue's own cluster
        if isinstance(broker, RecoveringBroker):
            ids |= job_ids(broker.waiting_payloads())
    return ids
