"""The native REST API, /api/v1/ (DESIGN.md, "External contract"): model listings and predict.

Predict is an async view (``replies.api_view``), served on the web process's event loop
(``inference_platform.front``) or, under WSGI, by ``async_to_sync``: authenticate, parse, call
``services.predict``, reply. The listings are DRF views. Errors leave in the v1 shape
(``apis.errors.v1_reply``).
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from registry.models import ModelVersion

from .. import access, offload, selectors
from ..conf import hot
from ..errors import MethodNotAllowed, NotFound, UnsupportedMediaType
from ..keys import APIKey
from ..middleware import receive_body
from ..pipeline.base import Pipeline, StepConfigError
from ..routing import routing_key_of
from ..services import predict as predict_service
from . import serializers as s
from .authentication import APIKeyAuthentication, HasScope
from .errors import v1_reply
from .parsing import OrjsonParser, OrjsonRenderer, loads, read_body
from .replies import Reply, api_view, json_reply
from .schema import described_by

JSON_TYPES = ("application/json",)


def json_bytes(request: Any) -> bytes:
    """The raw JSON body (413 over INFERENCE_MAX_BODY_BYTES); 415 unless the body is JSON."""
    content_type = (request.content_type or "").split(";")[0].strip().lower()
    if content_type not in JSON_TYPES:
        raise UnsupportedMediaType(f"Send JSON with Content-Type: application/json, not {content_type or 'nothing'}.")
    return read_body(request)


class PlatformAPIView(APIView):
    """Base of the API views: API-key auth, scope, per-key rate limit, orjson in and out."""

    authentication_classes = [APIKeyAuthentication]
    permission_classes = [HasScope]
    parser_classes = [OrjsonParser]
    renderer_classes = [OrjsonRenderer]
    required_scope = APIKey.Scope.INFER

    def check_throttles(self, request: Request) -> None:
        access.count_request(request.auth, model=self.kwargs.get("name", ""))


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
        return Response({"models": [model_summary(m) for m in selectors.models_for_key(request.auth)]})


class ModelDetailView(PlatformAPIView):
    @extend_schema(
        operation_id="models_retrieve",
        summary="One model: versions, schemas, readiness",
        responses={200: s.ModelSerializer, 401: s.ErrorSerializer, 403: s.ErrorSerializer, 404: s.ErrorSerializer,
                   429: s.ErrorSerializer},
    )
    def get(self, request: Request, name: str) -> Response:
        selectors.visible_model(model_name=name, key=request.auth)
        found = selectors.models_for_key(request.auth, names=[name])
        if not found:
            raise NotFound(f"No model named {name!r}.")
        return Response(model_summary(found[0]))


# ---- predict ---------------------------------------------------------------------------------------

PREDICT_ERRORS = {
    400: s.ErrorSerializer, 401: s.ErrorSerializer, 403: s.ErrorSerializer, 404: s.ErrorSerializer,
    413: s.ErrorSerializer, 415: s.ErrorSerializer, 429: s.ErrorSerializer, 500: s.ErrorSerializer,
    503: s.ErrorSerializer,
}


class PredictOperation(PlatformAPIView):
    """The OpenAPI description of ``predict`` at /api/v1/models/{name}/predict (``described_by``)."""

    @extend_schema(
        operation_id="models_predict",
        summary="Predict with the production version (else the newest ready one)",
        description=("Body: {\"instances\": [...]}, one entry per prediction. Answers the predictions of the "
                     "version that served them; refusals are the platform's JSON error object."),
        request=s.PredictRequestSerializer,
        responses={200: s.PredictResponseSerializer, **PREDICT_ERRORS},
    )
    def post(self, request: Request, name: str) -> Response:
        raise NotImplementedError("described only: requests go to inference.apis.v1.predict")


class PredictVersionOperation(PlatformAPIView):
    """The OpenAPI description of ``predict`` at /api/v1/models/{name}/versions/{ref}/predict."""

    @extend_schema(
        operation_id="models_versions_predict",
        summary="Predict with version v (a number or an alias name)",
        description=("Body: {\"instances\": [...]}, one entry per prediction. Answers the predictions of the "
                     "version that served them; refusals are the platform's JSON error object."),
        parameters=[OpenApiParameter("ref", str, OpenApiParameter.PATH, description="version number or alias")],
        request=s.PredictRequestSerializer,
        responses={200: s.PredictResponseSerializer, **PREDICT_ERRORS},
    )
    def post(self, request: Request, name: str, ref: str) -> Response:
        raise NotImplementedError("described only: requests go to inference.apis.v1.predict")


class may_hold_bools:  # noqa: N801 - a function that remembers its answer
    """Whether the body may hold a true/false, asked only if numbers are converted (a scan of the body:
    an image model's request never pays for it); without one, no number needs checking for a bool.
    (Not functools.cache around a lambda: building that wrapper costs more than the scan of a small body.)"""

    __slots__ = ("raw", "answer")

    def __init__(self, raw: bytes):
        self.raw = raw
        self.answer: bool | None = None

    def __call__(self) -> bool:
        if self.answer is None:
            self.answer = b"true" in self.raw or b"false" in self.raw
            self.raw = b""
        return self.answer


async def predict(request: HttpRequest, name: str, ref: str | None = None) -> Reply:
    """POST a predict request: ``{"instances": [...]}`` -> ``{"id", "model", "version", "predictions"}``."""
    try:
        key = await access.authorize(request, model=name)
        if request.method != "POST":
            raise MethodNotAllowed(request.method, "POST")
        # Visible before the body is read: an unknown model is a 404 whatever is sent.
        await offload.without_blocking(selectors.visible_model, model_name=name, key=key)
        await receive_body(request)
        raw = json_bytes(request)
        body = await offload.compute(loads, raw, heavy=len(raw) > hot.INFERENCE_INLINE_BYTES)
        result = await predict_service.predict(
            model_name=name, ref=ref, key=key, body=body, size=len(raw), request_id=request.request_id,
            maybe_bools=may_hold_bools(raw), routing_key=routing_key_of(request),
        )
    except Exception as exc:  # noqa: BLE001 - every refusal in the v1 shape; a bug is a logged 500
        return v1_reply(exc, request)
    return json_reply(result)


# CSRF-exempt like every API-key view (a deployment that drops the boundary middleware runs them
# through CsrfViewMiddleware too).
predict_latest = csrf_exempt(described_by(PredictOperation)(api_view(predict)))
predict_at_version = csrf_exempt(described_by(PredictVersionOperation)(api_view(predict)))
