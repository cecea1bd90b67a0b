"""The Open Inference Protocol (KServe v2 / Triton HTTP), a second front door to the same engine.

Same API keys (`Authorization: Api-Key ...` / `X-API-Key`, which tritonclient sends as headers),
same rate limits, same resolution of versions and aliases (``selectors.serving_version``), same
pipeline, batcher and runtime as /api/v1 (``services.predict.infer``). Errors are the protocol's
``{"error": "..."}`` (``apis.errors.v2_reply``) with Triton's statuses: 400 bad request, 401
no/invalid key, 403 scope, 404 unknown model or version, 413 too large, 429 rate limited, 503
not ready or overloaded. Server metadata and health need no key.

The model endpoints are async views (served on the event loop, like v1 predict); the server's
own metadata and health are plain views.
"""

from __future__ import annotations

import zlib
from typing import Any

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
from .errors import v2_reply
from .parsing import read_body
from .replies import Reply, api_view, json_reply

SERVER_NAME = "inference-platform"
SERVER_VERSION = "1.0.0"
EXTENSIONS = ["binary_tensor_data", "classification"]


def _method_refused(request: HttpRequest, allowed: str) -> Reply | None:
    if request.method != allowed:
        return json_reply({"error": f"method {request.method} is not allowed here; use {allowed}"}, 405,
                          {"Allow": allowed})
    return None


def _answer(request: HttpRequest, allowed: str, data: Any, status: int = 200) -> HttpResponse:
    """A plain view's JSON answer, unless the method is refused."""
    return (_method_refused(request, allowed) or json_reply(data, status)).http_response()


@csrf_exempt
def server_metadata(request: HttpRequest) -> HttpResponse:
    return _answer(request, "GET", {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS})


@csrf_exempt
def server_live(request: HttpRequest) -> HttpResponse:
    return _answer(request, "GET", {"live": True})


@csrf_exempt
def server_ready(request: HttpRequest) -> HttpResponse:
    if (refused := _method_refused(request, "GET")) is not None:
        return refused.http_response()
    from django.db import connection

    try:
        connection.ensure_connection()
    except Exception:  # noqa: BLE001
        return json_reply({"ready": False, "error": "the database is unreachable"}, 503).http_response()
    return json_reply({"ready": True}).http_response()


@csrf_exempt
@api_view
async def model_metadata(request: HttpRequest, name: str, ref: str | None = None) -> Reply:
    if (refused := _method_refused(request, "GET")) is not None:
        return refused
    try:
        await access.authorize(request, model=name)
        version = await offload.without_blocking(selectors.serving_version, model_name=name, ref=ref, key=request.auth)
        versions = await offload.blocking(selectors.ready_version_numbers, version.model)
        return json_reply({
            "name": version.model.name,
            "versions": [str(v) for v in versions],
            "platform": "pytorch",
            "inputs": tensor_metadata(version.input_schema),
            "outputs": output_metadata(version.output_schema, version.postprocess),
        })
    except Exception as exc:  # noqa: BLE001 - rendered as the protocol's error
        return v2_reply(exc, request)


@csrf_exempt
@api_view
async def model_ready(request: HttpRequest, name: str, ref: str | None = None) -> Reply:
    if (refused := _method_refused(request, "GET")) is not None:
        return refused
    try:
        await access.authorize(request, model=name)
        version = await offload.without_blocking(selectors.serving_version, model_name=name, ref=ref, key=request.auth)
        try:
            await predict_service.loaded_version(version, key=request.auth)
        except Exception as exc:  # noqa: BLE001 - not ready, with the reason
            return json_reply({"name": name, "ready": False, "error": str(exc)}, 400)
        return json_reply({"name": name, "ready": True})
    except Exception as exc:  # noqa: BLE001
        return v2_reply(exc, request)


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
@api_view
async def infer(request: HttpRequest, name: str, ref: str | None = None) -> Reply:
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
        return v2_reply(exc, request)
    if header_length is None:
        return Reply(body)
    return Reply(body, content_type="application/octet-stream",
                 headers={"Inference-Header-Content-Length": str(header_length)})
