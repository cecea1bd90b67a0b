"""Operations endpoints."""

from django.http import JsonResponse


def healthz(request):
    """Return 200 while the process is alive (liveness probe)."""
    return JsonResponse({"status": "ok"})
