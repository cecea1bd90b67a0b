"""The web process's front: an ASGI application (served by granian, `inference_platform.serve`).

Predict and infer requests (``inference.middleware.INFERENCE_ROUTES``) are served on the
process's event loop: the request path is written as steps (``inference.steps``), and a
request waiting for its batch is a suspended coroutine, not a blocked thread. One thread
runs the Python of every request; the batcher thread computes. Under WSGI a request holds
a thread until it is answered, so batching needs tens of threads per process, and they
contend for the GIL; on the 2-core benchmark machine this front serves the MLP at
concurrency 32 with 1.28x the requests/s of gunicorn's threads, iris at 16 with 1.73x
(docs/benchmarks.md).

These requests get what Django's middleware gives them under WSGI, in the same order:
a request id (X-Request-ID, and on every log line), SecurityMiddleware (HTTPS redirect,
security headers), the Host check (ALLOWED_HOSTS), Content-Length and X-Frame-Options;
an exception the view does not answer itself is Django's 400/500 response. The body is
read up to INFERENCE_MAX_BODY_BYTES (a longer one is the route's own 413).

Every other request (admin, registry and job APIs, health, metrics, static files) is
Django's WSGI application, unchanged, run on a pool of WEB_THREADS threads (a2wsgi).

What runs on the loop between two waits is short: authentication and the rate limit
(cache reads), parsing, validation, tensor conversion, a fast model's forward pass. The
database is read there only on a cache miss (a key's first use per KEY_CACHE_SECONDS, the
registry after a change), a few milliseconds that the loop's other requests wait; loading
a model is done in a thread (``inference.steps.Blocking``).
"""

from __future__ import annotations

import gc
import importlib
import io
import logging
import os
import threading
from typing import Any

from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.core.handlers.exception import response_for_exception
from django.db import close_old_connections
from django.http import HttpRequest, HttpResponse
from django.middleware.security import SecurityMiddleware
from django.urls import ResolverMatch
from django.utils.log import log_response

from inference import steps
from inference.middleware import InferenceRouteMiddleware, inference_route, request_context

logger = logging.getLogger("inference_platform.front")

Scope = dict[str, Any]


def configure_process() -> None:
    """Set up a web process for the front (once, before serving; never in a test process).

    * Django keeps database connections and cache clients per asyncio context; on a loop
      where every request is a task of its own, that is a new connection (and, for the
      embedded cache, a new SQLite file handle and schema check) per request: 60-160 req/s.
      Here they are per thread again, as under WSGI: the loop's thread has one of each.
    * Django refuses database calls from a thread running an event loop; the loop thread's
      few reads (see the module's docstring) are allowed. Only the loop thread runs a loop,
      so the WSGI threads are unaffected.
    """
    from django.core.cache import caches
    from django.db import connections

    connections._connections = threading.local()
    caches._connections = threading.local()
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"


def prepare_heap() -> None:
    """Import the serving modules and preload the models now, then move everything alive out of
    the cyclic GC's sight. Runs in each web process after the fork (CUDA cannot be initialised
    before one), before it takes requests: the ASGI lifespan, gunicorn's post_worker_init.

    Otherwise a process's first requests wait for the model to load (every request of the
    process, ~1.3 s for the benchmark's MLP), and a full collection walks torch's and Django's
    million long-lived objects every few thousand requests: a 50-100 ms stall for every
    request in flight (the p99).
    """
    for module in ("torch", "inference.runtime.served", "inference.services", "inference.apis.v1",
                   "inference.apis.v2"):
        importlib.import_module(module)
    if settings.INFERENCE_PRELOAD_MODELS:
        from inference.runtime.pool import get_pool

        try:
            get_pool().preload()
        except Exception:  # noqa: BLE001 - the registry unreadable (database down): load on first use
            logger.exception("Preloading the models failed; they load on their first request")
        finally:
            close_old_connections()
    gc.collect()
    gc.freeze()


def at_exit() -> None:
    """As the process stops: write the request records still buffered, drop this process's live
    gauges, write the log lines still queued. (granian forks its processes, and a forked process
    ends without running `atexit` handlers: this is their only chance.)"""
    from inference.monitoring.records import flush_at_exit

    flush_at_exit()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())
    for handler in logging.getLogger().handlers:
        handler.flush()


def view_steps(match: ResolverMatch):
    """The steps function of an inference route's view (``HotPathAPIView.post_steps`` or ``func.steps``)."""
    view_class = getattr(match.func, "view_class", None)
    if view_class is not None:
        return view_class(**match.func.view_initkwargs).post_steps
    return match.func.steps


class Front:
    """The ASGI application: inference routes on the loop, everything else through `wsgi_app`."""

    def __init__(self, wsgi_app: Any, *, threads: int = 8):
        from a2wsgi import WSGIMiddleware

        self.wsgi = WSGIMiddleware(wsgi_app, workers=threads)
        self.security = SecurityMiddleware(lambda request: None)
        self.route = InferenceRouteMiddleware(lambda request: None)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        if scope["type"] == "http":
            match = inference_route(scope["method"], scope["path"])
            if match is not None:
                await self.inference(scope, receive, send, match)
                return
        async def receive_coroutine() -> dict:  # a2wsgi's threads need a coroutine; granian's receive is not one
            return await receive()

        await self.wsgi(scope, receive_coroutine, send)

    async def lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    prepare_heap()
                except Exception as exc:  # noqa: BLE001 - reported to the server, which stops
                    logger.exception("web process start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                at_exit()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def inference(self, scope: Scope, receive: Any, send: Any, match: ResolverMatch) -> None:
        body = await self.read_body(scope, receive)
        if body is None:
            return  # the client went away
        request = ASGIRequest(scope, io.BytesIO(body))
        try:
            response = await steps.run_async(self.steps(request, match))
        except Exception as exc:  # noqa: BLE001 - what Django's handler does with a view's exception
            response = response_for_exception(request, exc)
        finally:
            close_old_connections()  # as at the end of a WSGI request: a broken or aged connection goes
        if response.status_code >= 400:
            log_response("%s: %s", response.reason_phrase, request.path, response=response, request=request)
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.items()]
        headers += [(b"set-cookie", c.output(header="").strip().encode("latin-1")) for c in response.cookies.values()]
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": response.content})

    def steps(self, request: HttpRequest, match: ResolverMatch) -> steps.Steps[HttpResponse]:
        """The middleware chain of an inference route, around its view's steps (settings.MIDDLEWARE order)."""
        with request_context(request):  # RequestIdMiddleware
            response = self.security.process_request(request)
            if response is None:
                try:
                    self.route.enter(request, match)
                    response = yield from view_steps(match)(request, *match.args, **match.kwargs)
                except Exception as exc:  # noqa: BLE001
                    response = response_for_exception(request, exc)
                response = self.route.finish(request, response)
            response = self.security.process_response(request, response)
        response["X-Request-ID"] = request.request_id
        return response

    @staticmethod
    async def read_body(scope: Scope, receive: Any) -> bytes | None:
        """The body, up to one byte past INFERENCE_MAX_BODY_BYTES (the view answers 413 then); None on disconnect.

        A body whose Content-Length is over the limit is not read at all: the view refuses it by its length.
        """
        limit = settings.INFERENCE_MAX_BODY_BYTES
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    if int(value) > limit:
                        return b""
                except ValueError:
                    pass
                break
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > limit or not message.get("more_body"):
                return b"".join(chunks)


def get_application() -> Front:
    """The front for a web process: Django set up, the process configured (``configure_process``)."""
    from django.core.wsgi import get_wsgi_application

    wsgi_app = get_wsgi_application()
    configure_process()
    return Front(wsgi_app, threads=int(os.environ.get("WEB_THREADS", "8")))

