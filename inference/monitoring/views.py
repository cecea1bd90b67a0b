"""/metrics: Prometheus text format, for a staff session or the metrics token."""

from __future__ import annotations

import os

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.crypto import constant_time_compare
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from ..errors import ErrorCode, _json_response


def _allowed(request: HttpRequest) -> bool:
    user = getattr(request, "user", None)
    if user is not None and user.is_active and user.is_staff:
        return True
    token = settings.INFERENCE_METRICS_TOKEN
    header = request.META.get("HTTP_AUTHORIZATION", "")
    return bool(token) and header.startswith("Bearer ") and constant_time_compare(header[7:].strip(), token)


def metrics(request: HttpRequest) -> HttpResponse:
    """Return all metrics; aggregated over processes when PROMETHEUS_MULTIPROC_DIR is set."""
    if not _allowed(request):
        response = _json_response(
            ErrorCode.NOT_AUTHENTICATED,
            "Metrics need a staff session or 'Authorization: Bearer <INFERENCE_METRICS_TOKEN>'.",
            401,
        )
        response["WWW-Authenticate"] = "Bearer"
        return response
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
