"""The django-q2 cluster that ``manage.py qcluster`` runs here: stopped in bounded time whatever
signals reach which of its processes, and kept by a thread that vouches for the tasks its
pusher took and runs the reconciler (``inference.jobs.keeper``).

django-q2's own ``qcluster`` returns from its command once the cluster is started and stops
it from a signal handler (``Cluster.stop``: ``stop_event.set()``, then ``sentinel.join()``).
A SIGTERM sent to *every* process of the cluster at once (``systemctl stop`` with its default
KillMode, ``kill -TERM -- -PGID``) killed the sentinel (SIGTERM is its default action) while
it slept in ``stop_event.wait``, and ``stop_event.set()`` in the main process then waited
forever for that sleeper to wake up (multiprocessing's ``Condition.notify``): the command
never exited. Here:

* the main process's handlers only record the signal; the main thread stops the cluster
  itself, outside any handler, and gives it ``INFERENCE_WORKER_STOP_TIMEOUT`` seconds, then
  SIGKILLs what is left (a job still running is left to the reconciler: its lease expires);
* the sentinel and all it forks (workers, pusher, monitor) ignore SIGTERM (and SIGINT, as
  django-q2 has them do already): the main process stops them through ``stop_event``. A
  worker must not die of a stray SIGTERM: one killed while it waits on the task queue holds
  the queue's lock forever, and no worker of the cluster takes a task again (seen: a group
  SIGTERM with workers left at SIG_DFL left 4 processes hung). The cost: the sentinel can no
  longer end a worker stuck *inside native code* past its task timeout (its SIGTERM is
  ignored; the task's own SIGALRM timeout still fires once the native call returns).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from multiprocessing import Event, current_process
from pathlib import Path
from typing import Any

from django import db
from django.conf import settings
from django_q.cluster import Cluster, Sentinel, get_mp_context

logger = logging.getLogger("inference.jobs")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _sentinel(stop_event: Any, start_event: Any, cluster_id: Any, broker: Any, timeout: Any) -> None:
    """django-q2's Sentinel, ignoring SIGTERM (the main process stops it); what it forks inherits that."""
    sentinel = Sentinel(stop_event, start_event, cluster_id, broker, timeout, start=False)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sentinel.start()


class InferenceCluster(Cluster):
    """django-q2's Cluster with the sentinel above; start() is Cluster.start's, but for the target."""

    def start(self) -> int:
        self.stop_event = Event()
        self.start_event = Event()
        self.sentinel = get_mp_context().Process(
            target=_sentinel, name=f"Process-{self.cluster_id.hex}",
            args=(self.stop_event, self.start_event, self.cluster_id, self.broker, self.timeout),
        )
        self.sentinel.start()
        logger.info("Q Cluster %s starting.", self.name)
        while not self.start_event.is_set():
            if not self.sentinel.is_alive():
                raise RuntimeError(f"Q Cluster {self.name} failed to start: sentinel exited with code "
                                   f"{self.sentinel.exitcode}")
            time.sleep(0.1)
        return self.pid


def descendants(pid: int) -> list[int]:
    """The live descendants of a process (Linux /proc; empty elsewhere), children first."""
    found: list[int] = []
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return found
    for child in children:
        found.append(child)
        found.extend(descendants(child))
    return found


class Stopper:
    """Signal handlers that only count the signals (no lock is taken in a handler)."""

    def __init__(self) -> None:
        self.received: list[int] = []

    def handle(self, signum: int, frame: Any) -> None:
        self.received.append(signum)

    @property
    def requested(self) -> bool:
        return bool(self.received)


def stop_cluster(cluster: InferenceCluster, timeout: float) -> bool:
    """Stop the cluster: ask the sentinel, wait `timeout` s, then SIGKILL what is left. Return
    whether it stopped gracefully."""
    sentinel = cluster.sentinel
    if sentinel.is_alive():
        # Never in a signal handler, and in a thread of its own: set() waits for the sentinel to wake
        # (Condition.notify), forever if it died in between (SIGKILL, OOM); the join below is bounded.
        threading.Thread(target=cluster.stop_event.set, name="stop-cluster", daemon=True).start()
        sentinel.join(timeout)
    graceful = not sentinel.is_alive()
    left = descendants(sentinel.pid) if not graceful else []
    if not graceful:
        logger.warning("the cluster did not stop within INFERENCE_WORKER_STOP_TIMEOUT (%s s): killing its %d "
                       "process(es); the jobs they were running are re-run once their leases expire",
                       timeout, len(left) + 1)
        for pid in [*left, sentinel.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        sentinel.join(5)
    return graceful


def run_cluster(*, run_once: bool = False) -> int:
    """Run a cluster until SIGTERM or SIGINT (or at once stop it, with run_once); return an exit status."""
    from .keeper import Keeper

    stopper = Stopper()
    # No signal between django-q2 installing its handlers (Cluster.__init__) and ours.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        cluster = InferenceCluster()
        for signum in STOP_SIGNALS:
            signal.signal(signum, stopper.handle)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # before any fork: children inherit the mask
    db.connections.close_all()  # the sentinel forks from here: no connection shared with it
    cluster.start()
    keeper = Keeper(cluster, stopped=lambda: stopper.requested)
    keeper.start()
    status = 0
    while not (run_once or stopper.requested):
        if not cluster.sentinel.is_alive():
            logger.error("the cluster's sentinel (pid %s) exited with %s: stopping; restart the worker",
                         cluster.sentinel.pid, cluster.sentinel.exitcode)
            status = 1
            break
        time.sleep(0.2)
    if stopper.requested:
        logger.info("%s got %s: stopping the cluster (at most %s s)", current_process().name,
                    signal.Signals(stopper.received[0]).name, settings.INFERENCE_WORKER_STOP_TIMEOUT)
    keeper.stop()
    stop_cluster(cluster, settings.INFERENCE_WORKER_STOP_TIMEOUT)
    return status
