"""Several web processes on one machine (WEB_CONCURRENCY), with or without Redis.

`python -m inference_platform.serve` (and `deploy/gunicorn.conf.py`, for a WSGI deployment)
starts two web processes on a machine with two or more cores.
Without REDIS_URL they share the embedded cache in the data dir (diskcache,
inference_platform/cache.py), so a key's rate limit counts every request once, whichever
process serves it — as with Redis in the services run.
"""

from __future__ import annotations

import json
import os
import runpy
import threading
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from django.conf import settings as django_settings
from prometheus_client.multiprocess import MultiProcessCollector

from tests.conftest import small_mlp
from tests.inference.support import ROWS, make_key, ready
from tests.processes import WebServer

CONF = Path(django_settings.BASE_DIR) / "deploy" / "gunicorn.conf.py"


def _workers(monkeypatch, tmp_path, server: str, cores: int, web_concurrency: str | None) -> int:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    if web_concurrency is None:
        monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    else:
        monkeypatch.setenv("WEB_CONCURRENCY", web_concurrency)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setenv("INFERENCE_DATA_DIR", str(tmp_path))
    if server == "gunicorn":
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/nonexistent-not-used")  # the conf must not create dirs here
        return runpy.run_path(str(CONF))["workers"]
    from inference_platform import serve

    monkeypatch.setattr(os, "environ", dict(os.environ))  # serve.server() sets PROMETHEUS_MULTIPROC_DIR
    return serve.server().workers


@pytest.mark.parametrize("server", ["serve", "gunicorn"])
@pytest.mark.parametrize(("cores", "web_concurrency", "expected"), [
    (1, None, 1), (2, None, 2), (16, None, 2), (16, "", 2), (2, "1", 1), (2, "4", 4),
])
def test_default_worker_processes_follow_the_cores(monkeypatch, tmp_path, server, cores, web_concurrency, expected):
    monkeypatch.setattr(os, "cpu_count", lambda: max(cores, 2))  # the machine has at least what its affinity allows
    assert _workers(monkeypatch, tmp_path, server, cores, web_concurrency) == expected


@pytest.mark.parametrize("server", ["serve", "gunicorn"])
@pytest.mark.parametrize(("quota", "expected"), [(1, 1), (2, 2), (None, 2)])
def test_a_cpu_quota_below_the_cores_counts_as_fewer_cores(monkeypatch, tmp_path, server, quota, expected):
    """A container limited to one CPU (``--cpus 1``) on a host of 8 cores, whose affinity still lists
    all 8: a second web process would share that one CPU with the first."""
    import joblib

    from inference_platform import serve

    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(joblib, "cpu_count", lambda: min(8, quota or 8))  # what loky reads from the cgroup
    assert serve.usable_cores() == min(8, quota or 8)
    assert _workers(monkeypatch, tmp_path, server, 8, None) == expected


def test_several_processes_start_with_an_empty_metrics_directory(monkeypatch, tmp_path):
    from inference_platform import serve

    monkeypatch.setattr(os, "environ", {"INFERENCE_DATA_DIR": str(tmp_path)})
    (tmp_path / "prometheus").mkdir()
    (tmp_path / "prometheus" / "counter_123.db").write_bytes(b"a previous run's")
    assert serve.metrics_dir(2) == tmp_path / "prometheus"
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path / "prometheus")
    assert list((tmp_path / "prometheus").iterdir()) == []
    monkeypatch.setattr(os, "environ", {"INFERENCE_DATA_DIR": str(tmp_path)})
    assert serve.metrics_dir(1) is None and "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def _served_by_process(metrics_dir: Path, model: str) -> dict[int, float]:
    """Requests each worker process answered for `model` (200 and 429), from its own metrics file."""
    served: dict[int, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        total = 0.0
        for family in MultiProcessCollector.merge([str(path)], accumulate=True):
            for sample in family.samples:
                if sample.name in ("inference_request_total", "inference_ratelimit_rejected_total") \
                        and sample.labels.get("model") == model:
                    total += sample.value
        if total:
            served[pid] = total
    return served


@pytest.mark.slow
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_web_processes_count_one_rate_limit_between_them(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    ready(small_mlp(3), model_name="shared", aliases=["production"])
    limit = 12
    key = make_key("two-processes", rate=f"{limit}/d")  # a day's window: no reset during the test
    web = WebServer(settings.MEDIA_ROOT, env={"WEB_CONCURRENCY": "2", "WEB_THREADS": "4"})
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def call() -> None:
        request = urllib.request.Request(
            f"{web.url}/api/v1/models/shared/predict", data=json.dumps({"instances": ROWS}).encode(),
            headers={"Authorization": f"Api-Key {key}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
            if status == 429:
                assert int(exc.headers["Retry-After"]) >= 1
        with lock:
            statuses[status] += 1

    metrics_dir = settings.MEDIA_ROOT.parent / "prometheus"  # inference_platform.serve's, for several processes
    try:
        web.start()
        served: dict[int, float] = {}
        # New connections, 16 at a time, until both processes have answered some: which process
        # accepts a connection is the kernel's choice, and on an idle machine one process can
        # win many waves in a row.
        for _wave in range(60):
            threads = [threading.Thread(target=call) for _ in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            served = _served_by_process(metrics_dir, "shared")
            if len(served) == 2 and sum(statuses.values()) > 2 * limit:
                break
    finally:
        web.stop()
    assert len(served) == 2, f"both worker processes should have answered: {served}"
    assert sum(served.values()) == sum(statuses.values())
    # Counted once between the two processes: exactly `limit` answered, every other one a 429.
    assert statuses[200] == limit, statuses
    assert statuses[429] == sum(statuses.values()) - limit, statuses


@pytest.mark.parametrize(("configured", "expected"), [(None, "uvloop"), ("asyncio", "asyncio"), (" UVLOOP ", "uvloop")])
def test_web_processes_run_uvloop_unless_asyncio_is_asked_for(monkeypatch, tmp_path, configured, expected):
    from inference_platform import serve

    environ = {"INFERENCE_DATA_DIR": str(tmp_path), "WEB_CONCURRENCY": "1"}
    if configured is not None:
        environ["WEB_LOOP"] = configured
    monkeypatch.setattr(os, "environ", environ)
    assert str(getattr(serve.server().loop, "value", serve.server().loop)) == expected


def test_an_unknown_event_loop_is_refused_with_the_choices(monkeypatch, tmp_path):
    from inference_platform import serve

    monkeypatch.setattr(os, "environ", {"INFERENCE_DATA_DIR": str(tmp_path), "WEB_LOOP": "tokio"})
    with pytest.raises(SystemExit, match="not one of uvloop, asyncio"):
        serve.server()
