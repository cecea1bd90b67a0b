"""gunicorn settings for the web process (threads; models load lazily per process).

Environment: HOST, PORT, WEB_CONCURRENCY (worker processes, default 1), GUNICORN_THREADS
(threads per worker, default 32), GUNICORN_TIMEOUT.
"""

import os

host = os.environ.get("HOST", "127.0.0.1")
port = os.environ.get("PORT", "8000")
bind = [f"{host}:{port}"]
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
threads = int(os.environ.get("GUNICORN_THREADS", "32"))
worker_class = "gthread"
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = 20
keepalive = 5
# Never import the app (and torch, and models) before forking: CUDA cannot be
# re-initialised in a forked child, and each worker loads models lazily.
preload_app = False
accesslog = None
errorlog = "-"

if workers > 1 and not os.environ.get("REDIS_URL"):
    # Without Redis the cache (rate-limit counters, key lookups) lives in the process:
    # several web processes would each count separately.
    raise SystemExit(
        "WEB_CONCURRENCY > 1 needs REDIS_URL: rate limits and key caches must be shared between "
        "web processes. Set REDIS_URL, or run one worker process with more threads."
    )



def post_worker_init(worker):
    """Prepare the worker's heap once its app is loaded (after the fork; no model is loaded).

    The serving modules (torch included) are imported now rather than on the first request,
    and everything alive is moved out of the cyclic garbage collector's sight
    (gc.freeze): otherwise a full collection walks torch's and Django's million
    long-lived objects every few thousand requests, a 50-100 ms stall for every request in
    flight — the p99 of a busy server.
    """
    import gc
    import importlib

    for module in ("torch", "inference.runtime.served", "inference.services", "inference.apis.v1"):
        importlib.import_module(module)
    gc.collect()
    gc.freeze()
