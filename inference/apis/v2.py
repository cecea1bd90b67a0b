"""The Open Inference Protocol (KServe v2 / Triton HTTP), a second front door to the same engine.

Same API keys (`Authorization: Api-Key ...` / `X-API-Key`, which tritonclient sends
as headers), same rate limits, same resolution of versions and aliases, same pipeline,
batcher and runtime as /api/v1. Errors are the protocol's ``{"error": "..."}`` with
Triton's statuses: 400 bad request, 401 no/invalid key, 403 scope, 404 unknown model or
version, 413 too large, 429 rate limited, 503 not ready or overloaded. Server metadata and
health need no key.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions

from registry.models import ModelVersion

from .. import services, steps
from ..auth import APIKeyAuthentication, HasScope, rate_limit
from ..errors import APIError, NotFound, ServiceUnavailable, database_unavailable
from ..runtime.pool import get_pool
from .oip import ProtocolError, encode_infer_response, output_tensors, parse_infer_request
from .parsing import read_body

SERVER_NAME = "inference-platform"
SERVER_VERSION = "1.0.0"
EXTENSIONS = ["binary_tensor_data"]


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> HttpResponse:
    response = HttpResponse(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), status=status,
                            content_type="application/json")
    for k, v in (headers or {}).items():
        response[k] = v
    return response


def _error(exc: Exception) -> HttpResponse:
    """Render any refusal as the protocol's {"error": message} with its status and headers."""
    if isinstance(exc, ProtocolError):
        return _json({"error": str(exc)}, 400)
    exc = database_unavailable(exc) or exc  # a lost database: 503 + Retry-After, not a 500
    if isinstance(exc, APIError):
        message = exc.message
        if exc.details.get("path"):
            message = f"{message} (at {exc.details['path']})"
        return _json({"error": message}, exc.status_code, exc.headers)
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        return _json({"error": str(exc.detail)}, 401, {"WWW-Authenticate": APIKeyAuthentication.keyword})
    if isinstance(exc, exceptions.Throttled):
        wait = max(1, int(exc.wait or 1))
        return _json({"error": f"rate limit exceeded for this API key; retry in {wait} s"}, 429,
                     {"Retry-After": str(wait)})
    if isinstance(exc, exceptions.APIException):
        return _json({"error": str(exc.detail)}, exc.status_code)
    raise exc


class _ScopeView:
    required_scope = "infer"


def _authorize(request: HttpRequest, model_name: str = "") -> Any:
    info = APIKeyAuthentication().authenticate(request)[0]
    request.auth = info
    permission = HasScope()
    if not permission.has_permission(request, _ScopeView):
        raise exceptions.PermissionDenied(permission.message)
    rate_limit(request, model=model_name)
    return info


def _version(request: HttpRequest, name: str, ref: str | None) -> tuple[Any, ModelVersion]:
    model = services.visible_model(model_name=name, key=request.auth)
    version = get_pool().resolve(model, ref)
    if version is None:
        if ref is None:
            raise ServiceUnavailable(f"model {name!r} has no ready version", retry_after=30)
        raise NotFound(f"model {name!r} has no version or alias {ref!r}")
    return model, version


def _tensor_meta(specs: list[dict]) -> list[dict]:
    # The protocol's shapes include the batch dimension (variable: -1).
    return [{"name": s["name"], "datatype": s["datatype"], "shape": [-1, *s["shape"]]} for s in specs]


STRUCTURING_STEPS = {"topk", "labels"}


def _output_meta(version: ModelVersion) -> list[dict]:
    """The outputs as infer returns them: after a labels/topk step, one BYTES tensor of JSON
    predictions (the v1 API's values) named after the first output; after argmax, INT64 indices."""
    steps = [step.get("step") for step in version.postprocess]
    first = version.output_schema[0]
    if STRUCTURING_STEPS & set(steps):
        return [{"name": first["name"], "datatype": "BYTES", "shape": [-1]}]
    if "argmax" in steps and len(version.output_schema) == 1:
        return [{"name": first["name"], "datatype": "INT64", "shape": [-1, *first["shape"][:-1]]}]
    return _tensor_meta(version.output_schema)


def _method(request: HttpRequest, allowed: str) -> HttpResponse | None:
    if request.method != allowed:
        return _json({"error": f"method {request.method} is not allowed here; use {allowed}"}, 405, {"Allow": allowed})
    return None


@csrf_exempt
def server_metadata(request: HttpRequest) -> HttpResponse:
    return _method(request, "GET") or _json({"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS})


@csrf_exempt
def server_live(request: HttpRequest) -> HttpResponse:
    return _method(request, "GET") or _json({"live": True})


@csrf_exempt
def server_ready(request: HttpRequest) -> HttpResponse:
    if (refused := _method(request, "GET")) is not None:
        return refused
    from django.db import connection

    try:
        connection.ensure_connection()
    except Exception:  # noqa: BLE001
        return _json({"ready": False, "error": "the database is unreachable"}, 503)
    return _json({"ready": True})


@csrf_exempt
def model_metadata(request: HttpRequest, name: str, ref: str | None = None) -> HttpResponse:
    if (refused := _method(request, "GET")) is not None:
        return refused
    try:
        _authorize(request, name)
        model, version = _version(request, name, ref)
        versions = [str(v) for v in model.versions.filter(status=ModelVersion.Status.READY, archived=False)
                    .order_by("version").values_list("version", flat=True)]
        return _json({
            "name": model.name,
            "versions": versions,
            "platform": "pytorch",
            "inputs": _tensor_meta(version.input_schema),
            "outputs": _output_meta(version),
        })
    except Exception as exc:  # noqa: BLE001 - rendered as the protocol's error
        return _error(exc)


@csrf_exempt
def model_ready(request: HttpRequest, name: str, ref: str | None = None) -> HttpResponse:
    if (refused := _method(request, "GET")) is not None:
        return refused
    try:
        _authorize(request, name)
        _, version = _version(request, name, ref)
        try:
            get_pool().loaded(version)
        except Exception as exc:  # noqa: BLE001 - not ready, with the reason
            return _json({"name": name, "ready": False, "error": str(exc)}, 400)
        return _json({"name": name, "ready": True})
    except Exception as exc:  # noqa: BLE001
        return _error(exc)


def _body(request: HttpRequest) -> bytes:
    raw = read_body(request)
    encoding = request.headers.get("Content-Encoding", "").lower()
    if encoding in ("gzip", "deflate"):
        limit = settings.INFERENCE_MAX_BODY_BYTES
        wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
        inflater = zlib.decompressobj(wbits)
        try:
            raw = inflater.decompress(raw, limit + 1)
        except zlib.error as exc:
            raise ProtocolError(f"the {encoding} body cannot be decompressed: {exc}") from None
        if len(raw) > limit or inflater.unconsumed_tail:
            from ..errors import PayloadTooLarge

            raise PayloadTooLarge(f"the decompressed body is over the limit of {limit} bytes")
    elif encoding not in ("", "identity"):
        raise ProtocolError(f"Content-Encoding {encoding!r} is not supported (gzip, deflate)")
    return raw


@csrf_exempt
def infer(request: HttpRequest, name: str, ref: str | None = None) -> HttpResponse:
    return steps.run(infer_steps(request, name, ref))


def infer_steps(request: HttpRequest, name: str, ref: str | None = None) -> steps.Steps[HttpResponse]:
    """``infer`` as steps (inference.steps): run blocking under WSGI, awaiting by the async front."""
    if (refused := _method(request, "POST")) is not None:
        return refused
    try:
        _authorize(request, name)
        header = request.headers.get("Inference-Header-Content-Length")
        try:
            header_length = int(header) if header is not None else None
        except ValueError:
            raise ProtocolError("Inference-Header-Content-Length must be an integer") from None
        with services.observed(name) as outcome:
            version, loaded = yield from services.served_version_steps(model_name=name, ref=ref, key=request.auth)
            outcome.version, outcome.loaded = version.version, loaded
            parsed = parse_infer_request(_body(request), header_length)
            params = {k: v for k, v in parsed.parameters.items() if k != "binary_data_output"}
            result = yield from services.run_tensors_steps(loaded, parsed.inputs, params or None, outcome=outcome)
            tensors = output_tensors(result, [o["name"] for o in version.output_schema])
            body, header_length = encode_infer_response(
                model_name=name, model_version=str(version.version), request_id=parsed.id, tensors=tensors,
                requested=parsed.outputs, binary_default=parsed.binary_output,
            )
    except Exception as exc:  # noqa: BLE001
        return _error(exc)
    if header_length is None:
        return HttpResponse(body, content_type="application/json")
    response = HttpResponse(body, content_type="application/octet-stream")
    response["Inference-Header-Content-Length"] = str(header_length)
    return response


infer.steps = infer_steps  # what the async front runs for this view (inference_platform.front)
