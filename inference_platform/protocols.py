"""The two interfaces granian can call the front by, RSGI and ASGI, as the front needs them.

``rsgi_request`` / ``asgi_request``: an API request (``edge.FrontRequest``) with its ``AsgiExchange`` /
``RsgiExchange``: its body (read as INFERENCE_MAX_BODY_BYTES says) and its response, over each
interface. ``asgi_scope``: the ASGI scope of an RSGI request, which a2wsgi reads. ``AsgiChannels``:
ASGI's receive and send over RSGI, for a2wsgi's bridge to Django's WSGI application, with ``FileSending`` (a local file sent by granian from
its path) and ``PipeBody`` (any other streamed body, at the pace of its client).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable
from typing import Any

from granian.rsgi import ProtocolClosed

from inference.conf import hot
from inference_platform.edge import FrontRequest, joined

Scope = dict[str, Any]

# The scope key under which an RSGI request's ``AsgiChannels`` reach ``FileSending`` (through a2wsgi,
# which passes the scope on as ``environ["asgi.scope"]``).
CHANNELS = "inference.channels"
# What a streamed response may hold in this process beyond the pipe's own buffer (the kernel's, 64
# KiB on Linux) while its client reads slowly; and how long to wait for granian to open the pipe.
PIPE_BUFFER = 256 * 1024
PIPE_OPEN_WAIT = 10.0


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


def rsgi_request(scope: Any, protocol: Any) -> FrontRequest:
    """An API request over RSGI. granian's RSGI headers are text, by lowercase name; a header whose value
    is not visible ASCII is not among them. An HTTP/2 request names its host in ``:authority``."""
    headers = joined(scope.headers.items())
    if scope.authority and "host" not in headers:
        headers["host"] = scope.authority
    client = _address(scope.client)
    server = _address(scope.server)
    return FrontRequest(scope.method, scope.path, scope.scheme, headers, client[0] if client else "",
                        (server[0], str(server[1])) if server else ("unknown", "0"), scope.query_string,
                        RsgiExchange(scope, protocol))


def asgi_request(scope: Scope, receive: Any, send: Any) -> FrontRequest:
    """An API request over ASGI."""
    headers = joined((name.decode("latin-1"), value.decode("latin-1")) for name, value in scope["headers"])
    client, server = scope.get("client"), scope.get("server")
    return FrontRequest(scope["method"], scope["path"], scope.get("scheme", "http"), headers,
                        client[0] if client else "", (server[0], str(server[1])) if server else ("unknown", "0"),
                        scope.get("query_string", b"").decode("latin-1"), AsgiExchange(scope, receive, send))


def asgi_scope(scope: Any) -> Scope:
    """The ASGI HTTP scope of an RSGI one, for a2wsgi (Django's WSGI application).

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
    """ASGI's ``receive`` and ``send`` over an RSGI protocol object, for a2wsgi's WSGI bridge.

    A response of one chunk (every ``HttpResponse``) is one ``response_bytes`` call. A file on local
    disk (Django's ``FileResponse``: a job's result, a static file) is sent by granian from its path
    (``response_file``), as the client reads it: ``FileSending`` hands the path over. Any other
    streamed response goes through a pipe granian reads as a file (``PipeBody``), so that the sender
    waits for a client that reads slowly: granian's own RSGI stream (``response_stream``) would take
    every chunk at once and hold it.
    """

    def __init__(self, protocol: Any):
        self.protocol = protocol
        self.chunks: Any = None
        self.ended = False
        self.start: dict | None = None
        self.held: bytes | None = None  # the first chunk, until the next message says whether more follow
        self.file: str | None = None  # set by ``FileSending`` (a WSGI thread) before the body's messages
        self.pipe: PipeBody | None = None

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
        body, more = message.get("body", b""), message.get("more_body", False)
        if self.pipe is None:
            if more and not (self.held and body):  # a2wsgi sends each chunk with more_body, then b""
                self.held = self.held or body
                return
            assert self.start is not None, "a response body before its start"
            status = self.start["status"]
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.start["headers"]]
            if not more:
                if self.file is not None:
                    self.protocol.response_file(status, headers, self.file)
                else:
                    self.protocol.response_bytes(status, headers, (self.held or b"") + body)
                return
            self.pipe = await PipeBody.open(self.protocol, status, headers)
            await self.pipe.write(self.held or b"")
            self.held = None
        await self.pipe.write(body)
        if not more:
            await self.pipe.end()

    def close(self) -> None:
        """End a streamed response (its end, or the application failed part-way)."""
        if self.pipe is not None:
            self.pipe.close()


class PipeBody(asyncio.Protocol):
    """A streamed response's body, written to a named pipe that granian sends as a file.

    granian reads the pipe as the client takes the response, so a write waits while the pipe and
    a small buffer here are full: what a slow client costs the process is bounded (PIPE_BUFFER plus
    the kernel's pipe), where granian's RSGI ``response_stream`` queues every chunk unbounded. The
    pipe's name is gone once both ends are open. When the client has gone (granian closed its end,
    or never opened it) the rest of the body is dropped, not sent: the WSGI thread still runs to its
    end, as it would have, but nothing piles up.
    """

    def __init__(self) -> None:
        self.transport: asyncio.WriteTransport | None = None
        self.gone = False
        self.paused: asyncio.Future | None = None
        self.lost: asyncio.Future | None = None

    @classmethod
    async def open(cls, protocol: Any, status: int, headers: list[tuple[str, str]],
                   wait: float | None = None) -> PipeBody:
        body = cls()
        try:
            directory = tempfile.mkdtemp(prefix="inference-body-")
        except OSError as exc:
            raise OSError(f"cannot make the pipe of a streamed response in {tempfile.gettempdir()} ({exc}): "
                          "set TMPDIR to a writable directory") from exc
        path = os.path.join(directory, "body")
        try:
            os.mkfifo(path, 0o600)
            protocol.response_file(status, headers, path)
            fd = await _writer_end(path, PIPE_OPEN_WAIT if wait is None else wait)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            os.rmdir(directory)
        if fd is None:  # granian never opened it: the client went away before the response started
            body.gone = True
            return body
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_write_pipe(lambda: body, os.fdopen(fd, "wb", buffering=0))
        transport.set_write_buffer_limits(high=PIPE_BUFFER)
        return body

    # asyncio.Protocol
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.lost = asyncio.get_running_loop().create_future()

    def pause_writing(self) -> None:
        self.paused = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.paused is not None and not self.paused.done():
            self.paused.set_result(None)
        self.paused = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone = True
        self.resume_writing()
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)

    async def write(self, data: bytes) -> None:
        if self.gone or not data or self.transport is None:
            return
        self.transport.write(data)
        if self.paused is not None:
            await self.paused

    async def end(self) -> None:
        """The body's end: once what is buffered here is in the pipe (or the client has gone)."""
        self.close()
        if self.lost is not None:
            await self.lost

    def close(self) -> None:
        """Close the pipe once what is buffered here is written (a body ended early, too)."""
        if self.transport is not None:
            self.transport.close()


async def _writer_end(path: str, wait: float) -> int | None:
    """The pipe's writing end, once granian opens its reading end; None if it has not within `wait` s."""
    loop = asyncio.get_running_loop()
    deadline, delay = loop.time() + wait, 0.0005
    while True:
        try:
            return os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
        if loop.time() >= deadline:
            # A reader that began to open it just now would wait for a writer for ever: open and close
            # both ends here (never blocks), so that it reads an empty pipe instead.
            os.close(os.open(path, os.O_RDWR | os.O_NONBLOCK))
            return None
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


class FileSending:
    """Django's WSGI application, with a ``wsgi.file_wrapper`` that lets granian send a local file.

    Under RSGI (the scope carries its ``AsgiChannels``), a ``FileResponse`` of a regular file under
    one of `roots` (MEDIA_ROOT, STATIC_ROOT: files that stay after the response, unlike a temporary
    file deleted as it is closed), read from its start, is not read here: its path goes to the
    channels, which hand it to granian (``response_file``), and the file object is closed (Django's
    ``request_finished`` with it). Any other response, and every response under ASGI, is the
    application's own iterable.
    """

    def __init__(self, app: Any, roots: Callable[[], list[str]]):
        self.app = app
        self.roots = roots  # read per response: the settings may change (tests override them)

    def __call__(self, environ: dict, start_response: Any) -> Any:
        channels = environ.get("asgi.scope", {}).get(CHANNELS)
        if channels is None:
            return self.app(environ, start_response)
        environ["wsgi.file_wrapper"] = FileBody
        result = self.app(environ, start_response)
        if isinstance(result, FileBody):
            path = result.local_path([os.path.realpath(root) for root in self.roots()])
            if path is not None:
                channels.file = path
                result.close()
                return []
        return result


class FileBody:
    """PEP 3333's ``wsgi.file_wrapper``: a file's blocks, and its path where granian can send it."""

    def __init__(self, filelike: Any, block_size: int = 8192):
        self.filelike, self.block_size = filelike, block_size

    def __iter__(self):
        while block := self.filelike.read(self.block_size):
            yield block

    def close(self) -> None:
        self.filelike.close()

    def local_path(self, roots: list[str]) -> str | None:
        """The file's absolute path, if it is a regular file under one of `roots` (real paths) read from its start."""
        try:
            opened = os.fstat(self.filelike.fileno())
            if not stat.S_ISREG(opened.st_mode) or self.filelike.tell() != 0:
                return None
        except (AttributeError, OSError, ValueError):  # not a local file (S3), or closed
            return None
        for holder in (self.filelike, getattr(self.filelike, "file", None)):  # a Django File wraps the file
            name = getattr(holder, "name", None)
            if isinstance(name, str) and os.path.isabs(name):
                try:
                    if not os.path.samestat(opened, os.stat(name)):
                        continue
                except OSError:
                    continue
                real = os.path.realpath(name)
                if any(os.path.commonpath([real, root]) == root for root in roots):
                    return name
        return None
