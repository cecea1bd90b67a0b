"""gunicorn settings for the web process (threads; models load lazily per process).

Environment: HOST, PORT, WEB_CONCURRENCY (worker processes, default 2 where 2 or more cores are
usable, CPU quota included, else 1), GUNICORN_THREADS
(threads per worker, default 32), GUNICORN_TIMEOUT, GUNICORN_GRACEFUL_TIMEOUT (seconds a
stopping worker gets to finish its requests, default 20), GUNICORN_WORKER_TMP_DIR;
gunicorn itself reads FORWARDED_ALLOW_IPS (the proxies trusted for X-Forwarded-*).
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # gunicorn's own script runs from the venv's bin
    sys.path.insert(0, str(ROOT))

from inference_platform.serve import default_workers  # noqa: E402 - one rule for both servers (no Django, no torch)

host = os.environ.get("HOST", "127.0.0.1")
port = os.environ.get("PORT", "8000")
bind = [f"{host}:{port}"]

workers = int(os.environ.get("WEB_CONCURRENCY") or default_workers())
threads = int(os.environ.get("GUNICORN_THREADS", "32"))
worker_class = "gthread"
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
# On SIGTERM (a deploy, a pod being stopped) workers finish the requests in flight for up
# to this long; keep it below the orchestrator's grace period (deploy/k8s: 30 s).
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
# Worker heartbeats on a memory filesystem: on a container's overlay /tmp a slow fsync can
# make the master kill a healthy worker.
worker_tmp_dir = os.environ.get("GUNICORN_WORKER_TMP_DIR") or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
keepalive = 5
# Never import the app (and torch, and models) before forking: CUDA cannot be
# re-initialised in a forked child, and each worker loads models lazily.
preload_app = False
accesslog = None
errorlog = "-"

# Several worker processes: each keeps its Prometheus metrics in files under
# PROMETHEUS_MULTIPROC_DIR (set here, before the workers fork and import prometheus_client)
# and /metrics adds them up. The directory is emptied at start; a dead worker's gauges are
# dropped in child_exit below.
if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _data_dir = Path(os.environ.get("INFERENCE_DATA_DIR", "var"))
    if not _data_dir.is_absolute():
        _data_dir = ROOT / _data_dir
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_data_dir / "prometheus")


def on_starting(server):
    """Start with an empty metrics directory: files of a previous run would be counted again."""
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if metrics_dir:
        Path(metrics_dir).mkdir(parents=True, exist_ok=True)
        for old in Path(metrics_dir).glob("*.db"):
            old.unlink(missing_ok=True)


def child_exit(server, worker):
    """In the master, when a worker has exited: its live gauges (queue depth, loaded models) stop counting."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def worker_exit(server, worker):
    """In the worker, as it exits: write the request records still buffered."""
    try:
        from inference.monitoring.records import flush_at_exit
    except Exception:  # noqa: BLE001 - the app never loaded: nothing buffered
        return
    flush_at_exit()



def post_worker_init(worker):
    """Prepare the worker once its app is loaded (after the fork), as the web server's front does as
    it starts: the serving modules imported, the models preloaded (INFERENCE_PRELOAD_MODELS), then
    everything alive moved out of the cyclic garbage collector's sight (gc.freeze)."""
    from inference_platform.front import prepare_process

    prepare_process()
