"""The two interfaces granian can call the front by, RSGI and ASGI, as the front needs them.

``AsgiExchange`` / ``RsgiExchange``: an API request's body (read as INFERENCE_MAX_BODY_BYTES says)
and its response, over each interface. ``asgi_scope``: the ASGI scope of an RSGI request, which
Django's ``ASGIRequest`` and a2wsgi read. ``AsgiChannels``: ASGI's receive and send over RSGI, for
a2wsgi's bridge to Django's WSGI application.
"""

from __future__ import annotations

from typing import Any

from granian.rsgi import ProtocolClosed

from inference.conf import hot

Scope = dict[str, Any]


class AsgiExchange:
    """One API request's body and response over ASGI."""

    def __init__(self, scope: Scope, receive: Any, send: Any):
        self.scope, self.receive, self.send = scope, receive, send

    async def body(self) -> bytes | None:
        """The body, up to one byte past INFERENCE_MAX_BODY_BYTES (the view answers 413 then); None on disconnect.

        A body whose Content-Length is over the limit is not read at all: the view refuses it by its length.
        """
        limit = hot.INFERENCE_MAX_BODY_BYTES
        if _declared_over(_content_length(self.scope["headers"]), limit):
            return b""
        chunks, size = [], 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > limit or not message.get("more_body"):
                return b"".join(chunks)

    async def respond(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        await self.send({"type": "http.response.start", "status": status,
                         "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]})
        await self.send({"type": "http.response.body", "body": body})


class RsgiExchange:
    """One API request's body and response over RSGI (granian's protocol object)."""

    def __init__(self, rsgi_scope: Any, protocol: Any):
        self.rsgi_scope, self.protocol = rsgi_scope, protocol

    async def body(self) -> bytes | None:
        """As ``AsgiExchange.body``: a declared length is read in one await; a chunked body a chunk at a
        time, no further than one chunk past the limit."""
        limit = hot.INFERENCE_MAX_BODY_BYTES
        length = self.rsgi_scope.headers.get("content-length")
        if _declared_over(length, limit):
            return b""
        try:
            if length is not None:
                return await self.protocol()
            chunks, size = [], 0
            async for chunk in self.protocol:
                if not chunk:  # the end (granian also ends a stream it could not read with an empty chunk)
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    break
            return b"".join(chunks)
        except ProtocolClosed:  # the client went away before its body was read
            return None

    async def respond(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.protocol.response_bytes(status, headers, body)


def _content_length(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == b"content-length":
            return value
    return None


def _declared_over(length: bytes | str | None, limit: int) -> bool:
    try:
        return length is not None and int(length) > limit
    except ValueError:  # not a number: the server has refused such a request already
        return False


def _address(value: str) -> tuple[str, int] | None:
    host, _, port = value.rpartition(":")
    try:
        return host, int(port)
    except ValueError:
        return None


def asgi_scope(scope: Any) -> Scope:
    """The ASGI HTTP scope of an RSGI one: what Django's ``ASGIRequest`` and a2wsgi read.

    granian's RSGI headers are text; a header whose value is not visible ASCII is not among them. An
    HTTP/2 request names its host in ``:authority``, which Django reads as the Host header."""
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in scope.headers.items()]
    if scope.authority and "host" not in scope.headers:
        headers.append((b"host", scope.authority.encode("latin-1")))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": scope.http_version,
        "method": scope.method,
        "scheme": scope.scheme,
        "path": scope.path,
        "root_path": "",
        "query_string": scope.query_string.encode("latin-1"),
        "headers": headers,
        "client": _address(scope.client),
        "server": _address(scope.server),
    }


class AsgiChannels:
    """ASGI's ``receive`` and ``send`` over an RSGI protocol object, for a2wsgi's WSGI bridge."""

    def __init__(self, protocol: Any):
        self.protocol = protocol
        self.chunks: Any = None
        self.ended = False
        self.start: dict | None = None
        self.transport: Any = None

    async def receive(self) -> dict:
        if self.ended:
            await self.protocol.client_disconnect()
            return {"type": "http.disconnect"}
        if self.chunks is None:
            self.chunks = aiter(self.protocol)
        try:
            chunk = await anext(self.chunks)
        except StopAsyncIteration:
            chunk = b""
        except ProtocolClosed:
            self.ended = True
            return {"type": "http.disconnect"}
        self.ended = not chunk
        return {"type": "http.request", "body": chunk, "more_body": not self.ended}

    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.start = message
            return
        body = message.get("body", b"")
        if self.transport is None:
            assert self.start is not None, "a response body before its start"
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.start["headers"]]
            if not message.get("more_body"):
                self.protocol.response_bytes(self.start["status"], headers, body)
                return
            self.transport = self.protocol.response_stream(self.start["status"], headers)
        if body:
            await self.transport.send_bytes(body)

    def close(self) -> None:
        """End a streamed response: granian ends it when its transport is released."""
        self.transport = None
