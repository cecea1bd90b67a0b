"""Figures /metrics reads at scrape time, from the database and the broker (not per request).

* ``inference_jobs{status}``: background jobs by status (the job table).
* ``inference_broker_queue_size``: tasks waiting in the django-q2 broker;
  ``inference_broker_up``: whether the broker answered.

They describe shared state, so they come from whichever process answers the scrape and
are never summed across processes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

logger = logging.getLogger("inference.monitoring")


class PlatformCollector:
    def describe(self) -> list[Metric]:
        return []  # registering must not query the database

    def collect(self) -> Iterator[Metric]:
        from django.db.models import Count

        from ..jobs.models import InferenceJob
        from .readiness import check_broker

        jobs = GaugeMetricFamily("inference_jobs", "Background jobs by status (the job table at scrape time).",
                                 labels=["status"])
        counts = dict.fromkeys(InferenceJob.Status.values, 0)
        try:
            for row in InferenceJob.objects.order_by().values("status").annotate(n=Count("pk")):
                counts[row["status"]] = row["n"]
        except Exception:  # noqa: BLE001 - a scrape still answers; the gap shows in the series
            logger.warning("metrics: could not count jobs", exc_info=True)
        else:
            for status, n in counts.items():
                jobs.add_metric([status], n)
            yield jobs
        up = 1
        try:
            queued = check_broker()["queued"]
        except Exception:  # noqa: BLE001
            logger.warning("metrics: the broker did not answer", exc_info=True)
            up = 0
        else:
            yield GaugeMetricFamily("inference_broker_queue_size", "Tasks waiting in the django-q2 broker.",
                                    value=queued)
        yield GaugeMetricFamily("inference_broker_up", "1 when the django-q2 broker answered this scrape.", value=up)


PLATFORM_REGISTRY = CollectorRegistry(auto_describe=False)
PLATFORM_REGISTRY.register(PlatformCollector())
