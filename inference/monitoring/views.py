"""/metrics (Prometheus text format, for a staff session or the metrics token) and /readyz."""

from __future__ import annotations

import os

import orjson
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.crypto import constant_time_compare
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess

from ..errors import ErrorCode, error_body
from .collectors import PLATFORM_REGISTRY
from .readiness import public_body, readiness


def _allowed(request: HttpRequest) -> bool:
    user = getattr(request, "user", None)
    if user is not None and user.is_active and user.is_staff:
        return True
    token = settings.INFERENCE_METRICS_TOKEN
    header = request.META.get("HTTP_AUTHORIZATION", "")
    return bool(token) and header.startswith("Bearer ") and constant_time_compare(header[7:].strip(), token)


def render_metrics() -> bytes:
    """Return every metric in the text format: this process's (or, with PROMETHEUS_MULTIPROC_DIR,
    all web processes' aggregated), then the figures read from the database and broker."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry) + generate_latest(PLATFORM_REGISTRY)


def metrics(request: HttpRequest) -> HttpResponse:
    """Return all metrics; 401 (JSON) without a staff session or the metrics token."""
    if not _allowed(request):
        response = HttpResponse(orjson.dumps(error_body(
            ErrorCode.NOT_AUTHENTICATED,
            "Metrics need a staff session or 'Authorization: Bearer <INFERENCE_METRICS_TOKEN>'.",
        )), status=401, content_type="application/json")
        response["WWW-Authenticate"] = "Bearer"
        return response
    return HttpResponse(render_metrics(), content_type=CONTENT_TYPE_LATEST)


def readyz(request: HttpRequest) -> HttpResponse:
    """Readiness probe: 200 when database, broker, cache and production models are fine, else 503.

    The body says what is red either way: reason codes for anyone, the errors and the per-model
    checks for a staff session or the metrics token only. A 503 carries the platform's error object too.
    """
    ready, body = readiness()
    if not _allowed(request):
        body = public_body(body)
    if not ready:
        codes = {name: body["checks"][name]["code"] for name in body["failing"]}
        body.update(error_body(ErrorCode.NOT_READY, f"Not ready: {', '.join(body['failing'])}.",
                               {"failing": body["failing"], "codes": codes}))
    response = HttpResponse(orjson.dumps(body), status=200 if ready else 503, content_type="application/json")
    response["Cache-Control"] = "no-store"
    if not ready:
        response["Retry-After"] = "5"
    return response
