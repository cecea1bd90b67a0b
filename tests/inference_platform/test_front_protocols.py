"""The front's two interfaces in this process: RSGI (what granian calls) and ASGI (any ASGI server).

granian's protocol object is replaced by a recording fake with its methods (``FakeRsgi``); the
front under test is the real one, with the real views, model and key. What must hold: both
interfaces answer alike; a request's report (metrics, access line, record, hooks) is made after its
response has been handed to the server, with others held on the loop; bodies are read as the limit says, and a client that left
is not answered; Django's WSGI routes work through the RSGI-to-ASGI channels, streamed or not.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import stat
import threading
import time
from typing import Any

import pytest
from django.core.files import File
from granian.rsgi import ProtocolClosed

from inference.jobs.models import InferenceJob
from inference.monitoring import observe
from inference.monitoring.observe import report, reports_after_response
from inference_platform import protocols
from inference_platform.front import get_application
from inference_platform.protocols import AsgiChannels, FileBody, FileSending

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
    """granian's RSGIHTTPProtocol: the body whole or in chunks; the response recorded.

    ``response_file`` of a named pipe reads it in a thread, as granian does (it opens the path and
    reads it as its client takes the bytes): ``read_gate`` holds the reading back (a slow client),
    ``read_limit`` closes the pipe after that many bytes (a client gone), ``opens=False`` never opens it.
    """

    def __init__(self, chunks: list[bytes], *, closed: bool = False, read_gate: threading.Event | None = None,
                 read_limit: int | None = None, opens: bool = True):
        self.chunks = list(chunks)
        self.closed = closed  # the client leaves before its body is read
        self.reads = 0
        self.response: tuple[int, dict[str, str], bytes] | None = None
        self.stream: list[bytes] | None = None
        self.file: str | None = None
        self.read_gate, self.read_limit, self.opens = read_gate, read_limit, opens
        self.piped = bytearray()
        self.reader: threading.Thread | None = None

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

    def response_file(self, status: int, headers: list[tuple[str, str]], file: str) -> None:
        assert self.response is None, "answered twice"
        self.response, self.file = (status, dict(headers), b""), file
        if stat.S_ISFIFO(os.stat(file).st_mode) and self.opens:
            self.reader = threading.Thread(target=self._read_pipe, args=(file,), daemon=True)
            self.reader.start()

    def _read_pipe(self, path: str) -> None:
        with open(path, "rb", buffering=0) as pipe:
            if self.read_gate is not None:
                self.read_gate.wait(30)
            while block := pipe.read(65536):
                self.piped += block
                if self.read_limit is not None and len(self.piped) >= self.read_limit:
                    return  # the client went away: granian drops its end of the pipe

    def body(self) -> bytes:
        """What the client got: the bytes answered, or what came through the pipe."""
        if self.reader is not None:
            self.reader.join(30)
            return bytes(self.piped)
        return self.response[2]


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
    start, *bodies = sent
    return (start["status"], {k.decode(): v.decode() for k, v in start["headers"]},
            b"".join(m.get("body", b"") for m in bodies))


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


def test_a_requests_report_is_made_after_its_response_with_the_others_held_on_the_loop(front, iris, key, settings):
    seen: list[Any] = []
    protocols: list[FakeRsgi] = []

    def hook(*, model, version, timings, outcome):
        seen.append((outcome.status, outcome.request_id, all(p.response is not None for p in protocols)))

    settings.INFERENCE_HOOKS = [hook]

    async def serve() -> list[Any]:
        for request_id in ("r-1", "r-2"):
            protocols.append(FakeRsgi([BODY]))
            await front.__rsgi__(FakeScope("POST", PREDICT, _auth(key, **{"X-Request-ID": request_id})), protocols[-1])
        answered = list(seen)  # both answered: their reports are held
        await asyncio.sleep(observe.REPORTS_EVERY * 4)
        return answered

    assert asyncio.run(serve()) == []
    assert [p.response[0] for p in protocols] == [200, 200]
    # Both reports ran together on the loop, after both responses, and named their requests.
    assert seen == [(200, "r-1", True), (200, "r-2", True)]


def test_a_held_report_keeps_the_time_its_request_ended(front, iris, key):
    from inference.monitoring import records
    from inference.monitoring.models import RequestRecord

    async def serve() -> float:
        protocol = FakeRsgi([BODY])
        await front.__rsgi__(FakeScope("POST", PREDICT, _auth(key, **{"X-Request-ID": "timed"})), protocol)
        answered = time.time()
        await asyncio.sleep(observe.REPORTS_EVERY * 4)  # its report runs meanwhile, later than that
        return answered

    answered = asyncio.run(serve())
    records.flush()
    at = RequestRecord.objects.get(request_id="timed").at.timestamp()
    assert answered - 1 < at <= answered


def test_held_reports_run_when_too_many_wait_and_when_the_process_stops(monkeypatch):
    monkeypatch.setattr(observe, "REPORTS_MAX", 3)
    ran: list[int] = []

    async def answer(i: int) -> None:
        with reports_after_response():
            report(lambda: ran.append(i))

    async def serve(n: int) -> list[int]:
        for i in range(n):
            await answer(i)
        return list(ran)

    assert asyncio.run(serve(3)) == [0, 1, 2]  # the third made REPORTS_MAX: run without waiting
    assert asyncio.run(serve(2)) == [0, 1, 2]  # held; that loop is closed now, its timer gone
    observe.run_held_reports()  # what the front's at_exit does
    assert ran == [0, 1, 2, 0, 1]
    observe.run_held_reports()
    assert ran == [0, 1, 2, 0, 1]  # each once
    # Reports held for a loop that closed before its timer fired run as the next loop's first arrive.
    asyncio.run(serve(1))
    asyncio.run(serve(1))
    assert ran == [0, 1, 2, 0, 1, 0]
    observe.run_held_reports()
    assert ran == [0, 1, 2, 0, 1, 0, 0]


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


async def _send(channels: AsgiChannels, status: int, chunks, sent: list[int] | None = None) -> None:
    """Send a response through the channels as a2wsgi does: each chunk with more_body, then b"";
    then close them, as the front does. `sent[0]` counts the chunks sent so far."""
    await channels.send({"type": "http.response.start", "status": status, "headers": [(b"x-a", b"1")]})
    for chunk in chunks:
        await channels.send({"type": "http.response.body", "body": chunk, "more_body": True})
        if sent is not None:
            sent[0] += 1
    await channels.send({"type": "http.response.body", "body": b""})
    channels.close()


def test_rsgi_to_asgi_channels_receive_and_answer_in_one_call_or_through_a_pipe(tmp_path, monkeypatch):
    protocol = FakeRsgi([b"ab", b"cd"])
    channels = AsgiChannels(protocol)

    async def receive():
        return [await channels.receive(), await channels.receive(), await channels.receive()]

    got = asyncio.run(receive())
    assert [(m["body"], m["more_body"]) for m in got] == [(b"ab", True), (b"cd", True), (b"", False)]

    # One chunk (any HttpResponse), or none: one call, no stream.
    for chunks in ([b"whole"], [], [b"", b"whole", b""]):
        one = FakeRsgi([])
        asyncio.run(_send(AsgiChannels(one), 201, chunks))
        assert one.response == (201, {"x-a": "1"}, b"".join(chunks)) and one.file is None and one.stream is None
    # More than one: through a named pipe granian sends as a file, whose name is gone once both ends opened.
    monkeypatch.setattr(protocols.tempfile, "tempdir", str(tmp_path))
    streamed = FakeRsgi([])
    asyncio.run(_send(AsgiChannels(streamed), 200, [b"part1", b"", b"part2", b"part3"]))
    assert streamed.response[:2] == (200, {"x-a": "1"}) and streamed.stream is None
    assert streamed.body() == b"part1part2part3"
    assert list(tmp_path.iterdir()) == []


def _stream(protocol: FakeRsgi, chunks: int, size: int = 65536):
    """(a coroutine function sending `chunks` chunks of `size` bytes through the channels, the count
    of those sent so far)."""
    sent = [0]
    return lambda: _send(AsgiChannels(protocol), 200, (bytes([n % 256]) * size for n in range(chunks)), sent), sent


def test_a_slow_client_holds_the_sender_and_a_client_gone_costs_nothing_more(monkeypatch):
    gate = threading.Event()
    slow = FakeRsgi([], read_gate=gate)
    run, sent = _stream(slow, chunks=64)  # 4 MiB

    async def stalled():
        task = asyncio.create_task(run())
        await asyncio.sleep(0.5)
        held = sent[0]
        gate.set()
        await asyncio.wait_for(task, 30)
        return held

    held = asyncio.run(stalled())
    # While the client read nothing the sender waited: what it sent fits the buffer here and the pipe's.
    assert held * 65536 <= protocols.PIPE_BUFFER + 2 * 65536 + 65536, held
    body = slow.body()
    assert len(body) == 64 * 65536 and all(body[n * 65536] == n % 256 for n in range(64))

    # A client that leaves after 128 KiB: the rest is dropped, the sender ends without waiting.
    gone = FakeRsgi([], read_limit=131072)
    run, sent = _stream(gone, chunks=64)
    asyncio.run(asyncio.wait_for(run(), 30))
    assert sent[0] == 64 and 131072 <= len(gone.body()) < 64 * 65536

    # granian never opens the pipe (its client went before the response started): given up on, not waited for.
    monkeypatch.setattr(protocols, "PIPE_OPEN_WAIT", 0.05)
    never = FakeRsgi([], opens=False)
    run, sent = _stream(never, chunks=4)
    asyncio.run(asyncio.wait_for(run(), 5))
    assert sent[0] == 4 and not os.path.exists(never.file)


def test_a_file_on_local_disk_is_sent_by_granian_from_its_path_and_any_other_read_here(tmp_path):
    media, elsewhere = tmp_path / "media", tmp_path / "tmp"
    media.mkdir(), elsewhere.mkdir()
    path = media / "result.jsonl"
    path.write_bytes(b"x" * 100_000)
    roots = [str(media)]
    with open(path, "rb") as local:
        assert FileBody(local).local_path(roots) == str(path)
        assert FileBody(local).local_path([str(elsewhere)]) is None  # not under a root: read here
    with open(path, "rb") as moved:
        moved.read(10)
        assert FileBody(moved).local_path(roots) is None  # not from its start: Content-Length counts from here
    with File(open(path, "rb"), name="result.jsonl") as wrapped:  # a storage's file: a relative name
        assert FileBody(wrapped).local_path(roots) == str(path)
    link = media / "link.jsonl"
    link.symlink_to(elsewhere / "secret")
    (elsewhere / "secret").write_bytes(b"s")
    with open(link, "rb") as linked:  # under a root by its name, elsewhere in fact
        assert FileBody(linked).local_path(roots) is None
    assert FileBody(io.BytesIO(b"remote")).local_path(roots) is None  # S3's file has no descriptor
    assert b"".join(FileBody(io.BytesIO(b"remote"), 2)) == b"remote"


def test_a_job_result_download_over_rsgi_is_granians_file_send(front, iris, key, settings, tmp_path):
    from django.core.files.base import ContentFile
    from django.core.signals import request_finished

    from inference.models import APIKey
    from registry.models import ModelVersion

    settings.MEDIA_ROOT = tmp_path
    prefix = key.split(".")[0]
    job = InferenceJob.objects.create(
        model=ModelVersion.objects.filter(model__name="iris").first().model,
        version=ModelVersion.objects.filter(model__name="iris").first(),
        api_key=APIKey.objects.get(prefix=prefix), key_prefix=prefix, input_format="jsonl",
        status=InferenceJob.Status.SUCCEEDED)
    job.input_file.save("in.jsonl", ContentFile(b"[1, 2, 3, 4]\n"), save=False)
    payload = b'{"prediction": [0.1, 0.2, 0.7]}\n' * 20_000
    job.result_file.save("result.jsonl", ContentFile(payload), save=True)
    finished = []

    def on_finished(sender, **kwargs):
        finished.append(sender)

    request_finished.connect(on_finished, weak=False, dispatch_uid="test-finished")
    try:
        got = rsgi_call(front, "GET", f"/api/v1/jobs/{job.pk}/result", _auth(key), [])
    finally:
        request_finished.disconnect(dispatch_uid="test-finished")
    assert got.response[0] == 200, got.response
    assert got.file == job.result_file.path and got.stream is None
    headers = got.response[1]
    assert int(headers["content-length"]) == len(payload) and headers["content-type"] == "application/jsonl"
    assert f'filename="job-{job.pk}.jsonl"' in headers["content-disposition"]
    assert finished, "the response was closed: Django's request_finished was sent"
    # The same route under ASGI: the file's bytes, read by Django.
    status, asgi_headers, body = asgi_call(front, "GET", f"/api/v1/jobs/{job.pk}/result", _auth(key), b"")
    assert status == 200 and int(asgi_headers["content-length"]) == len(payload) and body == payload


def test_only_a_file_under_a_root_is_handed_to_granian_by_its_path(tmp_path):
    """A temporary file (deleted as it is closed) outside MEDIA_ROOT and STATIC_ROOT is read here,
    block by block, not handed over by a path that may be gone when granian opens it."""
    media, scratch = tmp_path / "media", tmp_path / "scratch"
    media.mkdir(), scratch.mkdir()
    (media / "kept.jsonl").write_bytes(b"kept\n" * 1000)
    (scratch / "temp.jsonl").write_bytes(b"temp\n" * 1000)

    def run(path):
        channels = type("Channels", (), {"file": None})()
        environ = {"asgi.scope": {protocols.CHANNELS: channels}}

        def app(environ, start_response):
            start_response("200 OK", [])
            return environ["wsgi.file_wrapper"](open(path, "rb"), 1024)

        result = FileSending(app, lambda: [str(media)])(environ, lambda *args: None)
        body = b"".join(result)
        getattr(result, "close", lambda: None)()
        return channels.file, body

    assert run(media / "kept.jsonl") == (str(media / "kept.jsonl"), b"")
    assert run(scratch / "temp.jsonl") == (None, b"temp\n" * 1000)
    # Under ASGI (no channels in the scope) the application's own iterable, whatever the file.
    plain = FileSending(lambda environ, start_response: [b"x"], lambda: [str(media)])
    assert plain({"asgi.scope": {}}, lambda *args: None) == [b"x"]
