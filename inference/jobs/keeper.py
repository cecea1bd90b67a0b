"""The keeper: a thread of each qcluster's main process that vouches for the tasks its pusher took
and runs the reconciler often enough for a job to run again within ~1.25 leases of losing its task.

Every INFERENCE_JOB_LEASE_SECONDS / 4 (at least 0.5 s) it

* renews ``taken_until`` of the jobs whose tasks were taken (``inference.jobs.brokers``) by a
  live process of this cluster: once that process dies (SIGKILL, OOM) or the whole cluster
  does, the marks expire within a lease and the reconciler queues those jobs again;
* runs the jobs' part of the reconciler (``inference.services.jobs.jobs_recover``).

Live processes are read from /proc (the sentinel's children, not zombies); where there is no
/proc nothing is renewed, and the reconciler queues copies of tasks still in a cluster's
hands: harmless (a run claims its job; a copy finds it taken), but extra work.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from django import db
from django.conf import settings
from django.utils import timezone

logger = logging.getLogger("inference.jobs")


def live_children(pid: int) -> list[int]:
    """The children of a process that are not zombies (Linux /proc; empty elsewhere)."""
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []
    live = []
    for child in children:
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            live.append(child)
    return live


def renew_taken(pids: list[int]) -> int:
    """Renew the marks of the jobs taken by these processes (of this host); return how many."""
    from .brokers import pusher_id
    from .models import InferenceJob

    if not pids:
        return 0
    now = timezone.now()
    return InferenceJob.objects.filter(
        InferenceJob.claimable(now), taken_by__in=[pusher_id(pid) for pid in pids], taken_until__isnull=False,
    ).update(taken_until=now + timedelta(seconds=settings.INFERENCE_JOB_LEASE_SECONDS))


class Keeper(threading.Thread):
    def __init__(self, cluster: Any, stopped: Callable[[], bool]):
        super().__init__(name="job-keeper", daemon=True)
        self.cluster = cluster
        self.stopped = stopped
        self.halted = False
        self.interval = max(0.5, settings.INFERENCE_JOB_LEASE_SECONDS / 4)

    def beat(self) -> None:
        from inference.services.jobs import jobs_recover

        renew_taken(live_children(self.cluster.sentinel.pid))
        jobs_recover()

    def run(self) -> None:
        try:
            while not (self.halted or self.stopped()):
                started = time.monotonic()
                try:
                    self.beat()
                except Exception:  # noqa: BLE001 - a database or broker outage: try again at the next beat
                    logger.exception("job keeper: renewing taken jobs or reconciling failed; retrying in %s s",
                                     self.interval)
                    db.close_old_connections()
                while not (self.halted or self.stopped()) and time.monotonic() - started < self.interval:
                    time.sleep(0.1)
        finally:
            db.connection.close()

    def stop(self) -> None:
        self.halted = True
        self.join(2)
