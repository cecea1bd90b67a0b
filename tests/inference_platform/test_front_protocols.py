"""The front's two interfaces in this process: RSGI (what granian calls) and ASGI (any ASGI server).

granian's protocol object is replaced by a recording fake with its methods (``FakeRsgi``); the
front under test is the real one, with the real views, model and key. What must hold: both
interfaces answer alike; a request's report (metrics, access line, record, hooks) is made once its
response has been handed to the server; bodies are read as the limit says, and a client that left
is not answered; Django's WSGI routes work through the RSGI-to-ASGI channels, streamed or not.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from granian.rsgi import ProtocolClosed

from inference.jobs.models import InferenceJob
from inference.monitoring.observe import report, reports_after_response
from inference_platform.front import get_application
from inference_platform.protocols import AsgiChannels

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

BODY = json.dumps({"instances": [[5.1, 3.5, 1.4, 0.2]]}).encode()
PREDICT = "/api/v1/models/iris/predict"


class FakeHeaders:
    """granian's RSGIHeaders: lower-case names, text values."""

    def __init__(self, pairs: list[tuple[str, str]]):
        self.pairs = [(k.lower(), v) for k, v in pairs]

    def items(self) -> list[tuple[str, str]]:
        return list(self.pairs)

    def get(self, key: str, default: Any = None) -> Any:
        return next((v for k, v in self.pairs if k == key), default)

    def __contains__(self, key: str) -> bool:
        return any(k == key for k, _ in self.pairs)


class FakeScope:
    def __init__(self, method: str, path: str, headers: list[tuple[str, str]], query_string: str = ""):
        self.proto, self.http_version, self.scheme = "http", "1.1", "http"
        self.method, self.path, self.query_string = method, path, query_string
        self.server, self.client = "127.0.0.1:8000", "127.0.0.1:50000"
        self.headers = FakeHeaders(headers)
        self.authority = None  # HTTP/2's :authority; None before HTTP/2


class FakeTransport:
    def __init__(self, sink: list[bytes]):
        self.sink = sink

    async def send_bytes(self, data: bytes) -> None:
        self.sink.append(data)


class FakeRsgi:
    """granian's RSGIHTTPProtocol: the body whole or in chunks; the response recorded."""

    def __init__(self, chunks: list[bytes], *, closed: bool = False):
        self.chunks = list(chunks)
        self.closed = closed  # the client leaves before its body is read
        self.reads = 0
        self.response: tuple[int, dict[str, str], bytes] | None = None
        self.stream: list[bytes] | None = None

    async def __call__(self) -> bytes:
        if self.closed:
            raise ProtocolClosed("RSGI transport is closed")
        self.reads = len(self.chunks)
        return b"".join(self.chunks)

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        if self.closed:
            raise ProtocolClosed("RSGI transport is closed")
        if self.reads > len(self.chunks):
            raise StopAsyncIteration
        self.reads += 1
        return self.chunks[self.reads - 1] if self.reads <= len(self.chunks) else b""

    async def client_disconnect(self) -> None:
        await asyncio.sleep(3600)

    def response_bytes(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        assert self.response is None, "answered twice"
        self.response = (status, dict(headers), body)

    def response_stream(self, status: int, headers: list[tuple[str, str]]) -> FakeTransport:
        assert self.response is None, "answered twice"
        self.stream = []
        self.response = (status, dict(headers), b"")
        return FakeTransport(self.stream)


def rsgi_call(front, method: str, path: str, headers: list[tuple[str, str]], chunks: list[bytes],
              **kwargs) -> FakeRsgi:
    protocol = FakeRsgi(chunks, **kwargs)
    asyncio.run(front.__rsgi__(FakeScope(method, path, headers), protocol))
    return protocol


def asgi_call(front, method: str, path: str, headers: list[tuple[str, str]], body: bytes):
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "root_path": "", "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(front(scope, receive, send))
    start, body_message = sent
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body_message["body"]


@pytest.fixture
def front():
    return get_application()


def _auth(key: str, **more: str) -> list[tuple[str, str]]:
    return [("Host", "testserver"), ("Content-Type", "application/json"), ("Authorization", f"Api-Key {key}"),
            *more.items()]


def test_rsgi_and_asgi_answer_alike(front, iris, key):
    cases = [
        (PREDICT, BODY, 200),
        (PREDICT, b'{"instances": [', 400),
        ("/api/v1/models/nope/predict", BODY, 404),
        ("/v2/models/iris/infer", json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                                         "data": [5.1, 3.5, 1.4, 0.2]}]}).encode(), 200),
    ]
    for path, body, status in cases:
        headers = _auth(key, **{"X-Request-ID": "same-id", "Content-Length": str(len(body))})
        rsgi = rsgi_call(front, "POST", path, headers, [body])
        asgi = asgi_call(front, "POST", path, headers, body)
        assert rsgi.response is not None
        assert rsgi.response[0] == asgi[0] == status, (path, rsgi.response, asgi)
        assert json.loads(rsgi.response[2]) == json.loads(asgi[2]), path
        assert rsgi.response[1] == asgi[1], path
        assert rsgi.response[1]["X-Request-ID"] == "same-id"


def test_a_requests_report_is_made_after_its_response_is_handed_over(front, iris, key, settings):
    seen: list[Any] = []
    protocol_box: list[FakeRsgi] = []

    def hook(*, model, version, timings, outcome):
        seen.append((outcome.status, outcome.request_id, protocol_box[0].response is not None))

    settings.INFERENCE_HOOKS = [hook]
    protocol = FakeRsgi([BODY])
    protocol_box.append(protocol)
    asyncio.run(front.__rsgi__(FakeScope("POST", PREDICT, _auth(key, **{"X-Request-ID": "r-1"})), protocol))
    assert protocol.response is not None and protocol.response[0] == 200
    assert seen == [(200, "r-1", True)]  # the hook ran, named the request, and the response was out already


def test_reports_outside_a_server_run_at_once_and_a_failing_one_is_logged(caplog):
    order: list[str] = []
    report(lambda: order.append("at once"))
    assert order == ["at once"]

    def broken() -> None:
        raise RuntimeError("hook bug")

    with caplog.at_level(logging.ERROR, logger="inference.monitoring"):
        with reports_after_response():
            report(lambda: order.append("first"))
            report(broken)
            report(lambda: order.append("third"))
            order.append("response sent")
    assert order == ["at once", "response sent", "first", "third"]
    assert "reporting a request failed" in caplog.text and "hook bug" in caplog.text


def test_rsgi_bodies_follow_the_limit_and_a_client_that_left_is_not_answered(front, iris, key, settings):
    settings.INFERENCE_MAX_BODY_BYTES = 1000
    # Declared over the limit: refused by its length, the body never read.
    big = rsgi_call(front, "POST", PREDICT, _auth(key, **{"Content-Length": "5000"}), [b"x" * 5000])
    assert big.response[0] == 413 and big.reads == 0
    # Chunked (no length): read no further than the chunk that passes the limit.
    chunked = rsgi_call(front, "POST", PREDICT, _auth(key), [b"[" + b"0.5," * 200] * 10)
    assert chunked.response[0] == 413 and json.loads(chunked.response[2])["error"]["code"] == "payload_too_large"
    assert chunked.reads == 2
    # A chunked body within the limit is whole.
    ok = rsgi_call(front, "POST", PREDICT, _auth(key), [BODY[:10], BODY[10:]])
    assert ok.response[0] == 200 and len(json.loads(ok.response[2])["predictions"]) == 1
    # The client left before its body was read: no answer, for a declared length and a chunked body.
    for extra in ({"Content-Length": str(len(BODY))}, {}):
        gone = rsgi_call(front, "POST", PREDICT, _auth(key, **extra), [BODY], closed=True)
        assert gone.response is None


def test_an_http2_requests_authority_is_its_host(front, iris, key):
    """HTTP/2 has no Host header: its :authority is checked against ALLOWED_HOSTS instead."""
    headers = [(k, v) for k, v in _auth(key) if k != "Host"]
    for authority, status in (("testserver", 200), ("evil.example", 400)):
        scope = FakeScope("POST", PREDICT, headers)
        scope.http_version, scope.authority = "2", authority
        protocol = FakeRsgi([BODY])
        asyncio.run(front.__rsgi__(scope, protocol))
        assert protocol.response[0] == status, (authority, protocol.response)


def test_django_routes_over_rsgi(front, iris, key):
    health = rsgi_call(front, "GET", "/healthz", [("Host", "testserver")], [])
    assert health.response[0] == 200
    assert json.loads(b"".join(health.stream or [health.response[2]]))["status"] == "ok"
    models = rsgi_call(front, "GET", "/api/v1/models", _auth(key), [])
    assert models.response[0] == 200
    assert [m["name"] for m in json.loads(b"".join(models.stream or [models.response[2]]))["models"]] == ["iris"]
    # A body sent in chunks reaches a WSGI view whole: a job of two instances is queued.
    chunks = [b'{"instances": [[5.1, 3.5, 1.4, 0.2], ', b'[6.2, 2.9, 4.3, 1.3]]}']
    job = rsgi_call(front, "POST", "/api/v1/models/iris/jobs",
                    _auth(key, **{"Content-Length": str(sum(map(len, chunks)))}), chunks)
    assert job.response[0] == 202, (job.response, job.stream)
    answer = json.loads(b"".join(job.stream or [job.response[2]]))
    assert InferenceJob.objects.get(pk=answer["id"]).progress_total == 2


def test_rsgi_to_asgi_channels_stream_and_end():
    protocol = FakeRsgi([b"ab", b"cd"])
    channels = AsgiChannels(protocol)

    async def exchange():
        got = [await channels.receive(), await channels.receive(), await channels.receive()]
        await channels.send({"type": "http.response.start", "status": 201, "headers": [(b"x-a", b"1")]})
        await channels.send({"type": "http.response.body", "body": b"part1", "more_body": True})
        await channels.send({"type": "http.response.body", "body": b"part2", "more_body": True})
        await channels.send({"type": "http.response.body", "body": b""})
        return got

    got = asyncio.run(exchange())
    assert [(m["body"], m["more_body"]) for m in got] == [(b"ab", True), (b"cd", True), (b"", False)]
    assert protocol.response[:2] == (201, {"x-a": "1"}) and protocol.stream == [b"part1", b"part2"]
    channels.close()
    assert channels.transport is None  # released: granian ends the streamed response

    one = FakeRsgi([])
    whole = AsgiChannels(one)

    async def single():
        await whole.send({"type": "http.response.start", "status": 204, "headers": []})
        await whole.send({"type": "http.response.body", "body": b""})

    asyncio.run(single())
    assert one.response == (204, {}, b"") and one.stream is None
