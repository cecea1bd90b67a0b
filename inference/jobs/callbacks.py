"""Job completion callbacks: POST the final state, signed, retried with backoff.

Only URLs whose host is in INFERENCE_CALLBACK_ALLOWED_HOSTS are accepted at submit (an
open callback lets any client make the server call anywhere: TorchServe's
CVE-2023-43654). The body is signed with HMAC-SHA256 over ``<timestamp>.<body>`` using
INFERENCE_CALLBACK_SECRET; receivers check ``X-Inference-Signature: t=<ts>,v1=<hex>``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
import urllib.request
from datetime import timedelta

import orjson
from django.conf import settings
from django.utils import timezone

from .models import InferenceJob
from .selectors import job_state

logger = logging.getLogger("inference.jobs")

BACKOFF_SECONDS = (0, 60, 300, 1800, 7200)  # after attempt 1, 2, ...


def signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def deliver(job_id: str, attempt: int) -> str:
    """POST the job's final state to its callback URL; schedule a retry on failure."""
    job = InferenceJob.objects.get(pk=job_id)
    body = orjson.dumps(job_state(job))
    ts = int(time.time())
    request = urllib.request.Request(
        job.callback_url, data=body, method="POST",
        headers={"Content-Type": "application/json", "X-Inference-Signature": signature(settings.INFERENCE_CALLBACK_SECRET or settings.SECRET_KEY, ts, body),
                 "User-Agent": "inference-platform-callback/1"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - host allowlisted at submit
            status = response.status
    except Exception as exc:  # noqa: BLE001
        status, error = 0, str(exc)
    else:
        error = ""
    if 200 <= status < 300:
        InferenceJob.objects.filter(pk=job.pk).update(callback_status=f"delivered ({status}) on attempt {attempt}")
        return "delivered"
    note = f"attempt {attempt} failed: {error or status}"
    if attempt >= len(BACKOFF_SECONDS):
        InferenceJob.objects.filter(pk=job.pk).update(callback_status=f"gave up: {note}"[:200])
        return "gave up"
    InferenceJob.objects.filter(pk=job.pk).update(callback_status=note[:200])
    from django_q.models import Schedule

    Schedule.objects.create(
        func="inference.tasks.deliver_callback", args=f"'{job.pk}',{attempt + 1}", schedule_type=Schedule.ONCE,
        next_run=timezone.now() + timedelta(seconds=BACKOFF_SECONDS[attempt]), repeats=1,
        name=f"callback-{job.pk}-{attempt + 1}",
    )
    logger.warning("callback for job %s %s; retrying in %d s", job.pk, note, BACKOFF_SECONDS[attempt])
    return "retry scheduled"
