"""The answer of an async API view (v1 predict, v2 infer and model metadata), before it is a Django response.

A view made with ``api_view`` returns a ``Reply``: status, body bytes and headers. Django (under WSGI,
or with the boundary middleware taken out) calls the view as any async view and gets the
``HttpResponse`` of it; the web server's front calls the function inside (``view.replies``) and sends
the reply's status, headers and body as they are (``inference_platform.front``), for one object per
answer where an ``HttpResponse`` builds a case-insensitive header map, a cookie jar and a charset.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from http.client import responses
from typing import Any

import orjson
from django.http import HttpResponse

JSON = "application/json"


class Reply:
    """A view's answer: the header names as the view wrote them, Content-Type first."""

    def __init__(self, content: bytes, status: int = 200, content_type: str = JSON,
                 headers: dict[str, str] | None = None):
        self.status_code = status
        self.content = content
        self.headers = [("Content-Type", content_type), *(headers or {}).items()]

    @classmethod
    def of(cls, response: HttpResponse) -> Reply:
        """The reply of a Django response (a URLconf error handler's)."""
        headers = {name: value for name, value in response.items() if name.lower() != "content-type"}
        return cls(response.content, response.status_code, response.get("Content-Type", JSON), headers)

    @property
    def reason_phrase(self) -> str:  # as Django's: 499 (the client closed the request) has none
        return responses.get(self.status_code, "Unknown Status Code")

    def http_response(self) -> HttpResponse:
        response = HttpResponse(self.content, status=self.status_code, content_type=self.headers[0][1])
        for name, value in self.headers[1:]:
            response[name] = value
        return response


def json_reply(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
    """A JSON reply (numpy arrays and scalars written natively)."""
    return Reply(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), status, JSON, headers)


def api_view(replies: Callable[..., Awaitable[Reply]]) -> Callable[..., Awaitable[HttpResponse]]:
    """The Django view of `replies` (an async function of the request that returns a Reply), with
    `replies` itself at ``view.replies`` for the front. Decorators applied on top keep it there
    (``functools.wraps`` copies it)."""

    @functools.wraps(replies)
    async def view(request: Any, *args: Any, **kwargs: Any) -> HttpResponse:
        return (await replies(request, *args, **kwargs)).http_response()

    view.replies = replies  # type: ignore[attr-defined]
    return view
