"""The native REST API, /api/v1/ (DESIGN.md, "External contract").

Views are thin: authenticate (API key), check scope, count the rate, parse, call one
service, render. Errors leave as the platform's JSON error shape.
"""

from __future__ import annotations

from typing import Any

import orjson
from django.http import HttpRequest, HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from registry.models import ModelVersion

from .. import services, steps
from ..auth import APIKeyAuthentication, HasScope, rate_limit
from ..errors import NotFound, exception_handler
from ..keys import APIKey
from ..runtime.pool import get_pool
from . import serializers as s
from .parsing import OrjsonParser, OrjsonRenderer, loads, read_body

JSON_TYPES = ("application/json",)


class PlatformAPIView(APIView):
    """Base of the API views: API-key auth, scope, per-key rate limit, orjson in and out."""

    authentication_classes = [APIKeyAuthentication]
    permission_classes = [HasScope]
    parser_classes = [OrjsonParser]
    renderer_classes = [OrjsonRenderer]
    required_scope = APIKey.Scope.INFER

    def check_throttles(self, request: Request) -> None:
        rate_limit(request, model=self.kwargs.get("name", ""))

    def json_body(self, request: Any) -> tuple[Any, bytes]:
        """Return (parsed body, raw bytes); 415 unless the body is JSON."""
        content_type = (request.content_type or "").split(";")[0].strip().lower()
        if content_type not in JSON_TYPES:
            raise exceptions.UnsupportedMediaType(
                content_type or "(none)", detail=f"Send JSON with Content-Type: application/json, not {content_type or 'nothing'}."
            )
        raw = read_body(getattr(request, "_request", request))
        return loads(raw), raw


class HotPathAPIView(PlatformAPIView):
    """A view whose POST is the request path: same checks as DRF's, without its per-request cost.

    POST skips DRF's Request wrapper, content negotiation and Response rendering (together
    a few hundred microseconds per request); it runs the same authentication class,
    scope check, per-key rate limit and error handler directly, and answers orjson bytes.
    Other methods (and the OpenAPI description) go through DRF as usual.

    The POST is written as steps (inference.steps): ``dispatch`` runs them blocking (WSGI),
    the async front (inference_platform.front) runs ``post_steps`` awaiting.
    """

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method != "POST":
            return super().dispatch(request, *args, **kwargs)
        return steps.run(self.post_steps(request, *args, **kwargs))

    def post_steps(self, request: HttpRequest, *args: Any, **kwargs: Any) -> steps.Steps[HttpResponse]:
        self.args, self.kwargs, self.request, self.headers = args, kwargs, request, {}
        try:
            info = APIKeyAuthentication().authenticate(request)[0]
            request.auth = info
            permission = HasScope()
            if not permission.has_permission(request, self):
                raise exceptions.PermissionDenied(permission.message)
            rate_limit(request, model=kwargs.get("name", ""))
            result = yield from self.hot_post_steps(request, *args, **kwargs)
            return HttpResponse(orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY), content_type="application/json")
        except Exception as exc:  # noqa: BLE001 - rendered like DRF would, or re-raised as a bug
            if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
                exc.auth_header = APIKeyAuthentication.keyword
            response = exception_handler(exc, {"view": self, "request": request})
            if response is None:
                raise
            out = HttpResponse(orjson.dumps(response.data), status=response.status_code, content_type="application/json")
            for header, value in response.items():
                if header.lower() != "content-type":
                    out[header] = value
            return out

    def hot_post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        return steps.run(self.hot_post_steps(request, *args, **kwargs))

    def hot_post_steps(self, request: HttpRequest, *args: Any, **kwargs: Any) -> steps.Steps[Any]:
        raise NotImplementedError("subclasses of HotPathAPIView must provide a hot_post_steps() method")


def version_summary(v: ModelVersion, aliases: list[str]) -> dict[str, Any]:
    return {
        "version": v.version,
        "status": v.status,
        "ready": v.status == ModelVersion.Status.READY,
        "error": v.status_error or None,
        "format": v.format,
        "inputs": v.input_schema,
        "outputs": v.output_schema,
        "parameters": _request_parameters(v),
        "hardware": v.hardware.name,
        "aliases": aliases,
        "created_at": v.created_at,
    }


def _request_parameters(v: ModelVersion) -> list[str]:
    from ..pipeline.base import Pipeline, StepConfigError

    try:
        pre, post = Pipeline(v.preprocess, stage="preprocess"), Pipeline(v.postprocess, stage="postprocess")
    except (StepConfigError, ImportError):
        return []
    return sorted({**pre.request_parameters, **post.request_parameters})


def model_summary(model: Any) -> dict[str, Any]:
    aliases: dict[int, list[str]] = {}
    alias_map: dict[str, int] = {}
    for a in model.aliases.all():
        aliases.setdefault(a.version_id, []).append(a.name)
        alias_map[a.name] = a.version.version
    versions = [version_summary(v, sorted(aliases.get(v.pk, []))) for v in model.versions.all() if not v.archived]
    return {
        "name": model.name,
        "description": model.description,
        "task": model.task,
        "aliases": alias_map,
        "versions": versions,
    }


class ModelListView(PlatformAPIView):
    @extend_schema(
        operation_id="models_list",
        summary="List the models this key may use",
        responses={200: s.ModelListSerializer, 401: s.ErrorSerializer, 403: s.ErrorSerializer, 429: s.ErrorSerializer},
    )
    def get(self, request: Request) -> Response:
        from registry.selectors import model_list

        key = request.auth
        names = None if key.models is None else sorted(key.models)
        return Response({"models": [model_summary(m) for m in model_list(names=names)]})


class ModelDetailView(PlatformAPIView):
    @extend_schema(
        operation_id="models_retrieve",
        summary="One model: versions, schemas, readiness",
        responses={200: s.ModelSerializer, 401: s.ErrorSerializer, 403: s.ErrorSerializer, 404: s.ErrorSerializer,
                   429: s.ErrorSerializer},
    )
    def get(self, request: Request, name: str) -> Response:
        from registry.selectors import model_list

        services.visible_model(model_name=name, key=request.auth)
        model = model_list(names=[name]).first()
        if model is None:
            raise NotFound(f"No model named {name!r}.")
        return Response(model_summary(model))


PREDICT_ERRORS = {
    400: s.ErrorSerializer, 401: s.ErrorSerializer, 403: s.ErrorSerializer, 404: s.ErrorSerializer,
    413: s.ErrorSerializer, 415: s.ErrorSerializer, 429: s.ErrorSerializer, 500: s.ErrorSerializer,
    503: s.ErrorSerializer,
}


class PredictView(HotPathAPIView):
    @extend_schema(
        operation_id="models_predict",
        summary="Predict with the production version (else the newest ready one)",
        request=s.PredictRequestSerializer,
        responses={200: s.PredictResponseSerializer, **PREDICT_ERRORS},
    )
    def post(self, request: Request, name: str) -> Response:  # documents the operation; POST runs hot_post
        return Response(self.hot_post(request, name))

    def hot_post_steps(self, request: Any, name: str, ref: str | None = None) -> steps.Steps[dict[str, Any]]:
        # Resolve visibility before reading the body: an unknown model is a 404 whatever is sent.
        services.visible_model(model_name=name, key=request.auth)
        body, raw = self.json_body(request)
        path = services.predict_steps(
            model_name=name,
            ref=ref,
            body=body,
            key=request.auth,
            request_id=getattr(request, "request_id", ""),
            maybe_bools=b"true" in raw or b"false" in raw,
        )
        del body, raw  # the path keeps the parsed body only as long as it needs it
        result = yield from path
        return result


class PredictVersionView(PredictView):
    @extend_schema(
        operation_id="models_versions_predict",
        summary="Predict with version v (a number or an alias name)",
        parameters=[OpenApiParameter("ref", str, OpenApiParameter.PATH, description="version number or alias")],
        request=s.PredictRequestSerializer,
        responses={200: s.PredictResponseSerializer, **PREDICT_ERRORS},
    )
    def post(self, request: Request, name: str, ref: str) -> Response:  # type: ignore[override]
        return Response(self.hot_post(request, name, ref))


def loaded_versions() -> list[dict[str, Any]]:
    """Return what this process has loaded (for readiness and the admin)."""
    out = []
    for (_pk, device), entry in get_pool().cache.entries():
        served = entry.served
        out.append({"model": served.model_name, "version": served.version, "device": device,
                    "queue_depth": entry.batcher.queue_depth, "bytes": entry.nbytes})
    return out
