"""The web server as `make run` starts it (granian + inference_platform.front), as clients meet it.

Predict and infer are served on the process's event loop (inference.steps); everything else
is Django's WSGI application on a thread pool. These tests start the real server process on
the test database and check that a client cannot tell the two paths from the in-process WSGI
answers: same bodies, statuses, error format and headers; that waiting requests are batched
without a thread each; and that a stopping server writes what it buffered.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.http as triton
from django.test import Client

from registry.architectures import MLP
from tests.conftest import small_mlp
from tests.inference.support import ROWS, config, forward, make_key, ready
from tests.processes import Gunicorn, WebServer, free_port

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

LIMIT = 4096  # INFERENCE_MAX_BODY_BYTES for both the server and this process
PREDICT = "/api/v1/models/mlp/predict"


def call(base: str, path: str, *, data: bytes | None = None, headers: dict | None = None, method: str | None = None):
    """(status, headers, body bytes) over HTTP."""
    request = urllib.request.Request(base + path, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def in_process(path: str, *, data: bytes | None = None, headers: dict | None = None):
    """The same request through Django's WSGI handler in this process (the sync path)."""
    extra = {"HTTP_" + k.upper().replace("-", "_"): v for k, v in (headers or {}).items() if k.lower() != "content-type"}
    response = Client().generic("POST", path, data or b"", content_type=(headers or {}).get("Content-Type", ""), **extra)
    return response.status_code, response.headers, response.content


@pytest.fixture(params=["rsgi", "asgi"])  # granian's own interface (the default) and ASGI (WEB_INTERFACE=asgi)
def served(settings, tmp_path, request):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.INFERENCE_MAX_BODY_BYTES = LIMIT
    module = small_mlp(0)
    ready(module, model_name="mlp", aliases=["production"])
    key = make_key("front", rate="100000/s")
    web = WebServer(settings.MEDIA_ROOT, env={"INFERENCE_MAX_BODY_BYTES": str(LIMIT), "WEB_INTERFACE": request.param})
    web.start()
    try:
        yield web, module, key
    finally:
        web.stop()


def test_predict_and_infer_answer_as_the_wsgi_path_does(served):
    web, module, key = served
    auth = {"Authorization": f"Api-Key {key}", "Content-Type": "application/json"}
    body = json.dumps({"instances": ROWS}).encode()

    status, headers, raw = call(web.url, PREDICT, data=body, headers={**auth, "X-Request-ID": "client-id-1"})
    assert status == 200, raw
    answer = json.loads(raw)
    np.testing.assert_allclose(answer["predictions"], forward(module, ROWS), rtol=1e-5, atol=1e-6)
    assert answer["id"] == "client-id-1" and headers["X-Request-ID"] == "client-id-1"
    assert int(headers["Content-Length"]) == len(raw) and headers["Content-Type"] == "application/json"
    assert headers["X-Frame-Options"] == "DENY" and headers["X-Content-Type-Options"] == "nosniff"
    status, _, raw = call(web.url, "/api/v1/models/mlp/versions/1/predict", data=body, headers=auth)
    assert status == 200 and json.loads(raw)["version"] == 1

    # Refusals: the same status, JSON body and headers as Django's own handler gives.
    cases = [
        ("no key", PREDICT, body, {"Content-Type": "application/json"}),
        ("a wrong key", PREDICT, body, {**auth, "Authorization": "Api-Key nope.nope"}),
        ("broken JSON", PREDICT, b'{"instances": [', auth),
        ("not JSON", PREDICT, body, {**auth, "Content-Type": "text/plain"}),
        ("an unknown field", PREDICT, json.dumps({"instancez": ROWS}).encode(), auth),
        ("a wrong shape", PREDICT, json.dumps({"instances": [[1.0]]}).encode(), auth),
        ("an unknown model", "/api/v1/models/nope/predict", body, auth),
        ("an unknown version", "/api/v1/models/mlp/versions/9/predict", body, auth),
        ("a body over the limit", PREDICT, json.dumps({"instances": [[0.5] * 4] * 400}).encode(), auth),
        ("v2 without a key", "/v2/models/mlp/infer", b"{}", {"Content-Type": "application/json"}),
        ("v2 with a bad body", "/v2/models/mlp/infer", b'{"inputs": 3}', auth),
    ]
    for what, path, data, headers in cases:
        got, expected = call(web.url, path, data=data, headers=headers), in_process(path, data=data, headers=headers)
        assert got[0] == expected[0] and got[0] >= 400, (what, got, expected)
        assert json.loads(got[2]) == json.loads(expected[2]), what
        for header in ("WWW-Authenticate", "Retry-After", "Content-Type"):
            assert got[1].get(header) == expected[1].get(header), (what, header)

    # A chunked body (no Content-Length) past the limit is a 413 too, read no further than the limit.
    with socket.create_connection(("127.0.0.1", web.port), timeout=30) as sock:
        chunk = b"[" + b"0.5," * 2000
        sock.sendall(b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Authorization: Api-Key " + key.encode() + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b'"payload_too_large"' in reply

    # The body is read after authentication: a request with a wrong key is answered from its headers,
    # while the client has sent none of the 4,000 bytes it announced (before: the front waited for them).
    for path in (PREDICT, "/v2/models/mlp/infer"):
        with socket.create_connection(("127.0.0.1", web.port), timeout=10) as sock:
            sock.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Authorization: Api-Key guess.wrong\r\nContent-Length: 4000\r\n\r\n")
            reply = sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 401"), (path, reply[:200])
    # A client that leaves halfway through its body is not answered and costs nothing after.
    with socket.create_connection(("127.0.0.1", web.port), timeout=10) as sock:
        sock.sendall(b"POST " + PREDICT.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Authorization: Api-Key " + key.encode() + b"\r\nContent-Length: 4000\r\n\r\n{\"instances\": [")
    assert call(web.url, PREDICT, data=body, headers=auth)[0] == 200

    # The Host check (ALLOWED_HOSTS) applies as in the middleware chain: a 400.
    status, _, _ = call(web.url, PREDICT, data=body, headers={**auth, "Host": "evil.example"})
    assert status == 400

    # The Open Inference Protocol through tritonclient, JSON and binary tensors.
    client = triton.InferenceServerClient(url=web.url.removeprefix("http://"), network_timeout=30)
    x = np.array(ROWS, dtype=np.float32)
    for binary in (False, True):
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        result = client.infer("mlp", [tensor], headers={"Authorization": f"Api-Key {key}"},
                              outputs=[triton.InferRequestedOutput("output", binary_data=binary)])
        np.testing.assert_allclose(result.as_numpy("output"), forward(module, ROWS), rtol=1e-5, atol=1e-6)

    # Every other route is Django's WSGI application: API, health, admin pages.
    status, _, raw = call(web.url, "/api/v1/models", headers=auth)
    assert status == 200 and [m["name"] for m in json.loads(raw)["models"]] == ["mlp"]
    assert call(web.url, "/healthz")[0] == 200
    status, headers, raw = call(web.url, "/admin/login/")
    assert status == 200 and b"csrfmiddlewaretoken" in raw and "csrftoken" in headers.get("Set-Cookie", "")
    status, _, _ = call(web.url, "/api/v1/models/mlp/predict", headers=auth)  # GET: not the loop's route
    assert status == 405


def _status(pid: int, field: str) -> int:
    """A number from /proc/<pid>/status (``Threads``, ``VmRSS`` in KiB)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(f"{field}:")))


def _rss(pids: list[int]) -> int:
    """Resident memory of the processes, in bytes."""
    return sum(_status(pid, "VmRSS") for pid in pids) * 1024


def _slow_get(port: int, path: str, headers: dict[str, str], stall: float, during) -> tuple[bytes, bytes, object]:
    """GET with a small receive buffer: read a little, stall `stall` s, call `during()`, then read the
    rest. Returns (head, body, what `during` returned)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", port))
        lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{lines}\r\n".encode())
        data = sock.recv(65536)
        time.sleep(stall)
        seen = during()
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        chunks = [body]
        size = len(body)
        while size < length:
            chunk = sock.recv(1 << 20)
            assert chunk, "the server closed before the whole body"
            chunks.append(chunk)
            size += len(chunk)
        return head, b"".join(chunks), seen


def test_a_large_job_result_reaches_a_slow_client_whole_without_the_process_holding_it(served):
    """A job's result file (48 MiB) downloaded by a client that stops reading for a while: the web
    process does not read the file ahead of the client (granian sends it from its path under RSGI;
    a2wsgi waits for the client under ASGI), and the client gets every byte."""
    from django.core.files.base import ContentFile

    from inference.jobs.models import InferenceJob
    from inference.models import APIKey
    from registry.models import ModelVersion

    web, _, key = served
    prefix = key.split(".")[0]
    version = ModelVersion.objects.get(model__name="mlp")
    job = InferenceJob.objects.create(model=version.model, version=version, api_key=APIKey.objects.get(prefix=prefix),
                                      key_prefix=prefix, input_format="jsonl", status=InferenceJob.Status.SUCCEEDED)
    job.input_file.save("in.jsonl", ContentFile(b"[1, 2, 3, 4]\n"), save=False)
    line = b'{"prediction": [0.125, 0.25, 0.625]}\n'
    payload = b"".join(b"%08d" % n + line for n in range(48 * 1024 * 1024 // (8 + len(line))))
    job.result_file.save("result.jsonl", ContentFile(payload), save=True)
    before = _rss(web.workers())
    head, body, during = _slow_get(web.port, f"/api/v1/jobs/{job.pk}/result", {"Authorization": f"Api-Key {key}"},
                                   stall=1.5, during=lambda: _rss(web.workers()))
    assert head.startswith(b"HTTP/1.1 200"), head
    assert body == payload
    assert during - before < 16 * 1024 * 1024, (before, during)


def test_a_piped_body_under_granian_waits_for_a_slow_client_and_ends_for_a_gone_one(tmp_path):
    """``protocols.PipeBody`` (every streamed response of a Django route under RSGI that is not a
    local file) under the real granian: the body arrives whole and in order; while the client
    reads nothing the application is held (what it wrote is what the pipe and the sockets hold, not
    the 32 MiB); for a client that leaves, the body ends (granian closes the pipe, or reads and
    drops the rest) without the process holding it."""
    from tests.inference_platform import pipe_app

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    server = subprocess.Popen([sys.executable, "-m", "granian", "--interface", "rsgi", "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1", "tests.inference_platform.pipe_app:app"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"

    def state() -> tuple[int, int]:
        written, ended = urllib.request.urlopen(base + "/written", timeout=5).read().split()
        return int(written), int(ended)

    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                state()
                break
            except OSError:
                assert time.monotonic() < deadline, "granian did not start"
                time.sleep(0.1)
        worker = int(Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()[0])

        _, body, (held, _) = _slow_get(port, "/body", {}, stall=1.5, during=state)
        assert len(body) == pipe_app.SIZE
        assert all(body[n * pipe_app.CHUNK] == n % 256 for n in range(pipe_app.SIZE // pipe_app.CHUNK))
        assert held < 12 * 1024 * 1024, held  # kernel buffers (pipe, sockets) and granian's read-ahead

        before = _rss([worker])
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"GET /body HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                sock.recv(100)
        deadline = time.monotonic() + 20
        while state()[1] < 4:
            assert time.monotonic() < deadline, f"a body for a client gone did not end: {state()}"
            time.sleep(0.1)
        assert _rss([worker]) - before < 16 * 1024 * 1024
    finally:
        server.terminate()
        server.wait(10)


def test_waiting_requests_are_batched_without_a_thread_each(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    # Wide enough that a forward pass takes milliseconds: a fast model is computed inline on
    # the loop, one request at a time, and forms no batches to count.
    torch.manual_seed(0)
    wide = MLP(4, [4096, 4096], 3).eval()
    hidden = {"in_features": 4, "hidden": [4096, 4096], "out_features": 3}
    ready(wide, config(architecture_args=hidden, batching={"max_batch_size": 32, "max_batch_delay_ms": 2}),
          model_name="mlp", aliases=["production"])
    key = make_key("front", rate="100000/s")
    web = WebServer(settings.MEDIA_ROOT, env={"INFERENCE_RECORDS_FLUSH_SECONDS": "3600",
                                                      "INFERENCE_METRICS_TOKEN": "metrics-token"})
    clients, per_client = 48, 10
    statuses: list[int] = []
    peak_threads = 0
    try:
        web.start()
        (worker,) = web.workers()
        body = json.dumps({"instances": ROWS[:1]}).encode()
        headers = {"Authorization": f"Api-Key {key}", "Content-Type": "application/json"}
        assert call(web.url, PREDICT, data=body, headers=headers)[0] == 200  # loaded

        def client() -> None:
            for _ in range(per_client):
                statuses.append(call(web.url, PREDICT, data=body, headers=headers)[0])

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            peak_threads = max(peak_threads, _status(worker, "Threads"))
            time.sleep(0.01)
        status, _, raw = call(web.url, "/metrics", headers={"Authorization": "Bearer metrics-token"})
        metrics = raw.decode()

        # Stopping writes the request records still buffered (the flush interval is an hour).
        web.stop(timeout=30)
    finally:
        web.stop()
    assert statuses.count(200) == clients * per_client, sorted(set(statuses))
    # 48 requests in flight at once did not take 48 threads: the loop, granian's runtime, the
    # batcher, torch's and the WSGI pool's threads.
    assert peak_threads < clients, peak_threads
    requests = _sample(metrics, 'inference_exec_count_total{model="mlp",version="1"}')
    served = _sample(metrics, 'inference_count_total{model="mlp",version="1"}')
    assert served == clients * per_client + 1 and requests < served, (requests, served)  # batches of several
    from inference.monitoring.models import RequestRecord

    assert RequestRecord.objects.filter(model="mlp").count() == clients * per_client + 1


def test_overload_is_a_fast_503_with_retry_after(settings, tmp_path):
    """More requests in flight than the batcher's queue holds: the rest are refused at once
    (503 overloaded + Retry-After), none waits out a timeout, and the server keeps serving."""
    settings.MEDIA_ROOT = tmp_path / "media"
    torch.manual_seed(0)
    wide = MLP(4, [4096, 4096], 3).eval()
    hidden = {"in_features": 4, "hidden": [4096, 4096], "out_features": 3}
    ready(wide, config(architecture_args=hidden,
                       batching={"max_batch_size": 2, "max_batch_delay_ms": 2, "max_queue_size": 2}),
          model_name="mlp", aliases=["production"])
    key = make_key("front", rate="100000/s")
    web = WebServer(settings.MEDIA_ROOT)
    body = json.dumps({"instances": ROWS[:1]}).encode()
    headers = {"Authorization": f"Api-Key {key}", "Content-Type": "application/json"}
    answers: list[tuple[int, float, str | None, bytes]] = []
    try:
        web.start()
        assert call(web.url, PREDICT, data=body, headers=headers)[0] == 200  # loaded

        def client() -> None:
            t0 = time.perf_counter()
            status, got, raw = call(web.url, PREDICT, data=body, headers=headers)
            answers.append((status, time.perf_counter() - t0, got.get("Retry-After"), raw))

        threads = [threading.Thread(target=client) for _ in range(48)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        after = call(web.url, PREDICT, data=body, headers=headers)[0]
    finally:
        web.stop()
    refused = [a for a in answers if a[0] == 503]
    assert refused and {a[0] for a in answers} == {200, 503}, sorted({a[0] for a in answers})
    for _status, seconds, retry_after, raw in refused:
        assert json.loads(raw)["error"]["code"] == "overloaded" and int(retry_after) >= 1
        assert seconds < 5, seconds  # refused at once, not after INFERENCE_PREDICT_TIMEOUT
    assert after == 200


def _sample(metrics: str, name: str) -> float:
    for line in metrics.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics:\n{metrics[:2000]}")


def test_a_wsgi_server_still_serves_the_platform(settings, tmp_path):
    """`inference_platform.wsgi:application` under gunicorn (deploy/gunicorn.conf.py): the same
    request path, run blocking on a thread per request."""
    settings.MEDIA_ROOT = tmp_path / "media"
    module = small_mlp(0)
    ready(module, model_name="mlp", aliases=["production"])
    key = make_key("wsgi", rate="100000/s")
    web = Gunicorn(settings.MEDIA_ROOT, env={"GUNICORN_THREADS": "4"})
    try:
        web.start()
        status, headers, raw = call(web.url, PREDICT, data=json.dumps({"instances": ROWS}).encode(),
                                    headers={"Authorization": f"Api-Key {key}", "Content-Type": "application/json"})
    finally:
        web.stop()
    assert status == 200, raw
    np.testing.assert_allclose(json.loads(raw)["predictions"], forward(module, ROWS), rtol=1e-5, atol=1e-6)
    assert headers["X-Request-ID"] == json.loads(raw)["id"]
