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
    _cgroups(monkeypatch, tmp_path, "0::/\n", {})  # no CPU quota, whatever the machine running the tests has
    assert _workers(monkeypatch, tmp_path, server, cores, web_concurrency) == expected


def _cgroups(monkeypatch, tmp_path, proc_cgroup: str, files: dict[str, str]) -> None:
    """A cgroup tree under tmp_path (paths relative to /sys/fs/cgroup) and the process's /proc/self/cgroup."""
    from inference_platform import serve

    root = tmp_path / "cgroup"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (tmp_path / "proc-cgroup").write_text(proc_cgroup)
    monkeypatch.setattr(serve, "CGROUP_ROOT", root)
    monkeypatch.setattr(serve, "PROC_CGROUP", tmp_path / "proc-cgroup")


V1 = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n2:cpuset:/docker/abc\n0::/\n"


@pytest.mark.parametrize(("proc_cgroup", "files", "quota"), [
    # cgroup v2, a container with its own namespace: its cgroup is the root
    ("0::/\n", {"cpu.max": "100000 100000\n"}, 1.0),
    ("0::/\n", {"cpu.max": "max 100000\n"}, None),
    # cgroup v2 without a namespace (systemd's CPUQuota=150%): the process's cgroup, under the root
    ("0::/system.slice/inference.service\n", {"system.slice/inference.service/cpu.max": "150000 100000\n",
                                              "system.slice/cpu.max": "max 100000\n"}, 1.5),
    # a parent's quota binds its children
    ("0::/kubepods/pod1/c1\n", {"kubepods/pod1/c1/cpu.max": "max 100000\n",
                                "kubepods/pod1/cpu.max": "50000 100000\n"}, 0.5),
    # cgroup v1 seen from inside a container: the host's path in /proc, the container's cgroup at the mount's root
    (V1, {"cpu,cpuacct/cpu.cfs_quota_us": "200000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 2.0),
    (V1, {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, None),
    # cgroup v1 on a host, the cpu controller mounted alone
    ("1:cpu:/plat1\n2:cpuacct:/\n", {"cpu/plat1/cpu.cfs_quota_us": "100000\n", "cpu/plat1/cpu.cfs_period_us": "100000\n",
                                      "cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1.0),
    ("0::/\n", {}, None),  # no cgroup files at all (not Linux, or not mounted)
])
def test_the_cpu_quota_is_read_from_cgroup_v1_and_v2(monkeypatch, tmp_path, proc_cgroup, files, quota):
    from inference_platform import serve

    _cgroups(monkeypatch, tmp_path, proc_cgroup, files)
    assert serve.cpu_quota() == quota


@pytest.mark.parametrize("server", ["serve", "gunicorn"])
@pytest.mark.parametrize(("cpu_max", "expected"), [("100000 100000", 1), ("150000 100000", 2), ("max 100000", 2)])
def test_a_cpu_quota_below_the_cores_counts_as_fewer_cores(monkeypatch, tmp_path, server, cpu_max, expected):
    """A container limited to one CPU (``--cpus 1``) on a host of 8 cores, whose affinity still lists all
    8: a second web process would share that one CPU with the first (docs/benchmarks.md). 1.5 CPUs: 2."""
    from inference_platform import serve

    _cgroups(monkeypatch, tmp_path, "0::/\n", {"cpu.max": cpu_max + "\n"})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert serve.usable_cores() == {"100000 100000": 1, "150000 100000": 2, "max 100000": 8}[cpu_max]
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
    # A process runs the reports it holds as it stops (observe.HeldReports): all of them counted now.
    served = _served_by_process(metrics_dir, "shared")
    assert len(served) == 2, f"both worker processes should have answered: {served}"
    assert sum(served.values()) == sum(statuses.values())
    # Counted once between the two processes: exactly `limit` answered, every other one a 429.
    assert statuses[200] == limit, statuses
    assert statuses[429] == sum(statuses.values()) - limit, statuses


@pytest.mark.parametrize(("variable", "attribute", "configured", "expected"), [
    ("WEB_LOOP", "loop", None, "uvloop"), ("WEB_LOOP", "loop", "asyncio", "asyncio"),
    ("WEB_LOOP", "loop", " UVLOOP ", "uvloop"),
    ("WEB_INTERFACE", "interface", None, "rsgi"), ("WEB_INTERFACE", "interface", "rsgi", "rsgi"),
    ("WEB_INTERFACE", "interface", " ASGI ", "asgi"),
])
def test_web_processes_run_uvloop_and_rsgi_unless_asked_otherwise(monkeypatch, tmp_path, variable, attribute,
                                                                  configured, expected):
    from inference_platform import serve

    environ = {"INFERENCE_DATA_DIR": str(tmp_path), "WEB_CONCURRENCY": "1"}
    if configured is not None:
        environ[variable] = configured
    monkeypatch.setattr(os, "environ", environ)
    value = getattr(serve.server(), attribute)
    assert str(getattr(value, "value", value)) == expected


@pytest.mark.parametrize(("variable", "value", "choices"), [("WEB_LOOP", "tokio", "uvloop, asyncio"),
                                                           ("WEB_INTERFACE", "wsgi", "rsgi, asgi")])
def test_an_unknown_loop_or_interface_is_refused_with_the_choices(monkeypatch, tmp_path, variable, value, choices):
    from inference_platform import serve

    monkeypatch.setattr(os, "environ", {"INFERENCE_DATA_DIR": str(tmp_path), variable: value})
    with pytest.raises(SystemExit, match=f"{variable}='{value}' is not one of {choices}"):
        serve.server()
