"""The Open Inference Protocol (KServe v2 / Triton HTTP), a second front door to the same engine.

Same API keys (`Authorization: Api-Key ...` / `X-API-Key`, which tritonclient sends as headers),
same rate limits, same resolution of versions and aliases (``selectors.serving_version``), same
pipeline, batcher and runtime as /api/v1 (``services.predict.infer``). Errors are the protocol's
``{"error": "..."}`` (``apis.errors.v2_error``) with Triton's statuses: 400 bad request, 401
no/invalid key, 403 scope, 404 unknown model or version, 413 too large, 429 rate limited, 503
not ready or overloaded. Server metadata and health need no key.

The model endpoints are async views (served on the event loop, like v1 predict); the server's
own metadata and health are plain views.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from .. import access, offload, selectors
from ..errors import PayloadTooLarge
from ..middleware import receive_body
from ..oip import ProtocolError, tensor_metadata
from ..oip_outputs import output_metadata
from ..routing import ROUTING_HEADER
from ..services import predict as predict_service
from .errors import v2_error
from .parsing import read_body

SERVER_NAME = "inference-platform"
SERVER_VERSION = "1.0.0"
EXTENSIONS = ["binary_tensor_data", "classification"]


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> HttpResponse:
    response = HttpResponse(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), status=status,
                            content_type="application/json")
    for k, v in (headers or {}).items():
        response[k] = v
    return response


def _method_refused(request: HttpRequest, allowed: str) -> HttpResponse | None:
    if request.method != allowed:
        return _json({"error": f"method {request.method} is not allowed here; use {allowed}"}, 405, {"Allow": allowed})
    return None


@csrf_exempt
def server_metadata(request: HttpRequest) -> HttpResponse:
    return _method_refused(request, "GET") or _json({"name": SERVER_NAME, "version": SERVER_VERSION,
                                                     "extensions": EXTENSIONS})


@csrf_exempt
def server_live(request: HttpRequest) -> HttpResponse:
    return _method_refused(request, "GET") or _json({"live": True})


@csrf_exempt
def server_ready(request: HttpRequest) -> HttpResponse:
    if (refused := _method_refused(request, "GET")) is not None:
        return refused
    from django.db import connection

    try:
        connection.ensure_connection()
    except Exception:  # noqa: BLE001
        return _json({"ready": False, "error": "the database is unreachable"}, 503)
    return _json({"ready": True})


@csrf_exempt
async def model_metadata(request: HttpRequest, name: str, ref: str | None = None) -> HttpResponse:
    if (refused := _method_refused(request, "GET")) is not None:
        return refused
    try:
        await access.authorize(request, model=name)
        version = await offload.without_blocking(selectors.serving_version, model_name=name, ref=ref, key=request.auth)
        versions = await offload.blocking(selectors.ready_version_numbers, version.model)
        return _json({
            "name": version.model.name,
            "versions": [str(v) for v in versions],
            "platform": "pytorch",
            "inputs": tensor_metadata(version.input_schema),
            "outputs": output_metadata(version.output_schema, version.postprocess),
        })
    except Exception as exc:  # noqa: BLE001 - rendered as the protocol's error
        return v2_error(exc, request)


@csrf_exempt
async def model_ready(request: HttpRequest, name: str, ref: str | None = None) -> HttpResponse:
    if (refused := _method_refused(request, "GET")) is not None:
        return refused
    try:
        await access.authorize(request, model=name)
        version = await offload.without_blocking(selectors.serving_version, model_name=name, ref=ref, key=request.auth)
        try:
            await predict_service.loaded_version(version, key=request.auth)
        except Exception as exc:  # noqa: BLE001 - not ready, with the reason
            return _json({"name": name, "ready": False, "error": str(exc)}, 400)
        return _json({"name": name, "ready": True})
    except Exception as exc:  # noqa: BLE001
        return v2_error(exc, request)


def decoded_body(request: HttpRequest) -> bytes:
    """The request's body, inflated when it is sent gzip- or deflate-encoded, within INFERENCE_MAX_BODY_BYTES."""
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
            raise PayloadTooLarge(f"the decompressed body is over the limit of {limit} bytes")
    elif encoding not in ("", "identity"):
        raise ProtocolError(f"Content-Encoding {encoding!r} is not supported (gzip, deflate)")
    return raw


def size_hint(request: HttpRequest) -> int:
    """How large the body is, as far as its headers tell: its Content-Length; a body without one
    (chunked) or compressed counts as the largest allowed (it is parsed off the event loop)."""
    length = request.META.get("CONTENT_LENGTH")
    if not length or request.headers.get("Content-Encoding", "identity").lower() != "identity":
        return settings.INFERENCE_MAX_BODY_BYTES
    try:
        return int(length)
    except ValueError:
        return settings.INFERENCE_MAX_BODY_BYTES


@csrf_exempt
async def infer(request: HttpRequest, name: str, ref: str | None = None) -> HttpResponse:
    """POST an inference request (JSON tensors, or Triton's binary tensor data extension)."""
    if (refused := _method_refused(request, "POST")) is not None:
        return refused
    try:
        await access.authorize(request, model=name)
        await receive_body(request)
        header = request.headers.get("Inference-Header-Content-Length")
        try:
            header_length = int(header) if header is not None else None
        except ValueError:
            raise ProtocolError("Inference-Header-Content-Length must be an integer") from None
        body, header_length = await predict_service.infer(
            model_name=name, ref=ref, key=request.auth, body=lambda: decoded_body(request),
            size=size_hint(request), header_length=header_length,
            request_id=request.request_id, routing_key=request.headers.get(ROUTING_HEADER),
        )
    except Exception as exc:  # noqa: BLE001
        return v2_error(exc, request)
    if header_length is None:
        return HttpResponse(body, content_type="application/json")
    response = HttpResponse(body, content_type="application/octet-stream")
    response["Inference-Header-Content-Length"] = str(header_length)
    return response
