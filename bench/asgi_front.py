"""EXPERIMENT: an async front for the predict path, against the platform as `make run` serves it.

    python -m bench.asgi_front [--seconds 6] [--rounds 2]   # the platform vs the prototype
    make bench BENCH_ARGS="--servers platform,async-front,single-lock,mlserver --no-write"

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
batcher thread computes. A fast model (forward under the batcher's INLINE_DRAIN_BELOW_S) is
computed inline on the loop, as the WSGI path does when the batcher is idle.

One trap found on the way: Django's ``caches`` are per asyncio context, so under ASGI every
request built a new cache object (new SQLite connections, a schema check): 60-160 req/s. The
prototype keeps one cache object per process.
"""

from __future__ import annotations

import os
import re

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
    from inference.runtime.batcher import INLINE_DRAIN_BELOW_S

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
            if batcher._compute_ewma and batcher._compute_ewma < INLINE_DRAIN_BELOW_S:
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


def main() -> None:
    """The platform (gunicorn, as `make run`) against the prototype, through `make bench`'s harness."""
    import sys

    from .__main__ import main as bench_main

    sys.argv = [sys.argv[0], "--servers", "platform,async-front", "--seconds", "6",
                "--scenarios", "iris:16:1,iris:1:1,mlp:32:1,mlp:1:1", "--no-write", *sys.argv[1:]]
    bench_main()


if __name__ == "__main__":
    main()
