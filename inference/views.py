"""Operations endpoints and the landing page."""

from django.http import HttpRequest, HttpResponse, JsonResponse

from .apis.replies import Reply, api_view


@api_view
async def healthz(request: HttpRequest) -> Reply:
    """Return 200 while the process is alive (liveness probe). An async view (``apis.replies.api_view``): on
    the web server's front it is answered by the event loop itself, so it says whether the loop is responsive."""
    return Reply(b'{"status": "ok"}')


def index(request: HttpRequest) -> JsonResponse:
    """Say where things are."""
    return JsonResponse(
        {
            "service": "inference platform",
            "admin": "/admin/",
            "api": "/api/v1/models",
            "openapi": "/api/schema/",
            "docs": "/api/docs/",
            "open_inference_protocol": "/v2",
            "health": {"live": "/healthz", "ready": "/readyz"},
        }
    )


def favicon(request: HttpRequest) -> HttpResponse:
    """No icon: answer 204 so browsers do not log a 404 on every admin page."""
    return HttpResponse(status=204)
