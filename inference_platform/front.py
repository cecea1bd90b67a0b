"""The web process's front: an RSGI and ASGI application (served by granian, `inference_platform.serve`).

granian calls it through RSGI, its native interface (``Front.__rsgi__``, the default): the body is one
await and the response one call, where ASGI passes a message dict per event and awaits each, for
less CPU per prediction (docs/benchmarks.md); or through ASGI (``Front.__call__``, as any ASGI
server would; ``WEB_INTERFACE=asgi``).

Requests for the async API views (v1 predict, v2 infer: ``inference.middleware.api_route``) are
served on the process's event loop: a request waiting for its batch is a suspended coroutine, not
a blocked thread. Such a request is not a Django ``HttpRequest`` and its response passes no
middleware chain: ``inference_platform.edge`` gives it what the middleware above
``APIBoundaryMiddleware`` would (its id, the Host check, the security headers), and hands one whose
host Django refuses, or would redirect to HTTPS, to the WSGI application below. The request's report (metrics, access line, record, hooks) is made after its response is handed over,
with the other requests' of the last 50 ms (``inference.monitoring.observe.HeldReports``).

The loop itself only parses, authenticates and waits: each process gets its pools for blocking
and heavy work as it starts (``inference.offload.configure``), and forward passes run on the
batchers' threads. Its thread never touches the database.

Every other request (admin, registry and job APIs, health, metrics, static files) is Django's
WSGI application, unchanged, run on a pool of WEB_THREADS threads (a2wsgi; under RSGI through
``protocols.AsgiChannels``, which waits for a slow client as ASGI servers do: a local file, such as a
job's result, is sent by granian from its path, any other streamed body goes through a pipe).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import os
from typing import Any

from django.conf import settings
from django.db import close_old_connections
from django.urls import ResolverMatch, get_resolver
from django.utils.log import log_response

from inference import offload
from inference.apis.replies import Reply
from inference.middleware import api_route, request_id_of
from inference.monitoring.logs import key_prefix_var, request_id_var
from inference.monitoring.observe import reports_after_response
from inference_platform.edge import Edge, Facts, FrontRequest
from inference_platform.protocols import (
    CHANNELS,
    AsgiChannels,
    FileSending,
    Scope,
    asgi_request,
    asgi_scope,
    rsgi_request,
)

logger = logging.getLogger("inference_platform.front")


def prepare_process() -> None:
    """Import the serving modules and preload the models, then move everything alive out of the
    cyclic GC's sight. Runs in each web process after the fork (CUDA cannot be initialised before
    one), before it takes requests: the ASGI lifespan (in a thread: it reads the database),
    gunicorn's post_worker_init.

    Otherwise a process's first requests wait for the model to load (every request of the
    process), and a full collection walks torch's and Django's long-lived objects every few
    thousand requests: a stall for every request in flight (docs/benchmarks.md).
    """
    for module in ("torch", "inference.pool", "inference.services.predict", "inference.apis.v1",
                   "inference.apis.v2"):
        importlib.import_module(module)
    if settings.INFERENCE_PRELOAD_MODELS:
        from inference.pool import get_pool

        try:
            get_pool().preload()
        except Exception:  # noqa: BLE001 - the registry unreadable (database down): load on first use
            logger.exception("Preloading the models failed; they load on their first request")
        finally:
            close_old_connections()
    # Unload what is archived or moved away from, load what is pinned, as the registry changes.
    from inference.loadctl import Watcher

    Watcher().start()
    gc.collect()
    gc.freeze()


def at_exit() -> None:
    """As the process stops: write the request records still buffered, drop this process's live
    gauges, write the log lines still queued. (granian forks its processes, and a forked process
    ends without running `atexit` handlers: this is their only chance.)"""
    from inference.monitoring.observe import run_held_reports
    from inference.monitoring.records import flush_at_exit

    run_held_reports()  # the requests answered last: their records go with the rest
    flush_at_exit()
    close_old_connections()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(os.getpid())
    for handler in logging.getLogger().handlers:
        handler.flush()


def file_roots() -> list[str]:
    """Where the files granian may send by their path are (``protocols.FileSending``): the storage's
    and the static files', which stay after their response."""
    return [str(settings.MEDIA_ROOT), str(settings.STATIC_ROOT)]


class Front:
    """The RSGI and ASGI application: async API views on the loop, everything else through `wsgi`."""

    def __init__(self, wsgi_app: Any, *, threads: int = 8):
        from a2wsgi import WSGIMiddleware

        self.wsgi = WSGIMiddleware(FileSending(wsgi_app, file_roots), workers=threads)
        self.edge = Edge.from_settings()

    # ---- RSGI (granian) ---------------------------------------------------------------------------

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start-up, before the loop serves: an exception stops this process (granian starts another)."""
        try:
            loop.run_until_complete(self.start())
        except Exception:
            logger.exception("web process start-up failed")
            raise

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.run_until_complete(asyncio.to_thread(at_exit))

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        if scope.proto != "http":  # websockets are off (serve.py); nothing here speaks them
            return
        match = api_route(scope.path)
        if match is not None:
            request = rsgi_request(scope, protocol)
            if (facts := self.edge.facts(request)) is not None:
                await self.api(request, match, facts)
                return
        channels = AsgiChannels(protocol)
        try:
            await self.wsgi({**asgi_scope(scope), CHANNELS: channels}, channels.receive, channels.send)
        finally:
            channels.close()

    # ---- ASGI -----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
            return
        if scope["type"] == "http":
            match = api_route(scope["path"])
            if match is not None:
                request = asgi_request(scope, receive, send)
                if (facts := self.edge.facts(request)) is not None:
                    await self.api(request, match, facts)
                    return

        async def receive_coroutine() -> dict:  # a2wsgi's threads need a coroutine; granian's receive is not one
            return await receive()

        await self.wsgi(scope, receive_coroutine, send)

    async def lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except Exception as exc:  # noqa: BLE001 - reported to the server, which stops
                    logger.exception("web process start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await asyncio.to_thread(at_exit)
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ---- both -----------------------------------------------------------------------------------

    @staticmethod
    async def start() -> None:
        offload.configure(io_threads=settings.INFERENCE_IO_THREADS,
                          compute_threads=settings.INFERENCE_COMPUTE_THREADS,
                          compute_queue=settings.INFERENCE_COMPUTE_QUEUE)
        await asyncio.to_thread(prepare_process)  # it reads the database: never on the loop

    async def api(self, request: FrontRequest, match: ResolverMatch, facts: Facts) -> None:
        """Serve an async API view (``inference_platform.edge``: what the middleware above the boundary does).

        The body is read when the view asks for it (``inference.middleware.receive_body``), after it has
        authenticated the request from its headers: an unauthenticated client cannot make the process read,
        and hold, up to INFERENCE_MAX_BODY_BYTES."""
        request.scheme = facts.scheme
        request.request_id = request_id_of(request)
        tokens = request_id_var.set(request.request_id), key_prefix_var.set("")
        try:
            with reports_after_response():  # metrics, access line, record, hooks: once the response is sent
                reply = await self.view(request, match)
                if request.client_gone:
                    return  # nobody to answer
                headers = list(reply.headers)
                present = {name.lower() for name, _ in headers}
                # The hooks' headers the view did not set itself (as the hooks add them), then the id.
                headers += [header for header in facts.headers if header[0].lower() not in present]
                if self.edge.request_ids:
                    headers.append(("X-Request-ID", request.request_id))
                if "content-length" not in present:
                    headers.append(("Content-Length", str(len(reply.content))))
                await request.exchange.respond(reply.status_code, headers, reply.content)
        finally:
            request_id_var.reset(tokens[0])
            key_prefix_var.reset(tokens[1])

    @staticmethod
    async def view(request: FrontRequest, match: ResolverMatch) -> Reply:
        """The view's reply (``apis.replies``: the view's own function, not its Django wrapper), logged as
        Django's handler logs a response (4xx a warning, 5xx an error).

        The views answer their own refusals; an exception that leaves one is a bug, answered by the
        URLconf's handler500 (JSON on API paths)."""
        request.resolver_match = match
        try:
            response = await match.func.replies(request, *match.args, **match.kwargs)
        except Exception as exc:  # noqa: BLE001 - what Django's handler does with a view's exception
            response = Reply.of(get_resolver().resolve_error_handler(500)(request))
            log_response("%s: %s", response.reason_phrase, request.path, response=response, request=request,
                         exception=exc)
            return response
        if response.status_code >= 400 and not request.client_gone:  # a client that left is not answered
            log_response("%s: %s", response.reason_phrase, request.path, response=response, request=request)
        return response


def get_application() -> Front:
    """The front for a web process (Django set up by the caller)."""
    from django.core.wsgi import get_wsgi_application

    return Front(get_wsgi_application(), threads=int(os.environ.get("WEB_THREADS", "8")))
