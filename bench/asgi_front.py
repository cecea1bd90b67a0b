"""EXPERIMENT: an async front for the predict path, against the platform as `make run` serves it.

    python -m bench.asgi_front [--seconds 6] [--rounds 2] [--scenarios iris:16,iris:1,mlp:32,mlp:1]

Not the platform's code and not served by `make run`: a measured prototype of the next step
for issue 4 (docs/benchmarks.md, "An async front"). ``app`` below is an ASGI application run
by granian (2 worker processes, one event loop each) that answers
``POST /api/v1/models/<name>/predict`` with the platform's own services: API-key
authentication, scope check, rate limit, visibility, body parsing, pipeline, batcher,
metrics, access log and request records. What it leaves out: every other route, request
ids, the Host check, security headers, body-size limits and the error format's details.

Why it is faster: a WSGI request holds a thread until it is answered, so batching needs
tens of threads per process, and those threads contend for the GIL. Here a request waiting
for its batch is a suspended coroutine: one thread per process runs all the Python, the
batcher thread computes. A fast model (forward < 2 ms) is computed inline on the loop, as
the WSGI path does when the batcher is idle.

One trap found on the way: Django's ``caches`` are per asyncio context, so under ASGI every
request built a new cache object (new SQLite connections, a schema check): 60-160 req/s. The
prototype keeps one cache object per process.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
from pathlib import Path

ROUTE = re.compile(r"^/api/v1/models/([^/]+)/predict/?$")
app = None  # set by _build_app() when imported by granian (BENCH_ASGI_FRONT=1)


def _build_app():
    import asyncio
    import gc
    import types

    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "inference_platform.settings")
    # The few database reads of the path (a key's info on a cache miss, the registry every
    # poll interval) run on the loop here; a real implementation moves them to a thread.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    django.setup()
    import orjson
    from django.core.cache import caches

    from inference import services
    from inference.apis.parsing import loads
    from inference.auth import APIKeyAuthentication, HasScope, rate_limit
    from inference.errors import InvalidInput

    caches._connections = types.SimpleNamespace()  # one cache object per process, not per context
    gc.collect()
    gc.freeze()

    class Request:  # what the authentication class and the rate limit read
        method = "POST"

        def __init__(self, headers):
            self.META = {"HTTP_" + k.decode("latin-1").upper().replace("-", "_"): v.decode("latin-1")
                         for k, v in headers}

    async def predict(name: str, headers, body: bytes) -> tuple[int, dict]:
        request = Request(headers)
        info = APIKeyAuthentication().authenticate(request)[0]
        request.auth = info
        if not HasScope().has_permission(request, None):
            return 403, {"error": {"code": "forbidden"}}
        rate_limit(request, model=name)
        services.visible_model(model_name=name, key=info)
        try:
            parsed = loads(body)
        except Exception as exc:  # noqa: BLE001
            raise InvalidInput(f"The body is not JSON: {exc}", path="") from exc
        with services.observed(name) as outcome:
            instances, parameters = services.parse_predict_body(parsed)
            version, loaded = services.served_version(model_name=name, ref=None, key=info)
            outcome.version, outcome.loaded = version.version, loaded
            served, batcher = loaded.served, loaded.batcher
            prepared = served.prepare(instances, parameters, maybe_bools=b"true" in body or b"false" in body)
            if batcher._compute_ewma and batcher._compute_ewma < 0.002:
                pending = batcher.run(prepared.arrays, 30)  # a fast model: inline when idle, as WSGI does
            else:
                pending = batcher.submit(prepared.arrays)
                await asyncio.wrap_future(pending.future)
            predictions = served.finish(pending.future.result(0), prepared)
            outcome.instances = prepared.n
        return 200, {"id": "", "model": name, "version": version.version, "predictions": predictions}

    async def asgi(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        match = ROUTE.match(scope["path"])
        if scope["method"] != "POST" or not match:
            status, out = 404, {"error": {"code": "not_found", "message": "the prototype serves predict only"}}
        else:
            try:
                status, out = await predict(match.group(1), scope["headers"], body)
            except Exception as exc:  # noqa: BLE001 - the platform's API errors carry their status
                status, out = getattr(exc, "status_code", 500), {"error": {"message": str(exc)}}
        data = orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
        await send({"type": "http.response.body", "body": data})

    return asgi


if os.environ.get("BENCH_ASGI_FRONT") == "1":
    app = _build_app()


def _wait_any_answer(url: str, proc: subprocess.Popen, timeout: float) -> None:
    """Wait until the server answers at all (the prototype answers 404 to anything but predict)."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the async front exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def _post(url: str, body: str, headers: dict) -> tuple[int, str]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body.encode(), headers={**headers, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def main() -> None:
    from .__main__ import iris_artifacts, rows_for
    from .common import PY, ROOT, Platform, free_port, mlp_config, run_wrk, write_mlp_safetensors

    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--scenarios", default="iris:16,iris:1,mlp:32,mlp:1")
    args = ap.parse_args()
    granian = Path(PY).parent / "granian"
    if not granian.exists():
        raise SystemExit("granian is not installed in this venv: pip install granian==2.8.7 (the prototype's server)")

    platform = Platform()
    platform.setup()
    platform.register("mlp", write_mlp_safetensors(platform.data_dir / "mlp.safetensors"), mlp_config(32, 5.0, 1024))
    iris_path, iris_config = iris_artifacts(platform.data_dir)
    platform.register("iris", iris_path, iris_config)
    key = platform.create_key()
    headers = {"Authorization": f"Api-Key {key}"}
    port = free_port()
    metrics_dir = platform.data_dir / "prometheus-asgi"
    metrics_dir.mkdir()
    front = None
    try:
        platform.start()
        env = dict(platform.env, BENCH_ASGI_FRONT="1", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
        log = open(platform.data_dir / "granian.log", "ab")
        front = subprocess.Popen([str(granian), "--interface", "asgi", "--workers", "2", "--host", "127.0.0.1",
                                  "--port", str(port), "--no-ws", "--log-level", "warning", "bench.asgi_front:app"],
                                 cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_any_answer(f"http://127.0.0.1:{port}/", front, 60)
        servers = {"gunicorn (make run)": platform.url, "async front": f"http://127.0.0.1:{port}"}
        print(f"{'scenario':10s} {'server':20s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} non-2xx")
        for scenario in args.scenarios.split(","):
            model, conns = scenario.split(":")
            body = __import__("json").dumps({"instances": rows_for(model, 1)})
            results: dict[str, list] = {}
            for name, url in servers.items():  # both answer the same before anything is measured
                status, answer = _post(f"{url}/api/v1/models/{model}/predict", body, headers)
                if status != 200:
                    raise SystemExit(f"{name} answered {status}: {answer[:500]}")
            for url in servers.values():  # warm-up: every process loads the model
                run_wrk(f"{url}/api/v1/models/{model}/predict", body, headers, connections=16, seconds=2)
            for _ in range(args.rounds):
                for name, url in servers.items():
                    r = run_wrk(f"{url}/api/v1/models/{model}/predict", body, headers, connections=int(conns),
                                seconds=args.seconds)
                    results.setdefault(name, []).append(r)
            for name, rs in results.items():
                print(f"{scenario:10s} {name:20s} {statistics.median(r.rps for r in rs):8.1f} "
                      f"{statistics.median(r.p50_ms for r in rs):8.2f} {statistics.median(r.p99_ms for r in rs):8.2f} "
                      f"{sum(r.non_2xx for r in rs)}   (rounds: {', '.join(f'{r.rps:.0f}' for r in rs)} req/s)")
    finally:
        if front is not None:
            os.killpg(front.pid, signal.SIGTERM)
            try:
                front.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(front.pid, signal.SIGKILL)
                front.wait(10)
        platform.cleanup()
        shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
