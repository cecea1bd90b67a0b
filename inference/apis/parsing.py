"""Fast JSON in and out of the APIs (orjson), with size and depth limits.

* ``OrjsonParser`` refuses a body over ``INFERENCE_MAX_BODY_BYTES`` with a JSON 413
  before reading it (by Content-Length) or as soon as it passes the limit (chunked).
  orjson parses without Python recursion and stops at 1024 levels of nesting, so a
  100k-deep array is a clean 400, never a RecursionError.
* ``OrjsonRenderer`` writes numpy arrays and scalars natively.
"""

from __future__ import annotations

from typing import Any

import orjson
from django.conf import settings
from rest_framework import parsers, renderers

from ..errors import ErrorCode, InvalidInput, PayloadTooLarge


def declared_length(request: Any) -> int:
    """The request's Content-Length (0 when absent or not a number)."""
    try:
        return int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def refuse_oversized_upload(request: Any, *, limit: int, what: str, setting: str, details: dict[str, Any]) -> None:
    """413 before a multipart body is read when its declared length cannot fit a file of `limit`
    bytes (plus the form's other fields, at most INFERENCE_MAX_BODY_BYTES)."""
    length = declared_length(request)
    if length > limit + settings.INFERENCE_MAX_BODY_BYTES:
        raise PayloadTooLarge(f"The upload is {length} bytes; {what} are limited to {limit} bytes ({setting}).",
                              details={**details, "limit": limit})


def read_body(request: Any, limit: int | None = None, *, stream: Any = None) -> bytes:
    """Return the raw body of a request (read from `stream`, else the request), refusing more than
    `limit` (INFERENCE_MAX_BODY_BYTES) bytes with a 413: by its Content-Length before reading it,
    or as soon as more arrives (a chunked body)."""
    limit = limit or settings.INFERENCE_MAX_BODY_BYTES
    length = declared_length(request)
    if length > limit:
        raise PayloadTooLarge(
            f"The body is {length} bytes; the limit is {limit} (INFERENCE_MAX_BODY_BYTES). "
            "Send fewer instances per request, or submit a background job with a file.",
            details={"limit": limit},
        )
    data = (stream if stream is not None else request).read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(
            f"The body is over the limit of {limit} bytes (INFERENCE_MAX_BODY_BYTES).", details={"limit": limit}
        )
    return data


def loads(data: bytes) -> Any:
    """Parse JSON bytes; a bad document is a 400 that says where it broke."""
    if not data:
        raise InvalidInput("The request body is empty; send a JSON object.", code=ErrorCode.MALFORMED_JSON)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"The body is not valid JSON: {exc}", code=ErrorCode.MALFORMED_JSON) from None


class OrjsonParser(parsers.BaseParser):
    media_type = "application/json"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        request = (parser_context or {}).get("request")
        if request is not None and stream is not None:
            return loads(read_body(request, stream=stream))
        limit = settings.INFERENCE_MAX_BODY_BYTES
        data = stream.read(limit + 1) if stream is not None else b""
        if len(data) > limit:
            raise PayloadTooLarge(f"The body is over the limit of {limit} bytes.")
        return loads(data)


class OrjsonRenderer(renderers.BaseRenderer):
    media_type = "application/json"
    format = "json"
    charset = None

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: dict | None = None) -> bytes:
        if data is None:
            return b""
        return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
